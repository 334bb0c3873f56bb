//! DaemonSet controller: one pod per eligible node (node selector, required node affinity,
//! NoSchedule/NoExecute taints against the pod's tolerations plus the ones kube adds to every
//! daemon pod), bound by setting `spec.nodeName` directly (no scheduler involved); pods on
//! nodes that left or stopped qualifying are deleted, extra pods on a node too. Template
//! changes roll out under `RollingUpdate`: old pods are deleted at most `maxUnavailable` at a
//! time and replaced by pods of the new template (told apart by the `controller-revision-hash`
//! label, a hash of the template). Status as `kubectl get ds` shows it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::task::JoinSet;

use super::endpoints::deletions;
use super::{owners, pod_state};
use crate::runtime::{self, Context, Result};

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let dss = informers.daemon_sets.store();
    // Node changes that matter to placement (existence, labels, taints) requeue every
    // DaemonSet; heartbeats and status churn do not.
    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let node_map = {
        let dss = dss.clone();
        move |node: Arc<Node>| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let fingerprint = placement_fingerprint(&node);
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.insert(name, fingerprint) == Some(fingerprint) {
                return Vec::new();
            }
            all_daemon_sets(&dss)
        }
    };
    let deleted_node_map = {
        let dss = dss.clone();
        move |_: PartialObjectMeta<Node>| all_daemon_sets(&dss)
    };
    let controller = Controller::for_shared_stream(informers.daemon_sets.subscribe(), dss)
        .watches_shared_stream(informers.pods.subscribe(), |pod: Arc<Pod>| {
            owner_of(&pod.metadata)
        })
        .watches_stream(deletions(&informers.pods), |pod: PartialObjectMeta<Pod>| {
            owner_of(&pod.metadata)
        })
        .watches_shared_stream(informers.nodes.subscribe(), node_map)
        .watches_stream(deletions(&informers.nodes), deleted_node_map);
    runtime::drive("daemonset", controller, ctx, 2, reconcile, tasks);
}

fn all_daemon_sets(dss: &Store<DaemonSet>) -> Vec<ObjectRef<DaemonSet>> {
    dss.state()
        .iter()
        .map(|ds| ObjectRef::from_obj(ds.as_ref()))
        .collect()
}

fn owner_of(meta: &ObjectMeta) -> Option<ObjectRef<DaemonSet>> {
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))?;
    let ns = meta.namespace.as_deref()?;
    (owner.kind == "DaemonSet").then(|| ObjectRef::new(&owner.name).within(ns))
}

fn placement_fingerprint(node: &Node) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node.metadata.uid.hash(&mut h);
    let taints: Vec<(&str, Option<&str>, &str)> = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .map(|t| (t.key.as_str(), t.value.as_deref(), t.effect.as_str()))
        .collect();
    taints.hash(&mut h);
    h.finish()
}

/// A short, stable hash of the pod template (what `controller-revision-hash` means here).
pub(super) fn template_hash<T: serde::Serialize>(template: &T) -> String {
    // FNV-1a: stable across processes and Rust versions, unlike `DefaultHasher`.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:x}", h & 0xff_ffff_ffff)
}

/// The tolerations kube adds to every daemon pod, so daemons keep running on nodes that are
/// not ready, unreachable, under pressure or cordoned.
fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        out.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out.into_iter()
        .map(|(key, effect)| Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some(effect.to_string()),
            ..Default::default()
        })
        .collect()
}

/// The template's pod spec with the daemon tolerations added (unless already there).
fn daemon_pod_spec(template: &PodSpec) -> PodSpec {
    let mut spec = template.clone();
    let mut tolerations = spec.tolerations.take().unwrap_or_default();
    for t in daemon_tolerations(template) {
        if !tolerations
            .iter()
            .any(|have| have.key == t.key && have.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    spec.tolerations = Some(tolerations);
    spec
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else {
                return false;
            };
            let Ok(bound) = bound.parse::<i64>() else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref())
        })
}

