//! The RBAC authorizer: an in-memory index of who is granted what, built from the stored
//! roles and bindings and kept current by a watch on them, so a request's check is a few hash
//! lookups and rule matches (kube's informer-backed `RBACAuthorizer`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::Value;
use tokio::sync::{Mutex, watch as signal};

use super::GROUP;
use super::rules::{self, Request};
use crate::apiserver::authn::UserInfo;
use crate::apiserver::status::ApiResult;
use crate::store::{EventKind, Revision, Store, StoreError, StoreResult, WatchEvent};

/// The group whose members are always allowed (kube's `SystemPrivilegedGroup`).
pub const SYSTEM_MASTERS: &str = "system:masters";

/// The storage prefixes of the four RBAC resources.
const PREFIXES: [&str; 4] = [
    "/registry/roles/",
    "/registry/clusterroles/",
    "/registry/rolebindings/",
    "/registry/clusterrolebindings/",
];

/// The rules one binding grants one of its subjects, and where: `None` everywhere (a
/// ClusterRoleBinding), `Some(ns)` only in that namespace (a RoleBinding).
struct Grant {
    namespace: Option<String>,
    /// The role's rules, or kube's error for a role that does not resolve (the binding then
    /// grants nothing, and a denial or rules review reports it).
    rules: Result<Arc<Vec<PolicyRule>>, Arc<str>>,
    /// The binding's place in kube's visiting order (ClusterRoleBindings first) and the
    /// subject's place in it: a user a binding names twice is granted its rules once.
    binding: usize,
    subject: usize,
    /// kube's description of binding and subject, for `RBAC: allowed by …`.
    source: Arc<str>,
}

impl Grant {
    fn applies_in(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    fn rules(&self) -> &[PolicyRule] {
        self.rules.as_deref().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// An authorizer's answer with its reason, as kube's `Authorize` returns them. RBAC never
/// denies outright: what it does not allow is "no opinion", which ends in a denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `RBAC: allowed by …` when allowed; otherwise empty, or the bindings whose roles do not
    /// resolve (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`).
    pub reason: String,
}

/// Go's `utilerrors.NewAggregate(errs).Error()`: one message as it is, several deduplicated
/// in `[a, b]`.
pub fn go_aggregate(errors: &[&str]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for e in errors {
        if !seen.contains(e) {
            seen.push(e);
        }
    }
    match seen.as_slice() {
        [one] => (*one).to_string(),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// kube's `describeSubject`: a service account as `name/namespace`.
fn describe_subject(s: &Subject, binding_namespace: &str) -> String {
    match s.kind.as_str() {
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            format!("{} {:?}", s.kind, format!("{}/{ns}", s.name))
        }
        _ => format!("{} {:?}", s.kind, s.name),
    }
}

/// The binding a grant comes from: name, namespace (`None` for a ClusterRoleBinding), role.
struct BindingRef<'a> {
    name: &'a str,
    namespace: Option<&'a str>,
    role: &'a RoleRef,
}

impl BindingRef<'_> {
    /// kube's `clusterRoleBindingDescriber` / `roleBindingDescriber`.
    fn describe(&self, subject: &Subject) -> String {
        let (kind, name, ns) = match self.namespace {
            None => ("ClusterRoleBinding", self.name.to_string(), ""),
            Some(ns) => ("RoleBinding", format!("{}/{ns}", self.name), ns),
        };
        format!(
            "{kind} {name:?} of {} {:?} to {}",
            self.role.kind,
            self.role.name,
            describe_subject(subject, ns)
        )
    }
}

/// Roles by name and grants by subject (service accounts under their user name).
#[derive(Default)]
pub struct Index {
    roles: HashMap<(String, String), Arc<Vec<PolicyRule>>>,
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
    /// Bindings seen so far (the next grant's `binding`).
    bindings: usize,
}

/// A stored object's namespace and name from its key (`/registry/roles/<ns>/<name>`).
fn key_parts<'a>(key: &'a str, prefix: &str) -> (&'a str, &'a str) {
    let rest = &key[prefix.len()..];
    rest.split_once('/').unwrap_or(("", rest))
}

