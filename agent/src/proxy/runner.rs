//! The proxy loop: Services and EndpointSlices from the API (reflector caches), turned into
//! a [`ProxyState`] and handed to the dataplane. Changes are batched: after a change, wait a
//! short moment for more (an endpoint flip usually comes with several slice updates), then
//! sync once — like kube-proxy's `minSyncPeriod`, but short, because a sync here is
//! incremental: the watch events name the Services that changed ([`tracker`]), only their
//! entries of the state are rebuilt, and the dataplane is told which service ports to look at.
//! The first sync, the periodic resync and the sync after a failure compare everything.
//!
//! A BPF map that fills up is reported once as a Warning Event on the Node (reason
//! [`BPF_MAP_FULL`]), and again only after it had room and filled up again; the failed sync is
//! retried with back-off meanwhile.
//!
//! Pod workers about to tear down a pod's network wait on the [`BackendDrain`] gate; after
//! every successful sync (and when a waiter registers) the synced state is checked for the
//! IPs waited on — only while someone waits.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use skiff_common::events::EventRecorder;
use tokio::sync::mpsc;

use super::dataplane::{Dataplane, FullMap, SyncReport};
use super::drain::BackendDrain;
use super::healthcheck::HealthChecks;
use super::metrics::ProxyMetrics;
use super::model::{ProxyState, ServiceKey, ServicePortName};
use super::tracker::{self, Change, Tracker, Update};

/// kube-proxy's `service.kubernetes.io/service-proxy-name`: a Service carrying it (whatever
/// its value) is served by another proxy, not this one.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label the EndpointSlice controller puts on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// Where the proxy reports conditions an operator has to act on.
#[async_trait]
pub trait ProxyEvents: Send + Sync {
    async fn warning(&self, reason: &str, message: String);
}

/// Events about this node's dataplane, on the Node object (as kubelet and Cilium report node
/// conditions): `kubectl describe node` and `kubectl get events` show them.
pub struct NodeEvents {
    recorder: EventRecorder,
    node: ObjectReference,
}

impl NodeEvents {
    pub fn new(client: Client, node: &str) -> NodeEvents {
        NodeEvents {
            recorder: EventRecorder::new(client, "skiff-proxy").with_host(node),
            // kubelet's node reference: the node name doubles as the UID, so the event needs
            // no lookup of the Node (kubectl describe node searches by both).
            node: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.into()),
                uid: Some(node.into()),
                ..Default::default()
            },
        }
    }
}

#[async_trait]
impl ProxyEvents for NodeEvents {
    async fn warning(&self, reason: &str, message: String) {
        self.recorder
            .record(self.node.clone(), "Warning", reason, message)
            .await;
    }
}

/// Event reason for a BPF map that has no room for what the proxy must program.
pub const BPF_MAP_FULL: &str = "BPFMapFull";

/// Which maps were already reported full, so a condition is reported once, not on every
/// retry, and again after it cleared and came back.
#[derive(Debug, Default)]
pub struct FullMapReports {
    reported: std::collections::BTreeSet<&'static str>,
}

impl FullMapReports {
    /// The maps to report after a sync with this result.
    pub fn observe(&mut self, result: &Result<SyncReport>) -> Vec<FullMap> {
        let full = match result {
            Ok(report) => &report.full_maps,
            // The sync failed before it ran through: nothing is known about the maps.
            Err(_) => return Vec::new(),
        };
        self.reported.retain(|m| full.iter().any(|f| f.map == *m));
        full.iter()
            .filter(|f| self.reported.insert(f.map))
            .cloned()
            .collect()
    }
}

/// One sync step: the dataplane, its metrics and the reporting of full maps.
pub struct Syncer {
    dataplane: Box<dyn Dataplane>,
    metrics: Arc<ProxyMetrics>,
    events: Arc<dyn ProxyEvents>,
    full: FullMapReports,
    drain: Option<Arc<BackendDrain>>,
    health: Option<Arc<HealthChecks>>,
}

