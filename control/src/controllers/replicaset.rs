//! ReplicaSet controller, as kube-controller-manager's replicaset-controller: keeps
//! `spec.replicas` active pods matching the selector, creating them from the template in
//! slow-start batches and deleting the least valuable extras first; adopts matching orphans
//! and releases owned pods that stop matching; reports replicas / fullyLabeled / ready /
//! available counts in the status.
//!
//! Like kube's `ControllerExpectations`, it remembers the creations and deletions it asked for
//! and does not act again on a ReplicaSet until the pod informer has seen them all, so a
//! lagging cache never makes it double-create or double-delete.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::task::JoinSet;

use super::{owners, pod_state};
use crate::runtime::{self, Context, Error, Result};
use skiff_common::labels;

/// At most this many creations or deletions per sync (kube's `BurstReplicas`).
const BURST_REPLICAS: usize = 500;
/// Creations start with batches of this size, doubling after every fully successful batch.
const SLOW_START_INITIAL_BATCH: usize = 1;
/// Requests in flight at once (each needs a connection of the client's pool).
const MAX_IN_FLIGHT: usize = 64;
/// Expectations not met within this time are forgotten (kube: 5 minutes).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);
/// How often the pod cache is checked for vanished pods (deletes are not broadcast to
/// shared-informer subscribers).
const SWEEP_PERIOD: Duration = Duration::from_millis(500);
/// kube's event spam filter: a burst of 25 events per object, then one per 5 minutes.
const EVENT_BURST: f64 = 25.0;
const EVENT_REFILL_PER_SEC: f64 = 1.0 / 300.0;

/// `namespace/name` of a ReplicaSet.
type Key = (String, String);

/// What a ReplicaSet is waiting to see in the pod cache.
struct Expectation {
    /// Names of pods we created and have not seen yet.
    creates: HashSet<String>,
    /// UIDs of pods we deleted that the cache still shows as alive.
    deletes: HashSet<String>,
    since: Instant,
}

#[derive(Default)]
struct State {
    expectations: Mutex<HashMap<Key, Expectation>>,
    /// How many pods each ReplicaSet saw in the cache at its last reconcile.
    seen: owners::SeenCounts,
    /// Event token buckets per ReplicaSet uid: (tokens, last refill).
    event_tokens: Mutex<HashMap<String, (f64, Instant)>>,
}

