//! `cargo xtask up` / `down`: a one-node skiff cluster on this host, in the foreground — the
//! control plane on its embedded store, one `skiff-agent` in the host's network namespace with
//! the test image imported — and its removal, down to everything the agent put into the kernel.
//!
//! What `up` changes on the host, and how `down` (or Ctrl-C) undoes it:
//! * processes skiff-control and skiff-agent, and the pods (stopped with their cgroups);
//! * the bridge `skiff0`, its address and routes, the masquerade and `KUBE-*` iptables rules,
//!   the eBPF programs, links and pins (all removed by `skiff-agent cleanup`);
//! * the cgroups `<cgroup2>/skiff/up-<node>/…` and `<v1 mount>/skiff/<node>` (removed);
//! * `net.ipv4.ip_forward`, which the agent turns on, and `net.ipv4.conf.all.send_redirects`,
//!   which it turns off so only `skiff0` stops sending ICMP redirects (both set back);
//! * the state under `--data-dir` stays: the control plane's store keeps its objects, and the
//!   next `up` runs the same Deployments again.
//!
//! `up` records all of it in `<data-dir>/up.json` before it starts anything, so `down` can
//! finish the job when `up` itself was killed.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{cargo, probe, run, show};
use crate::{Workspace, sys};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff";
const STATE_FILE: &str = "up.json";
const API_ADDR: &str = "127.0.0.1:6443";
/// `<cgroup2>/skiff/up-<node>` is the agent's `--cgroup-root`: its eBPF service programs
/// attach there, so only that subtree (the pods, and commands run in its `host` leaf) is
/// affected, never the rest of the host.
const CGROUP_PARENT: &str = "skiff";
/// The agent's pins go to `<BPFFS_PARENT>/up-<node>`.
const BPFFS_PARENT: &str = "/sys/fs/bpf/skiff";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const SEND_REDIRECTS: &str = "/proc/sys/net/ipv4/conf/all/send_redirects";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct UpArgs {
    /// State of the control plane (`<data-dir>/control`: store, certificates, admin
    /// kubeconfig) and of the agent (`<data-dir>/agent`: images, pods), and the logs.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Use these etcd servers (comma-separated URLs) instead of the embedded store.
    #[arg(long)]
    etcd_servers: Option<String>,
    /// The node's name [default: this host's name].
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address [default: the source address of this host's default route].
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// The agent's service proxy: auto (eBPF where the kernel allows, else iptables), ebpf or
    /// iptables.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ebpf", "iptables"])]
    proxy_mode: String,
    /// Skip `cargo xtask setup` (on a machine that is already set up).
    #[arg(long)]
    no_setup: bool,
    /// Skip the build and run the binaries already in the target directory.
    #[arg(long)]
    no_build: bool,
    /// Run the debug build (target/debug) instead of the static release build that
    /// `cargo xtask dist` packages.
    #[arg(long)]
    debug: bool,
}

/// What `up` started and changed, kept in `<data-dir>/up.json` (a small flat JSON object,
/// written and read here without a JSON crate).
#[derive(Debug, Default, Clone, PartialEq)]
struct UpState {
    /// The `cargo xtask up` process.
    xtask_pid: u32,
    control_pid: u32,
    agent_pid: u32,
    node_name: String,
    agent_root: PathBuf,
    cgroup_root: PathBuf,
    /// Where the eBPF socket programs attach: the cgroup2 root, as on any node.
    socket_lb_cgroup: PathBuf,
    bpffs: PathBuf,
    /// The directory of the skiff-control and skiff-agent binaries that run.
    bin_dir: PathBuf,
    /// `net.ipv4.ip_forward` before the agent started ("0" or "1").
    ip_forward: String,
    /// `net.ipv4.conf.all.send_redirects` before the agent started ("0" or "1").
    send_redirects: String,
    /// The iptables (nf_tables) tables that existed before, comma-separated; a table the
    /// agent's rules created is deleted again once it is empty.
    iptables_tables: String,
}

impl UpState {
    fn to_json(&self) -> String {
        let fields = [
            ("xtask_pid", self.xtask_pid.to_string()),
            ("control_pid", self.control_pid.to_string()),
            ("agent_pid", self.agent_pid.to_string()),
            ("node_name", json_string(&self.node_name)),
            (
                "agent_root",
                json_string(&self.agent_root.to_string_lossy()),
            ),
            (
                "cgroup_root",
                json_string(&self.cgroup_root.to_string_lossy()),
            ),
            (
                "socket_lb_cgroup",
                json_string(&self.socket_lb_cgroup.to_string_lossy()),
            ),
            ("bpffs", json_string(&self.bpffs.to_string_lossy())),
            ("bin_dir", json_string(&self.bin_dir.to_string_lossy())),
            ("ip_forward", json_string(&self.ip_forward)),
            ("send_redirects", json_string(&self.send_redirects)),
            ("iptables_tables", json_string(&self.iptables_tables)),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {v}"))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }

    fn from_json(text: &str) -> Result<UpState> {
        let mut s = UpState::default();
        for line in text.lines() {
            let line = line.trim().trim_end_matches(',');
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches('"');
            let value = value.trim();
            let text = || -> Result<String> { json_unquote(value) };
            let number = || -> Result<u32> {
                value
                    .parse()
                    .with_context(|| format!("{key}: {value:?} is not a number"))
            };
            match key {
                "xtask_pid" => s.xtask_pid = number()?,
                "control_pid" => s.control_pid = number()?,
                "agent_pid" => s.agent_pid = number()?,
                "node_name" => s.node_name = text()?,
                "agent_root" => s.agent_root = text()?.into(),
                "cgroup_root" => s.cgroup_root = text()?.into(),
                "socket_lb_cgroup" => s.socket_lb_cgroup = text()?.into(),
                "bpffs" => s.bpffs = text()?.into(),
                "bin_dir" => s.bin_dir = text()?.into(),
                "ip_forward" => s.ip_forward = text()?,
                "send_redirects" => s.send_redirects = text()?,
                "iptables_tables" => s.iptables_tables = text()?,
                _ => {}
            }
        }
        ensure!(
            !s.node_name.is_empty() && !s.agent_root.as_os_str().is_empty(),
            "incomplete state"
        );
        Ok(s)
    }

    fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, self.to_json())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    fn load(path: &Path) -> Result<UpState> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        UpState::from_json(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Paths are the only strings here; they may hold quotes or backslashes but no control
/// characters worth keeping.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_unquote(value: &str) -> Result<String> {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .with_context(|| format!("{value:?} is not a string"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .with_context(|| format!("bad escape \\u{hex}"))?;
                out.push(code);
            }
            Some(other) => out.push(other),
            None => bail!("{value:?} ends in a backslash"),
        }
    }
    Ok(out)
}

