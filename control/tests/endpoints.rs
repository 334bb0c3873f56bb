//! The Endpoints and EndpointSlice controllers: service backends follow pod readiness, named
//! target ports resolve per pod, and terminating pods stay in slices (not in Endpoints).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn create_service(client: &Client, ns: &str, name: &str, target_port: serde_json::Value) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"tier": "front"}},
        "spec": {"selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": target_port}]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &svc).await.unwrap();
}

/// A pod of `app` on `node`, its container exposing `http` on `port`.
async fn create_pod(client: &Client, ns: &str, name: &str, app: &str, node: &str, port: i32) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx",
            "ports": [{"name": "http", "containerPort": port}]}]},
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn ips(addrs: Option<&Vec<k8s_openapi::api::core::v1::EndpointAddress>>) -> BTreeSet<String> {
    addrs.into_iter().flatten().map(|a| a.ip.clone()).collect()
}

/// (ready, not ready) IPs over all subsets.
fn endpoint_ips(ep: &Endpoints) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut ready = BTreeSet::new();
    let mut not_ready = BTreeSet::new();
    for s in ep.subsets.iter().flatten() {
        ready.extend(ips(s.addresses.as_ref()));
        not_ready.extend(ips(s.not_ready_addresses.as_ref()));
    }
    (ready, not_ready)
}