impl State {
    /// Whether the cache has caught up with what we did to this ReplicaSet.
    fn satisfied(&self, key: &Key, pods: &Store<Pod>) -> bool {
        let mut map = self.expectations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(exp) = map.get_mut(key) else {
            return true;
        };
        exp.creates
            .retain(|name| pods.get(&ObjectRef::new(name).within(&key.0)).is_none());
        if !exp.deletes.is_empty() {
            let alive: HashSet<String> = pods
                .state()
                .iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(key.0.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                })
                .filter_map(|p| p.metadata.uid.clone())
                .collect();
            exp.deletes.retain(|uid| alive.contains(uid));
        }
        if (exp.creates.is_empty() && exp.deletes.is_empty())
            || exp.since.elapsed() > EXPECTATIONS_TTL
        {
            map.remove(key);
            return true;
        }
        false
    }

    fn expect(&self, key: &Key, creates: Vec<String>, deletes: Vec<String>) {
        if creates.is_empty() && deletes.is_empty() {
            return;
        }
        let mut map = self.expectations.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(
            key.clone(),
            Expectation {
                creates: creates.into_iter().collect(),
                deletes: deletes.into_iter().collect(),
                since: Instant::now(),
            },
        );
    }

    /// The informer saw this pod (a creation, or a deletion starting).
    fn observed(&self, pod: &Pod) {
        let Some(owner) = owners::controller_of(pod).filter(|r| r.kind == "ReplicaSet") else {
            return;
        };
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            owner.name.clone(),
        );
        let mut map = self.expectations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(exp) = map.get_mut(&key) {
            if let Some(name) = &pod.metadata.name {
                exp.creates.remove(name);
            }
            if pod.metadata.deletion_timestamp.is_some()
                && let Some(uid) = &pod.metadata.uid
            {
                exp.deletes.remove(uid);
            }
        }
    }

    fn forget(&self, key: &Key) {
        self.expectations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Whether an event about this object may be written now (kube's spam filter).
    fn may_record(&self, uid: &str) -> bool {
        let mut map = self.event_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.clear();
        }
        let now = Instant::now();
        let (tokens, last) = map.entry(uid.to_string()).or_insert((EVENT_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * EVENT_REFILL_PER_SEC)
            .min(EVENT_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let state = Arc::new(State::default());
    let informers = &ctx.informers;
    let rs_store = informers.replica_sets.store();
    let rs_store2 = rs_store.clone();
    let pod_store = informers.pods.store();
    let pod_events = {
        let state = state.clone();
        informers
            .pods
            .subscribe()
            .inspect(move |pod| state.observed(pod))
    };
    let controller =
        Controller::for_shared_stream(informers.replica_sets.subscribe(), rs_store.clone())
            .watches_shared_stream(pod_events, move |pod: Arc<Pod>| {
                replica_sets_for_pod(&pod, &rs_store)
            })
            // Deletions are not broadcast to shared-informer subscribers.
            .reconcile_on(owners::vanished_children(
                pod_store,
                rs_store2,
                state.seen.clone(),
                SWEEP_PERIOD,
            ));
    let reconcile = move |rs: Arc<ReplicaSet>, ctx: Arc<Context>| {
        let state = state.clone();
        async move { reconcile(rs, ctx, state).await }
    };
    runtime::drive("replicaset", controller, ctx, 5, reconcile, tasks);
}

/// The ReplicaSets a pod event concerns: its controller, or (for an orphan) every ReplicaSet
/// of the namespace whose selector matches it (candidates for adoption).
fn replica_sets_for_pod(pod: &Pod, rs_store: &Store<ReplicaSet>) -> Vec<ObjectRef<ReplicaSet>> {
    // A deleting orphan is no adoption candidate.
    if owners::controller_of(pod).is_none() && pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    owners::owners_to_notify(pod, rs_store, |rs| rs.spec.as_ref().map(|s| &s.selector))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>, state: Arc<State>) -> Result<Action> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    let pod_store = ctx.informers.pods.store();
    // Never act on a partial view of the pods.
    runtime::cache_ready(&pod_store).await?;
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(runtime::done(rs.as_ref(), &ctx));
    };
    let selector = match labels::LabelSelector::from_label_selector(&spec.selector) {
        Ok(s) => s,
        Err(e) => {
            // An invalid selector selects nothing; nothing to do until it is fixed.
            tracing::debug!(replicaset = %name, error = %e, "invalid selector");
            return Ok(runtime::done(rs.as_ref(), &ctx));
        }
    };
    let needs_sync = state.satisfied(&key, &pod_store);
    let uid = rs.metadata.uid.clone().unwrap_or_default();

    // The active pods of the namespace that are ours or could be.
    let snapshot = pod_store.state();
    owners::remember_count::<ReplicaSet, _>(&state.seen, &snapshot, &key);
    let candidates: Vec<Arc<Pod>> = snapshot
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str()) && pod_state::is_pod_active(p)
        })
        .collect();
    let pods = claim_pods(&rs, &uid, &selector, candidates, &ctx).await?;

    let manage_err = if needs_sync && rs.metadata.deletion_timestamp.is_none() {
        manage_replicas(&rs, &key, &pods, &ctx, &state).await.err()
    } else {
        None
    };

    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let counts = ReplicaCounts::of(spec, &pods, min_ready);
    let current = rs.status.clone().unwrap_or_default();
    let failure = manage_err
        .as_ref()
        .filter(|e| e.code() == Some(403) || e.code() == Some(422));
    let conditions = failure_conditions(&current, failure.map(|e| e.to_string()));
    let generation = rs.metadata.generation.unwrap_or(0);
    if counts.differ_from(&current, generation, &conditions)
        && !write_status(&ctx, &rs, &counts, generation, &conditions).await?
    {
        state.forget(&key);
        return Ok(Action::await_change());
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    // Pods ready but not yet available become available on their own: come back then.
    if min_ready > 0 && counts.ready == counts.replicas && counts.available != counts.replicas {
        ctx.backoff.succeeded(&runtime::key_of(rs.as_ref()));
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    Ok(runtime::done(rs.as_ref(), &ctx))
}

/// The pod counts of a ReplicaSet's status.
struct ReplicaCounts {
    replicas: i32,
    /// Pods carrying every label of the template.
    fully_labeled: i32,
    ready: i32,
    available: i32,
}

impl ReplicaCounts {
    fn of(spec: &ReplicaSetSpec, pods: &[Arc<Pod>], min_ready: i32) -> ReplicaCounts {
        let now = runtime::now();
        let empty = BTreeMap::new();
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .unwrap_or(&empty);
        let fully_labeled = pods
            .iter()
            .filter(|p| {
                let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
                template_labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            })
            .count() as i32;
        ReplicaCounts {
            replicas: pods.len() as i32,
            fully_labeled,
            ready: pods.iter().filter(|p| pod_state::is_pod_ready(p)).count() as i32,
            available: pods
                .iter()
                .filter(|p| pod_state::is_pod_available(p, min_ready, &now))
                .count() as i32,
        }
    }

    fn differ_from(
        &self,
        current: &ReplicaSetStatus,
        generation: i64,
        conditions: &[ReplicaSetCondition],
    ) -> bool {
        current.replicas != self.replicas
            || current.fully_labeled_replicas.unwrap_or(0) != self.fully_labeled
            || current.ready_replicas.unwrap_or(0) != self.ready
            || current.available_replicas.unwrap_or(0) != self.available
            || current.observed_generation.unwrap_or(0) != generation
            || current.conditions.as_deref().unwrap_or_default() != conditions
    }
}

/// Write the status; false if the ReplicaSet is gone.
async fn write_status(
    ctx: &Context,
    rs: &ReplicaSet,
    counts: &ReplicaCounts,
    generation: i64,
    conditions: &[ReplicaSetCondition],
) -> Result<bool> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"status": {
        "replicas": counts.replicas,
        "fullyLabeledReplicas": counts.fully_labeled,
        "readyReplicas": counts.ready,
        "availableReplicas": counts.available,
        "observedGeneration": generation,
        "conditions": if conditions.is_empty() { serde_json::Value::Null } else { json!(conditions) },
    }});
    Ok(runtime::merge_status(&api, name, &patch).await?.is_some())
}

