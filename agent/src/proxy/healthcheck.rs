//! What load balancers and node monitors ask the proxy, as kube-proxy answers it
//! (`pkg/proxy/healthcheck`):
//!
//! - per LoadBalancer Service with `externalTrafficPolicy: Local`, an HTTP server on its
//!   `spec.healthCheckNodePort` saying how many of the Service's endpoints on this node are
//!   ready (200 with at least one, 503 with none, also when only terminating ones are left), so
//!   a load balancer sends only to nodes that can serve the traffic without forwarding it
//!   (kube-proxy's `ServiceHealthServer`);
//! - the proxy's own `/healthz` and `/livez` (`--healthz-bind-address`, `0.0.0.0:10256`):
//!   503 when a change has waited longer than twice the resync period for a successful sync
//!   (kube-proxy's `ProxyHealthServer`), and `/healthz` also while the Node is being deleted.
//!
//! Both are independent of the proxy mode: the answers come from the [`ProxyState`] the
//! dataplane was last synced to ([`local_endpoint_counts`], a pure function) and from when
//! syncs were queued and done ([`ProxyHealth`]); the HTTP edge is thin. In eBPF mode the
//! bind hook refuses binds only to ports a frontend owns (node ports, external IPs, LB
//! addresses): a health check port is none of them, so these listeners bind.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::model::{ProxyState, ServiceKey};

/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";

/// The taint the cluster autoscaler puts on a node it is about to remove: kube-proxy's
/// `/healthz` fails on such a node so load balancers drain it first.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// A Service this node answers health checks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Distinct addresses of the Service's ready endpoints on this node (any port).
    pub local_endpoints: usize,
}

/// Per Service with a health check port, its port and local ready endpoint count (kube-proxy's
/// `LocalReadyEndpoints`: ready, so never terminating; an address counts once however many
/// ports it serves).
pub fn local_endpoint_counts(state: &ProxyState) -> BTreeMap<ServiceKey, ServiceHealth> {
    let mut ips: BTreeMap<ServiceKey, (u16, std::collections::BTreeSet<Ipv4Addr>)> =
        BTreeMap::new();
    for (name, sp) in state {
        let Some(port) = sp.extra.health_check_node_port else {
            continue;
        };
        let entry = ips
            .entry((name.namespace.clone(), name.name.clone()))
            .or_insert_with(|| (port, Default::default()));
        entry.1.extend(
            sp.endpoints
                .iter()
                .filter(|e| e.local && e.ready)
                .map(|e| e.ip),
        );
    }
    ips.into_iter()
        .map(|(key, (port, ips))| {
            let health = ServiceHealth {
                port,
                local_endpoints: ips.len(),
            };
            (key, health)
        })
        .collect()
}

/// When the dataplane was last brought up to date, and the oldest change still waiting for
/// it (kube-proxy's `QueuedUpdate`/`Updated`), with whether the Node may take traffic.
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<SyncTimes>,
}

struct SyncTimes {
    last_updated: Option<jiff::Timestamp>,
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// What `/healthz` and `/livez` report at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// No change has waited longer than the timeout.
    pub healthy: bool,
    pub node_eligible: bool,
    pub last_updated: Option<jiff::Timestamp>,
    pub current_time: jiff::Timestamp,
}

