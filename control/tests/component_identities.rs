//! The controllers and the scheduler call the API as themselves, not as `system:masters`: each
//! controller as its ServiceAccount in kube-system bound to `system:controller:<name>`, the
//! scheduler as `system:kube-scheduler`. Taking a component's binding away stops it; giving it
//! back lets it work again. An admin identity would not notice either.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::TestCluster;

fn replica_set(name: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap()
}

/// Set the subjects of a default ClusterRoleBinding, marked as the user's (autoupdate off) so
/// the API server leaves it be.
async fn set_subjects(c: &TestCluster, binding: &str, subjects: Value) {
    let api: Api<ClusterRoleBinding> = c.cluster_api();
    let patch = json!({"metadata": {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "false"}},
        "subjects": subjects});
    api.patch(binding, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn pods_of(c: &TestCluster, app: &str) -> usize {
    c.pods("default", &format!("app={app}")).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controllers_and_scheduler_hold_only_their_roles() {
    let c = TestCluster::start("replicaset,scheduler").await;
    let _node = c.add_node("n1", "4", "8Gi", 110).await;
    let accounts: Api<ServiceAccount> = c.api("kube-system");
    c.wait_for(
        "the replicaset-controller account",
        Duration::from_secs(10),
        || async { accounts.get_opt("replicaset-controller").await.unwrap() },
    )
    .await;
    let rs: Api<ReplicaSet> = c.api("default");
    rs.create(&PostParams::default(), &replica_set("before"))
        .await
        .unwrap();
    c.wait_for("a pod of before", Duration::from_secs(10), || async {
        (pods_of(&c, "before").await == 1).then_some(())
    })
    .await;

    // Without its binding the ReplicaSet controller may not create pods.
    let binding = "system:controller:replicaset-controller";
    let account = json!([{"kind": "ServiceAccount", "name": "replicaset-controller", "namespace": "kube-system"}]);
    set_subjects(&c, binding, json!([])).await;
    rs.create(&PostParams::default(), &replica_set("during"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pods_of(&c, "during").await, 0, "created without a role");
    set_subjects(&c, binding, account).await;
    c.wait_for("a pod of during", Duration::from_secs(30), || async {
        (pods_of(&c, "during").await == 1).then_some(())
    })
    .await;

    // Without its binding the scheduler may not bind.
    set_subjects(&c, "system:kube-scheduler", json!([])).await;
    let pods: Api<Pod> = c.api("default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "lonely"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unbound = pods.get("lonely").await.unwrap();
    assert_eq!(
        unbound.spec.unwrap().node_name,
        None,
        "bound without a role"
    );
    let scheduler = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-scheduler"}]);
    set_subjects(&c, "system:kube-scheduler", scheduler).await;
    c.wait_for("lonely to be bound", Duration::from_secs(30), || async {
        let p = pods.get("lonely").await.unwrap();
        p.spec.and_then(|s| s.node_name)
    })
    .await;
}
