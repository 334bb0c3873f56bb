//! A highly available control plane for a test cluster: `control_planes` API servers (each
//! with the controllers and the scheduler under leader election) over an etcd cluster of
//! `etcd_members`, every one of them a process in a network namespace of its own on the
//! underlay, as separate machines would be.
//!
//! ```text
//!  sk<k>-etcd-<i> netns: etcd on 10.<k>.0.<5+i>:2379 (peers :2380)      i in 1..=4
//!  sk<k>-cp-<i>   netns: skiff-control on 10.<k>.0.<1+i>:6443, hostname sk<k>-cp-<i>
//! ```
//!
//! The control planes share the cluster CA and the service-account key (copied from the first
//! one's data dir before the others start, as kubeadm's `--upload-certs` shares them), and
//! each serves a certificate naming every control plane's address. The admin kubeconfig
//! points at one control plane; [`Cluster::kill`] moves it to a live one when that one dies
//! and [`Cluster::restart`] before it stops it (kubectl does not fail over). Agents are given the first control plane only: they learn
//! the others from the `kubernetes` Endpoints.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::{
    CLUSTER_CIDR, CONTROL_DEFAULTS, CONTROL_LOG, CONTROL_TIMEOUT, Cluster, ClusterOptions,
    ClusterState, ProcRecord, delete_netns, kill_record, rewrite_kubeconfig, tail,
};

/// At most this many of each: control planes take 10.<k>.0.2-5, etcd members .6-.9 (nodes
/// start at .11).
pub const MAX_MEMBERS: usize = 4;
const API_PORT: u16 = 6443;
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// What the control planes share (the rest of a data dir is made by each at start).
const SHARED_PKI: &[&str] = &["ca.crt", "ca.key", "sa.key", "sa.pub"];
/// How long a restarted member has to stop after SIGTERM: an API server's drain and a little.
const RESTART_GRACE: Duration = Duration::from_secs(40);
/// The Lease the controller managers elect their leader with.
const LEADER_LEASE: &str = "kube-controller-manager";

/// One control plane or etcd member: a process alone in its network namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberState {
    /// Also its netns, its hostname and its veth in the underlay namespace.
    pub name: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Its command line (program first) and environment, to start it again the same way.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub process: Option<ProcRecord>,
}

impl MemberState {
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn alive(&self) -> bool {
        self.process.is_some_and(|p| p.alive())
    }

    fn is_control_plane(&self) -> bool {
        self.name.contains("-cp-")
    }

    /// Whether it serves: a control plane answers `/readyz` (with its data, so it holds the
    /// CA), an etcd member says it is healthy.
    fn ready(&self) -> bool {
        let Ok(ip) = self.ip.parse() else {
            return false;
        };
        if self.is_control_plane() {
            let addr = SocketAddr::new(ip, API_PORT);
            self.data_dir.join("admin.kubeconfig").exists()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        } else {
            etcd_healthy(SocketAddr::new(ip, ETCD_CLIENT_PORT))
        }
    }

    /// Starts its command in its namespace (and, for a control plane, a UTS namespace with
    /// its name as hostname: its leader-election identity starts with it), logging to `log`
    /// (appended to, so a restart keeps what the last run said).
    fn spawn(&self) -> Result<std::process::Child> {
        let (program, args) = self
            .command
            .split_first()
            .with_context(|| format!("no command recorded for {}", self.name))?;
        let netns = File::open(self.netns_path())
            .with_context(|| format!("opening {}", self.netns_path().display()))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let hostname = self.name.clone();
        let own_hostname = self.is_control_plane();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: only async-signal-safe system calls (setns, unshare, sethostname, setsid)
        // on a descriptor and a string made before the fork; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)?;
                if own_hostname {
                    nix::sched::unshare(CloneFlags::CLONE_NEWUTS)?;
                    nix::unistd::sethostname(&hostname)?;
                }
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", self.name))
    }
}