impl Syncer {
    pub fn new(
        dataplane: Box<dyn Dataplane>,
        metrics: Arc<ProxyMetrics>,
        events: Arc<dyn ProxyEvents>,
    ) -> Syncer {
        Syncer {
            dataplane,
            metrics,
            events,
            full: FullMapReports::default(),
            drain: None,
            health: None,
        }
    }

    /// Tell the health checks when a sync is queued and what every successful one synced.
    pub fn with_health(mut self, health: Option<Arc<HealthChecks>>) -> Syncer {
        self.health = health;
        self
    }

    /// Tell `drain` about every successful sync.
    pub fn with_drain(mut self, drain: Arc<BackendDrain>) -> Syncer {
        self.drain = Some(drain);
        self
    }

    /// Check the drain gate's waiters against `state`, the state the dataplane last synced
    /// successfully (a waiter registered since). No work without waiters.
    pub fn check_drain(&self, state: &ProxyState) {
        if let Some(drain) = &self.drain {
            drain.synced(state);
        }
    }

    pub fn mode(&self) -> &'static str {
        self.dataplane.mode()
    }

    /// Sync `state` (`changed`: see [`Dataplane::sync`]); `started` is when building it
    /// began (for the sync duration). Returns whether the dataplane now matches it.
    pub async fn sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
        started: Instant,
    ) -> bool {
        let build = started.elapsed();
        if let Some(h) = &self.health {
            h.queued();
        }
        let result = self.dataplane.sync(state, changed).await;
        for f in self.full.observe(&result) {
            let message = f.message();
            tracing::error!("{message}");
            // An event is worth less than the syncs it would delay.
            let events = self.events.clone();
            tokio::spawn(async move { events.warning(BPF_MAP_FULL, message).await });
        }
        let result = result.and_then(|report| match report.incomplete {
            None => Ok(report.stats),
            Some(e) => Err(e),
        });
        let synced = match result {
            Ok(stats) => {
                let took = started.elapsed();
                self.metrics.record_sync(&stats, took, build);
                tracing::debug!(
                    services = stats.services,
                    backends = stats.backends,
                    writes = stats.writes,
                    ?took,
                    "synced the service dataplane"
                );
                log_backends(state, changed);
                self.check_drain(state);
                if let Some(h) = &self.health {
                    h.synced(state);
                }
                true
            }
            Err(e) => {
                self.metrics.record_error();
                tracing::warn!("syncing the service dataplane: {e:#}");
                false
            }
        };
        // Map fill after every sync, also a failed one (a full map is when it matters); not
        // part of the sync's duration.
        let fill = self.dataplane.map_fill();
        if !fill.is_empty() {
            self.metrics.set_map_fill(
                fill.into_iter()
                    .map(|m| (m.name, m.entries as u64, u64::from(m.max_entries)))
                    .collect(),
            );
        }
        synced
    }
}

/// At debug level, the backends new connections of each changed service port now go to: the
/// timeline of a rollout on this node (when a terminating pod stopped being chosen).
fn log_backends(state: &ProxyState, changed: Option<&BTreeSet<ServicePortName>>) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    for name in changed.into_iter().flatten() {
        let backends: Vec<String> = state
            .get(name)
            .map(|sp| sp.usable().iter().map(|e| e.ip.to_string()).collect())
            .unwrap_or_default();
        tracing::debug!(service = %name, ?backends, "service backends programmed");
    }
}

/// How long to wait after a change for more changes before syncing.
const BATCH: Duration = Duration::from_millis(5);
/// Full resync even without changes (repairs anything changed behind our back); the proxy's
/// sync period (its healthz fails when a change waits twice as long).
pub const RESYNC: Duration = Duration::from_secs(60);

