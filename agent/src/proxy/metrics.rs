//! The proxy's Prometheus metrics (served by the agent's metrics endpoint), kept in a
//! `prometheus-client` registry.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::dataplane::SyncStats;

/// A gauge of seconds.
type Seconds = Gauge<f64, AtomicU64>;

pub struct ProxyMetrics {
    registry: Registry,
    services: Gauge,
    backends: Gauge,
    sync_duration: Histogram,
    last_sync: Seconds,
    errors: Counter,
    /// Not exported (the histogram's `_count` is): for [`ProxyMetrics::snapshot`].
    syncs: Counter,
    /// Not exported: for [`ProxyMetrics::snapshot`].
    last_state_build: Seconds,
    reported: Arc<Reported>,
    /// Sockets destroyed because their backend left (eBPF mode), by protocol.
    sockets_destroyed: Family<[(&'static str, &'static str); 1], Counter>,
    /// Conntrack entries deleted because their backend left (iptables mode).
    conntrack_deleted: Counter,
}

/// The figures behind the metrics, for in-process readers (the proxy benchmark).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyMetricsSnapshot {
    pub services: usize,
    pub backends: usize,
    pub syncs: u64,
    pub errors: u64,
    /// The last successful sync, from reading the caches to the dataplane holding the state.
    pub last_sync_seconds: f64,
    /// The part of the last sync spent building the state from the caches.
    pub last_state_build_seconds: f64,
    /// From the proxy's start until the first list of Services and EndpointSlices was in.
    pub initial_list_seconds: Option<f64>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let m = ProxyMetrics {
            registry: Registry::default(),
            services: Gauge::default(),
            backends: Gauge::default(),
            // 1 ms to ~65 s.
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            last_sync: Seconds::default(),
            errors: Counter::default(),
            syncs: Counter::default(),
            last_state_build: Seconds::default(),
            reported: Arc::default(),
            sockets_destroyed: Family::default(),
            conntrack_deleted: Counter::default(),
        };
        m.registered()
    }
}

impl ProxyMetrics {
    /// Register the metrics, in the order they are exported.
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        let counts = [
            (
                "skiff_proxy_services",
                "Service ports programmed into the dataplane",
                &self.services,
            ),
            (
                "skiff_proxy_backends",
                "Backends programmed into the dataplane",
                &self.backends,
            ),
        ];
        for (name, help, gauge) in counts {
            r.register(name, help, gauge.clone());
        }
        let syncs_help = "Time of dataplane syncs";
        r.register(
            "skiff_proxy_sync_duration_seconds",
            syncs_help,
            self.sync_duration.clone(),
        );
        let last_help = "Time of the last dataplane sync";
        r.register(
            "skiff_proxy_last_sync_duration_seconds",
            last_help,
            self.last_sync.clone(),
        );
        // Exported with the counter's `_total` suffix.
        let errors_help = "Failed dataplane syncs (e.g. a full map)";
        r.register("skiff_proxy_sync_errors", errors_help, self.errors.clone());
        r.register_collector(Box::new(self.reported.clone()));
        // Both exported with `_total`; both protocols from the start (a scrape before the
        // first destruction sees 0, not nothing).
        for p in [super::model::Protocol::Udp, super::model::Protocol::Tcp] {
            let _ = self
                .sockets_destroyed
                .get_or_create(&[("protocol", p.as_str())]);
        }
        r.register(
            "skiff_proxy_sockets_destroyed",
            "Local sockets destroyed because the backend they were connected to left its service",
            self.sockets_destroyed.clone(),
        );
        r.register(
            "skiff_proxy_conntrack_entries_deleted",
            "UDP conntrack entries deleted because their backend left or the service got its first backend",
            self.conntrack_deleted.clone(),
        );
        self
    }

    pub fn record_sockets_destroyed(&self, protocol: super::model::Protocol, n: u64) {
        self.sockets_destroyed
            .get_or_create(&[("protocol", protocol.as_str())])
            .inc_by(n);
    }
    pub fn sockets_destroyed(&self, protocol: super::model::Protocol) -> u64 {
        self.sockets_destroyed
            .get_or_create(&[("protocol", protocol.as_str())])
            .get()
    }
    pub fn conntrack_entries_deleted(&self) -> u64 {
        self.conntrack_deleted.get()
    }

    /// A successful sync that took `took` in all, `build` of it building the state.
    pub fn record_sync(&self, s: &SyncStats, took: Duration, build: Duration) {
        self.services.set(s.services as i64);
        self.backends.set(s.backends as i64);
        self.sync_duration.observe(took.as_secs_f64());
        self.syncs.inc();
        self.last_sync.set(took.as_secs_f64());
        self.last_state_build.set(build.as_secs_f64());
        self.conntrack_deleted.inc_by(s.conntrack_deleted);
    }
    /// The time the first list of Services and EndpointSlices took.
    pub fn record_initial_list(&self, took: Duration) {
        if let Ok(mut m) = self.reported.initial_list_seconds.lock() {
            *m = Some(took.as_secs_f64());
        }
    }
    pub fn snapshot(&self) -> ProxyMetricsSnapshot {
        ProxyMetricsSnapshot {
            services: self.services.get() as usize,
            backends: self.backends.get() as usize,
            syncs: self.syncs.get(),
            errors: self.errors.get(),
            last_sync_seconds: self.last_sync.get(),
            last_state_build_seconds: self.last_state_build.get(),
            initial_list_seconds: self
                .reported
                .initial_list_seconds
                .lock()
                .ok()
                .and_then(|m| *m),
        }
    }
    pub fn record_error(&self) {
        self.errors.inc();
    }
    pub fn set_map_fill(&self, fill: Vec<(String, u64, u64)>) {
        if let Ok(mut m) = self.reported.map_fill.lock() {
            *m = fill;
        }
    }

    /// The OpenMetrics text exposition (what prometheus-client writes: counters' metadata
    /// without `_total`, a closing `# EOF`), served as [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            Err(_) => String::new(),
        }
    }
}