/// Names and addresses of the members `opts` asks for (nothing is created).
pub(super) fn plan(opts: &ClusterOptions, state: &mut ClusterState) -> Result<()> {
    if !opts.ha() {
        return Ok(());
    }
    ensure!(
        (1..=MAX_MEMBERS).contains(&opts.control_planes)
            && (1..=MAX_MEMBERS).contains(&opts.etcd_members),
        "1 to {MAX_MEMBERS} control planes and etcd members (asked for {} and {})",
        opts.control_planes,
        opts.etcd_members
    );
    let (name, k, dir) = (&state.name, state.index, &state.dir);
    let member = |kind: &str, i: usize, last_octet: usize| MemberState {
        name: format!("{name}-{kind}-{i}"),
        ip: format!("10.{k}.0.{last_octet}"),
        data_dir: dir.join(format!("{kind}-{i}")),
        log: dir.join(format!("{kind}-{i}.log")),
        command: Vec::new(),
        env: Vec::new(),
        process: None,
    };
    state.control_planes = (1..=opts.control_planes)
        .map(|i| member("cp", i, 1 + i))
        .collect();
    state.etcd_members = (1..=opts.etcd_members)
        .map(|i| member("etcd", i, 5 + i))
        .collect();
    let first = &state.control_planes[0];
    state.api_port = API_PORT;
    state.api_url = format!("https://{}:{API_PORT}", first.ip);
    state.control_log = first.log.clone();
    Ok(())
}

impl ClusterOptions {
    /// Whether the control plane runs in namespaces of its own (several API servers, or an
    /// etcd cluster).
    pub fn ha(&self) -> bool {
        self.control_planes > 1 || self.etcd_members > 0
    }
}

