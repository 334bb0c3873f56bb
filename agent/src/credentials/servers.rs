//! The API servers an agent may talk to, and the client-side load balancing over them (the
//! k3s agent's load balancer, in the connector rather than in a local TCP proxy).
//!
//! The agent starts with the `--server` URLs (or its kubeconfig's server) and learns the rest
//! from the `default/kubernetes` Endpoints, which every API server keeps listing itself while
//! it lives. It sticks to one server while that one accepts connections: every new connection
//! goes to the server in use, and a connection that cannot be made (refused, timed out, TLS
//! failure) marks that server failed and is made to the next one instead, so a request is
//! never lost to a dead server before it was sent. A failed server gets connections again once
//! a health check (a TCP connect every [`HEALTH_INTERVAL`]) reaches it. Each connection's TLS
//! is verified against the cluster CA for the server actually dialled.
//!
//! Requests keep the URL of the first server (their `Host`); only where they are sent changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hyper::Uri;
use hyper::http::uri::Authority;
use k8s_openapi::api::core::v1::Endpoints;
use kube::Api;

/// How long one connection attempt (TCP and TLS) may take before the next server is tried,
/// when there is a next server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often failed servers are checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the `kubernetes` Endpoints are read.
pub const LEARN_INTERVAL: Duration = Duration::from_secs(10);
/// The port name of the API servers in the `kubernetes` Endpoints.
const HTTPS_PORT_NAME: &str = "https";

/// The servers and which one is in use. Cheap to clone (shared).
#[derive(Clone)]
pub struct ApiServers {
    inner: Arc<RwLock<State>>,
}

struct State {
    /// Given by flag or kubeconfig: kept even when the Endpoints no longer list them.
    configured: Vec<Authority>,
    /// Every known server, in a stable order.
    servers: Vec<Server>,
    /// The server connections go to.
    current: usize,
    /// Bumped whenever the server in use changes (the transport then drops its pool).
    epoch: u64,
}

#[derive(Clone, Debug)]
struct Server {
    authority: Authority,
    healthy: bool,
}

