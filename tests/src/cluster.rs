//! Multi-node test clusters on one machine: every node is a network namespace on a private
//! underlay network, running its own `skiff-agent`, all talking to one `skiff-control`.
//!
//! # Layout of cluster `sk<k>` (k in 150..=243, one per live cluster on the machine)
//!
//! ```text
//!  host netns                       sk<k>-underlay netns              sk<k>-node-<i> netns
//!  ┌──────────────────────┐         ┌──────────────────────┐          ┌──────────────────────┐
//!  │ skiff-control        │         │ bridge sk<k>-br      │          │ eth0 10.<k>.0.<10+i> │
//!  │ on 10.<k>.0.1:6443   │         │  ├ host ───────────────────┐    │ lo                   │
//!  │ sk<k>-host           ├─ veth ──┤  ├ sk<k>-node-1 ─── veth ──┼────┤ skiff-agent          │
//!  │   10.<k>.0.1/24      │         │  └ sk<k>-node-2 ─── …      │    │ (no default route)   │
//!  └──────────────────────┘         └──────────────────────┘     │    └──────────────────────┘
//! ```
//!
//! The bridge lives in its own namespace rather than the host's: with `br_netfilter` loaded and
//! `bridge-nf-call-iptables=1`, the host's iptables sees every frame a host bridge forwards, and
//! a bridge's own `nf_call_iptables 0` cannot switch that off (the kernel calls iptables when
//! the namespace-wide sysctl *or* the bridge option is set). The sysctl is per namespace, so the
//! underlay namespace turns it off and node-to-node traffic never meets the host's firewall or
//! conntrack. The host still owns 10.<k>.0.1 (on `sk<k>-host`) and reaches every node directly.
//!
//! Per node `sk<k>-node-<i>`: netns `/run/netns/sk<k>-node-<i>`, root dir
//! `<cluster dir>/nodes/<node>` (with `agent.log`), cgroup `<cgroup2>/skiff/sk<k>/<node>` (the
//! agent's `--cgroup-root`; the agent itself runs in its `agent` child, commands run by
//! [`Cluster::exec`] in its `exec` child), bpffs `/sys/fs/bpf/skiff/<node>`.
//!
//! With several control planes or an etcd cluster ([`ClusterOptions::control_planes`],
//! [`ClusterOptions::etcd_members`]) each API server and each etcd member runs in a network
//! namespace of its own on the underlay instead (see [`ha`]).
//!
//! Live clusters are registered in `/run/skiff-clusters/sk<k>.json` (the cluster directory and
//! the process that owns the cluster). A cluster whose owner died without tearing it down (a
//! test binary killed by a timeout) is torn down by the next [`Cluster::start`], or by [`gc`].
//! Every cluster keeps its full state in `<cluster dir>/cluster.json`, so
//! [`Cluster::down_from_state`] can remove it from another process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::{Kubectl, free_ports, target_dir, test_image, wait_for};
use skiff_common::bootstrap_token::{self, BootstrapToken};

mod ha;
pub use ha::MemberState;

/// Pod network of every test cluster (`--cluster-cidr` of agents and control plane).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The port each agent serves on its node IP.
pub const AGENT_PORT: u16 = 10250;
/// The kubeconfig a node's agent writes in its root dir once it holds a node certificate.
pub const NODE_KUBECONFIG: &str = "kubelet.kubeconfig";
/// Second octet of the underlay `10.<k>.0.0/24` of each cluster (clear of the default service
/// range 10.96.0.0/12 and the pod network 10.244.0.0/16).
const INDEX_RANGE: std::ops::RangeInclusive<u8> = 150..=243;
/// Where live clusters are registered (tmpfs: a reboot forgets them with their namespaces).
const REGISTRY: &str = "/run/skiff-clusters";
const STATE_FILE: &str = "cluster.json";
const BPFFS: &str = "/sys/fs/bpf";
/// How long [`Cluster::start`] waits for every node to be Ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Node-lifecycle timings given to the control plane unless the caller passes its own.
const CONTROL_DEFAULTS: &[(&str, &str)] = &[
    ("--node-monitor-grace-period", "20"),
    ("--pod-eviction-timeout", "20"),
];
/// The default `--service-lb-pool` of cluster `sk<index>`: the top of its underlay
/// `10.<index>.0.0/24`, far above the node addresses (`.11` up).
pub fn lb_pool(index: u8) -> String {
    format!("10.{index}.0.240-10.{index}.0.254")
}

const CONTROL_LOG: &str = "info,skiff_control=debug";
const AGENT_LOG: &str = "info,skiff_agent=debug";

/// Which store the control plane of a cluster runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    #[default]
    Embedded,
    /// A private etcd (on loopback ports, data in the cluster directory).
    Etcd,
}

impl std::str::FromStr for Store {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Store> {
        match s {
            "embedded" => Ok(Store::Embedded),
            "etcd" => Ok(Store::Etcd),
            _ => bail!("unknown store {s:?} (embedded or etcd)"),
        }
    }
}

/// What to start. `ClusterOptions { nodes: 3, ..Default::default() }` is a typical test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of nodes (netns + agent each); 0 for a control plane on the underlay alone.
    pub nodes: usize,
    pub store: Store,
    /// `--proxy-mode` of the agents: `ebpf` or `iptables` (default: `$SKIFF_TEST_PROXY_MODE`,
    /// else `ebpf`).
    pub proxy_mode: String,
    /// Extra `skiff-control` arguments. A node-lifecycle flag given here replaces the harness's
    /// short default (`--node-monitor-grace-period 20`, `--pod-eviction-timeout 20`).
    pub control_args: Vec<String>,
    /// Extra `skiff-agent run` arguments, after the harness's own.
    pub agent_args: Vec<String>,
    /// Import the test image and start an agent on every node, then wait until every node is
    /// Ready. `false` builds the underlay, node namespaces and cgroups and the control plane only.
    pub start_agents: bool,
    /// The cluster directory (default `<target dir>/clusters/<name>`); must not exist or be empty.
    pub dir: Option<PathBuf>,
    /// Print what is being started on stderr.
    pub verbose: bool,
    /// API servers; more than one puts each, with the etcd members, in a network namespace of
    /// its own (see [`ha`]) and needs `etcd_members`.
    pub control_planes: usize,
    /// Members of an etcd cluster the control planes share, each in its own namespace; 0 for
    /// `store` alone.
    pub etcd_members: usize,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            nodes: 1,
            store: Store::Embedded,
            proxy_mode: std::env::var("SKIFF_TEST_PROXY_MODE").unwrap_or_else(|_| "ebpf".into()),
            control_args: Vec::new(),
            agent_args: Vec::new(),
            start_agents: true,
            dir: None,
            verbose: false,
            control_planes: 1,
            etcd_members: 0,
        }
    }
}

/// A process the cluster started, identified across processes by pid and start time (so a
/// recycled pid is never signalled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcRecord {
    fn of(pid: u32) -> ProcRecord {
        ProcRecord {
            pid,
            start_time: proc_start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this very process still runs (not a zombie).
    pub fn alive(&self) -> bool {
        proc_start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }
}

/// One node of a cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name, also the name of its netns and of its veth in the underlay namespace.
    pub name: String,
    pub ip: String,
    pub netns: String,
    pub root_dir: PathBuf,
    /// `--cgroup-root` of the agent.
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub log: PathBuf,
    /// The agent's command line (program first).
    pub agent_command: Vec<String>,
    pub agent: Option<ProcRecord>,
}

