//! Pods bound to this node: one worker per pod drives its sandbox and containers toward the
//! spec and reports status, the kubelet's pod-worker model. The manager watches the API
//! (`spec.nodeName=<node>`), hands each pod to its worker, and removes what is on disk for
//! pods that no longer exist.

pub mod env;
pub mod hooks;
pub mod logsource;
pub mod probe;
pub mod resolv;
pub mod sandbox;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::image::ImageStore;
use crate::network::ipam::Ipam;
use crate::network::{Ipv4Net, NetworkEdge};
use crate::proxy::drain::BackendDrain;
use crate::runtime::Runtime;
use crate::runtime::edge::RuntimeEdge;
use skiff_common::events::EventRecorder;

/// What every pod worker shares.
pub struct Agent {
    pub cfg: AgentConfig,
    pub client: Client,
    /// Where pods live on disk.
    pub runtime: Runtime,
    /// Processes, netns pins and cgroups: the kernel under the runtime.
    pub edge: Arc<dyn RuntimeEdge>,
    pub network: Arc<dyn NetworkEdge>,
    pub ipam: Ipam,
    pub pod_cidr: Ipv4Net,
    pub images: ImageStore,
    pub services: Store<Service>,
    pub recorder: EventRecorder,
    /// (namespace, name) → uid of the pods this node runs, for the log server.
    pub pods_by_name: Mutex<HashMap<(String, String), Arc<Pod>>>,
    /// The service proxy's drain gate: a pod's network is torn down only once this node's
    /// dataplane no longer sends new connections to its IP (or a bound has passed).
    pub drain: Arc<BackendDrain>,
}

/// Object `name` of `namespace`; `None` when it is missing and `optional`, the kubelet's
/// `<kind> "name" not found` when it is missing and required (env sources and volumes alike).
pub async fn optional_object<K>(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    optional: Option<bool>,
) -> anyhow::Result<Option<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await? {
        Some(obj) => Ok(Some(obj)),
        None if optional == Some(true) => Ok(None),
        None => anyhow::bail!("{kind} \"{name}\" not found"),
    }
}

impl Agent {
    /// A pod this node runs, by namespace and name (the log and exec endpoints' lookup), or
    /// kubelet's answer that it has none.
    pub fn running_pod(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Arc<Pod>, crate::server::LogLookupError> {
        self.pods_by_name
            .lock()
            .ok()
            .and_then(|m| m.get(&(namespace.to_string(), pod.to_string())).cloned())
            .ok_or_else(|| {
                crate::server::LogLookupError::PodNotFound(format!(
                    "pod {namespace}/{pod} is not running on this node"
                ))
            })
    }

    /// An event about a pod, or one of its containers (`field_path` like kubelet's
    /// `spec.containers{web}`).
    pub async fn event(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let mut r: ObjectReference = pod.object_ref(&());
        r.field_path = field_path;
        self.recorder
            .record(
                r,
                if warning { "Warning" } else { "Normal" },
                reason,
                message,
            )
            .await;
    }
}

/// Pod updates for a worker: `None` once the pod is gone from the API.
pub type PodUpdate = Option<Arc<Pod>>;

pub struct PodManager {
    agent: Arc<Agent>,
    workers: HashMap<String, watch::Sender<PodUpdate>>,
    static_rx: Option<tokio::sync::mpsc::Receiver<Vec<Pod>>>,
    static_uids: HashSet<String>,
}

impl PodManager {
    /// `static_rx` delivers the set of static pods whenever the manifests change.
    pub fn new(
        agent: Arc<Agent>,
        static_rx: Option<tokio::sync::mpsc::Receiver<Vec<Pod>>>,
    ) -> PodManager {
        PodManager {
            agent,
            workers: HashMap::new(),
            static_rx,
            static_uids: HashSet::new(),
        }
    }

    fn set_static(&mut self, pods: Vec<Pod>) {
        let uids: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for gone in self
            .static_uids
            .difference(&uids)
            .cloned()
            .collect::<Vec<_>>()
        {
            self.remove(&gone);
        }
        for p in pods {
            self.start_or_update(p);
        }
        self.static_uids = uids;
    }

    /// Watch this node's pods until the process ends.
    pub async fn run(mut self) -> Result<()> {
        let api: Api<Pod> = Api::all(self.agent.client.clone());
        let cfg = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.agent.cfg.node_name));
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut listing: HashSet<String> = HashSet::new();
        let mut first_sync = true;
        loop {
            let ev = match self.static_rx.as_mut() {
                Some(rx) => tokio::select! {
                    ev = stream.next() => ev,
                    set = rx.recv() => {
                        match set {
                            Some(pods) => self.set_static(pods),
                            None => self.static_rx = None,
                        }
                        continue;
                    }
                },
                None => stream.next().await,
            };
            let Some(ev) = ev else { break };
            match ev {
                Ok(Event::Init) => listing.clear(),
                Ok(Event::InitApply(pod)) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        listing.insert(uid);
                    }
                    self.dispatch(pod);
                }
                Ok(Event::InitDone) => {
                    // Pods that vanished while we weren't watching (or while the agent was down).
                    let gone: Vec<String> = self
                        .workers
                        .keys()
                        .filter(|u| !listing.contains(*u) && !self.static_uids.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        self.remove(&uid);
                    }
                    if first_sync {
                        first_sync = false;
                        self.collect_orphans(&listing).await;
                    }
                }
                Ok(Event::Apply(pod)) => self.dispatch(pod),
                Ok(Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        self.remove(uid);
                    }
                }
                Err(e) => tracing::warn!("watching pods: {e}"),
            }
            self.workers.retain(|_, tx| !tx.is_closed());
        }
        Ok(())
    }

    fn dispatch(&mut self, pod: Pod) {
        // Mirror pods stand for static pods, which run from the manifest, not from the API.
        if !is_mirror(&pod) {
            self.start_or_update(pod);
        }
    }

    fn start_or_update(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        if let Ok(mut m) = self.agent.pods_by_name.lock() {
            let key = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            m.insert(key, pod.clone());
        }
        match self.workers.get(&uid) {
            Some(tx) if !tx.is_closed() => {
                let _ = tx.send(Some(pod));
            }
            _ => {
                let (tx, rx) = watch::channel(Some(pod));
                tokio::spawn(worker::PodWorker::new(self.agent.clone(), uid.clone(), rx).run());
                self.workers.insert(uid, tx);
            }
        }
    }

    fn remove(&mut self, uid: &str) {
        if let Some(tx) = self.workers.get(uid) {
            let _ = tx.send(None);
        }
    }

    /// Tear down pods that exist on disk but not in the API (deleted while the agent was down).
    async fn collect_orphans(&self, live: &HashSet<String>) {
        for uid in self.agent.runtime.pod_uids() {
            if live.contains(&uid) || self.static_uids.contains(&uid) {
                continue;
            }
            tracing::info!(pod = %uid, "removing a pod that no longer exists");
            if let Err(e) = worker::teardown_orphan(&self.agent, &uid).await {
                tracing::warn!(pod = %uid, "removing an orphaned pod: {e:#}");
            }
        }
        let mut keep: HashSet<String> = live.clone();
        keep.extend(self.agent.runtime.pod_uids());
        if let Err(e) = self.agent.ipam.release_all_but(&keep) {
            tracing::warn!("releasing orphaned pod IPs: {e:#}");
        }
    }
}

pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
}
