//! `skiff-agent run` and `skiff-agent cleanup`: wiring the node, network, pods and log
//! server together, and taking all of it out of the kernel again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use crate::config::AgentConfig;
use crate::credentials::CredentialOptions;
use crate::image::ImageStore;
use crate::network::ipam::Ipam;
use crate::network::netlink::NetlinkNetwork;
use crate::network::{Ipv4Net, NetworkEdge};
use crate::pods::{Agent, PodManager, logsource::PodLogs};
use crate::runtime::Runtime;
use crate::runtime::cgroup::CgroupLayout;
use crate::runtime::edge::linux::{self, LinuxEdge};
use skiff_common::events::EventRecorder;

pub async fn run(cfg: AgentConfig, credentials: &CredentialOptions) -> Result<()> {
    let mut creds = crate::credentials::load(credentials).await?;
    let (client, ca_pem) = (creds.client.clone(), creds.ca_pem.clone());
    let rotation = creds.rotation();
    tokio::spawn(creds.servers.clone().health_checks());
    tokio::spawn(creds.servers.clone().learn(client.clone()));
    std::fs::create_dir_all(&cfg.root_dir)?;
    crate::node::register(&client, &cfg).await?;
    let runtime = Runtime::new(&cfg.root_dir)?;
    let images = ImageStore::open(&cfg.root_dir.join("images"))?;
    let cgroups = detect_cgroups(&cfg)?;
    let socket_lb_cgroup = cfg
        .socket_lb_cgroup
        .clone()
        .unwrap_or_else(|| cgroups.root.clone());
    let (network, pod_cidr, ipam) = pod_network(&client, &cfg).await?;
    let services = watch_services(&client).await;
    let drain = Arc::new(crate::proxy::drain::BackendDrain::new());
    let agent = Arc::new(Agent {
        recorder: EventRecorder::new(client.clone(), "kubelet").with_host(&cfg.node_name),
        cfg: cfg.clone(),
        client: client.clone(),
        edge: Arc::new(LinuxEdge {
            exe: runtime.exe.clone(),
            cgroups,
        }),
        runtime,
        network: network.clone(),
        ipam,
        pod_cidr,
        images,
        services: services.clone(),
        pods_by_name: Mutex::new(Default::default()),
        drain: drain.clone(),
    });
    serve_logs(&agent, ca_pem).await?;
    let local_dns = start_dns(&client, &cfg, pod_cidr).await;
    start_proxy(&client, &cfg, socket_lb_cgroup, drain, local_dns).await?;
    start_l2_announcements(&client, &cfg, services).await;
    crate::node::update_status(&client, &cfg, true, "").await?;
    tokio::spawn(crate::node::heartbeat(client.clone(), cfg.clone()));
    tokio::spawn(crate::node::sync_node_routes(
        client.clone(),
        cfg.node_name.clone(),
        network,
    ));
    let static_rx = cfg.manifest_dir.clone().map(|dir| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(crate::static_pods::run(agent.clone(), dir, tx));
        rx
    });
    tracing::info!(node = %cfg.node_name, "node agent running");
    let pods = PodManager::new(agent, static_rx).run();
    match rotation {
        Some(rotation) => tokio::select! {
            r = pods => r,
            r = rotation => r,
        },
        None => pods.await,
    }
}

fn detect_cgroups(cfg: &AgentConfig) -> Result<CgroupLayout> {
    let cgroups = CgroupLayout::detect(cfg.cgroup_root.clone(), &cfg.node_name)?;
    tracing::info!(
        root = %cgroups.root.display(),
        limits = if cgroups.v2_limits { "cgroup v2" } else if cgroups.v1.is_empty() { "none" } else { "cgroup v1 (hybrid host)" },
        "pod cgroups"
    );
    Ok(cgroups)
}

