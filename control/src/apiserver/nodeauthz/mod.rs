//! The Node authorizer (kube's `--authorization-mode=Node`): a request from a node's
//! credential (`system:node:<name>` in `system:nodes`) may read the Secrets, ConfigMaps,
//! PersistentVolumeClaims and service-account tokens only of pods bound to that node — the
//! [`graph`] of pod references, kept current by a watch on the stored pods — and anything else
//! kube's `NodeRules` grant. Every other request, and every other user, gets no opinion and
//! goes on to RBAC ([`authorize`] is the chain `Node,RBAC`).
//!
//! A node may still write any Node, any pod status…: the NodeRules allow the verbs and the
//! NodeRestriction admission plugin (`noderestriction`) narrows them to the node's own objects.

pub mod graph;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::PolicyRule;
use skiff_common::loadbalancer;
use tokio::sync::watch as signal;

use self::graph::{Graph, Kind};
use super::authn::UserInfo;
use super::rbac::{self, rules::Request};
use super::status::ApiResult;
use crate::store::{EventKind, Revision, Store, StoreError, StoreResult, WatchEvent};

/// The group of node credentials (kube's `user.NodesGroup`).
pub const NODES_GROUP: &str = "system:nodes";
const NODE_USER_PREFIX: &str = "system:node:";
/// Where node Leases live (kube's `NamespaceNodeLease`).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
const PODS_PREFIX: &str = "/registry/pods/";

/// The node a user speaks for (kube's `NodeIdentity`): `Some(name)` for `system:node:<name>`
/// in `system:nodes` (the name may be empty: an unidentifiable node), `None` for anyone else.
/// The name prefix is tested first so other users pay one string comparison.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    user.groups.iter().any(|g| g == NODES_GROUP).then_some(name)
}

/// An authorizer's answer: kube's node authorizer never denies, it allows or leaves the
/// request to the next authorizer, with a reason that ends up in the 403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    NoOpinion(String),
}

fn no_opinion(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// The graph as of a store revision.
#[derive(Default)]
struct State {
    revision: Revision,
    graph: Graph,
}

pub struct NodeAuthorizer {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    /// kube's `bootstrappolicy.NodeRules()`, the same rules as the `system:node` ClusterRole.
    rules: Vec<PolicyRule>,
}

/// The authorizer chain `Node,RBAC`: allowed by either, or kube's 403 with the Node
/// authorizer's reason appended (`…: no relationship found between node 'n1' and this object`).
pub fn authorize(
    nodes: &NodeAuthorizer,
    rbac: &rbac::Authorizer,
    user: &UserInfo,
    request: &Request,
) -> ApiResult<()> {
    let Some(node) = node_name(user) else {
        return rbac.authorize(user, request);
    };
    let reason = match nodes.decide(&user.name, node, request) {
        Decision::Allow => return Ok(()),
        Decision::NoOpinion(reason) => reason,
    };
    rbac.authorize(user, request).map_err(|mut e| {
        if !reason.is_empty() {
            e.message = format!("{}: {reason}", e.message);
        }
        e
    })
}

/// The chain `Node,RBAC` as the access reviews see it (kube's union authorizer and rule
/// resolver): allowed by either, with the reasons of those that said no.
pub struct Chain<'a> {
    pub nodes: &'a NodeAuthorizer,
    pub rbac: &'a rbac::Authorizer,
}

impl rbac::review::AccessDecider for Chain<'_> {
    fn decide(&self, user: &UserInfo, request: &Request) -> rbac::authorizer::Decision {
        let node_reason = match node_name(user).map(|n| self.nodes.decide(&user.name, n, request)) {
            Some(Decision::Allow) => {
                return rbac::authorizer::Decision {
                    allowed: true,
                    reason: String::new(),
                };
            }
            Some(Decision::NoOpinion(reason)) => reason,
            None => String::new(),
        };
        let mut decision = self.rbac.decide(user, request);
        if !decision.allowed && !node_reason.is_empty() {
            // kube's union authorizer joins the reasons of every authorizer that said no.
            decision.reason = [node_reason, decision.reason]
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
        }
        decision
    }

    fn rules_review(&self, user: &UserInfo, namespace: &str) -> rbac::review::RulesReview {
        let mut review = rbac::review::AccessDecider::rules_review(self.rbac, user, namespace);
        if node_name(user).is_some() {
            // kube's node authorizer cannot enumerate what it allows (it depends on the pods
            // bound to the node), and says so.
            review.incomplete = true;
            review
                .errors
                .push("node authorizer does not support user rule resolution".into());
        }
        review
    }
}

