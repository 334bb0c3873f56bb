//! The NodeRestriction admission plugin (kube's `plugin/pkg/admission/noderestriction`): the
//! Node authorizer lets a node write Nodes, pod status, mirror pods, Leases and tokens in
//! general; this narrows each write to the node's own objects, seeing the object as written.
//! Other users pass untouched after one string comparison.
//!
//! It runs before the registry's write, on the object a create or update would store (a
//! patch is applied to the current object here to see it). Between that read and the write
//! another client could change the object: the checks that depend on the old object (a pod's
//! `spec.nodeName`, a Node's taints and labels) then judged the previous version — the pod's
//! node never changes once set, and a Node's taints changed meanwhile are rare enough that
//! kube's informer-fed checks accept the same window.

use axum::http::Method;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use skiff_common::loadbalancer;

use super::authn::UserInfo;
use super::nodeauthz::{self, NODE_LEASE_NAMESPACE, graph};
use super::object::meta_str;
use super::patch::{self, PatchType};
use super::rbac::attributes::forbidden_object;
use super::registry::Registry;
use super::request::ResourceRequest;
use super::resources;
use super::status::{ApiError, ApiResult};

/// kube's admission operations (a patch is an update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn of(method: &Method) -> Option<Operation> {
        match *method {
            Method::POST => Some(Operation::Create),
            Method::PUT | Method::PATCH => Some(Operation::Update),
            Method::DELETE => Some(Operation::Delete),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// One write as the admission checks see it (the escalation check takes the same).
pub use super::rbac::escalation::Write;

/// Admit `write` by `user`, or kube's 403 (`pods "x" is forbidden: node "n1" can only …`).
pub async fn admit(registry: &Registry, user: &UserInfo, write: &Write<'_>) -> ApiResult<()> {
    let Some(node) = nodeauthz::node_name(user) else {
        return Ok(());
    };
    let Some(op) = Operation::of(write.method) else {
        return Ok(());
    };
    let mut a = Attributes {
        registry,
        node,
        op,
        request: write.request,
        object: None,
        old: None,
    };
    if node.is_empty() {
        return Err(a.forbidden(format!(
            "could not determine node from user {:?}",
            user.name
        )));
    }
    let info = write.request.info;
    let concerned = matches!(
        (info.group, info.plural),
        ("", "pods" | "nodes" | "serviceaccounts") | ("coordination.k8s.io", "leases")
    );
    if !concerned {
        return Ok(());
    }
    if !a.load(write).await? {
        // The object is missing: the registry answers 404 as it would for anyone.
        return Ok(());
    }
    match info.plural {
        "pods" => a.pod().await,
        "nodes" => a.node_object(),
        "serviceaccounts" => a.service_account().await,
        _ => a.lease(),
    }
}

struct Attributes<'a> {
    registry: &'a Registry,
    node: &'a str,
    op: Operation,
    request: &'a ResourceRequest,
    /// The object a create or update would write.
    object: Option<Value>,
    /// The stored object an update replaces.
    old: Option<Value>,
}

