//! The proxy's Prometheus metrics (served by the agent's metrics endpoint).

use std::sync::Mutex;
use std::time::Duration;

use super::dataplane::SyncStats;

#[derive(Default)]
pub struct ProxyMetrics {
    inner: Mutex<Inner>,
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

#[derive(Default)]
struct Inner {
    services: usize,
    backends: usize,
    syncs: u64,
    errors: u64,
    last_sync_seconds: f64,
    last_state_build_seconds: f64,
    sync_seconds_sum: f64,
    initial_list_seconds: Option<f64>,
    /// (map name, entries, max entries), set by the eBPF dataplane.
    map_fill: Vec<(String, u64, u64)>,
}

impl ProxyMetrics {
    /// A successful sync that took `took` in all, `build` of it building the state.
    pub fn record_sync(&self, s: &SyncStats, took: Duration, build: Duration) {
        if let Ok(mut m) = self.inner.lock() {
            m.services = s.services;
            m.backends = s.backends;
            m.syncs += 1;
            m.last_sync_seconds = took.as_secs_f64();
            m.last_state_build_seconds = build.as_secs_f64();
            m.sync_seconds_sum += took.as_secs_f64();
        }
    }
    /// The time the first list of Services and EndpointSlices took.
    pub fn record_initial_list(&self, took: Duration) {
        if let Ok(mut m) = self.inner.lock() {
            m.initial_list_seconds = Some(took.as_secs_f64());
        }
    }
    pub fn snapshot(&self) -> ProxyMetricsSnapshot {
        let Ok(m) = self.inner.lock() else {
            return ProxyMetricsSnapshot::default();
        };
        ProxyMetricsSnapshot {
            services: m.services,
            backends: m.backends,
            syncs: m.syncs,
            errors: m.errors,
            last_sync_seconds: m.last_sync_seconds,
            last_state_build_seconds: m.last_state_build_seconds,
            initial_list_seconds: m.initial_list_seconds,
        }
    }
    pub fn record_error(&self) {
        if let Ok(mut m) = self.inner.lock() {
            m.errors += 1;
        }
    }
    pub fn set_map_fill(&self, fill: Vec<(String, u64, u64)>) {
        if let Ok(mut m) = self.inner.lock() {
            m.map_fill = fill;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let Ok(m) = self.inner.lock() else {
            return String::new();
        };
        let mut out = format!(
            "# HELP skiff_proxy_services Service ports programmed into the dataplane.\n\
             # TYPE skiff_proxy_services gauge\nskiff_proxy_services {}\n\
             # HELP skiff_proxy_backends Backends programmed into the dataplane.\n\
             # TYPE skiff_proxy_backends gauge\nskiff_proxy_backends {}\n\
             # HELP skiff_proxy_sync_duration_seconds Time of dataplane syncs.\n\
             # TYPE skiff_proxy_sync_duration_seconds summary\n\
             skiff_proxy_sync_duration_seconds_sum {}\nskiff_proxy_sync_duration_seconds_count {}\n\
             # HELP skiff_proxy_last_sync_duration_seconds Time of the last dataplane sync.\n\
             # TYPE skiff_proxy_last_sync_duration_seconds gauge\nskiff_proxy_last_sync_duration_seconds {}\n\
             # HELP skiff_proxy_sync_errors_total Failed dataplane syncs (e.g. a full map).\n\
             # TYPE skiff_proxy_sync_errors_total counter\nskiff_proxy_sync_errors_total {}\n",
            m.services, m.backends, m.sync_seconds_sum, m.syncs, m.last_sync_seconds, m.errors
        );
        if let Some(list) = m.initial_list_seconds {
            out.push_str(&format!(
                "# HELP skiff_proxy_initial_list_duration_seconds Time from the proxy's start until Services and EndpointSlices were listed.\n\
                 # TYPE skiff_proxy_initial_list_duration_seconds gauge\nskiff_proxy_initial_list_duration_seconds {list}\n"
            ));
        }
        if !m.map_fill.is_empty() {
            out.push_str("# HELP skiff_bpf_map_entries Entries in each BPF map.\n# TYPE skiff_bpf_map_entries gauge\n");
            for (name, n, _) in &m.map_fill {
                out.push_str(&format!("skiff_bpf_map_entries{{map=\"{name}\"}} {n}\n"));
            }
            out.push_str("# HELP skiff_bpf_map_max_entries Capacity of each BPF map.\n# TYPE skiff_bpf_map_max_entries gauge\n");
            for (name, _, max) in &m.map_fill {
                out.push_str(&format!(
                    "skiff_bpf_map_max_entries{{map=\"{name}\"}} {max}\n"
                ));
            }
        }
        out
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
        assert_eq!(m.snapshot().last_state_build_seconds, 0.002);
    }
}
