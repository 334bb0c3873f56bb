//! The seeds' event chain, with every controller and the scheduler running: a Deployment
//! becomes a ReplicaSet, pods, bindings spread over the nodes, and the events that tell it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};

#[tokio::test]
async fn deployment_to_spread_pods_with_the_event_chain() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("skiff_control=debug")
        .try_init();
    let c = common::TestCluster::start("*").await;
    let _nodes = [
        c.add_node("node-a", "4", "8Gi", 110).await,
        c.add_node("node-b", "4", "8Gi", 110).await,
        c.add_node("node-c", "4", "8Gi", 110).await,
    ];
    let deploys: Api<Deployment> = c.api("default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubia"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "kubia"}},
            "template": {"metadata": {"labels": {"app": "kubia"}},
                "spec": {"containers": [{"name": "main", "image": "kubia:v1"}]}}}
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let nodes = c
        .wait_for(
            "3 pods bound to 3 different nodes",
            Duration::from_secs(30),
            || async {
                let pods = c.pods("default", "app=kubia").await;
                let nodes: BTreeSet<String> = pods
                    .iter()
                    .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                    .collect();
                (pods.len() == 3 && nodes.len() == 3).then_some(nodes)
            },
        )
        .await;
    assert_eq!(nodes.len(), 3);
    let events: Api<Event> = c.api("default");
    let reasons = c
        .wait_for("the event chain", Duration::from_secs(30), || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            let reasons: BTreeSet<String> =
                list.items.iter().filter_map(|e| e.reason.clone()).collect();
            ["ScalingReplicaSet", "SuccessfulCreate", "Scheduled"]
                .iter()
                .all(|r| reasons.contains(*r))
                .then_some(list.items)
        })
        .await;
    let by = |reason: &str| {
        reasons
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .unwrap()
    };
    assert_eq!(
        by("ScalingReplicaSet").involved_object.kind.as_deref(),
        Some("Deployment")
    );
    assert_eq!(
        by("SuccessfulCreate").involved_object.kind.as_deref(),
        Some("ReplicaSet")
    );
    let scheduled = by("Scheduled");
    assert_eq!(scheduled.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(
        scheduled
            .source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    // The endpoints of a service over those pods follow once the fake kubelets make them ready.
    let deploy = c
        .wait_for("deployment available", Duration::from_secs(30), || async {
            let d = deploys.get("kubia").await.unwrap();
            (d.status.as_ref()?.available_replicas == Some(3)).then_some(d)
        })
        .await;
    assert_eq!(deploy.status.unwrap().updated_replicas, Some(3));
}
