//! The Job controller: parallel pods up to the completion count, failures against the
//! backoff limit, conditions and events.

mod common;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn create_job(c: &common::TestCluster, name: &str, spec: serde_json::Value) {
    let api: Api<Job> = c.api("default");
    let mut spec = spec;
    spec["template"] = json!({"spec": {"restartPolicy": "Never",
        "containers": [{"name": "work", "image": "busybox"}]}});
    let job = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &job).await.unwrap();
}

/// The job's pods that are neither finished nor being deleted.
async fn active_pods(c: &common::TestCluster, job: &str) -> Vec<Pod> {
    c.pods("default", &format!("batch.kubernetes.io/job-name={job}"))
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect()
}

async fn finish(client: &Client, pod: &Pod, phase: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.patch_status(
        pod.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

fn condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

async fn event_reasons(c: &common::TestCluster, job: &str) -> Vec<String> {
    let events: Api<Event> = c.api("default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(job))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn job_runs_to_completion_in_parallel() {
    let c = common::TestCluster::start("job").await;
    create_job(&c, "calc", json!({"completions": 3, "parallelism": 2})).await;
    let jobs: Api<Job> = c.api("default");

    let first = c
        .wait_for("two active pods", WAIT, || async {
            let pods = active_pods(&c, "calc").await;
            (pods.len() == 2).then_some(pods)
        })
        .await;
    let pod = &first[0];
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Job", "calc"));
    assert_eq!(
        pod.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Never")
    );
    c.wait_for("status active=2", WAIT, || async {
        let s = jobs.get("calc").await.unwrap().status?;
        (s.active == Some(2) && s.start_time.is_some()).then_some(())
    })
    .await;

    for p in &first {
        finish(&c.client, p, "Succeeded").await;
    }
    // Only one more is needed.
    let last = c
        .wait_for("the third pod", WAIT, || async {
            let pods = active_pods(&c, "calc").await;
            (pods.len() == 1).then_some(pods)
        })
        .await;
    c.wait_for("succeeded=2", WAIT, || async {
        let s = jobs.get("calc").await.unwrap().status?;
        (s.succeeded == Some(2) && s.active == Some(1)).then_some(())
    })
    .await;
    // Never more than parallelism, never more than the completions left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(active_pods(&c, "calc").await.len(), 1);

    finish(&c.client, &last[0], "Succeeded").await;
    let job = c
        .wait_for("job complete", WAIT, || async {
            let job = jobs.get("calc").await.unwrap();
            condition(&job, "Complete").is_some().then_some(job)
        })
        .await;
    let s = job.status.as_ref().unwrap();
    assert_eq!(s.succeeded, Some(3));
    assert_eq!(s.active.unwrap_or(0), 0);
    assert!(s.completion_time.is_some());
    assert_eq!(
        c.pods("default", "batch.kubernetes.io/job-name=calc")
            .await
            .len(),
        3,
        "finished pods are kept"
    );
    // Settled: the status is not rewritten.
    let rv = jobs.get("calc").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        jobs.get("calc").await.unwrap().metadata.resource_version,
        rv
    );
    c.wait_for("events", WAIT, || async {
        let reasons = event_reasons(&c, "calc").await;
        (reasons.iter().any(|r| r == "SuccessfulCreate")
            && reasons.iter().any(|r| r == "Completed"))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn job_fails_past_backoff_limit() {
    let c = common::TestCluster::start("job").await;
    create_job(
        &c,
        "flaky",
        json!({"completions": 3, "parallelism": 3, "backoffLimit": 1}),
    )
    .await;
    let jobs: Api<Job> = c.api("default");
    let pods = c
        .wait_for("three active pods", WAIT, || async {
            let pods = active_pods(&c, "flaky").await;
            (pods.len() == 3).then_some(pods)
        })
        .await;
    // One failure is within the limit: the job goes on.
    finish(&c.client, &pods[0], "Failed").await;
    c.wait_for("failed=1", WAIT, || async {
        let s = jobs.get("flaky").await.unwrap().status?;
        (s.failed == Some(1)).then_some(())
    })
    .await;
    assert!(condition(&jobs.get("flaky").await.unwrap(), "Failed").is_none());
    // The second exceeds it.
    finish(&c.client, &pods[1], "Failed").await;
    let job = c
        .wait_for("job failed", WAIT, || async {
            let job = jobs.get("flaky").await.unwrap();
            condition(&job, "Failed").is_some().then_some(job)
        })
        .await;
    assert_eq!(
        condition(&job, "Failed").unwrap().reason.as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert!(job.status.as_ref().unwrap().completion_time.is_none());
    // The remaining active pod is deleted, and none replace it.
    c.wait_for("active pods deleted", WAIT, || async {
        active_pods(&c, "flaky").await.is_empty().then_some(())
    })
    .await;
    c.wait_for("status failed=2 active=0", WAIT, || async {
        let s = jobs.get("flaky").await.unwrap().status?;
        (s.failed == Some(2) && s.active.unwrap_or(0) == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(active_pods(&c, "flaky").await.is_empty());
    c.wait_for("BackoffLimitExceeded event", WAIT, || async {
        event_reasons(&c, "flaky")
            .await
            .iter()
            .any(|r| r == "BackoffLimitExceeded")
            .then_some(())
    })
    .await;
}
