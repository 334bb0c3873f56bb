//! LoadBalancer IPAM (`--service-lb-pool`, the service-lb-controller): addresses from the
//! pools into `status.loadBalancer.ingress`, never one twice (also across a controller
//! restart), `loadBalancerIP` and `loadBalancerClass` honoured, addresses given back when a
//! Service stops being a LoadBalancer or goes away; and the apiserver's side: NodePorts per
//! `allocateLoadBalancerNodePorts`, LoadBalancer-only fields dropped on a type change.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use skiff_common::cidr::Ipv4Range;
use skiff_control::manager::{self, Enabled};

const WAIT: Duration = Duration::from_secs(30);

fn config(pools: &[&str]) -> skiff_control::manager::ControllerConfig {
    let mut config = common::test_config("service-lb-controller");
    config.lb_pools = pools.iter().map(|p| Ipv4Range::parse(p).unwrap()).collect();
    config
}

async fn create(client: &Client, name: &str, spec: Value) -> Service {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut spec = spec;
    spec["ports"] = json!([{"name": "http", "port": 80}]);
    let svc = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap()
}

async fn ingress(client: &Client, name: &str) -> Vec<String> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = api.get(name).await.unwrap();
    svc.status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip)
        .collect()
}

async fn wait_ingress(c: &common::TestCluster, name: &str) -> String {
    c.wait_for(&format!("{name}'s address"), WAIT, || async {
        ingress(&c.client, name).await.first().cloned()
    })
    .await
}