impl ApiServers {
    /// From `https://host:port` URLs; the first is used first.
    pub fn new(urls: &[String]) -> Result<ApiServers> {
        let mut configured = Vec::new();
        for url in urls {
            let authority = authority_of(url)?;
            if !configured.contains(&authority) {
                configured.push(authority);
            }
        }
        if configured.is_empty() {
            bail!("no API server given");
        }
        let servers = configured
            .iter()
            .map(|a| Server {
                authority: a.clone(),
                healthy: true,
            })
            .collect();
        Ok(ApiServers {
            inner: Arc::new(RwLock::new(State {
                configured,
                servers,
                current: 0,
                epoch: 0,
            })),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is whole.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every known server (`host:port`), the one in use first.
    pub fn all(&self) -> Vec<String> {
        self.order().iter().map(ToString::to_string).collect()
    }

    /// The server in use (`host:port`).
    pub fn current(&self) -> String {
        let s = self.read();
        s.servers[s.current].authority.to_string()
    }

    /// Changes whenever the server in use does.
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Where to try to connect, in order: the server in use, the other healthy ones after it,
    /// then the failed ones (when nothing else answers, a failed server may be back).
    fn order(&self) -> Vec<Authority> {
        let s = self.read();
        let n = s.servers.len();
        let ring: Vec<&Server> = (0..n).map(|i| &s.servers[(s.current + i) % n]).collect();
        let healthy = ring.iter().filter(|x| x.healthy);
        let failed = ring.iter().filter(|x| !x.healthy);
        healthy.chain(failed).map(|x| x.authority.clone()).collect()
    }

    /// A connection to `authority` was made: it is healthy, and in use if the one in use is not.
    fn connected(&self, authority: &Authority) {
        let mut s = self.write();
        let Some(i) = s.servers.iter().position(|x| &x.authority == authority) else {
            return;
        };
        s.servers[i].healthy = true;
        let current = s.current;
        if i != current && !s.servers[current].healthy {
            tracing::info!(server = %authority, "API server in use");
            s.current = i;
            s.epoch += 1;
        }
    }

    /// A connection to `authority` failed, or its health check did.
    fn failed(&self, authority: &Authority, why: &str) {
        let mut s = self.write();
        let Some(i) = s.servers.iter().position(|x| &x.authority == authority) else {
            return;
        };
        if s.servers[i].healthy {
            tracing::warn!(server = %authority, "API server unreachable: {why}");
        }
        s.servers[i].healthy = false;
        if i != s.current {
            return;
        }
        let n = s.servers.len();
        if let Some(next) = (1..n).map(|k| (i + k) % n).find(|&j| s.servers[j].healthy) {
            tracing::info!(from = %authority, to = %s.servers[next].authority, "failing over to another API server");
            s.current = next;
            s.epoch += 1;
        }
    }

    /// Replace the learned servers with `learned`; the configured ones stay.
    pub fn set_learned(&self, learned: &[Authority]) {
        let mut s = self.write();
        let mut wanted: Vec<Authority> = s.configured.clone();
        wanted.extend(
            learned
                .iter()
                .filter(|a| !s.configured.contains(a))
                .cloned(),
        );
        let known: Vec<Authority> = s.servers.iter().map(|x| x.authority.clone()).collect();
        if known == wanted {
            return;
        }
        let in_use = s.servers[s.current].authority.clone();
        let servers: Vec<Server> = wanted
            .iter()
            .map(|a| {
                let old = s.servers.iter().find(|x| &x.authority == a);
                Server {
                    authority: a.clone(),
                    healthy: old.is_none_or(|x| x.healthy),
                }
            })
            .collect();
        tracing::info!(servers = ?wanted.iter().map(ToString::to_string).collect::<Vec<_>>(), "API servers");
        match servers.iter().position(|x| x.authority == in_use) {
            Some(i) => s.current = i,
            None => {
                s.current = 0;
                s.epoch += 1;
            }
        }
        s.servers = servers;
    }

    /// Every [`HEALTH_INTERVAL`], a TCP connect to each server: failed ones that answer come
    /// back, and a server in use that stopped answering is left (connections it still holds
    /// may hang rather than fail, when its machine is gone rather than its process).
    pub async fn health_checks(self) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let servers = self.order();
            if servers.len() < 2 {
                continue;
            }
            let checks = servers.iter().map(|a| async move {
                let addr = format!("{}:{}", a.host(), a.port_u16().unwrap_or(443));
                let up = tokio::time::timeout(HEALTH_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await;
                (a.clone(), matches!(up, Ok(Ok(_))))
            });
            for (authority, up) in futures::future::join_all(checks).await {
                let healthy = self
                    .read()
                    .servers
                    .iter()
                    .any(|x| x.authority == authority && x.healthy);
                match (up, healthy) {
                    (true, false) => {
                        tracing::info!(server = %authority, "API server reachable again");
                        self.connected(&authority);
                    }
                    (false, true) => self.failed(&authority, "health check failed"),
                    _ => {}
                }
            }
        }
    }

    /// Keeps the learned servers in step with the `default/kubernetes` Endpoints, read every
    /// [`LEARN_INTERVAL`] (the API servers rewrite them as often; a node may only `get`
    /// Endpoints).
    pub async fn learn(self, client: kube::Client) {
        let api: Api<Endpoints> = Api::namespaced(client, "default");
        let mut tick = tokio::time::interval(LEARN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match api.get_opt("kubernetes").await {
                Ok(Some(endpoints)) => self.set_learned(&api_servers_in(&endpoints)),
                Ok(None) => {}
                Err(e) => tracing::debug!("reading the kubernetes Endpoints: {e}"),
            }
        }
    }
}

/// `host:port` of the `https` addresses of the `kubernetes` Endpoints, sorted.
pub fn api_servers_in(endpoints: &Endpoints) -> Vec<Authority> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let ports = subset.ports.as_deref().unwrap_or_default();
        let Some(port) = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(HTTPS_PORT_NAME))
            .map(|p| p.port)
        else {
            continue;
        };
        for address in subset.addresses.iter().flatten() {
            let host = match address.ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                Ok(ip) => ip.to_string(),
                Err(_) => continue,
            };
            if let Ok(a) = format!("{host}:{port}").parse::<Authority>() {
                out.push(a);
            }
        }
    }
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    out.dedup();
    out
}

/// The `host:port` of an `https://` URL (port 443 when it names none).
fn authority_of(url: &str) -> Result<Authority> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("API server URL {url:?}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("API server URL {url:?}: want https://host:port");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("API server URL {url:?} names no host"))?;
    let port = authority.port_u16().unwrap_or(443);
    format!("{}:{port}", authority.host())
        .parse()
        .with_context(|| format!("API server URL {url:?}"))
}

/// A connector (`Service<Uri>`) that sends each new connection to the server in use and moves
/// on to the next one when it cannot connect.
#[derive(Clone)]
pub struct Balanced<C> {
    pub inner: C,
    pub servers: ApiServers,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower::Service<Uri> for Balanced<C>
where
    C: tower::Service<Uri> + Clone + Send + 'static,
    C::Response: Send,
    C::Error: Into<BoxError>,
    C::Future: Send,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (inner, servers) = (self.inner.clone(), self.servers.clone());
        // poll_ready readied `self.inner`; the clone used below is readied again per attempt.
        let inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(connect_in_order(inner, servers, uri))
    }
}

async fn connect_in_order<C>(
    mut inner: C,
    servers: ApiServers,
    uri: Uri,
) -> Result<C::Response, BoxError>
where
    C: tower::Service<Uri> + Clone,
    C::Error: Into<BoxError>,
{
    use tower::ServiceExt;
    let order = servers.order();
    let limit = (order.len() > 1).then_some(CONNECT_TIMEOUT);
    let mut last: Option<BoxError> = None;
    for authority in order {
        let target = with_authority(&uri, &authority)?;
        let attempt = inner.ready().await.map_err(Into::into)?.call(target);
        let outcome = match limit {
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(format!("no connection within {limit:?}").into()),
            },
            None => attempt.await.map_err(Into::into),
        };
        match outcome {
            Ok(conn) => {
                servers.connected(&authority);
                return Ok(conn);
            }
            Err(e) => {
                servers.failed(&authority, &error_chain(&*e));
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| "no API server to connect to".into()))
}

