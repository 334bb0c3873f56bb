//! The RBAC policy the authorization benchmark runs under: `roles` Roles and ClusterRoles and
//! `bindings` RoleBindings and ClusterRoleBindings spread over namespaces and subjects the way a
//! shared cluster grows them. Most name other users, groups and service accounts; the bench
//! user holds a few grants elsewhere (walked first), a Role in its namespace that does not cover
//! ConfigMaps, and finally `edit` through a RoleBinding in its namespace. The service account
//! gets `edit` through a RoleBinding in its own namespace.

use serde_json::{Value, json};

/// The user of the client certificate the benchmark issues, and its groups.
pub const BENCH_USER: &str = "bench-user";
pub const BENCH_GROUPS: [&str; 2] = ["developers", "group-07"];
/// The service account (in [`SA_NAMESPACE`]) whose token the benchmark requests.
pub const BENCH_SA: &str = "bench-sa";
pub const USER_NAMESPACE: &str = "authz-user";
pub const SA_NAMESPACE: &str = "authz-sa";
/// The namespaces of every identity the benchmark measures, filler grants included.
pub const BENCH_NAMESPACES: [&str; 4] =
    ["authz-admin", "authz-admin2", USER_NAMESPACE, SA_NAMESPACE];

/// Users, groups and service accounts the filler bindings draw their subjects from.
const USERS: u64 = 300;
const GROUPS: u64 = 30;
const SERVICE_ACCOUNTS: u64 = 5;
/// Filler namespaces: `app-NN` sort before the bench namespaces, `team-NN` after them, so the
/// bench user's grants there are walked before the one that matters.
const FILLER_NAMESPACES: usize = 20;
/// The bench user's RoleBindings in other namespaces.
const ELSEWHERE: [&str; 3] = ["app-01", "app-05", "app-11"];
/// RoleBindings and Roles the bench identities hold (counted in the totals).
const OWN_BINDINGS: usize = ELSEWHERE.len() + 3;
const OWN_ROLES: usize = 1;

/// What is created, in order: namespaces, then roles, then bindings (`(namespace, object)`).
pub struct Policy {
    pub namespaces: Vec<String>,
    pub roles: Vec<(Option<String>, Value)>,
    pub bindings: Vec<(Option<String>, Value)>,
}

/// A fixed xorshift sequence: the same policy and workload on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// Rules as applications ask for them: reads, a few writes, named Secrets and ConfigMaps.
fn rule_pool() -> Vec<Value> {
    let named = |res: &str, name: &str| json!({"apiGroups": [""], "resources": [res], "resourceNames": [name], "verbs": ["get"]});
    vec![
        rule(&[""], &["pods"], &["get", "list", "watch"]),
        rule(&[""], &["pods/log"], &["get"]),
        rule(&[""], &["services", "endpoints"], &["get", "list"]),
        named("configmaps", "app-config"),
        named("secrets", "db-password"),
        rule(
            &["apps"],
            &["deployments", "replicasets"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(
            &["batch"],
            &["jobs", "cronjobs"],
            &["create", "delete", "get"],
        ),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        rule(&[""], &["configmaps"], &["list", "watch"]),
        rule(&["networking.k8s.io"], &["ingresses"], &["get", "list"]),
        rule(&[""], &["persistentvolumeclaims"], &["get", "list"]),
        rule(&["coordination.k8s.io"], &["leases"], &["get", "update"]),
    ]
}

fn rules(rng: &mut Rng, pool: &[Value]) -> Vec<Value> {
    let n = 3 + rng.below(4);
    (0..n)
        .map(|_| pool[rng.below(pool.len() as u64) as usize].clone())
        .collect()
}

fn subject(rng: &mut Rng, namespace: &str) -> Value {
    match rng.below(10) {
        0..=4 => json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
            "name": format!("user-{:03}", rng.below(USERS))}),
        5..=7 => json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
            "name": format!("group-{:02}", rng.below(GROUPS))}),
        _ => json!({"kind": "ServiceAccount", "namespace": namespace,
            "name": format!("sa-{}", rng.below(SERVICE_ACCOUNTS))}),
    }
}

