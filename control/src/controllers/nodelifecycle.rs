//! Node lifecycle controller, as kube's: it watches the node heartbeats (Leases in
//! `kube-node-lease` and the Ready condition's heartbeat) and
//!
//! * marks a node whose heartbeat has not changed for `node_monitor_grace_period` (measured
//!   on this controller's clock, from when it last saw the heartbeat change) Ready=Unknown,
//!   with its pressure conditions, "Kubelet stopped posting node status.";
//! * keeps the condition taints in step: `node.kubernetes.io/unreachable` for Unknown,
//!   `node.kubernetes.io/not-ready` for False (NoSchedule and NoExecute), none when Ready;
//! * marks the pods of a node that is not ready NotReady, and after `pod_eviction_timeout`
//!   of the node being unready evicts (deletes) them, except those tolerating the NoExecute
//!   taint for good; pods stuck terminating on an unreachable node (their kubelet cannot
//!   confirm) are then force-deleted, as kube's pod GC does, so their replacements can run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Result};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
const CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// What this controller remembers of a node (by uid).
struct Health {
    /// The heartbeat as last seen (lease renewTime and Ready heartbeat time).
    heartbeat: String,
    /// When it last changed, on our clock.
    observed: Instant,
    /// Since when the node is not Ready, on our clock.
    unready_since: Option<Instant>,
    /// Whether its pods were evicted in this unready spell.
    evicted: bool,
}

type Registry = Arc<Mutex<HashMap<String, Health>>>;

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let controller =
        Controller::for_shared_stream(informers.nodes.subscribe(), informers.nodes.store())
            // A node's lease is named after it.
            .watches_shared_stream(informers.leases.subscribe(), |lease: Arc<Lease>| {
                lease.metadata.name.clone().map(|n| ObjectRef::new(&n))
            });
    let registry: Registry = Arc::default();
    runtime::drive(
        "nodelifecycle",
        controller,
        ctx,
        4,
        move |node, ctx| reconcile(node, ctx, registry.clone()),
        tasks,
    );
}

/// How often every node is looked at (kube's node-monitor-period is 5 s against a 40 s grace).
fn monitor_period(ctx: &Context) -> Duration {
    (ctx.config.node_monitor_grace_period / 8)
        .clamp(Duration::from_millis(200), Duration::from_secs(5))
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn heartbeat_of(node: &Node, lease: Option<&Lease>) -> String {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_string());
    let posted = condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0.to_string());
    format!("{renew:?}|{posted:?}")
}

/// The taints the Ready condition calls for.
fn condition_taints(ready: &str) -> Vec<(&'static str, &'static str)> {
    let key = match ready {
        "True" => return Vec::new(),
        "False" => TAINT_NOT_READY,
        _ => TAINT_UNREACHABLE,
    };
    vec![(key, "NoSchedule"), (key, "NoExecute")]
}

/// The node's taints with the managed ones brought in line with `ready`; `None` if unchanged.
fn updated_taints(node: &Node, ready: &str) -> Option<Vec<Taint>> {
    let current: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let managed = |t: &Taint| {
        (t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY)
            && (t.effect == "NoSchedule" || t.effect == "NoExecute")
    };
    let wanted = condition_taints(ready);
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !managed(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
        .cloned()
        .collect();
    for (key, effect) in wanted {
        if !out.iter().any(|t| t.key == key && t.effect == effect) {
            out.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                time_added: (effect == "NoExecute").then(runtime::now),
                value: None,
            });
        }
    }
    (out != current).then_some(out)
}

/// Whether `tol` tolerates `taint` (kube's `ToleratesTaint`).
fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if tol
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" => {
            key == taint.key
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// A pod that tolerates the NoExecute taint without a time limit stays on the node.
fn tolerates_forever(pod: &Pod, taint_key: &str) -> bool {
    let taint = Taint {
        key: taint_key.to_string(),
        effect: "NoExecute".to_string(),
        ..Default::default()
    };
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| tolerates(t, &taint) && t.toleration_seconds.is_none())
        })
}

fn pods_on(ctx: &Context, node: &str) -> Vec<Arc<Pod>> {
    ctx.informers
        .pods
        .store()
        .state()
        .into_iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n == node)
        })
        .collect()
}

