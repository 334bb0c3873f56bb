//! The ClusterRoles of kube-controller-manager's controllers, each bound to the controller's
//! ServiceAccount in kube-system (kube's `bootstrappolicy/controller_policy.go`): a controller
//! calls the API with its account's token and holds only what its role grants. Trimmed to the
//! controllers skiff runs and the resources it serves.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};

use super::bootstrap::{self, GROUP, events_rule, metadata, named, rule};
use crate::apiserver::registry::Registry;
use crate::apiserver::status::ApiResult;

/// kube's prefix of controller roles; the rest of the name is the ServiceAccount's.
pub const ROLE_PREFIX: &str = "system:controller:";
const NAMESPACE: &str = "kube-system";

const READ: &[&str] = &["get", "list", "watch"];
/// Where kube's controllers `update` a status (or a deployment's revision annotation),
/// skiff's send a merge patch, so their roles also grant `patch` there; every other rule is
/// kube's.
const STATUS_WRITE: &[&str] = &["update", "patch"];

fn daemon_set_controller() -> Vec<PolicyRule> {
    let apps = &["extensions", "apps"];
    vec![
        rule(READ, apps, &["daemonsets"]),
        rule(STATUS_WRITE, apps, &["daemonsets/status"]),
        rule(&["update"], apps, &["daemonsets/finalizers"]),
        rule(&["list", "watch"], &[""], &["nodes"]),
        rule(
            &["list", "watch", "create", "delete", "patch"],
            &[""],
            &["pods"],
        ),
        rule(&["create"], &[""], &["pods/binding"]),
        rule(
            &[
                "get", "list", "watch", "create", "delete", "update", "patch",
            ],
            &["apps"],
            &["controllerrevisions"],
        ),
        events_rule(),
    ]
}

fn deployment_controller() -> Vec<PolicyRule> {
    let apps = &["extensions", "apps"];
    vec![
        rule(
            &["get", "list", "watch", "update", "patch"],
            apps,
            &["deployments"],
        ),
        rule(STATUS_WRITE, apps, &["deployments/status"]),
        rule(&["update"], apps, &["deployments/finalizers"]),
        rule(
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
            &["apps", "extensions"],
            &["replicasets"],
        ),
        rule(&["get", "list", "watch", "update"], &[""], &["pods"]),
        events_rule(),
    ]
}