impl ProxyHealth {
    /// Unhealthy when a change waits longer than `timeout` (kube-proxy: twice its sync
    /// period). The initial sync counts as pending from now.
    pub fn new(timeout: Duration) -> ProxyHealth {
        ProxyHealth {
            timeout,
            state: Mutex::new(SyncTimes {
                last_updated: None,
                oldest_pending: Some(Instant::now()),
                node_eligible: true,
            }),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, SyncTimes> {
        // A panic elsewhere while holding the lock leaves plain values behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change is waiting for a sync (the oldest one is kept).
    pub fn queued_update(&self) {
        self.times().oldest_pending.get_or_insert_with(Instant::now);
    }

    /// The dataplane matches everything queued so far.
    pub fn updated(&self) {
        let mut t = self.times();
        t.last_updated = Some(jiff::Timestamp::now());
        t.oldest_pending = None;
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.times().node_eligible = eligible;
    }

    pub fn report(&self) -> HealthReport {
        self.report_at(Instant::now(), jiff::Timestamp::now())
    }

    fn report_at(&self, now: Instant, wall: jiff::Timestamp) -> HealthReport {
        let t = self.times();
        let healthy = t
            .oldest_pending
            .is_none_or(|queued| now.saturating_duration_since(queued) < self.timeout);
        HealthReport {
            healthy,
            node_eligible: t.node_eligible,
            last_updated: t.last_updated,
            current_time: wall,
        }
    }
}

/// A time as Go prints a `time.Time` (kube-proxy's `%q` of one), in UTC.
fn go_time(t: Option<jiff::Timestamp>) -> String {
    match t {
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        // Go's zero time.
        None => "0001-01-01 00:00:00 +0000 UTC".to_string(),
    }
}

fn json_response(code: StatusCode, body: String, weight: Option<usize>) -> Response {
    let mut resp = (code, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(n) = weight {
        h.insert("X-Load-Balancing-Endpoint-Weight", HeaderValue::from(n));
    }
    resp
}

/// kube-proxy's answer on a health check port: 200 with local endpoints while the proxy is
/// healthy, else 503; the count also as the endpoint weight header.
pub fn service_response(key: &ServiceKey, local_endpoints: usize, proxy_healthy: bool) -> Response {
    let (namespace, name) = key;
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(namespace),
        quote(name),
    );
    let code = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, body, Some(local_endpoints))
}

/// kube-proxy's `/healthz` (`livez: false`: also fails while the Node is being deleted, and
/// says so) and `/livez`. A healthy proxy reports the current time as last updated, as
/// kube-proxy does for compatibility.
pub fn healthz_response(report: &HealthReport, livez: bool) -> Response {
    let healthy = report.healthy && (livez || report.node_eligible);
    let last = if report.healthy {
        Some(report.current_time)
    } else {
        report.last_updated
    };
    let (last, now) = (go_time(last), go_time(Some(report.current_time)));
    let body = if livez {
        format!(r#"{{"lastUpdated": "{last}","currentTime": "{now}"}}"#)
    } else {
        format!(
            r#"{{"lastUpdated": "{last}","currentTime": "{now}", "nodeEligible": {}}}"#,
            report.node_eligible
        )
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, body, None)
}

/// Serve `/healthz` and `/livez` on `addr` until the task is dropped.
pub async fn serve_healthz(addr: SocketAddr, health: Arc<ProxyHealth>) -> Result<()> {
    let h = health.clone();
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let report = h.report();
                async move { healthz_response(&report, false) }
            }),
        )
        .route(
            "/livez",
            axum::routing::get(move || {
                let report = health.report();
                async move { healthz_response(&report, true) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Follow this node's Node object: it may take traffic unless it is being deleted or the
/// cluster autoscaler marked it for removal (kube-proxy's `NodeEligibleHandler`).
pub async fn watch_node_eligibility(client: Client, node: String, health: Arc<ProxyHealth>) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    watcher::watcher(api, config)
        .default_backoff()
        .applied_objects()
        .for_each(|n| {
            if let Ok(n) = n {
                health.set_node_eligible(node_eligible(&n));
            }
            futures::future::ready(())
        })
        .await;
}

pub fn node_eligible(node: &Node) -> bool {
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    node.metadata.deletion_timestamp.is_none() && !tainted
}

/// One listener per Service with a health check port (kube-proxy's `ServiceHealthServer`),
/// opened and closed as Services come and go, answering from the counts of the last sync.
pub struct ServiceHealthServers {
    bind_ip: Ipv4Addr,
    health: Arc<ProxyHealth>,
    counts: Arc<RwLock<BTreeMap<ServiceKey, ServiceHealth>>>,
    listeners: BTreeMap<ServiceKey, (u16, tokio::task::JoinHandle<()>)>,
}

impl ServiceHealthServers {
    /// Listeners on `bind_ip` (kube-proxy with all node port addresses: the wildcard).
    pub fn new(bind_ip: Ipv4Addr, health: Arc<ProxyHealth>) -> ServiceHealthServers {
        ServiceHealthServers {
            bind_ip,
            health,
            counts: Arc::default(),
            listeners: BTreeMap::new(),
        }
    }

    pub fn health(&self) -> &Arc<ProxyHealth> {
        &self.health
    }

    /// The ports listened on, by Service.
    pub fn listening(&self) -> BTreeMap<ServiceKey, u16> {
        self.listeners
            .iter()
            .map(|(k, (port, _))| (k.clone(), *port))
            .collect()
    }

    /// Answer from `state` (the state the dataplane was just synced to): listeners for new
    /// Services (or moved ports) opened, those of Services gone closed. A port that cannot be
    /// bound is logged and tried again at the next sync, as kube-proxy does.
    pub fn sync(&mut self, state: &ProxyState) {
        let wanted = local_endpoint_counts(state);
        self.listeners.retain(|key, (port, task)| {
            let keep = wanted.get(key).is_some_and(|h| h.port == *port);
            if !keep {
                tracing::info!(service = %format!("{}/{}", key.0, key.1), port = *port, "closing the health check server");
                task.abort();
            }
            keep
        });
        for (key, h) in &wanted {
            if self.listeners.contains_key(key) {
                continue;
            }
            match self.open(key, h.port) {
                Ok(task) => {
                    tracing::info!(service = %format!("{}/{}", key.0, key.1), port = h.port, "serving health checks");
                    self.listeners.insert(key.clone(), (h.port, task));
                }
                Err(e) => tracing::warn!(
                    service = %format!("{}/{}", key.0, key.1),
                    port = h.port,
                    "failed to start the health check server: {e}"
                ),
            }
        }
        *self.counts.write().unwrap_or_else(|e| e.into_inner()) = wanted;
    }

    fn open(&self, key: &ServiceKey, port: u16) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let sock = std::net::TcpListener::bind((self.bind_ip, port))?;
        sock.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(sock)?;
        let (key, counts, health) = (key.clone(), self.counts.clone(), self.health.clone());
        // Every path and method, as kube-proxy's handler.
        let app = axum::Router::new().fallback(move || {
            let local = counts
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .map_or(0, |h| h.local_endpoints);
            let healthy = health.report().healthy;
            let resp = service_response(&key, local, healthy);
            async move { resp }
        });
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(port, "health check server stopped: {e}");
            }
        }))
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for (_, task) in self.listeners.values() {
            task.abort();
        }
    }
}

/// The runner's side: a sync is queued, a sync succeeded with this state.
pub struct HealthChecks(Mutex<ServiceHealthServers>);

impl HealthChecks {
    pub fn new(servers: ServiceHealthServers) -> HealthChecks {
        HealthChecks(Mutex::new(servers))
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, ServiceHealthServers> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn queued(&self) {
        self.servers().health().queued_update();
    }

    pub fn synced(&self, state: &ProxyState) {
        let mut s = self.servers();
        s.health().updated();
        s.sync(state);
    }
}

#[cfg(test)]
mod tests;