impl NodeState {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// Everything a cluster is made of, kept in `<dir>/cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub name: String,
    pub index: u8,
    pub dir: PathBuf,
    pub underlay_netns: String,
    /// The bridge, inside the underlay namespace.
    pub bridge: String,
    /// The host's link to the underlay (in the host namespace), holding `host_ip`.
    pub host_link: String,
    pub host_ip: String,
    pub api_port: u16,
    pub api_url: String,
    pub store: Store,
    /// Admin kubeconfig pointing at `api_url`.
    pub kubeconfig: PathBuf,
    /// The agents' bootstrap kubeconfig: a bootstrap token, good only for asking for a node
    /// certificate (each agent then writes `<root_dir>/kubelet.kubeconfig` with its own).
    pub bootstrap_kubeconfig: PathBuf,
    /// `<cgroup2>/skiff/<name>`: every node cgroup is under it.
    pub cgroup: Option<PathBuf>,
    pub control: Option<ProcRecord>,
    pub control_log: PathBuf,
    pub etcd: Option<ProcRecord>,
    /// Client URL of the private etcd (with `Store::Etcd`).
    #[serde(default)]
    pub etcd_url: Option<String>,
    pub nodes: Vec<NodeState>,
    /// With a highly available control plane: the API servers (`control` is then None).
    #[serde(default)]
    pub control_planes: Vec<MemberState>,
    /// The members of the control planes' etcd cluster.
    #[serde(default)]
    pub etcd_members: Vec<MemberState>,
}

impl ClusterState {
    /// Read `<dir>/cluster.json`.
    pub fn load(dir: &Path) -> Result<ClusterState> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn node(&self, node: &str) -> Result<&NodeState> {
        self.nodes.iter().find(|n| n.name == node).with_context(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!(
                "no node {node:?} in cluster {} (nodes: {names:?})",
                self.name
            )
        })
    }

    fn node_mut(&mut self, node: &str) -> &mut NodeState {
        self.nodes
            .iter_mut()
            .find(|n| n.name == node)
            .unwrap_or_else(|| panic!("no node {node:?}"))
    }

    /// `argv` as a command running in `node`'s network namespace and in its `exec` cgroup.
    pub fn node_command(&self, node: &str, argv: &[&str]) -> Result<Command> {
        let n = self.node(node)?;
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        enter_node(&mut cmd, n, "exec", false)?;
        Ok(cmd)
    }
}

/// A running test cluster; dropping it tears everything down.
pub struct Cluster {
    state: ClusterState,
    control: Option<Child>,
    etcd: Option<Child>,
    agents: HashMap<String, Child>,
    /// Control planes and etcd members of a highly available control plane, by name.
    members: HashMap<String, Child>,
    kubectl: OnceLock<Kubectl>,
    verbose: bool,
    detached: bool,
}

