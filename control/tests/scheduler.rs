//! The scheduler places pods as kube-scheduler would: spread over equal nodes, respecting
//! node selectors, resources, taints, readiness and host ports, reporting why a pod fits
//! nowhere and placing it once a node that fits appears.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::TestCluster;

const WAIT: Duration = Duration::from_secs(30);

fn pod(name: &str, spec: Value) -> Pod {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "nginx"}]);
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": spec,
    }))
    .unwrap()
}

async fn create(c: &TestCluster, name: &str, spec: Value) {
    let pods: Api<Pod> = c.api("default");
    pods.create(&PostParams::default(), &pod(name, spec))
        .await
        .unwrap();
}

/// The node the pod is bound to, once it is.
async fn node_of(c: &TestCluster, name: &str) -> String {
    let pods: Api<Pod> = c.api("default");
    c.wait_for(&format!("{name} to be scheduled"), WAIT, || async {
        pods.get(name)
            .await
            .ok()?
            .spec?
            .node_name
            .filter(|n| !n.is_empty())
    })
    .await
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn spreads_over_equal_nodes() {
    let c = TestCluster::start("scheduler").await;
    let _n1 = c.add_node("n1", "4", "8Gi", 110).await;
    let _n2 = c.add_node("n2", "4", "8Gi", 110).await;
    let _n3 = c.add_node("n3", "4", "8Gi", 110).await;
    for i in 0..3 {
        create(&c, &format!("web-{i}"), json!({})).await;
    }
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(node_of(&c, &format!("web-{i}")).await);
    }
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    // Bound through the binding: PodScheduled=True, and a Scheduled event.
    let pods: Api<Pod> = c.api("default");
    let p = pods.get("web-0").await.unwrap();
    let cond = p
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(cond.status, "True");
    let events: Api<Event> = c.api("default");
    let ev = c
        .wait_for("Scheduled event", WAIT, || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Scheduled")
                        && e.involved_object.name.as_deref() == Some("web-0")
                })
        })
        .await;
    let node = p.spec.unwrap().node_name.unwrap();
    assert_eq!(
        ev.message.as_deref(),
        Some(format!("Successfully assigned default/web-0 to {node}").as_str())
    );
    assert_eq!(
        ev.source.and_then(|s| s.component).as_deref(),
        Some("default-scheduler")
    );
}

#[tokio::test]
async fn node_selector_and_affinity() {
    let c = TestCluster::start("scheduler").await;
    let _a = c
        .add_node_with(
            "a",
            "4",
            "8Gi",
            110,
            labels(&[("disk", "ssd"), ("gen", "3")]),
        )
        .await;
    let _b = c
        .add_node_with(
            "b",
            "4",
            "8Gi",
            110,
            labels(&[("disk", "hdd"), ("gen", "5")]),
        )
        .await;
    for i in 0..3 {
        create(
            &c,
            &format!("ssd-{i}"),
            json!({"nodeSelector": {"disk": "ssd"}}),
        )
        .await;
    }
    create(
        &c,
        "new-gen",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]}]}]}}}}),
    )
    .await;
    create(
        &c,
        "by-name",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}}),
    )
    .await;
    for i in 0..3 {
        assert_eq!(node_of(&c, &format!("ssd-{i}")).await, "a");
    }
    assert_eq!(node_of(&c, "new-gen").await, "b");
    assert_eq!(node_of(&c, "by-name").await, "a");
}

#[tokio::test]
async fn insufficient_cpu_is_reported_until_a_big_node_arrives() {
    let c = TestCluster::start("scheduler").await;
    let _n1 = c.add_node("small-1", "1", "2Gi", 110).await;
    let _n2 = c
        .add_node_with("small-2", "1", "2Gi", 110, labels(&[("zone", "b")]))
        .await;
    let _n3 = c
        .add_node_with("zone-b-big", "8", "16Gi", 110, labels(&[("zone", "b")]))
        .await;
    // Fill the big zone-b node so that only cpu is short there (created first: the
    // scheduler sees pod events in order).
    create(
        &c,
        "filler",
        json!({"nodeName": "zone-b-big", "containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "7"}}}]}),
    )
    .await;
    create(
        &c,
        "hungry",
        json!({
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}},
            "containers": [{"name": "c", "image": "busybox",
                "resources": {"requests": {"cpu": "2", "memory": "100Mi"}}}],
        }),
    )
    .await;
    let pods: Api<Pod> = c.api("default");
    let expected = "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu.";
    // The condition carries kube's FitError message.
    let cond = c
        .wait_for("PodScheduled=False", WAIT, || async {
            let p = pods.get("hungry").await.ok()?;
            let cond = p
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (cond.message.as_deref() == Some(expected)).then_some(cond)
        })
        .await;
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    let events: Api<Event> = c.api("default");
    c.wait_for("FailedScheduling event", WAIT, || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("hungry")
                    && e.message.as_deref() == Some(expected)
            })
    })
    .await;
    assert!(
        pods.get("hungry")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_none()
    );
    // A node that fits appears: the pod lands there (well before the 10 s back-off cap
    // would matter, since a new node retries unschedulable pods at once).
    let _big = c
        .add_node_with("big", "4", "8Gi", 110, labels(&[("zone", "b")]))
        .await;
    assert_eq!(node_of(&c, "hungry").await, "big");
}