impl NodeAuthorizer {
    /// An authorizer over `store`, with the graph of the pods stored now.
    pub async fn load(store: Arc<dyn Store>) -> StoreResult<NodeAuthorizer> {
        let authorizer = NodeAuthorizer::new(store);
        authorizer.resync().await?;
        Ok(authorizer)
    }

    fn new(store: Arc<dyn Store>) -> NodeAuthorizer {
        NodeAuthorizer {
            store,
            state: RwLock::new(State::default()),
            rules: rbac::bootstrap::node(),
        }
    }

    /// The decision for node `node` (user `user`) on `request` (kube's `NodeAuthorizer.Authorize`).
    pub fn decide(&self, user: &str, node: &str, request: &Request) -> Decision {
        if node.is_empty() {
            return no_opinion(format!("unknown node for user {user:?}"));
        }
        if let Request::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            namespace,
        } = request
        {
            let target = Target {
                node,
                verb,
                subresource,
                name,
                namespace,
            };
            let decided = match (group.as_str(), resource.as_str()) {
                ("", "secrets") => Some(self.read_namespaced(&target, Kind::Secret)),
                ("", "configmaps") => Some(self.read_namespaced(&target, Kind::ConfigMap)),
                ("", "persistentvolumeclaims") if subresource == "status" => {
                    Some(self.status_update(&target, Kind::PersistentVolumeClaim))
                }
                ("", "persistentvolumeclaims") => {
                    Some(self.get(&target, Some(Kind::PersistentVolumeClaim)))
                }
                // PersistentVolumes and VolumeAttachments are not served, so no pod leads to
                // one; kube decides them through the graph all the same, never by NodeRules.
                ("", "persistentvolumes") | ("storage.k8s.io", "volumeattachments") => {
                    Some(self.get(&target, None))
                }
                ("", "serviceaccounts") => Some(self.create_token(&target)),
                ("coordination.k8s.io", "leases") => Some(lease(&target)),
                ("storage.k8s.io", "csinodes") => Some(csi_node(&target)),
                _ => None,
            };
            if let Some(d) = decided {
                return d;
            }
        }
        if self.rules.iter().any(|r| rbac::rules::allows(r, request)) {
            Decision::Allow
        } else {
            no_opinion("")
        }
    }

    /// get/list/watch of one named object in a namespace (kube's `authorizeReadNamespacedObject`).
    fn read_namespaced(&self, t: &Target<'_>, kind: Kind) -> Decision {
        if !matches!(t.verb, "get" | "list" | "watch") {
            return no_opinion("can only read resources of this type");
        }
        if !t.subresource.is_empty() {
            return no_opinion("cannot read subresource");
        }
        if t.namespace.is_empty() {
            return no_opinion("can only read namespaced object of this type");
        }
        self.related(t, Some(kind))
    }

    /// kube's `authorizeGet`: individual gets only.
    fn get(&self, t: &Target<'_>, kind: Option<Kind>) -> Decision {
        if t.verb != "get" {
            return no_opinion("can only get individual resources of this type");
        }
        if !t.subresource.is_empty() {
            return no_opinion("cannot get subresource");
        }
        self.related(t, kind)
    }

    /// kube's `authorizeStatusUpdate`.
    fn status_update(&self, t: &Target<'_>, kind: Kind) -> Decision {
        if !matches!(t.verb, "update" | "patch") {
            return no_opinion("can only get/update/patch this type");
        }
        self.related(t, Some(kind))
    }

    /// kube's `authorizeCreateToken`: a token for a service account a pod on the node runs as.
    fn create_token(&self, t: &Target<'_>) -> Decision {
        if t.verb != "create" || t.name.is_empty() {
            return no_opinion("can only create tokens for individual service accounts");
        }
        if t.subresource != "token" {
            return no_opinion("can only create token subresource of serviceaccount");
        }
        self.related(t, Some(Kind::ServiceAccount))
    }

    /// kube's `authorize`: a path from the named object to the node (`None`: a kind no pod
    /// leads to here).
    fn related(&self, t: &Target<'_>, kind: Option<Kind>) -> Decision {
        if t.name.is_empty() {
            return no_opinion("No Object name found");
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        match kind {
            Some(k) if state.graph.has_path(t.node, k, t.namespace, t.name) => Decision::Allow,
            _ => no_opinion(format!(
                "no relationship found between node '{}' and this object",
                t.node
            )),
        }
    }

    /// Rebuild the graph from every stored pod; the revision it was read at.
    pub async fn resync(&self) -> StoreResult<Revision> {
        let revision = self.store.current_revision().await?;
        let page = self
            .store
            .list(PODS_PREFIX, None, 0, Some(revision))
            .await?;
        let mut graph = Graph::default();
        for kv in page.items {
            graph.set_pod(&kv.key, refs_of(&kv.value));
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.revision <= revision {
            *state = State { revision, graph };
        }
        Ok(state.revision)
    }

    /// Apply one watched change unless the graph already includes it.
    fn apply(&self, ev: WatchEvent) {
        let refs = match ev.kind {
            EventKind::Put => refs_of(&ev.kv.value),
            EventKind::Delete => None,
        };
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if ev.kv.mod_revision <= state.revision {
            return;
        }
        state.revision = ev.kv.mod_revision;
        state.graph.set_pod(&ev.kv.key, refs);
    }

    /// Follow the stored pods until `stopped`, re-listing whenever the watch breaks (kube's
    /// graph populator on a pod informer).
    pub async fn follow(&self, mut stopped: signal::Receiver<bool>) {
        loop {
            if let Err(e) = self.watch_once(&mut stopped).await {
                tracing::warn!(error = %e, "watching pods for the node authorizer failed; re-listing");
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

    async fn watch_once(&self, stopped: &mut signal::Receiver<bool>) -> StoreResult<()> {
        let revision = self.resync().await?;
        let mut events = self.store.watch(PODS_PREFIX, revision).await?;
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => self.apply(ev),
                    Some(Err(e)) => return Err(e),
                    None => return Err(StoreError::Unavailable("watch ended".into())),
                },
                _ = stopped.changed() => return Ok(()),
            }
        }
    }
}

/// A stored pod's references; a value that does not decode as a pod grants nothing.
fn refs_of(value: &[u8]) -> Option<graph::PodRefs> {
    let pod: Pod = serde_json::from_slice(value).ok()?;
    graph::pod_refs(&pod)
}

/// The parts of a resource request the node decisions look at.
struct Target<'a> {
    node: &'a str,
    verb: &'a str,
    subresource: &'a str,
    name: &'a str,
    namespace: &'a str,
}