impl Cluster {
    /// Build the underlay, the node namespaces and cgroups, start the control plane and (with
    /// `start_agents`) one agent per node, and wait until every node is Ready.
    pub fn start(opts: ClusterOptions) -> Result<Cluster> {
        ensure!(
            is_root(),
            "a test cluster needs root (network namespaces, cgroups, bpffs)"
        );
        ensure!(opts.nodes <= 200, "at most 200 nodes per cluster");
        ensure!(
            matches!(opts.proxy_mode.as_str(), "ebpf" | "iptables"),
            "proxy mode {:?}: ebpf or iptables",
            opts.proxy_mode
        );
        let control_bin = binary("SKIFF_CONTROL_BIN", "skiff-control")?;
        let (agent_bin, image) = if opts.start_agents {
            let agent = binary("SKIFF_AGENT_BIN", "skiff-agent")?;
            (agent, Some(test_image::archive()?))
        } else {
            (agent_binary_path(), None)
        };
        ensure!(
            opts.control_planes <= 1 || opts.etcd_members > 0,
            "several control planes share an etcd cluster: give etcd_members"
        );
        if (opts.store == Store::Etcd || opts.ha()) && !Path::new(crate::ETCD_BIN).exists() {
            bail!(
                "{} not found (`cargo xtask setup` installs etcd-server)",
                crate::ETCD_BIN
            );
        }
        ensure_bpffs()?;
        let cgroup2 = cgroup2_mount()?;

        let mut state = allocate(&opts, &cgroup2, &agent_bin)?;
        ha::plan(&opts, &mut state)?;
        state.save()?;
        // From here on, dropping `cluster` removes whatever exists so far.
        let mut cluster = Cluster {
            state,
            control: None,
            etcd: None,
            agents: HashMap::new(),
            members: HashMap::new(),
            kubectl: OnceLock::new(),
            verbose: opts.verbose,
            detached: false,
        };
        cluster.say(&format!(
            "cluster {} in {}",
            cluster.state.name,
            cluster.state.dir.display()
        ));
        cluster.create_underlay()?;
        if !opts.ha() {
            let host_ip: Ipv4Addr = cluster.state.host_ip.parse()?;
            cluster.state.api_port = pick_port(host_ip)?;
            cluster.state.api_url = format!("https://{host_ip}:{}", cluster.state.api_port);
            cluster.state.save()?;
        }
        for i in 0..cluster.state.nodes.len() {
            cluster.create_node(i)?;
        }
        if opts.ha() {
            cluster.start_ha_control(&control_bin, &opts)?;
        } else {
            cluster.start_control(&control_bin, &opts)?;
        }
        if let Some(image) = image {
            for node in cluster.nodes() {
                cluster.say(&format!("importing {} on {node}", test_image::IMAGE));
                cluster.import_image(&node, &image)?;
            }
            for node in cluster.nodes() {
                cluster.start_agent(&node)?;
            }
            cluster.wait_ready(READY_TIMEOUT)?;
        }
        Ok(cluster)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// Admin kubeconfig, usable from the host.
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// `https://10.<k>.0.1:<port>`.
    pub fn api_url(&self) -> &str {
        &self.state.api_url
    }

    /// The host's underlay address (where the API server listens).
    pub fn host_ip(&self) -> &str {
        &self.state.host_ip
    }

    pub fn api_port(&self) -> u16 {
        self.state.api_port
    }

    pub fn nodes(&self) -> Vec<String> {
        self.state.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, node: &str) -> &NodeState {
        self.state.node(node).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn node_ip(&self, node: &str) -> String {
        self.node(node).ip.clone()
    }

    /// The kubeconfig `node`'s agent wrote after its TLS bootstrap (its own identity).
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.node(node).root_dir.join(NODE_KUBECONFIG)
    }

    /// Run `cmd` in `node`'s network namespace and cgroup; its output whatever its status.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Result<Output> {
        self.state
            .node_command(node, cmd)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?} on {node}"))
    }

    /// [`Cluster::exec`] that fails unless the command succeeds; its stdout.
    pub fn exec_ok(&self, node: &str, cmd: &[&str]) -> Result<String> {
        crate::result(&format!("{cmd:?} on {node}"), self.exec(node, cmd)?)
    }

    /// Fails unless every node's service proxy runs in `mode` (`ebpf` or `iptables`), so a
    /// test of one mode cannot pass on the other: in iptables mode the `kubernetes` Service has
    /// `KUBE-SVC-` chains in the node's namespace and no program is attached to the node's
    /// cgroup; in eBPF mode the reverse.
    pub fn assert_proxy_mode(&self, mode: &str) -> Result<()> {
        for node in self.nodes() {
            let seen = wait_for(
                &format!("{node}'s proxy programmed in {mode} mode"),
                Duration::from_secs(30),
                || {
                    let chains = self.kube_svc_chains(&node)?;
                    let programs = self.cgroup_programs(&node)?;
                    let ok = match mode {
                        "iptables" => !chains.is_empty() && programs.is_empty(),
                        "ebpf" => chains.is_empty() && !programs.is_empty(),
                        other => bail!("no proxy mode {other:?}"),
                    };
                    if ok {
                        return Ok(Some(()));
                    }
                    bail!("KUBE-SVC- chains {chains:?}, cgroup programs {programs:?}")
                },
            );
            seen.with_context(|| format!("{node} does not run the {mode} proxy"))?;
        }
        Ok(())
    }

    /// The `KUBE-SVC-` chains in `node`'s namespace, from both iptables backends.
    fn kube_svc_chains(&self, node: &str) -> Result<Vec<String>> {
        let mut chains = Vec::new();
        for save in ["iptables-save", "iptables-legacy-save"] {
            let out = self.exec(node, &[save, "-t", "nat"])?;
            chains.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .filter(|l| l.starts_with("KUBE-SVC-"))
                    .filter_map(|l| l.split_whitespace().next())
                    .map(|chain| format!("{save}: {chain}")),
            );
        }
        Ok(chains)
    }

    /// The names of the BPF programs attached to `node`'s cgroup (`bpftool cgroup show`).
    fn cgroup_programs(&self, node: &str) -> Result<Vec<String>> {
        let cgroup = &self.node(node).cgroup;
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(cgroup)
            .stdin(Stdio::null())
            .output()
            .context("running bpftool (Debian package bpftool)")?;
        let out = crate::result(&format!("bpftool cgroup show {}", cgroup.display()), out)?;
        // bpftool prints nothing at all, not `[]`, for a cgroup without programs.
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        let attached: serde_json::Value =
            serde_json::from_str(out.trim()).with_context(|| format!("bpftool's JSON: {out}"))?;
        Ok(attached
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["name"].as_str().unwrap_or("?").to_string())
            .collect())
    }

    /// A command to run in `node`'s network namespace and cgroup (set stdio and run it).
    pub fn command(&self, node: &str, cmd: &[&str]) -> Result<Command> {
        self.state.node_command(node, cmd)
    }

    /// The node and host pid of the running process of `pod`'s first container (its newest
    /// instance, from the agent's state under the node's root dir).
    pub fn container_pid(&self, pod: &str) -> Result<(String, i32)> {
        self.container_pid_in("default", pod)
    }

    /// [`Cluster::container_pid`] of a pod in namespace `ns`.
    pub fn container_pid_in(&self, ns: &str, pod: &str) -> Result<(String, i32)> {
        let field = |path: &str| {
            self.kubectl(&[
                "get",
                "pod",
                pod,
                "-n",
                ns,
                "-o",
                &format!("jsonpath={{{path}}}"),
            ])
        };
        let node = field(".spec.nodeName")?;
        let uid = field(".metadata.uid")?;
        let container = field(".spec.containers[0].name")?;
        let dir = self
            .state
            .node(&node)?
            .root_dir
            .join("pods")
            .join(&uid)
            .join("containers")
            .join(&container);
        let instance = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .max()
            .with_context(|| format!("no container instance of {pod} in {}", dir.display()))?;
        let state_path = dir.join(instance.to_string()).join("state.json");
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?,
        )?;
        let pid = state["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .with_context(|| format!("no pid in {}", state_path.display()))?;
        Ok((node, pid))
    }

    /// A command to run inside the running container of `pod` (namespace `default`, its
    /// first container) via `skiff-agent exec-in`: the container's namespaces, cgroup and
    /// environment, so the service dataplane treats it as the pod.
    pub fn pod_command(&self, pod: &str, cmd: &[&str]) -> Result<Command> {
        self.pod_command_in("default", pod, cmd)
    }

    /// [`Cluster::pod_command`] for a pod in namespace `ns`.
    pub fn pod_command_in(&self, ns: &str, pod: &str, cmd: &[&str]) -> Result<Command> {
        let (node, pid) = self.container_pid_in(ns, pod)?;
        let pid = pid.to_string();
        let agent = agent_binary_path();
        let mut argv = vec![
            agent.to_str().context("agent path")?,
            "exec-in",
            "--pid",
            &pid,
            "--",
        ];
        argv.extend_from_slice(cmd);
        self.state.node_command(&node, &argv)
    }

    fn kubectl_bin(&self) -> Result<&Kubectl> {
        if let Some(k) = self.kubectl.get() {
            return Ok(k);
        }
        let k = Kubectl::newest()?;
        Ok(self.kubectl.get_or_init(|| k))
    }

    /// A newest-kubectl command against this cluster.
    pub fn kubectl_command(&self) -> Result<Command> {
        Ok(self
            .kubectl_bin()?
            .command_with(&self.state.kubeconfig, &self.state.dir))
    }

    /// Run the newest kubectl; Ok(stdout), or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_command()?.args(args).output()?;
        crate::result(&format!("kubectl {}", args.join(" ")), out)
    }

    /// A kubeconfig (in the cluster's directory) with a client certificate of the cluster CA
    /// for `user`, no groups.
    pub fn user_kubeconfig(&self, user: &str) -> Result<PathBuf> {
        let out = self.dir().join(format!("{user}.kubeconfig"));
        let issued = Command::new(crate::workspace_binary("skiff-control"))
            .args(["kubeconfig", "--user", user, "--data-dir"])
            .arg(self.dir().join("control"))
            .arg("--out")
            .arg(&out)
            .output()?;
        ensure!(
            issued.status.success(),
            "skiff-control kubeconfig --user {user}: {}",
            String::from_utf8_lossy(&issued.stderr)
        );
        Ok(out)
    }

    /// Let `user` get and list the pods of `ns`, and nothing else (Role and RoleBinding
    /// `pod-reader`).
    pub fn grant_pod_reader(&self, ns: &str, user: &str) -> Result<()> {
        self.apply(&format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pod-reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}
"#
        ))
    }

    /// Wait until pod `ns/name` is Running.
    pub fn wait_pod_running(&self, ns: &str, name: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{ns}/{name} Running"), timeout, || {
            let phase = self.kubectl(&[
                "get",
                "pod",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.phase}",
            ])?;
            Ok((phase == "Running").then_some(()))
        })
    }

    /// Run the newest kubectl with `stdin` (e.g. `kubectl_stdin(&["apply", "-f", "-"], yaml)`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        let out = crate::output_with_stdin(self.kubectl_command()?.args(args), stdin)?;
        crate::result(&format!("kubectl {}", args.join(" ")), out)
    }

    /// `kubectl get KIND NAME -o jsonpath={PATH}`.
    pub fn jsonpath(&self, kind: &str, name: &str, path: &str) -> Result<String> {
        self.kubectl(&["get", kind, name, "-o", &format!("jsonpath={{{path}}}")])
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml).map(|_| ())
    }

    /// Debian's `etcdctl` (API v3) against the cluster's private etcd (clusters on
    /// `Store::Etcd` only).
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let url = self
            .state
            .etcd_url
            .as_deref()
            .context("this cluster runs on the embedded store, not etcd")?;
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", url])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl (Debian's etcd-client)")?;
        crate::result(&format!("etcdctl {}", args.join(" ")), out)
    }

    /// A kube client with the admin kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.state.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The pid of `node`'s agent (panics when it is not running).
    pub fn agent_pid(&self, node: &str) -> u32 {
        match self.agents.get(node) {
            Some(child) => child.id(),
            None => panic!("no agent runs on {node}"),
        }
    }

    /// Whether `node`'s agent is running (false once it exited on its own or was killed).
    pub fn agent_running(&mut self, node: &str) -> bool {
        self.agents
            .get_mut(node)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL `node`'s agent (as a crash would) and wait for it. Its pods keep running.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(mut child) = self.agents.remove(node) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.state.node_mut(node).agent = None;
        let _ = self.state.save();
    }

    /// (Re)start `node`'s agent with its usual arguments; its output is appended to its log.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        if self.agent_running(node) {
            bail!(
                "the agent of {node} already runs (pid {})",
                self.agent_pid(node)
            );
        }
        let n = self.state.node(node)?.clone();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("opening {}", n.log.display()))?;
        writeln!(
            log,
            "===== skiff-cluster: starting the agent at {} =====",
            unix_now()
        )?;
        let (program, args) = n.agent_command.split_first().context("no agent command")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RUST_LOG", AGENT_LOG)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        enter_node(&mut cmd, &n, "agent", true)?;
        self.say(&format!("starting the agent of {node}"));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {program} on {node}"))?;
        self.state.node_mut(node).agent = Some(ProcRecord::of(child.id()));
        self.agents.insert(node.to_string(), child);
        self.state.save()
    }

    /// Run `node`'s agent from `binary` from its next start on, as a package upgrade puts a
    /// new file in place before restarting the service.
    pub fn set_agent_binary(&mut self, node: &str, binary: &Path) -> Result<()> {
        let n = self.state.node_mut(node);
        let program = n.agent_command.first_mut().context("no agent command")?;
        *program = binary.to_string_lossy().into_owned();
        self.state.save()
    }

    /// `node`'s agent log (everything its agents wrote, restarts included).
    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(&self.node(node).log).unwrap_or_default()
    }

    /// The control plane's log.
    pub fn control_log(&self) -> String {
        std::fs::read_to_string(&self.state.control_log).unwrap_or_default()
    }

    pub fn control_pid(&self) -> Option<u32> {
        self.control.as_ref().map(Child::id)
    }

    /// Status of `node`'s Ready condition ("True", "False", "Unknown"); None while the node
    /// has not registered or reports no Ready condition.
    pub fn node_ready(&self, node: &str) -> Result<Option<String>> {
        Ok(self.ready_conditions()?.remove(node))
    }

    fn ready_conditions(&self) -> Result<HashMap<String, String>> {
        let out = self.kubectl(&["get", "nodes", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let mut ready = HashMap::new();
        for item in v["items"].as_array().into_iter().flatten() {
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let status = item["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["status"].as_str());
            if let Some(status) = status {
                ready.insert(name.to_string(), status.to_string());
            }
        }
        Ok(ready)
    }

    /// Wait until every node is Ready; fails early when an agent exits, and with every agent's
    /// log on timeout.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last: String;
        loop {
            for node in self.nodes() {
                if let Some(child) = self.agents.get_mut(&node)
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "the agent of {node} exited ({status}) before its node was Ready; \
                         its log:\n{}",
                        tail(&self.agent_log(&node), 200)
                    );
                }
            }
            match self.ready_conditions() {
                Ok(ready) => {
                    let not_ready: Vec<String> = self
                        .nodes()
                        .into_iter()
                        .filter(|n| ready.get(n).map(String::as_str) != Some("True"))
                        .map(|n| format!("{n}: {}", ready.get(&n).map_or("absent", |s| s)))
                        .collect();
                    if not_ready.is_empty() {
                        self.say(&format!(
                            "all {} nodes Ready after {:.1?}",
                            self.state.nodes.len(),
                            start.elapsed()
                        ));
                        return Ok(());
                    }
                    last = not_ready.join(", ");
                }
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() > timeout {
                let mut msg = format!(
                    "cluster {}: nodes not Ready after {timeout:?} ({last})\n",
                    self.state.name
                );
                for node in self.nodes() {
                    msg += &format!(
                        "\n----- agent log of {node} (last 100 lines) -----\n{}",
                        tail(&self.agent_log(&node), 100)
                    );
                }
                msg += &format!(
                    "\n----- control plane log (last 50 lines) -----\n{}",
                    tail(&self.control_log(), 50)
                );
                bail!(msg);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Leave the cluster running and forget it: it no longer belongs to this process, and only
    /// [`Cluster::down_from_state`] (e.g. `skiff-cluster down`) removes it. Returns the
    /// cluster directory (holding `cluster.json`).
    pub fn detach(mut self) -> Result<PathBuf> {
        self.state.save()?;
        write_registry(
            &self.state.name,
            &RegistryEntry {
                dir: self.state.dir.clone(),
                owner: None,
            },
        )?;
        self.detached = true;
        Ok(self.state.dir.clone())
    }

    /// Tear down the cluster whose state is in `dir` (started by another process).
    pub fn down_from_state(dir: &Path) -> Result<()> {
        let state = ClusterState::load(dir)?;
        let mut cluster = Cluster {
            state,
            control: None,
            etcd: None,
            agents: HashMap::new(),
            members: HashMap::new(),
            kubectl: OnceLock::new(),
            verbose: false,
            detached: true,
        };
        let errors = cluster.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down: {}", errors.join("; "))
        }
    }

    fn say(&self, what: &str) {
        if self.verbose {
            eprintln!("skiff-cluster: {what}");
        }
    }

    fn create_underlay(&mut self) -> Result<()> {
        let s = &self.state;
        self.say(&format!(
            "underlay {}/24 (netns {}, bridge {}, host link {})",
            s.host_ip, s.underlay_netns, s.bridge, s.host_link
        ));
        let ns = s.underlay_netns.as_str();
        ip(&["netns", "add", ns])?;
        // The sysctl exists only while br_netfilter is loaded; without it nothing calls iptables.
        for table in ["iptables", "ip6tables", "arptables"] {
            let key = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
            let script = format!("if [ -e {key} ]; then echo 0 > {key}; fi");
            run_checked(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script]))?;
        }
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "name",
            &s.bridge,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        ])?;
        ip(&["-n", ns, "link", "set", &s.bridge, "up"])?;
        ip(&[
            "link",
            "add",
            &s.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            ns,
        ])?;
        ip(&["-n", ns, "link", "set", "host", "master", &s.bridge, "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", s.host_ip),
            "dev",
            &s.host_link,
        ])?;
        ip(&["link", "set", &s.host_link, "up"])?;
        Ok(())
    }

    /// Network namespace `netns` with loopback up and an `eth0` at `ip`/24 whose veth peer,
    /// `link`, is on the underlay bridge.
    fn add_underlay_netns(&self, netns: &str, link: &str, ip_addr: &str) -> Result<()> {
        let ul = self.state.underlay_netns.as_str();
        ip(&["netns", "add", netns])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", ul, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        ip(&[
            "-n",
            ul,
            "link",
            "set",
            link,
            "master",
            &self.state.bridge,
            "up",
        ])?;
        let cidr = format!("{ip_addr}/24");
        ip(&["-n", netns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn create_node(&mut self, i: usize) -> Result<()> {
        let n = self.state.nodes[i].clone();
        self.say(&format!("node {} at {}", n.name, n.ip));
        self.add_underlay_netns(&n.netns, &n.name, &n.ip)?;
        for leaf in ["agent", "exec"] {
            let dir = n.cgroup.join(leaf);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        std::fs::create_dir_all(&n.bpffs)
            .with_context(|| format!("creating {}", n.bpffs.display()))?;
        std::fs::create_dir_all(&n.root_dir)
            .with_context(|| format!("creating {}", n.root_dir.display()))?;
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<String> {
        let mut last = None;
        // A port picked by binding :0 can be taken before etcd binds it; retry then.
        for _ in 0..5 {
            let [client, peer] = free_ports::<2>();
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = self.state.dir.join("etcd");
            let _ = std::fs::remove_dir_all(&data);
            let log_path = self.state.dir.join("etcd.log");
            let mut cmd = crate::Etcd::command(&data, &client_url, &peer_url);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log_path)?);
            new_session(&mut cmd);
            let mut child = cmd.spawn().context("starting etcd")?;
            self.state.etcd = Some(ProcRecord::of(child.id()));
            self.state.save()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let outcome = loop {
                if let Some(status) = child.try_wait()? {
                    break Err(anyhow::anyhow!(
                        "etcd exited ({status}):\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    ));
                }
                if crate::etcd_healthy(client) {
                    break Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(anyhow::anyhow!("etcd never became healthy"));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            match outcome {
                Ok(()) => {
                    self.etcd = Some(child);
                    self.state.etcd_url = Some(client_url.clone());
                    self.state.save()?;
                    return Ok(client_url);
                }
                Err(e) => {
                    let _ = child.wait();
                    self.state.etcd = None;
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn start_control(&mut self, binary: &Path, opts: &ClusterOptions) -> Result<()> {
        let etcd = match opts.store {
            Store::Etcd => Some(self.start_etcd()?),
            Store::Embedded => None,
        };
        let s = &self.state;
        let data_dir = s.dir.join("control");
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(["--bind-address", &s.host_ip])
            .args(["--advertise-address", &s.host_ip])
            .args(["--tls-san", &s.host_ip])
            .args(["--secure-port", &s.api_port.to_string()])
            .args(["--cluster-cidr", CLUSTER_CIDR]);
        if let Some(url) = &etcd {
            cmd.args(["--etcd-servers", url]);
        }
        for (flag, value) in CONTROL_DEFAULTS {
            let given = opts
                .control_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if !given {
                cmd.args([flag, value]);
            }
        }
        // LoadBalancer addresses from the underlay, so they answer there and from the host.
        if !opts
            .control_args
            .iter()
            .any(|a| a.starts_with("--service-lb-pool"))
        {
            cmd.args(["--service-lb-pool", &lb_pool(s.index)]);
        }
        cmd.args(&opts.control_args)
            .env("RUST_LOG", CONTROL_LOG)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&s.control_log)?);
        new_session(&mut cmd);
        self.say(&format!("control plane on {}", s.api_url));
        let mut child = cmd.spawn().context("starting skiff-control")?;
        self.state.control = Some(ProcRecord::of(child.id()));
        self.state.save()?;
        let generated = data_dir.join("admin.kubeconfig");
        let addr = SocketAddr::new(
            self.state.host_ip.parse().context("host ip")?,
            self.state.api_port,
        );
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "skiff-control exited ({status}); its log:\n{}",
                    tail(&self.control_log(), 100)
                );
            }
            if generated.exists()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                self.control = Some(child);
                bail!(
                    "skiff-control did not come up on {addr} in {CONTROL_TIMEOUT:?}:\n{}",
                    tail(&self.control_log(), 100)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.control = Some(child);
        self.write_kubeconfigs(&generated)
    }

    /// The admin kubeconfig and the nodes' bootstrap kubeconfig (with a new bootstrap token),
    /// from the one the control plane generated, pointing at the cluster's API URL.
    pub(crate) fn write_kubeconfigs(&mut self, generated: &Path) -> Result<()> {
        let s = &self.state;
        rewrite_kubeconfig(generated, &s.kubeconfig, &s.api_url, None)?;
        let token = self.create_bootstrap_token()?;
        let s = &self.state;
        rewrite_kubeconfig(
            generated,
            &s.bootstrap_kubeconfig,
            &s.api_url,
            Some(&token.token()),
        )
    }

    /// A bootstrap token for this cluster's nodes (its Secret created with the admin
    /// credential, retried while the control plane is still creating `kube-system`).
    fn create_bootstrap_token(&self) -> Result<BootstrapToken> {
        let token = BootstrapToken::generate();
        let secret = token.secret(
            Some(Duration::from_secs(24 * 3600)),
            jiff::Timestamp::now(),
            "skiff test cluster nodes",
            &[bootstrap_token::DEFAULT_NODE_TOKEN_GROUP],
        );
        let json = serde_json::to_string(&secret)?;
        wait_for("the nodes' bootstrap token", CONTROL_TIMEOUT, || {
            self.kubectl_stdin(&["create", "-f", "-"], &json).map(Some)
        })?;
        Ok(token)
    }

    fn import_image(&self, node: &str, archive: &Path) -> Result<()> {
        let n = self.state.node(node)?;
        let agent = &n.agent_command[0];
        let root = n.root_dir.to_string_lossy();
        let archive = archive.to_string_lossy();
        let out = self
            .state
            .node_command(
                node,
                &[agent, "image", "import", "--root-dir", &root, &archive],
            )?
            .stdin(Stdio::null())
            .output()
            .context("running skiff-agent image import")?;
        crate::result(&format!("skiff-agent image import on {node}"), out)?;
        Ok(())
    }

    /// Remove everything; the errors met on the way (teardown goes on after each).
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        // 1. Agents, as a crash would stop them.
        self.kill_agents();
        // 2. The agent's own cleanup: pods, mounts, pod cgroups, pins, its rules in the node.
        for n in &self.state.nodes {
            note(
                &mut errors,
                &format!("skiff-agent cleanup on {}", n.name),
                agent_cleanup(n),
            );
        }
        // 3. Whatever still runs in the cluster's cgroups, then the cgroups themselves.
        self.remove_cgroups(&mut errors);
        // 4. Control plane and etcd.
        stop_process(self.control.take(), self.state.control.take());
        stop_process(self.etcd.take(), self.state.etcd.take());
        self.stop_members(&mut errors);
        // 5. Namespaces and links.
        self.delete_network(&mut errors);
        // 6. bpffs directories.
        for n in &self.state.nodes {
            if n.bpffs.exists() {
                note(
                    &mut errors,
                    "removing a bpffs dir",
                    std::fs::remove_dir_all(&n.bpffs)
                        .with_context(|| n.bpffs.display().to_string()),
                );
            }
        }
        let _ = std::fs::remove_dir(Path::new(BPFFS).join("skiff"));
        self.keep_logs();
        // 7. The cluster directory, never through a mount left inside it.
        note(
            &mut errors,
            "removing the cluster directory",
            remove_dir_safely(&self.state.dir),
        );
        // 8. The registry entry.
        let _ = std::fs::remove_file(registry_path(&self.state.name));
        errors
    }

    /// Kills every agent: our own children, or by their records for a cluster this process
    /// attached to.
    fn kill_agents(&mut self) {
        for node in &mut self.state.nodes {
            match self.agents.remove(&node.name) {
                Some(mut child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                None => {
                    if let Some(rec) = node.agent {
                        kill_record(rec, Duration::ZERO);
                    }
                }
            }
            node.agent = None;
        }
    }

    fn remove_cgroups(&self, errors: &mut Vec<String>) {
        if let Some(cg) = &self.state.cgroup {
            note(
                errors,
                "removing the cluster's cgroups",
                remove_cgroup_tree(cg),
            );
            if let Some(parent) = cg.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        for (_, mount) in cgroup_v1_mounts() {
            for n in &self.state.nodes {
                let dir = mount.join("skiff").join(&n.name);
                note(errors, "removing v1 cgroups", remove_cgroup_tree(&dir));
            }
            let _ = std::fs::remove_dir(mount.join("skiff"));
        }
    }

    /// The node and underlay namespaces and the host's link to the underlay.
    fn delete_network(&self, errors: &mut Vec<String>) {
        for n in &self.state.nodes {
            note(errors, "deleting a node netns", delete_netns(&n.netns));
        }
        note(
            errors,
            "deleting the underlay netns",
            delete_netns(&self.state.underlay_netns),
        );
        if Path::new("/sys/class/net")
            .join(&self.state.host_link)
            .exists()
        {
            note(
                errors,
                "deleting the host link",
                ip(&["link", "del", &self.state.host_link]).map(drop),
            );
        }
    }

    /// Copies the logs to `$SKIFF_KEEP_LOGS/<cluster>`, if set, for a look after a passing run.
    fn keep_logs(&self) {
        let Some(keep) = std::env::var_os("SKIFF_KEEP_LOGS") else {
            return;
        };
        let keep = Path::new(&keep).join(&self.state.name);
        let _ = std::fs::create_dir_all(&keep);
        let members = self
            .state
            .control_planes
            .iter()
            .chain(&self.state.etcd_members)
            .map(|m| (format!("{}.log", m.name), &m.log));
        let logs = std::iter::once(("control.log".to_string(), &self.state.control_log))
            .chain(members)
            .chain(
                self.state
                    .nodes
                    .iter()
                    .map(|n| (format!("{}.log", n.name), &n.log)),
            );
        for (name, log) in logs {
            let _ = std::fs::copy(log, keep.join(name));
        }
    }
}

/// Records a failed teardown step as "`what`: error".
fn note(errors: &mut Vec<String>, what: &str, result: Result<()>) {
    if let Err(e) = result {
        errors.push(format!("{what}: {e:#}"));
    }
}

/// Stops a control-plane process: our own child, else by its record.
fn stop_process(child: Option<Child>, record: Option<ProcRecord>) {
    if let Some(mut child) = child {
        stop_child(&mut child);
    } else if let Some(rec) = record {
        kill_record(rec, Duration::from_secs(3));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.detached {
            // Leave everything running (dropping a Child does not kill it).
            return;
        }
        let errors = self.teardown();
        if !errors.is_empty() {
            eprintln!(
                "skiff-cluster: tearing down {} left things behind:\n  {}",
                self.state.name,
                errors.join("\n  ")
            );
        }
    }
}

/// For tests that need root: true when not root, after failing the test under
/// `SKIFF_REQUIRE_PRIVILEGED=1` or printing why it is skipped.
pub use skiff_common::privileged::{cannot_run, is_root, skip_unless_root};

/// `target/debug/skiff-agent` (or `$SKIFF_AGENT_BIN`).
pub fn agent_binary_path() -> PathBuf {
    std::env::var_os("SKIFF_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("skiff-agent"))
}

/// Whether a skiff-agent with the `run`, `image import` and `cleanup` subcommands the harness
/// uses has been built.
pub fn agent_available() -> bool {
    let bin = agent_binary_path();
    let help_mentions = |args: &[&str], flag: &str| {
        Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(flag))
    };
    bin.exists()
        && help_mentions(&["run", "--help"], "--node-ip")
        && help_mentions(&["image", "import", "--help"], "--root-dir")
        && help_mentions(&["cleanup", "--help"], "--bpffs")
}

fn binary(env: &str, name: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join(name));
    ensure!(
        path.exists(),
        "{} not found: build it first (`cargo build -p {name}`; `cargo xtask test` builds all binaries)",
        path.display()
    );
    Ok(path)
}

/// Pick a free cluster index, register the cluster and write its initial state (all names and
/// addresses, nothing created yet) — under a machine-wide lock, so parallel tests and
/// processes get different clusters. Clusters whose owner died are torn down first.
fn allocate(opts: &ClusterOptions, cgroup2: &Path, agent_bin: &Path) -> Result<ClusterState> {
    let _lock = registry_lock()?;
    gc_locked();
    let index = claim_index(cgroup2)?;
    let name = format!("sk{index}");
    let dir = std::fs::canonicalize(cluster_dir(opts, &name)?)?;
    let host_ip = format!("10.{index}.0.1");
    // Chosen once the address exists (see `Cluster::start`).
    let api_port = 0;
    let cgroup = cgroup2.join("skiff").join(&name);
    let bootstrap_kubeconfig = dir.join("bootstrap.kubeconfig");
    let nodes = (1..=opts.nodes)
        .map(|i| {
            let node = format!("{name}-node-{i}");
            let ip = format!("10.{index}.0.{}", 10 + i);
            let root_dir = dir.join("nodes").join(&node);
            let node_cgroup = cgroup.join(&node);
            let bpffs = Path::new(BPFFS).join("skiff").join(&node);
            let mut agent_command: Vec<String> = vec![agent_bin.to_string_lossy().into_owned()];
            agent_command.extend(
                [
                    "run",
                    "--bootstrap-kubeconfig",
                    &bootstrap_kubeconfig.to_string_lossy(),
                    "--kubeconfig",
                    &root_dir.join(NODE_KUBECONFIG).to_string_lossy(),
                    "--node-name",
                    &node,
                    "--node-ip",
                    &ip,
                    "--root-dir",
                    &root_dir.to_string_lossy(),
                    "--cgroup-root",
                    &node_cgroup.to_string_lossy(),
                    "--bpffs",
                    &bpffs.to_string_lossy(),
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--port",
                    &AGENT_PORT.to_string(),
                    "--proxy-mode",
                    &opts.proxy_mode,
                    "--cluster-dns",
                    "10.96.0.10",
                ]
                .map(String::from),
            );
            agent_command.extend(opts.agent_args.iter().cloned());
            NodeState {
                log: root_dir.join("agent.log"),
                name: node.clone(),
                ip,
                netns: node,
                root_dir,
                cgroup: node_cgroup,
                bpffs,
                agent_command,
                agent: None,
            }
        })
        .collect();
    let state = ClusterState {
        index,
        underlay_netns: format!("{name}-underlay"),
        bridge: format!("{name}-br"),
        host_link: format!("{name}-host"),
        api_url: String::new(),
        host_ip,
        api_port,
        store: opts.store,
        kubeconfig: dir.join("admin.kubeconfig"),
        bootstrap_kubeconfig,
        cgroup: Some(cgroup),
        control: None,
        control_log: dir.join("control.log"),
        etcd: None,
        etcd_url: None,
        nodes,
        control_planes: Vec::new(),
        etcd_members: Vec::new(),
        dir,
        name,
    };
    state.save()?;
    write_registry(
        &state.name,
        &RegistryEntry {
            dir: state.dir.clone(),
            owner: Some(ProcRecord::of(std::process::id())),
        },
    )?;
    Ok(state)
}

/// The first free cluster index, round robin from where the last allocation stopped, so a
/// name just freed is not reused at once (its logs and any leftovers stay unambiguous).
/// Call with the registry lock held.
fn claim_index(cgroup2: &Path) -> Result<u8> {
    let routes = host_ipv4_routes();
    let next_file = Path::new(REGISTRY).join(".next");
    let start: u8 = std::fs::read_to_string(&next_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|k| INDEX_RANGE.contains(k))
        .unwrap_or(*INDEX_RANGE.start());
    let index = (start..=*INDEX_RANGE.end())
        .chain(*INDEX_RANGE.start()..start)
        .find(|&k| index_free(k, &routes, cgroup2))
        .context(
            "no free cluster index (too many clusters on this machine; `skiff-cluster gc`?)",
        )?;
    let next = if index == *INDEX_RANGE.end() {
        *INDEX_RANGE.start()
    } else {
        index + 1
    };
    std::fs::write(&next_file, next.to_string())?;
    Ok(index)
}

/// Creates the cluster directory: `opts.dir`, which must be empty, or
/// `<target dir>/clusters/<name>`, emptied of what an unregistered cluster left there.
fn cluster_dir(opts: &ClusterOptions, name: &str) -> Result<PathBuf> {
    match &opts.dir {
        Some(dir) => {
            let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
            ensure!(
                empty,
                "{} is not empty (a cluster already there? `skiff-cluster down --dir {}`)",
                dir.display(),
                dir.display()
            );
            std::fs::create_dir_all(dir)?;
            Ok(dir.clone())
        }
        None => {
            let base = target_dir().join("clusters");
            std::fs::create_dir_all(&base)?;
            let dir = base.join(name);
            // Left behind by a cluster nobody registered any more (e.g. after a reboot).
            remove_dir_safely(&dir)?;
            std::fs::create_dir_all(&dir)?;
            Ok(dir)
        }
    }
}

/// 6443 on the cluster's own address unless something (a wildcard listener) holds it; a free
/// port of that address otherwise.
fn pick_port(ip: Ipv4Addr) -> Result<u16> {
    if TcpListener::bind((ip, 6443)).is_ok() {
        return Ok(6443);
    }
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn index_free(k: u8, routes: &[(u32, u32)], cgroup2: &Path) -> bool {
    let name = format!("sk{k}");
    if registry_path(&name).exists()
        || Path::new("/sys/class/net")
            .join(format!("{name}-host"))
            .exists()
        || cgroup2.join("skiff").join(&name).exists()
    {
        return false;
    }
    let prefix = format!("{name}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns")
        && entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    {
        return false;
    }
    // No route of the host may overlap 10.k.0.0/24.
    let net = u32::from(Ipv4Addr::new(10, k, 0, 0));
    !routes.iter().any(|&(addr, len)| {
        let common = len.min(24);
        let mask = if common == 0 {
            0
        } else {
            u32::MAX << (32 - common)
        };
        len > 0 && (addr & mask) == (net & mask)
    })
}

/// The host's IPv4 route prefixes (all tables), as (address, length); default routes left out.
fn host_ipv4_routes() -> Vec<(u32, u32)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "nat",
        "anycast",
    ];
    let mut routes = Vec::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        let mut first = words.next().unwrap_or("");
        if TYPES.contains(&first) {
            first = words.next().unwrap_or("");
        }
        let (addr, len) = first.split_once('/').unwrap_or((first, "32"));
        if let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) {
            routes.push((u32::from(addr), len.min(32)));
        }
    }
    routes
}

#[derive(Serialize, Deserialize)]
struct RegistryEntry {
    dir: PathBuf,
    /// The process that tears the cluster down when it ends; None once detached.
    owner: Option<ProcRecord>,
}

fn registry_path(name: &str) -> PathBuf {
    Path::new(REGISTRY).join(format!("{name}.json"))
}

fn write_registry(name: &str, entry: &RegistryEntry) -> Result<()> {
    std::fs::create_dir_all(REGISTRY)?;
    let path = registry_path(name);
    std::fs::write(&path, serde_json::to_vec(entry)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn registry_lock() -> Result<nix::fcntl::Flock<File>> {
    std::fs::create_dir_all(REGISTRY).with_context(|| format!("creating {REGISTRY} (root?)"))?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(REGISTRY).join(".lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {REGISTRY}/.lock: {e}"))
}

/// Tear down every registered cluster whose owning process is gone (not detached ones);
/// their names.
pub fn gc() -> Result<Vec<String>> {
    let _lock = registry_lock()?;
    Ok(gc_locked())
}

fn gc_locked() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(REGISTRY) else {
        return removed;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(entry) = std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<RegistryEntry>(&b)?))
        else {
            continue;
        };
        let Some(owner) = entry.owner else { continue };
        if owner.alive() {
            continue;
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match Cluster::down_from_state(&entry.dir) {
            Ok(()) => {}
            Err(e) => eprintln!("skiff-cluster: removing stale cluster {name}: {e:#}"),
        }
        let _ = std::fs::remove_file(&path);
        removed.push(name);
    }
    removed
}

/// Start `cmd` in a session of its own: out of the terminal's job control (Ctrl-C) and alive
/// after the process that started it exits, for clusters left running.
fn new_session(cmd: &mut Command) {
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
}

/// Make `cmd` start in node `n`'s network namespace and its cgroup `leaf` (`agent`, `exec`),
/// in a session of its own when `setsid`.
fn enter_node(cmd: &mut Command, n: &NodeState, leaf: &str, setsid: bool) -> Result<()> {
    let netns = File::open(n.netns_path())
        .with_context(|| format!("opening {}", n.netns_path().display()))?;
    let procs_path = n.cgroup.join(leaf).join("cgroup.procs");
    let procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?;
    // SAFETY: only async-signal-safe system calls (write, setns, setsid) on descriptors opened
    // before the fork; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process itself.
            nix::unistd::write(&procs, b"0")?;
            nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)?;
            if setsid {
                nix::unistd::setsid()?;
            }
            Ok(())
        });
    }
    Ok(())
}

