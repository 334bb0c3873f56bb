//! Job controller (NonIndexed jobs): runs up to `parallelism` pods at a time until
//! `completions` of them succeeded (or, without `completions`, until one succeeded and the rest
//! finished), counting succeeded and failed pods by phase (finished pods are kept). More than
//! `backoffLimit` failures, or `activeDeadlineSeconds` passed, fail the job and delete its
//! active pods; replacement pods after failures wait out kube's exponential back-off (10 s
//! doubling, at most 6 min). `suspend` deletes the active pods and creates none. Conditions,
//! start and completion times, and events as kube's job-controller writes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::endpoints::deletions;
use super::{owners, pod_state};
use crate::runtime::{self, Context, Result};
use skiff_common::selector::selector_string;

const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// When each job last saw its failure count grow (for the pod re-creation back-off).
#[derive(Default)]
struct FailureClock {
    seen: Mutex<HashMap<String, (i32, Instant)>>,
}

impl FailureClock {
    /// How long to hold off new pods after `failed` failures.
    fn wait(&self, uid: &str, failed: i32) -> Option<Duration> {
        if failed <= 0 {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen
            .entry(uid.to_string())
            .or_insert((failed, Instant::now()));
        if entry.0 != failed {
            *entry = (failed, Instant::now());
        }
        let exp = u32::try_from(failed - 1).unwrap_or(0).min(16);
        let delay = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
        delay.checked_sub(entry.1.elapsed())
    }

    fn forget(&self, uid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let controller =
        Controller::for_shared_stream(informers.jobs.subscribe(), informers.jobs.store())
            .watches_shared_stream(informers.pods.subscribe(), |pod: Arc<Pod>| {
                owner_of(&pod.metadata)
            })
            .watches_stream(deletions(&informers.pods), |pod: PartialObjectMeta<Pod>| {
                owner_of(&pod.metadata)
            });
    let clock = Arc::new(FailureClock::default());
    runtime::drive(
        "job",
        controller,
        ctx,
        4,
        move |job, ctx| reconcile(job, ctx, clock.clone()),
        tasks,
    );
}

fn owner_of(meta: &ObjectMeta) -> Option<kube::runtime::reflector::ObjectRef<Job>> {
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))?;
    (owner.kind == "Job").then(|| {
        kube::runtime::reflector::ObjectRef::new(&owner.name)
            .within(meta.namespace.as_deref().unwrap_or(""))
    })
}

fn has_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn condition(type_: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.to_string(),
        status: "True".to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>, clock: Arc<FailureClock>) -> Result<Action> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let finished = has_condition(&job, "Complete") || has_condition(&job, "Failed");
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(job.as_ref(), &ctx));
    }
    let Some(spec) = job.spec.as_ref() else {
        return Ok(runtime::done(job.as_ref(), &ctx));
    };
    let Some(selector) = pod_selector(&job, spec) else {
        return Ok(runtime::done(job.as_ref(), &ctx));
    };
    let now = runtime::now();

    // Pods straight from the API: a stale cache would start too many.
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| owners::controller_of(p).map(|r| r.uid.as_str()) == Some(uid.as_str()))
        .collect();
    let counts = PodCounts::of(&pods);

    let status = job.status.clone().unwrap_or_default();
    let mut decision = Decision::from_status(&status);
    if !finished {
        decision
            .decide(&job, spec, &ctx, &clock, &counts, &now)
            .await;
    }

    let mut created = 0i32;
    for _ in 0..decision.to_create {
        create_pod(&ctx, &job).await?;
        created += 1;
    }
    if decision.delete_active {
        delete_pods(&ctx, &job, &pods_api, &counts.active).await?;
    }
    if has_condition_in(&decision.conditions, "Complete")
        || has_condition_in(&decision.conditions, "Failed")
    {
        clock.forget(&uid);
    }
    let requeue = decision.requeue;
    write_status(&ctx, &job, &status, decision.status(&counts, created)).await?;
    match requeue {
        Some(after) => Ok(Action::requeue(after)),
        None => Ok(runtime::done(job.as_ref(), &ctx)),
    }
}

