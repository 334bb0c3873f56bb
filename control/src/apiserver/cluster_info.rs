//! Bootstrap-token discovery, the API server's part (what `kubeadm init` sets up): the
//! ConfigMap `cluster-info` in `kube-public` holds a kubeconfig with the cluster's address and
//! CA and no credentials, readable by `system:anonymous`, so a joining node can fetch it before
//! it trusts anything. The node trusts it once a `jws-kubeconfig-<token-id>` signature in it
//! (kept by the bootstrap-signer controller) verifies with its token, and the CA's public-key
//! hash matches the one it was given.
//!
//! Also here: the namespaced Roles and RoleBindings of that flow (kube's and kubeadm's), made
//! at every start and put back if removed.

use serde_json::{Value, json};

use super::registry::{Registry, WriteOptions};
use super::resources;
use super::status::ApiResult;

pub const NAMESPACE: &str = "kube-public";
pub const NAME: &str = "cluster-info";
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// The bootstrap signer's service account (in kube-system), as kube names it.
pub const SIGNER_ACCOUNT: &str = "bootstrap-signer";
/// The token cleaner's service account (in kube-system).
pub const CLEANER_ACCOUNT: &str = "token-cleaner";
const RBAC: &str = "rbac.authorization.k8s.io";

/// A kubeconfig with the cluster only, as kubeadm writes it into `cluster-info`.
pub fn discovery_kubeconfig(server: &str, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
    )
}

/// Publish `cluster-info` for `server`, keeping the signatures already in it, and the
/// Roles and RoleBindings discovery needs.
pub async fn publish(registry: &Registry, server: &str, ca_pem: &str) -> ApiResult<()> {
    let kubeconfig = discovery_kubeconfig(server, ca_pem);
    let info = resources::lookup("", "v1", "configmaps").expect("configmaps are served");
    match registry.get(info, Some(NAMESPACE), NAME).await {
        Ok(mut cm) => {
            if cm["data"][KUBECONFIG_KEY].as_str() != Some(kubeconfig.as_str()) {
                if !cm["data"].is_object() {
                    cm["data"] = json!({});
                }
                cm["data"][KUBECONFIG_KEY] = json!(kubeconfig);
                let opts = WriteOptions::default();
                registry
                    .update(info, Some(NAMESPACE), NAME, None, cm, opts)
                    .await?;
            }
        }
        Err(e) if e.code == 404 => {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "data": {KUBECONFIG_KEY: kubeconfig}});
            registry
                .create(info, Some(NAMESPACE), cm, WriteOptions::default())
                .await?;
        }
        Err(e) => return Err(e),
    }
    for (ns, role, binding) in policy() {
        ensure(registry, "roles", ns, role).await?;
        ensure(registry, "rolebindings", ns, binding).await?;
    }
    Ok(())
}

/// Create `obj` unless it exists (a user's edit of it stays).
async fn ensure(registry: &Registry, plural: &str, ns: &str, obj: Value) -> ApiResult<()> {
    let info = resources::lookup(RBAC, "v1", plural).expect("RBAC is served");
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match registry.get(info, Some(ns), &name).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => registry
            .create(info, Some(ns), obj, WriteOptions::default())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

fn rule(verbs: &[&str], resources: &[&str], names: &[&str]) -> Value {
    let mut r = json!({"apiGroups": [""], "resources": resources, "verbs": verbs});
    if !names.is_empty() {
        r["resourceNames"] = json!(names);
    }
    r
}

fn role(ns: &str, name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": format!("{RBAC}/v1"), "kind": "Role",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "rules": rules})
}

fn binding(ns: &str, name: &str, subject: Value) -> Value {
    json!({"apiVersion": format!("{RBAC}/v1"), "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name},
        "subjects": [subject]})
}

/// (namespace, Role, RoleBinding): anonymous may read `cluster-info` (kubeadm's
/// `kubeadm:bootstrap-signer-clusterinfo`); the bootstrap signer may read the token Secrets in
/// kube-system and keep `cluster-info` (kube's `system:controller:bootstrap-signer`); the
/// token cleaner may delete them (kube's `system:controller:token-cleaner`).
fn policy() -> Vec<(&'static str, Value, Value)> {
    let anonymous = json!({"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"});
    let signer =
        json!({"kind": "ServiceAccount", "name": SIGNER_ACCOUNT, "namespace": "kube-system"});
    let reader = "kubeadm:bootstrap-signer-clusterinfo";
    let controller = "system:controller:bootstrap-signer";
    let cleaner = "system:controller:token-cleaner";
    let cleaner_account =
        json!({"kind": "ServiceAccount", "name": CLEANER_ACCOUNT, "namespace": "kube-system"});
    vec![
        (
            NAMESPACE,
            role(
                NAMESPACE,
                reader,
                vec![rule(&["get"], &["configmaps"], &[NAME])],
            ),
            binding(NAMESPACE, reader, anonymous),
        ),
        (
            NAMESPACE,
            role(
                NAMESPACE,
                controller,
                vec![
                    rule(&["get", "list", "watch"], &["configmaps"], &[]),
                    rule(&["update"], &["configmaps"], &[NAME]),
                    json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                        "verbs": ["create", "patch", "update"]}),
                ],
            ),
            binding(NAMESPACE, controller, signer.clone()),
        ),
        (
            "kube-system",
            role(
                "kube-system",
                controller,
                vec![rule(&["get", "list", "watch"], &["secrets"], &[])],
            ),
            binding("kube-system", controller, signer),
        ),
        (
            "kube-system",
            role(
                "kube-system",
                cleaner,
                vec![
                    rule(&["delete", "get", "list", "watch"], &["secrets"], &[]),
                    json!({"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
                        "verbs": ["create", "patch", "update"]}),
                ],
            ),
            binding("kube-system", cleaner, cleaner_account),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discovery_kubeconfig_names_the_cluster_only() {
        let text = discovery_kubeconfig("https://10.0.0.1:6443", "PEM");
        let kc: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(
            kc["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            kc["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert!(kc["users"].is_null());
    }

    #[test]
    fn anonymous_reads_cluster_info_and_nothing_else() {
        let p = policy();
        let (ns, role, binding) = &p[0];
        assert_eq!(*ns, "kube-public");
        assert_eq!(role["rules"][0]["resourceNames"], json!(["cluster-info"]));
        assert_eq!(role["rules"][0]["verbs"], json!(["get"]));
        assert_eq!(binding["subjects"][0]["name"], "system:anonymous");
    }
}
