//! Shared harness for the controller and scheduler tests: an in-process API server on the
//! embedded store with the controllers running, and fake nodes standing in for kubelets
//! (a Node object kept Ready, a Lease renewed, and pods bound to the node made Running/Ready
//! and removed when deleted).

#![allow(dead_code)]

pub mod token_users;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::manager::{self, ControllerConfig, Enabled};
use skiff_control::store::Store;
use skiff_control::store::embedded::EmbeddedStore;

pub struct TestCluster {
    pub client: Client,
    pub server: Option<ApiServer>,
    pub store: Arc<dyn Store>,
    controllers: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Controller settings with test-sized timings. The serviceaccount controller always runs:
/// pods are admitted only once their namespace's `default` account exists, as in kube.
pub fn test_config(controllers: &str) -> ControllerConfig {
    ControllerConfig {
        enabled: Enabled::parse(&format!("serviceaccount,{controllers}")).unwrap(),
        node_monitor_grace_period: Duration::from_secs(4),
        pod_eviction_timeout: Duration::from_secs(3),
        resync_period: Duration::from_secs(30),
        ..ControllerConfig::default()
    }
}

impl TestCluster {
    /// API server plus the named controllers (`"*"`, `"replicaset,scheduler"`, …).
    pub async fn start(controllers: &str) -> TestCluster {
        Self::start_with(test_config(controllers)).await
    }

    pub async fn start_with(config: ControllerConfig) -> TestCluster {
        Self::start_with_api(config, |_| {}).await
    }

    /// Like [`TestCluster::start_with`], with the API server's settings adjusted by `api`.
    pub async fn start_with_api(
        mut config: ControllerConfig,
        api: impl FnOnce(&mut ApiConfig),
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        // The CSR signers sign with the CA the API server keeps in its data dir.
        config
            .cluster_signing_dir
            .get_or_insert_with(|| dir.path().to_path_buf());
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let mut api_config = ApiConfig::new(dir.path().to_path_buf());
        api_config.secure_port = 0;
        api(&mut api_config);
        let server = ApiServer::start(api_config, store.clone()).await.unwrap();
        let client = client_for(&server.kubeconfig).await;
        let mut config = config;
        if config.root_ca.is_empty() {
            config.root_ca = server.ca_pem.clone();
        }
        let identities = manager::Identities::from_kubeconfigs(
            &server.controller_manager_kubeconfig,
            &server.scheduler_kubeconfig,
        )
        .await
        .unwrap();
        let controllers =
            (!config.enabled.is_empty()).then(|| tokio::spawn(manager::run(identities, config)));
        TestCluster {
            client,
            server: Some(server),
            store,
            controllers,
            _dir: dir,
        }
    }

    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn cluster_api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    /// Stop the controllers (the API server keeps serving).
    pub fn stop_controllers(&mut self) {
        if let Some(c) = self.controllers.take() {
            c.abort();
        }
    }

    /// A Ready node with `cpu` cores, `memory` and room for `pods` pods, kept alive by a fake
    /// kubelet until the returned handle is dropped or stopped.
    pub async fn add_node(&self, name: &str, cpu: &str, memory: &str, pods: u32) -> FakeNode {
        self.add_node_with(name, cpu, memory, pods, BTreeMap::new())
            .await
    }

