//! Deployment controller, as kube-controller-manager's deployment-controller: one ReplicaSet
//! per pod template (`<deployment>-<pod-template-hash>`), numbered by the
//! `deployment.kubernetes.io/revision` annotation; RollingUpdate (maxSurge / maxUnavailable)
//! and Recreate rollouts; proportional scaling while paused or mid-rollout; history pruning;
//! status with the Available and Progressing conditions `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::task::JoinSet;

use super::owners;
use crate::runtime::{self, Context, Error, Result};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";

/// While waiting for something no watch event announces (old pods disappearing), look again
/// this often.
const POLL: Duration = Duration::from_secs(1);

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let d_store = informers.deployments.store();
    let seen: Seen = Arc::default();
    let controller =
        Controller::for_shared_stream(informers.deployments.subscribe(), d_store.clone())
            .watches_shared_stream(informers.replica_sets.subscribe(), {
                let d_store = d_store.clone();
                move |rs: Arc<ReplicaSet>| deployments_for_rs(&rs, &d_store)
            })
            // Deletions are not broadcast to shared-informer subscribers.
            .reconcile_on(owners::vanished_children(
                informers.replica_sets.store(),
                d_store,
                seen.clone(),
                POLL,
            ));
    let reconcile = move |d: Arc<Deployment>, ctx: Arc<Context>| {
        let seen = seen.clone();
        async move { reconcile(d, ctx, seen).await }
    };
    runtime::drive("deployment", controller, ctx, 5, reconcile, tasks);
}

/// How many ReplicaSets each Deployment (`namespace`, `name`) saw in the cache at its last
/// reconcile.
type Seen = owners::SeenCounts;

/// The Deployments a ReplicaSet event concerns: its controller, or for an orphan every
/// Deployment of the namespace selecting it.
fn deployments_for_rs(rs: &ReplicaSet, d_store: &Store<Deployment>) -> Vec<ObjectRef<Deployment>> {
    owners::owners_to_notify(rs, d_store, |d| d.spec.as_ref().map(|s| &s.selector))
}

// ---------------------------------------------------------------------------------------
// Small helpers on the API types.

/// Sort the replica sets in the order a proportional scale goes through them: largest first,
/// on ties newer first when adding (`Some("up")`) and older first when removing
/// (`Some("down")`); `None` when nothing changes.
fn order_for_scaling(all: &mut [&mut ReplicaSet], to_add: i32) -> Option<&'static str> {
    let created = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match to_add.cmp(&0) {
        std::cmp::Ordering::Greater => {
            all.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| created(b).cmp(&created(a)))
            });
            Some("up")
        }
        std::cmp::Ordering::Less => {
            all.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| created(a).cmp(&created(b)))
            });
            Some("down")
        }
        std::cmp::Ordering::Equal => None,
    }
}

fn spec_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status
        .as_ref()
        .map(|s| {
            (
                s.replicas,
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
            )
        })
        .unwrap_or((0, 0, 0))
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// An int-or-percent against `total`, rounding percentages up or down.
fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool) -> Result<i32> {
    match v {
        None => Ok(0),
        Some(IntOrString::Int(i)) => Ok((*i).max(0)),
        Some(IntOrString::String(s)) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::other(format!("invalid value for IntOrString: {s:?}")))?;
            let product = pct.max(0) * i64::from(total.max(0));
            let v = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            Ok(i32::try_from(v).unwrap_or(i32::MAX))
        }
    }
}

