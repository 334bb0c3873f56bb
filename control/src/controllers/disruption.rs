//! Disruption controller (kube's `pkg/controller/disruption`): keeps each
//! PodDisruptionBudget's status true to the pods it selects, which the eviction subresource
//! spends from. `expectedPods` is the pods' controllers' scale (for `maxUnavailable` and
//! percentages) or the pod count, `desiredHealthy` what the budget keeps, `currentHealthy` the
//! ready pods not being deleted nor just evicted, and `disruptionsAllowed` the difference.
//! Evicted pods stay in `disruptedPods` until they are gone, or for two minutes if they never
//! go. Status is written with the read resourceVersion, so a concurrent eviction is never
//! undone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinSet;

use super::endpoints::deletions;
use super::{owners, pod_state};
use crate::runtime::{self, Context, Error, Result};

/// kube's `DeletionTimeout`: how long an evicted pod may take to be deleted before the
/// budget counts it again.
const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);
const CONDITION: &str = "DisruptionAllowed";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let (on_pod, on_gone) = (informers.pdbs.store(), informers.pdbs.store());
    let controller =
        Controller::for_shared_stream(informers.pdbs.subscribe(), informers.pdbs.store())
            .watches_shared_stream(informers.pods.subscribe(), move |pod: Arc<Pod>| {
                budgets_selecting(&on_pod, &pod.metadata)
            })
            .watches_stream(
                deletions(&informers.pods),
                move |pod: PartialObjectMeta<Pod>| budgets_selecting(&on_gone, &pod.metadata),
            );
    runtime::drive("disruption", controller, ctx, 4, reconcile, tasks);
}

/// The budgets of the pod's namespace that select it.
fn budgets_selecting(
    pdbs: &Store<PodDisruptionBudget>,
    pod: &kube::api::ObjectMeta,
) -> Vec<ObjectRef<PodDisruptionBudget>> {
    let ns = pod.namespace.as_deref().unwrap_or("");
    pdbs.state()
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(ns))
        .filter(|b| owners::selects(selector_of(b), pod.labels.as_ref()))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

fn selector_of(
    pdb: &PodDisruptionBudget,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> {
    pdb.spec.as_ref().and_then(|s| s.selector.as_ref())
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(pdb.as_ref(), &ctx));
    }
    runtime::cache_ready(&ctx.informers.pods.store()).await?;
    let pods = pods_of(&ctx, &pdb);
    if pods.is_empty() {
        ctx.recorder
            .normal(pdb.as_ref(), "NoPods", "No matching pods found")
            .await;
    }
    let counts = match expected_counts(&ctx, &pdb, &pods).await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("Failed to calculate the number of expected pods: {e}");
            ctx.recorder
                .warning(pdb.as_ref(), "CalculateExpectedPodCountFailed", why)
                .await;
            fail_safe(&ctx, &pdb, &e).await?;
            return Err(Error::other(e));
        }
    };
    if !counts.unmanaged.is_empty() {
        ctx.recorder
            .warning(pdb.as_ref(), "UnmanagedPods", unmanaged_message(&pdb))
            .await;
    }
    let now = Timestamp::now();
    let recorded = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let (disrupted, recheck) = still_disrupted(&pods, &recorded, now);
    for pod in overdue(&pods, &recorded, now) {
        let ns = pdb.metadata.namespace.as_deref().unwrap_or("");
        let msg = format!("Pod was expected by PDB {ns}/{ns} to be deleted but it wasn't");
        ctx.recorder.warning(pod.as_ref(), "NotDeleted", msg).await;
    }
    let healthy = count_healthy(&pods, &disrupted, now);
    let status = computed_status(&pdb, healthy, &counts, disrupted);
    write_status(&ctx, &pdb, status).await?;
    let mut action = runtime::done(pdb.as_ref(), &ctx);
    if let Some(at) = recheck {
        let wait = Duration::try_from(at.duration_since(now)).unwrap_or_default();
        action = Action::requeue(wait.min(ctx.config.resync_period));
    }
    Ok(action)
}