impl Index {
    /// Build from the stored objects, by key.
    fn build(objects: &BTreeMap<String, Value>) -> Index {
        let mut index = Index::default();
        let typed = |prefix: &'static str| {
            objects
                .range(prefix.to_string()..)
                .take_while(move |(k, _)| k.starts_with(prefix))
                .map(move |(k, v)| (key_parts(k, prefix), v))
        };
        for ((ns, name), v) in typed(PREFIXES[0]) {
            if let Ok(role) = serde_json::from_value::<Role>(v.clone()) {
                let rules = Arc::new(role.rules.unwrap_or_default());
                index.roles.insert((ns.into(), name.into()), rules);
            }
        }
        for ((_, name), v) in typed(PREFIXES[1]) {
            if let Ok(role) = serde_json::from_value::<ClusterRole>(v.clone()) {
                let rules = Arc::new(role.rules.unwrap_or_default());
                index.cluster_roles.insert(name.into(), rules);
            }
        }
        // kube visits ClusterRoleBindings before the RoleBindings of the namespace.
        for ((_, name), v) in typed(PREFIXES[3]) {
            if let Ok(b) = serde_json::from_value::<ClusterRoleBinding>(v.clone()) {
                let binding = BindingRef {
                    name,
                    namespace: None,
                    role: &b.role_ref,
                };
                index.bind(&binding, b.subjects.as_deref().unwrap_or(&[]));
            }
        }
        for ((ns, name), v) in typed(PREFIXES[2]) {
            if let Ok(b) = serde_json::from_value::<RoleBinding>(v.clone()) {
                let binding = BindingRef {
                    name,
                    namespace: Some(ns),
                    role: &b.role_ref,
                };
                index.bind(&binding, b.subjects.as_deref().unwrap_or(&[]));
            }
        }
        index
    }

    /// The rules a role reference names, seen from a binding in `namespace`; `None` when the
    /// role does not exist (the binding then grants nothing, as in kube).
    pub fn role_rules(
        &self,
        role: &RoleRef,
        namespace: Option<&str>,
    ) -> Option<Arc<Vec<PolicyRule>>> {
        match (role.kind.as_str(), namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(&role.name).cloned(),
            ("Role", Some(ns)) => self
                .roles
                .get(&(ns.to_string(), role.name.clone()))
                .cloned(),
            _ => None,
        }
    }

    fn bind(&mut self, binding: &BindingRef<'_>, subjects: &[Subject]) {
        let namespace = binding.namespace;
        let rules = self
            .role_rules(binding.role, namespace)
            .ok_or_else(|| Arc::from(missing_role(binding.role)));
        let seq = self.bindings;
        self.bindings += 1;
        for (i, s) in subjects.iter().enumerate() {
            let grant = Grant {
                namespace: namespace.map(str::to_string),
                rules: rules.clone(),
                binding: seq,
                subject: i,
                source: Arc::from(binding.describe(s)),
            };
            match s.kind.as_str() {
                "User" => self.users.entry(s.name.clone()).or_default().push(grant),
                "Group" => self.groups.entry(s.name.clone()).or_default().push(grant),
                "ServiceAccount" => {
                    let ns = s
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .or(namespace);
                    // kube: a service account without a namespace matches nobody.
                    if let Some(ns) = ns.filter(|n| !n.is_empty()) {
                        let user = format!("system:serviceaccount:{ns}:{}", s.name);
                        self.users.entry(user).or_default().push(grant);
                    }
                }
                _ => {}
            }
        }
    }

    fn grants<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a Grant> + 'a {
        let by_user = self.users.get(&user.name).into_iter().flatten();
        let by_group = user
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .flatten();
        by_user.chain(by_group)
    }

    /// Whether a binding of `user`'s grants `request` (the hot path: no allocation).
    pub fn allows(&self, user: &UserInfo, request: &Request) -> bool {
        let ns = request.namespace();
        self.grants(user)
            .filter(|g| g.applies_in(ns))
            .any(|g| g.rules().iter().any(|r| rules::allows(r, request)))
    }

    /// The grants of `user` that apply in `namespace`, one per binding, in kube's visiting
    /// order (ClusterRoleBindings, then the namespace's RoleBindings).
    fn applicable<'a>(&'a self, user: &'a UserInfo, namespace: &str) -> Vec<&'a Grant> {
        let mut out: Vec<&Grant> = self
            .grants(user)
            .filter(|g| g.applies_in(namespace))
            .collect();
        out.sort_by_key(|g| (g.binding, g.subject));
        out.dedup_by_key(|g| g.binding);
        out
    }

    /// kube's `RBACAuthorizer.Authorize`: allowed by the first binding with a rule that
    /// matches, or not, with the resolution errors met on the way as the reason.
    pub fn decide(&self, user: &UserInfo, request: &Request) -> Decision {
        let mut errors: Vec<&str> = Vec::new();
        for g in self.applicable(user, request.namespace()) {
            match &g.rules {
                Ok(rules) if rules.iter().any(|r| rules::allows(r, request)) => {
                    return Decision {
                        allowed: true,
                        reason: format!("RBAC: allowed by {}", g.source),
                    };
                }
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        let reason = if errors.is_empty() {
            String::new()
        } else {
            format!("RBAC: {}", go_aggregate(&errors))
        };
        Decision {
            allowed: false,
            reason,
        }
    }

    /// Every rule `user` holds in `namespace` ("" for the cluster scope: ClusterRoleBindings
    /// only), kube's `RulesFor`.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        self.rules_review(user, namespace).0
    }

    /// [`Index::rules_for`] with the errors of bindings whose roles do not resolve.
    pub fn rules_review(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for g in self.applicable(user, namespace) {
            match &g.rules {
                Ok(r) => rules.extend(r.iter().cloned()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (rules, errors)
    }
}

/// What the index was built from: the objects by key as of `revision`.
#[derive(Default)]
struct Snapshot {
    revision: Revision,
    objects: BTreeMap<String, Value>,
}

pub struct Authorizer {
    store: Arc<dyn Store>,
    index: RwLock<Arc<Index>>,
    snapshot: Mutex<Snapshot>,
}

/// kube's lister error for a role reference that does not resolve.
fn missing_role(role: &RoleRef) -> String {
    match role.kind.as_str() {
        "Role" => format!("role.{GROUP} {:?} not found", role.name),
        "ClusterRole" => format!("clusterrole.{GROUP} {:?} not found", role.name),
        other => format!("unsupported role reference kind: {other:?}"),
    }
}

pub fn is_master(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == SYSTEM_MASTERS)
}

impl Authorizer {
    /// An authorizer over `store`, loaded with what is stored now.
    pub async fn load(store: Arc<dyn Store>) -> StoreResult<Authorizer> {
        let authorizer = Authorizer {
            store,
            index: RwLock::new(Arc::new(Index::default())),
            snapshot: Mutex::new(Snapshot::default()),
        };
        authorizer.resync().await?;
        Ok(authorizer)
    }

    /// The current index (cheap: an `Arc`).
    pub fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Allowed, or kube's 403 for the request (with RBAC's reason when it has one).
    pub fn authorize(&self, user: &UserInfo, request: &Request) -> ApiResult<()> {
        if self.allows(user, request) {
            return Ok(());
        }
        // Worked out again only for a denial, so allowed requests pay for no reason text.
        let decision = self.decide(user, request);
        if decision.allowed {
            return Ok(());
        }
        Err(super::attributes::forbidden(
            user,
            request,
            &decision.reason,
        ))
    }

    /// kube's union of the privileged-group authorizer (`system:masters`, allowed with no
    /// reason) and RBAC.
    pub fn decide(&self, user: &UserInfo, request: &Request) -> Decision {
        if is_master(user) {
            return Decision {
                allowed: true,
                reason: String::new(),
            };
        }
        self.index().decide(user, request)
    }

    pub fn allows(&self, user: &UserInfo, request: &Request) -> bool {
        is_master(user) || self.index().allows(user, request)
    }

    /// The stored ClusterRoles, by name (for aggregation).
    pub async fn cluster_roles(&self) -> Vec<Value> {
        let snapshot = self.snapshot.lock().await;
        snapshot
            .objects
            .range(PREFIXES[1].to_string()..)
            .take_while(|(k, _)| k.starts_with(PREFIXES[1]))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn publish(&self, snapshot: &Snapshot) {
        let index = Arc::new(Index::build(&snapshot.objects));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    /// Re-read every role and binding (after a write through this server, so its author's
    /// next request sees it) and return the revision read at.
    pub async fn resync(&self) -> StoreResult<Revision> {
        let revision = self.store.current_revision().await?;
        let mut objects = BTreeMap::new();
        for prefix in PREFIXES {
            let page = self.store.list(prefix, None, 0, Some(revision)).await?;
            for kv in page.items {
                if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
                    objects.insert(kv.key, v);
                }
            }
        }
        let mut snapshot = self.snapshot.lock().await;
        if snapshot.revision <= revision {
            *snapshot = Snapshot { revision, objects };
            self.publish(&snapshot);
        }
        Ok(snapshot.revision)
    }

    /// Apply one watched change unless the snapshot already includes it.
    async fn apply(&self, ev: WatchEvent) {
        let mut snapshot = self.snapshot.lock().await;
        if ev.kv.mod_revision <= snapshot.revision {
            return;
        }
        snapshot.revision = ev.kv.mod_revision;
        match ev.kind {
            EventKind::Put => match serde_json::from_slice::<Value>(&ev.kv.value) {
                Ok(v) => {
                    snapshot.objects.insert(ev.kv.key, v);
                }
                Err(_) => return,
            },
            EventKind::Delete => {
                snapshot.objects.remove(&ev.kv.key);
            }
        }
        self.publish(&snapshot);
    }

    /// Follow the stored roles and bindings until `stopped`, re-listing whenever the watch
    /// breaks; `changed` runs after every change (ClusterRole aggregation).
    pub async fn follow<F, Fut>(&self, mut stopped: signal::Receiver<bool>, changed: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            if let Err(e) = self.watch_once(&mut stopped, &changed).await {
                tracing::warn!(error = %e, "watching RBAC objects failed; re-listing");
            }
            if *stopped.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    async fn watch_once<F, Fut>(
        &self,
        stopped: &mut signal::Receiver<bool>,
        changed: &F,
    ) -> StoreResult<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let revision = self.resync().await?;
        changed().await;
        let mut streams = Vec::new();
        for prefix in PREFIXES {
            streams.push(self.store.watch(prefix, revision).await?);
        }
        let mut events = futures::stream::select_all(streams);
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        self.apply(ev).await;
                        changed().await;
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(StoreError::Unavailable("watch ended".into())),
                },
                _ = stopped.changed() => return Ok(()),
            }
        }
    }

    /// kube's 403 for a role reference that does not resolve.
    pub fn missing_role(role: &RoleRef) -> String {
        missing_role(role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        }
    }

    fn list(verb: &str, resource: &str, namespace: &str) -> Request {
        Request::Resource {
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            name: String::new(),
            namespace: namespace.into(),
        }
    }

    fn index() -> Index {
        let rule = |res: &str| json!([{"apiGroups": [""], "resources": [res], "verbs": ["list"]}]);
        let binding = |kind: &str, role: &str, subjects: Value| {
            json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": subjects})
        };
        let objects: BTreeMap<String, Value> = [
            (
                "/registry/roles/foo/svc",
                json!({"rules": rule("services")}),
            ),
            (
                "/registry/clusterroles/pods",
                json!({"rules": rule("pods")}),
            ),
            (
                "/registry/clusterroles/nodes",
                json!({"rules": rule("nodes")}),
            ),
            (
                "/registry/rolebindings/foo/sa",
                binding(
                    "Role",
                    "svc",
                    json!([{"kind": "ServiceAccount", "name": "default"}]),
                ),
            ),
            (
                "/registry/rolebindings/foo/pods",
                binding(
                    "ClusterRole",
                    "pods",
                    json!([{"kind": "Group", "name": "devs"}]),
                ),
            ),
            (
                "/registry/rolebindings/foo/nodes",
                binding(
                    "ClusterRole",
                    "nodes",
                    json!([{"kind": "User", "name": "bob"}]),
                ),
            ),
            (
                "/registry/clusterrolebindings/ops",
                binding(
                    "ClusterRole",
                    "pods",
                    json!([{"kind": "User", "name": "ops"}]),
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Index::build(&objects)
    }

    #[test]
    fn bindings_grant_where_kube_says() {
        let index = index();
        let sa = user("system:serviceaccount:foo:default", &[]);
        assert!(index.allows(&sa, &list("list", "services", "foo")));
        assert!(!index.allows(&sa, &list("list", "services", "bar")));
        assert!(!index.allows(&sa, &list("watch", "services", "foo")));
        let dev = user("alice", &["devs"]);
        assert!(index.allows(&dev, &list("list", "pods", "foo")));
        assert!(!index.allows(&dev, &list("list", "pods", "bar")));
        assert!(!index.allows(&dev, &list("list", "pods", "")));
        // A ClusterRole for nodes bound by a RoleBinding grants nothing.
        assert!(!index.allows(&user("bob", &[]), &list("list", "nodes", "")));
        let ops = user("ops", &[]);
        assert!(index.allows(&ops, &list("list", "pods", "bar")));
        assert!(index.allows(&ops, &list("list", "pods", "")));
        assert_eq!(index.rules_for(&dev, "foo").len(), 1);
        assert!(index.rules_for(&dev, "").is_empty());
    }
}
