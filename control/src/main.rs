//! `skiff-control`: the control plane binary. Parses flags and runs the API server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use skiff_control::apiserver::admission::{Ipv4Cidr, PortRange};
use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::controllers::leader::{LeaderElectionConfig, LeaderElector};
use skiff_control::controllers::{self, ControllerConfig, Enabled};
use skiff_control::store::{self, Store};

#[derive(Parser, Debug)]
#[command(
    name = "skiff-control",
    version,
    about = "skiff control plane: a Kubernetes-compatible API server over an embedded store or etcd"
)]
struct Flags {
    /// Where the embedded store, the CA, keys and the admin token live.
    #[arg(long, default_value = "/var/lib/skiff/control")]
    data_dir: PathBuf,
    /// Use these etcd servers (comma-separated URLs) instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// Port to serve HTTPS on.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address advertised to clients (kubeconfig, `kubernetes` service endpoints).
    /// Defaults to the bind address, or 127.0.0.1 when binding to all addresses.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Range ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = Ipv4Cidr::parse)]
    service_cluster_ip_range: Ipv4Cidr,
    /// Pod network of the cluster (node podCIDRs are carved from it).
    #[arg(long, default_value = "10.244.0.0/16", value_parser = Ipv4Cidr::parse)]
    cluster_cidr: Ipv4Cidr,
    /// Range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = PortRange::parse)]
    service_node_port_range: PortRange,
    /// Extra bearer tokens, in kube-apiserver's CSV format (token,user,uid,"group1,group2").
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Extra IPs or DNS names for the serving certificate (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Where to write the admin kubeconfig (default: <data-dir>/admin.kubeconfig).
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// How often store history is compacted, in seconds.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    /// How long events are kept, in seconds.
    #[arg(long, default_value_t = 3600)]
    event_ttl_seconds: u64,
    /// Controllers (and the scheduler) to run: `*` for all, `-name` to drop one, e.g.
    /// `*,-job`; empty for an API server alone. Known: scheduler, serviceaccount, namespace,
    /// nodeipam, nodelifecycle, replicaset, deployment, daemonset, job, endpoints,
    /// endpointslice, garbagecollector.
    #[arg(long, default_value = "*", value_parser = Enabled::parse)]
    controllers: Enabled,
    /// Run the controllers only while holding the `kube-controller-manager` Lease in
    /// kube-system, so several skiff-control processes on one etcd share the work safely.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's lease is valid without renewal (seconds).
    #[arg(long, default_value_t = 15)]
    leader_elect_lease_duration: u64,
    /// How long the leader keeps trying to renew before it stops working (seconds).
    #[arg(long, default_value_t = 10)]
    leader_elect_renew_deadline: u64,
    /// How often leaders renew and candidates retry (seconds).
    #[arg(long, default_value_t = 2)]
    leader_elect_retry_period: u64,
    /// Size of the podCIDR each node gets from --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// A node whose Lease is not renewed for this long becomes Ready=Unknown (seconds).
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Pods on an unready node are evicted after this long (seconds).
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout: u64,
}

fn main() -> Result<()> {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(flags))
}

async fn run(flags: Flags) -> Result<()> {
    let store: Arc<dyn Store> = if flags.etcd_servers.is_empty() {
        let dir = flags.data_dir.join("store");
        tracing::info!(dir = %dir.display(), "using the embedded store");
        Arc::new(store::embedded::EmbeddedStore::open(&dir).context("opening the embedded store")?)
    } else {
        tracing::info!(servers = ?flags.etcd_servers, "using etcd");
        Arc::new(
            store::etcd::EtcdStore::connect(&flags.etcd_servers)
                .await
                .context("connecting to etcd")?,
        )
    };
    let mut config = ApiConfig::new(flags.data_dir.clone());
    config.bind_address = flags.bind_address;
    config.secure_port = flags.secure_port;
    config.advertise_address = flags.advertise_address;
    config.service_cidr = flags.service_cluster_ip_range;
    config.node_ports = flags.service_node_port_range;
    config.token_auth_file = flags.token_auth_file;
    config.tls_sans = flags.tls_san;
    if let Some(path) = flags.kubeconfig_out {
        config.kubeconfig_out = path;
    }
    config.compaction_interval = Duration::from_secs(flags.compaction_interval_seconds.max(1));
    config.event_ttl = Duration::from_secs(flags.event_ttl_seconds);
    let kubeconfig = config.kubeconfig_out.clone();
    let server = ApiServer::start(config, store).await?;
    tracing::info!(
        url = %server.url,
        kubeconfig = %kubeconfig.display(),
        "serving the Kubernetes API"
    );
    let controller_config = ControllerConfig {
        enabled: flags.controllers.clone(),
        cluster_cidr: flags.cluster_cidr,
        node_cidr_mask_size: flags.node_cidr_mask_size,
        node_monitor_grace_period: Duration::from_secs(flags.node_monitor_grace_period),
        pod_eviction_timeout: Duration::from_secs(flags.pod_eviction_timeout),
        ..ControllerConfig::default()
    };
    let result = if controller_config.enabled.is_empty() {
        shutdown_signal().await;
        Ok(())
    } else {
        // The controllers are clients of this apiserver, with the admin identity.
        let client = client_for(&server.kubeconfig).await?;
        let work = controllers::run(client.clone(), controller_config);
        if flags.leader_elect {
            let identity = format!("{}_{}", hostname(), uuid::Uuid::new_v4());
            let mut election = LeaderElectionConfig::new("kube-controller-manager", &identity);
            election.lease_duration = Duration::from_secs(flags.leader_elect_lease_duration);
            election.renew_deadline = Duration::from_secs(flags.leader_elect_renew_deadline);
            election.retry_period = Duration::from_secs(flags.leader_elect_retry_period);
            let mut elector = LeaderElector::new(client, election);
            tokio::select! {
                r = elector.run(work) => r.map_err(anyhow::Error::from),
                _ = shutdown_signal() => {
                    elector.release().await;
                    Ok(())
                }
            }
        } else {
            tokio::select! {
                _ = work => Ok(()),
                _ = shutdown_signal() => Ok(()),
            }
        }
    };
    tracing::info!("shutting down");
    server.shutdown().await;
    // Losing leadership ends the process (as kube-controller-manager does): a supervisor
    // restarts it as a fresh candidate, and no controller keeps working unsupervised.
    result
}

async fn client_for(kubeconfig: &str) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "skiff-control".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