fn pod_api(ctx: &Context, pod: &Pod) -> Api<Pod> {
    Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    )
}

/// Mark the node's conditions Unknown: its kubelet stopped reporting.
async fn mark_unknown(ctx: &Context, node: &Node) -> Result<Option<Node>> {
    let now = runtime::now();
    let mut conditions: Vec<NodeCondition> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for type_ in CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == *type_) {
            Some(c) => {
                if c.status != "Unknown" {
                    c.last_transition_time = Some(now.clone());
                }
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
            }
            None => conditions.push(NodeCondition {
                type_: type_.to_string(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_transition_time: Some(now.clone()),
                last_heartbeat_time: None,
            }),
        }
    }
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "status": {"conditions": conditions},
    });
    let api: Api<Node> = Api::all(ctx.client.clone());
    runtime::merge_status(&api, name, &patch).await
}

/// Set the Ready condition of the node's pods to False (kube's MarkPodsNotReady).
async fn mark_pods_not_ready(ctx: &Context, pods: &[Arc<Pod>]) -> Result<()> {
    for pod in pods {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        if ready.is_none_or(|c| c.status == "False") || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": runtime::now()}]}});
        match pod_api(ctx, pod)
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                ctx.recorder
                    .warning(pod.as_ref(), "NodeNotReady", "Node is not ready")
                    .await
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Evict the pods of a node unready for too long; force-delete those already terminating on
/// an unreachable node.
async fn evict_pods(ctx: &Context, pods: &[Arc<Pod>], taint_key: &str, force: bool) -> Result<()> {
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let dp = if pod.metadata.deletion_timestamp.is_some() {
            if !force {
                continue;
            }
            tracing::info!(pod = %format!("{ns}/{name}"), "force-deleting a pod on an unreachable node");
            DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            }
        } else {
            if tolerates_forever(pod, taint_key) {
                continue;
            }
            tracing::info!(pod = %format!("{ns}/{name}"), "evicting a pod from an unready node");
            ctx.recorder
                .normal(
                    pod.as_ref(),
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {ns}/{name}"),
                )
                .await;
            DeleteParams::default()
        };
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..dp
        };
        match pod_api(ctx, pod).delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>, registry: Registry) -> Result<Action> {
    let period = monitor_period(&ctx);
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(node.as_ref(), &ctx));
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let lease = ctx
        .informers
        .leases
        .store()
        .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
    let heartbeat = heartbeat_of(&node, lease.as_deref());
    let now = Instant::now();
    let stale = observe_heartbeat(&ctx, &registry, &uid, heartbeat, now);

    let posted = condition(&node, "Ready").map_or("Unknown", |c| c.status.as_str());
    let ready = if stale { "Unknown" } else { posted };
    let mut current = node.clone();
    if stale && (posted != "Unknown" || condition(&node, "Ready").is_none()) {
        tracing::info!(node = %name, "node stopped posting status; marking it Unknown");
        match mark_unknown(&ctx, &node).await? {
            Some(written) => current = Arc::new(written),
            None => return Ok(runtime::done(node.as_ref(), &ctx)),
        }
        ctx.recorder
            .normal(
                node.as_ref(),
                "NodeNotReady",
                format!("Node {name} status is now: NodeNotReady"),
            )
            .await;
    }
    // No verdict on a node that never posted status and is still within its grace period.
    let judged = stale || condition(&node, "Ready").is_some();
    if judged && let Some(taints) = updated_taints(&current, ready) {
        set_taints(&ctx, &current, taints).await?;
    }

    let verdict = judge(&ctx, &registry, &uid, ready == "True" || !judged, now);
    let (unready_for, first_eviction) = match verdict {
        Ok(recovered) => {
            if recovered {
                ctx.recorder
                    .normal(
                        node.as_ref(),
                        "NodeReady",
                        format!("Node {name} status is now: NodeReady"),
                    )
                    .await;
            }
            ctx.backoff.succeeded(&runtime::key_of(node.as_ref()));
            return Ok(Action::requeue(period));
        }
        Err(v) => v,
    };
    let pods = pods_on(&ctx, &name);
    mark_pods_not_ready(&ctx, &pods).await?;
    if unready_for >= ctx.config.pod_eviction_timeout {
        if first_eviction && !pods.is_empty() {
            ctx.recorder
                .normal(
                    node.as_ref(),
                    "DeletingAllPods",
                    format!("Deleting all Pods from Node {name}."),
                )
                .await;
        }
        let taint_key = if ready == "False" {
            TAINT_NOT_READY
        } else {
            TAINT_UNREACHABLE
        };
        evict_pods(&ctx, &pods, taint_key, ready == "Unknown").await?;
    }
    ctx.backoff.succeeded(&runtime::key_of(node.as_ref()));
    Ok(Action::requeue(period))
}