impl Attributes<'_> {
    /// Read the new and old objects the operation needs; `false` when the object to update
    /// does not exist.
    async fn load(&mut self, write: &Write<'_>) -> ApiResult<bool> {
        let r = self.request;
        match self.op {
            Operation::Create => {
                self.object = Some(super::object::parse_body(write.content_type, write.body)?);
            }
            Operation::Update => {
                let name = r.name.as_deref().unwrap_or_default();
                let old = match self
                    .registry
                    .get(r.info, r.namespace.as_deref(), name)
                    .await
                {
                    Ok(old) => old,
                    Err(e) if e.code == 404 => return self.create_on_update(write),
                    Err(e) => return Err(e),
                };
                self.object = Some(match *write.method {
                    Method::PATCH => {
                        let ct = write.content_type.unwrap_or_default();
                        let Some(patch_type) = PatchType::from_content_type(ct) else {
                            return Err(ApiError::unsupported_media_type(ct));
                        };
                        patch::apply_patch(r.info.kind, &old, patch_type, write.body)?
                    }
                    _ => super::object::parse_body(write.content_type, write.body)?,
                });
                self.old = Some(old);
            }
            Operation::Delete => {}
        }
        Ok(true)
    }

    /// An update of a missing object that creates it (a PUT of a Lease, a server-side apply)
    /// is admitted as the create it is.
    fn create_on_update(&mut self, write: &Write<'_>) -> ApiResult<bool> {
        let ct = write.content_type.unwrap_or_default();
        let created = match *write.method {
            Method::PUT if self.request.info.plural == "leases" => {
                super::object::parse_body(write.content_type, write.body)?
            }
            Method::PATCH if PatchType::from_content_type(ct) == Some(PatchType::Apply) => {
                patch::apply_patch(
                    self.request.info.kind,
                    &json!({}),
                    PatchType::Apply,
                    write.body,
                )?
            }
            _ => return Ok(false),
        };
        self.op = Operation::Create;
        self.object = Some(created);
        Ok(true)
    }

    /// The name the request is about: the URL's, else the new object's (kube's
    /// `extractResourceName`).
    fn name(&self) -> &str {
        if let Some(n) = self.request.name.as_deref().filter(|n| !n.is_empty()) {
            return n;
        }
        let Some(obj) = &self.object else {
            return "Unknown";
        };
        meta_str(obj, "name")
            .filter(|n| !n.is_empty())
            .or_else(|| meta_str(obj, "generateName").filter(|n| !n.is_empty()))
            .unwrap_or("Unknown")
    }

    /// kube's `admission.NewForbidden`.
    fn forbidden(&self, reason: impl AsRef<str>) -> ApiError {
        let info = self.request.info;
        forbidden_object(info.group, info.plural, self.name(), reason.as_ref())
    }

    fn subresource(&self) -> &str {
        self.request.subresource.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self.request.namespace.as_deref()
    }

    /// The stored pod `name` in the request's namespace.
    async fn stored_pod(&self, name: &str) -> ApiResult<Value> {
        let pods = resources::lookup("", "v1", "pods").expect("pods are served");
        self.registry.get(pods, self.namespace(), name).await
    }

    async fn pod(&self) -> ApiResult<()> {
        let node = self.node;
        match (self.subresource(), self.op) {
            ("", Operation::Create) => self.mirror_pod_create().await,
            ("", Operation::Delete) => {
                let name = self.request.name.as_deref().unwrap_or_default();
                let pod = self.stored_pod(name).await?;
                if node_name_of(&pod) != node {
                    return Err(self.forbidden(format!(
                        "node {node:?} can only delete pods with spec.nodeName set to itself"
                    )));
                }
                Ok(())
            }
            ("", op) => Err(self.forbidden(format!(
                "unexpected operation {:?}, node {node:?} can only create and delete mirror pods",
                op.as_str()
            ))),
            ("status", Operation::Update) => self.pod_status(),
            ("status", op) => {
                Err(self.forbidden(format!("unexpected operation {:?}", op.as_str())))
            }
            (sub, _) => Err(self.forbidden(format!(
                "unexpected pod subresource {sub:?}, only 'status' and 'eviction' are allowed"
            ))),
        }
    }

    /// kube's `admitPodStatus`: only pods bound to the node, and not their labels.
    fn pod_status(&self) -> ApiResult<()> {
        let node = self.node;
        let (Some(old), Some(new)) = (&self.old, &self.object) else {
            return Ok(());
        };
        if node_name_of(old) != node {
            return Err(self.forbidden(format!(
                "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
            )));
        }
        if labels(old) != labels(new) {
            return Err(self.forbidden(format!(
                "node {node:?} cannot update labels through pod status"
            )));
        }
        Ok(())
    }

    /// kube's `admitPodCreate`: a mirror pod of this node, owned by its Node, that references
    /// nothing a node could read through it.
    async fn mirror_pod_create(&self) -> ApiResult<()> {
        let node = self.node;
        let Some(obj) = &self.object else {
            return Ok(());
        };
        let pod: Pod = serde_json::from_value(obj.clone())
            .map_err(|e| ApiError::bad_request(format!("the body is not a Pod: {e}")))?;
        if !graph::is_mirror(&pod) {
            return Err(self.forbidden(format!(
                "pod does not have {:?} annotation, node {node:?} can only create mirror pods",
                graph::MIRROR_POD_ANNOTATION
            )));
        }
        if node_name_of(obj) != node {
            return Err(self.forbidden(format!(
                "node {node:?} can only create pods with spec.nodeName set to itself"
            )));
        }
        self.owned_by_node(&pod).await?;
        self.references_nothing(&pod)
    }

    async fn owned_by_node(&self, pod: &Pod) -> ApiResult<()> {
        let node = self.node;
        let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
        let owner = match owners {
            [] => {
                return Err(self.forbidden(format!(
                    "node {node:?} can only create pods with an owner reference set to itself"
                )));
            }
            [one] => one,
            _ => {
                return Err(self.forbidden(format!(
                    "node {node:?} can only create pods with a single owner reference set to itself"
                )));
            }
        };
        if owner.api_version != "v1" || owner.kind != "Node" || owner.name != node {
            return Err(self.forbidden(format!(
                "node {node:?} can only create pods with an owner reference set to itself"
            )));
        }
        if owner.controller != Some(true) {
            return Err(self.forbidden(format!(
                "node {node:?} can only create pods with a controller owner reference set to itself"
            )));
        }
        if owner.block_owner_deletion == Some(true) {
            return Err(self.forbidden(format!(
                "node {node:?} must not set blockOwnerDeletion on an owner reference"
            )));
        }
        let nodes = resources::lookup("", "v1", "nodes").expect("nodes are served");
        let stored = self.registry.get(nodes, None, node).await?;
        let uid = meta_str(&stored, "uid").unwrap_or_default();
        if owner.uid != uid {
            return Err(self.forbidden(format!(
                "node {node} UID mismatch: expected {uid} got {}",
                owner.uid
            )));
        }
        Ok(())
    }

    fn references_nothing(&self, pod: &Pod) -> ApiResult<()> {
        let node = self.node;
        let Some(spec) = &pod.spec else {
            return Ok(());
        };
        let refuse = |what: &str| {
            Err(self.forbidden(format!(
                "node {node:?} can not create pods that reference {what}"
            )))
        };
        if spec
            .service_account_name
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return refuse("a service account");
        }
        let mut secrets = false;
        graph::visit_secret_names(spec, &mut |_| secrets = true);
        if secrets {
            return refuse("secrets");
        }
        let mut config_maps = false;
        graph::visit_config_map_names(spec, &mut |_| config_maps = true);
        if config_maps {
            return refuse("configmaps");
        }
        let claims = spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.persistent_volume_claim.is_some());
        if claims {
            return refuse("persistentvolumeclaims");
        }
        Ok(())
    }

    /// kube's `admitNode`: only its own Node, without new taints, restricted labels or a
    /// config source.
    fn node_object(&self) -> ApiResult<()> {
        let node = self.node;
        let requested = self.name();
        if requested != node {
            return Err(self.forbidden(format!(
                "node {node:?} is not allowed to modify node {requested:?}"
            )));
        }
        let new = self.object.as_ref();
        let config_source = |o: Option<&Value>| {
            o.and_then(|o| o.pointer("/spec/configSource"))
                .filter(|v| !v.is_null())
                .cloned()
        };
        match self.op {
            Operation::Create => {
                if config_source(new).is_some() {
                    return Err(self.forbidden(format!(
                        "node {node:?} is not allowed to create pods with a non-nil configSource"
                    )));
                }
                let forbidden = forbidden_labels(&modified_labels(new, None));
                if !forbidden.is_empty() {
                    return Err(self.forbidden(format!(
                        "node {node:?} is not allowed to set the following labels: {}",
                        forbidden.join(", ")
                    )));
                }
            }
            Operation::Update => {
                let old = self.old.as_ref();
                let source = config_source(new);
                if source.is_some() && source != config_source(old) {
                    return Err(self.forbidden(format!(
                        "node {node:?} is not allowed to update configSource to a new non-nil configSource"
                    )));
                }
                if taints(new) != taints(old) {
                    return Err(
                        self.forbidden(format!("node {node:?} is not allowed to modify taints"))
                    );
                }
                let forbidden = forbidden_labels(&modified_labels(new, old));
                if !forbidden.is_empty() {
                    return Err(self.forbidden(format!(
                        "is not allowed to modify labels: {}",
                        forbidden.join(", ")
                    )));
                }
            }
            Operation::Delete => {}
        }
        Ok(())
    }

    /// kube's `admitServiceAccount`: a node's TokenRequest must be bound to a pod on it.
    async fn service_account(&self) -> ApiResult<()> {
        if self.op != Operation::Create || self.subresource() != "token" {
            return Ok(());
        }
        let Some(request) = &self.object else {
            return Ok(());
        };
        let bound = request.pointer("/spec/boundObjectRef");
        let field = |f: &str| {
            bound
                .and_then(|b| b.get(f))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        if bound.is_none_or(Value::is_null)
            || field("apiVersion") != "v1"
            || field("kind") != "Pod"
            || field("name").is_empty()
        {
            return Err(self.forbidden("node requested token not bound to a pod"));
        }
        if field("uid").is_empty() {
            return Err(self.forbidden("node requested token with a pod binding without a uid"));
        }
        let pod = self.stored_pod(field("name")).await?;
        if meta_str(&pod, "uid") != Some(field("uid")) {
            return Err(self.forbidden(format!(
                "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                field("uid")
            )));
        }
        if node_name_of(&pod) != self.node {
            return Err(
                self.forbidden("node requested token bound to a pod scheduled on a different node")
            );
        }
        Ok(())
    }

    /// kube's `admitLease`: only the Lease named after the node, in `kube-node-lease`; and
    /// skiff's L2 announcement Leases.
    fn lease(&self) -> ApiResult<()> {
        if self.namespace() == Some(loadbalancer::LEASE_NAMESPACE) {
            return self.announcement_lease();
        }
        if self.namespace() != Some(NODE_LEASE_NAMESPACE) {
            return Err(self.forbidden(format!(
                "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
            )));
        }
        let name = match self.op {
            Operation::Create => self
                .object
                .as_ref()
                .and_then(|o| meta_str(o, "name"))
                .unwrap_or_default(),
            _ => self.request.name.as_deref().unwrap_or_default(),
        };
        if name != self.node {
            return Err(self.forbidden(
                "can only access node lease with the same name as the requesting node",
            ));
        }
        Ok(())
    }
}