/// The messages of the Events of `reason` about Service `name`.
async fn events(client: &Client, name: &str, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

async fn wait_event(c: &common::TestCluster, name: &str, reason: &str, message: &str) {
    c.wait_for(
        &format!("{reason} event of {name}: {message}"),
        WAIT,
        || async {
            events(&c.client, name, reason)
                .await
                .iter()
                .any(|m| m == message)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn addresses_from_the_pool_once_each_and_back_when_released() {
    let c = common::TestCluster::start_with(config(&["10.9.0.10-10.9.0.11", "10.9.1.0/30"])).await;
    let lb = json!({"type": "LoadBalancer"});
    create(&c.client, "a", lb.clone()).await;
    let a = wait_ingress(&c, "a").await;
    create(&c.client, "b", lb.clone()).await;
    let b = wait_ingress(&c, "b").await;
    assert_eq!((a.as_str(), b.as_str()), ("10.9.0.10", "10.9.0.11"));
    wait_event(&c, "a", "IPAllocated", "Assigned IP [\"10.9.0.10\"]").await;
    // The first pool is full: the next from the second (without its network address).
    create(&c.client, "d", lb.clone()).await;
    assert_eq!(wait_ingress(&c, "d").await, "10.9.1.1");

    // A requested address: taken by b, outside every pool, or free.
    create(
        &c.client,
        "wants-b",
        json!({"type": "LoadBalancer", "loadBalancerIP": "10.9.0.11"}),
    )
    .await;
    wait_event(
        &c,
        "wants-b",
        "AllocationFailed",
        "Failed to allocate IP for \"default/wants-b\": 10.9.0.11 is already in use by another Service",
    )
    .await;
    create(
        &c.client,
        "outside",
        json!({"type": "LoadBalancer", "loadBalancerIP": "192.0.2.1"}),
    )
    .await;
    wait_event(
        &c,
        "outside",
        "AllocationFailed",
        "Failed to allocate IP for \"default/outside\": \"192.0.2.1\" is not allowed in config",
    )
    .await;
    create(
        &c.client,
        "picky",
        json!({"type": "LoadBalancer", "loadBalancerIP": "10.9.1.2"}),
    )
    .await;
    assert_eq!(wait_ingress(&c, "picky").await, "10.9.1.2");

    // b stops being a LoadBalancer: its address is given back and wants-b gets it.
    let api: Api<Service> = c.api("default");
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
    )
    .await
    .unwrap();
    assert_eq!(wait_ingress(&c, "wants-b").await, "10.9.0.11");
    assert!(ingress(&c.client, "b").await.is_empty());

    // Another class is left alone; ours by name is served, once an address is free.
    create(
        &c.client,
        "theirs",
        json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/bgp"}),
    )
    .await;
    create(
        &c.client,
        "ours",
        json!({"type": "LoadBalancer", "loadBalancerClass": "skiff.io/l2"}),
    )
    .await;
    wait_event(
        &c,
        "ours",
        "AllocationFailed",
        "Failed to allocate IP for \"default/ours\": no available IPs",
    )
    .await;
    assert!(ingress(&c.client, "theirs").await.is_empty());
    assert!(
        events(&c.client, "theirs", "AllocationFailed")
            .await
            .is_empty()
    );
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(wait_ingress(&c, "ours").await, "10.9.0.10");
    assert!(ingress(&c.client, "theirs").await.is_empty());
}

#[tokio::test]
async fn a_restarted_controller_never_hands_out_a_held_address() {
    // The API server alone first: "old" holds 10.9.0.10, as the previous leader left it.
    let mut c = common::TestCluster::start("").await;
    create(&c.client, "old", json!({"type": "LoadBalancer"})).await;
    let api: Api<Service> = c.api("default");
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.9.0.10"}]}}});
    api.patch_status("old", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    create(&c.client, "new", json!({"type": "LoadBalancer"})).await;
    c.stop_controllers();
    let server = c.server.as_ref().unwrap();
    let identities = manager::Identities::from_kubeconfigs(
        &server.controller_manager_kubeconfig,
        &server.scheduler_kubeconfig,
    )
    .await
    .unwrap();
    let mut cfg = config(&["10.9.0.10-10.9.0.12"]);
    cfg.enabled = Enabled::parse("service-lb-controller").unwrap();
    let run = tokio::spawn(manager::run(identities, cfg));
    assert_eq!(wait_ingress(&c, "new").await, "10.9.0.11");
    assert_eq!(ingress(&c.client, "old").await, ["10.9.0.10"]);
    run.abort();
}

#[tokio::test]
async fn node_ports_follow_allocate_load_balancer_node_ports() {
    let c = common::TestCluster::start("").await;
    let api: Api<Service> = c.api("default");
    let node_ports = |svc: &Service| -> Vec<i32> {
        svc.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.node_port)
            .collect()
    };
    let lb = create(&c.client, "lb", json!({"type": "LoadBalancer"})).await;
    let spec = lb.spec.clone().unwrap();
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(true));
    assert_eq!(node_ports(&lb).len(), 1);
    let bare = create(
        &c.client,
        "bare",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "loadBalancerClass": "skiff.io/l2"}),
    )
    .await;
    assert!(node_ports(&bare).is_empty());

    // The class is fixed while the Service is a LoadBalancer…
    let err = api
        .patch(
            "bare",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"loadBalancerClass": "example.com/x"}})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains(
            "spec.loadBalancerClass: Invalid value: \"example.com/x\": may not change once set"
        ),
        "{}",
        status.message
    );
    // …and goes, with allocateLoadBalancerNodePorts and the NodePorts, when it stops being one.
    let cluster_ip = api
        .patch(
            "bare",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"type": "ClusterIP"}})),
        )
        .await
        .unwrap();
    let spec = cluster_ip.spec.unwrap();
    assert_eq!(spec.load_balancer_class, None);
    assert_eq!(spec.allocate_load_balancer_node_ports, None);
    let err = api
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"type": "ClusterIP", "allocateLoadBalancerNodePorts": false}}),
            ),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err}")
    };
    assert!(
        status.message.contains("spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn announcement_leases_of_services_that_are_gone_are_deleted() {
    use k8s_openapi::api::coordination::v1::Lease;
    let c = common::TestCluster::start_with(config(&["10.9.0.10-10.9.0.11"])).await;
    create(&c.client, "kept", json!({"type": "LoadBalancer"})).await;
    create(&c.client, "plain", json!({"type": "ClusterIP"})).await;
    let leases: Api<Lease> = c.api("kube-system");
    for svc in ["kept", "plain", "gone"] {
        let lease = serde_json::from_value(json!({
            "metadata": {"name": format!("skiff-l2announce-default-{svc}"),
                "labels": {"skiff.io/service-namespace": "default", "skiff.io/service-name": svc}},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 6},
        }))
        .unwrap();
        leases.create(&PostParams::default(), &lease).await.unwrap();
    }
    let names = || async {
        let list = leases.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter_map(|l| l.metadata.name)
            .filter(|n| n.starts_with("skiff-l2announce-"))
            .collect::<Vec<_>>()
    };
    c.wait_for("the leases of gone and plain deleted", WAIT, || async {
        (names().await == ["skiff-l2announce-default-kept"]).then_some(())
    })
    .await;
}
