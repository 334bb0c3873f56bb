//! The ReplicaSet controller keeps `spec.replicas` pods, adopts and releases, reports status.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn replica_set(name: &str, replicas: i32, app: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app, "tier": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1"}]},
            },
        },
    }))
    .unwrap()
}

fn active(pods: Vec<Pod>) -> Vec<Pod> {
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn scale(rs: &Api<ReplicaSet>, name: &str, replicas: i32) {
    rs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn keeps_replicas_replaces_scales_and_reports() {
    let c = common::TestCluster::start("replicaset").await;
    let rss: Api<ReplicaSet> = c.api("default");
    let created = rss
        .create(&PostParams::default(), &replica_set("web", 3, "web"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let pods = c
        .wait_for("3 pods", WAIT, || async {
            let pods = active(c.pods("default", "app=web").await);
            (pods.len() == 3).then_some(pods)
        })
        .await;
    for p in &pods {
        assert!(p.metadata.name.as_ref().unwrap().starts_with("web-"));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ReplicaSet", uid.as_str(), Some(true))
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()["tier"], "web");
    }
    c.wait_for("status.replicas 3", WAIT, || async {
        let rs = rss.get("web").await.unwrap();
        let st = rs.status?;
        (st.replicas == 3
            && st.fully_labeled_replicas == Some(3)
            && st.observed_generation == rs.metadata.generation)
            .then_some(())
    })
    .await;

    // A deleted pod (unbound, so gone at once) is replaced.
    let victim = pods[0].metadata.name.clone().unwrap();
    let api: Api<Pod> = c.api("default");
    api.delete(&victim, &DeleteParams::default()).await.unwrap();
    c.wait_for("replacement pod", WAIT, || async {
        let pods = active(c.pods("default", "app=web").await);
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(victim.as_str())))
        .then_some(())
    })
    .await;

    // Scale up, then down.
    scale(&rss, "web", 5).await;
    c.wait_for("5 pods", WAIT, || async {
        (active(c.pods("default", "app=web").await).len() == 5).then_some(())
    })
    .await;
    scale(&rss, "web", 1).await;
    c.wait_for("1 pod and status", WAIT, || async {
        let n = c.pods("default", "app=web").await.len();
        let st = rss.get("web").await.unwrap().status?;
        (n == 1 && st.replicas == 1).then_some(())
    })
    .await;

    // Events as kube writes them.
    let events: Api<Event> = c.api("default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(evs.iter().any(|e| {
        e.reason.as_deref() == Some("SuccessfulCreate")
            && e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Created pod: web-"))
    }));
    assert!(evs.iter().any(|e| {
        e.reason.as_deref() == Some("SuccessfulDelete")
            && e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Deleted pod: web-"))
    }));
}

#[tokio::test]
async fn adopts_orphans_and_releases_pods_that_stop_matching() {
    let c = common::TestCluster::start("replicaset").await;
    let pods: Api<Pod> = c.api("default");
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "api"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rss: Api<ReplicaSet> = c.api("default");
    let rs = rss
        .create(&PostParams::default(), &replica_set("api", 2, "api"))
        .await
        .unwrap();
    let uid = rs.metadata.uid.unwrap();
    c.wait_for("orphan adopted, 2 pods", WAIT, || async {
        let all = active(c.pods("default", "app=api").await);
        let adopted = all.iter().any(|p| {
            p.metadata.name.as_deref() == Some("orphan")
                && p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid && r.controller == Some(true))
        });
        (adopted && all.len() == 2).then_some(())
    })
    .await;
    // Give the controller a moment to (wrongly) create more, then check it did not.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(active(c.pods("default", "app=api").await).len(), 2);

    // Relabelled out of the selector: released, and replaced.
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    c.wait_for("released and replaced", WAIT, || async {
        let p = pods.get("orphan").await.unwrap();
        let released = p.metadata.owner_references.unwrap_or_default().is_empty();
        let n = active(c.pods("default", "app=api").await).len();
        (released && n == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn status_counts_ready_pods_and_scale_down_keeps_the_ready_ones() {
    let c = common::TestCluster::start("replicaset").await;
    let node = c.add_node("n1", "8", "16Gi", 110).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let rss: Api<ReplicaSet> = c.api("default");
    rss.create(&PostParams::default(), &replica_set("web", 2, "web"))
        .await
        .unwrap();
    c.wait_for("2 ready, 2 available", WAIT, || async {
        let st = rss.get("web").await.unwrap().status?;
        (st.ready_replicas == Some(2) && st.available_replicas == Some(2)).then_some(())
    })
    .await;
    let ready: Vec<String> = c
        .pods("default", "app=web")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();

    // Two more that never become ready; scaling back down removes those.
    node.pods_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    scale(&rss, "web", 4).await;
    c.wait_for("4 running, 2 ready", WAIT, || async {
        let st = rss.get("web").await.unwrap().status?;
        let running = c
            .pods("default", "app=web")
            .await
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        (st.replicas == 4 && st.ready_replicas == Some(2) && running == 4).then_some(())
    })
    .await;
    scale(&rss, "web", 2).await;
    c.wait_for("the ready pods remain", WAIT, || async {
        let mut left: Vec<String> = c
            .pods("default", "app=web")
            .await
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        left.sort();
        let mut want = ready.clone();
        want.sort();
        (left == want).then_some(())
    })
    .await;

    // A pod turning unready shows in the status.
    common::set_pod_ready(&c.client, "default", &ready[0], false).await;
    c.wait_for("1 ready", WAIT, || async {
        let st = rss.get("web").await.unwrap().status?;
        (st.ready_replicas == Some(1) && st.available_replicas == Some(1)).then_some(())
    })
    .await;
}
