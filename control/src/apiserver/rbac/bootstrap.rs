//! The default roles and bindings kube-apiserver bootstraps (its `bootstrappolicy`), and their
//! reconciliation at every start: what is missing is created; a default with the annotation
//! `rbac.authorization.kubernetes.io/autoupdate: "false"` is left alone; any other gets back the
//! rules, subjects, labels and annotations it lacks, keeping what users added (kube's
//! `reconciliation.ReconcileRole` / `ReconcileRoleBinding` in union mode).

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use super::rules;
use crate::apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use crate::apiserver::resources::{self, ResourceInfo};
use crate::apiserver::status::ApiResult;

pub const GROUP: &str = "rbac.authorization.k8s.io";
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const BOOTSTRAPPING: &str = "kubernetes.io/bootstrapping";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENT_WRITE: &[&str] = &["create", "patch", "update"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A resource rule (kube's `rbacv1helpers.NewRule(verbs...).Groups(...).Resources(...)`).
pub(super) fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        ..Default::default()
    }
}

pub(super) fn named(
    verbs: &[&str],
    groups: &[&str],
    resources: &[&str],
    names: &[&str],
) -> PolicyRule {
    PolicyRule {
        resource_names: Some(strings(names)),
        ..rule(verbs, groups, resources)
    }
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strings(verbs),
        non_resource_urls: Some(strings(urls)),
        ..Default::default()
    }
}

pub(super) fn events_rule() -> PolicyRule {
    rule(EVENT_WRITE, &["", "events.k8s.io"], &["events"])
}

fn aggregate_to_view() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn aggregate_to_edit() -> Vec<PolicyRule> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn aggregate_to_admin() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(READ_WRITE, &[GROUP], &["rolebindings", "roles"]),
    ]
}

