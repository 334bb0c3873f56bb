//! `skiff-agent`: flags in, library calls out.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use skiff_agent::config::AgentConfig;
use skiff_agent::credentials::CredentialOptions;
use skiff_agent::image::ImageStore;
use skiff_agent::network::Ipv4Net;
use skiff_agent::proxy::ProxyMode;
use skiff_agent::runtime;
use skiff_common::duration::seconds_or_duration;

#[derive(Parser)]
#[command(
    name = "skiff-agent",
    version,
    about = "skiff's node agent: runs the pods bound to this node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register this node and run the pods the scheduler binds to it.
    Run(Box<RunArgs>),
    /// Manage the node-local image store.
    Image {
        /// The agent's state directory (images live in <root-dir>/images).
        #[arg(long, default_value = DEFAULT_ROOT, global = true)]
        root_dir: PathBuf,
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Join a cluster (kubeadm's bootstrap-token discovery): check the API server with the
    /// token and the CA's public-key hash, write the bootstrap kubeconfig and get this
    /// node's client certificate. Then start the agent with `skiff-agent run`.
    Join(JoinArgs),
    /// Remove everything the agent put into the kernel: pod processes, cgroups, network
    /// namespace pins, the bridge and its routes, masquerade rules, BPF pins.
    Cleanup {
        #[arg(long, default_value = DEFAULT_ROOT)]
        root_dir: PathBuf,
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// The --socket-lb-cgroup the agent ran with, if it differed from --cgroup-root.
        #[arg(long)]
        socket_lb_cgroup: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The node name the agent ran with (names its v1 cgroups); default: the hostname.
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Inspect the eBPF service proxy's pinned maps of a node (works without a running agent).
    Bpf {
        /// The node's bpffs directory (the agent's --bpffs; the cluster harness uses
        /// /sys/fs/bpf/skiff/<node>).
        #[arg(long, default_value = DEFAULT_BPFFS, global = true)]
        bpffs: PathBuf,
        /// Output format: table or json.
        #[arg(short = 'o', long = "output", default_value = "table", global = true, value_parser = ["table", "json"])]
        output: String,
        #[command(subcommand)]
        command: BpfCommand,
    },
    /// (internal) Hold a pod's namespaces.
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        host_network: bool,
        /// Stay in the node's PID namespace (`hostPID`) instead of being PID 1 of the pod's.
        #[arg(long)]
        host_pid: bool,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
    /// (internal) Supervise one container instance: logs and exit status.
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        spec: PathBuf,
    },
    /// (internal) Become a container: namespaces, rootfs, exec.
    #[command(hide = true)]
    Init {
        #[arg(long)]
        spec: PathBuf,
    },
    /// (internal) Run a command inside a running container (exec probes).
    #[command(hide = true)]
    ExecIn {
        #[arg(long)]
        pid: i32,
        /// stdin is a terminal: make it the command's controlling terminal (`kubectl exec -t`).
        #[arg(long)]
        tty: bool,
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BpfCommand {
    /// Load-balancer state: services with their frontends, backends and slots.
    Lb {
        #[command(subcommand)]
        command: LbCommand,
    },
    /// Every backend (id, address, whether it is on this node).
    Backends,
    /// ClientIP session-affinity entries.
    Affinity,
    /// NodePort connection-tracking entries.
    Ct,
    /// Fill level of every map.
    Maps,
    /// Sockets destroyed because the backend they were connected to left its Service.
    Sockets,
}

#[derive(Subcommand)]
enum LbCommand {
    /// Each frontend with its service name, backends, slots and revNAT id.
    List,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import a `docker save` or OCI image-layout archive (tar, optionally gzip).
    Import { file: PathBuf },
    /// Give an image (by name or id) another name, e.g. a second tag of one image.
    Tag { source: String, target: String },
    /// List the images on this node.
    List,
}

const DEFAULT_ROOT: &str = "/var/lib/skiff/agent";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf/skiff";

#[derive(Args)]
struct JoinArgs {
    /// The API server, e.g. https://10.0.0.1:6443; repeat or comma-separate for several (a
    /// highly available control plane): discovery tries them in order, and the agent keeps
    /// all of them to balance over.
    #[arg(long = "server", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// A bootstrap token `<id>.<secret>` (`skiff-control token create`).
    #[arg(long)]
    token: String,
    /// `sha256:<hex>` of the cluster CA's public key (printed by
    /// `skiff-control token create --print-join-command`).
    #[arg(long)]
    ca_cert_hash: String,
    /// The Node name; default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long, default_value = DEFAULT_ROOT)]
    root_dir: PathBuf,
    /// Where to write the bootstrap kubeconfig; default: <root-dir>/bootstrap.kubeconfig.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Where to write the node's kubeconfig; default: <root-dir>/kubelet.kubeconfig.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to keep the node's client certificates; default: <root-dir>/pki.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Kubeconfig for the apiserver (its cluster CA also authenticates the apiserver's
    /// log requests to this agent). With --bootstrap-kubeconfig, the agent writes it: the
    /// cluster of the bootstrap kubeconfig and the node's client certificate.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Kubeconfig with a bootstrap token, used to request the node's client certificate when
    /// --cert-dir holds no valid one (the kubelet's TLS bootstrap).
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// An API server URL (`https://host:port`), instead of the kubeconfig's; repeat or
    /// comma-separate for several. The agent balances over those that answer, and learns the
    /// others from the `kubernetes` Endpoints.
    #[arg(long = "server", value_delimiter = ',')]
    servers: Vec<String>,
    /// Where the node's client certificates are kept; default: <root-dir>/pki.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Renew the node's client certificate (at 70-90 % of its lifetime) when it came from
    /// the bootstrap; `--rotate-certificates=false` to keep it until it expires.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    rotate_certificates: bool,
    /// The Node name to register; default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP; default: the local address used to reach the apiserver.
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// State: pods, images, IP allocations, serving certificate.
    #[arg(long, default_value = DEFAULT_ROOT)]
    root_dir: PathBuf,
    /// cgroup v2 directory all pods of this node live under; default: the cgroup2 mount.
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// cgroup v2 directory the eBPF socket programs attach to: every process below it
    /// reaches Services by their cluster IPs (Cilium's socket load-balancing). Default:
    /// --cgroup-root, which on a node is the whole host.
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// bpffs directory for this node's pinned maps and programs.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Directory of static pod manifests (YAML or JSON), run without the scheduler.
    #[arg(long)]
    manifest_dir: Option<PathBuf>,
    /// The cluster's pod network; traffic from pods to outside it is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// The apiserver's ClusterIP range (in iptables mode it is routed onto skiff0 so node
    /// processes reach services on nodes without a default route).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: Ipv4Net,
    /// HTTPS port for the apiserver's log requests (kubelet: 10250).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Service proxy mode: ebpf, iptables or auto.
    #[arg(long, value_enum, default_value_t = ProxyMode::Auto)]
    proxy_mode: ProxyMode,
    /// The cluster DNS address (the `kube-dns` Service's ClusterIP, 10.96.0.10 by
    /// convention) written into pods' resolv.conf (dnsPolicy ClusterFirst). When set the
    /// agent also serves cluster DNS on its pods' gateway address, port 53, and sends that
    /// Service's traffic there.
    #[arg(long)]
    cluster_dns: Option<Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// A resolver for names outside the cluster (`IP` or `IP:PORT`; repeat for several).
    /// Default: the nameservers of the node's /etc/resolv.conf.
    #[arg(long = "dns-upstream", value_parser = dns_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// First CrashLoopBackOff delay (doubles per restart): a duration (`10s`, `500ms`) or
    /// bare seconds.
    #[arg(long, default_value = "10s", value_parser = seconds_or_duration)]
    crashloop_backoff_initial: Duration,
    /// CrashLoopBackOff cap: a duration (`5m`) or bare seconds.
    #[arg(long, default_value = "5m", value_parser = seconds_or_duration)]
    crashloop_backoff_max: Duration,
    /// How often a running pod's configMap, secret, downwardAPI and projected volumes are
    /// re-synced with their sources (kubelet's flag): a duration (`1m`) or bare seconds.
    #[arg(long, default_value = "1m", value_parser = seconds_or_duration)]
    sync_frequency: Duration,
    /// Rotate a container log file beyond this size (bytes).
    #[arg(long, default_value_t = 10 << 20)]
    container_log_max_size: u64,
    /// Log files kept per container instance.
    #[arg(long, default_value_t = 5)]
    container_log_max_files: usize,
    /// Time between Lease renewals and node status updates (at least 1 s): a duration
    /// (`10s`, `1m`) or bare seconds.
    #[arg(long, default_value = "10s", value_parser = seconds_or_duration)]
    node_status_update_seconds: Duration,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Serve Prometheus metrics (proxy syncs, programmed services) on this address over
    /// plain HTTP; empty to disable.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: String,
    /// Serve the service proxy's `/healthz` and `/livez` (kube-proxy's) on this address over
    /// plain HTTP; empty to disable.
    #[arg(long, default_value = skiff_agent::proxy::healthcheck::DEFAULT_HEALTHZ_BIND_ADDRESS)]
    healthz_bind_address: String,
    #[command(flatten)]
    bpf_maps: skiff_agent::proxy::ebpf::MapSizeFlags,
    /// eBPF mode: when a backend leaves a Service, destroy also the established TCP
    /// sockets connected to it (connected UDP sockets and connecting TCP ones always are).
    #[arg(long)]
    destroy_established_tcp: bool,
    /// Answer ARP on the link holding --node-ip for the LoadBalancer addresses of the
    /// Services whose announcement Lease this node holds (Cilium's L2 announcements).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_l2_announcements: bool,
    /// How long an announcement Lease stays held without renewal: the longest a dead node's
    /// addresses go unanswered, less one retry period (whole seconds, at least 1).
    #[arg(long, default_value = "6s", value_parser = seconds_or_duration)]
    l2_announcements_lease_duration: Duration,
    /// How often the holder renews its announcement Leases and the other nodes look at them.
    #[arg(long, default_value = "1s", value_parser = seconds_or_duration)]
    l2_announcements_retry_period: Duration,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The local address this host uses toward the apiserver (what `ip route get` would say).
fn local_ip_toward(kubeconfig: &PathBuf) -> Result<Ipv4Addr> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .context("no server in the kubeconfig")?
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string();
    let host_port = server.split('/').next().unwrap_or_default().to_string();
    let with_port = if host_port.contains(':') {
        host_port
    } else {
        format!("{host_port}:443")
    };
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(&with_port)
        .with_context(|| format!("finding a route to {with_port}"))?;
    match sock.local_addr()?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        other => anyhow::bail!("the route to the apiserver uses {other}, not IPv4"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The internal commands run before any thread exists: unshare and setns need that.
    let code = match cli.command {
        Command::Pause {
            hostname,
            host_network,
            host_pid,
            cgroup,
        } => runtime::pause::run(runtime::pause::PauseArgs {
            hostname,
            host_network,
            host_pid,
            cgroup,
        }),
        Command::Shim { spec } => runtime::shim::run(&spec),
        Command::Init { spec } => runtime::init::run(&spec),
        Command::ExecIn { pid, tty, command } => runtime::init::exec_in(pid, tty, &command),
        other => match tokio_main(other) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("skiff-agent: {e:#}");
                1
            }
        },
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn tokio_main(cmd: Command) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cmd {
            Command::Run(a) => run_agent(*a).await,
            Command::Join(a) => join(a).await,
            Command::Image { root_dir, command } => image_command(&root_dir, command),
            Command::Bpf {
                bpffs,
                output,
                command,
            } => bpf_command(&bpffs, &output, command),
            Command::Cleanup {
                root_dir,
                cgroup_root,
                socket_lb_cgroup,
                bpffs,
                node_name,
            } => {
                skiff_agent::agent::cleanup(
                    &root_dir,
                    cgroup_root,
                    socket_lb_cgroup,
                    &node_name.unwrap_or_else(hostname),
                    &bpffs,
                )
                .await
            }
            Command::Pause { .. }
            | Command::Shim { .. }
            | Command::Init { .. }
            | Command::ExecIn { .. } => {
                anyhow::bail!("internal commands run before the async runtime starts")
            }
        }
    })
}

/// `skiff-agent join`: discovery and the TLS bootstrap, then what to run.
async fn join(a: JoinArgs) -> Result<()> {
    use skiff_agent::credentials::join::{self, JoinOptions};
    let bootstrap = a
        .bootstrap_kubeconfig
        .clone()
        .unwrap_or_else(|| join::default_bootstrap_kubeconfig(&a.root_dir));
    let kubeconfig = a
        .kubeconfig
        .clone()
        .unwrap_or_else(|| a.root_dir.join("kubelet.kubeconfig"));
    // One server is the discovered one; several are kept for `run --server` as given.
    let servers = match a.servers.len() {
        1 => Vec::new(),
        _ => a.servers.clone(),
    };
    let opts = JoinOptions {
        servers: a.servers,
        token: a.token,
        ca_cert_hash: a.ca_cert_hash,
        credentials: CredentialOptions {
            kubeconfig: kubeconfig.clone(),
            bootstrap_kubeconfig: Some(bootstrap.clone()),
            cert_dir: a.cert_dir.unwrap_or_else(|| a.root_dir.join("pki")),
            node_name: a.node_name.unwrap_or_else(hostname),
            rotate_certificates: false,
            request_timeout: Duration::from_secs(15 * 60),
            servers: servers.clone(),
        },
    };
    join::join(&opts).await?;
    let (server_flag, package) = match servers.is_empty() {
        true => (String::new(), String::new()),
        false => {
            let flag = format!(" --server={}", servers.join(","));
            let package = format!("add{flag} to SKIFF_AGENT_ARGS in /etc/default/skiff-agent, ");
            (flag, package)
        }
    };
    println!(
        "This node has joined the cluster: its client certificate is in {}.\n\
         Start the agent: skiff-agent run --bootstrap-kubeconfig {} --kubeconfig {} --root-dir {}{server_flag}\n\
         (installed from the package: {package}systemctl enable --now skiff-agent)",
        opts.credentials.cert_dir.display(),
        bootstrap.display(),
        kubeconfig.display(),
        a.root_dir.display()
    );
    Ok(())
}

/// `skiff-agent run`: until the agent fails, SIGTERM or Ctrl-C.
async fn run_agent(a: RunArgs) -> Result<()> {
    let credentials = credential_options(&a);
    let cfg = agent_config(a)?;
    let run = skiff_agent::agent::run(cfg, &credentials);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run => r,
        _ = term.recv() => {
            // Pods keep running; a restarted agent adopts them.
            tracing::info!("SIGTERM: stopping the agent, leaving pods running");
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn credential_options(a: &RunArgs) -> CredentialOptions {
    CredentialOptions {
        kubeconfig: a.kubeconfig.clone(),
        bootstrap_kubeconfig: a.bootstrap_kubeconfig.clone(),
        cert_dir: a.cert_dir.clone().unwrap_or_else(|| a.root_dir.join("pki")),
        node_name: a.node_name.clone().unwrap_or_else(hostname),
        rotate_certificates: a.rotate_certificates,
        request_timeout: Duration::from_secs(15 * 60),
        servers: a.servers.clone(),
    }
}

fn agent_config(a: RunArgs) -> Result<AgentConfig> {
    let node_ip = match a.node_ip {
        Some(ip) => ip,
        // Before its first start a bootstrapping node has only the bootstrap kubeconfig.
        None => local_ip_toward(a.bootstrap_kubeconfig.as_ref().unwrap_or(&a.kubeconfig))?,
    };
    Ok(AgentConfig {
        node_name: a.node_name.unwrap_or_else(hostname),
        node_ip,
        root_dir: a.root_dir,
        cgroup_root: a.cgroup_root,
        socket_lb_cgroup: a.socket_lb_cgroup,
        bpffs: a.bpffs,
        manifest_dir: a.manifest_dir,
        cluster_cidr: a.cluster_cidr,
        service_cidr: a.service_cluster_ip_range,
        port: a.port,
        proxy_mode: a.proxy_mode,
        cluster_dns: a.cluster_dns,
        cluster_domain: a.cluster_domain,
        dns_upstreams: a.dns_upstreams,
        backoff_initial: a.crashloop_backoff_initial,
        backoff_max: a.crashloop_backoff_max,
        sync_frequency: a.sync_frequency.max(Duration::from_secs(1)),
        log_max_size: a.container_log_max_size,
        log_max_files: a.container_log_max_files.max(1),
        lease_duration_seconds: 40,
        heartbeat_interval: a.node_status_update_seconds.max(Duration::from_secs(1)),
        max_pods: a.max_pods,
        bpf_map_sizes: (&a.bpf_maps).into(),
        destroy_established_tcp: a.destroy_established_tcp,
        l2_announcements: a
            .enable_l2_announcements
            .then(|| skiff_agent::l2announce::Timing {
                lease_duration: a
                    .l2_announcements_lease_duration
                    .max(Duration::from_secs(1)),
                retry_period: a
                    .l2_announcements_retry_period
                    .clamp(Duration::from_millis(100), Duration::from_secs(60)),
            }),
        metrics_address: if a.metrics_bind_address.is_empty() {
            None
        } else {
            Some(
                a.metrics_bind_address
                    .parse()
                    .context("--metrics-bind-address")?,
            )
        },
        healthz_address: if a.healthz_bind_address.is_empty() {
            None
        } else {
            Some(
                a.healthz_bind_address
                    .parse()
                    .context("--healthz-bind-address")?,
            )
        },
    })
}

fn image_command(root_dir: &Path, command: ImageCommand) -> Result<()> {
    let store = ImageStore::open(&root_dir.join("images"))?;
    match command {
        ImageCommand::Import { file } => {
            for img in store.import(&file)? {
                println!("imported {} ({})", img.name, img.id);
            }
        }
        ImageCommand::Tag { source, target } => {
            let img = store.tag(&source, &target)?;
            println!("tagged {} ({})", img.name, img.id);
        }
        ImageCommand::List => {
            println!("{:<48} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for img in store.list()? {
                let id = img.id.trim_start_matches("sha256:");
                println!(
                    "{:<48} {:<20} {:>9.1}M",
                    img.name,
                    &id[..id.len().min(12)],
                    img.size_bytes as f64 / 1048576.0
                );
            }
        }
    }
    Ok(())
}

fn bpf_command(bpffs: &Path, output: &str, command: BpfCommand) -> Result<()> {
    use skiff_agent::bpf_cli::What;
    let what = match command {
        BpfCommand::Lb {
            command: LbCommand::List,
        } => What::LbList,
        BpfCommand::Backends => What::Backends,
        BpfCommand::Affinity => What::Affinity,
        BpfCommand::Ct => What::Ct,
        BpfCommand::Maps => What::Maps,
        BpfCommand::Sockets => What::Sockets,
    };
    println!(
        "{}",
        skiff_agent::bpf_cli::show(bpffs, what, output == "json")?
    );
    Ok(())
}

/// `--dns-upstream`: an address with or without a port (53).
fn dns_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is neither IP nor IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let argv = ["skiff-agent", "run", "--kubeconfig", "k"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
            Cli {
                command: Command::Run(a),
            } => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn proxy_mode_flag_takes_the_three_names() {
        assert_eq!(run_args(&[]).proxy_mode, ProxyMode::Auto);
        assert_eq!(run_args(&["--proxy-mode=ebpf"]).proxy_mode, ProxyMode::Ebpf);
        assert_eq!(
            run_args(&["--proxy-mode", "iptables"]).proxy_mode,
            ProxyMode::Iptables
        );
        assert!(
            Cli::try_parse_from(["skiff-agent", "run", "--kubeconfig=k", "--proxy-mode=nft"])
                .is_err()
        );
    }

    #[test]
    fn duration_flags_take_kube_durations_and_bare_seconds() {
        let durations = |args: &[&str]| {
            let a = run_args(args);
            (
                a.crashloop_backoff_initial,
                a.crashloop_backoff_max,
                a.node_status_update_seconds,
            )
        };
        let secs = Duration::from_secs;
        assert_eq!(durations(&[]), (secs(10), secs(300), secs(10)));
        assert_eq!(
            durations(&[
                "--crashloop-backoff-initial=500ms",
                "--crashloop-backoff-max=1h30m",
                "--node-status-update-seconds=1m",
            ]),
            (Duration::from_millis(500), secs(5400), secs(60))
        );
        // Bare numbers are seconds, as before (fractions too, for the backoffs).
        assert_eq!(
            durations(&[
                "--crashloop-backoff-initial",
                "2.5",
                "--crashloop-backoff-max=30",
                "--node-status-update-seconds",
                "2",
            ]),
            (Duration::from_millis(2500), secs(30), secs(2))
        );

        let err = Cli::try_parse_from([
            "skiff-agent",
            "run",
            "--kubeconfig",
            "k",
            "--crashloop-backoff-max=3d",
        ])
        .err()
        .expect("3d is not a duration")
        .to_string();
        assert!(
            err.contains(r#"time: unknown unit "d" in duration "3d""#),
            "{err}"
        );
    }
}