#[tokio::test]
async fn taints_tolerations_readiness_and_ports() {
    let c = TestCluster::start("scheduler").await;
    let _tainted = c.add_node("tainted", "4", "8Gi", 110).await;
    let _down = c.add_node("down", "4", "8Gi", 110).await;
    let _plain = c.add_node("plain", "4", "8Gi", 110).await;
    let nodes: Api<Node> = c.cluster_api();
    nodes
        .patch(
            "tainted",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
            ),
        )
        .await
        .unwrap();
    nodes
        .patch_status(
            "down",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [common::ready_condition("False")]}})),
        )
        .await
        .unwrap();
    // Let the informer catch up with the taint and the readiness before any pod shows up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..4 {
        create(&c, &format!("plain-{i}"), json!({})).await;
    }
    create(
        &c,
        "db",
        json!({"nodeSelector": {"kubernetes.io/hostname": "tainted"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
    )
    .await;
    for i in 0..4 {
        assert_eq!(node_of(&c, &format!("plain-{i}")).await, "plain");
    }
    assert_eq!(node_of(&c, "db").await, "tainted");

    // Host ports: one pod per node per port; the third has to wait.
    let with_port = json!({"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 8080}]}],
               "tolerations": [{"key": "dedicated", "operator": "Exists"}]});
    create(&c, "port-0", with_port.clone()).await;
    create(&c, "port-1", with_port.clone()).await;
    let a = node_of(&c, "port-0").await;
    let b = node_of(&c, "port-1").await;
    assert_ne!(a, b);
    assert!(a != "down" && b != "down");
    create(&c, "port-2", with_port).await;
    let pods: Api<Pod> = c.api("default");
    c.wait_for("port-2 unschedulable", WAIT, || async {
        let p = pods.get("port-2").await.ok()?;
        p.status?.conditions?.into_iter().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.message.as_deref().is_some_and(|m| {
                    m.contains("2 node(s) didn't have free ports for the requested pod ports")
                        && m.contains(
                            "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }",
                        )
                })
        })
    })
    .await;
    // The node comes back: the pod goes there.
    nodes
        .patch_status(
            "down",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": [common::ready_condition("True")]}})),
        )
        .await
        .unwrap();
    assert_eq!(node_of(&c, "port-2").await, "down");
}

#[tokio::test]
async fn two_hundred_pods_on_ten_nodes() {
    let c = TestCluster::start("scheduler").await;
    let mut nodes = Vec::new();
    for i in 0..10 {
        nodes.push(c.add_node(&format!("node-{i}"), "8", "32Gi", 110).await);
    }
    let pods: Api<Pod> = c.api("default");
    let start = Instant::now();
    futures::stream::iter(0..200)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let spec = if i % 2 == 0 {
                    json!({})
                } else {
                    json!({"containers": [{"name": "c", "image": "nginx",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]})
                };
                pods.create(&PostParams::default(), &pod(&format!("p-{i}"), spec))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created = start.elapsed();
    let per_node = c
        .wait_for("200 pods bound", Duration::from_secs(60), || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let mut per_node: HashMap<String, usize> = HashMap::new();
            for p in &list.items {
                let node = p.spec.as_ref()?.node_name.clone()?;
                *per_node.entry(node).or_default() += 1;
            }
            (per_node.values().sum::<usize>() == 200).then_some(per_node)
        })
        .await;
    let bound = start.elapsed();
    eprintln!(
        "200 pods: created in {created:?}, all bound after {bound:?} ({:.0} pods/s)",
        200.0 / bound.as_secs_f64()
    );
    assert_eq!(per_node.len(), 10, "{per_node:?}");
    let max = per_node.values().max().unwrap();
    let min = per_node.values().min().unwrap();
    // The score is LeastAllocated on non-zero requests (100m/200Mi for a container without
    // requests, 100m/128Mi for the others) plus BalancedAllocation on the actual requests, to
    // which a pod without requests adds nothing: the two kinds of pod pull differently, and
    // counts of 18 to 22 are a balanced outcome (seen under load in CI). Without assumed
    // pods a burst lands on a few nodes, far outside this.
    assert!(max - min <= 5, "uneven spread: {per_node:?}");
}