pub fn up(ws: &Workspace, args: &UpArgs) -> Result<()> {
    ensure!(
        sys::is_root(),
        "`cargo xtask up` runs a node agent on this host (bridge, routes, cgroups, eBPF): run it as root"
    );
    let data_dir = canonical_dir(&args.data_dir)?;
    let data_dir = data_dir.as_path();
    let state_path = data_dir.join(STATE_FILE);
    if state_path.exists() {
        let old = UpState::load(&state_path)?;
        if process_is(old.xtask_pid, "xtask") {
            bail!(
                "`cargo xtask up` already runs (pid {}); stop it with Ctrl-C there or `cargo xtask down`",
                old.xtask_pid
            );
        }
        println!("a previous `cargo xtask up` did not finish; removing what it left first");
        teardown(&old, &state_path)?;
    }
    if api_answers() {
        bail!("something already listens on {API_ADDR}; stop it first");
    }
    if !args.no_setup {
        // A fresh machine lacks protoc (the etcd client's build needs it) and the rest.
        crate::setup::setup(ws, false)?;
    }
    if !args.no_build {
        build(ws, args.debug)?;
    }
    let image = test_image(ws)?;
    let node_name = match &args.node_name {
        Some(n) => {
            ensure!(
                valid_node_name(n),
                "--node-name {n:?}: lowercase letters, digits, '-' and '.' only"
            );
            n.clone()
        }
        None => hostname()?,
    };
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => default_route_source()?,
    };
    let cgroup2 = cgroup2_mount()?;
    let control_dir = data_dir.join("control");
    let agent_root = data_dir.join("agent");
    std::fs::create_dir_all(&control_dir)
        .with_context(|| format!("creating {}", control_dir.display()))?;
    let mut state = UpState {
        xtask_pid: std::process::id(),
        node_name: node_name.clone(),
        agent_root: agent_root.clone(),
        cgroup_root: cgroup2.join(CGROUP_PARENT).join(format!("up-{node_name}")),
        socket_lb_cgroup: cgroup2.clone(),
        bin_dir: bin_dir(ws, args.debug),
        bpffs: Path::new(BPFFS_PARENT).join(format!("up-{node_name}")),
        ip_forward: read_sysctl(IP_FORWARD)?,
        send_redirects: read_sysctl(SEND_REDIRECTS)?,
        iptables_tables: nft_iptables_tables()?.join(","),
        ..UpState::default()
    };
    state.save(&state_path)?;

    // From here on Ctrl-C and SIGTERM are ours: they end the loop below, and the teardown
    // runs whatever happened before.
    sys::catch_int_and_term();
    let mut procs = Procs::default();
    let result = bring_up(
        args,
        data_dir,
        &mut state,
        &state_path,
        &mut procs,
        &image,
        node_ip,
    )
    .and_then(|()| supervise(&mut procs));
    println!("\nstopping: the agent, the pods and everything they put into the kernel");
    procs.stop();
    let cleaned = teardown(&state, &state_path);
    match (result, cleaned) {
        (Ok(()), Ok(())) => {
            println!("skiff stopped; the host is as it was. Bye.");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("and the cleanup failed too: {c:#}"))),
    }
}