fn kube_controller_manager() -> Vec<PolicyRule> {
    vec![
        events_rule(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[""], &["secrets"]),
        rule(
            &["get"],
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
        ),
        rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(&["list", "watch"], &["*"], &["*"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

fn kube_scheduler() -> Vec<PolicyRule> {
    vec![
        events_rule(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        rule(READ, &[""], &["nodes"]),
        rule(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        rule(&["create"], &[""], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &[""], &["replicationcontrollers", "services"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(READ, &["storage.k8s.io"], &["csinodes"]),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
    ]
}

/// kube's `NodeRules()`: the `system:node` role, and what the Node authorizer grants nodes.
pub fn node() -> Vec<PolicyRule> {
    vec![
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        rule(READ, &[""], &["services"]),
        rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        rule(&["patch", "update"], &[""], &["nodes"]),
        rule(EVENT_WRITE, &[""], &["events"]),
        rule(READ, &[""], &["pods"]),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(READ, &[""], &["configmaps", "secrets"]),
        rule(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["get"], &[""], &["endpoints"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(
            &["create", "delete", "get", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            &["get", "patch", "update"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

/// What every authenticated user may ask about itself.
fn basic_user() -> Vec<PolicyRule> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        ),
        rule(
            &["create"],
            &["authentication.k8s.io"],
            &["selfsubjectreviews"],
        ),
    ]
}

/// Discovery, OpenAPI, health and version: what every authenticated user may read.
fn discovery() -> Vec<PolicyRule> {
    vec![urls(
        &["get"],
        &[
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
            "/healthz",
            "/livez",
            "/openapi",
            "/openapi/*",
            "/readyz",
            "/version",
            "/version/",
        ],
    )]
}

/// What a service proxy (kube-proxy, the agent's proxy) reads.
fn node_proxier() -> Vec<PolicyRule> {
    vec![
        rule(&["list", "watch"], &[""], &["endpoints", "services"]),
        rule(READ, &[""], &["nodes"]),
        events_rule(),
        rule(
            &["list", "watch"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
    ]
}

/// The default ClusterRoles, as kube-apiserver 1.33 bootstraps them (the subset skiff's
/// components and users rely on).
pub fn cluster_roles() -> Vec<Value> {
    let csr = "certificates.k8s.io";
    let plain: Vec<(&str, Vec<PolicyRule>, &[&str])> = vec![
        (
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            &[],
        ),
        (
            "system:aggregate-to-admin",
            aggregate_to_admin(),
            &["admin"],
        ),
        ("system:aggregate-to-edit", aggregate_to_edit(), &["edit"]),
        ("system:aggregate-to-view", aggregate_to_view(), &["view"]),
        ("system:basic-user", basic_user(), &[]),
        (
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![rule(
                &["create"],
                &[csr],
                &["certificatesigningrequests/nodeclient"],
            )],
            &[],
        ),
        (
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![rule(
                &["create"],
                &[csr],
                &["certificatesigningrequests/selfnodeclient"],
            )],
            &[],
        ),
        ("system:discovery", discovery(), &[]),
        (
            "system:kube-controller-manager",
            kube_controller_manager(),
            &[],
        ),
        ("system:kube-scheduler", kube_scheduler(), &[]),
        ("system:node", node(), &[]),
        (
            "system:node-bootstrapper",
            vec![rule(
                &["create", "get", "list", "watch"],
                &[csr],
                &["certificatesigningrequests"],
            )],
            &[],
        ),
        ("system:node-proxier", node_proxier(), &[]),
        (
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
            &[],
        ),
    ];
    let mut out = vec![
        aggregated("admin", "admin", &[]),
        aggregated("edit", "edit", &["admin"]),
        aggregated("view", "view", &["edit"]),
    ];
    for (name, rules, into) in plain {
        let mut role = metadata("ClusterRole", name, into);
        role["rules"] = serde_json::to_value(rules).unwrap_or_default();
        out.push(role);
    }
    out
}

/// A bootstrap object's envelope: the bootstrapping label, `aggregate-to-<into>` labels and
/// the autoupdate annotation.
pub(super) fn metadata(kind: &str, name: &str, aggregate_into: &[&str]) -> Value {
    let mut labels = json!({BOOTSTRAPPING: "rbac-defaults"});
    for target in aggregate_into {
        labels[format!("rbac.authorization.k8s.io/aggregate-to-{target}")] = json!("true");
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}},
    })
}

/// `admin`, `edit`, `view`: the union of the ClusterRoles labelled `aggregate-to-<name>`.
fn aggregated(name: &str, selector: &str, into: &[&str]) -> Value {
    let mut role = metadata("ClusterRole", name, into);
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{selector}"): "true"}},
    ]});
    role
}

/// The default ClusterRoleBindings: (role, users, groups).
pub fn cluster_role_bindings() -> Vec<Value> {
    let auth = "system:authenticated";
    let defaults: [(&str, &[&str], &[&str]); 8] = [
        ("cluster-admin", &[], &["system:masters"]),
        ("system:basic-user", &[], &[auth]),
        ("system:discovery", &[], &[auth]),
        (
            "system:kube-controller-manager",
            &["system:kube-controller-manager"],
            &[],
        ),
        ("system:kube-scheduler", &["system:kube-scheduler"], &[]),
        // Nodes are authorized by the Node authorizer; kube keeps this binding without subjects.
        ("system:node", &[], &[]),
        ("system:node-proxier", &["system:kube-proxy"], &[]),
        (
            "system:public-info-viewer",
            &[],
            &[auth, "system:unauthenticated"],
        ),
    ];
    defaults
        .iter()
        .map(|(role, users, groups)| {
            let mut b = metadata("ClusterRoleBinding", role, &[]);
            b["roleRef"] = json!({"apiGroup": GROUP, "kind": "ClusterRole", "name": role});
            let subjects: Vec<Value> = users
                .iter()
                .map(|u| ("User", u))
                .chain(groups.iter().map(|g| ("Group", g)))
                .map(|(kind, name)| json!({"apiGroup": GROUP, "kind": kind, "name": name}))
                .collect();
            if !subjects.is_empty() {
                b["subjects"] = json!(subjects);
            }
            b
        })
        .collect()
}

/// The ClusterRoleBindings kubeadm creates for node TLS bootstrapping, named `skiff:` and
/// bound to `system:bootstrappers` itself rather than kubeadm's per-token group (a skiff
/// token's extra groups are the operator's choice): bootstrappers may create CSRs and have
/// their node client requests auto-approved, nodes have their renewals auto-approved and, as
/// skiff's agent is also its node's service proxy (as k3s's agent is), read what a proxy reads.
/// Reconciled like the defaults.
pub fn node_bootstrap_bindings() -> Vec<Value> {
    let csr_role = "system:certificates.k8s.io:certificatesigningrequests";
    let bootstrappers = "system:bootstrappers";
    let nodes = "system:nodes";
    // (name, role, group)
    let defaults = [
        (
            "skiff:kubelet-bootstrap",
            "system:node-bootstrapper".to_string(),
            bootstrappers,
        ),
        (
            "skiff:node-autoapprove-bootstrap",
            format!("{csr_role}:nodeclient"),
            bootstrappers,
        ),
        (
            "skiff:node-autoapprove-certificate-rotation",
            format!("{csr_role}:selfnodeclient"),
            nodes,
        ),
        (
            "skiff:node-proxier",
            "system:node-proxier".to_string(),
            nodes,
        ),
    ];
    defaults
        .iter()
        .map(|(name, role, group)| {
            let mut b = metadata("ClusterRoleBinding", name, &[]);
            b["roleRef"] = json!({"apiGroup": GROUP, "kind": "ClusterRole", "name": role});
            b["subjects"] = json!([{"apiGroup": GROUP, "kind": "Group", "name": group}]);
            b
        })
        .collect()
}

fn info(plural: &str) -> &'static ResourceInfo {
    resources::lookup(GROUP, "v1", plural).expect("RBAC resources are served")
}

/// Whether a user marked the object as theirs (`autoupdate: "false"`).
fn protected(obj: &Value) -> bool {
    obj["metadata"]["annotations"][AUTOUPDATE].as_str() == Some("false")
}

/// Add the labels and annotations of `expected` that `existing` lacks (existing values win).
fn merge_meta(existing: &mut Value, expected: &Value) {
    for field in ["labels", "annotations"] {
        let Some(want) = expected["metadata"][field].as_object() else {
            continue;
        };
        let have = &mut existing["metadata"][field];
        if !have.is_object() {
            *have = json!({});
        }
        for (k, v) in want {
            if have.get(k).is_none() {
                have[k] = v.clone();
            }
        }
    }
}

fn policy_rules(v: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(v["rules"].clone()).unwrap_or_default()
}

/// Give `existing` the rules and selectors of `expected` it lacks.
fn reconcile_role(existing: &mut Value, expected: &Value) {
    merge_meta(existing, expected);
    let missing = rules::uncovered(&policy_rules(existing), &policy_rules(expected));
    if !missing.is_empty() {
        let mut all = policy_rules(existing);
        all.extend(missing);
        existing["rules"] = serde_json::to_value(all).unwrap_or_default();
    }
    if let Some(want) = expected["aggregationRule"]["clusterRoleSelectors"].as_array() {
        let rule = &mut existing["aggregationRule"];
        if !rule["clusterRoleSelectors"].is_array() {
            *rule = json!({"clusterRoleSelectors": []});
        }
        if let Some(have) = rule["clusterRoleSelectors"].as_array_mut() {
            for sel in want {
                if !have.contains(sel) {
                    have.push(sel.clone());
                }
            }
        }
    }
}

/// Give `existing` the subjects of `expected` it lacks.
fn reconcile_binding(existing: &mut Value, expected: &Value) {
    merge_meta(existing, expected);
    let Some(want) = expected["subjects"].as_array() else {
        return;
    };
    if !existing["subjects"].is_array() {
        existing["subjects"] = json!([]);
    }
    if let Some(have) = existing["subjects"].as_array_mut() {
        for s in want {
            if !have.contains(s) {
                have.push(s.clone());
            }
        }
    }
}

/// Create or reconcile one default object.
async fn ensure(registry: &Registry, plural: &str, expected: Value) -> ApiResult<()> {
    let info = info(plural);
    let name = expected["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let opts = WriteOptions::default();
    let existing = match registry.get(info, None, &name).await {
        Ok(v) => v,
        Err(e) if e.code == 404 => {
            return registry.create(info, None, expected, opts).await.map(drop);
        }
        Err(e) => return Err(e),
    };
    if protected(&existing) {
        return Ok(());
    }
    if plural == "clusterrolebindings" && existing["roleRef"] != expected["roleRef"] {
        // roleRef is immutable: kube replaces such a binding.
        registry
            .delete(info, None, &name, &DeleteOptions::default())
            .await?;
        return registry.create(info, None, expected, opts).await.map(drop);
    }
    let mut updated = existing.clone();
    if plural == "clusterroles" {
        reconcile_role(&mut updated, &expected);
    } else {
        reconcile_binding(&mut updated, &expected);
    }
    if updated != existing {
        registry
            .update(info, None, &name, None, updated, opts)
            .await?;
    }
    Ok(())
}

/// Create what is missing of the default policy and reconcile the rest.
pub async fn reconcile(registry: &Registry) -> ApiResult<()> {
    ensure_all(registry, cluster_roles(), cluster_role_bindings()).await?;
    ensure_all(registry, Vec::new(), node_bootstrap_bindings()).await?;
    let (role, binding) = kubelet_api_admin();
    ensure_all(registry, vec![role], vec![binding]).await
}

/// The ClusterRoleBinding that lets the API server's kubelet client
/// ([`crate::apiserver::pki::KUBELET_CLIENT_CN`]) call the node agents: they authorize it by
/// SubjectAccessReview, and its certificate names no group.
pub const KUBELET_API_ADMIN_BINDING: &str = "system:kube-apiserver-kubelet-client";

/// kube's `system:kubelet-api-admin` ClusterRole (full access to the kubelet API: the Node
/// objects, `proxy` on them, and every verb on their kubelet subresources), and its binding
/// to the API server's kubelet client user, which kube's docs ask of every cluster whose
/// kubelets authorize by webhook (kube-apiserver does not bootstrap one; kubeadm-style
/// installers add it).
pub fn kubelet_api_admin() -> (Value, Value) {
    let name = "system:kubelet-api-admin";
    let mut role = metadata("ClusterRole", name, &[]);
    role["rules"] = serde_json::to_value(vec![
        rule(READ, &[""], &["nodes"]),
        rule(&["proxy"], &[""], &["nodes"]),
        rule(
            &["*"],
            &[""],
            &[
                "nodes/proxy",
                "nodes/metrics",
                "nodes/spec",
                "nodes/stats",
                "nodes/log",
            ],
        ),
    ])
    .unwrap_or_default();
    let mut binding = metadata("ClusterRoleBinding", KUBELET_API_ADMIN_BINDING, &[]);
    binding["roleRef"] = json!({"apiGroup": GROUP, "kind": "ClusterRole", "name": name});
    binding["subjects"] = json!([{
        "apiGroup": GROUP,
        "kind": "User",
        "name": crate::apiserver::pki::KUBELET_CLIENT_CN,
    }]);
    (role, binding)
}

/// Create or reconcile each of `roles` (ClusterRoles) and `bindings` (ClusterRoleBindings).
pub async fn ensure_all(
    registry: &Registry,
    roles: Vec<Value>,
    bindings: Vec<Value>,
) -> ApiResult<()> {
    for role in roles {
        ensure(registry, "clusterroles", role).await?;
    }
    for binding in bindings {
        ensure(registry, "clusterrolebindings", binding).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_role_is_labelled_and_autoupdated() {
        for obj in cluster_roles().iter().chain(cluster_role_bindings().iter()) {
            assert_eq!(obj["metadata"]["labels"][BOOTSTRAPPING], "rbac-defaults");
            assert_eq!(obj["metadata"]["annotations"][AUTOUPDATE], "true");
        }
        let names: Vec<String> = cluster_roles()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        for want in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:node",
            "system:discovery",
        ] {
            assert!(names.iter().any(|n| n == want), "{want}");
        }
    }

    #[test]
    fn the_kubelet_client_is_a_kubelet_api_admin_and_nothing_more() {
        let (role, binding) = kubelet_api_admin();
        for obj in [&role, &binding] {
            assert_eq!(obj["metadata"]["labels"][BOOTSTRAPPING], "rbac-defaults");
            assert_eq!(obj["metadata"]["annotations"][AUTOUPDATE], "true");
        }
        assert_eq!(role["metadata"]["name"], "system:kubelet-api-admin");
        assert_eq!(
            role["rules"][2],
            json!({"verbs": ["*"], "apiGroups": [""], "resources":
                ["nodes/proxy", "nodes/metrics", "nodes/spec", "nodes/stats", "nodes/log"]})
        );
        assert_eq!(binding["roleRef"]["name"], "system:kubelet-api-admin");
        assert_eq!(
            binding["subjects"],
            json!([{"apiGroup": GROUP, "kind": "User", "name": "kube-apiserver-kubelet-client"}])
        );
    }

    #[test]
    fn reconciling_adds_missing_rules_and_keeps_user_ones() {
        let expected = &cluster_roles()[3]; // cluster-admin
        let mut existing = json!({"metadata": {"name": "cluster-admin", "labels": {"mine": "1"}},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]});
        reconcile_role(&mut existing, expected);
        assert_eq!(existing["metadata"]["labels"]["mine"], "1");
        assert_eq!(
            existing["metadata"]["labels"][BOOTSTRAPPING],
            "rbac-defaults"
        );
        assert_eq!(existing["rules"][0]["resources"][0], "pods");
        assert!(rules::uncovered(&policy_rules(&existing), &policy_rules(expected)).is_empty());
    }

    #[test]
    fn node_bootstrap_bindings_name_default_roles() {
        let roles = cluster_roles();
        let bindings = node_bootstrap_bindings();
        assert_eq!(bindings.len(), 4);
        for b in &bindings {
            assert!(
                b["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("skiff:")
            );
            let role = &b["roleRef"]["name"];
            assert!(
                roles.iter().any(|r| &r["metadata"]["name"] == role),
                "{role}"
            );
            let group = b["subjects"][0]["name"].as_str().unwrap();
            assert!(["system:bootstrappers", "system:nodes"].contains(&group));
        }
    }
}
