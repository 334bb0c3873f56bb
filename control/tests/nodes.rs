//! Node IPAM hands out pod CIDRs; node lifecycle notices dead kubelets, taints their nodes
//! and evicts their pods.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn pod_cidr(c: &common::TestCluster, name: &str) -> String {
    let nodes: Api<Node> = c.cluster_api();
    c.wait_for(&format!("a pod CIDR for {name}"), WAIT, || async {
        let n = nodes.get(name).await.unwrap();
        let spec = n.spec?;
        let cidr = spec.pod_cidr?;
        assert_eq!(spec.pod_cidrs, Some(vec![cidr.clone()]));
        Some(cidr)
    })
    .await
}

#[tokio::test]
async fn nodes_get_distinct_pod_cidrs_and_freed_ones_are_reused() {
    let c = common::TestCluster::start("nodeipam").await;
    let _n1 = c.add_node("n1", "4", "8Gi", 110).await;
    let n2 = c.add_node("n2", "4", "8Gi", 110).await;
    let _n3 = c.add_node("n3", "4", "8Gi", 110).await;
    let mut cidrs = vec![
        pod_cidr(&c, "n1").await,
        pod_cidr(&c, "n2").await,
        pod_cidr(&c, "n3").await,
    ];
    let n2_cidr = cidrs[1].clone();
    cidrs.sort();
    assert_eq!(cidrs, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]);

    // A deleted node's range goes to the next node.
    drop(n2);
    let nodes: Api<Node> = c.cluster_api();
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    c.wait_for("n2 to be gone", WAIT, || async {
        nodes.get_opt("n2").await.unwrap().is_none().then_some(())
    })
    .await;
    let _n4 = c.add_node("n4", "4", "8Gi", 110).await;
    assert_eq!(pod_cidr(&c, "n4").await, n2_cidr);
    let _n5 = c.add_node("n5", "4", "8Gi", 110).await;
    assert_eq!(pod_cidr(&c, "n5").await, "10.244.3.0/24");
}

#[tokio::test]
async fn a_full_range_leaves_nodes_without_a_cidr() {
    let mut config = common::test_config("nodeipam");
    config.cluster_cidr =
        skiff_control::apiserver::admission::Ipv4Cidr::parse("10.9.0.0/23").unwrap();
    let c = common::TestCluster::start_with(config).await;
    let _a = c.add_node("a", "4", "8Gi", 110).await;
    let _b = c.add_node("b", "4", "8Gi", 110).await;
    let mut cidrs = vec![pod_cidr(&c, "a").await, pod_cidr(&c, "b").await];
    cidrs.sort();
    assert_eq!(cidrs, ["10.9.0.0/24", "10.9.1.0/24"]);
    let _full = c.add_node("c", "4", "8Gi", 110).await;
    let events: Api<k8s_openapi::api::core::v1::Event> = c.api("default");
    c.wait_for("a CIDRAssignmentFailed event", WAIT, || async {
        let evs = events.list(&Default::default()).await.unwrap().items;
        evs.into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("CIDRAssignmentFailed")
                    && e.involved_object.name.as_deref() == Some("c")
            })
            .map(|_| ())
    })
    .await;
    let nodes: Api<Node> = c.cluster_api();
    let n = nodes.get("c").await.unwrap();
    assert!(n.spec.and_then(|s| s.pod_cidr).is_none());
}

fn ready_of(node: &Node) -> Option<(String, Option<String>)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn bound_pod(c: &common::TestCluster, name: &str, node: &str, tolerate_forever: bool) {
    let pods: Api<Pod> = c.api("default");
    let mut pod = json!({"metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}});
    if tolerate_forever {
        pod["spec"]["tolerations"] = json!([{"key": "node.kubernetes.io/unreachable",
            "operator": "Exists", "effect": "NoExecute"}]);
    }
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_node_whose_kubelet_dies_goes_unknown_is_tainted_and_loses_its_pods() {
    let c = common::TestCluster::start("nodelifecycle").await;
    let _alive = c.add_node("alive", "4", "8Gi", 110).await;
    let dying = c.add_node("dying", "4", "8Gi", 110).await;
    bound_pod(&c, "on-alive", "alive", false).await;
    bound_pod(&c, "on-dying", "dying", false).await;
    bound_pod(&c, "on-dying-2", "dying", false).await;
    bound_pod(&c, "stays", "dying", true).await;
    let pods: Api<Pod> = c.api("default");
    c.wait_for("the pods to run", WAIT, || async {
        let all = pods.list(&Default::default()).await.unwrap().items;
        (all.len() == 4
            && all
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        .then_some(())
    })
    .await;

    // Healthy nodes are left alone past the grace period.
    let nodes: Api<Node> = c.cluster_api();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for name in ["alive", "dying"] {
        let n = nodes.get(name).await.unwrap();
        assert_eq!(ready_of(&n).unwrap().0, "True", "{name}");
        assert!(n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty());
    }

    dying.stop_heartbeats();
    let node = c
        .wait_for("dying to go Ready=Unknown and be tainted", WAIT, || async {
            let n = nodes.get("dying").await.unwrap();
            let unknown = ready_of(&n)
                == Some(("Unknown".to_string(), Some("NodeStatusUnknown".to_string())));
            let tainted = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| {
                    ts.iter().any(|t| {
                        t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                    })
                });
            (unknown && tainted).then_some(n)
        })
        .await;
    let taints = node.spec.unwrap().taints.unwrap();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule")
    );

    c.wait_for("the dead node's pods to be evicted", WAIT, || async {
        let left: Vec<String> = pods
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        (left == ["on-alive", "stays"]).then_some(())
    })
    .await;
    // The pod that tolerates the taint for good stays, marked not ready.
    let stays = pods.get("stays").await.unwrap();
    assert!(stays.metadata.deletion_timestamp.is_none());
    let ready = stays
        .status
        .and_then(|s| s.conditions)
        .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
        .unwrap();
    assert_eq!(ready.status, "False");
    // The live node is untouched.
    let alive = nodes.get("alive").await.unwrap();
    assert_eq!(ready_of(&alive).unwrap().0, "True");
    assert!(
        alive
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty()
    );
    let on_alive = pods.get("on-alive").await.unwrap();
    assert!(on_alive.metadata.deletion_timestamp.is_none());
}
