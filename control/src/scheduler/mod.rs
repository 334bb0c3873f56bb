//! The scheduler: kube-scheduler's default profile for what skiff runs. Pods without a node
//! (for `default-scheduler`, not being deleted, not finished) go through a priority/FIFO
//! queue; each is filtered against every node (unschedulable, node name, taints, node
//! selector and required node affinity, host ports, resources and pod count) and the feasible
//! nodes scored (least allocated, balanced allocation, PreferNoSchedule taints, preferred
//! node affinity), ties going round-robin. The pod is assumed onto the winner at once (so the
//! next pod sees the resources taken) and bound through `pods/binding` by one of several
//! concurrent binders. A pod that fits nowhere gets PodScheduled=False/Unschedulable and a
//! FailedScheduling event saying why, and is retried with back-off, or at once when nodes
//! change or pods on nodes go away.

pub mod cache;
pub mod filters;
pub mod queue;
pub mod resources;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use self::cache::Cache;
use self::filters::{NodeInfo, PodCtx, RawScore, filter, finalize, fit_error, score};
use self::queue::Queue;
use self::resources::PodRes;
use crate::runtime::Context;
use crate::runtime::events::EventRecorder;

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once.
const BINDERS: usize = 16;
/// Status patches and events in flight at once.
const WRITERS: usize = 16;
/// How often back-offs are checked.
const TICK: Duration = Duration::from_millis(100);
/// How often (in ticks) the cache is checked against the informers' stores (deletions are
/// not announced to subscribers).
const RESYNC_TICKS: u32 = 5;
/// A bound pod the informer has not shown bound by then is forgotten (and retried if the
/// store still shows it pending).
const ASSUME_TTL: Duration = Duration::from_secs(30);

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let pod_events = ctx.informers.pods.subscribe();
    let node_events = ctx.informers.nodes.subscribe();
    let scheduler = Arc::new(Scheduler {
        client: ctx.client.clone(),
        recorder: EventRecorder::new(ctx.client.clone(), SCHEDULER_NAME),
        pods: ctx.informers.pods.store(),
        nodes: ctx.informers.nodes.store(),
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        binders: Arc::new(Semaphore::new(BINDERS)),
        writers: Semaphore::new(WRITERS),
    });
    tasks.spawn(scheduler.clone().watch(pod_events, node_events));
    tasks.spawn(scheduler.run());
}

#[derive(Default)]
struct State {
    cache: Cache,
    queue: Queue,
    /// Round-robin among equally scored nodes.
    next_tie: usize,
}

struct Scheduler {
    client: Client,
    recorder: EventRecorder,
    pods: Store<Pod>,
    nodes: Store<Node>,
    state: Mutex<State>,
    /// The active queue grew.
    wake: Notify,
    binders: Arc<Semaphore>,
    writers: Semaphore,
}

