//! The Deployment controller: ReplicaSets per template with revisions, rolling and recreate
//! rollouts, rollback, scaling, pausing, status.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const REVISION: &str = "deployment.kubernetes.io/revision";

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }))
    .unwrap()
}

fn rolling(surge: i32, unavailable: i32) -> serde_json::Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn replica_sets(c: &common::TestCluster, app: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = c.api("default");
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn rev(rs: &ReplicaSet) -> Option<&str> {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .map(String::as_str)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().unwrap().replicas.unwrap()
}

/// `kubectl rollout status` would say the rollout is complete.
async fn rolled_out(deploys: &Api<Deployment>, name: &str) -> Option<Deployment> {
    let d = deploys.get(name).await.unwrap();
    let want = d.spec.as_ref()?.replicas?;
    let st = d.status.as_ref()?;
    let progressing = st
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing")?;
    let available = st
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Available")?;
    (d.metadata.generation <= st.observed_generation
        && st.updated_replicas == Some(want)
        && st.replicas == Some(want)
        && st.available_replicas == Some(want)
        && st.unavailable_replicas.unwrap_or(0) == 0
        && progressing.reason.as_deref() == Some("NewReplicaSetAvailable")
        && available.status == "True")
        .then_some(d.clone())
}

async fn set_image(deploys: &Api<Deployment>, name: &str, image: &str) {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
    deploys
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn creates_a_replica_set_and_scales() {
    let c = common::TestCluster::start("replicaset,deployment").await;
    let _node = c.add_node("n1", "8", "16Gi", 200).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let deploys: Api<Deployment> = c.api("default");
    deploys
        .create(
            &PostParams::default(),
            &deployment("web", 3, "nginx:1", rolling(1, 1)),
        )
        .await
        .unwrap();
    let d = c
        .wait_for("rollout complete", WAIT, || rolled_out(&deploys, "web"))
        .await;
    let rss = replica_sets(&c, "web").await;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(rev(rs), Some("1"));
    assert_eq!(
        rs.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["pod-template-hash"],
        hash
    );
    let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.uid, d.metadata.uid.clone().unwrap());
    let pods = c.pods("default", "app=web").await;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| {
        p.metadata.labels.as_ref().unwrap()["pod-template-hash"] == hash
            && p.metadata
                .name
                .as_ref()
                .unwrap()
                .starts_with(&format!("web-{hash}-"))
    }));
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get(REVISION)
            .map(String::as_str),
        Some("1")
    );
    let events: Api<Event> = c.api("default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    let msg = format!("Scaled up replica set web-{hash} from 0 to 3");
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("ScalingReplicaSet")
                && e.message.as_deref() == Some(msg.as_str())),
        "no event {msg:?}"
    );

    // kubectl scale: through the scale subresource.
    for want in [6, 2] {
        deploys
            .patch_scale(
                "web",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": want}})),
            )
            .await
            .unwrap();
        c.wait_for(&format!("scaled to {want}"), WAIT, || async {
            rolled_out(&deploys, "web").await?;
            let rss = replica_sets(&c, "web").await;
            let pods: Vec<Pod> = c
                .pods("default", "app=web")
                .await
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            (rss.len() == 1 && replicas(&rss[0]) == want && pods.len() == want as usize)
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn rolling_update_keeps_availability_and_rollback_reuses_the_old_replica_set() {
    let c = common::TestCluster::start("replicaset,deployment").await;
    let _node = c.add_node("n1", "8", "16Gi", 200).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let deploys: Api<Deployment> = c.api("default");
    let (replicas_wanted, max_unavailable) = (6, 1);
    deploys
        .create(
            &PostParams::default(),
            &deployment(
                "app",
                replicas_wanted,
                "nginx:1",
                rolling(2, max_unavailable),
            ),
        )
        .await
        .unwrap();
    c.wait_for("first rollout", WAIT, || rolled_out(&deploys, "app"))
        .await;
    let first = replica_sets(&c, "app").await.remove(0);
    let first_name = first.metadata.name.clone().unwrap();

    // Sample the ready pods while the rollout runs.
    let stop = Arc::new(AtomicBool::new(false));
    let min_seen = Arc::new(AtomicUsize::new(usize::MAX));
    let sampler = {
        let api: Api<Pod> = c.api("default");
        let (stop, min_seen) = (stop.clone(), min_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let pods = api
                    .list(&ListParams::default().labels("app=app"))
                    .await
                    .unwrap()
                    .items;
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                min_seen.fetch_min(ready, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    set_image(&deploys, "app", "nginx:2").await;
    c.wait_for("second rollout", WAIT, || async {
        rolled_out(&deploys, "app").await?;
        let pods = c.pods("default", "app=app").await;
        (pods.len() == replicas_wanted as usize && pods.iter().all(|p| image_of(p) == "nginx:2"))
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let min = min_seen.load(Ordering::SeqCst);
    assert!(
        min >= (replicas_wanted - max_unavailable) as usize,
        "ready pods dropped to {min} during the rollout"
    );

    let rss = replica_sets(&c, "app").await;
    assert_eq!(rss.len(), 2);
    let old = rss
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(first_name.as_str()))
        .unwrap();
    let new = rss
        .iter()
        .find(|r| r.metadata.name.as_deref() != Some(first_name.as_str()))
        .unwrap();
    assert_eq!((rev(old), replicas(old)), (Some("1"), 0));
    assert_eq!((rev(new), replicas(new)), (Some("2"), replicas_wanted));

    // `kubectl rollout undo`: the template goes back; the first ReplicaSet comes back as
    // revision 3.
    let template = first.spec.as_ref().unwrap().template.clone().unwrap();
    let mut template = serde_json::to_value(template).unwrap();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    deploys
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/spec/template", "value": template}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    c.wait_for("rollback", WAIT, || async {
        rolled_out(&deploys, "app").await?;
        let pods = c.pods("default", "app=app").await;
        (pods.len() == replicas_wanted as usize && pods.iter().all(|p| image_of(p) == "nginx:1"))
            .then_some(())
    })
    .await;
    let rss = replica_sets(&c, "app").await;
    assert_eq!(rss.len(), 2, "the old ReplicaSet is reused");
    let back = rss
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(first_name.as_str()))
        .unwrap();
    let other = rss
        .iter()
        .find(|r| r.metadata.name.as_deref() != Some(first_name.as_str()))
        .unwrap();
    assert_eq!((rev(back), replicas(back)), (Some("3"), replicas_wanted));
    assert_eq!((rev(other), replicas(other)), (Some("2"), 0));
    let d = deploys.get("app").await.unwrap();
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get(REVISION)
            .map(String::as_str),
        Some("3")
    );
}

#[tokio::test]
async fn recreate_removes_the_old_pods_before_starting_new_ones() {
    let c = common::TestCluster::start("replicaset,deployment").await;
    let _node = c.add_node("n1", "8", "16Gi", 200).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let deploys: Api<Deployment> = c.api("default");
    deploys
        .create(
            &PostParams::default(),
            &deployment("db", 3, "postgres:1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    c.wait_for("first rollout", WAIT, || rolled_out(&deploys, "db"))
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let mixed = Arc::new(AtomicBool::new(false));
    let sampler = {
        let api: Api<Pod> = c.api("default");
        let (stop, mixed) = (stop.clone(), mixed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let pods = api
                    .list(&ListParams::default().labels("app=db"))
                    .await
                    .unwrap()
                    .items;
                let images: BTreeMap<String, usize> =
                    pods.iter().fold(BTreeMap::new(), |mut m, p| {
                        *m.entry(image_of(p)).or_default() += 1;
                        m
                    });
                if images.len() > 1 {
                    mixed.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    set_image(&deploys, "db", "postgres:2").await;
    c.wait_for("second rollout", WAIT, || async {
        rolled_out(&deploys, "db").await?;
        let pods = c.pods("default", "app=db").await;
        (pods.len() == 3 && pods.iter().all(|p| image_of(p) == "postgres:2")).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    assert!(
        !mixed.load(Ordering::SeqCst),
        "old and new pods existed at once"
    );
    let rss = replica_sets(&c, "db").await;
    assert_eq!(rss.len(), 2);
    assert!(rss.iter().any(|r| rev(r) == Some("1") && replicas(r) == 0));
    assert!(rss.iter().any(|r| rev(r) == Some("2") && replicas(r) == 3));
}

#[tokio::test]
async fn a_paused_deployment_does_not_roll_but_scales() {
    let c = common::TestCluster::start("replicaset,deployment").await;
    let _node = c.add_node("n1", "8", "16Gi", 200).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let deploys: Api<Deployment> = c.api("default");
    deploys
        .create(
            &PostParams::default(),
            &deployment("web", 2, "nginx:1", rolling(1, 0)),
        )
        .await
        .unwrap();
    c.wait_for("first rollout", WAIT, || rolled_out(&deploys, "web"))
        .await;
    let pause = |paused: bool| json!({"spec": {"paused": paused}});
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&pause(true)))
        .await
        .unwrap();
    set_image(&deploys, "web", "nginx:2").await;
    // Scaling still happens.
    deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    c.wait_for("scaled while paused", WAIT, || async {
        let d = deploys.get("web").await.unwrap();
        let st = d.status?;
        let paused_cond = st.conditions.iter().flatten().any(|cond| {
            cond.type_ == "Progressing" && cond.reason.as_deref() == Some("DeploymentPaused")
        });
        let pods = c.pods("default", "app=web").await;
        (st.observed_generation == d.metadata.generation
            && paused_cond
            && pods.len() == 4
            && st.available_replicas == Some(4))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = replica_sets(&c, "web").await;
    assert_eq!(rss.len(), 1, "no new ReplicaSet while paused");
    assert!(
        c.pods("default", "app=web")
            .await
            .iter()
            .all(|p| image_of(p) == "nginx:1")
    );

    // Resumed, it rolls.
    deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&pause(false)))
        .await
        .unwrap();
    c.wait_for("rollout after resume", WAIT, || async {
        rolled_out(&deploys, "web").await?;
        let pods = c.pods("default", "app=web").await;
        (pods.len() == 4 && pods.iter().all(|p| image_of(p) == "nginx:2")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn revision_history_limit_prunes_old_replica_sets() {
    let c = common::TestCluster::start("replicaset,deployment").await;
    let _node = c.add_node("n1", "8", "16Gi", 200).await;
    let _binder = common::bind_all(c.client.clone(), "n1");
    let deploys: Api<Deployment> = c.api("default");
    let mut d = deployment("hist", 1, "img:0", rolling(1, 1));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    deploys.create(&PostParams::default(), &d).await.unwrap();
    for i in 1..=3 {
        c.wait_for(&format!("revision {i}"), WAIT, || async {
            let rss = replica_sets(&c, "hist").await;
            rss.iter()
                .any(|r| rev(r) == Some(i.to_string().as_str()))
                .then_some(())
        })
        .await;
        // Old ReplicaSets are pruned once a rollout completes.
        c.wait_for("rollout", WAIT, || rolled_out(&deploys, "hist"))
            .await;
        set_image(&deploys, "hist", &format!("img:{i}")).await;
        c.wait_for(&format!("revision {}", i + 1), WAIT, || async {
            let rss = replica_sets(&c, "hist").await;
            rss.iter()
                .any(|r| rev(r) == Some((i + 1).to_string().as_str()) && replicas(r) == 1)
                .then_some(())
        })
        .await;
    }
    c.wait_for("history pruned to 1 old", WAIT, || async {
        let rss = replica_sets(&c, "hist").await;
        (rss.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_thousand_replicas_come_up_fast() {
    let c = common::TestCluster::start("replicaset,deployment").await;
    let _node = c.add_node("big", "1000", "1000Gi", 1100).await;
    let _binder = common::bind_all(c.client.clone(), "big");
    let deploys: Api<Deployment> = c.api("default");
    let start = Instant::now();
    deploys
        .create(
            &PostParams::default(),
            &deployment("many", 1000, "pause:1", rolling(1, 1)),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = c.api("default");
    c.wait_for("1000 pods", Duration::from_secs(120), || async {
        let n = pods
            .list(&ListParams::default().labels("app=many"))
            .await
            .unwrap()
            .items
            .len();
        (n == 1000).then_some(())
    })
    .await;
    let created_after = start.elapsed();
    c.wait_for("1000 bound pods", Duration::from_secs(120), || async {
        let bound = pods
            .list(&ListParams::default().labels("app=many"))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .count();
        (bound == 1000).then_some(())
    })
    .await;
    let bound_after = start.elapsed();
    c.wait_for("rollout complete", Duration::from_secs(120), || {
        rolled_out(&deploys, "many")
    })
    .await;
    eprintln!(
        "1000 replicas: created after {created_after:?}, bound after {bound_after:?}, rolled out after {:?}",
        start.elapsed()
    );
    assert_eq!(c.pods("default", "app=many").await.len(), 1000);
}
