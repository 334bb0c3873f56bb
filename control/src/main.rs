//! `skiff-control`: the control plane binary. Parses flags and runs the API server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use skiff_common::cidr::{Ipv4Cidr, Ipv4Range};
use skiff_common::duration::seconds_or_duration;
use skiff_control::apiserver::admission::PortRange;
use skiff_control::apiserver::authn::serviceaccount::DEFAULT_ISSUER;
use skiff_control::apiserver::pki;
use skiff_control::apiserver::{ApiConfig, ApiServer};
use skiff_control::manager::{self, ControllerConfig, Enabled};
use skiff_control::runtime::leader::{LeaderElectionConfig, LeaderElector};
use skiff_control::store::{self, Store};

#[derive(Parser, Debug)]
#[command(
    name = "skiff-control",
    version,
    about = "skiff control plane: a Kubernetes-compatible API server over an embedded store or etcd"
)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// The issuer (`iss`) of the service-account tokens this server signs and accepts.
    #[arg(long, default_value = DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// Audiences a token must name to be accepted (comma-separated); the issuer when unset.
    #[arg(long, value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// Extra IPs or DNS names for the serving certificate (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Where to write the admin kubeconfig (default: <data-dir>/admin.kubeconfig).
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// How often store history is compacted: a duration (`5m`, `1h`) or bare seconds.
    #[arg(long, default_value = "5m", value_parser = seconds_or_duration)]
    compaction_interval_seconds: Duration,
    /// How long events are kept: a duration (`1h`, `90m`) or bare seconds (kube-apiserver's
    /// `--event-ttl`).
    #[arg(long, alias = "event-ttl", default_value = "1h", value_parser = seconds_or_duration)]
    event_ttl_seconds: Duration,
    /// Controllers (and the scheduler) to run: `*` for all, `-name` to drop one, e.g.
    /// `*,-job`; empty for an API server alone. Known: scheduler, serviceaccount, root-ca-cert-publisher, namespace,
    /// nodeipam, nodelifecycle, replicaset, deployment, daemonset, job, endpoints,
    /// endpointslice, garbagecollector, csrsigning, csrapproving, service-lb-controller.
    #[arg(long, default_value = "*", value_parser = Enabled::parse)]
    controllers: Enabled,
    /// Run the controllers only while holding the `kube-controller-manager` Lease in
    /// kube-system, so several skiff-control processes on one etcd share the work safely.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's lease is valid without renewal: a duration or bare seconds.
    #[arg(long, default_value = "15s", value_parser = seconds_or_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops working: a duration or bare
    /// seconds.
    #[arg(long, default_value = "10s", value_parser = seconds_or_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often leaders renew and candidates retry: a duration or bare seconds.
    #[arg(long, default_value = "2s", value_parser = seconds_or_duration)]
    leader_elect_retry_period: Duration,
    /// Size of the podCIDR each node gets from --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// A node whose Lease is not renewed for this long becomes Ready=Unknown: a duration
    /// (`40s`, `10m`) or bare seconds.
    #[arg(long, default_value = "40s", value_parser = seconds_or_duration)]
    node_monitor_grace_period: Duration,
    /// Pods on an unready node are evicted after this long: a duration (`5m`) or bare
    /// seconds.
    #[arg(long, default_value = "5m", value_parser = seconds_or_duration)]
    pod_eviction_timeout: Duration,
    /// The longest certificate the CSR signers issue (with the CA in --data-dir): a duration
    /// (`8760h`) or bare seconds.
    #[arg(long, default_value = "8760h", value_parser = seconds_or_duration)]
    cluster_signing_duration: Duration,
    /// An address pool for `type: LoadBalancer` Services, as a CIDR (`192.0.2.0/28`, without
    /// its network and broadcast addresses) or a range (`192.0.2.10-192.0.2.20`); repeat for
    /// several. Services of `loadBalancerClass` `skiff.io/l2` (or none) get addresses from it.
    #[arg(long, value_parser = Ipv4Range::parse)]
    service_lb_pool: Vec<Ipv4Range>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Issue a kubeconfig with a client certificate for a user (CN) in groups (O), signed by
    /// the cluster CA in --data-dir, and print it (or write it to --out, mode 0600).
    Kubeconfig(KubeconfigArgs),
    /// Bootstrap tokens for joining nodes (kubeadm's `token`).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a bootstrap token (its Secret in kube-system) and print it.
    Create(TokenCreateArgs),
    /// List the bootstrap tokens.
    List(TokenAdminArgs),
    /// Delete a bootstrap token (by id or whole token).
    Delete {
        token: String,
        #[command(flatten)]
        admin: TokenAdminArgs,
    },
}

#[derive(clap::Args, Debug)]
struct TokenAdminArgs {
    /// An administrator's kubeconfig; default: <data-dir>/admin.kubeconfig.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long, default_value = "/var/lib/skiff/control")]
    data_dir: PathBuf,
}

impl TokenAdminArgs {
    fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.kubeconfig"))
    }
}