/// The ReplicaFailure condition: set while creating/deleting is refused, cleared after.
fn failure_conditions(
    current: &ReplicaSetStatus,
    failure: Option<String>,
) -> Vec<ReplicaSetCondition> {
    let mut conditions: Vec<_> = current
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(msg) = failure {
        let existing = current
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
        let mut cond = ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(msg),
            last_transition_time: Some(runtime::now()),
        };
        if let Some(e) = existing
            && e.message == cond.message
        {
            cond = e.clone();
        }
        conditions.push(cond);
    }
    conditions
}

/// Adopt matching orphans, release owned pods that stopped matching; return the pods that are
/// ours afterwards.
async fn claim_pods(
    rs: &ReplicaSet,
    uid: &str,
    selector: &labels::LabelSelector,
    candidates: Vec<Arc<Pod>>,
    ctx: &Context,
) -> Result<Vec<Arc<Pod>>> {
    let empty = BTreeMap::new();
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut ours = Vec::new();
    for pod in candidates {
        let matches = selector.matches(pod.metadata.labels.as_ref().unwrap_or(&empty));
        match owners::controller_of(pod.as_ref()) {
            Some(owner) if owner.uid == uid => {
                if matches {
                    ours.push(pod);
                } else {
                    // Release.
                    let refs: Vec<&OwnerReference> = pod
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| r.uid != uid)
                        .collect();
                    patch_owners(&api, &pod, json!(refs)).await?;
                }
            }
            Some(_) => {}
            None => {
                if !matches || rs.metadata.deletion_timestamp.is_some() || uid.is_empty() {
                    continue;
                }
                let mut refs: Vec<OwnerReference> =
                    pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owners::controller_ref(rs));
                if patch_owners(&api, &pod, json!(refs)).await? {
                    ours.push(pod);
                }
            }
        }
    }
    Ok(ours)
}

/// Set a pod's owner references, guarded by its resource version. False if the pod is gone.
async fn patch_owners(api: &Api<Pod>, pod: &Pod, refs: serde_json::Value) -> Result<bool> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": pod.metadata.resource_version,
        "uid": pod.metadata.uid,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn manage_replicas(
    rs: &Arc<ReplicaSet>,
    key: &Key,
    pods: &[Arc<Pod>],
    ctx: &Arc<Context>,
    state: &Arc<State>,
) -> Result<()> {
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let have = pods.len();
    if have < want {
        let diff = (want - have).min(BURST_REPLICAS);
        create_replicas(rs, key, ctx, state, diff).await
    } else if have > want {
        let diff = (have - want).min(BURST_REPLICAS);
        delete_replicas(rs, key, pods, ctx, state, diff).await
    } else {
        Ok(())
    }
}

/// Create `diff` pods in slow-start batches (1, 2, 4, …), stopping at the first batch with a
/// failure, as kube does so a refusing API is not asked hundreds of times.
async fn create_replicas(
    rs: &Arc<ReplicaSet>,
    key: &Key,
    ctx: &Arc<Context>,
    state: &Arc<State>,
    diff: usize,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.0);
    let pod = pod_from_template(rs);
    let pp = PostParams::default();
    let mut created = Vec::new();
    let mut remaining = diff;
    let mut batch = SLOW_START_INITIAL_BATCH.min(remaining);
    let mut failure: Option<Error> = None;
    while batch > 0 {
        let results: Vec<_> = futures::stream::iter((0..batch).map(|_| api.create(&pp, &pod)))
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let mut batch_failed = false;
        for r in results {
            match r {
                Ok(p) => created.push(p.metadata.name.unwrap_or_default()),
                Err(e) => {
                    batch_failed = true;
                    if failure.is_none() {
                        failure = Some(e.into());
                    }
                }
            }
        }
        remaining -= batch;
        if batch_failed {
            break;
        }
        batch = (batch * 2).min(remaining);
    }
    state.expect(key, created.clone(), Vec::new());
    record_events(ctx, state, rs, "SuccessfulCreate", "Created pod", created);
    if let Some(e) = failure {
        if let Error::Kube(kube::Error::Api(s)) = &e {
            record_warning(
                ctx,
                rs,
                "FailedCreate",
                format!("Error creating: {}", s.message),
            );
        }
        return Err(e);
    }
    Ok(())
}

