//! The controllers and the scheduler: kube-controller-manager and kube-scheduler in one
//! process, each a client of the API server (never of the store).
//!
//! One runtime serves them all ([`runtime`]): shared informers (a watcher + relist feeding a
//! reflector cache per type, [`Informers`]), kube's `Controller` as the rate-limited work queue
//! with periodic resync, and an event recorder ([`events`]). Every controller is a small
//! reconcile function in its own module. [`leader`] runs the lot under leader election.

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub use skiff_common::events;
pub mod gc;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod runtime;
pub mod serviceaccount;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use self::events::EventRecorder;
use crate::apiserver::admission::Ipv4Cidr;

/// Every component `--controllers` can name, in start order.
pub const COMPONENTS: &[&str] = &[
    "scheduler",
    "serviceaccount",
    "namespace",
    "nodeipam",
    "nodelifecycle",
    "replicaset",
    "deployment",
    "daemonset",
    "job",
    "endpoints",
    "endpointslice",
    "garbagecollector",
];

/// Which components run: `*` for all, `name` to add one, `-name` to drop one
/// (kube-controller-manager's `--controllers` syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enabled(BTreeSet<&'static str>);

impl Enabled {
    pub fn parse(spec: &str) -> Result<Enabled, String> {
        let mut set = BTreeSet::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (remove, name) = match item.strip_prefix('-') {
                Some(n) => (true, n),
                None => (false, item),
            };
            let names: Vec<&'static str> = if name == "*" {
                COMPONENTS.to_vec()
            } else {
                vec![*COMPONENTS.iter().find(|c| **c == name).ok_or_else(|| {
                    format!(
                        "unknown controller {name:?}; known: {}",
                        COMPONENTS.join(", ")
                    )
                })?]
            };
            for n in names {
                if remove {
                    set.remove(n);
                } else {
                    set.insert(n);
                }
            }
        }
        Ok(Enabled(set))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Settings shared by the controllers (flags of `skiff-control`).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub enabled: Enabled,
    /// Pod network; node IPAM gives each node a `/node_cidr_mask_size` of it.
    pub cluster_cidr: Ipv4Cidr,
    pub node_cidr_mask_size: u8,
    /// A node whose Lease is not renewed for this long becomes Ready=Unknown.
    pub node_monitor_grace_period: Duration,
    /// Pods on a NotReady/Unknown node are evicted after this long.
    pub pod_eviction_timeout: Duration,
    /// Every object is reconciled at least this often, even without changes.
    pub resync_period: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            enabled: Enabled::parse("*").expect("valid"),
            cluster_cidr: Ipv4Cidr::parse("10.244.0.0/16").expect("valid"),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            resync_period: Duration::from_secs(300),
        }
    }
}

/// One shared watch + cache of a type: a reflector store everybody reads, and change
/// notifications for the controllers that subscribe before [`Informers::start`].
pub struct Informer<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    store: Store<K>,
    writer: Mutex<Option<reflector::store::Writer<K>>>,
    /// Deletions, which kube's subscriber streams do not carry (they only announce objects
    /// that still exist). Sent after the cache has dropped the object.
    deleted: tokio::sync::broadcast::Sender<Arc<K>>,
}

impl<K> Informer<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn new(api: Api<K>) -> Self {
        // Subscribers that fall this far behind make the watcher wait (back-pressure).
        let (store, writer) = reflector::store_shared(4096);
        let (deleted, _) = tokio::sync::broadcast::channel(1024);
        Informer {
            api,
            store,
            writer: Mutex::new(Some(writer)),
            deleted,
        }
    }

    /// Objects as they were when deleted. A receiver that lags loses deletions (the
    /// periodic resync still reconciles everything).
    pub fn deletions(&self) -> impl futures::Stream<Item = Arc<K>> + Send + 'static {
        use futures::StreamExt;
        tokio_stream::wrappers::BroadcastStream::new(self.deleted.subscribe())
            .filter_map(|r| futures::future::ready(r.ok()))
    }

    /// The cache (empty until the first list has been applied; see `runtime::cache_ready`).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Change notifications; only before the informers start.
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|w| w.subscribe())
            .expect("subscribe to informers before they start")
    }

    fn start(&self, tasks: &mut JoinSet<()>) {
        let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let api = self.api.clone();
        let deleted = self.deleted.clone();
        tasks.spawn(async move {
            use futures::StreamExt;
            // The watcher re-lists by itself after errors and 410s (with back-off).
            watcher(api, watcher::Config::default().page_size(500))
                .default_backoff()
                .reflect_shared(writer)
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::Delete(obj)) => {
                            // No receivers is fine.
                            let _ = deleted.send(Arc::new(obj));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "informer watch error"),
                    }
                    futures::future::ready(())
                })
                .await;
        });
    }
}