/// The children of `up`, stopped (SIGTERM, then SIGKILL) by [`Procs::stop`].
#[derive(Default)]
struct Procs {
    control: Option<Child>,
    agent: Option<Child>,
}

impl Procs {
    fn stop(&mut self) {
        // The agent first: it leaves its pods running; `skiff-agent cleanup` stops them.
        for child in [self.agent.take(), self.control.take()]
            .into_iter()
            .flatten()
        {
            stop_child(child);
        }
    }
}

fn stop_child(mut child: Child) {
    let _ = sys::send_signal(child.id(), sys::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[allow(clippy::too_many_arguments)]
/// The binaries `up` runs: the static release build of `cargo xtask dist`, or with `--debug`
/// the workspace's debug build. Either way the test image tool comes from the debug build.
fn build(ws: &Workspace, debug: bool) -> Result<()> {
    if debug {
        // The same build as `cargo xtask test` (one feature set, so neither rebuilds the
        // other's dependencies).
        return run(cargo()
            .current_dir(&ws.root)
            .args(["build", "--workspace", "--bins"]));
    }
    run(cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "--target",
        crate::dist::STATIC_TARGET,
        "-p",
        "skiff-control",
        "-p",
        "skiff-agent",
        "--bins",
    ]))?;
    run(cargo().current_dir(&ws.root).args([
        "build",
        "-p",
        "skiff-tests",
        "--bin",
        "skiff-cluster",
    ]))
}

fn bin_dir(ws: &Workspace, debug: bool) -> PathBuf {
    if debug {
        ws.target.join("debug")
    } else {
        ws.target.join(crate::dist::STATIC_TARGET).join("release")
    }
}

