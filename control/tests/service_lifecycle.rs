//! Services through the API as Kubernetes' `[sig-network] Services` conformance tests use
//! them (re-implemented, not copied): type changes ExternalName ↔ ClusterIP ↔ NodePort with the
//! ClusterIP and node ports allocated and released as kube-apiserver does, session affinity
//! switched on and off, ports added and removed, the status lifecycle through the `status`
//! subresource, a collection deleted by label, and the lifecycle of an Endpoints object.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use common::TestCluster;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "default";

fn service(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"suite": "lifecycle"}},
        "spec": spec,
    }))
    .unwrap()
}

fn cluster_ip(s: &Service) -> Option<String> {
    s.spec.as_ref()?.cluster_ip.clone()
}

fn node_ports(s: &Service) -> Vec<i32> {
    let ports = s.spec.as_ref().and_then(|sp| sp.ports.clone());
    ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.node_port)
        .collect()
}

async fn merge(api: &Api<Service>, name: &str, patch: Value) -> Result<Service, kube::Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// The status code of a refused request.
fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn type_changes_allocate_and_release_addresses_and_ports() {
    let c = TestCluster::start("").await;
    let api: Api<Service> = c.api(NS);
    let pp = PostParams::default();

    // ExternalName → ClusterIP: an address is allocated and the external name dropped.
    let ext = api
        .create(
            &pp,
            &service(
                "ext",
                json!({"type": "ExternalName", "externalName": "example.test"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(cluster_ip(&ext), None);
    let cip = merge(
        &api,
        "ext",
        json!({"spec": {"type": "ClusterIP", "externalName": null,
                         "ports": [{"port": 80, "protocol": "TCP"}]}}),
    )
    .await
    .unwrap();
    let ip = cluster_ip(&cip).expect("a ClusterIP after the change");
    let octets = ip.parse::<std::net::Ipv4Addr>().unwrap().octets();
    assert!(
        octets[0] == 10 && (96..112).contains(&octets[1]),
        "{ip} in 10.96.0.0/12"
    );

    // ClusterIP → NodePort: the address stays, a node port is allocated in the range.
    let np = merge(&api, "ext", json!({"spec": {"type": "NodePort"}}))
        .await
        .unwrap();
    assert_eq!(cluster_ip(&np).as_deref(), Some(ip.as_str()));
    let [port] = node_ports(&np)[..] else {
        panic!("one node port: {np:?}")
    };
    assert!((30000..=32767).contains(&port), "{port}");

    // NodePort → ClusterIP: the node port is dropped and released (another Service may ask
    // for exactly that one).
    let back = merge(&api, "ext", json!({"spec": {"type": "ClusterIP"}}))
        .await
        .unwrap();
    assert!(node_ports(&back).is_empty(), "{back:?}");
    let claim = api
        .create(
            &pp,
            &service(
                "claims-port",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            ),
        )
        .await
        .expect("the released node port is free again");
    assert_eq!(node_ports(&claim), vec![port]);

    // ClusterIP → ExternalName: the address is dropped and released.
    let ext_again = merge(
        &api,
        "ext",
        json!({"spec": {"type": "ExternalName", "externalName": "example.test"}}),
    )
    .await
    .unwrap();
    assert_eq!(cluster_ip(&ext_again), None, "{ext_again:?}");
    let reuse = api
        .create(
            &pp,
            &service(
                "claims-ip",
                json!({"clusterIP": ip, "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("the released ClusterIP is free again");
    assert_eq!(cluster_ip(&reuse).as_deref(), Some(ip.as_str()));

    // ExternalName → NodePort: an address and a node port at once.
    let np2 = merge(
        &api,
        "ext",
        json!({"spec": {"type": "NodePort", "externalName": null,
                         "ports": [{"port": 8080, "protocol": "TCP"}]}}),
    )
    .await
    .unwrap();
    assert!(cluster_ip(&np2).is_some_and(|i| i != ip), "{np2:?}");
    assert_eq!(node_ports(&np2).len(), 1, "{np2:?}");

    // A node port held by another Service is refused with kube's 422.
    let err = api
        .create(
            &pp,
            &service(
                "dup",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), 422, "{err}");
    let kube::Error::Api(status) = &err else {
        unreachable!()
    };
    assert!(
        status
            .message
            .contains("provided port is already allocated"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn affinity_and_ports_change_at_runtime() {
    let c = TestCluster::start("").await;
    let api: Api<Service> = c.api(NS);
    api.create(
        &PostParams::default(),
        &service("aff", json!({"type": "NodePort", "ports": [{"port": 80}]})),
    )
    .await
    .unwrap();

    // Switched on with a timeout, the timeout changed, switched off: the config goes with it.
    let on = merge(
        &api,
        "aff",
        json!({"spec": {"sessionAffinity": "ClientIP",
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}}),
    )
    .await
    .unwrap();
    let spec = on.spec.unwrap();
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    let timeout = |s: &k8s_openapi::api::core::v1::ServiceSpec| {
        s.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
    };
    assert_eq!(timeout(&spec), Some(30));
    let longer = merge(
        &api,
        "aff",
        json!({"spec": {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}}),
    )
    .await
    .unwrap();
    assert_eq!(timeout(longer.spec.as_ref().unwrap()), Some(600));
    let off = merge(&api, "aff", json!({"spec": {"sessionAffinity": "None"}}))
        .await
        .unwrap();
    let first = node_ports(&off)[0];
    let spec = off.spec.unwrap();
    assert_eq!(spec.session_affinity.as_deref(), Some("None"));
    assert!(spec.session_affinity_config.is_none(), "{spec:?}");
    // A timeout outside 1..=86400 is refused.
    let err = merge(
        &api,
        "aff",
        json!({"spec": {"sessionAffinity": "ClientIP",
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 422, "{err}");

    // Ports added (the same number over UDP too) and removed: each keeps its node port,
    // a new one gets its own, a removed one is released.
    let added = merge(
        &api,
        "aff",
        json!({"spec": {"ports": [
            {"name": "tcp", "port": 80, "protocol": "TCP", "nodePort": first},
            {"name": "udp", "port": 80, "protocol": "UDP", "nodePort": first},
            {"name": "extra", "port": 81, "protocol": "TCP"}]}}),
    )
    .await
    .unwrap();
    let ports = node_ports(&added);
    assert_eq!(ports.len(), 3, "{added:?}");
    assert_eq!(
        &ports[..2],
        &[first, first],
        "TCP and UDP share the node port"
    );
    let extra = ports[2];
    assert_ne!(extra, first);
    let removed = merge(
        &api,
        "aff",
        json!({"spec": {"ports": [{"name": "tcp", "port": 80, "protocol": "TCP", "nodePort": first}]}}),
    )
    .await
    .unwrap();
    assert_eq!(node_ports(&removed), vec![first]);
    let reuse = api
        .create(
            &PostParams::default(),
            &service(
                "takes-extra",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": extra}]}),
            ),
        )
        .await
        .expect("the removed port's node port is free again");
    assert_eq!(node_ports(&reuse), vec![extra]);
}

#[tokio::test]
async fn status_lifecycle_and_deleting_a_collection() {
    let c = TestCluster::start("").await;
    let api: Api<Service> = c.api(NS);
    let pp = PostParams::default();
    for name in ["one", "two", "three"] {
        api.create(&pp, &service(name, json!({"ports": [{"port": 80}]})))
            .await
            .unwrap();
    }
    // The status subresource: patched, read back, replaced; the spec is not touched by it.
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]},
                                   "conditions": [{"type": "StatusUpdate", "status": "True",
                                                   "reason": "E2E", "message": "Set from e2e test",
                                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
                        "spec": {"ports": [{"port": 9999}]}});
    let patched = api
        .patch_status("one", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let ingress = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.ip.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ingress(&patched), ["203.0.113.1"]);
    assert_eq!(
        patched.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        80,
        "the status subresource leaves the spec alone"
    );
    let read = api.get_status("one").await.unwrap();
    assert_eq!(ingress(&read), ["203.0.113.1"]);
    let conditions = read.status.as_ref().unwrap().conditions.clone().unwrap();
    assert_eq!(conditions[0].reason, "E2E");
    let mut replaced = read.clone();
    replaced.status.as_mut().unwrap().conditions = None;
    replaced
        .status
        .as_mut()
        .unwrap()
        .load_balancer
        .as_mut()
        .unwrap()
        .ingress
        .as_mut()
        .unwrap()[0]
        .ip = Some("203.0.113.2".into());
    let replaced = api.replace_status("one", &pp, &replaced).await.unwrap();
    assert_eq!(ingress(&replaced), ["203.0.113.2"]);
    assert!(replaced.status.unwrap().conditions.is_none());

    // Found when listing every namespace.
    let all: Api<Service> = Api::all(c.client.clone());
    let listed = all.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("two")
                && s.metadata.namespace.as_deref() == Some(NS))
    );

    // deletecollection by label: the three go, the `kubernetes` Service stays.
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("suite=lifecycle"),
    )
    .await
    .unwrap();
    let left = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = left
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["kubernetes"]);
}

#[tokio::test]
async fn the_lifecycle_of_an_endpoints_object() {
    let c = TestCluster::start("").await;
    let api: Api<Endpoints> = c.api(NS);
    let ep: Endpoints = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "example-custom-endpoints", "labels": {"test-endpoint-static": "true"}},
        "subsets": [{"addresses": [{"ip": "10.0.0.24"}], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}],
    }))
    .unwrap();
    api.create(&PostParams::default(), &ep).await.unwrap();
    let listed = api
        .list(&ListParams::default().labels("test-endpoint-static=true"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let patched = api
        .patch(
            "example-custom-endpoints",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"test-service": "updated"}},
                "subsets": [{"addresses": [{"ip": "10.0.0.25"}], "ports": [{"name": "http-test", "port": 8080, "protocol": "TCP"}]}],
            })),
        )
        .await
        .unwrap();
    let subset = &patched.subsets.as_ref().unwrap()[0];
    assert_eq!(subset.addresses.as_ref().unwrap()[0].ip, "10.0.0.25");
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);
    assert_eq!(
        patched.metadata.labels.as_ref().unwrap()["test-service"],
        "updated"
    );
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("test-endpoint-static=true"),
    )
    .await
    .unwrap();
    let err = api.get("example-custom-endpoints").await.unwrap_err();
    assert_eq!(code(&err), 404, "{err}");
}