impl Attributes<'_> {
    /// An announcement Lease: named with the prefix, and written with no holder or this node
    /// as the holder (a node takes a Lease over or lets it go, never hands it to another).
    fn announcement_lease(&self) -> ApiResult<()> {
        let name = match self.op {
            Operation::Create => self
                .object
                .as_ref()
                .and_then(|o| meta_str(o, "name"))
                .unwrap_or_default(),
            _ => self.request.name.as_deref().unwrap_or_default(),
        };
        if !name.starts_with(loadbalancer::LEASE_PREFIX) {
            return Err(self.forbidden(format!(
                "can only access leases named {}* in the {:?} namespace",
                loadbalancer::LEASE_PREFIX,
                loadbalancer::LEASE_NAMESPACE
            )));
        }
        if self.op == Operation::Delete {
            return Err(self.forbidden("cannot delete an L2 announcement lease"));
        }
        let holder = self
            .object
            .as_ref()
            .and_then(|o| o.pointer("/spec/holderIdentity"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !holder.is_empty() && holder != self.node {
            return Err(self.forbidden(format!(
                "node {:?} can only hold an L2 announcement lease itself, not for {holder:?}",
                self.node
            )));
        }
        Ok(())
    }
}

fn node_name_of(pod: &Value) -> &str {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Labels, with none and an empty map alike (kube compares with `labels.Equals`).
fn labels(obj: &Value) -> serde_json::Map<String, Value> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Taints, with none and an empty list alike (kube's `Semantic.DeepEqual`).
fn taints(node: Option<&Value>) -> Vec<Value> {
    node.and_then(|n| n.pointer("/spec/taints"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Label keys added, removed or changed between `old` and `new` (kube's `getModifiedLabels`).
fn modified_labels(new: Option<&Value>, old: Option<&Value>) -> Vec<String> {
    let new = new.map(labels).unwrap_or_default();
    let old = old.map(labels).unwrap_or_default();
    let mut keys: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(old.keys().filter(|k| !new.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn label_namespace(key: &str) -> &str {
    key.split_once('/').map(|(ns, _)| ns).unwrap_or_default()
}

fn in_domain(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The labels kubelets set on their own Node (kube's `kubeletapis.IsKubeletLabel`).
fn is_kubelet_label(key: &str) -> bool {
    const KUBELET_LABELS: [&str; 11] = [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    let ns = label_namespace(key);
    KUBELET_LABELS.contains(&key)
        || in_domain(ns, "kubelet.kubernetes.io")
        || in_domain(ns, "node.kubernetes.io")
}

/// Of `modified`, the labels a node may not set (kube's `getForbiddenLabels`): anything under
/// `node-restriction.kubernetes.io/` (labels that steer sensitive workloads to nodes) and
/// `kubernetes.io` / `k8s.io` labels other than the kubelet's own.
fn forbidden_labels(modified: &[String]) -> Vec<String> {
    modified
        .iter()
        .filter(|key| {
            let ns = label_namespace(key);
            let kubernetes = in_domain(ns, "kubernetes.io") || in_domain(ns, "k8s.io");
            in_domain(ns, "node-restriction.kubernetes.io")
                || (kubernetes && !is_kubelet_label(key))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