/// The pods of the budget's namespace its selector selects (none without a selector, all with
/// an empty one, as policy/v1 has it).
fn pods_of(ctx: &Context, pdb: &PodDisruptionBudget) -> Vec<Arc<Pod>> {
    let ns = pdb.metadata.namespace.as_deref();
    let Some(selector) = selector_of(pdb) else {
        return Vec::new();
    };
    ctx.informers
        .pods
        .store()
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == ns)
        .filter(|p| owners::selects(Some(selector), p.metadata.labels.as_ref()))
        .collect()
}

fn unmanaged_message(pdb: &PodDisruptionBudget) -> String {
    let selector = serde_json::to_string(&selector_of(pdb)).unwrap_or_default();
    format!(
        "Pods selected by this PodDisruptionBudget (selector: {selector}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value."
    )
}

/// What the budget expects and keeps, and the selected pods without a controller.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    expected: i32,
    desired_healthy: i32,
    unmanaged: Vec<String>,
}

/// kube's `getExpectedPodCount`: the controllers' scale is only needed for `maxUnavailable`
/// and a percentage `minAvailable`; an integer `minAvailable` counts the pods.
async fn expected_counts(
    ctx: &Context,
    pdb: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
) -> std::result::Result<Counts, String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let needs_scale = spec.max_unavailable.is_some()
        || matches!(spec.min_available, Some(IntOrString::String(_)));
    let (scale, unmanaged) = if needs_scale {
        expected_scale(ctx, pods).await?
    } else {
        (0, Vec::new())
    };
    let pod_count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
    let (expected, desired_healthy) = budget(
        spec.min_available.as_ref(),
        spec.max_unavailable.as_ref(),
        pod_count,
        scale,
    )?;
    Ok(Counts {
        expected,
        desired_healthy,
        unmanaged,
    })
}

/// (expectedPods, desiredHealthy) of a budget over `pod_count` selected pods whose
/// controllers want `scale` replicas; percentages round up, as kube's
/// `GetScaledValueFromIntOrPercent(…, true)`.
fn budget(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    pod_count: i32,
    scale: i32,
) -> std::result::Result<(i32, i32), String> {
    if let Some(max) = max_unavailable {
        let unavailable = scaled(max, scale)?;
        return Ok((scale, (scale - unavailable).max(0)));
    }
    match min_available {
        Some(IntOrString::Int(n)) => Ok((pod_count, *n)),
        Some(percent) => Ok((scale, scaled(percent, scale)?)),
        None => Ok((0, 0)),
    }
}

/// kube's `GetScaledValueFromIntOrPercent` rounding up.
fn scaled(v: &IntOrString, total: i32) -> std::result::Result<i32, String> {
    match v {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let Some(number) = s.strip_suffix('%') else {
                return Err(
                    "invalid value for IntOrString: invalid type: string is not a percentage"
                        .to_string(),
                );
            };
            let percent: i64 = number
                .parse()
                .map_err(|e| format!("invalid value for IntOrString: invalid value {s:?}: {e}"))?;
            let value = (percent * i64::from(total) + 99).div_euclid(100);
            Ok(i32::try_from(value).unwrap_or(i32::MAX))
        }
    }
}

/// kube's `getExpectedScale`: the sum of the scales of the controllers of the selected pods
/// (each counted once), and the pods that have none.
async fn expected_scale(
    ctx: &Context,
    pods: &[Arc<Pod>],
) -> std::result::Result<(i32, Vec<String>), String> {
    // Keyed by the controller that owns the scale: the pods of two ReplicaSets of one
    // Deployment count its replicas once.
    let mut scales: HashMap<String, i32> = HashMap::new();
    let mut looked_up: HashSet<String> = HashSet::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(owner) = owners::controller_of(pod.as_ref()) else {
            unmanaged.push(name);
            continue;
        };
        if !looked_up.insert(owner.uid.clone()) {
            continue;
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let Some((uid, scale)) = controller_scale(ctx, owner, ns).await? else {
            return Err(format!("found no controllers for pod {name:?}"));
        };
        scales.insert(uid, scale);
    }
    let total = scales.values().fold(0i32, |acc, s| acc.saturating_add(*s));
    Ok((total, unmanaged))
}

