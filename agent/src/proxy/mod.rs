//! The service proxy: Services and EndpointSlices in, a programmed dataplane out.
//!
//! `--proxy-mode ebpf` translates service addresses at the socket (cgroup programs) and
//! NodePort traffic on the uplink (tc) with the programs of `ebpf/` ([`ebpf`]);
//! `--proxy-mode iptables` programs kube-proxy's chain layout ([`iptables`]); `auto` tries
//! eBPF and falls back to iptables, saying why.
//!
//! Where to start: [`runner`] is the loop (watch → [`tracker`] → [`model::ProxyState`] →
//! sync); [`mod@dataplane`] is its boundary with the two dataplanes (the
//! [`dataplane::Dataplane`] trait and its [`dataplane::SyncReport`]), which depend on it and
//! not on the loop; [`ebpf::fake`] runs the eBPF dataplane over in-memory maps for tests.
pub mod dataplane;
pub mod drain;
pub mod ebpf;
pub mod flow_cleaners;
pub mod healthcheck;
pub mod iptables;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod stale_flows;
#[cfg(test)]
pub(crate) mod test_support;
pub mod tracker;

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Result, bail};
use async_trait::async_trait;

use self::dataplane::{Dataplane, SyncReport, SyncStats};
use self::iptables::{Backend, IptablesDataplane};
use self::model::{ProxyState, ServicePortName};
use crate::network::Ipv4Net;

/// The iptables dataplane on the async runner: its syncs run `iptables-restore`, so they
/// go to a blocking thread, with a copy of the state that is kept up to date port by port
/// (not cloned whole for every sync).
pub struct IptablesProxy(Option<(IptablesDataplane, ProxyState)>);

impl IptablesProxy {
    pub fn new(dataplane: IptablesDataplane) -> IptablesProxy {
        IptablesProxy(Some((dataplane, ProxyState::new())))
    }
}

#[async_trait]
impl Dataplane for IptablesProxy {
    fn mode(&self) -> &'static str {
        "iptables"
    }

    async fn sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<SyncReport> {
        let Some((mut dp, mut copy)) = self.0.take() else {
            bail!("the iptables dataplane was lost by an earlier failure");
        };
        match changed {
            Some(changed) => {
                for port in changed {
                    match state.get(port) {
                        Some(sp) => copy.insert(port.clone(), sp.clone()),
                        None => copy.remove(port),
                    };
                }
            }
            None => copy = state.clone(),
        }
        let changed = changed.cloned();
        let (dp, copy, result) = tokio::task::spawn_blocking(move || {
            let r = dp.sync_changed(&copy, changed.as_ref());
            (dp, copy, r)
        })
        .await?;
        let (services, backends) = dp.programmed();
        self.0 = Some((dp, copy));
        let stats = result?;
        Ok(SyncReport::complete(SyncStats {
            services,
            backends,
            writes: stats.rules_written,
            conntrack_deleted: stats.conntrack_entries_deleted,
        }))
    }
}

/// Where the dataplane hooks into this node.
pub struct ProxyTarget {
    pub bpffs_dir: std::path::PathBuf,
    pub cgroup_root: std::path::PathBuf,
    pub node_ip: std::net::Ipv4Addr,
    /// The interface holding the node IP (NodePort traffic arrives there).
    pub uplink: Option<String>,
    pub cluster_cidr: Ipv4Net,
    /// Where ClusterIPs come from (`--service-cluster-ip-range`).
    pub service_cidr: Ipv4Net,
    pub sizes: ebpf::MapSizes,
}

fn iptables_dataplane(t: &ProxyTarget) -> Result<Box<dyn Dataplane>> {
    if !Backend::Nft.available() {
        bail!("proxy mode iptables needs the iptables command (Debian package iptables)");
    }
    // NodePorts and hostPorts on 127.0.0.1 DNAT loopback traffic to pods, which the kernel
    // routes only with route_localnet (kube-proxy sets it too; KUBE-FIREWALL drops outside
    // packets to 127.0.0.0/8 that it would otherwise let in).
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1") {
        tracing::warn!("setting net.ipv4.conf.all.route_localnet=1 (NodePort on 127.0.0.1): {e}");
    }
    // Leftovers of eBPF mode would translate sockets before iptables sees them.
    if let Err(e) = ebpf::cleanup(&t.bpffs_dir, Some(&t.cgroup_root)) {
        tracing::warn!("removing eBPF proxy leftovers: {e:#}");
    }
    Ok(Box::new(IptablesProxy::new(
        IptablesDataplane::new(Backend::Nft)
            .with_cluster_cidr(Some(t.cluster_cidr))
            .with_service_cidr(Some(t.service_cidr)),
    )))
}

fn ebpf_dataplane(t: &ProxyTarget) -> Result<Box<dyn Dataplane>> {
    let mut cfg = ebpf::EbpfConfig::new(&t.bpffs_dir, &t.cgroup_root);
    cfg.uplink = t.uplink.clone();
    cfg.node_ip = Some(t.node_ip);
    cfg.sizes = t.sizes;
    let dp = ebpf::EbpfDataplane::open(&cfg)?;
    // Leftovers of iptables mode would DNAT what the socket programs already translated.
    if let Err(e) = IptablesDataplane::cleanup_all() {
        tracing::warn!("removing iptables proxy leftovers: {e:#}");
    }
    Ok(Box::new(dp))
}

/// `--proxy-mode`: which dataplane programs Services (the flag's values are these names in
/// lower case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    Ebpf,
    Iptables,
    // eBPF where the kernel allows it, else iptables.
    Auto,
}

/// The dataplane for `--proxy-mode`. Starting in one mode removes the other's leftovers.
pub async fn dataplane(mode: &ProxyMode, t: &ProxyTarget) -> Result<Box<dyn Dataplane>> {
    use crate::network::netlink::{ServiceRoute, ensure_service_route};
    let dp = choose(mode, t)?;
    let route = match dp.mode() {
        "iptables" => ServiceRoute::ViaBridge,
        _ => ServiceRoute::Unreachable,
    };
    ensure_service_route(t.service_cidr, route).await?;
    Ok(dp)
}

fn choose(mode: &ProxyMode, t: &ProxyTarget) -> Result<Box<dyn Dataplane>> {
    match mode {
        ProxyMode::Iptables => iptables_dataplane(t),
        ProxyMode::Ebpf => ebpf_dataplane(t),
        ProxyMode::Auto => match ebpf_dataplane(t) {
            Ok(d) => {
                tracing::info!("proxy mode auto: using eBPF");
                Ok(d)
            }
            Err(e) => {
                tracing::warn!("proxy mode auto: eBPF is not usable here ({e:#}); using iptables");
                iptables_dataplane(t)
            }
        },
    }
}

/// Serve the agent's Prometheus metrics over plain HTTP (like kube-proxy's 10249).
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<metrics::ProxyMetrics>,
) -> Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