fn disruption_controller() -> Vec<PolicyRule> {
    vec![
        rule(READ, &["extensions", "apps"], &["deployments"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &[""], &["replicationcontrollers"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(&["update"], &["policy"], &["poddisruptionbudgets/status"]),
        rule(&["get"], &["*"], &["*/scale"]),
        events_rule(),
    ]
}

fn endpoint_controller() -> Vec<PolicyRule> {
    vec![
        rule(READ, &[""], &["services", "pods"]),
        rule(
            &["get", "list", "watch", "create", "update", "delete"],
            &[""],
            &["endpoints"],
        ),
        rule(&["create"], &[""], &["endpoints/restricted"]),
        events_rule(),
    ]
}

fn endpointslice_controller() -> Vec<PolicyRule> {
    vec![
        rule(READ, &[""], &["services", "pods", "nodes"]),
        rule(&["update"], &[""], &["services/finalizers"]),
        rule(
            &["get", "list", "watch", "create", "update", "delete"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
        events_rule(),
    ]
}

fn generic_garbage_collector() -> Vec<PolicyRule> {
    vec![
        rule(
            &["get", "list", "watch", "patch", "update", "delete"],
            &["*"],
            &["*"],
        ),
        events_rule(),
    ]
}

fn job_controller() -> Vec<PolicyRule> {
    vec![
        rule(
            &["get", "list", "watch", "update", "patch"],
            &["batch"],
            &["jobs"],
        ),
        rule(STATUS_WRITE, &["batch"], &["jobs/status"]),
        rule(&["update"], &["batch"], &["jobs/finalizers"]),
        rule(
            &["list", "watch", "create", "delete", "patch"],
            &[""],
            &["pods"],
        ),
        events_rule(),
    ]
}

fn namespace_controller() -> Vec<PolicyRule> {
    vec![
        rule(&["get", "list", "watch", "delete"], &[""], &["namespaces"]),
        rule(&["update"], &[""], &["namespaces/finalize"]),
        rule(STATUS_WRITE, &[""], &["namespaces/status"]),
        rule(
            &["get", "list", "watch", "delete", "deletecollection"],
            &["*"],
            &["*"],
        ),
    ]
}

fn node_controller() -> Vec<PolicyRule> {
    vec![
        rule(
            &["get", "list", "watch", "update", "delete", "patch"],
            &[""],
            &["nodes"],
        ),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(&["list", "watch", "get", "delete"], &[""], &["pods"]),
        events_rule(),
    ]
}

fn replicaset_controller() -> Vec<PolicyRule> {
    let apps = &["apps", "extensions"];
    vec![
        rule(&["get", "list", "watch", "update"], apps, &["replicasets"]),
        rule(STATUS_WRITE, apps, &["replicasets/status"]),
        rule(&["update"], apps, &["replicasets/finalizers"]),
        rule(
            &["list", "watch", "patch", "create", "delete"],
            &[""],
            &["pods"],
        ),
        events_rule(),
    ]
}

fn service_account_controller() -> Vec<PolicyRule> {
    vec![
        rule(&["create"], &[""], &["serviceaccounts"]),
        events_rule(),
    ]
}

/// kube's cloud service controller's, which skiff's LoadBalancer IPAM runs as.
fn service_controller() -> Vec<PolicyRule> {
    vec![
        rule(READ, &[""], &["services"]),
        rule(STATUS_WRITE, &[""], &["services/status"]),
        // skiff's: the L2 announcement Leases of Services that are gone.
        rule(&["list", "delete"], &["coordination.k8s.io"], &["leases"]),
        events_rule(),
    ]
}

/// kube's: it writes `kube-root-ca.crt`; it reads ConfigMaps through the controller manager's
/// shared informer.
fn root_ca_cert_publisher() -> Vec<PolicyRule> {
    vec![
        rule(&["create", "update"], &[""], &["configmaps"]),
        events_rule(),
    ]
}

fn certificate_controller() -> Vec<PolicyRule> {
    let csr = "certificates.k8s.io";
    vec![
        rule(
            &["get", "list", "watch", "delete"],
            &[csr],
            &["certificatesigningrequests"],
        ),
        rule(
            &["update"],
            &[csr],
            &[
                "certificatesigningrequests/status",
                "certificatesigningrequests/approval",
            ],
        ),
        named(
            &["approve"],
            &[csr],
            &["signers"],
            &["kubernetes.io/kube-apiserver-client-kubelet"],
        ),
        named(
            &["sign"],
            &[csr],
            &["signers"],
            &[
                "kubernetes.io/legacy-unknown",
                "kubernetes.io/kube-apiserver-client",
                "kubernetes.io/kube-apiserver-client-kubelet",
                "kubernetes.io/kubelet-serving",
            ],
        ),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        events_rule(),
    ]
}

/// (account, rules) of every controller role.
fn controller_rules() -> Vec<(&'static str, Vec<PolicyRule>)> {
    vec![
        ("certificate-controller", certificate_controller()),
        ("daemon-set-controller", daemon_set_controller()),
        ("deployment-controller", deployment_controller()),
        ("disruption-controller", disruption_controller()),
        ("endpoint-controller", endpoint_controller()),
        ("endpointslice-controller", endpointslice_controller()),
        ("generic-garbage-collector", generic_garbage_collector()),
        ("job-controller", job_controller()),
        ("namespace-controller", namespace_controller()),
        ("node-controller", node_controller()),
        ("replicaset-controller", replicaset_controller()),
        ("root-ca-cert-publisher", root_ca_cert_publisher()),
        ("service-account-controller", service_account_controller()),
        ("service-controller", service_controller()),
    ]
}

/// The `system:controller:<account>` ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    controller_rules()
        .into_iter()
        .map(|(account, rules)| {
            let mut role = metadata("ClusterRole", &format!("{ROLE_PREFIX}{account}"), &[]);
            role["rules"] = serde_json::to_value(rules).unwrap_or_default();
            role
        })
        .collect()
}

/// Each controller role bound to `kube-system/<account>`.
pub fn cluster_role_bindings() -> Vec<Value> {
    controller_rules()
        .into_iter()
        .map(|(account, _)| {
            let name = format!("{ROLE_PREFIX}{account}");
            let mut b = metadata("ClusterRoleBinding", &name, &[]);
            b["roleRef"] = json!({"apiGroup": GROUP, "kind": "ClusterRole", "name": name});
            b["subjects"] =
                json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]);
            b
        })
        .collect()
}

/// Create what is missing of the controllers' roles and bindings and reconcile the rest, as
/// [`bootstrap::reconcile`] does for the other defaults.
pub async fn reconcile(registry: &Registry) -> ApiResult<()> {
    bootstrap::ensure_all(registry, cluster_roles(), cluster_role_bindings()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_role_is_bound_to_its_account() {
        let roles = cluster_roles();
        let bindings = cluster_role_bindings();
        assert_eq!(roles.len(), bindings.len());
        for (role, binding) in roles.iter().zip(&bindings) {
            let name = role["metadata"]["name"].as_str().unwrap();
            let account = name.strip_prefix(ROLE_PREFIX).unwrap();
            assert_eq!(binding["roleRef"]["name"], name);
            assert_eq!(binding["subjects"][0]["name"], account);
            assert_eq!(binding["subjects"][0]["namespace"], "kube-system");
        }
    }
}