/// Run the proxy until the future is dropped (which also stops its watches), with a drain
/// gate nobody waits on.
pub async fn run(
    client: Client,
    node: String,
    dataplane: Box<dyn Dataplane>,
    metrics: Arc<ProxyMetrics>,
) {
    run_with_drain(
        client,
        node,
        dataplane,
        metrics,
        Arc::new(BackendDrain::new()),
        None,
        None,
    )
    .await
}

/// [`run`], telling `drain` (shared with the pod workers) what the dataplane holds and
/// `health` about syncs, and sending `kube-system/kube-dns` to `local_dns` (this node's DNS
/// server) when given.
pub async fn run_with_drain(
    client: Client,
    node: String,
    dataplane: Box<dyn Dataplane>,
    metrics: Arc<ProxyMetrics>,
    drain: Arc<BackendDrain>,
    local_dns: Option<std::net::Ipv4Addr>,
    health: Option<Arc<HealthChecks>>,
) {
    let events = Arc::new(NodeEvents::new(client.clone(), &node));
    let mut syncer = Syncer::new(dataplane, metrics.clone(), events)
        .with_drain(drain.clone())
        .with_health(health);
    let start = Instant::now();
    let (changes, mut changed) = mpsc::unbounded_channel();
    let (objects, this_node, _watches) = watch_objects(client, &node, changes).await;
    metrics.record_initial_list(start.elapsed());
    tracing::info!(mode = syncer.mode(), listed = ?start.elapsed(), "service proxy started");
    let mut tracker = Tracker::new(&node).with_node_local_dns(local_dns);
    if let Some(n) = this_node {
        tracker.record(Change::node(&n));
    }
    // Whether the dataplane matches the tracker's state; a failed sync is retried in full.
    let mut synced = false;
    let mut failures = 0u32;
    let mut resync = false;
    // A drain waiter registered: check it against the synced state.
    let mut check_drain = false;
    loop {
        while let Ok(c) = changed.try_recv() {
            tracker.record(c);
        }
        let start = Instant::now();
        let update = if resync {
            // Anything the change tracking missed shows up here.
            if tracker.rebuild(&objects) {
                Update::Full
            } else {
                Update::Ports(BTreeSet::new())
            }
        } else {
            tracker.update(&objects)
        };
        resync = false;
        let changed_ports = match &update {
            Update::Ports(p) if synced => Some(p),
            _ => None,
        };
        let needed = !synced || changed_ports.is_none_or(|p| !p.is_empty());
        if needed {
            if syncer.sync(tracker.state(), changed_ports, start).await {
                synced = true;
                failures = 0;
            } else {
                synced = false;
                failures += 1;
            }
        } else if check_drain && synced {
            // Nothing changed since the last successful sync: its state is the dataplane's.
            syncer.check_drain(tracker.state());
        }
        check_drain = false;
        let wait = if failures > 0 {
            Duration::from_millis(100 * u64::from(failures.min(50)))
        } else {
            RESYNC
        };
        tokio::select! {
            c = changed.recv() => {
                if let Some(c) = c {
                    tracker.record(c);
                }
                tokio::time::sleep(BATCH).await;
            }
            _ = tokio::time::sleep(wait) => resync = failures == 0,
            _ = drain.registered(), if synced => check_drain = true,
        }
    }
}