    pub async fn add_node_with(
        &self,
        name: &str,
        cpu: &str,
        memory: &str,
        pods: u32,
        labels: BTreeMap<String, String>,
    ) -> FakeNode {
        let nodes: Api<Node> = self.cluster_api();
        let mut all_labels = labels;
        all_labels.insert("kubernetes.io/hostname".into(), name.into());
        all_labels.insert("kubernetes.io/os".into(), "linux".into());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": all_labels},
            "spec": {},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let resources = json!({"cpu": cpu, "memory": memory, "pods": pods.to_string()});
        let status = json!({"status": {
            "capacity": resources, "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": format!("192.168.100.{}", (name.len() * 7 + name.bytes().map(u32::from).sum::<u32>() as usize) % 250 + 2)},
                          {"type": "Hostname", "address": name}],
            "conditions": [ready_condition("True")],
            "nodeInfo": {"kubeletVersion": "v1.33.0-skiff", "osImage": "test", "kernelVersion": "6", "containerRuntimeVersion": "fake://1",
                "architecture": "amd64", "operatingSystem": "linux", "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": ""},
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        FakeNode::start(self.client.clone(), name)
    }

    /// Poll `check` every 50 ms until it yields `Some`, failing the test with `what` after
    /// `timeout`.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pods in `ns` matching `labels` (a label selector string).
    pub async fn pods(&self, ns: &str, labels: &str) -> Vec<Pod> {
        let api: Api<Pod> = self.api(ns);
        api.list(&ListParams::default().labels(labels))
            .await
            .unwrap()
            .items
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop_controllers();
        if let Some(server) = self.server.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(server.shutdown());
        }
    }
}

pub async fn client_for(kubeconfig: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub fn ready_condition(status: &str) -> serde_json::Value {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    json!({"type": "Ready", "status": status, "reason": "KubeletReady", "message": "fake kubelet",
        "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// A stand-in kubelet: renews the node's Lease every second and runs the pods bound to the
/// node in the API's eyes (Running, Ready, a pod IP), deleting them when their deletion is
/// requested, as a kubelet confirms a graceful deletion.
pub struct FakeNode {
    pub name: String,
    heartbeat: Arc<AtomicBool>,
    /// Whether new pods on this node become Ready (tests may hold them unready).
    pub pods_ready: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeNode {
    fn start(client: Client, name: &str) -> FakeNode {
        let heartbeat = Arc::new(AtomicBool::new(true));
        let pods_ready = Arc::new(AtomicBool::new(true));
        let lease_task = tokio::spawn(renew_lease(
            client.clone(),
            name.to_string(),
            heartbeat.clone(),
        ));
        let pods_task = tokio::spawn(run_pods(
            client,
            name.to_string(),
            pods_ready.clone(),
            heartbeat.clone(),
        ));
        FakeNode {
            name: name.to_string(),
            heartbeat,
            pods_ready,
            tasks: vec![lease_task, pods_task],
        }
    }

    /// The kubelet dies: no more lease renewals, no more pod updates.
    pub fn stop_heartbeats(&self) {
        self.heartbeat.store(false, Ordering::SeqCst);
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The fake kubelet's node Lease, renewed every second while its heartbeat is on.
async fn renew_lease(client: Client, name: String, heartbeat: Arc<AtomicBool>) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        if heartbeat.load(Ordering::SeqCst) {
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
            let r = leases
                .patch(
                    &name,
                    &PatchParams::apply("fake-kubelet"),
                    &Patch::Apply(&lease),
                )
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "fake lease renewal failed");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The fake kubelet's pods: each new one bound here is reported Running (Ready as
/// `pods_ready` says) with an IP of its own; a deleted one is removed at once.
async fn run_pods(
    client: Client,
    name: String,
    pods_ready: Arc<AtomicBool>,
    heartbeat: Arc<AtomicBool>,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={name}"));
    let mut stream = watcher(pods, cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut ip = 2u32;
    while let Some(Ok(pod)) = stream.next().await {
        if !heartbeat.load(Ordering::SeqCst) {
            // A dead kubelet does nothing.
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pname = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(
                    &pname,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await;
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if matches!(phase.as_deref(), Some("Running" | "Succeeded" | "Failed")) {
            continue;
        }
        ip += 1;
        let status = running_status(&pod, ip, pods_ready.load(Ordering::SeqCst));
        let _ = api
            .patch_status(&pname, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }
}

/// The status patch of a pod the fake kubelet started: Running, with the `ip`-th address.
fn running_status(pod: &Pod, ip: u32, ready: bool) -> serde_json::Value {
    let ready = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| {
                    json!({
            "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
            "ready": ready == "True", "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": now}}})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"status": {
        "phase": "Running", "podIP": format!("10.244.{}.{}", ip / 250, ip % 250 + 2),
        "podIPs": [{"ip": format!("10.244.{}.{}", ip / 250, ip % 250 + 2)}],
        "hostIP": "192.168.100.2", "startTime": now,
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": containers,
    }})
}

/// Set a pod's Ready condition (what a readiness probe flip would do).
pub async fn set_pod_ready(client: &Client, ns: &str, name: &str, ready: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({"status": {"conditions": [
        {"type": "Ready", "status": status, "lastTransitionTime": now},
        {"type": "ContainersReady", "status": status, "lastTransitionTime": now}]}});
    // Strategic merge keys conditions by type.
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
}

/// Stands in for the scheduler: binds every pending pod to `node`.
pub fn bind_all(client: Client, node: &str) -> tokio::task::JoinHandle<()> {
    let node = node.to_string();
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        watcher(pods, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .for_each_concurrent(32, |pod| {
                let client = client.clone();
                let node = node.clone();
                async move {
                    let Ok(pod) = pod else { return };
                    let unbound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_none());
                    if !unbound || pod.metadata.deletion_timestamp.is_some() {
                        return;
                    }
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let api: Api<Pod> = Api::namespaced(client, &ns);
                    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                    let r: Result<serde_json::Value, _> = api
                        .create_subresource("binding", &name, &PostParams::default(), &binding)
                        .await;
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "bind failed");
                    }
                }
            })
            .await;
    })
}

/// A raw request through `client`: the status code and the JSON body (Null if not JSON).
pub async fn raw_request(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let code = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        code,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A finished command's stdout if it succeeded, else its stderr (how kubectl reports errors).
pub fn stdout_or_stderr(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