fn bring_up(
    args: &UpArgs,
    data_dir: &Path,
    state: &mut UpState,
    state_path: &Path,
    procs: &mut Procs,
    image: &Path,
    node_ip: Ipv4Addr,
) -> Result<()> {
    let control_dir = data_dir.join("control");
    let kubeconfig = control_dir.join("admin.kubeconfig");
    let control_log = data_dir.join("control.log");
    let agent_log = data_dir.join("agent.log");
    let start = Instant::now();

    let mut control = Command::new(state.bin_dir.join("skiff-control"));
    control.arg("--data-dir").arg(&control_dir);
    if let Some(servers) = &args.etcd_servers {
        control.arg("--etcd-servers").arg(servers);
    }
    let child = spawn_logged(&mut control, &control_log)?;
    state.control_pid = child.id();
    procs.control = Some(child);
    state.save(state_path)?;
    wait_until("the API server to answer", READY_TIMEOUT, procs, || {
        Ok(kubeconfig.exists() && api_answers())
    })?;

    // The image pods can run (there is no registry to pull from).
    run(Command::new(state.bin_dir.join("skiff-agent"))
        .arg("image")
        .arg("--root-dir")
        .arg(&state.agent_root)
        .arg("import")
        .arg(image))?;

    std::fs::create_dir_all(&state.cgroup_root)
        .with_context(|| format!("creating cgroup {}", state.cgroup_root.display()))?;
    // The node joins as nodes do: a bootstrap token, then a certificate of its own.
    let bootstrap = data_dir.join("bootstrap.kubeconfig");
    write_bootstrap_kubeconfig(&state.bin_dir, &control_dir, &bootstrap, procs)?;
    let mut agent = Command::new(state.bin_dir.join("skiff-agent"));
    agent
        .arg("run")
        .arg("--bootstrap-kubeconfig")
        .arg(&bootstrap)
        .arg("--kubeconfig")
        .arg(state.agent_root.join("kubelet.kubeconfig"));
    node_args(&mut agent, state)
        .args(["--node-ip", &node_ip.to_string()])
        .args(["--proxy-mode", &args.proxy_mode])
        .args(["--cluster-dns", "10.96.0.10"]);
    let child = spawn_logged(&mut agent, &agent_log)?;
    state.agent_pid = child.id();
    procs.agent = Some(child);
    state.save(state_path)?;
    let node = state.node_name.clone();
    wait_until(
        &format!("node {node} to be Ready"),
        READY_TIMEOUT,
        procs,
        || Ok(node_ready(&kubeconfig, &node)),
    )?;
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let mode = match args.proxy_mode.as_str() {
        "auto" if log.contains("proxy mode auto: using eBPF") => "auto: eBPF",
        "auto" if log.contains("using iptables") => "auto: iptables",
        other => other,
    };
    print_next_steps(
        state,
        &kubeconfig,
        &control_log,
        &agent_log,
        mode,
        node_ip,
        start.elapsed(),
    );
    Ok(())
}

/// A bootstrap token from `skiff-control token create` (retried while the control plane
/// creates `kube-system`), written into a kubeconfig with `kubectl config`, as kubeadm's
/// TLS-bootstrapping guide does.
fn write_bootstrap_kubeconfig(
    bin_dir: &Path,
    control_dir: &Path,
    path: &Path,
    procs: &mut Procs,
) -> Result<()> {
    let mut token = String::new();
    wait_until("a bootstrap token", READY_TIMEOUT, procs, || {
        let out = probe(
            Command::new(bin_dir.join("skiff-control"))
                .args(["token", "create", "--ttl", "1h"])
                .args(["--description", "the node of cargo xtask up"])
                .arg("--data-dir")
                .arg(control_dir),
        );
        token = out.unwrap_or_default().trim().to_string();
        Ok(!token.is_empty())
    })?;
    let _ = std::fs::remove_file(path);
    let ca = control_dir.join("ca.crt");
    let steps: [Vec<String>; 4] = [
        vec![
            "set-cluster".into(),
            "skiff".into(),
            format!("--server=https://{API_ADDR}"),
            format!("--certificate-authority={}", ca.display()),
            "--embed-certs=true".into(),
        ],
        // Not through `run`: it would print the token.
        vec![
            "set-credentials".into(),
            "kubelet-bootstrap".into(),
            format!("--token={token}"),
        ],
        vec![
            "set-context".into(),
            "bootstrap".into(),
            "--cluster=skiff".into(),
            "--user=kubelet-bootstrap".into(),
        ],
        vec!["use-context".into(), "bootstrap".into()],
    ];
    for step in steps {
        probe(
            Command::new("kubectl")
                .arg("config")
                .arg(format!("--kubeconfig={}", path.display()))
                .args(&step),
        )
        .with_context(|| format!("`kubectl config {}` failed", step[0]))?;
    }
    Ok(())
}

/// Start `cmd` in a process group of its own (a terminal Ctrl-C reaches only xtask, which
/// stops the children in order), its output appended to `log`.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .env("NO_COLOR", "1")
        .process_group(0);
    println!("$ {}   # log: {}", show(cmd), log.display());
    cmd.spawn()
        .with_context(|| format!("could not start `{}`", show(cmd)))
}