/// kube's `ResolveFenceposts`: (maxSurge, maxUnavailable), never both zero.
fn fenceposts(d: &Deployment) -> Result<(i32, i32)> {
    let desired = spec_replicas(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), desired, true)?;
    let unavailable = scaled_value(ru.and_then(|r| r.max_unavailable.as_ref()), desired, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn max_surge(d: &Deployment) -> Result<i32> {
    if is_recreate(d) {
        return Ok(0);
    }
    Ok(fenceposts(d)?.0)
}

fn max_unavailable(d: &Deployment) -> Result<i32> {
    if is_recreate(d) || spec_replicas(d) == 0 {
        return Ok(0);
    }
    Ok(fenceposts(d)?.1.min(spec_replicas(d)))
}

/// 32-bit FNV-1a.
fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template: FNV-32a of the template (plus the collision count),
/// its decimal digits mapped onto kube's vowel-free alphabet (`rand.SafeEncodeString`).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Templates equal apart from the `pod-template-hash` label.
fn equal_ignore_hash(a: Option<&PodTemplateSpec>, b: Option<&PodTemplateSpec>) -> bool {
    fn norm(t: Option<&PodTemplateSpec>) -> serde_json::Value {
        let mut t = t.cloned().unwrap_or_default();
        if let Some(meta) = t.metadata.as_mut() {
            if let Some(labels) = meta.labels.as_mut() {
                labels.remove(POD_TEMPLATE_HASH);
                if labels.is_empty() {
                    meta.labels = None;
                }
            }
            if *meta == ObjectMeta::default() {
                t.metadata = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    }
    norm(a) == norm(b)
}

fn by_creation(rss: &mut [ReplicaSet]) {
    rss.sort_by(|a, b| {
        let ka = (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.metadata.name.clone(),
        );
        let kb = (
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            b.metadata.name.clone(),
        );
        ka.cmp(&kb)
    });
}

fn active(rss: &[ReplicaSet]) -> Vec<ReplicaSet> {
    rss.iter().filter(|r| rs_replicas(r) > 0).cloned().collect()
}

fn sum_replicas<'a>(rss: impl IntoIterator<Item = &'a ReplicaSet>) -> i32 {
    rss.into_iter().map(rs_replicas).sum()
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = runtime::now();
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// kube's `SetDeploymentCondition`: same status and reason → unchanged; same status → keep the
/// transition time.
fn set_condition(status: &mut DeploymentStatus, mut cond: DeploymentCondition) {
    if let Some(cur) = condition(status, &cond.type_) {
        if cur.status == cond.status && cur.reason == cond.reason {
            return;
        }
        if cur.status == cond.status {
            cond.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(status, &cond.type_);
    status.conditions.get_or_insert_with(Vec::new).push(cond);
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(cs) = status.conditions.as_mut() {
        cs.retain(|c| c.type_ != type_);
    }
}

// ---------------------------------------------------------------------------------------
// The sync.

/// One reconcile's working state: the Deployment (whose status is edited in place and
/// written at the end) and the API handles.
struct Sync<'a> {
    ctx: &'a Arc<Context>,
    /// As cached when the reconcile started; the status is written only if it changed.
    orig: Arc<Deployment>,
    d: Deployment,
    rs_api: Api<ReplicaSet>,
    d_api: Api<Deployment>,
    requeue: Option<Duration>,
    seen: Seen,
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>, seen: Seen) -> Result<Action> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let informers = &ctx.informers;
    runtime::cache_ready(&informers.replica_sets.store()).await?;
    runtime::cache_ready(&informers.pods.store()).await?;
    let mut s = Sync {
        ctx: &ctx,
        orig: d.clone(),
        d: d.as_ref().clone(),
        rs_api: Api::namespaced(ctx.client.clone(), &ns),
        d_api: Api::namespaced(ctx.client.clone(), &ns),
        requeue: None,
        seen,
    };
    match s.sync().await {
        Ok(()) => {}
        Err(e)
            if e.code() == Some(404) && s.d_api.get_opt(&name_of(d.as_ref())).await?.is_none() =>
        {
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    }
    let requeue = s.requeue;
    let mut action = runtime::done(d.as_ref(), &ctx);
    if let Some(after) = requeue {
        action = Action::requeue(after);
    }
    Ok(action)
}

fn name_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

impl Sync<'_> {
    fn name(&self) -> String {
        name_of(&self.d)
    }

    async fn sync(&mut self) -> Result<()> {
        let Some(spec) = self.d.spec.clone() else {
            return Ok(());
        };
        if spec.selector == LabelSelector::default() {
            self.ctx
                .recorder
                .warning(
                    &self.d,
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required.",
                )
                .await;
            let generation = self.d.metadata.generation;
            let st = self.d.status.get_or_insert_with(Default::default);
            if st.observed_generation < generation {
                st.observed_generation = generation;
                self.write_status().await?;
            }
            return Ok(());
        }
        let rs_list = self.claim_replica_sets(&spec.selector).await?;
        if self.d.metadata.deletion_timestamp.is_some() {
            let (new_rs, old) = self.get_all(&rs_list, false).await?;
            let mut all = old;
            all.extend(new_rs.clone());
            return self.sync_status(&all, new_rs.as_ref()).await;
        }
        self.check_paused_conditions();
        if is_paused(&self.d) || self.is_scaling_event(&rs_list) {
            return self.sync_scale(&rs_list).await;
        }
        if is_recreate(&self.d) {
            self.rollout_recreate(&rs_list).await
        } else {
            self.rollout_rolling(&rs_list).await
        }
    }

    /// Adopt orphan ReplicaSets the selector matches, release owned ones it no longer does.
    async fn claim_replica_sets(&self, selector: &LabelSelector) -> Result<Vec<ReplicaSet>> {
        let ns = self.d.metadata.namespace.clone().unwrap_or_default();
        let uid = self.d.metadata.uid.clone().unwrap_or_default();
        let mut out = Vec::new();
        let snapshot = self.ctx.informers.replica_sets.store().state();
        let key = (ns.clone(), self.name());
        owners::remember_count::<Deployment, _>(&self.seen, &snapshot, &key);
        for rs in snapshot {
            if rs.metadata.namespace.as_deref() != Some(ns.as_str()) {
                continue;
            }
            let matches = owners::selects(Some(selector), rs.metadata.labels.as_ref());
            match owners::controller_of(rs.as_ref()) {
                Some(owner) if owner.uid == uid => {
                    if matches {
                        out.push(rs.as_ref().clone());
                    } else {
                        let refs: Vec<_> = rs
                            .metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        self.patch_owners(&rs, json!(refs)).await?;
                    }
                }
                Some(_) => {}
                None => {
                    if !matches
                        || self.d.metadata.deletion_timestamp.is_some()
                        || rs.metadata.deletion_timestamp.is_some()
                        || uid.is_empty()
                    {
                        continue;
                    }
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(owners::controller_ref(&self.d));
                    if let Some(adopted) = self.patch_owners(&rs, json!(refs)).await? {
                        out.push(adopted);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn patch_owners(
        &self,
        rs: &ReplicaSet,
        refs: serde_json::Value,
    ) -> Result<Option<ReplicaSet>> {
        let patch = json!({"metadata": {
            "ownerReferences": refs,
            "resourceVersion": rs.metadata.resource_version,
            "uid": rs.metadata.uid,
        }});
        match self
            .rs_api
            .patch(&name_of(rs), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(rs) => Ok(Some(rs)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A replica set whose desired-replicas annotation disagrees with the Deployment's
    /// replicas means the Deployment was scaled.
    fn is_scaling_event(&self, rs_list: &[ReplicaSet]) -> bool {
        let want = spec_replicas(&self.d);
        active(rs_list).iter().any(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_REPLICAS))
                .and_then(|v| v.parse::<i32>().ok())
                .is_some_and(|desired| desired != want)
        })
    }

    fn check_paused_conditions(&mut self) {
        if progress_deadline(&self.d).is_none() {
            return;
        }
        let paused = is_paused(&self.d);
        let st = self.d.status.get_or_insert_with(Default::default);
        let cond = condition(st, PROGRESSING);
        if cond.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT)) {
            return;
        }
        let paused_cond = cond.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
        if paused && !paused_cond {
            set_condition(
                st,
                new_condition(
                    PROGRESSING,
                    "Unknown",
                    PAUSED,
                    "Deployment is paused".into(),
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                st,
                new_condition(
                    PROGRESSING,
                    "Unknown",
                    RESUMED,
                    "Deployment is resumed".into(),
                ),
            );
        }
    }

    /// The new ReplicaSet (the oldest whose template is the Deployment's) and the old ones,
    /// bringing the revision annotations up to date; creates the new one if asked to.
    async fn get_all(
        &mut self,
        rs_list: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
        let mut sorted = rs_list.to_vec();
        by_creation(&mut sorted);
        let template = self.d.spec.as_ref().map(|s| &s.template);
        let new_idx = sorted.iter().position(|rs| {
            equal_ignore_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref()), template)
        });
        let existing = new_idx.map(|i| sorted.remove(i));
        let old = sorted;
        let new_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        if let Some(rs) = existing {
            let rs = self.sync_existing_new_rs(rs, new_revision).await?;
            return Ok((Some(rs), old));
        }
        if !create {
            return Ok((None, old));
        }
        let rs = self.create_new_rs(&old, new_revision).await?;
        Ok((Some(rs), old))
    }

    async fn sync_existing_new_rs(
        &mut self,
        rs: ReplicaSet,
        new_revision: i64,
    ) -> Result<ReplicaSet> {
        let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
        let changed = self.set_new_rs_annotations(&mut annotations, new_revision, true);
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        let min_ready_changed = rs.spec.as_ref().and_then(|s| s.min_ready_seconds) != min_ready;
        let mut rs = rs;
        if changed || min_ready_changed {
            let patch = json!({
                "metadata": {"annotations": annotations, "resourceVersion": rs.metadata.resource_version},
                "spec": {"minReadySeconds": min_ready},
            });
            rs = self
                .rs_api
                .patch(
                    &name_of(&rs),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        self.set_deployment_revision(&rs).await?;
        if progress_deadline(&self.d).is_some() {
            let st = self.d.status.get_or_insert_with(Default::default);
            if condition(st, PROGRESSING).is_none() {
                set_condition(
                    st,
                    new_condition(
                        PROGRESSING,
                        "True",
                        FOUND_NEW_RS,
                        format!("Found new replica set {:?}", name_of(&rs)),
                    ),
                );
            }
        }
        Ok(rs)
    }

    async fn create_new_rs(&mut self, old: &[ReplicaSet], new_revision: i64) -> Result<ReplicaSet> {
        let spec = self.d.spec.clone().unwrap_or_default();
        let collision = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        let tmeta = template.metadata.get_or_insert_with(Default::default);
        tmeta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = tmeta.labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{}", self.name(), hash);
        let replicas = self.new_rs_new_replicas(old, None)?;
        let mut annotations = BTreeMap::new();
        self.set_new_rs_annotations(&mut annotations, new_revision, false);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.metadata.namespace.clone(),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![owners::controller_ref(&self.d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match self.rs_api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if replicas > 0 {
                    self.ctx
                        .recorder
                        .normal(
                            &self.d,
                            "ScalingReplicaSet",
                            format!("Scaled up replica set {name} from 0 to {replicas}"),
                        )
                        .await;
                }
                if progress_deadline(&self.d).is_some() {
                    let st = self.d.status.get_or_insert_with(Default::default);
                    set_condition(
                        st,
                        new_condition(
                            PROGRESSING,
                            "True",
                            NEW_RS_CREATED,
                            format!("Created new replica set {name:?}"),
                        ),
                    );
                }
                created
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours already (a lagging cache), or a hash collision.
                let existing = self.rs_api.get(&name).await?;
                let uid = self.d.metadata.uid.clone().unwrap_or_default();
                let ours = owners::controller_of(&existing).is_some_and(|r| r.uid == uid);
                let same = equal_ignore_hash(
                    existing.spec.as_ref().and_then(|s| s.template.as_ref()),
                    Some(&spec.template),
                );
                if !(ours && same) {
                    let st = self.d.status.get_or_insert_with(Default::default);
                    st.collision_count = Some(st.collision_count.unwrap_or(0).saturating_add(1));
                    self.write_status().await?;
                    return Err(Error::other(format!(
                        "replica set {name} exists with another template; collision count raised"
                    )));
                }
                existing
            }
            Err(e) => return Err(e.into()),
        };
        self.set_deployment_revision(&created).await?;
        Ok(created)
    }

    /// kube's `SetNewReplicaSetAnnotations`; true if anything changed.
    fn set_new_rs_annotations(
        &self,
        annotations: &mut BTreeMap<String, String>,
        new_revision: i64,
        exists: bool,
    ) -> bool {
        let mut changed = false;
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            let skip = [
                LAST_APPLIED,
                REVISION,
                REVISION_HISTORY,
                DESIRED_REPLICAS,
                MAX_REPLICAS,
                ROLLBACK_TO,
            ]
            .contains(&k.as_str());
            if skip || annotations.get(k) == Some(v) {
                continue;
            }
            annotations.insert(k.clone(), v.clone());
            changed = true;
        }
        let old = annotations.get(REVISION).cloned().unwrap_or_default();
        let old_num: i64 = if old.is_empty() {
            0
        } else {
            match old.parse() {
                Ok(n) => n,
                Err(_) => return changed,
            }
        };
        if old_num < new_revision {
            annotations.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            if !old.is_empty() && exists {
                let history = match annotations.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old,
                };
                annotations.insert(REVISION_HISTORY.into(), history);
            }
        }
        if !exists {
            let surge = max_surge(&self.d).unwrap_or(0);
            changed |= set_replicas_annotations(
                annotations,
                spec_replicas(&self.d),
                spec_replicas(&self.d).saturating_add(surge),
            );
        }
        changed
    }

    /// The Deployment carries the revision of its new ReplicaSet.
    async fn set_deployment_revision(&mut self, rs: &ReplicaSet) -> Result<()> {
        let Some(rev) = rs
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
        else {
            return Ok(());
        };
        let current = self
            .d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if current == Some(rev) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        let updated = self
            .d_api
            .patch(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.d.metadata.annotations = updated.metadata.annotations;
        Ok(())
    }

    /// How big the new ReplicaSet may be now (kube's `NewRSNewReplicas`).
    fn new_rs_new_replicas(&self, all: &[ReplicaSet], new_rs: Option<&ReplicaSet>) -> Result<i32> {
        let want = spec_replicas(&self.d);
        if is_recreate(&self.d) {
            return Ok(want);
        }
        let new_replicas = new_rs.map(rs_replicas).unwrap_or(0);
        let surge = max_surge(&self.d)?;
        let current = sum_replicas(all);
        let max_total = want.saturating_add(surge);
        if current >= max_total {
            return Ok(new_replicas);
        }
        let scale_up = (max_total - current).min(want - new_replicas).max(0);
        Ok(new_replicas + scale_up)
    }

    /// Scale one ReplicaSet, keeping its desired/max-replicas annotations current; true if the
    /// size changed.
    async fn scale_rs(&self, rs: &mut ReplicaSet, to: i32, op: Option<&str>) -> Result<bool> {
        let from = rs_replicas(rs);
        let size_changes = from != to;
        let want = spec_replicas(&self.d);
        let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
        let annotations_change = set_replicas_annotations(
            &mut annotations,
            want,
            want.saturating_add(max_surge(&self.d)?),
        );
        if !size_changes && !annotations_change {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {
                "annotations": {
                    DESIRED_REPLICAS: annotations.get(DESIRED_REPLICAS),
                    MAX_REPLICAS: annotations.get(MAX_REPLICAS),
                },
                "resourceVersion": rs.metadata.resource_version,
            },
            "spec": {"replicas": to},
        });
        *rs = self
            .rs_api
            .patch(&name_of(rs), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if size_changes {
            let op = op.unwrap_or(if to > from { "up" } else { "down" });
            self.ctx
                .recorder
                .normal(
                    &self.d,
                    "ScalingReplicaSet",
                    format!(
                        "Scaled {op} replica set {} from {from} to {to}",
                        name_of(rs)
                    ),
                )
                .await;
        }
        Ok(size_changes)
    }

    // ---- scaling (paused, or `kubectl scale` mid-rollout) ----

    async fn sync_scale(&mut self, rs_list: &[ReplicaSet]) -> Result<()> {
        let (mut new_rs, mut old) = self.get_all(rs_list, false).await?;
        self.scale(&mut new_rs, &mut old).await?;
        if is_paused(&self.d) {
            self.cleanup(&old).await?;
        }
        let mut all = old;
        all.extend(new_rs.clone());
        self.sync_status(&all, new_rs.as_ref()).await
    }

    /// kube's proportional scaling.
    async fn scale(
        &mut self,
        new_rs: &mut Option<ReplicaSet>,
        old: &mut [ReplicaSet],
    ) -> Result<()> {
        let want = spec_replicas(&self.d);
        // One active (or, with none, the newest) replica set takes the whole count.
        let active_new = new_rs.as_ref().is_some_and(|r| rs_replicas(r) > 0);
        let active_old: Vec<usize> = (0..old.len())
            .filter(|&i| rs_replicas(&old[i]) > 0)
            .collect();
        let target: Option<&mut ReplicaSet> = match active_old.len() + usize::from(active_new) {
            0 if new_rs.is_some() => new_rs.as_mut(),
            0 => old
                .iter_mut()
                .max_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            1 if active_new => new_rs.as_mut(),
            1 => old.get_mut(active_old[0]),
            _ => None,
        };
        if let Some(rs) = target {
            if rs_replicas(rs) != want {
                self.scale_rs(rs, want, None).await?;
            }
            return Ok(());
        }
        // A saturated new replica set: scale the old ones away.
        if let Some(n) = new_rs.as_ref()
            && is_saturated(&self.d, n)
        {
            for rs in old.iter_mut().filter(|r| rs_replicas(r) > 0) {
                self.scale_rs(rs, 0, None).await?;
            }
            return Ok(());
        }
        if is_recreate(&self.d) {
            return Ok(());
        }
        self.scale_proportionally(new_rs, old).await
    }

    /// During a rolling update, spread a change of `replicas` over the active replica sets in
    /// proportion to their sizes (kube's proportional scaling), the rounding left to the
    /// first one.
    async fn scale_proportionally(
        &mut self,
        new_rs: &mut Option<ReplicaSet>,
        old: &mut [ReplicaSet],
    ) -> Result<()> {
        let want = spec_replicas(&self.d);
        let surge = max_surge(&self.d)?;
        let mut all: Vec<&mut ReplicaSet> = old
            .iter_mut()
            .chain(new_rs.iter_mut())
            .filter(|r| rs_replicas(r) > 0)
            .collect();
        let all_replicas: i32 = all.iter().map(|r| rs_replicas(r)).sum();
        let allowed = if want > 0 {
            want.saturating_add(surge)
        } else {
            0
        };
        let to_add = allowed - all_replicas;
        let op = order_for_scaling(&mut all, to_add);
        let d_status_replicas = self
            .orig
            .status
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        let mut added = 0;
        let mut sizes = Vec::with_capacity(all.len());
        for rs in &all {
            let size = rs_replicas(rs);
            if to_add != 0 {
                let p = proportion(rs, want, surge, d_status_replicas, to_add, added);
                sizes.push(size + p);
                added += p;
            } else {
                sizes.push(size);
            }
        }
        for (i, rs) in all.into_iter().enumerate() {
            let mut size = sizes[i];
            if i == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_rs(rs, size, op).await?;
        }
        Ok(())
    }

    // ---- rollouts ----

    async fn rollout_rolling(&mut self, rs_list: &[ReplicaSet]) -> Result<()> {
        let (new_rs, old) = self.get_all(rs_list, true).await?;
        let Some(mut new_rs) = new_rs else {
            return Err(Error::other("no new replica set"));
        };
        let mut old = old;
        let mut all: Vec<ReplicaSet> = old.clone();
        all.push(new_rs.clone());
        if self.reconcile_new_rs(&all, &mut new_rs).await? {
            let mut all = old;
            all.push(new_rs.clone());
            return self.sync_rollout_status(&all, Some(&new_rs)).await;
        }
        if self.reconcile_old_rss(&mut old, &new_rs).await? {
            let mut all = old;
            all.push(new_rs.clone());
            return self.sync_rollout_status(&all, Some(&new_rs)).await;
        }
        let status_now = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &status_now) {
            self.cleanup(&old).await?;
        }
        let mut all = old;
        all.push(new_rs.clone());
        self.sync_rollout_status(&all, Some(&new_rs)).await
    }

    async fn reconcile_new_rs(
        &mut self,
        all: &[ReplicaSet],
        new_rs: &mut ReplicaSet,
    ) -> Result<bool> {
        let want = spec_replicas(&self.d);
        let have = rs_replicas(new_rs);
        if have == want {
            return Ok(false);
        }
        if have > want {
            return self.scale_rs(new_rs, want, None).await;
        }
        let to = self.new_rs_new_replicas(all, Some(new_rs))?;
        self.scale_rs(new_rs, to, None).await
    }

    async fn reconcile_old_rss(
        &mut self,
        old: &mut [ReplicaSet],
        new_rs: &ReplicaSet,
    ) -> Result<bool> {
        let old_pods: i32 = old
            .iter()
            .filter(|r| rs_replicas(r) > 0)
            .map(rs_replicas)
            .sum();
        if old_pods == 0 {
            return Ok(false);
        }
        let all_pods = old_pods + rs_replicas(new_rs);
        let min_available = spec_replicas(&self.d) - max_unavailable(&self.d)?;
        let new_unavailable = rs_replicas(new_rs) - available_of(new_rs);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        by_creation(old);
        // Unhealthy replicas first: scaling them down costs no availability.
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let replicas = rs_replicas(rs);
            let available = available_of(rs);
            if replicas == 0 || available >= replicas {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(replicas - available);
            self.scale_rs(rs, replicas - down, None).await?;
            cleaned += down;
        }
        // Then healthy ones, as far as availability allows.
        let available: i32 = old.iter().map(available_of).sum::<i32>() + available_of(new_rs);
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                let replicas = rs_replicas(rs);
                if replicas == 0 {
                    continue;
                }
                let down = replicas.min(total - scaled);
                self.scale_rs(rs, replicas - down, None).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn rollout_recreate(&mut self, rs_list: &[ReplicaSet]) -> Result<()> {
        let (mut new_rs, mut old) = self.get_all(rs_list, false).await?;
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|r| rs_replicas(r) > 0) {
            scaled_down |= self.scale_rs(rs, 0, None).await?;
        }
        if scaled_down {
            let mut all = old;
            all.extend(new_rs.clone());
            return self.sync_rollout_status(&all, new_rs.as_ref()).await;
        }
        if self.old_pods_running(new_rs.as_ref(), &old) {
            // Pods going away raise no event the Deployment sees: look again soon.
            self.requeue = Some(POLL);
            let mut all = old;
            all.extend(new_rs.clone());
            return self.sync_rollout_status(&all, new_rs.as_ref()).await;
        }
        if new_rs.is_none() {
            let (n, o) = self.get_all(rs_list, true).await?;
            new_rs = n;
            old = o;
        }
        if let Some(n) = new_rs.as_mut() {
            let want = spec_replicas(&self.d);
            self.scale_rs(n, want, None).await?;
        }
        let status_now = self.d.status.clone().unwrap_or_default();
        if deployment_complete(&self.d, &status_now) {
            self.cleanup(&old).await?;
        }
        let mut all = old;
        all.extend(new_rs.clone());
        self.sync_rollout_status(&all, new_rs.as_ref()).await
    }

    /// Whether any pod of an old ReplicaSet still exists (terminating ones included).
    fn old_pods_running(&self, new_rs: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        if old.iter().any(|r| rs_status(r).0 > 0) {
            return true;
        }
        let new_uid = new_rs.and_then(|r| r.metadata.uid.clone());
        let old_uids: Vec<&str> = old
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .filter(|u| Some(*u) != new_uid.as_deref())
            .collect();
        if old_uids.is_empty() {
            return false;
        }
        let ns = self.d.metadata.namespace.clone();
        self.ctx
            .informers
            .pods
            .store()
            .state()
            .iter()
            .any(|p: &Arc<Pod>| {
                p.metadata.namespace == ns
                    && owners::controller_of(p.as_ref())
                        .is_some_and(|o| old_uids.contains(&o.uid.as_str()))
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
    }

    /// Delete the oldest zero-sized old ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, old: &[ReplicaSet]) -> Result<()> {
        let Some(limit) = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .filter(|l| *l != i32::MAX)
        else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit.max(0));
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| {
            revision(a).cmp(&revision(b)).then_with(|| {
                let ka = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
                let kb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
                ka.cmp(&kb)
            })
        });
        for rs in cleanable.into_iter().take(diff as usize) {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if rs_status(rs).0 != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            match self
                .rs_api
                .delete(&name_of(rs), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    // ---- status ----

    fn calculate_status(
        &self,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> DeploymentStatus {
        let available: i32 = all.iter().map(|r| rs_status(r).2).sum();
        let total = sum_replicas(all);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|r| rs_status(r).0).sum()),
            updated_replicas: Some(new_rs.map(|r| rs_status(r).0).unwrap_or(0)),
            ready_replicas: Some(all.iter().map(|r| rs_status(r).1).sum()),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: self.d.status.as_ref().and_then(|s| s.collision_count),
            conditions: self.d.status.as_ref().and_then(|s| s.conditions.clone()),
            terminating_replicas: None,
        };
        let min = spec_replicas(&self.d) - max_unavailable(&self.d).unwrap_or(0);
        let cond = if available >= min {
            new_condition(
                AVAILABLE,
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            new_condition(
                AVAILABLE,
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_condition(&mut status, cond);
        status
    }

    /// Status without progress bookkeeping (scaling, paused, deleting).
    async fn sync_status(&mut self, all: &[ReplicaSet], new_rs: Option<&ReplicaSet>) -> Result<()> {
        let status = self.calculate_status(all, new_rs);
        self.d.status = Some(status);
        self.write_status().await
    }

    /// Status with the Progressing condition (kube's `syncRolloutStatus`).
    async fn sync_rollout_status(
        &mut self,
        all: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<()> {
        let mut status = self.calculate_status(all, new_rs);
        let old_status = self.orig.status.clone().unwrap_or_default();
        let deadline = progress_deadline(&self.d);
        if deadline.is_none() {
            remove_condition(&mut status, PROGRESSING);
        }
        let current = condition(&status, PROGRESSING).cloned();
        let complete_before = status.replicas == status.updated_replicas
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        let rs_name = new_rs.map(name_of).unwrap_or_default();
        if let Some(deadline) = deadline
            && !complete_before
        {
            if deployment_complete(&self.d, &status) {
                set_condition(
                    &mut status,
                    new_condition(
                        PROGRESSING,
                        "True",
                        NEW_RS_AVAILABLE,
                        format!("ReplicaSet {rs_name:?} has successfully progressed."),
                    ),
                );
            } else if deployment_progressing(&old_status, &status) {
                let mut cond = new_condition(
                    PROGRESSING,
                    "True",
                    RS_UPDATED,
                    format!("ReplicaSet {rs_name:?} is progressing."),
                );
                if let Some(cur) = &current
                    && cur.status == "True"
                {
                    cond.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
                set_condition(&mut status, cond);
            } else if let Some(cur) = &current
                && cur.reason.as_deref() != Some(TIMED_OUT)
                && cur.reason.as_deref() != Some(PAUSED)
            {
                let since = cur
                    .last_update_time
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or(0);
                let now = runtime::now().0.as_second();
                let due = since + i64::from(deadline);
                if now > due {
                    set_condition(
                        &mut status,
                        new_condition(
                            PROGRESSING,
                            "False",
                            TIMED_OUT,
                            format!("ReplicaSet {rs_name:?} has timed out progressing."),
                        ),
                    );
                } else {
                    // Come back when the deadline passes.
                    let after = Duration::from_secs((due - now + 1).max(1) as u64);
                    self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
                }
            }
        }
        self.d.status = Some(status);
        self.write_status().await
    }

    async fn write_status(&mut self) -> Result<()> {
        let new = self.d.status.clone().unwrap_or_default();
        let old = self.orig.status.clone().unwrap_or_default();
        if new == old {
            return Ok(());
        }
        let patch = json!({"status": {
            "observedGeneration": new.observed_generation,
            "replicas": new.replicas.unwrap_or(0),
            "updatedReplicas": new.updated_replicas.unwrap_or(0),
            "readyReplicas": new.ready_replicas.unwrap_or(0),
            "availableReplicas": new.available_replicas.unwrap_or(0),
            "unavailableReplicas": new.unavailable_replicas.unwrap_or(0),
            "collisionCount": new.collision_count,
            "conditions": new.conditions,
        }});
        self.d_api
            .patch_status(&self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// Available replicas of a ReplicaSet, never more than it is scaled to: right after a scale
/// down its status still counts pods that are about to go.
fn available_of(rs: &ReplicaSet) -> i32 {
    rs_status(rs).2.min(rs_replicas(rs))
}

fn set_replicas_annotations(
    annotations: &mut BTreeMap<String, String>,
    desired: i32,
    max: i32,
) -> bool {
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if annotations.get(k) != Some(&v) {
            annotations.insert(k.to_string(), v);
            changed = true;
        }
    }
    changed
}

fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = spec_replicas(d);
    let desired = rs
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESIRED_REPLICAS))
        .and_then(|v| v.parse::<i32>().ok());
    rs_replicas(rs) == want && desired == Some(want) && rs_status(rs).2 == want
}

/// kube's `GetProportion`.
fn proportion(
    rs: &ReplicaSet,
    want: i32,
    surge: i32,
    d_status_replicas: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    let size = rs_replicas(rs);
    if size == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if want == 0 {
        -size
    } else {
        let deployment_replicas = want.saturating_add(surge);
        let annotated = rs
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MAX_REPLICAS))
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(d_status_replicas);
        if annotated == 0 {
            0
        } else {
            let new_size = f64::from(size) * f64::from(deployment_replicas) / f64::from(annotated);
            new_size.round() as i32 - size
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

fn deployment_complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let want = spec_replicas(d);
    st.updated_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
        && st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn deployment_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new.replicas.unwrap_or(0) < old.replicas.unwrap_or(0)
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(
        replicas: i32,
        surge: serde_json::Value,
        unavailable: serde_json::Value,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}},
        }))
        .unwrap()
    }

    #[test]
    fn fenceposts_round_like_kube() {
        let d = deployment(10, json!("25%"), json!("25%"));
        assert_eq!(fenceposts(&d).unwrap(), (3, 2));
        let d = deployment(3, json!(0), json!(0));
        assert_eq!(fenceposts(&d).unwrap(), (0, 1));
        let d = deployment(1, json!("10%"), json!("10%"));
        assert_eq!(fenceposts(&d).unwrap(), (1, 0));
        assert_eq!(
            max_unavailable(&deployment(2, json!(1), json!(5))).unwrap(),
            2
        );
        assert!(fenceposts(&deployment(2, json!("x%"), json!(1))).is_err());
    }

    #[test]
    fn template_hash_is_stable_and_safe() {
        let d = deployment(1, json!(1), json!(1));
        let t = &d.spec.as_ref().unwrap().template;
        let h = template_hash(t, None);
        assert_eq!(h, template_hash(t, None));
        assert_ne!(h, template_hash(t, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut with_hash = t.clone();
        with_hash
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), h);
        assert!(equal_ignore_hash(Some(t), Some(&with_hash)));
    }
}