/// The shared informers of every type the controllers read.
pub struct Informers {
    pub pods: Informer<Pod>,
    pub nodes: Informer<Node>,
    pub namespaces: Informer<Namespace>,
    pub services: Informer<Service>,
    pub endpoint_slices: Informer<EndpointSlice>,
    pub service_accounts: Informer<ServiceAccount>,
    pub replica_sets: Informer<ReplicaSet>,
    pub deployments: Informer<Deployment>,
    pub daemon_sets: Informer<DaemonSet>,
    pub jobs: Informer<Job>,
    pub leases: Informer<Lease>,
}

impl Informers {
    pub fn new(client: &Client) -> Informers {
        Informers {
            pods: Informer::new(Api::all(client.clone())),
            nodes: Informer::new(Api::all(client.clone())),
            namespaces: Informer::new(Api::all(client.clone())),
            services: Informer::new(Api::all(client.clone())),
            endpoint_slices: Informer::new(Api::all(client.clone())),
            service_accounts: Informer::new(Api::all(client.clone())),
            replica_sets: Informer::new(Api::all(client.clone())),
            deployments: Informer::new(Api::all(client.clone())),
            daemon_sets: Informer::new(Api::all(client.clone())),
            jobs: Informer::new(Api::all(client.clone())),
            // Node heartbeats live in kube-node-lease.
            leases: Informer::new(Api::namespaced(client.clone(), "kube-node-lease")),
        }
    }

    fn start(&self, tasks: &mut JoinSet<()>) {
        self.pods.start(tasks);
        self.nodes.start(tasks);
        self.namespaces.start(tasks);
        self.services.start(tasks);
        self.endpoint_slices.start(tasks);
        self.service_accounts.start(tasks);
        self.replica_sets.start(tasks);
        self.deployments.start(tasks);
        self.daemon_sets.start(tasks);
        self.jobs.start(tasks);
        self.leases.start(tasks);
    }
}

/// What every reconcile function gets.
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub config: ControllerConfig,
    /// Events, as `kube-controller-manager` (the scheduler has its own recorder).
    pub recorder: EventRecorder,
    pub backoff: runtime::Backoff,
}

/// Run every enabled controller (and the scheduler) until the returned future is dropped.
/// Call it only while holding leadership.
pub async fn run(client: Client, config: ControllerConfig) {
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "kube-controller-manager"),
        informers: Informers::new(&client),
        backoff: runtime::Backoff::default(),
        client,
        config,
    });
    let mut tasks = JoinSet::new();
    // Subscriptions happen inside each `spawn_*` before the informers start.
    let enabled = ctx.config.enabled.clone();
    for name in COMPONENTS {
        if !enabled.contains(name) {
            continue;
        }
        let ctx = ctx.clone();
        match *name {
            "scheduler" => crate::scheduler::spawn(ctx, &mut tasks),
            "serviceaccount" => serviceaccount::spawn(ctx, &mut tasks),
            "namespace" => namespace::spawn(ctx, &mut tasks),
            "nodeipam" => nodeipam::spawn(ctx, &mut tasks),
            "nodelifecycle" => nodelifecycle::spawn(ctx, &mut tasks),
            "replicaset" => replicaset::spawn(ctx, &mut tasks),
            "deployment" => deployment::spawn(ctx, &mut tasks),
            "daemonset" => daemonset::spawn(ctx, &mut tasks),
            "job" => job::spawn(ctx, &mut tasks),
            "endpoints" => endpoints::spawn(ctx, &mut tasks),
            "endpointslice" => endpointslice::spawn(ctx, &mut tasks),
            "garbagecollector" => gc::spawn(ctx, &mut tasks),
            other => tracing::warn!(controller = other, "no such controller"),
        }
        tracing::info!(controller = name, "started");
    }
    ctx.informers.start(&mut tasks);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            tracing::error!(error = %e, "a controller task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_flag_like_kube_controller_manager() {
        let all = Enabled::parse("*").unwrap();
        assert!(all.contains("job") && all.contains("scheduler"));
        let no_job = Enabled::parse("*,-job").unwrap();
        assert!(!no_job.contains("job") && no_job.contains("replicaset"));
        let some = Enabled::parse("replicaset,deployment").unwrap();
        assert!(some.contains("deployment") && !some.contains("scheduler"));
        assert!(Enabled::parse("").unwrap().is_empty());
        assert!(Enabled::parse("*,-bogus").is_err());
    }
}