impl ClusterState {
    /// The etcd client URLs of the cluster's etcd members.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_members
            .iter()
            .map(|m| format!("http://{}:{ETCD_CLIENT_PORT}", m.ip))
            .collect()
    }

    /// The control plane holding the controller-manager Lease (by its hostname, the first part
    /// of the holder identity), None when nobody holds it.
    pub fn leader(&self) -> Result<Option<String>> {
        let kubectl = crate::Kubectl::newest()?;
        let out = kubectl
            .command_with(&self.kubeconfig, &self.dir)
            .args(["--request-timeout=5s", "-n", "kube-system", "get", "lease"])
            .arg(LEADER_LEASE)
            .args(["-o", "jsonpath={.spec.holderIdentity}"])
            .output()?;
        let holder = crate::result("kubectl get lease", out)?;
        let Some((host, _)) = holder.trim().split_once('_') else {
            return Ok(None);
        };
        Ok(self
            .control_planes
            .iter()
            .find(|m| m.name == host)
            .map(|m| m.name.clone()))
    }

    /// Every process of the cluster, one line each: control planes (and which leads), etcd
    /// members, agents, with pid and address.
    pub fn processes(&self) -> String {
        let pid = |r: &Option<ProcRecord>| match r {
            Some(r) if r.alive() => format!("pid {}", r.pid),
            Some(_) => "exited".to_string(),
            None => "not started".to_string(),
        };
        let leader = self.leader().ok().flatten();
        let mut out = String::new();
        if self.control_planes.is_empty() {
            out += &format!(
                "  control  {:<16} {:<22} {:<12} log {}\n",
                "control",
                format!("{}:{}", self.host_ip, self.api_port),
                pid(&self.control),
                self.control_log.display()
            );
        }
        for m in &self.control_planes {
            // A dead leader keeps the Lease until it expires and another takes it.
            let lead = match leader.as_deref() == Some(&m.name) {
                true if m.alive() => " (leader)",
                true => " (holds the leader Lease until it expires)",
                false => "",
            };
            out += &format!(
                "  control  {:<16} {:<22} {:<12} log {}{lead}\n",
                m.name,
                format!("{}:{API_PORT}", m.ip),
                pid(&m.process),
                m.log.display()
            );
        }
        for m in &self.etcd_members {
            out += &format!(
                "  etcd     {:<16} {:<22} {:<12} log {}\n",
                m.name,
                format!("{}:{ETCD_CLIENT_PORT}", m.ip),
                pid(&m.process),
                m.log.display()
            );
        }
        if let (Some(rec), Some(url)) = (&self.etcd, &self.etcd_url) {
            out += &format!(
                "  etcd     {:<16} {:<22} {:<12}\n",
                "etcd",
                url,
                pid(&Some(*rec))
            );
        }
        for n in &self.nodes {
            out += &format!(
                "  agent    {:<16} {:<22} {:<12} log {}\n",
                n.name,
                n.ip,
                pid(&n.agent),
                n.log.display()
            );
        }
        out
    }

    /// SIGKILL the process called `name`: a control plane, an etcd member, a node's agent, or
    /// `leader` (the control plane holding the controller-manager Lease). Returns its name. A
    /// killed control plane that the admin kubeconfig points at is replaced there by a live one.
    pub fn kill(&mut self, name: &str) -> Result<String> {
        let name = match name {
            "leader" => self
                .leader()?
                .context("no control plane holds the controller-manager Lease")?,
            other => other.to_string(),
        };
        // The record stays: `status` then shows the process as exited.
        let record = if let Some(m) = self.member_mut(&name) {
            m.process
        } else if let Some(n) = self.nodes.iter().find(|n| n.name == name) {
            n.agent
        } else {
            let mut names: Vec<&str> = self
                .control_planes
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            names.extend(self.etcd_members.iter().map(|m| m.name.as_str()));
            names.extend(self.nodes.iter().map(|n| n.name.as_str()));
            bail!(
                "no process {name:?} in cluster {} (known: leader, {})",
                self.name,
                names.join(", ")
            );
        };
        let record = record
            .filter(ProcRecord::alive)
            .with_context(|| format!("{name} does not run"))?;
        kill_record(record, Duration::ZERO);
        self.point_kubeconfig_at_live_control_plane(None)?;
        self.save()?;
        Ok(name)
    }

    /// Stops the control plane or etcd member `name` as an operator restarting it would
    /// (SIGTERM, then up to [`RESTART_GRACE`] to finish) and starts it again with the same
    /// command line, data dir and address; waits until it serves again. The new process is
    /// returned, a child of this one.
    pub fn restart(&mut self, name: &str) -> Result<std::process::Child> {
        let m = self
            .control_planes
            .iter()
            .chain(&self.etcd_members)
            .find(|m| m.name == name)
            .cloned()
            .with_context(|| format!("no control plane or etcd member {name:?}"))?;
        self.point_kubeconfig_at_live_control_plane(Some(name))?;
        if let Some(rec) = m.process.filter(ProcRecord::alive) {
            kill_record(rec, RESTART_GRACE);
        }
        let mut child = m.spawn()?;
        if let Some(s) = self.member_mut(name) {
            s.process = Some(ProcRecord::of(child.id()));
        }
        self.save()?;
        let timeout = if m.is_control_plane() {
            CONTROL_TIMEOUT
        } else {
            Duration::from_secs(30)
        };
        wait_member_ready(&m, &mut child, timeout)?;
        Ok(child)
    }

    fn member_mut(&mut self, name: &str) -> Option<&mut MemberState> {
        self.control_planes
            .iter_mut()
            .chain(self.etcd_members.iter_mut())
            .find(|m| m.name == name)
    }

    /// After a control plane died, or before `leaving` stops: the admin kubeconfig (and
    /// `api_url`) to a live one.
    fn point_kubeconfig_at_live_control_plane(&mut self, leaving: Option<&str>) -> Result<()> {
        let usable = |m: &MemberState| m.alive() && Some(m.name.as_str()) != leaving;
        let current = self
            .control_planes
            .iter()
            .find(|m| format!("https://{}:{API_PORT}", m.ip) == self.api_url);
        if current.is_none_or(usable) {
            return Ok(());
        }
        let Some(live) = self.control_planes.iter().find(|m| usable(m)) else {
            return Ok(());
        };
        self.api_url = format!("https://{}:{API_PORT}", live.ip);
        let generated = live.data_dir.join("admin.kubeconfig");
        rewrite_kubeconfig(&generated, &self.kubeconfig, &self.api_url, None)
    }
}