fn health_check_node_port(s: &Service) -> Option<i32> {
    s.spec.as_ref()?.health_check_node_port
}

fn local_lb(name: &str, hc: Option<i32>) -> Service {
    let mut spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
        "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80, "protocol": "TCP"}]});
    if let Some(p) = hc {
        spec["healthCheckNodePort"] = json!(p);
    }
    service(name, spec)
}

/// The message of a refused request.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn a_local_load_balancer_holds_a_health_check_node_port() {
    let c = TestCluster::start("").await;
    let api: Api<Service> = c.api(NS);
    let pp = PostParams::default();

    let lb = api.create(&pp, &local_lb("hc", None)).await.unwrap();
    let port = health_check_node_port(&lb).expect("a healthCheckNodePort");
    assert!((30000..=32767).contains(&port), "{port}");
    // Another Service asking for it: kube's allocator error (an internal error, as
    // kube-apiserver's `allocHealthCheckNodePort` returns it).
    let e = api
        .create(&pp, &local_lb("hc-taken", Some(port)))
        .await
        .unwrap_err();
    assert_eq!(code(&e), 500, "{e}");
    assert_eq!(
        message(&e),
        format!(
            "Internal error occurred: failed to allocate requested HealthCheck NodePort {port}: provided port is already allocated"
        )
    );
    // A replace without the field keeps it; one moving it is refused.
    let mut replaced = local_lb("hc", None);
    replaced.metadata.resource_version = lb.metadata.resource_version.clone();
    replaced.spec.as_mut().unwrap().cluster_ip = cluster_ip(&lb);
    let kept = api.replace("hc", &pp, &replaced).await.unwrap();
    assert_eq!(health_check_node_port(&kept), Some(port));
    let e = merge(
        &api,
        "hc",
        json!({"spec": {"healthCheckNodePort": port + 1}}),
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), 422, "{e}");
    assert!(
        message(&e).contains("spec.healthCheckNodePort: Forbidden: field is immutable"),
        "{e}"
    );

    // Cluster policy: the port is dropped and released.
    let cluster = merge(
        &api,
        "hc",
        json!({"spec": {"externalTrafficPolicy": "Cluster"}}),
    )
    .await
    .unwrap();
    assert_eq!(health_check_node_port(&cluster), None, "{cluster:?}");
    let other = api
        .create(&pp, &local_lb("hc-other", Some(port)))
        .await
        .expect("the released port is free again");
    assert_eq!(health_check_node_port(&other), Some(port));
    // Deleting the Service releases it too.
    api.delete("hc-other", &DeleteParams::default())
        .await
        .unwrap();
    let again = api
        .create(&pp, &local_lb("hc-again", Some(port)))
        .await
        .expect("the deleted Service's port is free again");
    assert_eq!(health_check_node_port(&again), Some(port));
    // Only a local LoadBalancer may carry one.
    let e = api
        .create(
            &pp,
            &service(
                "hc-np",
                json!({"type": "NodePort", "healthCheckNodePort": 31999,
                       "ports": [{"port": 80, "protocol": "TCP"}]}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), 422, "{e}");
    for name in ["hc", "hc-again"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}