/// The scale of a pod's controller as (the uid that owns the scale, replicas): a ReplicaSet
/// that a Deployment controls has the Deployment's; other kinds are read through their
/// `scale` subresource (kube's finders and `getScaleController`). `None` when the
/// controller is gone or is not the one the pod names.
async fn controller_scale(
    ctx: &Context,
    owner: &OwnerReference,
    ns: &str,
) -> std::result::Result<Option<(String, i32)>, String> {
    let group = owner.api_version.split_once('/').map_or("", |(g, _)| g);
    if group == "apps" && owner.kind == "ReplicaSet" {
        return Ok(replica_set_scale(ctx, owner, ns));
    }
    let Some(info) = crate::api_resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == owner.kind)
        .filter(|r| r.has_subresource("scale"))
    else {
        return Ok(None);
    };
    let resource = ApiResource {
        group: info.group.to_string(),
        version: info.version.to_string(),
        api_version: info.api_version(),
        kind: info.kind.to_string(),
        plural: info.plural.to_string(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    match api.get_scale(&owner.name).await {
        Ok(scale) if scale.metadata.uid.as_deref() == Some(owner.uid.as_str()) => Ok(Some((
            owner.uid.clone(),
            scale.spec.and_then(|s| s.replicas).unwrap_or(0),
        ))),
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn replica_set_scale(ctx: &Context, owner: &OwnerReference, ns: &str) -> Option<(String, i32)> {
    let rs: Arc<ReplicaSet> = ctx
        .informers
        .replica_sets
        .store()
        .get(&ObjectRef::new(&owner.name).within(ns))?;
    if rs.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
        return None;
    }
    if let Some(dep_ref) = owners::controller_of(rs.as_ref())
        && dep_ref.kind == "Deployment"
    {
        let dep: Arc<Deployment> = ctx
            .informers
            .deployments
            .store()
            .get(&ObjectRef::new(&dep_ref.name).within(ns))?;
        if dep.metadata.uid.as_deref() != Some(dep_ref.uid.as_str()) {
            return None;
        }
        let replicas = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        return Some((dep_ref.uid.clone(), replicas));
    }
    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    Some((owner.uid.clone(), replicas))
}

fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// kube's `buildDisruptedPodMap`: the evicted pods still expected to go (their deletion not
/// yet seen, within the timeout), and when the first of them times out.
fn still_disrupted(
    pods: &[Arc<Pod>],
    recorded: &BTreeMap<String, Time>,
    now: Timestamp,
) -> (BTreeMap<String, Time>, Option<Timestamp>) {
    let mut out = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    for pod in pods.iter().filter(|p| !is_deleting(p)) {
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let Some(at) = recorded.get(name) else {
            continue;
        };
        let Ok(deadline) = at.0.checked_add(DELETION_TIMEOUT) else {
            continue;
        };
        if deadline >= now {
            recheck = Some(recheck.map_or(deadline, |r| r.min(deadline)));
            out.insert(name.to_string(), at.clone());
        }
    }
    (out, recheck)
}

/// The evicted pods that outlived the timeout without being deleted.
fn overdue<'a>(
    pods: &'a [Arc<Pod>],
    recorded: &'a BTreeMap<String, Time>,
    now: Timestamp,
) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
    pods.iter().filter(move |p| {
        !is_deleting(p)
            && p.metadata
                .name
                .as_deref()
                .and_then(|n| recorded.get(n))
                .and_then(|at| at.0.checked_add(DELETION_TIMEOUT).ok())
                .is_some_and(|deadline| deadline < now)
    })
}

