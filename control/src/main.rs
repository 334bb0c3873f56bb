//! `skiff-control`: the control plane binary. Parses flags and runs the API server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use skiff_control::apiserver::admission::{Ipv4Cidr, PortRange};
use skiff_control::apiserver::{ApiConfig, ApiServer};
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
    let _ = flags.cluster_cidr; // Used by node IPAM (controllers).
    let kubeconfig = config.kubeconfig_out.clone();
    let server = ApiServer::start(config, store).await?;
    tracing::info!(
        url = %server.url,
        kubeconfig = %kubeconfig.display(),
        "serving the Kubernetes API"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
