//! Cluster DNS, served by the agent on every node (no DNS pod): the zone of the Kubernetes
//! DNS specification built from the cluster's Services and EndpointSlices ([`records`]),
//! a UDP and TCP server on the pods' gateway address ([`server`]) and forwarding of all
//! other names to the node's resolvers with a cache ([`forward`]).
//!
//! Pods reach it at the `kube-system/kube-dns` ClusterIP (`--cluster-dns`, 10.96.0.10 by
//! convention): the service proxy sends that Service to the node's own server
//! ([`crate::proxy::model::localize_dns`]), so queries never leave the node.

pub mod answers;
pub mod forward;
pub mod records;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use self::forward::Forwarder;
use self::records::Zone;
use self::server::{DnsServer, Resolver, ZoneCell};

/// Changes arriving within this long are folded into one rebuild of the zone.
const REBUILD_DELAY: Duration = Duration::from_millis(20);

/// What the node's DNS server needs to know.
pub struct DnsOptions {
    /// Where to listen (UDP and TCP).
    pub listen: SocketAddr,
    /// The cluster domain (`--cluster-domain`).
    pub domain: String,
    /// Resolvers for names outside the cluster.
    pub upstreams: Vec<SocketAddr>,
}

/// The upstream resolvers: `explicit` when given, else the node's /etc/resolv.conf without
/// the addresses that are this DNS itself.
pub fn default_upstreams(explicit: &[SocketAddr], own: &[IpAddr]) -> Vec<SocketAddr> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    forward::resolv_conf_upstreams(&text, own)
}

/// Bind the server (failing now if the address is taken) and serve in the background,
/// keeping the zone up to date from watches of Services and EndpointSlices.
pub async fn start(client: Client, opts: DnsOptions) -> Result<()> {
    let server = DnsServer::bind(opts.listen).await?;
    let cell = Arc::new(ZoneCell::new(Zone::build(&opts.domain, [], [])));
    tracing::info!(listen = %opts.listen, domain = %opts.domain, upstreams = ?opts.upstreams, "cluster DNS serving");
    let resolver = Arc::new(Resolver {
        zone: cell.clone(),
        forwarder: Forwarder::new(opts.upstreams),
    });
    tokio::spawn(keep_zone(client, opts.domain, cell));
    tokio::spawn(server.run(resolver));
    Ok(())
}

/// Rebuild the zone whenever a Service or EndpointSlice changes (or a watch relists).
async fn keep_zone(client: Client, domain: String, cell: Arc<ZoneCell>) {
    let changed = Arc::new(Notify::new());
    let services = reflect::<Service>(Api::all(client.clone()), changed.clone());
    let slices = reflect::<EndpointSlice>(Api::all(client), changed.clone());
    loop {
        changed.notified().await;
        tokio::time::sleep(REBUILD_DELAY).await;
        let (svcs, eps) = (services.state(), slices.state());
        let zone = Zone::build(
            &domain,
            svcs.iter().map(|s| s.as_ref()),
            eps.iter().map(|s| s.as_ref()),
        );
        cell.set(zone);
    }
}

/// A reflector whose store changes wake `changed`.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
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
            if matches!(
                ev,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
            ) {
                changed.notify_one();
            }
            futures::future::ready(())
        });
    tokio::spawn(stream);
    store
}