/// kube's `countHealthyPods`: ready pods, not being deleted, not just evicted.
fn count_healthy(pods: &[Arc<Pod>], disrupted: &BTreeMap<String, Time>, now: Timestamp) -> i32 {
    let evicted = |p: &Pod| {
        p.metadata
            .name
            .as_deref()
            .and_then(|n| disrupted.get(n))
            .and_then(|at| at.0.checked_add(DELETION_TIMEOUT).ok())
            .is_some_and(|deadline| deadline > now)
    };
    let healthy = pods
        .iter()
        .filter(|p| !is_deleting(p) && !evicted(p) && pod_state::is_pod_ready(p))
        .count();
    i32::try_from(healthy).unwrap_or(i32::MAX)
}

/// kube's `updatePdbStatus` arithmetic: no disruption while nothing is expected (a budget
/// whose pods just appeared stays safe until it is computed).
fn disruptions_allowed(current_healthy: i32, desired_healthy: i32, expected: i32) -> i32 {
    let allowed = current_healthy - desired_healthy;
    if expected <= 0 || allowed <= 0 {
        0
    } else {
        allowed
    }
}

fn computed_status(
    pdb: &PodDisruptionBudget,
    current_healthy: i32,
    counts: &Counts,
    disrupted: BTreeMap<String, Time>,
) -> PodDisruptionBudgetStatus {
    let previous = pdb.status.clone().unwrap_or_default();
    let mut status = PodDisruptionBudgetStatus {
        current_healthy,
        desired_healthy: counts.desired_healthy,
        expected_pods: counts.expected,
        disruptions_allowed: disruptions_allowed(
            current_healthy,
            counts.desired_healthy,
            counts.expected,
        ),
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: previous.conditions,
    };
    let (ok, reason) = if status.disruptions_allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    set_condition(&mut status, ok, reason, "");
    status
}

/// `meta.SetStatusCondition` of the DisruptionAllowed condition.
fn set_condition(status: &mut PodDisruptionBudgetStatus, ok: &str, reason: &str, message: &str) {
    let observed = status.observed_generation;
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let since = conditions
        .iter()
        .find(|c| c.type_ == CONDITION && c.status == ok)
        .map(|c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != CONDITION);
    conditions.push(Condition {
        type_: CONDITION.to_string(),
        status: ok.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: observed,
        last_transition_time: since.unwrap_or_else(runtime::now),
    });
}

/// The stored status without times that differ only by when it was computed.
fn comparable(status: &PodDisruptionBudgetStatus) -> PodDisruptionBudgetStatus {
    let mut s = status.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    s.disrupted_pods = s.disrupted_pods.filter(|m| !m.is_empty());
    s.conditions = s.conditions.filter(|c| !c.is_empty());
    s
}