fn subjects(rng: &mut Rng, namespace: &str) -> Vec<Value> {
    let n = 1 + rng.below(3);
    (0..n).map(|_| subject(rng, namespace)).collect()
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name})
}

fn binding(
    kind: &str,
    name: &str,
    ns: Option<&str>,
    role: (&str, &str),
    subjects: Vec<Value>,
) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role.0, "name": role.1},
        "subjects": subjects,
    })
}

fn role(kind: &str, name: &str, ns: Option<&str>, rules: Vec<Value>) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
        "rules": rules})
}

fn namespaces() -> Vec<String> {
    let fillers =
        (0..FILLER_NAMESPACES).flat_map(|i| [format!("app-{i:02}"), format!("team-{i:02}")]);
    fillers.chain(BENCH_NAMESPACES.map(String::from)).collect()
}

impl Policy {
    /// `roles` Roles and ClusterRoles and `bindings` bindings in all, the bench identities'
    /// own included.
    pub fn new(roles: usize, bindings: usize) -> Policy {
        let namespaces = namespaces();
        let mut rng = Rng::new(0x05ee_d0fa_110c);
        let mut policy = Policy {
            namespaces,
            roles: Vec::new(),
            bindings: Vec::new(),
        };
        let filler_roles = roles.saturating_sub(OWN_ROLES);
        let cluster_roles = filler_roles / 4;
        policy.add_roles(&mut rng, filler_roles - cluster_roles, cluster_roles);
        policy.add_own_grants();
        let filler_bindings = bindings.saturating_sub(OWN_BINDINGS);
        let cluster_bindings = filler_bindings / 5;
        policy.add_bindings(
            &mut rng,
            filler_bindings - cluster_bindings,
            cluster_bindings,
            cluster_roles,
        );
        policy
    }

    fn add_roles(&mut self, rng: &mut Rng, roles: usize, cluster_roles: usize) {
        let pool = rule_pool();
        for i in 0..roles {
            let ns = &self.namespaces[i % self.namespaces.len()];
            let body = role("Role", &format!("role-{i:03}"), Some(ns), rules(rng, &pool));
            self.roles.push((Some(ns.clone()), body));
        }
        let mut cluster_pool = pool;
        cluster_pool.push(json!({"nonResourceURLs": ["/healthz", "/metrics"], "verbs": ["get"]}));
        for i in 0..cluster_roles {
            let body = role(
                "ClusterRole",
                &format!("filler-{i:03}"),
                None,
                rules(rng, &cluster_pool),
            );
            self.roles.push((None, body));
        }
    }