/// Start the watches the proxy reads (Services, EndpointSlices, this node's pods and this
/// Node), their events going to `changes`, and wait for their first lists. Returns the
/// stores, this Node as listed, and the watches (stopped when dropped).
async fn watch_objects(
    client: Client,
    node: &str,
    changes: mpsc::UnboundedSender<Change>,
) -> (StoreObjects, Option<Arc<Node>>, [AbortOnDrop; 4]) {
    // As kube-proxy: a Service labelled for another proxy is that proxy's, and the slices of
    // headless Services have nothing to program.
    let (services, services_watch) = spawn_reflector::<Service>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&format!("!{SERVICE_PROXY_NAME_LABEL}")),
        changes.clone(),
        Change::service,
        Change::service,
    );
    let (slices, slices_watch) = spawn_reflector::<EndpointSlice>(
        Api::all(client.clone()),
        watcher::Config::default().labels(&format!("!{HEADLESS_LABEL}")),
        changes.clone(),
        Change::slice_applied,
        Change::slice_deleted,
    );
    // This node's pods, for their hostPorts (what a CNI portmap plugin would do).
    let (pods, pods_watch) = spawn_reflector::<Pod>(
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        changes.clone(),
        Change::pod,
        Change::pod,
    );
    // This Node, for its zone (topology hints), as kube-proxy watches its own Node.
    let (this_node, node_watch) = spawn_reflector::<Node>(
        Api::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        changes,
        Change::node,
        |_| Change::NodeZone(None),
    );
    let _ = tokio::join!(
        services.wait_until_ready(),
        slices.wait_until_ready(),
        pods.wait_until_ready(),
        this_node.wait_until_ready()
    );
    let objects = StoreObjects {
        services,
        slices,
        pods,
    };
    let listed = this_node.state().first().cloned();
    (
        objects,
        listed,
        [services_watch, slices_watch, pods_watch, node_watch],
    )
}

/// The reflector stores, as the tracker reads them.
struct StoreObjects {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

impl tracker::Objects for StoreObjects {
    fn service(&self, (ns, name): &ServiceKey) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }
    fn slice(&self, (ns, name): &(String, String)) -> Option<Arc<EndpointSlice>> {
        self.slices.get(&ObjectRef::new(name).within(ns))
    }
    fn all_services(&self) -> Vec<Arc<Service>> {
        self.services.state()
    }
    fn all_slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.slices.state()
    }
    fn pod(&self, (ns, name): &(String, String)) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(ns))
    }
    fn all_pods(&self) -> Vec<Arc<Pod>> {
        self.pods.state()
    }
}