/// `namespace/name`.
fn key_of(pod: &Pod) -> Option<String> {
    Some(format!(
        "{}/{}",
        pod.metadata.namespace.as_deref()?,
        pod.metadata.name.as_deref()?
    ))
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

/// A pod this scheduler should place now.
fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    bound_node(pod).is_none()
        && matches!(
            spec.scheduler_name.as_deref(),
            None | Some("") | Some(SCHEDULER_NAME)
        )
        && pod.metadata.deletion_timestamp.is_none()
        && !is_finished(pod)
        // Gated pods wait until their gates are removed (kube's SchedulingGates).
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

/// What of a pod decides where it fits; a failed pod whose fingerprint changes is retried.
fn fingerprint(pod: &Pod) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(&pod.spec)
        .unwrap_or_default()
        .hash(&mut h);
    pod.metadata.labels.hash(&mut h);
    h.finish()
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl State {
    /// Filter and score every node; the chosen node's name, or why none fits.
    fn select(&mut self, pod: &PodCtx<'_>) -> Result<String, String> {
        let mut feasible: Vec<&str> = Vec::new();
        let mut raw: Vec<RawScore> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut total = 0;
        for (name, node) in &self.cache.nodes {
            let Some(info) = node.info.as_ref() else {
                continue;
            };
            total += 1;
            match filter(pod, info, &node.usage) {
                Ok(()) => {
                    feasible.push(name);
                    raw.push(score(pod, info, &node.usage));
                }
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            return Err(fit_error(total, &reasons));
        }
        let mut best = f64::MIN;
        let mut ties: Vec<usize> = Vec::new();
        for (i, s) in finalize(&raw).enumerate() {
            if s > best + 1e-9 {
                best = s;
                ties.clear();
                ties.push(i);
            } else if (s - best).abs() <= 1e-9 {
                ties.push(i);
            }
        }
        let pick = ties[self.next_tie % ties.len()];
        self.next_tie = self.next_tie.wrapping_add(1);
        Ok(feasible[pick].to_string())
    }
}

impl Scheduler {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feed the cache and the queue from the informers.
    async fn watch(self: Arc<Self>, pods: ReflectHandle<Pod>, nodes: ReflectHandle<Node>) {
        let mut pods = pin!(pods);
        let mut nodes = pin!(nodes);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                Some(pod) = pods.next() => self.on_pod(&pod),
                Some(node) = nodes.next() => self.on_node(node),
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(RESYNC_TICKS) {
                        self.resync();
                    } else if self.lock().queue.flush_backoff(Instant::now()) {
                        self.wake.notify_one();
                    }
                }
            }
        }
    }

    fn on_pod(&self, pod: &Pod) {
        let Some(key) = key_of(pod) else {
            return;
        };
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        let mut st = self.lock();
        let mut freed = false;
        let mut woke = false;
        if let Some(node) = bound_node(pod) {
            st.queue.remove(&key);
            if is_finished(pod) {
                freed = st.cache.remove_pod(&key);
            } else if st.cache.confirm(&key, uid, node) {
                freed = st.cache.remove_pod(&key);
                if let Some(spec) = pod.spec.as_ref() {
                    st.cache.add_pod(&key, uid, node, PodRes::of(spec), false);
                }
            }
        } else {
            if let Some((cached, _)) = st.cache.pod(&key) {
                if cached == uid {
                    // Assumed: bound by us, not yet seen bound.
                    return;
                }
                freed = st.cache.remove_pod(&key);
            }
            if needs_scheduling(pod) {
                woke = st.queue.add(&key, uid, priority(pod), || fingerprint(pod));
            } else if st
                .queue
                .get(&key)
                .is_some_and(|i| i.state != queue::State::InFlight)
            {
                st.queue.remove(&key);
            }
        }
        if freed {
            woke |= st.queue.move_all_to_active();
        }
        drop(st);
        if woke {
            self.wake.notify_one();
        }
    }

    fn on_node(&self, node: Arc<Node>) {
        let mut st = self.lock();
        let name = node.metadata.name.as_deref().unwrap_or("");
        if st.cache.node_version(name).is_some()
            && st.cache.node_version(name) == node.metadata.resource_version.as_deref()
        {
            return;
        }
        if st.cache.set_node(NodeInfo::new(node)) && st.queue.move_all_to_active() {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Reconcile the cache and the queue with the informers' stores: deleted nodes and pods
    /// (which subscribers are not told of), expired assumptions, anything missed.
    fn resync(&self) {
        let mut st = self.lock();
        let nodes = self.nodes.state();
        let pods = self.pods.state();
        let st = &mut *st;
        let mut woke = st.queue.flush_backoff(Instant::now());
        let mut changed = false;
        let mut names = HashSet::new();
        for node in &nodes {
            let name = node.metadata.name.as_deref().unwrap_or("");
            names.insert(name);
            if st.cache.node_version(name) != node.metadata.resource_version.as_deref()
                || st.cache.node_version(name).is_none()
            {
                changed |= st.cache.set_node(NodeInfo::new(node.clone()));
            }
        }
        let gone: Vec<String> = st
            .cache
            .node_names()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            st.cache.remove_node(&name);
        }
        let by_key: HashMap<String, &Arc<Pod>> =
            pods.iter().filter_map(|p| Some((key_of(p)?, p))).collect();
        let uid_of = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        // Counted pods that are gone, finished, replaced, or assumed too long ago.
        let now = Instant::now();
        let stale: Vec<String> = st
            .cache
            .pod_keys()
            .filter(|(key, uid, assumed)| match by_key.get(key.as_str()) {
                None => true,
                Some(p) => {
                    uid_of(p) != *uid
                        || is_finished(p)
                        || (bound_node(p).is_none()
                            && assumed.is_some_and(|t| now.duration_since(t) > ASSUME_TTL)
                            && st.queue.get(key).is_none())
                }
            })
            .map(|(k, _, _)| k.clone())
            .collect();
        for key in stale {
            changed |= st.cache.remove_pod(&key);
        }
        // Queued pods that are gone or no longer ours.
        let dropped: Vec<String> = st
            .queue
            .keys()
            .filter(|key| {
                let item = st.queue.get(key);
                let in_flight = item.is_some_and(|i| i.state == queue::State::InFlight);
                match by_key.get(key.as_str()) {
                    None => !in_flight,
                    Some(p) => {
                        !in_flight
                            && (item.is_some_and(|i| i.uid != uid_of(p)) || !needs_scheduling(p))
                    }
                }
            })
            .cloned()
            .collect();
        for key in dropped {
            st.queue.remove(&key);
        }
        // Anything missed: bound pods not counted, pending pods not queued.
        for (key, pod) in &by_key {
            let uid = pod.metadata.uid.as_deref().unwrap_or("");
            if let Some(node) = bound_node(pod) {
                if !is_finished(pod)
                    && st.cache.pod(key).is_none_or(|(u, _)| u != uid)
                    && let Some(spec) = pod.spec.as_ref()
                {
                    st.cache.add_pod(key, uid, node, PodRes::of(spec), false);
                } else {
                    st.cache.confirm(key, uid, node);
                }
            } else if needs_scheduling(pod)
                && st.queue.get(key).is_none()
                && st.cache.pod(key).is_none()
            {
                woke |= st.queue.add(key, uid, priority(pod), || fingerprint(pod));
            }
        }
        if changed {
            woke |= st.queue.move_all_to_active();
        }
        if woke {
            self.wake.notify_one();
        }
    }

    /// The scheduling loop: one pod at a time, binding in the background.
    async fn run(self: Arc<Self>) {
        crate::runtime::cache_ready(&self.pods).await.ok();
        crate::runtime::cache_ready(&self.nodes).await.ok();
        self.resync();
        let mut inflight = JoinSet::new();
        loop {
            while inflight.try_join_next().is_some() {}
            let Ok(permit) = self.binders.clone().acquire_owned().await else {
                return;
            };
            let (key, uid) = loop {
                let notified = self.wake.notified();
                if let Some(next) = self.lock().queue.pop() {
                    break next;
                }
                notified.await;
            };
            self.schedule_one(key, uid, permit, &mut inflight);
        }
    }

    fn schedule_one(
        self: &Arc<Self>,
        key: String,
        uid: String,
        permit: OwnedSemaphorePermit,
        inflight: &mut JoinSet<()>,
    ) {
        let Some((ns, name)) = key.split_once('/') else {
            self.lock().queue.remove(&key);
            return;
        };
        let pod = self.pods.get(&ObjectRef::new(name).within(ns));
        let mut st = self.lock();
        let Some(pod) =
            pod.filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str()) && needs_scheduling(p))
        else {
            // Gone, bound, or no longer ours; the informer tells the rest.
            st.queue.remove(&key);
            return;
        };
        let Some(spec) = pod.spec.as_ref() else {
            st.queue.remove(&key);
            return;
        };
        let ctx = PodCtx::new(&pod, spec);
        match st.select(&ctx) {
            Ok(node) => {
                st.cache.add_pod(&key, &uid, &node, ctx.res, true);
                drop(st);
                let this = self.clone();
                inflight.spawn(async move { this.bind(pod, key, uid, node, permit).await });
            }
            Err(message) => {
                drop(st);
                drop(permit);
                let this = self.clone();
                inflight.spawn(async move { this.unschedulable(pod, key, uid, message).await });
            }
        }
    }

    async fn bind(
        self: Arc<Self>,
        pod: Arc<Pod>,
        key: String,
        uid: String,
        node: String,
        permit: OwnedSemaphorePermit,
    ) {
        let (ns, name) = key.split_once('/').unwrap_or(("", &key));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let result = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await;
        drop(permit);
        match result {
            Ok(_) => {
                {
                    let mut st = self.lock();
                    if st.queue.get(&key).is_some_and(|i| i.uid == uid) {
                        st.queue.remove(&key);
                    }
                    st.cache.bound(&key, &uid);
                }
                tracing::debug!(pod = %key, node = %node, "bound");
                let _writer = self.writers.acquire().await;
                self.recorder
                    .normal(
                        pod.as_ref(),
                        "Scheduled",
                        format!("Successfully assigned {ns}/{name} to {node}"),
                    )
                    .await;
            }
            Err(e) => {
                let code = match &e {
                    kube::Error::Api(s) => Some(s.code),
                    _ => None,
                };
                let mut st = self.lock();
                let mut woke = false;
                if matches!(code, Some(404 | 409)) {
                    // Gone, being deleted, or bound by someone else: the informer will say.
                    tracing::debug!(pod = %key, error = %e, "binding refused");
                    if st.queue.get(&key).is_some_and(|i| i.uid == uid) {
                        st.queue.remove(&key);
                    }
                } else {
                    tracing::warn!(pod = %key, node = %node, error = %e, "binding failed");
                    woke |= st
                        .queue
                        .failed(&key, &uid, fingerprint(&pod), Instant::now());
                }
                // What the pod was assumed to take is free again.
                if st.cache.forget(&key, &uid) {
                    woke |= st.queue.move_all_to_active();
                }
                drop(st);
                if woke {
                    self.wake.notify_one();
                }
            }
        }
    }

    /// No node fits: say so on the pod (condition and event), then back off.
    async fn unschedulable(
        self: Arc<Self>,
        pod: Arc<Pod>,
        key: String,
        uid: String,
        message: String,
    ) {
        tracing::debug!(pod = %key, %message, "unschedulable");
        {
            let _writer = self.writers.acquire().await;
            let current = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
            let same = current.is_some_and(|c| {
                c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message.as_deref() == Some(message.as_str())
            });
            if !same {
                let since = current
                    .filter(|c| c.status == "False")
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(crate::runtime::now);
                let patch = json!({"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": message, "lastProbeTime": null, "lastTransitionTime": since,
                }]}});
                let (ns, name) = key.split_once('/').unwrap_or(("", &key));
                let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                if let Err(e) = api
                    .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    tracing::debug!(pod = %key, error = %e, "could not update PodScheduled");
                }
            }
            self.recorder
                .warning(pod.as_ref(), "FailedScheduling", message)
                .await;
        }
        let woke = self
            .lock()
            .queue
            .failed(&key, &uid, fingerprint(&pod), Instant::now());
        if woke {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_spreads_through_assumed_pods() {
        let mut st = State::default();
        for i in 0..10 {
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": format!("n{i}"), "resourceVersion": "1"},
                "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap();
            st.cache.set_node(NodeInfo::new(Arc::new(node)));
        }
        let pods: Vec<Pod> = (0..1000)
            .map(|i| {
                let resources = if i % 2 == 0 {
                    json!({})
                } else {
                    json!({"requests": {"cpu": "50m", "memory": "64Mi"}})
                };
                serde_json::from_value(json!({
                    "metadata": {"name": format!("p{i}"), "namespace": "default", "uid": format!("u{i}")},
                    "spec": {"containers": [{"name": "c", "resources": resources}]}}))
                .unwrap()
            })
            .collect();
        let start = Instant::now();
        let mut unschedulable = Vec::new();
        for pod in &pods {
            let ctx = PodCtx::new(pod, pod.spec.as_ref().unwrap());
            match st.select(&ctx) {
                Ok(node) => {
                    let key = key_of(pod).unwrap();
                    st.cache.add_pod(&key, "u", &node, ctx.res, true)
                }
                Err(m) => unschedulable.push(m),
            }
        }
        let elapsed = start.elapsed();
        eprintln!("1000 pods placed on 10 nodes in {elapsed:?}");
        assert_eq!(unschedulable.len(), 0);
        let counts: Vec<i64> = st.cache.nodes.values().map(|n| n.usage.pods).collect();
        assert_eq!(counts, vec![100; 10]);
        let extra: Pod = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "8"}}}]}}))
        .unwrap();
        let ctx = PodCtx::new(&extra, extra.spec.as_ref().unwrap());
        assert_eq!(
            st.select(&ctx),
            Err("0/10 nodes are available: 10 Insufficient cpu.".to_string())
        );
    }
}