/// `UpdateStatus` with the resourceVersion read, when anything changed: a conflict means an
/// eviction (or another writer) got there first, and the budget is recomputed.
async fn write_status(
    ctx: &Context,
    pdb: &PodDisruptionBudget,
    status: PodDisruptionBudgetStatus,
) -> Result<()> {
    let unchanged = pdb
        .status
        .as_ref()
        .is_some_and(|s| comparable(s) == comparable(&status));
    if unchanged {
        return Ok(());
    }
    let ns = pdb.metadata.namespace.as_deref().unwrap_or("");
    let name = pdb.metadata.name.as_deref().unwrap_or("");
    let mut updated = pdb.clone();
    updated.status = Some(status);
    let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .replace_status(name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// kube's `failSafe`: a budget whose status cannot be computed allows no disruption.
async fn fail_safe(ctx: &Context, pdb: &PodDisruptionBudget, why: &str) -> Result<()> {
    let mut status = pdb.status.clone().unwrap_or_default();
    status.disruptions_allowed = 0;
    set_condition(&mut status, "False", "SyncFailed", why);
    write_status(ctx, pdb, status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn int(n: i32) -> IntOrString {
        IntOrString::Int(n)
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.to_string())
    }

    #[test]
    fn min_available_counts_pods_or_rounds_a_percentage_of_the_scale_up() {
        assert_eq!(budget(Some(&int(2)), None, 3, 0), Ok((3, 2)));
        // 50% of 3 is 1.5: kube keeps 2.
        assert_eq!(budget(Some(&pct("50%")), None, 3, 3), Ok((3, 2)));
        assert_eq!(budget(Some(&pct("100%")), None, 2, 5), Ok((5, 5)));
        assert_eq!(budget(Some(&pct("0%")), None, 2, 5), Ok((5, 0)));
    }

    #[test]
    fn max_unavailable_rounds_up_and_never_wants_fewer_than_none() {
        assert_eq!(budget(None, Some(&int(1)), 3, 3), Ok((3, 2)));
        // 25% of 3 is 0.75: kube lets one go.
        assert_eq!(budget(None, Some(&pct("25%")), 3, 3), Ok((3, 2)));
        assert_eq!(budget(None, Some(&pct("34%")), 3, 3), Ok((3, 1)));
        assert_eq!(budget(None, Some(&int(5)), 3, 3), Ok((3, 0)));
        assert_eq!(budget(None, None, 4, 0), Ok((0, 0)));
        assert!(budget(None, Some(&pct("half")), 3, 3).is_err());
    }

    #[test]
    fn disruptions_need_an_expected_pod_and_healthy_headroom() {
        assert_eq!(disruptions_allowed(3, 2, 3), 1);
        assert_eq!(disruptions_allowed(2, 2, 3), 0);
        assert_eq!(disruptions_allowed(1, 2, 3), 0);
        assert_eq!(disruptions_allowed(3, 0, 0), 0);
    }

    fn pod(name: &str, ready: bool, deleting: bool) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        if deleting {
            p.metadata.deletion_timestamp = Some(runtime::now());
        }
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(p)
    }

    #[test]
    fn evicted_pods_do_not_count_until_they_time_out_and_gone_ones_are_pruned() {
        let now = Timestamp::now();
        let ago = |s: i64| Time(now.checked_sub(SignedDuration::from_secs(s)).unwrap());
        let pods = vec![
            pod("a", true, false),
            pod("b", true, false),
            pod("c", true, false),
            pod("d", true, true),
            pod("e", false, false),
        ];
        let recorded: BTreeMap<String, Time> = [
            ("a".to_string(), ago(10)),
            ("b".to_string(), ago(121)),
            ("d".to_string(), ago(5)),
            ("gone".to_string(), ago(5)),
        ]
        .into();
        let (kept, recheck) = still_disrupted(&pods, &recorded, now);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            recheck,
            Some(ago(10).0.checked_add(DELETION_TIMEOUT).unwrap())
        );
        let late: Vec<_> = overdue(&pods, &recorded, now)
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(late, ["b"]);
        // b (timed out) and c count; a is evicted, d is going, e is not ready.
        assert_eq!(count_healthy(&pods, &kept, now), 2);
    }

    #[test]
    fn the_condition_follows_the_allowance_and_keeps_its_transition_time() {
        let mut pdb = PodDisruptionBudget::default();
        pdb.metadata.generation = Some(2);
        let counts = Counts {
            expected: 3,
            desired_healthy: 2,
            unmanaged: Vec::new(),
        };
        let s = computed_status(&pdb, 3, &counts, BTreeMap::new());
        assert_eq!(s.disruptions_allowed, 1);
        assert_eq!(s.observed_generation, Some(2));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SufficientPods")
        );
        pdb.status = Some(s.clone());
        let again = computed_status(&pdb, 3, &counts, BTreeMap::new());
        assert_eq!(again, s);
        let short = computed_status(&pdb, 2, &counts, BTreeMap::new());
        let c = &short.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InsufficientPods")
        );
    }
}