/// A spawned task, aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reflector of the objects `config` selects whose events go to `changes`:
/// `applied`/`deleted` for single objects, and [`Change::Relisted`] when a (re)list replaced
/// the store.
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changes: mpsc::UnboundedSender<Change>,
    applied: fn(&K) -> Change,
    deleted: fn(&K) -> Change,
) -> (Store<K>, AbortOnDrop)
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
    let stream = reflector::reflector(writer, watcher::watcher(api, config))
        .default_backoff()
        .for_each(move |ev| {
            let change = match &ev {
                Ok(watcher::Event::Apply(o)) => Some(applied(o)),
                Ok(watcher::Event::Delete(o)) => Some(deleted(o)),
                // The store is replaced at the end of a list.
                Ok(watcher::Event::InitDone) => Some(Change::Relisted),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => None,
            };
            if let Some(c) = change {
                // The runner gone: the proxy is stopping, so is this task.
                let _ = changes.send(c);
            }
            futures::future::ready(())
        });
    (store, AbortOnDrop(tokio::spawn(stream)))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::proxy::dataplane::SyncStats;
    use crate::proxy::ebpf::fake::{FakeDataplane, FakeMaps};
    use crate::proxy::ebpf::{self, MapOpError, MapSyncStats, SyncError, SyncFailure};
    use crate::proxy::test_support::{ep, nodeport_affinity_pair, state, svc};
    use std::net::Ipv4Addr;

    /// Hands out scripted sync results.
    struct ScriptedDataplane(VecDeque<Result<SyncReport>>);

    #[async_trait]
    impl Dataplane for ScriptedDataplane {
        fn mode(&self) -> &'static str {
            "scripted"
        }
        async fn sync(
            &mut self,
            _state: &ProxyState,
            _changed: Option<&BTreeSet<ServicePortName>>,
        ) -> Result<SyncReport> {
            self.0.pop_front().expect("a scripted result")
        }
    }

    #[derive(Default)]
    struct RecordedEvents(Mutex<Vec<(String, String)>>);

    #[async_trait]
    impl ProxyEvents for RecordedEvents {
        async fn warning(&self, reason: &str, message: String) {
            self.0.lock().unwrap().push((reason.to_string(), message));
        }
    }

    /// The eBPF dataplane's report of a sync in which `services` did not fit into `map`.
    fn full(map: &'static str, max_entries: u32, services: &[&str]) -> Result<SyncReport> {
        let e = SyncError {
            stats: MapSyncStats::default(),
            failures: services
                .iter()
                .map(|s| SyncFailure {
                    service: s.to_string(),
                    error: MapOpError::Full { map, max_entries },
                })
                .collect(),
        };
        Ok(ebpf::sync_report(&ProxyState::new(), Err(e)))
    }

    fn ok() -> Result<SyncReport> {
        Ok(SyncReport::complete(SyncStats::default()))
    }

    #[test]
    fn a_failed_sync_says_nothing_about_the_maps() {
        let mut reports = FullMapReports::default();
        let reported = reports.observe(&full("skiff_frontends", 4, &["default/a:http"]));
        assert_eq!(reported.len(), 1, "{reported:?}");
        // Errors that are not map sync reports say nothing about the maps ...
        assert!(
            reports
                .observe(&Err(anyhow::anyhow!("iptables-restore failed")))
                .is_empty()
        );
        // ... so what was reported stays reported.
        assert!(
            reports
                .observe(&full("skiff_frontends", 4, &["default/a:http"]))
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_full_map_is_reported_once_per_condition() {
        let dataplane = ScriptedDataplane(VecDeque::from([
            full("skiff_frontends", 4, &["default/e:http"]),
            // Retries while still full: no new event.
            full("skiff_frontends", 4, &["default/e:http"]),
            full("skiff_frontends", 4, &["default/e:http", "default/f:http"]),
            // An unrelated failure keeps what is known.
            Err(anyhow::anyhow!("reading the pinned maps failed")),
            full("skiff_frontends", 4, &["default/e:http"]),
            // Another map is full, the first had room this time: only the new one is reported.
            full("skiff_slots", 8, &["default/g:http"]),
            // Recovered, then full again: reported again.
            ok(),
            full("skiff_frontends", 4, &["default/h:http"]),
        ]));
        let metrics = Arc::new(ProxyMetrics::default());
        let events = Arc::new(RecordedEvents::default());
        let mut syncer = Syncer::new(Box::new(dataplane), metrics.clone(), events.clone());
        let mut results = Vec::new();
        for _ in 0..8 {
            results.push(syncer.sync(&ProxyState::new(), None, Instant::now()).await);
        }
        assert_eq!(
            results,
            [false, false, false, false, false, false, true, false]
        );
        // Events go out on spawned tasks.
        for _ in 0..100 {
            if events.0.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let got = events.0.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got.iter().all(|(reason, _)| reason == BPF_MAP_FULL));
        assert!(
            got[0]
                .1
                .starts_with("BPF map skiff_frontends is full (4 entries)")
        );
        assert!(got[0].1.contains("(first: default/e:http)"));
        assert!(
            got[1]
                .1
                .starts_with("BPF map skiff_slots is full (8 entries)")
        );
        assert!(got[1].1.contains("raise --bpf-lb-slots"));
        assert!(got[2].1.contains("(first: default/h:http)"));
        let m = metrics.snapshot();
        assert_eq!((m.syncs, m.errors), (1, 7));
    }

    #[tokio::test]
    async fn the_drain_gate_opens_after_a_successful_sync_without_the_ip() {
        use crate::proxy::drain::tests::{ep, state};
        use std::net::Ipv4Addr;

        let pod = [10, 244, 1, 5];
        let other = [10, 244, 1, 6];
        let with = state(&[("a", vec![ep(pod, true), ep(other, true)])]);
        let without = state(&[("a", vec![ep(other, true)])]);
        let dataplane = ScriptedDataplane(VecDeque::from([
            ok(),
            ok(),
            ok(),
            // The sync that would remove the IP fails: the dataplane may still hold it.
            Err(anyhow::anyhow!("iptables-restore failed")),
            ok(),
        ]));
        let drain = Arc::new(BackendDrain::new());
        let mut syncer = Syncer::new(
            Box::new(dataplane),
            Arc::new(ProxyMetrics::default()),
            Arc::new(RecordedEvents::default()),
        )
        .with_drain(drain.clone());
        // Nobody waits: syncs do not look at the state for the gate.
        assert!(syncer.sync(&with, None, Instant::now()).await);
        assert!(syncer.sync(&with, None, Instant::now()).await);
        assert_eq!(drain.scans(), 0);

        let d = drain.clone();
        let wait = tokio::spawn(async move {
            d.wait_unprogrammed(Ipv4Addr::from(pod), Duration::from_secs(30))
                .await
        });
        while drain.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // The runner's check of a new waiter against the last synced state: still there.
        syncer.check_drain(&with);
        assert!(syncer.sync(&with, None, Instant::now()).await);
        assert!(!syncer.sync(&without, None, Instant::now()).await);
        assert_eq!(drain.waiting(), 1);
        assert!(!wait.is_finished());
        assert!(syncer.sync(&without, None, Instant::now()).await);
        let drained = wait.await.unwrap();
        assert!(!drained.timed_out, "{drained:?}");
        assert_eq!(drain.waiting(), 0);
        // Two checks and two successful syncs while the waiter waited; none since.
        assert_eq!(drain.scans(), 3);
    }

    #[tokio::test]
    async fn the_drain_gate_releases_a_new_waiter_for_an_ip_already_gone() {
        use crate::proxy::drain::tests::{ep, state};
        use std::net::Ipv4Addr;

        let drain = Arc::new(BackendDrain::new());
        let syncer = Syncer::new(
            Box::new(ScriptedDataplane(VecDeque::new())),
            Arc::new(ProxyMetrics::default()),
            Arc::new(RecordedEvents::default()),
        )
        .with_drain(drain.clone());
        let synced = state(&[("a", vec![ep([10, 244, 1, 6], true)])]);
        let d = drain.clone();
        let wait = tokio::spawn(async move {
            d.wait_unprogrammed(Ipv4Addr::new(10, 244, 1, 5), Duration::from_secs(30))
                .await
        });
        // What `run` does: woken by the registration, it checks the state it last synced.
        tokio::time::timeout(Duration::from_secs(5), drain.registered())
            .await
            .unwrap();
        while drain.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        syncer.check_drain(&synced);
        assert!(!wait.await.unwrap().timed_out);
    }

    #[tokio::test]
    async fn the_map_fill_gauges_are_exported_after_a_sync() {
        let mut store = FakeMaps::new(64);
        store.program[2].1 = 4; // two NodePort flows in conntrack
        let dp = FakeDataplane::new(store, Some(Ipv4Addr::new(192, 168, 0, 1))).unwrap();
        let metrics = Arc::new(ProxyMetrics::default());
        let mut syncer = Syncer::new(
            Box::new(dp),
            metrics.clone(),
            Arc::new(RecordedEvents::default()),
        );
        let (a, b) = nodeport_affinity_pair();
        let gauges = |text: &str, want: &[(&str, usize, u32)]| {
            for (map, entries, max) in want {
                assert!(
                    text.contains(&format!(
                        "skiff_bpf_map_entries{{map=\"{map}\"}} {entries}\n"
                    )),
                    "{map}: {entries} entries wanted:\n{text}"
                );
                assert!(
                    text.contains(&format!(
                        "skiff_bpf_map_max_entries{{map=\"{map}\"}} {max}\n"
                    )),
                    "{map}: capacity {max} wanted:\n{text}"
                );
            }
            assert_eq!(
                text.matches("skiff_bpf_map_entries{").count(),
                ebpf::maps::ALL_MAPS.len(),
                "{text}"
            );
        };

        assert!(
            syncer
                .sync(&state(vec![a.clone(), b]), None, Instant::now())
                .await
        );
        // a: ClusterIP + NodePort on the node IP and on 127.0.0.1, 2 slots each, affinity on
        // all; b: ClusterIP, 1 slot; one backend shared.
        gauges(
            &metrics.render(),
            &[
                ("skiff_frontends", 4, 64),
                ("skiff_slots", 7, 256),
                ("skiff_backends", 2, 64),
                ("skiff_revnat", 4, 64),
                ("skiff_affinity", 0, 128),
                ("skiff_aff_match", 6, 256),
                ("skiff_sock_rev", 0, 128),
                ("skiff_ct", 4, 128),
                ("skiff_src_range", 0, 256),
                ("skiff_svc_names", 4, 64),
            ],
        );

        // b goes: the next sync updates the gauges.
        assert!(syncer.sync(&state(vec![a]), None, Instant::now()).await);
        gauges(
            &metrics.render(),
            &[
                ("skiff_frontends", 3, 64),
                ("skiff_slots", 6, 256),
                ("skiff_backends", 2, 64),
                ("skiff_revnat", 3, 64),
                ("skiff_aff_match", 6, 256),
                ("skiff_svc_names", 3, 64),
                ("skiff_ct", 4, 128),
            ],
        );
    }

    /// A syncer of the eBPF dataplane over `store`, its metrics and events, and a state of one
    /// service with one backend.
    fn one_service_over(
        store: FakeMaps,
    ) -> (Syncer, Arc<ProxyMetrics>, Arc<RecordedEvents>, ProxyState) {
        let dp = FakeDataplane::new(store, None).unwrap();
        let metrics = Arc::new(ProxyMetrics::default());
        let events = Arc::new(RecordedEvents::default());
        let syncer = Syncer::new(Box::new(dp), metrics.clone(), events.clone());
        let st = state(vec![svc(
            "a",
            [10, 96, 0, 1],
            80,
            vec![ep([10, 244, 1, 2], 8080, true)],
        )]);
        (syncer, metrics, events, st)
    }

    /// The eBPF dataplane over the fake maps, with injected faults: a full map is reported
    /// once, an I/O error fails the sync without an event, and both are repaired by a retry.
    #[tokio::test]
    async fn injected_map_faults_fail_the_sync_and_a_full_map_is_reported() {
        let mut store = FakeMaps::new(64);
        store.report_full("skiff_frontends", 2);
        let (mut syncer, metrics, events, st) = one_service_over(store);
        // Full twice (one event), then room.
        assert!(!syncer.sync(&st, None, Instant::now()).await);
        assert!(!syncer.sync(&st, None, Instant::now()).await);
        assert!(syncer.sync(&st, None, Instant::now()).await);
        for _ in 0..100 {
            if !events.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let got = events.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(got[0].0, BPF_MAP_FULL);
        assert!(
            got[0]
                .1
                .starts_with("BPF map skiff_frontends is full (64 entries): 1 entry not programmed (first: default/a)"),
            "{got:#?}"
        );
        assert_eq!(
            (metrics.snapshot().syncs, metrics.snapshot().errors),
            (1, 2)
        );
    }

    #[tokio::test]
    async fn an_injected_write_error_fails_the_sync_without_an_event() {
        let mut store = FakeMaps::new(64);
        store.fail_next_writes("skiff_backends", 1);
        let (mut syncer, metrics, events, st) = one_service_over(store);
        assert!(!syncer.sync(&st, None, Instant::now()).await);
        assert!(syncer.sync(&st, None, Instant::now()).await);
        tokio::task::yield_now().await;
        assert!(events.0.lock().unwrap().is_empty());
        let m = metrics.snapshot();
        assert_eq!((m.syncs, m.errors, m.services, m.backends), (1, 1, 1, 1));
    }
}