fn with_authority(uri: &Uri, authority: &Authority) -> Result<Uri, BoxError> {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some("/".parse()?);
    }
    Ok(Uri::from_parts(parts)?)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset};

    fn a(s: &str) -> Authority {
        s.parse().unwrap()
    }

    #[test]
    fn urls_become_host_and_port() {
        let s = ApiServers::new(&[
            "https://10.0.0.2:6443".into(),
            "https://10.0.0.3".into(),
            "https://10.0.0.2:6443/".into(),
        ])
        .unwrap();
        assert_eq!(s.all(), vec!["10.0.0.2:6443", "10.0.0.3:443"]);
        assert!(ApiServers::new(&["http://10.0.0.2:6443".into()]).is_err());
        assert!(ApiServers::new(&[]).is_err());
    }

    #[test]
    fn a_failed_server_in_use_moves_to_the_next_healthy_one() {
        let s = ApiServers::new(&[
            "https://10.0.0.2:6443".into(),
            "https://10.0.0.3:6443".into(),
            "https://10.0.0.4:6443".into(),
        ])
        .unwrap();
        let epoch = s.epoch();
        s.failed(&a("10.0.0.3:6443"), "refused");
        // Not the one in use: nothing moves, but it is tried last.
        assert_eq!(s.current(), "10.0.0.2:6443");
        assert_eq!(
            s.all(),
            vec!["10.0.0.2:6443", "10.0.0.4:6443", "10.0.0.3:6443"]
        );
        s.failed(&a("10.0.0.2:6443"), "refused");
        assert_eq!(s.current(), "10.0.0.4:6443");
        assert!(s.epoch() > epoch);
        // The others come back: the one in use stays in use.
        s.connected(&a("10.0.0.2:6443"));
        s.connected(&a("10.0.0.3:6443"));
        assert_eq!(s.current(), "10.0.0.4:6443");
        assert_eq!(
            s.all(),
            vec!["10.0.0.4:6443", "10.0.0.2:6443", "10.0.0.3:6443"]
        );
    }

    #[test]
    fn learned_servers_join_and_leave_but_configured_ones_stay() {
        let s = ApiServers::new(&["https://10.0.0.2:6443".into()]).unwrap();
        s.set_learned(&[a("10.0.0.3:6443"), a("10.0.0.2:6443")]);
        assert_eq!(s.all(), vec!["10.0.0.2:6443", "10.0.0.3:6443"]);
        s.failed(&a("10.0.0.2:6443"), "refused");
        assert_eq!(s.current(), "10.0.0.3:6443");
        s.set_learned(&[]);
        assert_eq!(s.all(), vec!["10.0.0.2:6443"]);
        assert_eq!(s.current(), "10.0.0.2:6443");
    }

    #[test]
    fn endpoints_yield_the_https_addresses() {
        let endpoints = Endpoints {
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![
                    EndpointAddress {
                        ip: "10.0.0.2".into(),
                        ..Default::default()
                    },
                    EndpointAddress {
                        ip: "fd00::2".into(),
                        ..Default::default()
                    },
                    EndpointAddress {
                        ip: "not an ip".into(),
                        ..Default::default()
                    },
                ]),
                ports: Some(vec![EndpointPort {
                    name: Some("https".into()),
                    port: 6443,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let got: Vec<String> = api_servers_in(&endpoints)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, vec!["10.0.0.2:6443", "[fd00::2]:6443"]);
    }

    /// A connector that fails for some hosts: the balanced one goes on to the next server and
    /// remembers the failure.
    #[tokio::test]
    async fn connections_go_to_the_next_server_when_one_refuses() {
        use tower::ServiceExt;
        #[derive(Clone)]
        struct Fake;
        impl tower::Service<Uri> for Fake {
            type Response = String;
            type Error = std::io::Error;
            type Future = futures::future::Ready<Result<String, std::io::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, uri: Uri) -> Self::Future {
                futures::future::ready(if uri.host() == Some("10.0.0.2") {
                    Err(std::io::ErrorKind::ConnectionRefused.into())
                } else {
                    Ok(uri.to_string())
                })
            }
        }
        let servers = ApiServers::new(&[
            "https://10.0.0.2:6443".into(),
            "https://10.0.0.3:6443".into(),
        ])
        .unwrap();
        let svc = Balanced {
            inner: Fake,
            servers: servers.clone(),
        };
        let uri: Uri = "https://10.0.0.2:6443".parse().unwrap();
        let got = svc.clone().oneshot(uri.clone()).await.unwrap();
        assert_eq!(got, "https://10.0.0.3:6443/");
        assert_eq!(servers.current(), "10.0.0.3:6443");
        // Now straight to the one in use.
        assert_eq!(svc.oneshot(uri).await.unwrap(), "https://10.0.0.3:6443/");
    }
}
