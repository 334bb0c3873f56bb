//! The namespace controller empties a Terminating namespace and then finalizes it.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn create<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

fn pod(name: &str, node: Option<&str>) -> serde_json::Value {
    let mut p = json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents_then_the_namespace() {
    let c = common::TestCluster::start("namespace,garbagecollector").await;
    let _node = c.add_node("n1", "4", "8Gi", 110).await;
    let nss: Api<Namespace> = c.cluster_api();
    create(&nss, json!({"metadata": {"name": "doomed"}})).await;

    let pods: Api<Pod> = c.api("doomed");
    let cms: Api<ConfigMap> = c.api("doomed");
    let deploys: Api<Deployment> = c.api("doomed");
    // One pod nobody runs, one a kubelet runs (its deletion is graceful), and one held back
    // by a finalizer until the test lets it go.
    create(&pods, pod("loose", None)).await;
    create(&pods, pod("running", Some("n1"))).await;
    let mut held = pod("held", None);
    held["metadata"]["finalizers"] = json!(["test.skiff.io/hold"]);
    create(&pods, held).await;
    for i in 0..3 {
        create(
            &cms,
            json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
        )
        .await;
    }
    create(
        &deploys,
        json!({"metadata": {"name": "web"}, "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
    )
    .await;
    c.wait_for("the kubelet runs its pod", WAIT, || async {
        let p = pods.get("running").await.unwrap();
        (p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(())
    })
    .await;

    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();

    // Everything but the held pod goes; the namespace reports what remains and stays.
    c.wait_for(
        "the namespace emptied but for the held pod",
        WAIT,
        || async {
            let left_pods = pods.list(&ListParams::default()).await.unwrap().items;
            let left_cms = cms.list(&ListParams::default()).await.unwrap().items;
            let left_deploys = deploys.list(&ListParams::default()).await.unwrap().items;
            let names: Vec<_> = left_pods
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            (names == ["held"] && left_cms.is_empty() && left_deploys.is_empty()).then_some(())
        },
    )
    .await;
    let ns = c
        .wait_for(
            "the namespace to report remaining content",
            WAIT,
            || async {
                let ns = nss.get("doomed").await.unwrap();
                let remaining = ns
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "NamespaceContentRemaining"))
                    .is_some_and(|c| c.status == "True");
                remaining.then_some(ns)
            },
        )
        .await;
    assert_eq!(
        ns.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Terminating")
    );
    let finalizers_cond = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "NamespaceFinalizersRemaining")
        })
        .cloned()
        .unwrap();
    assert_eq!(finalizers_cond.status, "True");
    assert!(
        finalizers_cond
            .message
            .unwrap_or_default()
            .contains("test.skiff.io/hold")
    );
    // Nothing new gets in.
    let err = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 403));

    // Let the last pod go: the namespace is finalized and removed.
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    c.wait_for("the namespace to disappear", WAIT, || async {
        nss.get_opt("doomed").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The name can be used again, and the new namespace is not touched.
    create(&nss, json!({"metadata": {"name": "doomed"}})).await;
    create(&cms, json!({"metadata": {"name": "fresh"}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cms.get_opt("fresh").await.unwrap().is_some());
    let ns = nss.get("doomed").await.unwrap();
    assert!(ns.metadata.deletion_timestamp.is_none());
}