/// Once the node has its podCIDR: the bridge, masquerade and the pod address allocator.
async fn pod_network(
    client: &Client,
    cfg: &AgentConfig,
) -> Result<(Arc<dyn NetworkEdge>, Ipv4Net, Ipam)> {
    let network: Arc<dyn NetworkEdge> = Arc::new(NetlinkNetwork::connect()?);
    let pod_cidr = crate::node::wait_pod_cidr(client, &cfg.node_name).await?;
    network.ensure_bridge(pod_cidr).await?;
    network.ensure_masquerade(pod_cidr, cfg.cluster_cidr)?;
    let ipam = Ipam::open(&cfg.root_dir.join("ipam"), pod_cidr)?;
    tracing::info!(%pod_cidr, "pod network ready");
    Ok((network, pod_cidr, ipam))
}

/// A cache of the cluster's Services (for containers' service environment variables).
async fn watch_services(client: &Client) -> Store<Service> {
    let (services, writer) = reflector::store::<Service>();
    let svc_stream = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(svc_stream);
    // Containers see the Services that exist when they start: wait for the first list.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        services.wait_until_ready(),
    )
    .await;
    services
}

/// The HTTPS endpoint the apiserver forwards `kubectl logs` to. Its requests are authorized
/// by SubjectAccessReviews sent with the agent's own client.
async fn serve_logs(agent: &Arc<Agent>, ca_pem: String) -> Result<()> {
    let cfg = &agent.cfg;
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, cfg.port))
        .await
        .with_context(|| format!("listening on port {}", cfg.port))?;
    let tls = crate::server::ServerTls {
        client_ca_pem: ca_pem,
        cert_dir: cfg.root_dir.join("pki"),
        sans: vec![cfg.node_ip.to_string(), cfg.node_name.clone()],
    };
    let streams = crate::server::Streams {
        logs: Arc::new(PodLogs(agent.clone())),
        containers: Arc::new(crate::exec_target::PodProcesses(agent.clone())),
    };
    let access = crate::server::auth::Access {
        node_name: cfg.node_name.clone(),
        authorizer: Arc::new(crate::server::auth::SubjectAccessReviewer::new(
            agent.client.clone(),
        )),
    };
    tokio::spawn(async move {
        let stop = std::future::pending();
        if let Err(e) = crate::server::serve(listener, tls, streams, access, stop).await {
            tracing::error!("the log server stopped: {e:#}");
        }
    });
    Ok(())
}

/// With `--cluster-dns`: the node's DNS server on the pods' gateway address, port 53; its
/// address is the node-local backend of the `kube-dns` Service.
async fn start_dns(
    client: &Client,
    cfg: &AgentConfig,
    pod_cidr: Ipv4Net,
) -> Option<std::net::Ipv4Addr> {
    let Some(cluster_dns) = cfg.cluster_dns else {
        tracing::info!("no --cluster-dns: cluster DNS is not served on this node");
        return None;
    };
    let gateway = pod_cidr.gateway();
    let own: [std::net::IpAddr; 2] = [cluster_dns.into(), gateway.into()];
    let opts = crate::dns::DnsOptions {
        listen: (gateway, crate::proxy::model::DNS_PORT).into(),
        domain: cfg.cluster_domain.clone(),
        upstreams: crate::dns::default_upstreams(&cfg.dns_upstreams, &own),
    };
    // Pods without DNS are better than no node: the Service then has no backend here.
    if let Err(e) = crate::dns::start(client.clone(), opts).await {
        tracing::error!("cluster DNS is not served on this node: {e:#}");
        return None;
    }
    Some(gateway)
}