/// The job's selector as list-option text. A selector kube cannot convert selects nothing:
/// listing without the requirement we cannot express would adopt and count pods that are not
/// the job's.
fn pod_selector(job: &Job, spec: &JobSpec) -> Option<String> {
    match selector_string(spec.selector.as_ref()?) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                job = %job.metadata.name.as_deref().unwrap_or_default(),
                namespace = %job.metadata.namespace.as_deref().unwrap_or_default(),
                error = %e,
                "invalid selector; not syncing"
            );
            None
        }
    }
}

/// The job's pods, counted as its status reports them.
struct PodCounts<'a> {
    succeeded: i32,
    failed: i32,
    active: Vec<&'a Pod>,
    ready: i32,
    terminating: i32,
}

impl<'a> PodCounts<'a> {
    fn of(pods: &'a [Pod]) -> PodCounts<'a> {
        let active: Vec<&Pod> = pods
            .iter()
            .filter(|p| pod_state::is_pod_active(p))
            .collect();
        PodCounts {
            succeeded: pods
                .iter()
                .filter(|p| phase(p) == Some("Succeeded"))
                .count() as i32,
            failed: pods.iter().filter(|p| phase(p) == Some("Failed")).count() as i32,
            ready: active.iter().filter(|p| pod_state::is_pod_ready(p)).count() as i32,
            active,
            terminating: pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_some() && !is_terminal(p))
                .count() as i32,
        }
    }
}

/// What one sync of an unfinished job decides: its new conditions and times, and what to do
/// with its pods.
struct Decision {
    conditions: Vec<JobCondition>,
    start_time: Option<Time>,
    completion_time: Option<Time>,
    /// Delete every active pod (the job is done, failed or suspended).
    delete_active: bool,
    to_create: i32,
    requeue: Option<Duration>,
}

impl Decision {
    /// Nothing decided yet: the conditions and times as they are.
    fn from_status(status: &JobStatus) -> Decision {
        Decision {
            conditions: status.conditions.clone().unwrap_or_default(),
            start_time: status.start_time.clone(),
            completion_time: status.completion_time.clone(),
            delete_active: false,
            to_create: 0,
            requeue: None,
        }
    }

    /// Complete, fail (back-off limit, deadline), suspend, or run the pods the job needs.
    async fn decide(
        &mut self,
        job: &Job,
        spec: &JobSpec,
        ctx: &Context,
        clock: &FailureClock,
        counts: &PodCounts<'_>,
        now: &Time,
    ) {
        let suspended = spec.suspend == Some(true);
        if self.start_time.is_none() && !suspended {
            self.start_time = Some(now.clone());
        }
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline = spec.active_deadline_seconds.and_then(|secs| {
            let start = self.start_time.as_ref()?;
            Some(start.0.as_second().saturating_add(secs) - now.0.as_second())
        });
        let complete = match spec.completions {
            Some(c) => counts.succeeded >= c,
            None => counts.succeeded > 0 && counts.active.is_empty(),
        };
        if complete {
            self.complete(job, ctx, now).await;
        } else if counts.failed > backoff_limit {
            let msg = "Job has reached the specified backoff limit";
            self.fail(job, ctx, "BackoffLimitExceeded", msg, now).await;
        } else if deadline.is_some_and(|left| left <= 0) {
            let msg = "Job was active longer than specified deadline";
            self.fail(job, ctx, "DeadlineExceeded", msg, now).await;
        } else if suspended {
            self.suspend(job, ctx, now).await;
        } else {
            self.resume(job, ctx, now).await;
            self.run_pods(job, spec, clock, counts, deadline);
        }
    }

