//! The proxy's Prometheus metrics (served by the agent's metrics endpoint).

use std::sync::Mutex;
use std::time::Duration;

use super::runner::SyncStats;

#[derive(Default)]
pub struct ProxyMetrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    services: usize,
    backends: usize,
    syncs: u64,
    errors: u64,
    last_sync_seconds: f64,
    sync_seconds_sum: f64,
    /// (map name, entries, max entries), set by the eBPF dataplane.
    map_fill: Vec<(String, u64, u64)>,
}

impl ProxyMetrics {
    pub fn record_sync(&self, s: &SyncStats, took: Duration) {
        if let Ok(mut m) = self.inner.lock() {
            m.services = s.services;
            m.backends = s.backends;
            m.syncs += 1;
            m.last_sync_seconds = took.as_secs_f64();
            m.sync_seconds_sum += took.as_secs_f64();
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
        );
        m.set_map_fill(vec![("skiff_frontends".into(), 3, 65536)]);
        let t = m.render();
        assert!(t.contains("skiff_proxy_services 3\n"));
        assert!(t.contains("skiff_proxy_sync_duration_seconds_count 1\n"));
        assert!(t.contains("skiff_bpf_map_entries{map=\"skiff_frontends\"} 3\n"));
    }
}
