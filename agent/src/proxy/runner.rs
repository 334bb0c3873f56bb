//! The proxy loop: Services and EndpointSlices from the API (reflector caches), turned into
//! a [`ProxyState`] and handed to the dataplane. Changes are batched: after a change, wait a
//! short moment for more (an endpoint flip usually comes with several slice updates), then
//! sync once — like kube-proxy's `minSyncPeriod`, but short, because a dataplane sync here is
//! incremental.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use super::metrics::ProxyMetrics;
use super::model::{self, ProxyState};

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncStats {
    pub services: usize,
    pub backends: usize,
    /// Dataplane writes (map entries or iptables chains), for the log.
    pub writes: usize,
}

/// A service dataplane (eBPF maps or iptables rules).
#[async_trait]
pub trait Dataplane: Send {
    fn mode(&self) -> &'static str;
    /// Make the kernel match `state`, writing only what changed.
    async fn sync(&mut self, state: &ProxyState) -> Result<SyncStats>;
}

/// How long to wait after a change for more changes before syncing.
const BATCH: Duration = Duration::from_millis(5);
/// Full resync even without changes (repairs anything changed behind our back).
const RESYNC: Duration = Duration::from_secs(60);

pub async fn run(
    client: Client,
    node: String,
    mut dataplane: Box<dyn Dataplane>,
    metrics: Arc<ProxyMetrics>,
) {
    let changed = Arc::new(Notify::new());
    let services: Store<Service> = spawn_reflector(Api::all(client.clone()), changed.clone());
    let slices: Store<EndpointSlice> = spawn_reflector(Api::all(client), changed.clone());
    let _ = tokio::join!(services.wait_until_ready(), slices.wait_until_ready());
    tracing::info!(mode = dataplane.mode(), "service proxy started");
    let mut last: Option<ProxyState> = None;
    let mut failures = 0u32;
    loop {
        let start = Instant::now();
        let svcs = services.state();
        let sls = slices.state();
        let state = model::build(
            svcs.iter().map(|s| s.as_ref()),
            sls.iter().map(|s| s.as_ref()),
            &node,
        );
        if last.as_ref() != Some(&state) || failures > 0 {
            match dataplane.sync(&state).await {
                Ok(stats) => {
                    let took = start.elapsed();
                    metrics.record_sync(&stats, took);
                    tracing::debug!(
                        services = stats.services,
                        backends = stats.backends,
                        writes = stats.writes,
                        ?took,
                        "synced the service dataplane"
                    );
                    last = Some(state);
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    metrics.record_error();
                    tracing::warn!("syncing the service dataplane: {e:#}");
                }
            }
        }
        let wait = if failures > 0 {
            Duration::from_millis(100 * u64::from(failures.min(50)))
        } else {
            RESYNC
        };
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(BATCH).await,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn spawn_reflector<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |ev| {
            if ev.is_ok() {
                changed.notify_one();
            }
            futures::future::ready(())
        });
    tokio::spawn(stream);
    store
}