/// Whether a daemon pod with `spec` belongs on `node` (kube's `NodeShouldRunDaemonPod`).
pub(super) fn should_run(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required
        && !required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    {
        return false;
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    node.spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

fn is_failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH_LABEL)
        .map(String::as_str)
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(ds.as_ref(), &ctx));
    }
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(runtime::done(ds.as_ref(), &ctx));
    };
    let Some(template_spec) = spec.template.spec.as_ref() else {
        return Ok(runtime::done(ds.as_ref(), &ctx));
    };
    let daemon = Daemon {
        pod_spec: daemon_pod_spec(template_spec),
        hash: template_hash(&spec.template),
        min_ready: spec.min_ready_seconds.unwrap_or(0),
        now: runtime::now(),
    };

    // Pods straight from the API, not the cache: acting on a stale view would put two
    // daemons on a node.
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(selector) = pod_selector(&ds, spec) else {
        return Ok(runtime::done(ds.as_ref(), &ctx));
    };
    let mut by_node = pods_by_node(&pods_api, &selector, &uid).await?;

    let nodes = ctx.informers.nodes.store();
    // Before the first node list every pod would look orphaned.
    runtime::cache_ready(&nodes).await?;
    let mut plan = Plan::default();
    for node in &nodes.state() {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let pods = by_node.remove(&node_name).unwrap_or_default();
        plan.place(&daemon, node, node_name, pods);
    }
    // Pods on nodes that no longer exist: no kubelet will confirm their deletion, so they go
    // at once (what kube's pod garbage collector does for them).
    let orphaned: Vec<Pod> = by_node.into_values().flatten().collect();
    plan.roll(spec.update_strategy.as_ref());

    for node in &plan.to_create {
        create_pod(&ctx, &ds, &daemon.pod_spec, &daemon.hash, node).await?;
    }
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let deletions = plan
        .to_delete
        .iter()
        .map(|p| (p, DeleteParams::default()))
        .chain(orphaned.iter().map(|p| (p, force.clone())));
    for (pod, params) in deletions {
        owners::delete_pod(&ctx, ds.as_ref(), &pods_api, pod, &params).await?;
    }

    let counts = &plan.counts;
    write_status(&ctx, &ds, counts.status(ds.metadata.generation)).await?;
    // Ready but not yet available pods become available without any event.
    if daemon.min_ready > 0 && counts.ready > counts.available {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(daemon.min_ready).unwrap_or(1).max(1),
        )));
    }
    Ok(runtime::done(ds.as_ref(), &ctx))
}

/// The daemon pod a DaemonSet runs now.
struct Daemon {
    pod_spec: PodSpec,
    /// Of the current template (the `controller-revision-hash` label).
    hash: String,
    min_ready: i32,
    now: Time,
}

/// The DaemonSet's selector as list-option text. A selector kube cannot convert selects
/// nothing: listing without the requirement we cannot express would take over other pods.
fn pod_selector(ds: &DaemonSet, spec: &DaemonSetSpec) -> Option<String> {
    match skiff_common::selector::selector_string(&spec.selector) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                daemonset = %ds.metadata.name.as_deref().unwrap_or_default(),
                namespace = %ds.metadata.namespace.as_deref().unwrap_or_default(),
                error = %e,
                "invalid selector; not syncing"
            );
            None
        }
    }
}

