//! Shared informers: one watch and one reflector cache per type, read by every controller
//! and the scheduler, with change notifications for those that subscribe before the start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::queue::{Error, Result};

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

    /// The cache (empty until the first list has been applied; see [`cache_ready`]).
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

    pub fn start(&self, tasks: &mut JoinSet<()>) {
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
    pub config_maps: Informer<ConfigMap>,
    pub certificate_signing_requests: Informer<CertificateSigningRequest>,
    pub pdbs: Informer<PodDisruptionBudget>,
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
            config_maps: Informer::new(Api::all(client.clone())),
            certificate_signing_requests: Informer::new(Api::all(client.clone())),
            pdbs: Informer::new(Api::all(client.clone())),
        }
    }

    /// Start every watch; subscriptions must all have been taken by then.
    pub fn start(&self, tasks: &mut JoinSet<()>) {
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
        self.config_maps.start(tasks);
        self.certificate_signing_requests.start(tasks);
        self.pdbs.start(tasks);
    }
}

/// Wait until an informer's first list is in its cache. kube's `Store::wait_until_ready` sits
/// on a oneshot channel, which wakes only the last of several concurrent waiters and leaves
/// the others pending for ever; so every waiter here polls instead.
pub async fn cache_ready<K>(store: &Store<K>) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    use futures::FutureExt;
    loop {
        match store.wait_until_ready().now_or_never() {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(Error::other(format!("informer stopped: {e}"))),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