async fn slices_of(client: &Client, ns: &str, svc: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn endpoints_follow_pod_readiness() {
    let c = common::TestCluster::start("endpoints,endpointslice").await;
    let _node = c.add_node("n1", "4", "8Gi", 110).await;
    create_service(&c.client, "default", "web", json!(8080)).await;
    for p in ["web-a", "web-b"] {
        create_pod(&c.client, "default", p, "web", "n1", 8080).await;
    }
    let pods: Api<Pod> = c.api("default");
    let ip_of = |name: &'static str| {
        let pods = pods.clone();
        async move { pod_ip(&pods.get(name).await.unwrap()) }
    };
    let eps: Api<Endpoints> = c.api("default");
    let ep = c
        .wait_for("two ready addresses", WAIT, || async {
            let ep = eps.get_opt("web").await.unwrap()?;
            (endpoint_ips(&ep).0.len() == 2).then_some(ep)
        })
        .await;
    let subset = &ep.subsets.as_ref().unwrap()[0];
    let port = &subset.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 8080);
    assert_eq!(port.name.as_deref(), Some("http"));
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    let addr = &subset.addresses.as_ref().unwrap()[0];
    assert_eq!(addr.node_name.as_deref(), Some("n1"));
    let target = addr.target_ref.as_ref().unwrap();
    assert_eq!(target.kind.as_deref(), Some("Pod"));
    assert!(target.name.as_deref().unwrap().starts_with("web-"));
    assert_eq!(
        ep.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("tier")
            .map(String::as_str),
        Some("front")
    );

    // Unready: moves to notReadyAddresses.
    let ip_a = ip_of("web-a").await;
    let ip_b = ip_of("web-b").await;
    common::set_pod_ready(&c.client, "default", "web-a", false).await;
    c.wait_for("web-a not ready", WAIT, || async {
        let (ready, not_ready) = endpoint_ips(&eps.get("web").await.unwrap());
        (ready == BTreeSet::from([ip_b.clone()]) && not_ready == BTreeSet::from([ip_a.clone()]))
            .then_some(())
    })
    .await;
    // The slice agrees: ready=false, serving=false.
    c.wait_for("slice shows web-a unready", WAIT, || async {
        let slices = slices_of(&c.client, "default", "web").await;
        let a = slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .find(|e| e.addresses == vec![ip_a.clone()])?;
        let cond = a.conditions.as_ref()?;
        (cond.ready == Some(false) && cond.serving == Some(false)).then_some(())
    })
    .await;
    // Ready again, then web-b deleted: only web-a remains.
    common::set_pod_ready(&c.client, "default", "web-a", true).await;
    pods.delete("web-b", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_for("web-b gone", WAIT, || async {
        let (ready, not_ready) = endpoint_ips(&eps.get("web").await.unwrap());
        (ready == BTreeSet::from([ip_a.clone()]) && not_ready.is_empty()).then_some(())
    })
    .await;
    c.wait_for("web-b gone from slices", WAIT, || async {
        let slices = slices_of(&c.client, "default", "web").await;
        let all: Vec<_> = slices.iter().flat_map(|s| s.endpoints.iter()).collect();
        (all.len() == 1 && all[0].addresses == vec![ip_a.clone()]).then_some(())
    })
    .await;

    // A pod relabelled out of the service leaves it.
    pods.patch(
        "web-a",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    c.wait_for("relabelled pod gone", WAIT, || async {
        let (ready, not_ready) = endpoint_ips(&eps.get("web").await.unwrap());
        (ready.is_empty() && not_ready.is_empty()).then_some(())
    })
    .await;

    // The service goes, its Endpoints and slices with it.
    let svcs: Api<Service> = c.api("default");
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    c.wait_for("endpoints deleted", WAIT, || async {
        eps.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    c.wait_for("slices deleted", WAIT, || async {
        slices_of(&c.client, "default", "web")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

/// Resource versions of a service's Endpoints and slices.
async fn versions(client: &Client, svc: &str) -> (Option<String>, Vec<Option<String>>) {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ep = eps.get(svc).await.unwrap().metadata.resource_version;
    let mut rvs: Vec<_> = slices_of(client, "default", svc)
        .await
        .into_iter()
        .map(|s| s.metadata.resource_version)
        .collect();
    rvs.sort();
    (ep, rvs)
}

#[tokio::test]
async fn named_target_ports_resolve_per_pod() {
    let c = common::TestCluster::start("endpoints,endpointslice").await;
    let _node = c.add_node("n1", "4", "8Gi", 110).await;
    create_service(&c.client, "default", "api", json!("http")).await;
    create_pod(&c.client, "default", "api-old", "api", "n1", 8080).await;
    create_pod(&c.client, "default", "api-new", "api", "n1", 9090).await;
    // A selectorless service is left alone.
    let svcs: Api<Service> = c.api("default");
    svcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "manual"},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap(),
    )
    .await
    .unwrap();

    let eps: Api<Endpoints> = c.api("default");
    let ep = c
        .wait_for("two subsets", WAIT, || async {
            let ep = eps.get_opt("api").await.unwrap()?;
            let subsets = ep.subsets.clone().unwrap_or_default();
            (subsets.len() == 2
                && subsets
                    .iter()
                    .all(|s| s.addresses.as_ref().is_some_and(|a| a.len() == 1)))
            .then_some(ep)
        })
        .await;
    let pods: Api<Pod> = c.api("default");
    let old_ip = pod_ip(&pods.get("api-old").await.unwrap());
    let new_ip = pod_ip(&pods.get("api-new").await.unwrap());
    let mut by_port: Vec<(i32, BTreeSet<String>)> = ep
        .subsets
        .unwrap()
        .iter()
        .map(|s| (s.ports.as_ref().unwrap()[0].port, ips(s.addresses.as_ref())))
        .collect();
    by_port.sort();
    assert_eq!(
        by_port,
        vec![
            (8080, BTreeSet::from([old_ip.clone()])),
            (9090, BTreeSet::from([new_ip.clone()]))
        ]
    );

    // One slice per port set.
    let slices = c
        .wait_for("two slices", WAIT, || async {
            let slices = slices_of(&c.client, "default", "api").await;
            (slices.len() == 2 && slices.iter().all(|s| s.endpoints.len() == 1)).then_some(slices)
        })
        .await;
    for s in &slices {
        let port = s.ports.as_ref().unwrap()[0].port.unwrap();
        let want = if port == 8080 { &old_ip } else { &new_ip };
        assert_eq!(&s.endpoints[0].addresses[0], want);
        assert_eq!(s.address_type, "IPv4");
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        assert!(s.metadata.name.as_ref().unwrap().starts_with("api-"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Service", "api")
        );
    }

    // Settled: nothing is rewritten.
    let before = versions(&c.client, "api").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        versions(&c.client, "api").await,
        before,
        "no rewrites when nothing changed"
    );
    // Nothing for the selectorless service.
    assert!(eps.get_opt("manual").await.unwrap().is_none());
    assert!(slices_of(&c.client, "default", "manual").await.is_empty());
}

#[tokio::test]
async fn slices_keep_terminating_endpoints() {
    let c = common::TestCluster::start("endpoints,endpointslice").await;
    // No kubelet on "ghost": this test plays it, so the deleted pod stays terminating.
    create_service(&c.client, "default", "db", json!(5432)).await;
    let pods: Api<Pod> = c.api("default");
    for (name, ip) in [("db-0", "10.244.9.10"), ("db-1", "10.244.9.11")] {
        create_pod(&c.client, "default", name, "db", "ghost", 5432).await;
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let eps: Api<Endpoints> = c.api("default");
    c.wait_for("both ready", WAIT, || async {
        let ep = eps.get_opt("db").await.unwrap()?;
        (endpoint_ips(&ep).0.len() == 2).then_some(())
    })
    .await;
    pods.delete("db-1", &DeleteParams::default()).await.unwrap();
    let terminating = c
        .wait_for("db-1 terminating in its slice", WAIT, || async {
            let slices = slices_of(&c.client, "default", "db").await;
            let e = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .find(|e| e.addresses == vec!["10.244.9.11".to_string()])?;
            (e.conditions.as_ref()?.terminating == Some(true)).then(|| e.clone())
        })
        .await;
    let cond = terminating.conditions.unwrap();
    assert_eq!(cond.ready, Some(false));
    assert_eq!(cond.serving, Some(true));
    assert_eq!(terminating.node_name.as_deref(), Some("ghost"));
    assert_eq!(
        terminating.target_ref.unwrap().name.as_deref(),
        Some("db-1")
    );
    // Endpoints drop terminating pods.
    c.wait_for("db-1 out of endpoints", WAIT, || async {
        let (ready, not_ready) = endpoint_ips(&eps.get("db").await.unwrap());
        (ready == BTreeSet::from(["10.244.9.10".to_string()]) && not_ready.is_empty()).then_some(())
    })
    .await;
    // The other endpoint is untouched.
    let slices = slices_of(&c.client, "default", "db").await;
    let db0 = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .find(|e| e.addresses == vec!["10.244.9.10".to_string()])
        .unwrap();
    let cond = db0.conditions.as_ref().unwrap();
    assert_eq!(
        (cond.ready, cond.serving, cond.terminating),
        (Some(true), Some(true), Some(false))
    );
}