    /// The Role a filler RoleBinding in `ns` refers to: mostly one of the namespace's own,
    /// else a filler ClusterRole or one of kube's user-facing ones.
    fn role_ref(&self, rng: &mut Rng, ns: &str, cluster_roles: usize) -> (&'static str, String) {
        let local: Vec<&Value> = self
            .roles
            .iter()
            .filter(|(n, _)| n.as_deref() == Some(ns))
            .map(|(_, v)| v)
            .collect();
        match rng.below(10) {
            0..=6 if !local.is_empty() => {
                let r = local[rng.below(local.len() as u64) as usize];
                (
                    "Role",
                    r["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            }
            7 => (
                "ClusterRole",
                ["view", "edit", "admin"][rng.below(3) as usize].to_string(),
            ),
            _ => (
                "ClusterRole",
                format!("filler-{:03}", rng.below(cluster_roles as u64)),
            ),
        }
    }

    fn add_bindings(
        &mut self,
        rng: &mut Rng,
        bindings: usize,
        cluster_bindings: usize,
        cluster_roles: usize,
    ) {
        for i in 0..bindings {
            let ns = self.namespaces[rng.below(self.namespaces.len() as u64) as usize].clone();
            let (kind, name) = self.role_ref(rng, &ns, cluster_roles);
            let subjects = subjects(rng, &ns);
            let body = binding(
                "RoleBinding",
                &format!("binding-{i:03}"),
                Some(&ns),
                (kind, &name),
                subjects,
            );
            self.bindings.push((Some(ns), body));
        }
        for i in 0..cluster_bindings {
            let name = format!("filler-{:03}", rng.below(cluster_roles as u64));
            let subjects = subjects(rng, "default");
            let body = binding(
                "ClusterRoleBinding",
                &format!("filler-{i:03}"),
                None,
                ("ClusterRole", &name),
                subjects,
            );
            self.bindings.push((None, body));
        }
    }

    /// The bench identities' grants: only `edit` in their own namespace covers ConfigMaps.
    fn add_own_grants(&mut self) {
        for ns in ELSEWHERE {
            let body = binding(
                "RoleBinding",
                "bench-user-view",
                Some(ns),
                ("ClusterRole", "view"),
                vec![user("user-100"), user(BENCH_USER)],
            );
            self.bindings.push((Some(ns.into()), body));
        }
        let readers = vec![rule(
            &[""],
            &["pods", "pods/log"],
            &["get", "list", "watch"],
        )];
        let ns = Some(USER_NAMESPACE);
        self.roles.push((
            ns.map(String::from),
            role("Role", "pod-reader", ns, readers),
        ));
        let body = binding(
            "RoleBinding",
            "a-pod-readers",
            ns,
            ("Role", "pod-reader"),
            vec![user("user-013"), user(BENCH_USER)],
        );
        self.bindings.push((ns.map(String::from), body));
        let group =
            json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "group-03"});
        let body = binding(
            "RoleBinding",
            "app-editors",
            ns,
            ("ClusterRole", "edit"),
            vec![user("user-042"), group, user(BENCH_USER)],
        );
        self.bindings.push((ns.map(String::from), body));
        let sa = json!({"kind": "ServiceAccount", "namespace": SA_NAMESPACE, "name": BENCH_SA});
        let ns = Some(SA_NAMESPACE);
        let body = binding(
            "RoleBinding",
            "bench-sa-edit",
            ns,
            ("ClusterRole", "edit"),
            vec![sa],
        );
        self.bindings.push((ns.map(String::from), body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_bench_user(b: &Value) -> bool {
        b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == BENCH_USER)
    }

    #[test]
    fn the_policy_has_the_asked_sizes_and_buries_the_bench_users_grant() {
        let policy = Policy::new(200, 500);
        assert_eq!(policy.roles.len(), 200);
        assert_eq!(policy.bindings.len(), 500);
        let cluster = policy
            .bindings
            .iter()
            .filter(|(ns, _)| ns.is_none())
            .count();
        assert!(
            cluster > 50 && cluster < 150,
            "{cluster} ClusterRoleBindings"
        );
        // The grant that allows ConfigMaps is neither the user's first nor the namespace's only.
        let mut own: Vec<(&str, &str)> = policy
            .bindings
            .iter()
            .filter(|(_, b)| names_bench_user(b))
            .map(|(ns, b)| {
                (
                    ns.as_deref().unwrap_or(""),
                    b["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        own.sort();
        assert_eq!(own.len(), ELSEWHERE.len() + 2);
        assert_eq!(own.last(), Some(&(USER_NAMESPACE, "app-editors")));
        let in_user_ns = policy
            .bindings
            .iter()
            .filter(|(ns, _)| ns.as_deref() == Some(USER_NAMESPACE));
        assert!(
            in_user_ns.count() > 3,
            "filler bindings share the bench namespace"
        );
        // The same policy every run.
        let again = Policy::new(200, 500);
        assert_eq!(
            again.bindings.last().map(|b| &b.1),
            policy.bindings.last().map(|b| &b.1)
        );
    }
}