/// kube's `authorizeLease`: the node's own Lease in `kube-node-lease` (the name of a create
/// is checked by NodeRestriction, which sees the object); and skiff's L2 announcement Leases.
fn lease(t: &Target<'_>) -> Decision {
    if t.namespace == loadbalancer::LEASE_NAMESPACE {
        return announcement_lease(t);
    }
    if !matches!(t.verb, "get" | "create" | "update" | "patch" | "delete") {
        return no_opinion("can only get, create, update, patch, or delete a node lease");
    }
    if t.namespace != NODE_LEASE_NAMESPACE {
        return no_opinion(format!(
            "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
        ));
    }
    if t.verb != "create" && t.name != t.node {
        return no_opinion("can only access node lease with the same name as the requesting node");
    }
    Decision::Allow
}

/// The Leases that pick the node announcing a LoadBalancer address: every node competes for
/// them, so any node may read and write any of them, and nothing else in kube-system. No
/// delete: they go with their Service (owner reference). NodeRestriction checks the name of
/// a create and that a node writes only itself as the holder.
fn announcement_lease(t: &Target<'_>) -> Decision {
    if !matches!(t.verb, "get" | "create" | "update" | "patch") {
        return no_opinion("can only get, create, update, or patch an L2 announcement lease");
    }
    if t.verb != "create" && !t.name.starts_with(loadbalancer::LEASE_PREFIX) {
        return no_opinion(format!(
            "can only access leases named {}* in the {:?} namespace",
            loadbalancer::LEASE_PREFIX,
            loadbalancer::LEASE_NAMESPACE
        ));
    }
    Decision::Allow
}

/// kube's `authorizeCSINode`: the node's own CSINode.
fn csi_node(t: &Target<'_>) -> Decision {
    if !matches!(t.verb, "get" | "create" | "update" | "patch" | "delete") {
        return no_opinion("can only get, create, update, patch, or delete a CSINode");
    }
    if !t.subresource.is_empty() {
        return no_opinion("cannot authorize CSINode subresources");
    }
    if t.verb != "create" && t.name != t.node {
        return no_opinion("can only access CSINode with the same name as the requesting node");
    }
    Decision::Allow
}

#[cfg(test)]
mod tests;