fn agent_cleanup(n: &NodeState) -> Result<()> {
    let Some(agent) = n.agent_command.first() else {
        return Ok(());
    };
    if !Path::new(agent).exists() || !n.netns_path().exists() || !n.cgroup.join("exec").exists() {
        return Ok(());
    }
    let mut cmd = Command::new(agent);
    cmd.arg("cleanup")
        .arg("--root-dir")
        .arg(&n.root_dir)
        .arg("--cgroup-root")
        .arg(&n.cgroup)
        .arg("--bpffs")
        .arg(&n.bpffs)
        .arg("--node-name")
        .arg(&n.name)
        .env("RUST_LOG", AGENT_LOG)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    enter_node(&mut cmd, n, "exec", false)?;
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An agent without the subcommand yet (it is being written): nothing to clean up with.
    if stderr.contains("unrecognized subcommand") {
        return Ok(());
    }
    bail!("{}:\n{}", out.status, tail(&stderr, 40))
}

/// Kill every process in cgroup `dir` and below, wait until they are gone, remove the cgroups
/// deepest first.
fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // cgroup v2: cgroup.kill kills the whole subtree; v1 (and old kernels): every pid.
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for d in &dirs {
                for pid in cgroup_pids(d) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let populated = dirs.iter().any(|d| !cgroup_pids(d).is_empty());
        if !populated || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    tries += 1;
                    if tries > 100 {
                        return Err(e).with_context(|| format!("removing cgroup {}", d.display()));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Mounts from /proc/self/mountinfo as (fstype, mount point, super options).
fn mounts() -> Vec<(String, PathBuf, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = unescape_mount(left.split_whitespace().nth(4)?);
            let mut r = right.split_whitespace();
            let fstype = r.next()?.to_string();
            let opts = r.nth(1).unwrap_or("").to_string();
            Some((fstype, PathBuf::from(mount_point), opts))
        })
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the cgroup v2 hierarchy is mounted (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts()
        .into_iter()
        .find(|(fstype, _, _)| fstype == "cgroup2")
        .map(|(_, mp, _)| mp)
        .context("no cgroup2 hierarchy is mounted")
}

/// The cgroup v1 hierarchies (their super options, mount point).
fn cgroup_v1_mounts() -> Vec<(String, PathBuf)> {
    mounts()
        .into_iter()
        .filter(|(fstype, _, _)| fstype == "cgroup")
        .map(|(_, mp, opts)| (opts, mp))
        .collect()
}

/// Mount bpffs at /sys/fs/bpf unless it is there.
fn ensure_bpffs() -> Result<()> {
    let mounted = mounts()
        .iter()
        .any(|(fstype, mp, _)| fstype == "bpf" && mp == Path::new(BPFFS));
    if !mounted {
        std::fs::create_dir_all(BPFFS)?;
        nix::mount::mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    }
    Ok(())
}

/// Unmount everything mounted at or below `dir` (deepest first), then remove it. Refuses to
/// remove anything while a mount remains, so it never deletes through one.
fn remove_dir_safely(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let dir = std::fs::canonicalize(dir)?;
    for _ in 0..10 {
        let mut inside: Vec<PathBuf> = mounts()
            .into_iter()
            .map(|(_, mp, _)| mp)
            .filter(|mp| mp.starts_with(&dir))
            .collect();
        if inside.is_empty() {
            return std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing {}", dir.display()));
        }
        inside.sort_by_key(|mp| std::cmp::Reverse(mp.components().count()));
        for mp in inside {
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    bail!(
        "mounts remain under {}; not removing it (see /proc/self/mountinfo)",
        dir.display()
    )
}

fn delete_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    if !path.exists() {
        return Ok(());
    }
    if ip(&["netns", "del", name]).is_ok() {
        return Ok(());
    }
    let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// SIGTERM, up to 3 s, then SIGKILL; reaped.
fn stop_child(child: &mut Child) {
    let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Stop a process that is not our child: SIGTERM and up to `grace`, then SIGKILL; wait until
/// it is gone. Does nothing when the pid now belongs to another process.
fn kill_record(rec: ProcRecord, grace: Duration) {
    if !rec.alive() {
        return;
    }
    let pid = Pid::from_raw(rec.pid as i32);
    if !grace.is_zero() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while rec.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if rec.alive() {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, None | Some('Z' | 'X'))
}

/// Copy the kubeconfig at `from` to `to` with every cluster's server set to `server` and, given
/// a bearer `token`, every user's credentials replaced by it.
fn rewrite_kubeconfig(from: &Path, to: &Path, server: &str, token: Option<&str>) -> Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut v: serde_norway::Value =
        serde_norway::from_str(&text).with_context(|| format!("parsing {}", from.display()))?;
    let clusters = v
        .get_mut("clusters")
        .and_then(|c| c.as_sequence_mut())
        .with_context(|| format!("{} has no clusters", from.display()))?;
    for c in clusters {
        if let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) {
            cluster.insert("server".into(), server.into());
        }
    }
    if let Some(token) = token {
        let users = v
            .get_mut("users")
            .and_then(|u| u.as_sequence_mut())
            .with_context(|| format!("{} has no users", from.display()))?;
        for u in users {
            let mut user = serde_norway::Mapping::new();
            user.insert("token".into(), token.into());
            if let Some(m) = u.as_mapping_mut() {
                m.insert("user".into(), user.into());
            }
        }
    }
    // It carries a client key or a token: readable by root only, like the original.
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("writing {}", to.display()))?;
    file.write_all(serde_norway::to_string(&v)?.as_bytes())
        .with_context(|| format!("writing {}", to.display()))
}

/// Run `ip` with `args`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    run_checked(Command::new("ip").args(args))
}

fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?} (is iproute2 installed?)"))?;
    crate::result(&format!("{cmd:?}"), out)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// An exit status as a process exit code (128 + signal for a signalled process).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_index_avoids_overlapping_routes() {
        let net = |a: [u8; 4], len| (u32::from(Ipv4Addr::from(a)), len);
        let cg = Path::new("/nonexistent-cgroup2");
        // Index 240 is free of these routes…
        let routes = [net([192, 0, 2, 0], 24), net([10, 96, 0, 0], 12)];
        assert!(index_free(240, &routes, cg));
        // …but not of a /8 covering it, its own /24, or a host route inside it.
        assert!(!index_free(240, &[net([10, 0, 0, 0], 8)], cg));
        assert!(!index_free(240, &[net([10, 240, 0, 0], 24)], cg));
        assert!(!index_free(240, &[net([10, 240, 0, 7], 32)], cg));
        assert!(index_free(240, &[net([10, 240, 1, 0], 24)], cg));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/a\040b/c\134d"), r"/a b/c\d");
        assert_eq!(unescape_mount(r"/plain\04"), r"/plain\04");
    }
}