impl Cluster {
    /// See [`ClusterState::kill`]; also reaps the process when this one started it.
    pub fn kill(&mut self, name: &str) -> Result<String> {
        let name = self.state.kill(name)?;
        if let Some(mut child) = self.members.remove(&name) {
            let _ = child.wait();
        }
        if let Some(mut child) = self.agents.remove(&name) {
            let _ = child.wait();
        }
        Ok(name)
    }

    /// See [`ClusterState::restart`]; the new process replaces the old one among the children
    /// this one reaps.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let name = match name {
            "leader" => self
                .leader()?
                .context("no control plane holds the controller-manager Lease")?,
            other => other.to_string(),
        };
        self.say(&format!("restarting {name}"));
        // Our own child is waited for here: as a zombie it would look alive to kill_record.
        self.state
            .point_kubeconfig_at_live_control_plane(Some(&name))?;
        if let Some(mut old) = self.members.remove(&name) {
            stop_child_within(&mut old, RESTART_GRACE);
        }
        let child = self.state.restart(&name)?;
        self.members.insert(name, child);
        Ok(())
    }

    /// See [`ClusterState::leader`].
    pub fn leader(&self) -> Result<Option<String>> {
        self.state.leader()
    }

    /// Wait until the `kubernetes` Endpoints list every control plane's address (what the
    /// agents learn the API servers from).
    pub fn wait_api_servers_published(&self, timeout: Duration) -> Result<()> {
        let want: std::collections::BTreeSet<String> = self
            .state
            .control_planes
            .iter()
            .map(|m| m.ip.clone())
            .collect();
        crate::wait_for(
            "every API server in the kubernetes Endpoints",
            timeout,
            || {
                let ips = self.kubectl(&[
                    "get",
                    "endpoints",
                    "kubernetes",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].ip}",
                ])?;
                let got: std::collections::BTreeSet<String> =
                    ips.split_whitespace().map(String::from).collect();
                if got == want {
                    return Ok(Some(()));
                }
                bail!("endpoints {got:?}, want {want:?}")
            },
        )
    }

    /// The etcd members, then the control planes, each in its namespace; the admin and
    /// bootstrap kubeconfigs.
    pub(super) fn start_ha_control(&mut self, binary: &Path, opts: &ClusterOptions) -> Result<()> {
        let members: Vec<MemberState> = self
            .state
            .etcd_members
            .iter()
            .chain(&self.state.control_planes)
            .cloned()
            .collect();
        for m in &members {
            self.create_member_netns(m)?;
        }
        self.start_etcd_members()?;
        let control_planes = self.state.control_planes.clone();
        for (i, m) in control_planes.iter().enumerate() {
            if i > 0 {
                share_pki(&control_planes[0].data_dir, &m.data_dir)?;
            }
            self.start_control_plane(binary, opts, i)?;
        }
        let generated = control_planes[0].data_dir.join("admin.kubeconfig");
        self.write_kubeconfigs(&generated)
    }

    /// A namespace for `m` with one veth on the underlay bridge.
    fn create_member_netns(&self, m: &MemberState) -> Result<()> {
        self.say(&format!("{} at {}", m.name, m.ip));
        self.add_underlay_netns(&m.name, &m.name, &m.ip)?;
        std::fs::create_dir_all(&m.data_dir)
            .with_context(|| format!("creating {}", m.data_dir.display()))
    }

    fn start_etcd_members(&mut self) -> Result<()> {
        let peers: Vec<String> = self
            .state
            .etcd_members
            .iter()
            .map(|m| format!("{}=http://{}:{ETCD_PEER_PORT}", m.name, m.ip))
            .collect();
        let initial_cluster = peers.join(",");
        let members = self.state.etcd_members.clone();
        // All at once: each waits for a quorum of the others.
        for m in &members {
            let client = format!("http://{}:{ETCD_CLIENT_PORT}", m.ip);
            let peer = format!("http://{}:{ETCD_PEER_PORT}", m.ip);
            let mut cmd = Command::new(crate::ETCD_BIN);
            cmd.args(["--name", &m.name, "--data-dir"])
                .arg(m.data_dir.join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &self.state.name])
                .args(["--logger", "zap", "--log-level", "warn"]);
            self.spawn_member(&cmd, m)?;
        }
        for m in &members {
            self.wait_member(m, Duration::from_secs(30))?;
        }
        Ok(())
    }

    fn start_control_plane(
        &mut self,
        binary: &Path,
        opts: &ClusterOptions,
        i: usize,
    ) -> Result<()> {
        let m = self.state.control_planes[i].clone();
        let sans: Vec<&str> = self
            .state
            .control_planes
            .iter()
            .map(|c| c.ip.as_str())
            .collect();
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--bind-address", &m.ip])
            .args(["--advertise-address", &m.ip])
            .args(["--tls-san", &sans.join(",")])
            .args(["--secure-port", &API_PORT.to_string()])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .args(["--etcd-servers", &self.state.etcd_endpoints().join(",")]);
        for (flag, value) in CONTROL_DEFAULTS {
            let given = opts
                .control_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if !given {
                cmd.args([flag, value]);
            }
        }
        cmd.args(&opts.control_args).env("RUST_LOG", CONTROL_LOG);
        self.spawn_member(&cmd, &m)?;
        self.wait_member(&m, CONTROL_TIMEOUT)
    }

    /// Records `cmd` as `m`'s command line and starts it (see [`MemberState::spawn`]).
    fn spawn_member(&mut self, cmd: &Command, m: &MemberState) -> Result<()> {
        let mut m = m.clone();
        m.command = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        m.env = cmd
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        std::fs::write(&m.log, "").with_context(|| format!("creating {}", m.log.display()))?;
        self.say(&format!("starting {}", m.name));
        let child = m.spawn()?;
        m.process = Some(ProcRecord::of(child.id()));
        self.members.insert(m.name.clone(), child);
        if let Some(s) = self.state.member_mut(&m.name) {
            *s = m;
        }
        self.state.save()
    }

    /// Waits until `m` is ready, failing early when its process exits.
    fn wait_member(&mut self, m: &MemberState, timeout: Duration) -> Result<()> {
        let child = self
            .members
            .get_mut(&m.name)
            .with_context(|| format!("{} was not started", m.name))?;
        wait_member_ready(m, child, timeout)
    }

    /// Stops every member (control planes first) and removes their namespaces.
    pub(super) fn stop_members(&mut self, errors: &mut Vec<String>) {
        let members: Vec<MemberState> = self
            .state
            .control_planes
            .iter()
            .chain(&self.state.etcd_members)
            .cloned()
            .collect();
        for m in &members {
            match self.members.remove(&m.name) {
                Some(mut child) => super::stop_child(&mut child),
                None => {
                    if let Some(rec) = m.process {
                        kill_record(rec, Duration::from_secs(3));
                    }
                }
            }
            if let Some(s) = self.state.member_mut(&m.name) {
                s.process = None;
            }
        }
        for m in &members {
            if let Err(e) = delete_netns(&m.name) {
                errors.push(format!("deleting netns {}: {e:#}", m.name));
            }
        }
    }
}

/// Waits until `m` (run by `child`) is ready, failing early when it exits.
fn wait_member_ready(
    m: &MemberState,
    child: &mut std::process::Child,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                m.name,
                tail(&std::fs::read_to_string(&m.log).unwrap_or_default(), 60)
            );
        }
        if m.ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready in {timeout:?}; its log:\n{}",
                m.name,
                tail(&std::fs::read_to_string(&m.log).unwrap_or_default(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM `child`, up to `grace` for it to end, then SIGKILL; reaped either way.
fn stop_child_within(child: &mut std::process::Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies the shared keys of the first control plane's data dir into `to` (mode kept 0600
/// for keys).
fn share_pki(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for name in SHARED_PKI {
        let (src, dst) = (from.join(name), to.join(name));
        let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        skiff_common::fs::write_atomic(&dst, &bytes, 0o600)
            .with_context(|| format!("writing {}", dst.display()))?;
    }
    Ok(())
}

/// etcd's `/health` on `addr` says true.
fn etcd_healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}
