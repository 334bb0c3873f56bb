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

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
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
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let finished = has_condition(&job, "Complete") || has_condition(&job, "Failed");
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(job.as_ref(), &ctx));
    }
    let Some(spec) = job.spec.as_ref() else {
        return Ok(runtime::done(job.as_ref(), &ctx));
    };
    let Some(selector) = spec.selector.as_ref() else {
        return Ok(runtime::done(job.as_ref(), &ctx));
    };
    // A selector kube cannot convert selects nothing: listing without the requirement we
    // cannot express would adopt and count pods that are not the job's.
    let selector = match selector_string(selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                job = %name,
                namespace = %ns,
                error = %e,
                "invalid selector; not syncing"
            );
            return Ok(runtime::done(job.as_ref(), &ctx));
        }
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
    let succeeded = pods
        .iter()
        .filter(|p| phase(p) == Some("Succeeded"))
        .count() as i32;
    let failed = pods.iter().filter(|p| phase(p) == Some("Failed")).count() as i32;
    let active: Vec<&Pod> = pods
        .iter()
        .filter(|p| pod_state::is_pod_active(p))
        .collect();
    let ready = active.iter().filter(|p| pod_state::is_pod_ready(p)).count() as i32;
    let terminating = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !is_terminal(p))
        .count() as i32;

    let status = job.status.clone().unwrap_or_default();
    let suspended = spec.suspend == Some(true);
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let mut start_time = status.start_time.clone();
    let mut completion_time = status.completion_time.clone();
    let mut delete_active = false;
    let mut to_create = 0i32;
    let mut requeue: Option<Duration> = None;

    if !finished {
        if start_time.is_none() && !suspended {
            start_time = Some(now.clone());
        }
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline = spec.active_deadline_seconds.and_then(|secs| {
            let start = start_time.as_ref()?;
            Some(start.0.as_second().saturating_add(secs) - now.0.as_second())
        });
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if complete {
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &now,
            ));
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &now,
            ));
            completion_time = Some(now.clone());
            delete_active = true;
            ctx.recorder
                .normal(job.as_ref(), "Completed", "Job completed")
                .await;
        } else if failed > backoff_limit {
            let msg = "Job has reached the specified backoff limit";
            conditions.push(condition(
                "FailureTarget",
                "BackoffLimitExceeded",
                msg,
                &now,
            ));
            conditions.push(condition("Failed", "BackoffLimitExceeded", msg, &now));
            delete_active = true;
            ctx.recorder
                .warning(job.as_ref(), "BackoffLimitExceeded", msg)
                .await;
        } else if deadline.is_some_and(|left| left <= 0) {
            let msg = "Job was active longer than specified deadline";
            conditions.push(condition("FailureTarget", "DeadlineExceeded", msg, &now));
            conditions.push(condition("Failed", "DeadlineExceeded", msg, &now));
            delete_active = true;
            ctx.recorder
                .warning(job.as_ref(), "DeadlineExceeded", msg)
                .await;
        } else if suspended {
            delete_active = true;
            if !has_condition(&job, "Suspended") {
                conditions.retain(|c| c.type_ != "Suspended");
                conditions.push(condition(
                    "Suspended",
                    "JobSuspended",
                    "Job suspended",
                    &now,
                ));
                ctx.recorder
                    .normal(job.as_ref(), "Suspended", "Job suspended")
                    .await;
            }
        } else {
            if has_condition(&job, "Suspended") {
                conditions.retain(|c| c.type_ != "Suspended");
                conditions.push(JobCondition {
                    status: "False".to_string(),
                    ..condition("Suspended", "JobResumed", "Job resumed", &now)
                });
                ctx.recorder
                    .normal(job.as_ref(), "Resumed", "Job resumed")
                    .await;
            }
            let want = match spec.completions {
                Some(c) => parallelism.min(c - succeeded),
                // Work queue: once one pod succeeded, no new ones.
                None if succeeded > 0 => 0,
                None => parallelism,
            }
            .max(0);
            let live = active.len() as i32;
            if live < want {
                match clock.wait(&uid, failed) {
                    Some(wait) => requeue = Some(wait),
                    None => to_create = want - live,
                }
            }
            if let Some(left) = deadline {
                let left = Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1);
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
            }
        }
    }

    let mut created = 0i32;
    for _ in 0..to_create {
        create_pod(&ctx, &job).await?;
        created += 1;
    }
    if delete_active {
        for pod in &active {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match pods_api
                .delete(&pod_name, &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    ctx.recorder
                        .normal(
                            job.as_ref(),
                            "SuccessfulDelete",
                            format!("Deleted pod: {pod_name}"),
                        )
                        .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if has_condition_in(&conditions, "Complete") || has_condition_in(&conditions, "Failed") {
        clock.forget(&uid);
    }

    let active_count = if delete_active {
        0
    } else {
        active.len() as i32 + created
    };
    let new_status = json!({
        "active": active_count,
        "ready": if delete_active { 0 } else { ready },
        "succeeded": succeeded,
        "failed": failed,
        "terminating": terminating,
        "startTime": start_time,
        "completionTime": completion_time,
        "conditions": conditions,
    });
    let have = serde_json::to_value(&status).unwrap_or_default();
    let changed = new_status.as_object().into_iter().flatten().any(|(k, v)| {
        let old = have.get(k).cloned().unwrap_or(Value::Null);
        let zeroish = |x: &Value| x.is_null() || *x == json!(0) || *x == json!([]);
        !(old == *v || zeroish(&old) && zeroish(v))
    });
    if changed {
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": new_status })),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    match requeue {
        Some(after) => Ok(Action::requeue(after)),
        None => Ok(runtime::done(job.as_ref(), &ctx)),
    }
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