/// Record the node's latest heartbeat; whether it is older than the grace period (judged by
/// when this controller saw it change, not by the node's clock).
fn observe_heartbeat(
    ctx: &Context,
    registry: &Registry,
    uid: &str,
    heartbeat: String,
    now: Instant,
) -> bool {
    let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
    // Forget deleted nodes now and then.
    let nodes = ctx.informers.nodes.store();
    if reg.len() > 2 * nodes.len() + 16 {
        let alive: std::collections::HashSet<String> = nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.uid.clone())
            .collect();
        reg.retain(|uid, _| alive.contains(uid));
    }
    let h = reg.entry(uid.to_string()).or_insert_with(|| Health {
        heartbeat: heartbeat.clone(),
        observed: now,
        unready_since: None,
        evicted: false,
    });
    if h.heartbeat != heartbeat {
        h.heartbeat = heartbeat;
        h.observed = now;
    }
    now.duration_since(h.observed) > ctx.config.node_monitor_grace_period
}

/// Write the node's taints (compare-and-swap on its resourceVersion).
async fn set_taints(ctx: &Context, node: &Node, taints: Vec<Taint>) -> Result<()> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": taints},
    });
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `Ok(recovered)` for a node that is fine (`healthy`: Ready, or not judged yet), else
/// `Err((how long it has been unready, whether this is its first eviction))`.
fn judge(
    ctx: &Context,
    registry: &Registry,
    uid: &str,
    healthy: bool,
    now: Instant,
) -> std::result::Result<bool, (Duration, bool)> {
    let mut reg = registry.lock().unwrap_or_else(|p| p.into_inner());
    match reg.get_mut(uid) {
        None => Ok(false),
        Some(h) if healthy => {
            h.evicted = false;
            Ok(h.unready_since.take().is_some())
        }
        Some(h) => {
            let since = *h.unready_since.get_or_insert(now);
            let unready_for = now.duration_since(since);
            let first = unready_for >= ctx.config.pod_eviction_timeout && !h.evicted;
            if first {
                h.evicted = true;
            }
            Err((unready_for, first))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(ready: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }

    #[test]
    fn taints_follow_the_ready_condition() {
        let other = json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"});
        let n = node_with("True", json!([other]));
        assert!(updated_taints(&n, "True").is_none());
        let t = updated_taints(&n, "Unknown").unwrap();
        assert_eq!(t.len(), 3);
        assert!(
            t.iter()
                .any(|t| t.key == TAINT_UNREACHABLE && t.effect == "NoExecute")
        );
        let n = node_with("Unknown", serde_json::to_value(&t).unwrap());
        assert!(updated_taints(&n, "Unknown").is_none());
        let t = updated_taints(&n, "False").unwrap();
        assert!(t.iter().all(|t| t.key != TAINT_UNREACHABLE));
        assert!(
            t.iter()
                .any(|t| t.key == TAINT_NOT_READY && t.effect == "NoSchedule")
        );
        let back = updated_taints(&n, "True").unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].key, "dedicated");
    }

    #[test]
    fn forever_tolerations_keep_pods() {
        let pod = |tols: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"},
                "spec": {"containers": [], "tolerations": tols}}))
            .unwrap()
        };
        let limited = pod(json!([{"key": TAINT_UNREACHABLE, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300}]));
        assert!(!tolerates_forever(&limited, TAINT_UNREACHABLE));
        let forever = pod(json!([{"key": TAINT_UNREACHABLE, "operator": "Exists",
            "effect": "NoExecute"}]));
        assert!(tolerates_forever(&forever, TAINT_UNREACHABLE));
        assert!(!tolerates_forever(&forever, TAINT_NOT_READY));
        let everything = pod(json!([{"operator": "Exists"}]));
        assert!(tolerates_forever(&everything, TAINT_NOT_READY));
    }
}
