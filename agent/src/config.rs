//! The agent's settings, from `skiff-agent run` flags.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::network::Ipv4Net;
use crate::proxy::ProxyMode;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub root_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    /// Where the eBPF socket programs attach (default: the pods' cgroup root).
    pub socket_lb_cgroup: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub manifest_dir: Option<PathBuf>,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// The HTTPS port serving logs to the apiserver (kubelet's 10250).
    pub port: u16,
    pub proxy_mode: ProxyMode,
    pub cluster_dns: Option<Ipv4Addr>,
    pub cluster_domain: String,
    /// Resolvers the cluster DNS forwards other names to (empty: the node's resolv.conf).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// CrashLoopBackOff: first delay and cap (kubelet: 10 s and 5 min).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often a running pod's configMap, secret, downwardAPI and projected volumes are
    /// re-synced with their sources (kubelet's `--sync-frequency`, 1 m).
    pub sync_frequency: Duration,
    pub log_max_size: u64,
    pub log_max_files: usize,
    pub lease_duration_seconds: i32,
    pub heartbeat_interval: Duration,
    pub max_pods: u32,
    /// Where to serve Prometheus metrics over plain HTTP (None: not served).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The proxy's `/healthz` and `/livez` (`--healthz-bind-address`); None: not served.
    pub healthz_address: Option<std::net::SocketAddr>,
    pub bpf_map_sizes: crate::proxy::ebpf::MapSizes,
    /// eBPF mode: also destroy established TCP sockets to a backend that left its service.
    pub destroy_established_tcp: bool,
    /// L2 announcement of LoadBalancer addresses and its Lease timing (None: off).
    pub l2_announcements: Option<crate::l2announce::Timing>,
}

impl AgentConfig {
    pub fn for_tests(root: PathBuf) -> AgentConfig {
        AgentConfig {
            node_name: "node-1".into(),
            node_ip: Ipv4Addr::new(10, 0, 0, 1),
            root_dir: root,
            cgroup_root: None,
            socket_lb_cgroup: None,
            bpffs: PathBuf::from("/sys/fs/bpf/skiff"),
            manifest_dir: None,
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16),
            service_cidr: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12),
            port: 10250,
            proxy_mode: ProxyMode::Auto,
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            dns_upstreams: Vec::new(),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            sync_frequency: Duration::from_secs(60),
            log_max_size: 10 << 20,
            log_max_files: 5,
            lease_duration_seconds: 40,
            heartbeat_interval: Duration::from_secs(10),
            max_pods: 110,
            metrics_address: None,
            healthz_address: None,
            bpf_map_sizes: Default::default(),
            destroy_established_tcp: false,
            l2_announcements: None,
        }
    }
}