#[derive(clap::Args, Debug)]
struct TokenCreateArgs {
    #[command(flatten)]
    admin: TokenAdminArgs,
    /// Print the whole `skiff-agent join` command instead of the token alone.
    #[arg(long)]
    print_join_command: bool,
    /// How long the token is valid (`24h`, `30m`); 0 for ever.
    #[arg(long, default_value = "24h", value_parser = seconds_or_duration)]
    ttl: Duration,
    /// A human-readable note of what the token is for.
    #[arg(long, default_value = "")]
    description: String,
    /// Extra groups the token authenticates as (besides system:bootstrappers).
    #[arg(long, value_delimiter = ',', default_value = skiff_common::bootstrap_token::DEFAULT_NODE_TOKEN_GROUP)]
    groups: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct KubeconfigArgs {
    /// The user name (the certificate's common name).
    #[arg(long)]
    user: String,
    /// A group of the user (the certificate's organization).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The control plane's data dir, holding the cluster CA.
    #[arg(long, default_value = "/var/lib/skiff/control")]
    data_dir: PathBuf,
    /// The API server URL (default: the server of <data-dir>/admin.kubeconfig).
    #[arg(long)]
    server: Option<String>,
    /// How long the certificate is valid: a duration (`8760h`, `30m`) or bare seconds.
    #[arg(long, default_value = "8760h", value_parser = seconds_or_duration)]
    expiration: Duration,
    /// Write the kubeconfig here (mode 0600) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let flags = Flags::parse();
    match &flags.command {
        Some(Command::Kubeconfig(args)) => return issue_kubeconfig(args),
        Some(Command::Token(cmd)) => return token_command(cmd),
        None => {}
    }
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
    let advertised = flags.advertise_address.unwrap_or(flags.bind_address);
    if !flags.etcd_servers.is_empty() && (advertised.is_loopback() || advertised.is_unspecified()) {
        // Other API servers on the same etcd would list it in the `kubernetes` Endpoints,
        // where nodes learn the API servers from.
        tracing::warn!(
            "no --advertise-address: this API server is advertised as 127.0.0.1, which no \
             node can reach; give the address nodes reach it on"
        );
    }
    let mut config = ApiConfig::new(flags.data_dir.clone());
    config.bind_address = flags.bind_address;
    config.secure_port = flags.secure_port;
    config.advertise_address = flags.advertise_address;
    config.service_cidr = flags.service_cluster_ip_range;
    config.node_ports = flags.service_node_port_range;
    config.token_auth_file = flags.token_auth_file;
    config.service_account_issuer = flags.service_account_issuer;
    config.api_audiences = flags.api_audiences;
    config.tls_sans = flags.tls_san;
    if let Some(path) = flags.kubeconfig_out {
        config.kubeconfig_out = path;
    }
    config.compaction_interval = flags
        .compaction_interval_seconds
        .max(Duration::from_secs(1));
    config.event_ttl = flags.event_ttl_seconds;
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
        node_monitor_grace_period: flags.node_monitor_grace_period,
        pod_eviction_timeout: flags.pod_eviction_timeout,
        root_ca: server.ca_pem.clone(),
        cluster_signing_dir: Some(flags.data_dir.clone()),
        cluster_signing_duration: flags.cluster_signing_duration,
        lb_pools: flags.service_lb_pool.clone(),
        ..ControllerConfig::default()
    };
    let result = if controller_config.enabled.is_empty() {
        shutdown_signal().await;
        Ok(())
    } else {
        // The controllers and the scheduler are clients of this apiserver, each with an
        // identity of its own; leader election is the controller manager's.
        let identities = manager::Identities::from_kubeconfigs(
            &server.controller_manager_kubeconfig,
            &server.scheduler_kubeconfig,
        )
        .await?;
        let client = kube::Client::try_from(identities.controller_manager.clone())?;
        let work = manager::run(identities, controller_config);
        if flags.leader_elect {
            let identity = format!("{}_{}", hostname(), uuid::Uuid::new_v4());
            let mut election = LeaderElectionConfig::new("kube-controller-manager", &identity);
            election.lease_duration = flags.leader_elect_lease_duration;
            election.renew_deadline = flags.leader_elect_renew_deadline;
            election.retry_period = flags.leader_elect_retry_period;
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

/// `skiff-control kubeconfig`: a client certificate for `--user` from the cluster CA.
fn issue_kubeconfig(args: &KubeconfigArgs) -> Result<()> {
    let ca = pki::ClusterCa::load(&args.data_dir)?;
    let server = match &args.server {
        Some(s) => s.clone(),
        None => admin_server(&args.data_dir.join("admin.kubeconfig"))
            .unwrap_or_else(|| "https://127.0.0.1:6443".to_string()),
    };
    let cert = ca.issue_client(&args.user, &args.groups, args.expiration)?;
    let text = pki::kubeconfig(
        &server,
        &ca.pem,
        &args.user,
        pki::Credential::Certificate(&cert),
    );
    match &args.out {
        Some(path) => {
            pki::write_private(path, &text).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `skiff-control token …`: through the API, with an administrator's kubeconfig.
fn token_command(cmd: &TokenCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(async {
        use skiff_control::token;
        match cmd {
            TokenCommand::Create(args) => {
                let (client, server, ca) = token::admin_client(&args.admin.kubeconfig()).await?;
                let request = token::TokenRequest {
                    ttl: (!args.ttl.is_zero()).then_some(args.ttl),
                    description: &args.description,
                    groups: &args.groups,
                };
                let created = token::create(&client, &request).await?;
                if args.print_join_command {
                    let servers = token::join_servers(&client, &server).await;
                    token::join_command(&servers, &ca, &created)
                } else {
                    Ok(created.token())
                }
            }
            TokenCommand::List(admin) => {
                let (client, ..) = token::admin_client(&admin.kubeconfig()).await?;
                token::list(&client).await.map(|t| t.trim_end().to_string())
            }
            TokenCommand::Delete { token: t, admin } => {
                let (client, ..) = token::admin_client(&admin.kubeconfig()).await?;
                token::delete(&client, t).await
            }
        }
    })?;
    println!("{out}");
    Ok(())
}

/// The server of the first cluster in a kubeconfig file, if it has one.
fn admin_server(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let config = kube::config::Kubeconfig::from_yaml(&text).ok()?;
    config.clusters.first()?.cluster.as_ref()?.server.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Flags {
        let argv = std::iter::once("skiff-control").chain(args.iter().copied());
        Flags::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn lb_pools_repeat_and_take_cidrs_or_ranges() {
        assert!(parse(&[]).service_lb_pool.is_empty());
        let f = parse(&[
            "--service-lb-pool=192.0.2.0/29",
            "--service-lb-pool",
            "198.51.100.10-198.51.100.12",
        ]);
        let pools: Vec<String> = f.service_lb_pool.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            pools,
            ["192.0.2.1-192.0.2.6", "198.51.100.10-198.51.100.12"]
        );
        let argv = ["skiff-control", "--service-lb-pool", "192.0.2.9-192.0.2.1"];
        assert!(Flags::try_parse_from(argv).is_err());
    }

    #[test]
    fn duration_flags_take_kube_durations_and_bare_seconds() {
        let f = parse(&[]);
        assert_eq!(f.node_monitor_grace_period, Duration::from_secs(40));
        assert_eq!(f.pod_eviction_timeout, Duration::from_secs(300));
        assert_eq!(f.compaction_interval_seconds, Duration::from_secs(300));
        assert_eq!(f.event_ttl_seconds, Duration::from_secs(3600));
        assert_eq!(f.leader_elect_lease_duration, Duration::from_secs(15));
        assert_eq!(f.leader_elect_renew_deadline, Duration::from_secs(10));
        assert_eq!(f.leader_elect_retry_period, Duration::from_secs(2));

        let f = parse(&[
            "--node-monitor-grace-period=10m",
            "--pod-eviction-timeout=1h30m",
            "--compaction-interval-seconds=90s",
            "--event-ttl=1.5h",
            "--leader-elect-lease-duration=1m",
            "--leader-elect-renew-deadline=40s",
            "--leader-elect-retry-period=500ms",
        ]);
        assert_eq!(f.node_monitor_grace_period, Duration::from_secs(600));
        assert_eq!(f.pod_eviction_timeout, Duration::from_secs(5400));
        assert_eq!(f.compaction_interval_seconds, Duration::from_secs(90));
        assert_eq!(f.event_ttl_seconds, Duration::from_secs(5400));
        assert_eq!(f.leader_elect_lease_duration, Duration::from_secs(60));
        assert_eq!(f.leader_elect_renew_deadline, Duration::from_secs(40));
        assert_eq!(f.leader_elect_retry_period, Duration::from_millis(500));

        // Bare numbers are seconds, as before.
        let f = parse(&[
            "--node-monitor-grace-period",
            "8",
            "--pod-eviction-timeout",
            "5",
            "--event-ttl-seconds=60",
        ]);
        assert_eq!(f.node_monitor_grace_period, Duration::from_secs(8));
        assert_eq!(f.pod_eviction_timeout, Duration::from_secs(5));
        assert_eq!(f.event_ttl_seconds, Duration::from_secs(60));

        let f = parse(&[
            "kubeconfig",
            "--user",
            "alice",
            "--group",
            "devs",
            "--expiration=10m",
        ]);
        let Some(Command::Kubeconfig(k)) = f.command else {
            panic!("no kubeconfig command");
        };
        assert_eq!(k.user, "alice");
        assert_eq!(k.groups, vec!["devs"]);
        assert_eq!(k.expiration, Duration::from_secs(600));
        assert_eq!(parse(&[]).service_account_issuer, DEFAULT_ISSUER);

        let err = Flags::try_parse_from(["skiff-control", "--node-monitor-grace-period=soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"time: invalid duration "soon""#), "{err}");
    }
}