/// The service proxy: its dataplane, the loop feeding it (which also answers the pod
/// workers' drain gate), and its metrics endpoint.
async fn start_proxy(
    client: &Client,
    cfg: &AgentConfig,
    cgroup_root: PathBuf,
    drain: Arc<crate::proxy::drain::BackendDrain>,
    local_dns: Option<std::net::Ipv4Addr>,
) -> Result<()> {
    let target = crate::proxy::ProxyTarget {
        bpffs_dir: cfg.bpffs.clone(),
        cgroup_root,
        node_ip: cfg.node_ip,
        uplink: crate::network::netlink::interface_with(cfg.node_ip).await?,
        cluster_cidr: cfg.cluster_cidr,
        service_cidr: cfg.service_cidr,
        sizes: cfg.bpf_map_sizes,
    };
    let dataplane = crate::proxy::dataplane(&cfg.proxy_mode, &target).await?;
    let metrics = Arc::new(crate::proxy::metrics::ProxyMetrics::default());
    let health = start_proxy_health(client, cfg);
    let dataplane = with_stale_flow_cleanup(dataplane, cfg, metrics.clone())?;
    tokio::spawn(crate::proxy::runner::run_with_drain(
        client.clone(),
        cfg.node_name.clone(),
        dataplane,
        metrics.clone(),
        drain,
        local_dns,
        Some(health),
    ));
    if let Some(addr) = cfg.metrics_address {
        tokio::spawn(async move {
            if let Err(e) = crate::proxy::serve_metrics(addr, metrics).await {
                tracing::error!("the metrics endpoint on {addr} stopped: {e:#}");
            }
        });
    }
    Ok(())
}

/// The proxy's health: its healthz endpoint (`--healthz-bind-address`), the Node's
/// eligibility for traffic, and the health check servers of local-policy LoadBalancers.
fn start_proxy_health(
    client: &Client,
    cfg: &AgentConfig,
) -> Arc<crate::proxy::healthcheck::HealthChecks> {
    use crate::proxy::healthcheck::{self, HealthChecks, ProxyHealth, ServiceHealthServers};
    let health = Arc::new(ProxyHealth::new(2 * crate::proxy::runner::RESYNC));
    tokio::spawn(healthcheck::watch_node_eligibility(
        client.clone(),
        cfg.node_name.clone(),
        health.clone(),
    ));
    if let Some(addr) = cfg.healthz_address {
        let health = health.clone();
        tokio::spawn(async move {
            if let Err(e) = healthcheck::serve_healthz(addr, health).await {
                tracing::error!("the proxy healthz endpoint on {addr} stopped: {e:#}");
            }
        });
    }
    Arc::new(HealthChecks::new(ServiceHealthServers::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        health,
    )))
}

/// eBPF mode: destroy the local sockets (node's and pods' namespaces) connected to backends
/// that leave a Service. (iptables mode deletes stale UDP conntrack entries in its sync.)
fn with_stale_flow_cleanup(
    dataplane: Box<dyn crate::proxy::dataplane::Dataplane>,
    cfg: &AgentConfig,
    metrics: Arc<crate::proxy::metrics::ProxyMetrics>,
) -> Result<Box<dyn crate::proxy::dataplane::Dataplane>> {
    use crate::proxy::flow_cleaners::{SockDiag, SocketCleaner};
    use crate::proxy::stale_flows::StaleFlowsDataplane;
    if dataplane.mode() != "ebpf" {
        return Ok(dataplane);
    }
    let root = cfg.root_dir.clone();
    let mut cleaner = SocketCleaner::new(
        Box::new(SockDiag),
        Box::new(move || pod_namespaces(&root)),
        cfg.destroy_established_tcp,
    );
    match crate::proxy::ebpf::flow_stats::FlowStats::open_or_create(&cfg.bpffs) {
        Ok(stats) => cleaner = cleaner.with_pinned_stats(stats),
        // Only `skiff-agent bpf sockets` goes without; the metric still counts.
        Err(e) => tracing::warn!("the pinned count of destroyed sockets: {e:#}"),
    }
    Ok(Box::new(StaleFlowsDataplane::new(
        dataplane,
        Box::new(cleaner),
        metrics,
    )?))
}

/// The node's network namespace and those of the pods this agent runs (from their sandbox
/// records).
fn pod_namespaces(root: &std::path::Path) -> Vec<crate::proxy::flow_cleaners::Netns> {
    use crate::proxy::flow_cleaners::Netns;
    use crate::runtime::spec::{SandboxState, read_json};
    let mut out = vec![Netns::node()];
    // Runtime::pods_dir and sandbox_state_path, without Runtime::new's side effects.
    let Ok(dir) = std::fs::read_dir(root.join("pods")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(s) = read_json::<SandboxState>(&entry.path().join("sandbox.json")) else {
            continue;
        };
        if let (false, Some(path)) = (s.host_network, s.netns_path) {
            out.push(Netns {
                name: format!("{}/{}", s.namespace, s.name),
                path: Some(path),
            });
        }
    }
    out
}

