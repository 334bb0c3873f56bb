//! The `default/kubernetes` Service's endpoints: published by the API server itself (the
//! advertise address and the secure port), put back when deleted or altered, listing every
//! live server's lease, and left alone by the Endpoints and EndpointSlice controllers.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// Longer than the endpoint reconciler's 10 s interval, with room for a loaded machine.
const WAIT: Duration = Duration::from_secs(40);
/// An address on the loopback network other than the one the server binds, so the test sees
/// the advertise address (not the bind address) published.
const ADVERTISE: &str = "127.0.0.2";

/// (IPs, (port name, port, protocol)) of the Endpoints.
fn endpoints_view(ep: &Endpoints) -> (Vec<String>, Vec<(String, i32, String)>) {
    let subsets = ep.subsets.clone().unwrap_or_default();
    let ips = subsets
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    let ports = subsets
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    (ips, ports)
}

/// (ready IPs, (port name, port, protocol)) of the slice.
fn slice_view(s: &EndpointSlice) -> (Vec<String>, Vec<(String, i32, String)>) {
    let ips = s
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    let ports = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    (ips, ports)
}

#[tokio::test]
async fn kubernetes_service_endpoints_follow_the_api_servers() {
    let mut c = common::TestCluster::start_with_api(
        common::test_config("endpoints,endpointslice"),
        |api| {
            api.bind_address = IpAddr::from([0, 0, 0, 0]);
            api.advertise_address = Some(ADVERTISE.parse().unwrap());
        },
    )
    .await;
    let port = i32::from(c.server.as_ref().unwrap().local_addr.port());
    let https = vec![("https".to_string(), port, "TCP".to_string())];
    let me = vec![ADVERTISE.to_string()];
    let eps: Api<Endpoints> = c.api("default");
    let slices: Api<EndpointSlice> = c.api("default");

    // Published as the server starts.
    let ep = eps.get("kubernetes").await.unwrap();
    assert_eq!(endpoints_view(&ep), (me.clone(), https.clone()));
    assert_eq!(
        ep.metadata.labels.clone().unwrap_or_default(),
        [(
            "endpointslice.kubernetes.io/skip-mirror".to_string(),
            "true".to_string()
        )]
        .into()
    );
    let slice = slices.get("kubernetes").await.unwrap();
    assert_eq!(slice_view(&slice), (me.clone(), https.clone()));
    assert_eq!(slice.address_type, "IPv4");
    // Only the service-name label: not the EndpointSlice controller's to manage.
    assert_eq!(
        slice.metadata.labels.clone().unwrap_or_default(),
        [(
            "kubernetes.io/service-name".to_string(),
            "kubernetes".to_string()
        )]
        .into()
    );

    // The controllers leave them alone, and the reconciler does not rewrite what is right.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        eps.get("kubernetes")
            .await
            .unwrap()
            .metadata
            .resource_version,
        ep.metadata.resource_version
    );
    let after = slices.list(&Default::default()).await.unwrap().items;
    assert_eq!(
        after
            .iter()
            .map(|s| (s.metadata.name.clone(), s.metadata.resource_version.clone()))
            .collect::<Vec<_>>(),
        vec![(Some("kubernetes".into()), slice.metadata.resource_version)],
        "one slice for the kubernetes service, unchanged"
    );

    // Deleted: put back.
    eps.delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    slices
        .delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    let restored = |what: &'static str| {
        let (eps, slices, me, https) = (eps.clone(), slices.clone(), me.clone(), https.clone());
        let c = &c;
        async move {
            c.wait_for(what, WAIT, || async {
                let ep = eps.get_opt("kubernetes").await.unwrap()?;
                let slice = slices.get_opt("kubernetes").await.unwrap()?;
                (endpoints_view(&ep) == (me.clone(), https.clone())
                    && slice_view(&slice) == (me.clone(), https.clone()))
                    .then_some(())
            })
            .await
        }
    };
    restored("deleted endpoints restored").await;

    // Altered: put back.
    eps.patch(
        "kubernetes",
        &PatchParams::default(),
        &Patch::Merge(&json!({"subsets": [{"addresses": [{"ip": "10.9.9.9"}],
            "ports": [{"name": "https", "port": 1, "protocol": "TCP"}]}]})),
    )
    .await
    .unwrap();
    slices
        .patch(
            "kubernetes",
            &PatchParams::default(),
            &Patch::Merge(&json!({"endpoints": [{"addresses": ["10.9.9.9"],
                "conditions": {"ready": true}}]})),
        )
        .await
        .unwrap();
    assert_eq!(
        endpoints_view(&eps.get("kubernetes").await.unwrap()).0,
        vec!["10.9.9.9".to_string()]
    );
    restored("altered endpoints restored").await;

    // Another server's live lease (as a second skiff-control on the same store keeps it):
    // both addresses are published; once it expires, only this one.
    let expires = SystemTime::now() + Duration::from_secs(12);
    let millis = expires.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    c.store
        .create(
            "/registry/masterleases/127.0.0.3",
            serde_json::to_vec(&json!({"port": port, "expiresUnixMillis": millis})).unwrap(),
        )
        .await
        .unwrap();
    let both = vec![ADVERTISE.to_string(), "127.0.0.3".to_string()];
    c.wait_for("the other server's address published", WAIT, || async {
        let ep = eps.get("kubernetes").await.unwrap();
        let slice = slices.get("kubernetes").await.unwrap();
        (endpoints_view(&ep).0 == both && slice_view(&slice).0 == both).then_some(())
    })
    .await;
    restored("the expired server's address gone").await;
    assert!(
        c.store
            .get("/registry/masterleases/127.0.0.3")
            .await
            .unwrap()
            .is_none(),
        "the expired lease is deleted"
    );

    // A server that stops takes itself out.
    c.stop_controllers();
    c.server.take().unwrap().shutdown().await;
    let stored = c
        .store
        .get("/registry/endpoints/default/kubernetes")
        .await
        .unwrap()
        .expect("endpoints still stored");
    let ep: Endpoints = serde_json::from_slice(&stored.value).unwrap();
    assert!(endpoints_view(&ep).0.is_empty(), "{ep:?}");
}

/// `kube-system/kube-dns` exists from the start at the tenth address of the service range,
/// with the DNS ports and no selector (each node's agent answers its own pods), and is not
/// replaced when it already exists.
#[tokio::test]
async fn the_kube_dns_service_is_created_at_start() {
    let c = common::TestCluster::start("endpoints,endpointslice").await;
    let services: Api<k8s_openapi::api::core::v1::Service> = c.api("kube-system");
    let svc = services.get("kube-dns").await.unwrap();
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("k8s-app").map(String::as_str), Some("kube-dns"));
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(spec.selector, None);
    let ports: Vec<(String, i32, String)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.port,
                p.protocol.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("dns".to_string(), 53, "UDP".to_string()),
            ("dns-tcp".to_string(), 53, "TCP".to_string())
        ]
    );
    // The address is taken: a new Service asking for it is refused.
    let clash: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "clash"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}
    }))
    .unwrap();
    let err = c
        .api::<k8s_openapi::api::core::v1::Service>("default")
        .create(&Default::default(), &clash)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err}"
    );
}
