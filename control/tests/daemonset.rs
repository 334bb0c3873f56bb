//! The DaemonSet controller: one pod per eligible node, following nodes as they come and go,
//! honouring node selectors and taints, rolling template changes out.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn create_ds(c: &common::TestCluster, name: &str, node_selector: serde_json::Value) {
    let api: Api<DaemonSet> = c.api("default");
    let ds = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": node_selector,
                    "containers": [{"name": "c", "image": "agent:1"}]}}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &ds).await.unwrap();
}

/// Node → number of live (not terminating) pods of `app`.
async fn placement(c: &common::TestCluster, app: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in c.pods("default", &format!("app={app}")).await {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
        *out.entry(node).or_insert(0) += 1;
    }
    out
}

fn one_each(nodes: &[&str]) -> BTreeMap<String, usize> {
    nodes.iter().map(|n| (n.to_string(), 1)).collect()
}

#[tokio::test]
async fn daemon_pods_follow_nodes() {
    let c = common::TestCluster::start("daemonset").await;
    let _n1 = c.add_node("n1", "4", "8Gi", 110).await;
    let _n2 = c
        .add_node_with(
            "n2",
            "4",
            "8Gi",
            110,
            [("disk".into(), "ssd".into())].into(),
        )
        .await;
    create_ds(&c, "agent", json!({})).await;
    create_ds(&c, "ssd", json!({"disk": "ssd"})).await;

    c.wait_for("agent on n1 and n2", WAIT, || async {
        (placement(&c, "agent").await == one_each(&["n1", "n2"])).then_some(())
    })
    .await;
    c.wait_for("ssd only on n2", WAIT, || async {
        (placement(&c, "ssd").await == one_each(&["n2"])).then_some(())
    })
    .await;
    let pod = &c.pods("default", "app=agent").await[0];
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DaemonSet", "agent")
    );
    let tolerations: BTreeSet<String> = pod
        .spec
        .as_ref()
        .unwrap()
        .tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.clone())
        .collect();
    assert!(tolerations.contains("node.kubernetes.io/not-ready"));
    assert!(tolerations.contains("node.kubernetes.io/unreachable"));

    let dss: Api<DaemonSet> = c.api("default");
    c.wait_for("agent status", WAIT, || async {
        let s = dss.get("agent").await.unwrap().status?;
        (s.desired_number_scheduled == 2
            && s.current_number_scheduled == 2
            && s.number_ready == 2
            && s.number_available == Some(2)
            && s.updated_number_scheduled == Some(2)
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;

    // Settled: the status is not rewritten.
    let rv = dss.get("agent").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        dss.get("agent").await.unwrap().metadata.resource_version,
        rv
    );

    // A node joins: it gets a pod. A tainted one does not.
    let n3 = c.add_node("n3", "4", "8Gi", 110).await;
    let _n4 = c.add_node("n4", "4", "8Gi", 110).await;
    let nodes: Api<Node> = c.cluster_api();
    nodes
        .patch(
            "n4",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": [
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();
    c.wait_for("agent on n3", WAIT, || async {
        let p = placement(&c, "agent").await;
        (p.get("n3") == Some(&1) && p.len() >= 3).then_some(())
    })
    .await;
    // n4 was briefly untainted, so a pod may have landed there; it must be gone (or never
    // made) once the taint is seen.
    c.wait_for("agent on n1..n3 only", WAIT, || async {
        (placement(&c, "agent").await == one_each(&["n1", "n2", "n3"])).then_some(())
    })
    .await;

    // A node leaves: its pod is deleted.
    drop(n3);
    nodes.delete("n3", &DeleteParams::default()).await.unwrap();
    // No kubelet confirms it, so it goes at once (what the pod GC would do).
    c.wait_for("agent pod of n3 deleted", WAIT, || async {
        let all = c.pods("default", "app=agent").await;
        let on_n3 = all
            .iter()
            .any(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n3"));
        (!on_n3 && placement(&c, "agent").await == one_each(&["n1", "n2"])).then_some(())
    })
    .await;

    // A second pod on a node (made by hand, claiming the same owner) is removed.
    let extra: Pod = {
        let mut p = c.pods("default", "app=agent").await.remove(0);
        let node = p.spec.as_ref().unwrap().node_name.clone();
        p.metadata = kube::api::ObjectMeta {
            name: Some("agent-extra".into()),
            labels: p.metadata.labels.clone(),
            owner_references: p.metadata.owner_references.clone(),
            ..Default::default()
        };
        p.status = None;
        p.spec.as_mut().unwrap().node_name = node;
        p
    };
    let pods: Api<Pod> = c.api("default");
    pods.create(&PostParams::default(), &extra).await.unwrap();
    c.wait_for("extra pod removed", WAIT, || async {
        (placement(&c, "agent").await == one_each(&["n1", "n2"])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn template_changes_roll_out() {
    let c = common::TestCluster::start("daemonset").await;
    let _n1 = c.add_node("n1", "4", "8Gi", 110).await;
    let _n2 = c.add_node("n2", "4", "8Gi", 110).await;
    create_ds(&c, "agent", json!({})).await;
    let dss: Api<DaemonSet> = c.api("default");
    let hashes = || async {
        c.pods("default", "app=agent")
            .await
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                p.metadata
                    .labels
                    .as_ref()?
                    .get("controller-revision-hash")
                    .cloned()
            })
            .collect::<Vec<_>>()
    };
    let first = c
        .wait_for("two pods of one revision", WAIT, || async {
            let h = hashes().await;
            (h.len() == 2 && h[0] == h[1]).then(|| h[0].clone())
        })
        .await;
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    c.wait_for("both pods replaced", WAIT, || async {
        let h = hashes().await;
        (h.len() == 2 && h.iter().all(|x| *x != first)).then_some(())
    })
    .await;
    let images: BTreeSet<String> = c
        .pods("default", "app=agent")
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
        .collect();
    assert_eq!(images, BTreeSet::from(["agent:2".to_string()]));
    c.wait_for("status updated", WAIT, || async {
        let s = dss.get("agent").await.unwrap().status?;
        (s.updated_number_scheduled == Some(2)
            && s.number_ready == 2
            && s.observed_generation == Some(2))
        .then_some(())
    })
    .await;
}