/// With `--enable-l2-announcements`: compete for the announcement Leases and answer ARP for
/// the held Services' addresses on the link holding the node IP. A node that cannot (no such
/// link, no packet socket) still runs; it only never announces.
async fn start_l2_announcements(client: &Client, cfg: &AgentConfig, services: Store<Service>) {
    use crate::l2announce::{Announcer, arp::PacketSocket};
    let Some(timing) = cfg.l2_announcements else {
        tracing::info!("L2 announcements are off");
        return;
    };
    let link = match crate::network::netlink::interface_with(cfg.node_ip).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            tracing::error!(node_ip = %cfg.node_ip, "no link holds the node IP: no L2 announcements");
            return;
        }
        Err(e) => {
            tracing::error!("finding the node's link: {e:#}; no L2 announcements");
            return;
        }
    };
    let edge = match PacketSocket::open(&link) {
        Ok(edge) => Arc::new(edge),
        Err(e) => {
            tracing::error!("no L2 announcements on {link}: {e:#}");
            return;
        }
    };
    let announcer = Announcer::new(&cfg.node_name, timing, edge);
    tokio::spawn(crate::l2announce::run(
        client.clone(),
        services,
        announcer,
        timing,
    ));
}

/// Remove everything the agent put into the kernel for this node: pod processes, cgroups,
/// network namespace pins, the bridge and routes, masquerade rules, BPF pins. Images stay.
pub async fn cleanup(
    root_dir: &Path,
    cgroup_root: Option<PathBuf>,
    socket_lb_cgroup: Option<PathBuf>,
    node_name: &str,
    bpffs: &Path,
) -> Result<()> {
    let mut errors = Vec::new();
    let runtime = Runtime::new(root_dir)?;
    let socket_lb_cgroup = socket_lb_cgroup
        .or_else(|| cgroup_root.clone())
        .or_else(|| crate::runtime::cgroup::mounts().v2);
    // Killing the cgroups first stops every pause, shim and container process at once.
    match CgroupLayout::detect(cgroup_root, node_name) {
        Ok(cg) => {
            if let Err(e) = cg.remove_all() {
                errors.push(format!("{e:#}"));
            }
        }
        Err(e) => errors.push(format!("{e:#}")),
    }
    for uid in runtime.pod_uids() {
        if let Ok(state) = crate::runtime::spec::read_json::<crate::runtime::spec::SandboxState>(
            &runtime.sandbox_state_path(&uid),
        ) {
            crate::runtime::process::signal(state.pause_pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Err(e) = linux::unpin_netns(&runtime.netns_path(&uid)) {
            errors.push(format!("{e:#}"));
        }
    }
    let net = NetlinkNetwork::connect()?;
    if let Err(e) = net.teardown().await {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = net.remove_masquerade() {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = crate::proxy::iptables::IptablesDataplane::cleanup_all() {
        errors.push(format!("removing KUBE-* chains: {e:#}"));
    }
    if let Err(e) = crate::proxy::ebpf::cleanup(bpffs, socket_lb_cgroup.as_deref()) {
        errors.push(format!("removing the eBPF proxy: {e:#}"));
    }
    if bpffs.exists()
        && let Err(e) = std::fs::remove_dir_all(bpffs)
    {
        errors.push(format!("removing {}: {e}", bpffs.display()));
    }
    for d in ["pods", "netns", "ipam"] {
        let p = root_dir.join(d);
        if p.exists()
            && let Err(e) = std::fs::remove_dir_all(&p)
        {
            errors.push(format!("removing {}: {e}", p.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("cleanup left things behind:\n{}", errors.join("\n"))
    }
}
