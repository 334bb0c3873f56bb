//! Endpoint churn at scale: 1,000 Services selecting the same three pods, one pod relabelled
//! out of them and back. Every Service's EndpointSlices and Endpoints must follow, and the
//! time each controller took is printed (the figure docs/benchmarks-control.md quotes; run
//! with `cargo test -p skiff-control --test endpoints_scale -- --nocapture`).

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const NS: &str = "churn";
const SERVICES: usize = 1000;
const PODS: usize = 3;
/// Generous: the point of the test is correctness at scale; the time is printed, not asserted.
const WAIT: Duration = Duration::from_secs(120);

/// A cache of `K` in the test namespace, filled by a watch running until the returned task is
/// dropped (the test reads it instead of listing 1,000 objects on every poll).
fn cache<K>(client: &Client) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let api: Api<K> = Api::namespaced(client.clone(), NS);
    let task = tokio::spawn(
        reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .for_each(|_| futures::future::ready(())),
    );
    (store, task)
}

/// Service name → the IPs its EndpointSlices list (only slices of the endpointslice
/// controller), for the services that have any slice.
fn slice_ips(slices: &Store<EndpointSlice>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in slices.state() {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        if labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str)
            != Some("endpointslice-controller.k8s.io")
        {
            continue;
        }
        let Some(svc) = labels.get("kubernetes.io/service-name") else {
            continue;
        };
        let ips = out.entry(svc.clone()).or_default();
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            assert!(ready, "every pod here is ready: {e:?}");
            ips.extend(e.addresses.iter().cloned());
        }
    }
    out
}

/// Service name → the ready IPs of its Endpoints.
fn endpoints_ips(eps: &Store<Endpoints>) -> BTreeMap<String, BTreeSet<String>> {
    eps.state()
        .iter()
        .map(|ep| {
            let ips = ep
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.clone())
                .collect();
            (ep.metadata.name.clone().unwrap_or_default(), ips)
        })
        .collect()
}

/// How many of the services show exactly `want`.
fn agreeing(seen: &BTreeMap<String, BTreeSet<String>>, want: &BTreeSet<String>) -> usize {
    (0..SERVICES)
        .filter(|i| seen.get(&service_name(*i)) == Some(want))
        .count()
}

fn service_name(i: usize) -> String {
    format!("echo-{i:04}")
}

/// Wait until all services' slices and Endpoints list exactly `want`; the time since `start`
/// at which each got there (slices, Endpoints).
async fn converge(
    slices: &Store<EndpointSlice>,
    eps: &Store<Endpoints>,
    want: &BTreeSet<String>,
    start: Instant,
    what: &str,
) -> (Duration, Duration) {
    let deadline = start + WAIT;
    let (mut slices_done, mut eps_done) = (None, None);
    loop {
        if slices_done.is_none() && agreeing(&slice_ips(slices), want) == SERVICES {
            slices_done = Some(start.elapsed());
        }
        if eps_done.is_none() && agreeing(&endpoints_ips(eps), want) == SERVICES {
            eps_done = Some(start.elapsed());
        }
        if let (Some(s), Some(e)) = (slices_done, eps_done) {
            return (s, e);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: after {WAIT:?} only {} of {SERVICES} services have slices with {want:?} \
             and {} have Endpoints with them",
            agreeing(&slice_ips(slices), want),
            agreeing(&endpoints_ips(eps), want),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_services_follow_one_pod_relabel() {
    let c = common::TestCluster::start("endpoints,endpointslice").await;
    let _node = c.add_node("n1", "8", "16Gi", 110).await;
    let namespaces: Api<Namespace> = c.cluster_api();
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await
        .unwrap();
    let (slices, slices_watch) = cache::<EndpointSlice>(&c.client);
    let (eps, eps_watch) = cache::<Endpoints>(&c.client);
    // Stopped when the test ends, passing or not.
    let _watches = (AbortOnDrop(slices_watch), AbortOnDrop(eps_watch));

    let pods: Api<Pod> = c.api(NS);
    for i in 0..PODS {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": format!("echo-pod-{i}"), "labels": {"app": "echo"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "echo",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let ips: BTreeMap<String, String> = c
        .wait_for("pods running with IPs", Duration::from_secs(30), || async {
            let ips: BTreeMap<String, String> = c
                .pods(NS, "app=echo")
                .await
                .into_iter()
                .filter_map(|p| {
                    let ip = p.status?.pod_ip?;
                    Some((p.metadata.name?, ip))
                })
                .collect();
            (ips.len() == PODS).then_some(ips)
        })
        .await;
    let all: BTreeSet<String> = ips.values().cloned().collect();

    let services: Api<Service> = c.api(NS);
    let start = Instant::now();
    futures::stream::iter(0..SERVICES)
        .map(|i| {
            let services = services.clone();
            async move {
                let svc = serde_json::from_value(json!({
                    "metadata": {"name": service_name(i)},
                    "spec": {"selector": {"app": "echo"},
                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
                }))
                .unwrap();
                services.create(&PostParams::default(), &svc).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let (slices_first, eps_first) = converge(&slices, &eps, &all, start, "first sync").await;
    eprintln!(
        "{SERVICES} services created and synced: slices after {:.2} s, Endpoints after {:.2} s",
        slices_first.as_secs_f64(),
        eps_first.as_secs_f64()
    );

    // Churn: one pod leaves every service…
    let moved = "echo-pod-0";
    let without: BTreeSet<String> = ips
        .iter()
        .filter(|(name, _)| name.as_str() != moved)
        .map(|(_, ip)| ip.clone())
        .collect();
    let relabel = |app: &'static str| {
        let pods = pods.clone();
        async move {
            pods.patch(
                moved,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {"app": app}}})),
            )
            .await
            .unwrap();
        }
    };
    let start = Instant::now();
    relabel("elsewhere").await;
    let (slices_out, eps_out) = converge(&slices, &eps, &without, start, "pod out").await;
    eprintln!(
        "one pod relabelled out of {SERVICES} services: slices after {:.2} s, Endpoints after {:.2} s",
        slices_out.as_secs_f64(),
        eps_out.as_secs_f64()
    );
    // …and comes back.
    let start = Instant::now();
    relabel("echo").await;
    let (slices_in, eps_in) = converge(&slices, &eps, &all, start, "pod back").await;
    eprintln!(
        "one pod relabelled back into {SERVICES} services: slices after {:.2} s, Endpoints after {:.2} s",
        slices_in.as_secs_f64(),
        eps_in.as_secs_f64()
    );

    // One slice per service (three endpoints fit in one), each owned by its service.
    let per_service = slices
        .state()
        .iter()
        .filter_map(|s| {
            s.metadata
                .labels
                .as_ref()?
                .get("kubernetes.io/service-name")
                .cloned()
        })
        .fold(BTreeMap::<String, usize>::new(), |mut m, svc| {
            *m.entry(svc).or_default() += 1;
            m
        });
    assert_eq!(per_service.len(), SERVICES);
    assert!(per_service.values().all(|n| *n == 1), "{per_service:?}");
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