/// The DaemonSet's pods (controller uid `uid`) by node name, oldest first.
async fn pods_by_node(
    pods_api: &Api<Pod>,
    selector: &str,
    uid: &str,
) -> Result<BTreeMap<String, Vec<Pod>>> {
    let listed = pods_api
        .list(&ListParams::default().labels(selector))
        .await?;
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in listed.items {
        if owners::controller_of(&pod).map(|r| r.uid.as_str()) != Some(uid) {
            continue;
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    for pods in by_node.values_mut() {
        pods.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
    }
    Ok(by_node)
}

/// The numbers of a DaemonSet's status.
#[derive(Default)]
struct Counts {
    desired: i32,
    current: i32,
    misscheduled: i32,
    ready: i32,
    available: i32,
    updated: i32,
}

impl Counts {
    fn status(&self, generation: Option<i64>) -> serde_json::Value {
        json!({
            "desiredNumberScheduled": self.desired,
            "currentNumberScheduled": self.current,
            "numberMisscheduled": self.misscheduled,
            "numberReady": self.ready,
            "numberAvailable": self.available,
            "numberUnavailable": (self.desired - self.available).max(0),
            "updatedNumberScheduled": self.updated,
            "observedGeneration": generation,
        })
    }
}

/// What one sync does to the DaemonSet's pods, node by node, and what its status counts.
#[derive(Default)]
struct Plan {
    /// Nodes that need a daemon.
    to_create: Vec<String>,
    to_delete: Vec<Pod>,
    /// Nodes whose (single, live) pod is of an old template: (pod, available?).
    old: Vec<(Pod, bool)>,
    unavailable_nodes: i32,
    counts: Counts,
}

impl Plan {
    /// One daemon on `node` if it should run one (the oldest live pod kept), none otherwise.
    fn place(&mut self, daemon: &Daemon, node: &Node, node_name: String, pods: Vec<Pod>) {
        let run = should_run(&daemon.pod_spec, node);
        let mut live: Vec<Pod> = Vec::new();
        for pod in &pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if is_failed(pod) && run {
                // A failed daemon is replaced (once it is gone).
                self.to_delete.push(pod.clone());
                continue;
            }
            live.push(pod.clone());
        }
        if !run {
            if !live.is_empty() {
                self.counts.misscheduled += 1;
            }
            self.to_delete.extend(live);
            return;
        }
        self.counts.desired += 1;
        if pods.is_empty() {
            self.to_create.push(node_name);
            self.unavailable_nodes += 1;
            return;
        }
        if live.is_empty() {
            // Only terminating (or failed) pods: wait for them to go before replacing.
            self.unavailable_nodes += 1;
            return;
        }
        // One daemon a node: keep the oldest.
        let keep = live.remove(0);
        self.to_delete.extend(live);
        self.count_kept(daemon, keep);
    }

    fn count_kept(&mut self, daemon: &Daemon, keep: Pod) {
        self.counts.current += 1;
        let is_ready = pod_state::is_pod_ready(&keep);
        let is_available = pod_state::is_pod_available(&keep, daemon.min_ready, &daemon.now);
        if is_ready {
            self.counts.ready += 1;
        }
        if is_available {
            self.counts.available += 1;
        } else {
            self.unavailable_nodes += 1;
        }
        if pod_hash(&keep) == Some(daemon.hash.as_str()) {
            self.counts.updated += 1;
        } else {
            self.old.push((keep, is_available));
        }
    }

    /// Rolling update: unavailable old pods go at once, available ones within the budget.
    fn roll(&mut self, strategy: Option<&DaemonSetUpdateStrategy>) {
        let rolling = strategy
            .and_then(|s| s.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        if !rolling || self.old.is_empty() {
            return;
        }
        let max_unavailable = strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
            .map(|v| scaled(v, self.counts.desired))
            .unwrap_or(1)
            .max(1);
        let mut budget = max_unavailable - self.unavailable_nodes;
        for (pod, is_available) in std::mem::take(&mut self.old) {
            if !is_available {
                self.to_delete.push(pod);
            } else if budget > 0 {
                budget -= 1;
                self.to_delete.push(pod);
            }
        }
    }
}

/// Patch the status when a number in it changed (absent counts as 0).
async fn write_status(ctx: &Context, ds: &DaemonSet, status: serde_json::Value) -> Result<()> {
    let have = serde_json::to_value(ds.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = status
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| have.get(k).unwrap_or(&json!(0)) != v);
    if !changed {
        return Ok(());
    }
    let ns = ds.metadata.namespace.as_deref().unwrap_or_default();
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    runtime::merge_status(&api, name, &json!({ "status": status })).await?;
    Ok(())
}

/// `maxUnavailable` as a count of `total` (percentages round up, as kube does for it).
fn scaled(v: &IntOrString, total: i32) -> i32 {
    match v {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let total = i64::from(total);
            i32::try_from((pct * total + 99) / 100).unwrap_or(i32::MAX)
        }
    }
}

async fn create_pod(
    ctx: &Context,
    ds: &DaemonSet,
    pod_spec: &PodSpec,
    hash: &str,
    node: &str,
) -> Result<()> {
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let template_meta = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone())
        .unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH_LABEL.to_string(), hash.to_string());
    if let Some(generation) = ds.metadata.generation {
        labels.insert(
            "pod-template-generation".to_string(),
            generation.to_string(),
        );
    }
    let mut spec = pod_spec.clone();
    spec.node_name = Some(node.to_string());
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![owners::controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            let pod_name = created.metadata.name.unwrap_or_default();
            tracing::debug!(daemonset = %name, node, pod = %pod_name, "created daemon pod");
            ctx.recorder
                .normal(ds, "SuccessfulCreate", format!("Created pod: {pod_name}"))
                .await;
            Ok(())
        }
        Err(e) => {
            ctx.recorder
                .warning(ds, "FailedCreate", format!("Error creating: {e}"))
                .await;
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn placement_follows_selectors_affinity_and_taints() {
        let n = node(
            json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "cpus": "8"}},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                                {"key": "soft", "effect": "PreferNoSchedule"}]}}),
        );
        let spec = |v: serde_json::Value| -> PodSpec {
            let mut s: PodSpec = serde_json::from_value(v).unwrap();
            s = daemon_pod_spec(&s);
            s
        };
        let tol = json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
        assert!(!should_run(&spec(json!({"containers": []})), &n));
        assert!(should_run(
            &spec(json!({"containers": [], "tolerations": tol})),
            &n
        ));
        assert!(!should_run(
            &spec(json!({"containers": [], "tolerations": tol, "nodeSelector": {"disk": "hdd"}})),
            &n
        ));
        let affinity = |op: &str, vals: serde_json::Value| {
            spec(
                json!({"containers": [], "tolerations": tol, "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "cpus", "operator": op, "values": vals}]}]}}}}),
            )
        };
        assert!(should_run(&affinity("Gt", json!(["4"])), &n));
        assert!(!should_run(&affinity("Lt", json!(["4"])), &n));
        assert!(should_run(&affinity("In", json!(["8", "16"])), &n));
        // Not-ready and cordoned nodes still run daemons.
        let cordoned = node(json!({"metadata": {"name": "n2"}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}));
        assert!(should_run(&spec(json!({"containers": []})), &cordoned));
    }

    #[test]
    fn hashes_and_selectors() {
        assert_eq!(
            template_hash(&json!({"a": 1})),
            template_hash(&json!({"a": 1}))
        );
        assert_ne!(
            template_hash(&json!({"a": 1})),
            template_hash(&json!({"a": 2}))
        );
        let sel: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "x"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "old", "operator": "DoesNotExist"}]}))
            .unwrap();
        assert_eq!(
            skiff_common::selector::selector_string(&sel).unwrap(),
            "app=x,!old,tier in (a,b)"
        );
        assert_eq!(scaled(&IntOrString::String("10%".into()), 15), 2);
    }
}