/// Poll `ready` until it holds; fails when a child exits or a stop is requested.
fn wait_until(
    what: &str,
    timeout: Duration,
    procs: &mut Procs,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        check_children(procs)?;
        if sys::received() > 0 {
            bail!("interrupted while waiting for {what}");
        }
        if ready()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(POLL);
    }
}

fn check_children(procs: &mut Procs) -> Result<()> {
    for (name, child) in [
        ("skiff-control", &mut procs.control),
        ("skiff-agent", &mut procs.agent),
    ] {
        if let Some(c) = child
            && let Some(status) = c.try_wait()?
        {
            *child = None;
            bail!("{name} exited on its own ({status}); see its log");
        }
    }
    Ok(())
}

/// Wait for Ctrl-C, SIGTERM (`cargo xtask down`) or a child that ends.
fn supervise(procs: &mut Procs) -> Result<()> {
    loop {
        check_children(procs)?;
        if sys::received() > 0 {
            return Ok(());
        }
        sleep(POLL);
    }
}

/// Remove everything `up` put on the host (processes already stopped or not): pods, kernel
/// state, cgroups; set ip_forward back; forget the state file.
fn teardown(state: &UpState, state_path: &Path) -> Result<()> {
    let mut errors = Vec::new();
    for (pid, name) in [
        (state.agent_pid, "skiff-agent"),
        (state.control_pid, "skiff-control"),
    ] {
        if let Err(e) = stop_pid(pid, name) {
            errors.push(format!("{e:#}"));
        }
    }
    let agent = state.bin_dir.join("skiff-agent");
    if agent.exists() {
        let mut cleanup = Command::new(agent);
        cleanup.arg("cleanup");
        node_args(&mut cleanup, state);
        if let Err(e) = run(&mut cleanup) {
            errors.push(format!("{e:#}"));
        }
    } else {
        errors.push(format!(
            "{} is missing: cannot run `skiff-agent cleanup` (build it, then `cargo xtask down`)",
            agent.display()
        ));
    }
    if let Err(e) = remove_cgroup(&state.cgroup_root) {
        errors.push(format!("{e:#}"));
    }
    if let Some(parent) = state.cgroup_root.parent() {
        // `<cgroup2>/skiff` is shared with test clusters: only when nothing else is in it.
        let _ = std::fs::remove_dir(parent);
    }
    if let Some(parent) = state.bpffs.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    for (path, was) in [
        (IP_FORWARD, &state.ip_forward),
        (SEND_REDIRECTS, &state.send_redirects),
    ] {
        if !matches!(was.as_str(), "0" | "1") {
            continue;
        }
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.trim() != was {
            match std::fs::write(path, was) {
                Ok(()) => println!("{path} set back to {was}"),
                Err(e) => errors.push(format!("restoring {path}: {e}")),
            }
        }
    }
    if let Err(e) = remove_new_iptables_tables(state) {
        errors.push(format!("{e:#}"));
    }
    if !errors.is_empty() {
        bail!("the cleanup left things behind:\n  {}", errors.join("\n  "));
    }
    let _ = std::fs::remove_file(state_path);
    Ok(())
}

/// The flags that name the node's state to `skiff-agent run` and `cleanup` alike.
fn node_args<'a>(cmd: &'a mut Command, state: &UpState) -> &'a mut Command {
    cmd.args(["--node-name", &state.node_name])
        .arg("--root-dir")
        .arg(&state.agent_root)
        .arg("--cgroup-root")
        .arg(&state.cgroup_root)
        .arg("--socket-lb-cgroup")
        .arg(&state.socket_lb_cgroup)
        .arg("--bpffs")
        .arg(&state.bpffs)
}