/// The media type of [`ProxyMetrics::render`]'s text, so Prometheus parses it as OpenMetrics.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics exported only once there is something to report: the initial list's time,
/// and the BPF maps' fill (eBPF mode), one series per map in the order given.
#[derive(Debug, Default)]
struct Reported {
    initial_list_seconds: Mutex<Option<f64>>,
    /// (map name, entries, max entries), set by the eBPF dataplane.
    map_fill: Mutex<Vec<(String, u64, u64)>>,
}

impl Collector for Reported {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(list) = self.initial_list_seconds.lock().ok().and_then(|m| *m) {
            let gauge = ConstGauge::new(list);
            gauge.encode(encoder.encode_descriptor(
                "skiff_proxy_initial_list_duration_seconds",
                "Time from the proxy's start until Services and EndpointSlices were listed.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        let Ok(fill) = self.map_fill.lock() else {
            return Ok(());
        };
        if fill.is_empty() {
            return Ok(());
        }
        let per_map = [
            ("skiff_bpf_map_entries", "Entries in each BPF map."),
            ("skiff_bpf_map_max_entries", "Capacity of each BPF map."),
        ];
        for (i, (name, help)) in per_map.into_iter().enumerate() {
            let ty = ConstGauge::new(0u64).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, ty)?;
            for (map, entries, max) in fill.iter() {
                let value = if i == 0 { *entries } else { *max };
                let labels = [("map", map.as_str())];
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = ProxyMetrics::default();
        m.record_sync(
            &SyncStats {
                services: 3,
                backends: 6,
                writes: 9,
                conntrack_deleted: 4,
            },
            Duration::from_millis(5),
            Duration::from_millis(2),
        );
        m.record_initial_list(Duration::from_millis(250));
        m.set_map_fill(vec![("skiff_frontends".into(), 3, 65536)]);
        let t = m.render();
        assert!(t.contains("skiff_proxy_services 3\n"));
        assert!(t.contains("skiff_proxy_sync_duration_seconds_count 1\n"));
        assert!(t.contains("skiff_bpf_map_entries{map=\"skiff_frontends\"} 3\n"));
        assert!(t.contains("skiff_proxy_initial_list_duration_seconds 0.25\n"));
        assert!(t.contains("skiff_proxy_sync_errors_total 0\n"));
        assert!(t.contains("skiff_proxy_conntrack_entries_deleted_total 4\n"));
        assert!(t.contains("skiff_proxy_sockets_destroyed_total{protocol=\"udp\"} 0\n"));
        assert!(t.ends_with("# EOF\n"));
        assert_eq!(m.snapshot().last_state_build_seconds, 0.002);
    }
}
