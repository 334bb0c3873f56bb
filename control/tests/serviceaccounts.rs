//! The ServiceAccount controller keeps a `default` account in every namespace.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};

#[tokio::test]
async fn every_namespace_gets_a_default_service_account() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("skiff_control=debug,kube_runtime=debug")
        .try_init();
    let c = common::TestCluster::start("serviceaccount").await;
    let nss: Api<Namespace> = c.cluster_api();
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "team"}})).unwrap(),
    )
    .await
    .unwrap();
    let sas: Api<ServiceAccount> = c.api("team");
    c.wait_for("default SA in team", Duration::from_secs(10), || async {
        sas.get_opt("default").await.unwrap()
    })
    .await;
    // Deleted, it comes back.
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_for("default SA recreated", Duration::from_secs(10), || async {
        sas.get_opt("default").await.unwrap()
    })
    .await;
    // The system namespaces have theirs too.
    let system: Api<ServiceAccount> = c.api("kube-system");
    c.wait_for(
        "default SA in kube-system",
        Duration::from_secs(10),
        || async { system.get_opt("default").await.unwrap() },
    )
    .await;
}

#[tokio::test]
async fn fake_nodes_keep_their_leases() {
    let c = common::TestCluster::start("").await;
    let _node = c.add_node("n1", "4", "8Gi", 110).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = c.api("kube-node-lease");
    c.wait_for("lease of n1", Duration::from_secs(10), || async {
        leases.get_opt("n1").await.unwrap()
    })
    .await;
}