fn read_sysctl(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

/// The iptables tables, when `iptables` is the nf_tables variant (Debian's default); empty for
/// the legacy one, whose tables cannot be deleted and need no care here.
fn nft_iptables_tables() -> Result<Vec<String>> {
    let version = probe(Command::new("iptables").arg("-V")).unwrap_or_default();
    if !version.contains("nf_tables") {
        return Ok(Vec::new());
    }
    let save = probe(&mut Command::new("iptables-save")).context("`iptables-save` failed")?;
    Ok(save
        .lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(str::to_string)
        .collect())
}

/// Delete the iptables tables that appeared while `up` ran (the agent's masquerade rule lives
/// in `nat`) once nothing is left in them: no rule, no chain but the built-in ones.
fn remove_new_iptables_tables(state: &UpState) -> Result<()> {
    const BUILTIN: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    let before: Vec<&str> = state.iptables_tables.split(',').collect();
    for table in nft_iptables_tables()? {
        if before.contains(&table.as_str()) {
            continue;
        }
        let save = probe(Command::new("iptables-save").args(["-t", &table])).unwrap_or_default();
        let empty = save.lines().all(|l| {
            !l.starts_with("-A")
                && l.strip_prefix(':').is_none_or(|chain| {
                    BUILTIN.contains(&chain.split_whitespace().next().unwrap_or(""))
                })
        });
        if !empty {
            println!(
                "note: iptables table {table} was created meanwhile and holds rules; left as is"
            );
            continue;
        }
        if probe(Command::new("nft").arg("--version")).is_none() {
            println!(
                "note: the agent left the empty iptables table {table}; `nft delete table ip {table}` \
                 removes it (`cargo xtask setup` installs nft)"
            );
            continue;
        }
        run(Command::new("nft").args(["delete", "table", "ip", &table]))?;
    }
    Ok(())
}

/// `dir`, created if need be, as an absolute path without `..` or symlinks: the agent finds
/// its mounts under it by their path in /proc/self/mountinfo.
fn canonical_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create {} (root?)", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))
}

/// A cgroup directory `up` created: gone once empty (the agent's cleanup killed the pods).
fn remove_cgroup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                bail!(
                    "removing cgroup {}: {e} (processes still in it: {})",
                    dir.display(),
                    procs.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
            Err(_) => sleep(POLL),
        }
    }
}

/// SIGTERM to `pid` if it is still the `name` process `up` started, then SIGKILL after
/// [`STOP_TIMEOUT`].
fn stop_pid(pid: u32, name: &str) -> Result<()> {
    if pid == 0 || !process_is(pid, name) {
        return Ok(());
    }
    sys::send_signal(pid, sys::SIGTERM)?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while process_is(pid, name) {
        if Instant::now() > deadline {
            sys::send_signal(pid, sys::SIGKILL)?;
            sleep(Duration::from_millis(500));
            ensure!(
                !process_is(pid, name),
                "{name} (pid {pid}) survived SIGKILL"
            );
            break;
        }
        sleep(POLL);
    }
    Ok(())
}

