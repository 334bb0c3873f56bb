//! The garbage collector: background, foreground and orphan cascading deletion.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn replica_set(c: &common::TestCluster, ns: &str, name: &str) -> ReplicaSet {
    let api: Api<ReplicaSet> = c.api(ns);
    let rs = json!({"metadata": {"name": name}, "spec": {
        "replicas": 0, "selector": {"matchLabels": {"rs": name}},
        "template": {"metadata": {"labels": {"rs": name}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
    api.create(&PostParams::default(), &serde_json::from_value(rs).unwrap())
        .await
        .unwrap()
}

fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K, block: bool) -> serde_json::Value {
    json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "name": owner.name_any(), "uid": owner.uid().unwrap(),
        "controller": true, "blockOwnerDeletion": block})
}

async fn owned_pod(c: &common::TestCluster, ns: &str, name: &str, owners: Vec<serde_json::Value>) {
    owned_pod_with(c, ns, name, owners, json!([])).await
}

async fn owned_pod_with(
    c: &common::TestCluster,
    ns: &str,
    name: &str,
    owners: Vec<serde_json::Value>,
    finalizers: serde_json::Value,
) {
    let api: Api<Pod> = c.api(ns);
    let pod = json!({"metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
}

fn delete_with(policy: PropagationPolicy) -> DeleteParams {
    DeleteParams {
        propagation_policy: Some(policy),
        ..DeleteParams::default()
    }
}

#[tokio::test]
async fn background_deletion_removes_dependents_of_a_deleted_owner() {
    let c = common::TestCluster::start("garbagecollector").await;
    let rss: Api<ReplicaSet> = c.api("default");
    let pods: Api<Pod> = c.api("default");
    let a = replica_set(&c, "default", "a").await;
    let b = replica_set(&c, "default", "b").await;
    owned_pod(&c, "default", "a-1", vec![owner_ref(&a, true)]).await;
    owned_pod(&c, "default", "a-2", vec![owner_ref(&a, true)]).await;
    // Two owners: losing one of them only loses the reference.
    let mut second = owner_ref(&b, false);
    second["controller"] = json!(false);
    owned_pod(&c, "default", "shared", vec![owner_ref(&a, true), second]).await;
    owned_pod(&c, "default", "b-1", vec![owner_ref(&b, true)]).await;

    // Owners that exist are left alone (give the collector a few sweeps).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );

    rss.delete("a", &DeleteParams::default()).await.unwrap();
    c.wait_for("a's pods to be collected", WAIT, || async {
        let a1 = pods.get_opt("a-1").await.unwrap();
        let a2 = pods.get_opt("a-2").await.unwrap();
        let shared = pods.get_opt("shared").await.unwrap()?;
        let refs = shared.metadata.owner_references.clone().unwrap_or_default();
        (a1.is_none() && a2.is_none() && refs.len() == 1).then_some(())
    })
    .await;
    let shared = pods.get("shared").await.unwrap();
    assert_eq!(
        shared.metadata.owner_references.unwrap()[0].uid,
        b.uid().unwrap()
    );
    assert!(pods.get_opt("b-1").await.unwrap().is_some());

    // A dependent whose owner never existed goes too.
    owned_pod(
        &c,
        "default",
        "stray",
        vec![
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ghost",
            "uid": "00000000-0000-0000-0000-000000000000"}),
        ],
    )
    .await;
    c.wait_for("the stray pod to be collected", WAIT, || async {
        pods.get_opt("stray").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn background_deletion_covers_kinds_without_a_cache() {
    let c = common::TestCluster::start("garbagecollector").await;
    let cms: Api<ConfigMap> = c.api("default");
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let dep = json!({"metadata": {"name": "dep", "ownerReferences": [owner_ref(&owner, false)]}});
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(dep).unwrap(),
    )
    .await
    .unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    c.wait_for("the dependent config map to go", WAIT, || async {
        cms.get_opt("dep").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn foreground_deletion_keeps_the_owner_until_dependents_are_gone() {
    let c = common::TestCluster::start("garbagecollector").await;
    let rss: Api<ReplicaSet> = c.api("default");
    let pods: Api<Pod> = c.api("default");
    let rs = replica_set(&c, "default", "fg").await;
    owned_pod(&c, "default", "fg-1", vec![owner_ref(&rs, true)]).await;
    // This one cannot go until the test removes its finalizer.
    owned_pod_with(
        &c,
        "default",
        "fg-held",
        vec![owner_ref(&rs, true)],
        json!(["test.skiff.io/hold"]),
    )
    .await;

    rss.delete("fg", &delete_with(PropagationPolicy::Foreground))
        .await
        .unwrap();
    c.wait_for("dependents to be deleted", WAIT, || async {
        let gone = pods.get_opt("fg-1").await.unwrap().is_none();
        let held = pods.get("fg-held").await.unwrap();
        (gone && held.metadata.deletion_timestamp.is_some()).then_some(())
    })
    .await;
    // The owner waits for its blocking dependent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let owner = rss.get("fg").await.unwrap();
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(owner.finalizers().iter().any(|f| f == "foregroundDeletion"));

    pods.patch(
        "fg-held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    c.wait_for(
        "the owner to go once its dependents are gone",
        WAIT,
        || async {
            let held = pods.get_opt("fg-held").await.unwrap();
            let owner = rss.get_opt("fg").await.unwrap();
            (held.is_none() && owner.is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn orphan_deletion_keeps_dependents_without_the_reference() {
    let c = common::TestCluster::start("garbagecollector").await;
    let rss: Api<ReplicaSet> = c.api("default");
    let pods: Api<Pod> = c.api("default");
    let rs = replica_set(&c, "default", "orph").await;
    let other = replica_set(&c, "default", "other").await;
    owned_pod(&c, "default", "orph-1", vec![owner_ref(&rs, true)]).await;
    let mut second = owner_ref(&other, false);
    second["controller"] = json!(false);
    owned_pod(&c, "default", "orph-2", vec![owner_ref(&rs, true), second]).await;

    rss.delete("orph", &delete_with(PropagationPolicy::Orphan))
        .await
        .unwrap();
    c.wait_for("the owner to go", WAIT, || async {
        rss.get_opt("orph").await.unwrap().is_none().then_some(())
    })
    .await;
    // Give the collector time to do anything wrong.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p1 = pods.get("orph-1").await.unwrap();
    assert!(p1.metadata.deletion_timestamp.is_none());
    assert!(p1.metadata.owner_references.unwrap_or_default().is_empty());
    let p2 = pods.get("orph-2").await.unwrap();
    assert!(p2.metadata.deletion_timestamp.is_none());
    let refs = p2.metadata.owner_references.unwrap_or_default();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].uid, other.uid().unwrap());
}