    async fn complete(&mut self, job: &Job, ctx: &Context, now: &Time) {
        let (reason, msg) = (
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        self.conditions
            .push(condition("SuccessCriteriaMet", reason, msg, now));
        self.conditions
            .push(condition("Complete", reason, msg, now));
        self.completion_time = Some(now.clone());
        self.delete_active = true;
        ctx.recorder.normal(job, "Completed", "Job completed").await;
    }

    async fn fail(&mut self, job: &Job, ctx: &Context, reason: &str, msg: &str, now: &Time) {
        self.conditions
            .push(condition("FailureTarget", reason, msg, now));
        self.conditions.push(condition("Failed", reason, msg, now));
        self.delete_active = true;
        ctx.recorder.warning(job, reason, msg).await;
    }

    async fn suspend(&mut self, job: &Job, ctx: &Context, now: &Time) {
        self.delete_active = true;
        if !has_condition(job, "Suspended") {
            self.conditions.retain(|c| c.type_ != "Suspended");
            self.conditions
                .push(condition("Suspended", "JobSuspended", "Job suspended", now));
            ctx.recorder.normal(job, "Suspended", "Job suspended").await;
        }
    }

    /// A job that was suspended is no longer.
    async fn resume(&mut self, job: &Job, ctx: &Context, now: &Time) {
        if has_condition(job, "Suspended") {
            self.conditions.retain(|c| c.type_ != "Suspended");
            self.conditions.push(JobCondition {
                status: "False".to_string(),
                ..condition("Suspended", "JobResumed", "Job resumed", now)
            });
            ctx.recorder.normal(job, "Resumed", "Job resumed").await;
        }
    }

    /// Up to `parallelism` pods, unless the failure back-off holds new ones off; and come back
    /// when the active deadline passes.
    fn run_pods(
        &mut self,
        job: &Job,
        spec: &JobSpec,
        clock: &FailureClock,
        counts: &PodCounts<'_>,
        deadline: Option<i64>,
    ) {
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let want = match spec.completions {
            Some(c) => parallelism.min(c - counts.succeeded),
            // Work queue: once one pod succeeded, no new ones.
            None if counts.succeeded > 0 => 0,
            None => parallelism,
        }
        .max(0);
        let live = counts.active.len() as i32;
        if live < want {
            let uid = job.metadata.uid.as_deref().unwrap_or_default();
            match clock.wait(uid, counts.failed) {
                Some(wait) => self.requeue = Some(wait),
                None => self.to_create = want - live,
            }
        }
        if let Some(left) = deadline {
            let left = Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1);
            self.requeue = Some(self.requeue.map_or(left, |r| r.min(left)));
        }
    }

    /// The status to write, after `created` new pods.
    fn status(self, counts: &PodCounts<'_>, created: i32) -> Value {
        let active_count = if self.delete_active {
            0
        } else {
            counts.active.len() as i32 + created
        };
        json!({
            "active": active_count,
            "ready": if self.delete_active { 0 } else { counts.ready },
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "terminating": counts.terminating,
            "startTime": self.start_time,
            "completionTime": self.completion_time,
            "conditions": self.conditions,
        })
    }
}

async fn delete_pods(ctx: &Context, job: &Job, pods_api: &Api<Pod>, pods: &[&Pod]) -> Result<()> {
    for pod in pods {
        owners::delete_pod(ctx, job, pods_api, pod, &DeleteParams::background()).await?;
    }
    Ok(())
}

/// Patch the status when it differs from `status` (absent, 0 and [] count as the same).
async fn write_status(
    ctx: &Context,
    job: &Job,
    status: &JobStatus,
    new_status: Value,
) -> Result<()> {
    let have = serde_json::to_value(status).unwrap_or_default();
    let changed = new_status.as_object().into_iter().flatten().any(|(k, v)| {
        let old = have.get(k).cloned().unwrap_or(Value::Null);
        let zeroish = |x: &Value| x.is_null() || *x == json!(0) || *x == json!([]);
        !(old == *v || zeroish(&old) && zeroish(v))
    });
    if !changed {
        return Ok(());
    }
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    runtime::merge_status(&api, name, &json!({ "status": new_status })).await?;
    Ok(())
}

fn has_condition_in(conditions: &[JobCondition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

async fn create_pod(ctx: &Context, job: &Job) -> Result<()> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let Some(template) = job.spec.as_ref().map(|s| s.template.clone()) else {
        return Ok(());
    };
    let meta = template.metadata.unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns.clone()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owners::controller_ref(job)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match api.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            let pod_name = created.metadata.name.unwrap_or_default();
            ctx.recorder
                .normal(job, "SuccessfulCreate", format!("Created pod: {pod_name}"))
                .await;
            Ok(())
        }
        Err(e) => {
            ctx.recorder
                .warning(job, "FailedCreate", format!("Error creating: {e}"))
                .await;
            Err(e.into())
        }
    }
}