/// `cargo xtask down`: stop a running `cargo xtask up` (it cleans up as on Ctrl-C), or clean
/// up after one that was killed.
pub fn down(data_dir: &Path) -> Result<()> {
    ensure!(sys::is_root(), "`cargo xtask down` needs root, as `up` did");
    let state_path = std::path::absolute(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .join(STATE_FILE);
    if !state_path.exists() {
        println!("nothing to stop: no {}", state_path.display());
        return Ok(());
    }
    let state = UpState::load(&state_path)?;
    if process_is(state.xtask_pid, "xtask") {
        println!(
            "stopping `cargo xtask up` (pid {}); it removes what it set up",
            state.xtask_pid
        );
        sys::send_signal(state.xtask_pid, sys::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while process_is(state.xtask_pid, "xtask") {
            if Instant::now() > deadline {
                bail!(
                    "`cargo xtask up` (pid {}) still runs 120 s after SIGTERM",
                    state.xtask_pid
                );
            }
            sleep(POLL);
        }
        if !state_path.exists() {
            println!("stopped");
            return Ok(());
        }
        println!("`cargo xtask up` ended without finishing its cleanup; finishing it");
    } else {
        println!("`cargo xtask up` is gone; removing what it left");
    }
    teardown(&state, &state_path)?;
    println!("stopped; the host is as it was");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_next_steps(
    state: &UpState,
    kubeconfig: &Path,
    control_log: &Path,
    agent_log: &Path,
    mode: &str,
    node_ip: Ipv4Addr,
    took: Duration,
) {
    let kc = kubeconfig.display();
    println!(
        "\nskiff is up (in {took:.1?}): a one-node cluster on this host.\n\
         \x20 API server  https://{API_ADDR}\n\
         \x20 node        {node} ({node_ip}), service proxy: {mode}\n\
         \x20 image       skiff.test/busybox:1 (busybox; the only image the node has)\n\
         \x20 kubeconfig  {kc}\n\
         \x20 logs        {cl}, {al}\n\n\
         Try, in another terminal (as root):\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 kubectl get nodes -o wide\n\
         \x20 kubectl create deployment kubia --image=skiff.test/busybox:1 --replicas=3 -- \\\n\
         \x20     sh -c 'hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp'\n\
         \x20 kubectl get events -w          # Ctrl-C when the pods run\n\
         \x20 kubectl expose deployment kubia --port=80 --target-port=8080\n\
         \x20 IP=$(kubectl get svc kubia -o jsonpath='{{.spec.clusterIP}}')\n\
         \x20 # Every process on this host reaches Services (each request may reach another pod):\n\
         \x20 for i in 1 2 3 4 5 6; do curl -s http://$IP/; done\n\n\
         Ctrl-C here (or `cargo xtask down`) stops it and removes what it put into the kernel.\n",
        node = state.node_name,
        cl = control_log.display(),
        al = agent_log.display(),
    );
}

fn test_image(ws: &Workspace) -> Result<PathBuf> {
    let mut cmd = Command::new(ws.target.join("debug/skiff-cluster"));
    cmd.arg("test-image").env("SKIFF_TARGET_DIR", &ws.target);
    let out = probe(&mut cmd).with_context(|| format!("`{}` failed", show(&cmd)))?;
    Ok(PathBuf::from(out.trim()))
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname")?
        .trim()
        .to_lowercase();
    ensure!(
        valid_node_name(&name),
        "the hostname {name:?} is not a valid node name; pass --node-name"
    );
    Ok(name)
}

/// A DNS-1123 subdomain (it also names the node's cgroup and bpffs directories).
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..")
}

/// The source address the kernel picks for the default route (`ip route get`; no packet is
/// sent).
fn default_route_source() -> Result<Ipv4Addr> {
    let out = probe(Command::new("ip").args(["-4", "route", "get", "192.0.2.255"]))
        .context("`ip route get` failed (no default route?); pass --node-ip")?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words
                .next()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("no address after src in {out:?}"));
        }
    }
    bail!("`ip route get` names no source address ({out:?}); pass --node-ip")
}

fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 hierarchy is mounted (the agent needs one)")
}

fn node_ready(kubeconfig: &Path, node: &str) -> bool {
    probe(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]),
    )
    .is_some_and(|s| s.trim() == "True")
}

fn api_answers() -> bool {
    let addr: SocketAddr = API_ADDR.parse().expect("valid address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Whether `pid` is a live (not zombie) process whose command name is `name`.
fn process_is(pid: u32, name: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    // comm is cut to 15 bytes.
    let want: String = name.chars().take(15).collect();
    comm.trim() == want && !matches!(state, None | Some('Z' | 'X'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let s = UpState {
            xtask_pid: 12,
            control_pid: 34,
            agent_pid: 0,
            node_name: "vm".into(),
            agent_root: "/var/lib/skiff/agent".into(),
            cgroup_root: "/sys/fs/cgroup/unified/skiff/up-vm".into(),
            socket_lb_cgroup: "/sys/fs/cgroup/unified".into(),
            bin_dir: "/work/target/x86_64-unknown-linux-musl/release".into(),
            bpffs: "/sys/fs/bpf/skiff/a \"quoted\\\" dir".into(),
            ip_forward: "0".into(),
            send_redirects: "1".into(),
            iptables_tables: "raw,filter".into(),
        };
        assert_eq!(UpState::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn node_names() {
        assert!(valid_node_name("vm"));
        assert!(valid_node_name("node-1.example"));
        for bad in ["", "Vm", "a/b", "../x", "-a", "a.", "a b", "a..b"] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn bad_state_is_an_error() {
        assert!(UpState::from_json("{}").is_err());
        assert!(UpState::from_json("{\n  \"xtask_pid\": \"x\"\n}").is_err());
        assert!(UpState::from_json("{\n  \"node_name\": \"unterminated\n}").is_err());
    }
}