/// Delete the `diff` least valuable of `pods`, all at once.
async fn delete_replicas(
    rs: &Arc<ReplicaSet>,
    key: &Key,
    pods: &[Arc<Pod>],
    ctx: &Arc<Context>,
    state: &Arc<State>,
    diff: usize,
) -> Result<()> {
    let (ns, name) = key;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let victims = pods_to_delete(pods, diff);
    let uids: Vec<String> = victims
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    state.expect(key, Vec::new(), uids);
    let results = join_all(victims.iter().map(|p| {
        let pname = p.metadata.name.clone().unwrap_or_default();
        let api = api.clone();
        async move {
            let r = api.delete(&pname, &DeleteParams::default()).await;
            (pname, r)
        }
    }))
    .await;
    let mut deleted = Vec::new();
    let mut failure: Option<Error> = None;
    for (pname, r) in results {
        match r {
            Ok(_) => deleted.push(pname),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                if failure.is_none() {
                    failure = Some(e.into());
                }
            }
        }
    }
    record_events(ctx, state, rs, "SuccessfulDelete", "Deleted pod", deleted);
    if let Some(e) = failure {
        // Some deletions will never be observed; look again soon.
        state.forget(key);
        return Err(e);
    }
    tracing::debug!(replicaset = %name, deleted = diff, "scaled down");
    Ok(())
}

fn record_events(
    ctx: &Arc<Context>,
    state: &State,
    rs: &Arc<ReplicaSet>,
    reason: &'static str,
    what: &'static str,
    names: Vec<String>,
) {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let names: Vec<String> = names
        .into_iter()
        .filter(|_| state.may_record(&uid))
        .collect();
    if names.is_empty() {
        return;
    }
    let ctx = ctx.clone();
    let rs = rs.clone();
    // Events never hold up the work they describe.
    tokio::spawn(async move {
        for n in names {
            ctx.recorder
                .normal(rs.as_ref(), reason, format!("{what}: {n}"))
                .await;
        }
    });
}

fn record_warning(ctx: &Arc<Context>, rs: &Arc<ReplicaSet>, reason: &'static str, msg: String) {
    let ctx = ctx.clone();
    let rs = rs.clone();
    tokio::spawn(async move { ctx.recorder.warning(rs.as_ref(), reason, msg).await });
}

/// A pod from the ReplicaSet's template, named `<rs>-<random>` and controlled by it.
fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.as_deref().unwrap_or(""))),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owners::controller_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The `n` pods to delete first, as kube ranks them: unscheduled before scheduled, pending
/// before unknown before running, not ready before ready, lower deletion cost first, pods
/// doubled up on a node first, ready for less time first, more restarts first, newest first.
fn pods_to_delete(pods: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| per_node.get(n).copied())
            .unwrap_or(0)
    };
    let mut sorted: Vec<Arc<Pod>> = pods.to_vec();
    sorted.sort_by(|a, b| {
        use std::cmp::Reverse;
        let key = |p: &Pod| {
            let scheduled = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty());
            let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Pending") | None => 0,
                Some("Unknown") => 1,
                Some("Running") => 2,
                _ => 3,
            };
            let ready = pod_state::is_pod_ready(p);
            let cost: i64 = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let ready_since = if ready { ready_time(p) } else { None };
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (
                scheduled,
                phase,
                ready,
                cost,
                Reverse(rank(p)),
                Reverse(ready_since),
                Reverse(restarts),
                Reverse(created),
            )
        };
        key(a).cmp(&key(b))
    });
    sorted.truncate(n);
    sorted
}

fn ready_time(p: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t: &Time| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: i64) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap().to_string()},
                "spec": {"containers": [], "nodeName": node},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn deletes_the_least_valuable_pods_first() {
        let pods = vec![
            pod("ready-old", Some("n1"), "Running", true, 100),
            pod("ready-new", Some("n2"), "Running", true, 200),
            pod("unready", Some("n3"), "Running", false, 50),
            pod("pending", Some("n4"), "Pending", false, 10),
            pod("unscheduled", None, "Pending", false, 1),
        ];
        let order: Vec<String> = pods_to_delete(&pods, 5)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unready",
                "ready-new",
                "ready-old"
            ]
        );
    }
}
