//! `latency-bench`: request latency through a Service's ClusterIP against the backend's pod IP,
//! per proxy mode and number of Services (the method of ../shared/BENCH-NOTES.md).
//!
//! For each proxy mode a 2-node cluster from the harness: a client pod on node A, two server
//! pods on node B behind the measured Service. For each count N, N−1 filler Services (no
//! selector, two ready endpoints each in a hand-made EndpointSlice pointing at unused pod
//! addresses) are added, then the client times requests to the first server's pod IP (the
//! baseline) and to the ClusterIP, in new-connection and keep-alive mode, interleaved in
//! chunks over rounds with the order rotating each round.
//!
//! The client and the servers are this binary (`client` / `server` subcommands) started from the
//! host into the pod: the pod's cgroup (below the node's `--cgroup-root`, where the eBPF socket
//! programs are attached) and its network namespace, plus its UTS namespace for the servers, so
//! each server names itself by the pod's hostname. They keep the host's mount namespace, so no
//! static build or volume is needed. Run through `cargo xtask bench`, which builds release
//! binaries and writes docs/benchmarks.md and docs/benchmarks-latency.svg.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiff_tests::cluster::{Cluster, ClusterOptions, cgroup2_mount};

/// Where every server listens (inside its pod).
const SERVER_PORT: u16 = 7000;
/// The measured Service's port.
const SERVICE_PORT: u16 = 80;
/// The agents' metrics endpoint, on every node's address (the harness's underlay reaches it).
const METRICS_PORT: u16 = 10249;
/// The measured Service's ClusterIP: the greatest address of 10.96.0.0/12 as text, so that a
/// whole rewrite of `KUBE-SERVICES` (rules sorted by their text) places it last, and so do the
/// rule-by-rule inserts of later fillers (at the top): the honest worst case of the notes.
const MEASURED_VIP: &str = "10.99.99.99";
const REQUEST: &[u8] = b"ping\n";
/// Fillers' endpoints: addresses from 10.244.128.0/17, which no node's podCIDR uses here.
const FILLER_BASE: u32 = u32::from_be_bytes([10, 244, 128, 0]);
const MAX_SERVICES: usize = 16_000;

#[derive(Parser)]
#[command(about = "Service latency benchmark: ClusterIP vs pod IP per proxy mode and N")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Proxy modes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "ebpf,iptables")]
    modes: Vec<String>,
    /// Numbers of Services (the measured one included), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,5000,10000")]
    services: Vec<usize>,
    /// Requests per target and connection kind at each point.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Rounds the requests are spread over (default: chunks of 1,000 requests).
    #[arg(long)]
    rounds: Option<usize>,
    /// The CPU the client is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Concurrent API requests while creating filler Services and slices.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Markdown report (the SVG plot is written next to it as benchmarks-latency.svg).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

#[derive(Subcommand)]
enum Role {
    /// Serve `<hostname>\n` for every line received (started inside a server pod).
    Server {
        #[arg(long, default_value_t = SERVER_PORT)]
        port: u16,
        /// Threads blocked in accept(2), each serving one connection at a time.
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// Time requests to the targets and print the summary as JSON (started inside the client pod).
    Client(ClientArgs),
}

#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// `NAME=IP:PORT=BACKEND[,BACKEND…]`: a target and the backends allowed to answer it.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Requests per target and kind.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Untimed requests per target and kind before the first round.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    #[arg(long)]
    cpu: Option<usize>,
    /// Only new-connection requests (a reachability check).
    #[arg(long)]
    new_only: bool,
    /// Print a progress line per round on stderr.
    #[arg(long)]
    progress: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.role {
        Some(Role::Server { port, threads }) => server(port, threads),
        Some(Role::Client(args)) => {
            let report = client(&args)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        None => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(orchestrate(cli.run)),
    }
}

// ----- server -----

fn server(port: u16, threads: usize) -> Result<()> {
    let host = nix::unistd::gethostname()?.to_string_lossy().into_owned();
    let reply: &'static [u8] = format!("{host}\n").into_bytes().leak();
    let listener = TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("listening on port {port}"))?;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let l = listener.try_clone()?;
            Ok(std::thread::spawn(move || {
                loop {
                    if let Ok((s, _)) = l.accept() {
                        serve(s, reply);
                    }
                }
            }))
        })
        .collect::<Result<_>>()?;
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// One reply per newline received, until the peer closes or resets.
fn serve(mut s: TcpStream, reply: &[u8]) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for _ in buf[..n].iter().filter(|b| **b == b'\n') {
            if s.write_all(reply).is_err() {
                return;
            }
        }
    }
}

// ----- client -----

#[derive(Clone, Debug)]
struct Target {
    name: String,
    addr: SocketAddrV4,
    backends: Vec<String>,
}

fn parse_target(s: &str) -> Result<Target> {
    let mut parts = s.splitn(3, '=');
    let (Some(name), Some(addr), Some(backends)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("target {s:?}: expected NAME=IP:PORT=BACKEND[,BACKEND…]");
    };
    Ok(Target {
        name: name.to_string(),
        addr: addr
            .parse()
            .with_context(|| format!("target {s:?}: address {addr:?}"))?,
        backends: backends.split(',').map(str::to_string).collect(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    NewConnection,
    KeepAlive,
}

/// The pooled figures of one target and kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Summary {
    target: String,
    kind: Kind,
    requests: usize,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    mean_us: f64,
    /// Client CPU (user + system) per request, µs.
    cpu_us: f64,
    /// Replies per backend name.
    replies: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClientReport {
    cpu: usize,
    summaries: Vec<Summary>,
}

struct Samples {
    latencies_ns: Vec<u64>,
    cpu_ns: u64,
    replies: BTreeMap<String, usize>,
}

fn cpu_time_ns() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0;
    };
    let ns =
        |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000_000 + t.tv_usec() as u64 * 1000;
    ns(u.user_time()) + ns(u.system_time())
}

fn pin_to_cpu(cpu: Option<usize>) -> Result<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu.unwrap_or(n - 1);
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the client to CPU {cpu}"))?;
    Ok(cpu)
}

/// Read one reply line (the backend's name) from `s` into `buf`.
fn read_reply<'a>(s: &mut TcpStream, buf: &'a mut [u8; 256]) -> Result<&'a str> {
    let mut len = 0;
    loop {
        let n = s.read(&mut buf[len..])?;
        ensure!(n > 0, "connection closed before a full reply");
        len += n;
        if buf[len - 1] == b'\n' {
            break;
        }
        ensure!(len < buf.len(), "reply longer than {} bytes", buf.len());
    }
    std::str::from_utf8(&buf[..len - 1]).context("reply is not UTF-8")
}

fn count_reply(t: &Target, reply: &str, replies: &mut BTreeMap<String, usize>) -> Result<()> {
    ensure!(
        t.backends.iter().any(|b| b == reply),
        "{}: reply {reply:?} is none of the expected backends {:?}",
        t.name,
        t.backends
    );
    match replies.get_mut(reply) {
        Some(n) => *n += 1,
        None => {
            replies.insert(reply.to_string(), 1);
        }
    }
    Ok(())
}

/// Close with RST (SO_LINGER 0), so tens of thousands of connections leave no TIME_WAIT.
fn close_with_reset(s: TcpStream) -> Result<()> {
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    drop(s);
    Ok(())
}

/// `n` requests, each on a new connection: connect → write → read → close with RST.
fn new_connection_chunk(t: &Target, n: usize, out: &mut Samples) -> Result<()> {
    let mut buf = [0u8; 256];
    let cpu0 = cpu_time_ns();
    for _ in 0..n {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&t.addr.into(), Duration::from_secs(2))
            .with_context(|| format!("{}: connecting to {}", t.name, t.addr))?;
        s.write_all(REQUEST)?;
        let reply = read_reply(&mut s, &mut buf).with_context(|| t.name.clone())?;
        let reply_len = reply.len();
        close_with_reset(s)?;
        out.latencies_ns.push(start.elapsed().as_nanos() as u64);
        let reply = std::str::from_utf8(&buf[..reply_len]).unwrap_or_default();
        count_reply(t, reply, &mut out.replies)?;
    }
    out.cpu_ns += cpu_time_ns() - cpu0;
    Ok(())
}

/// `n` round trips on one connection (opened and closed outside the timing).
fn keep_alive_chunk(t: &Target, n: usize, out: &mut Samples) -> Result<()> {
    let mut buf = [0u8; 256];
    let mut s = TcpStream::connect_timeout(&t.addr.into(), Duration::from_secs(2))
        .with_context(|| format!("{}: connecting to {}", t.name, t.addr))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let cpu0 = cpu_time_ns();
    for _ in 0..n {
        let start = Instant::now();
        s.write_all(REQUEST)?;
        let reply = read_reply(&mut s, &mut buf).with_context(|| t.name.clone())?;
        let took = start.elapsed().as_nanos() as u64;
        out.latencies_ns.push(took);
        count_reply(t, reply, &mut out.replies)?;
    }
    out.cpu_ns += cpu_time_ns() - cpu0;
    close_with_reset(s)
}

fn run_chunk(t: &Target, kind: Kind, n: usize, out: &mut Samples) -> Result<()> {
    match kind {
        Kind::NewConnection => new_connection_chunk(t, n, out),
        Kind::KeepAlive => keep_alive_chunk(t, n, out),
    }
}

fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn client(args: &ClientArgs) -> Result<ClientReport> {
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<_>>()?;
    let cpu = pin_to_cpu(args.cpu)?;
    let kinds: &[Kind] = if args.new_only {
        &[Kind::NewConnection]
    } else {
        &[Kind::NewConnection, Kind::KeepAlive]
    };
    let cells: Vec<(usize, Kind)> = kinds
        .iter()
        .flat_map(|k| (0..targets.len()).map(move |t| (t, *k)))
        .collect();
    let mut samples: Vec<Samples> = cells
        .iter()
        .map(|_| Samples {
            latencies_ns: Vec::with_capacity(args.requests),
            cpu_ns: 0,
            replies: BTreeMap::new(),
        })
        .collect();
    for &(t, kind) in &cells {
        let mut scratch = Samples {
            latencies_ns: Vec::new(),
            cpu_ns: 0,
            replies: BTreeMap::new(),
        };
        run_chunk(&targets[t], kind, args.warmup, &mut scratch)?;
    }
    let rounds = args.rounds.clamp(1, args.requests.max(1));
    for round in 0..rounds {
        // Spread the requests evenly; the first rounds take the remainder.
        let n = args.requests / rounds + usize::from(round < args.requests % rounds);
        for i in 0..cells.len() {
            let c = (i + round) % cells.len();
            let (t, kind) = cells[c];
            run_chunk(&targets[t], kind, n, &mut samples[c])?;
        }
        if args.progress {
            eprintln!("    round {}/{rounds} done", round + 1);
        }
    }
    let summaries = cells
        .iter()
        .zip(samples)
        .map(|(&(t, kind), mut s)| {
            s.latencies_ns.sort_unstable();
            let requests = s.latencies_ns.len();
            let mean = s.latencies_ns.iter().sum::<u64>() as f64 / requests.max(1) as f64;
            Summary {
                target: targets[t].name.clone(),
                kind,
                requests,
                p50_us: percentile_us(&s.latencies_ns, 0.50),
                p90_us: percentile_us(&s.latencies_ns, 0.90),
                p99_us: percentile_us(&s.latencies_ns, 0.99),
                mean_us: mean / 1000.0,
                cpu_us: s.cpu_ns as f64 / 1000.0 / requests.max(1) as f64,
                replies: s.replies,
            }
        })
        .collect();
    Ok(ClientReport { cpu, summaries })
}

// ----- entering a pod -----

/// What a process needs to join a running pod: its network and UTS namespaces and the cgroup
/// of its container.
struct PodEntry {
    net: File,
    uts: File,
    cgroup_procs: File,
}

/// Open the namespaces and cgroup of `pod`'s first container (found by its pid in the agent's
/// state under the node's root dir).
fn pod_entry(c: &Cluster, pod: &str) -> Result<PodEntry> {
    let (_, pid) = c.container_pid(pod)?;
    let open = |what: &str| {
        File::open(format!("/proc/{pid}/ns/{what}"))
            .with_context(|| format!("{pod}: container process {pid}: {what} namespace"))
    };
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("{pod}: container process {pid}"))?;
    let rel = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("{pod}: container process {pid} has no cgroup v2"))?;
    let procs = cgroup2_mount()?
        .join(rel.trim_start_matches('/'))
        .join("cgroup.procs");
    Ok(PodEntry {
        net: open("net")?,
        uts: open("uts")?,
        cgroup_procs: OpenOptions::new()
            .write(true)
            .open(&procs)
            .with_context(|| format!("opening {}", procs.display()))?,
    })
}

/// This binary with `args`, started in `pod`'s cgroup, network and UTS namespaces.
fn command_in_pod(c: &Cluster, pod: &str, args: &[String]) -> Result<Command> {
    let entry = pod_entry(c, pod)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args);
    // SAFETY: only async-signal-safe system calls (write, setns) on descriptors opened before
    // the fork; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process itself.
            nix::unistd::write(&entry.cgroup_procs, b"0")?;
            nix::sched::setns(&entry.net, CloneFlags::CLONE_NEWNET)?;
            nix::sched::setns(&entry.uts, CloneFlags::CLONE_NEWUTS)?;
            Ok(())
        });
    }
    Ok(cmd)
}

// ----- orchestration -----

/// Everything measured at one (mode, N).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Point {
    mode: String,
    services: usize,
    /// Filler Services and slices created for this point, and how long that took.
    created: usize,
    create_s: f64,
    /// From the last filler write until node A's proxy reported every Service programmed.
    sync_settle_ms: Option<f64>,
    /// Node A's last dataplane sync at that moment (agent metric).
    last_sync_ms: Option<f64>,
    /// iptables mode: the measured Service's rule position in nat `KUBE-SERVICES` (1-based)
    /// and the chain's length.
    rule_position: Option<(usize, usize)>,
    report: ClientReport,
}

impl Point {
    fn summary(&self, target: &str, kind: Kind) -> Option<&Summary> {
        self.report
            .summaries
            .iter()
            .find(|s| s.target == target && s.kind == kind)
    }
}

/// The agent's metrics on `ip` as (name with labels → value).
async fn metrics(ip: &str) -> Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, METRICS_PORT)),
    )
    .await
    .context("timed out")??;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .context("timed out")??;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn pod_yaml(name: &str, node: &str, role: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {role}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: skiff.test/busybox:1
    ports: [{{name: lat, containerPort: {SERVER_PORT}}}]
    command: ["sleep", "1000000"]
"#
    )
}

fn filler_ip(i: usize, k: usize) -> String {
    std::net::Ipv4Addr::from(FILLER_BASE + 2 * i as u32 + k as u32).to_string()
}

/// Create fillers `from..to` (Service `fill-<i>` and its EndpointSlice) with `parallel`
/// concurrent requests.
async fn create_fillers(
    client: &kube::Client,
    from: usize,
    to: usize,
    parallel: usize,
) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let total = to - from;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    futures::stream::iter(from..to)
        .map(|i| {
            let (services, slices, done) = (&services, &slices, &done);
            async move {
                let name = format!("fill-{i:05}");
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"bench": "filler"}},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080,
                        "protocol": "TCP"}]}}))?;
                services
                    .create(&PostParams::default(), &svc)
                    .await
                    .with_context(|| format!("creating Service {name}"))?;
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-bench"), "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "latency-bench.skiff.test"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": [filler_ip(i, 0)], "conditions": {"ready": true}},
                        {"addresses": [filler_ip(i, 1)], "conditions": {"ready": true}}]}))?;
                slices
                    .create(&PostParams::default(), &slice)
                    .await
                    .with_context(|| format!("creating EndpointSlice {name}-bench"))?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 1000 == 0 || n == total {
                    eprintln!(
                        "    {n}/{total} fillers created ({:.1?})",
                        started.elapsed()
                    );
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Wait until node `ip`'s proxy has programmed at least `services` Service ports and
/// `backends` backends; the time it took and the agent's last sync duration.
async fn wait_synced(ip: &str, services: f64, backends: f64) -> Result<(Duration, f64)> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(600) {
        match metrics(ip).await {
            Ok(m) => {
                let s = m.get("skiff_proxy_services").copied().unwrap_or(0.0);
                let b = m.get("skiff_proxy_backends").copied().unwrap_or(0.0);
                if s >= services && b >= backends {
                    let last_sync = m
                        .get("skiff_proxy_last_sync_duration_seconds")
                        .copied()
                        .unwrap_or(0.0);
                    return Ok((start.elapsed(), last_sync));
                }
                last = format!("{s} services, {b} backends");
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("node {ip}: the proxy did not reach {services} services / {backends} backends ({last})")
}

/// The measured Service's rule position in node's nat `KUBE-SERVICES` and the chain length.
fn rule_position(c: &Cluster, node: &str) -> Result<(usize, usize)> {
    let save = c.exec_ok(node, &["iptables-save", "-t", "nat"])?;
    let rules: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES "))
        .collect();
    let pos = rules
        .iter()
        .position(|r| r.contains(&format!("-d {MEASURED_VIP}/32")))
        .context("the measured Service is not in nat KUBE-SERVICES")?;
    Ok((pos + 1, rules.len()))
}

/// Run the client in the client pod; its report.
fn run_client(c: &Cluster, args: &[String]) -> Result<ClientReport> {
    let mut argv = vec!["client".to_string()];
    argv.extend_from_slice(args);
    let out = command_in_pod(c, "lat-client", &argv)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("running the client")?;
    ensure!(out.status.success(), "the client failed ({})", out.status);
    serde_json::from_slice(&out.stdout).context("the client's report")
}

/// The processes started into pods; killed when dropped (the pods' cgroups go with the
/// cluster anyway).
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn measure_mode(args: &RunArgs, mode: &str, counts: &[usize]) -> Result<Vec<Point>> {
    eprintln!("\n== {mode}: starting a 2-node cluster…");
    let c = tokio::task::block_in_place(|| {
        Cluster::start(ClusterOptions {
            nodes: 2,
            proxy_mode: mode.to_string(),
            agent_args: vec![
                "--metrics-bind-address".into(),
                format!("0.0.0.0:{METRICS_PORT}"),
            ],
            ..Default::default()
        })
    })?;
    let nodes = c.nodes();
    let (node_a, node_b) = (&nodes[0], &nodes[1]);
    let servers = ["lat-server-1", "lat-server-2"];
    tokio::task::block_in_place(|| deploy_pods(&c, node_a, node_b, &servers))?;
    let children = start_servers(&c, &servers)?;
    let direct_ip = c.jsonpath("pod", servers[0], ".status.podIP")?;
    let targets = [
        format!("--target=direct={direct_ip}:{SERVER_PORT}={}", servers[0]),
        format!(
            "--target=service={MEASURED_VIP}:{SERVICE_PORT}={}",
            servers.join(",")
        ),
    ];
    // Both backends reachable through the Service before anything is timed.
    eprintln!("    servers started; waiting until both answer through the ClusterIP…");
    tokio::task::block_in_place(|| wait_until_both_answer(&c, &targets, servers.len()))?;
    let setup = ModeSetup {
        cluster: &c,
        kube: c.client().await?,
        mode,
        node_a,
        ip_a: c.node_ip(node_a),
        targets,
    };
    let mut points = Vec::new();
    let mut fillers = 0;
    for &n in counts {
        let point = measure_point(args, &setup, n, fillers).await?;
        fillers = n - 1;
        eprintln!("{}", point_line(&point));
        points.push(point);
    }
    drop(setup);
    drop(children);
    tokio::task::block_in_place(|| drop(c));
    Ok(points)
}

/// The client pod on node A, the server pods on node B and the measured Service; until the
/// pods run.
fn deploy_pods(c: &Cluster, node_a: &str, node_b: &str, servers: &[&str]) -> Result<()> {
    let mut yaml = pod_yaml("lat-client", node_a, "lat-client");
    for s in servers {
        yaml += "---\n";
        yaml += &pod_yaml(s, node_b, "lat-server");
    }
    yaml += &format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: lat}}
spec:
  clusterIP: {MEASURED_VIP}
  selector: {{app: lat-server}}
  ports: [{{port: {SERVICE_PORT}, targetPort: lat}}]
"#
    );
    c.apply(&yaml)?;
    for p in std::iter::once(&"lat-client").chain(servers) {
        skiff_tests::wait_for(&format!("{p} Running"), Duration::from_secs(90), || {
            Ok((c.jsonpath("pod", p, ".status.phase")? == "Running").then_some(()))
        })?;
    }
    Ok(())
}

fn start_servers(c: &Cluster, servers: &[&str]) -> Result<Servers> {
    let mut children = Servers(Vec::new());
    for s in servers {
        let child = command_in_pod(c, s, &["server".to_string()])?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the server in {s}"))?;
        children.0.push(child);
    }
    Ok(children)
}

/// Until every one of the `servers` backends has answered through the ClusterIP.
fn wait_until_both_answer(c: &Cluster, targets: &[String], servers: usize) -> Result<()> {
    skiff_tests::wait_for(
        "both servers through the ClusterIP",
        Duration::from_secs(60),
        || {
            let mut argv = targets.to_vec();
            argv.extend(
                ["--new-only", "--requests=100", "--rounds=1", "--warmup=0"].map(String::from),
            );
            let report = run_client(c, &argv)?;
            let seen = report
                .summaries
                .iter()
                .find(|s| s.target == "service")
                .map_or(0, |s| s.replies.len());
            Ok((seen == servers).then_some(()))
        },
    )
}

/// What every point of one mode's run measures against.
struct ModeSetup<'a> {
    cluster: &'a Cluster,
    kube: kube::Client,
    mode: &'a str,
    node_a: &'a str,
    ip_a: String,
    /// The client's `--target` arguments: direct and service.
    targets: [String; 2],
}

/// Grows the fillers from `fillers` to `n - 1` and times the client against `n` Services.
async fn measure_point(
    args: &RunArgs,
    setup: &ModeSetup<'_>,
    n: usize,
    fillers: usize,
) -> Result<Point> {
    let ModeSetup {
        cluster: c,
        kube,
        mode,
        node_a,
        ip_a,
        targets,
    } = setup;
    let want = n - 1;
    eprintln!("== {mode}, {n} services");
    let before = metrics(ip_a).await.context("node A's metrics")?;
    let base_services = before.get("skiff_proxy_services").copied().unwrap_or(0.0);
    let base_backends = before.get("skiff_proxy_backends").copied().unwrap_or(0.0);
    let created = want - fillers;
    let create_start = Instant::now();
    create_fillers(kube, fillers, want, args.parallel).await?;
    let create_s = create_start.elapsed().as_secs_f64();
    let (settle, last_sync) = if created > 0 {
        let (settle, last_sync) = wait_synced(
            ip_a,
            base_services + created as f64,
            base_backends + 2.0 * created as f64,
        )
        .await?;
        eprintln!(
            "    {created} created in {create_s:.1} s; node A programmed them {:.0} ms after \
             the last write (its last sync took {:.0} ms)",
            settle.as_secs_f64() * 1e3,
            last_sync * 1e3
        );
        (Some(settle.as_secs_f64() * 1e3), Some(last_sync * 1e3))
    } else {
        (None, None)
    };
    let rule_position = if *mode == "iptables" {
        Some(tokio::task::block_in_place(|| rule_position(c, node_a))?)
    } else {
        None
    };
    let rounds = args
        .rounds
        .unwrap_or_else(|| args.requests.div_ceil(1000))
        .max(1);
    let mut argv = targets.to_vec();
    argv.push(format!("--requests={}", args.requests));
    argv.push(format!("--rounds={rounds}"));
    argv.push("--progress".into());
    if let Some(cpu) = args.cpu {
        argv.push(format!("--cpu={cpu}"));
    }
    eprintln!(
        "    timing {} requests per target and kind over {rounds} rounds…",
        args.requests
    );
    let report = tokio::task::block_in_place(|| run_client(c, &argv))?;
    Ok(Point {
        mode: mode.to_string(),
        services: n,
        created,
        create_s,
        sync_settle_ms: settle,
        last_sync_ms: last_sync,
        rule_position,
        report,
    })
}

fn point_line(p: &Point) -> String {
    let mut line = format!("    {} N={}:", p.mode, p.services);
    for kind in [Kind::NewConnection, Kind::KeepAlive] {
        if let (Some(d), Some(s)) = (p.summary("direct", kind), p.summary("service", kind)) {
            line += &format!(
                " {kind:?} p50 {:.0}/{:.0} µs ({:.2}×) p99 {:.0}/{:.0} µs ({:.2}×);",
                d.p50_us,
                s.p50_us,
                s.p50_us / d.p50_us,
                d.p99_us,
                s.p99_us,
                s.p99_us / d.p99_us
            );
        }
    }
    line
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn orchestrate(args: RunArgs) -> Result<()> {
    let mut counts = args.services.clone();
    counts.sort_unstable();
    counts.dedup();
    ensure!(
        counts.first().is_some_and(|n| *n >= 1)
            && counts.last().is_some_and(|n| *n <= MAX_SERVICES),
        "--services: counts from 1 to {MAX_SERVICES}"
    );
    for m in &args.modes {
        ensure!(
            matches!(m.as_str(), "ebpf" | "iptables"),
            "--modes: {m:?} is not ebpf or iptables"
        );
    }
    ensure!(args.requests >= 1, "--requests must be at least 1");
    let load_before = load_average();
    let started = Instant::now();
    let mut points = Vec::new();
    for mode in &args.modes {
        points.extend(measure_mode(&args, mode, &counts).await?);
    }
    let load_after = load_average();
    let md = markdown(&args, &points, &load_before, &load_after, started.elapsed());
    println!("{md}");
    if let Some(out) = &args.out {
        // The document also holds other benchmarks' sections (bench-dns, bench-exec): kept.
        let doc = std::fs::read_to_string(out).unwrap_or_default();
        let md = skiff_tests::with_marked_sections_of(&md, &doc);
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        let svg_path = out.with_file_name("benchmarks-latency.svg");
        std::fs::write(&svg_path, svg(&points))
            .with_context(|| format!("writing {}", svg_path.display()))?;
        eprintln!("wrote {} and {}", out.display(), svg_path.display());
    }
    Ok(())
}

// ----- report -----

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("–".into(), |v| format!("{v:.0} {unit}"))
}

fn markdown(
    args: &RunArgs,
    points: &[Point],
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let mut md = markdown_header(args, load_before, load_after, took);
    md += METHOD;
    md += &latency_tables(points);
    md += &sync_table(points);
    md += &ebpf_goal(points);
    md
}

/// Title, command, machine and load; a warning when the machine was busy before the run.
fn markdown_header(args: &RunArgs, load_before: &str, load_after: &str, took: Duration) -> String {
    let uname = Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let mut md = format!(
        "# Service latency: ClusterIP vs pod IP, eBPF vs iptables\n\n\
         Command: `{}`  \n{}; {uname}; {cpu_model}  \n\
         Load average (1/5/15 min) before: {load_before}; after: {load_after}; the run took {:.0} s.\n\n",
        args.command,
        skiff_tests::provenance(),
        took.as_secs_f64()
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Only the load before the run is other work: during it the clusters, client and servers
    // load the machine themselves.
    let before = load_before
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .unwrap_or(0.0);
    if before > cpus as f64 {
        md += &format!(
            "**The machine was busy**: the 1-minute load average was {before:.1} on {cpus} CPUs \
             when the run started, so other work competed with client, servers and agents; \
             the tails (p90, p99) carry scheduling delays and single points swing. Re-run on a \
             quiet machine before reading p99 ratios as properties of the dataplane.\n\n"
        );
    }
    md
}

const METHOD: &str = "## Method\n\n\
    A 2-node cluster from the test harness per proxy mode (release `skiff-control` and \
    `skiff-agent`; nodes are network namespaces on one bridge). Two server pods on node B \
    behind the measured Service (port 80 → 7000), a client pod on node A. Server and client \
    are compiled (`latency-bench server` / `client`), started from the host into the pod's \
    cgroup (below the agent's `--cgroup-root`, where the eBPF socket programs are attached), \
    network namespace and UTS namespace. Every reply is the backend pod's hostname; the \
    client counts replies per backend and fails on anything else. The client is pinned to \
    one CPU and times each request with the monotonic clock: *new connection* = connect → \
    write → read → close with RST (`SO_LINGER` 0); *keep-alive* = one connection per chunk, \
    one round trip per request. Targets: the first server's pod IP (*direct*, the baseline) \
    and the ClusterIP (*service*), both crossing from node A to node B. Per point, every \
    target × kind runs one chunk per round, the order rotating each round, samples pooled. \
    The measured Service has ClusterIP 10.99.99.99, which sorts after every other address \
    of 10.96.0.0/12, so it is the last Service rule of `KUBE-SERVICES` whether the chain is \
    rewritten (sorted) or edited (new rules go on top) — the honest worst case. For each N, \
    N−1 filler Services without selector, each with a hand-made EndpointSlice of 2 ready \
    endpoints at unused pod addresses; *sync* is the time from the last filler write until \
    node A's proxy metrics show every Service and backend programmed. Client CPU is \
    getrusage user+system over the timed requests. In iptables mode the direct traffic also \
    walks `KUBE-SERVICES` (nat PREROUTING on node A sees every new connection), so the \
    iptables rows' *direct* is slower at large N and their service ÷ direct ratio hides \
    the cost of the rules; the column *÷ rules-free direct* compares with the eBPF run's \
    direct at the same N instead (another cluster, minutes apart: drift included).\n\n";

/// One latency table per connection kind: direct vs service percentiles and their ratios.
fn latency_tables(points: &[Point]) -> String {
    let mut md = String::new();
    let requests = points
        .first()
        .and_then(|p| p.report.summaries.first())
        .map_or(0, |s| s.requests);
    for (kind, title) in [
        (Kind::NewConnection, "New connection per request"),
        (
            Kind::KeepAlive,
            "Keep-alive (one connection, many requests)",
        ),
    ] {
        md += &format!(
            "## {title}\n\nLatency in µs, {requests} requests per cell.\n\n\
             | mode | services | direct p50 / p90 / p99 | service p50 / p90 / p99 | service ÷ direct p50 | p90 | p99 | ÷ rules-free direct p50 / p99 |\n\
             |---|---:|---|---|---:|---:|---:|---|\n"
        );
        for p in points {
            let (Some(d), Some(s)) = (p.summary("direct", kind), p.summary("service", kind)) else {
                continue;
            };
            let rules_free = points
                .iter()
                .find(|e| e.mode == "ebpf" && e.services == p.services && p.mode != "ebpf")
                .and_then(|e| e.summary("direct", kind))
                .map_or("–".to_string(), |e| {
                    format!("{:.2}× / {:.2}×", s.p50_us / e.p50_us, s.p99_us / e.p99_us)
                });
            md += &format!(
                "| {} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.2}× | {:.2}× | {:.2}× | {rules_free} |\n",
                p.mode,
                p.services,
                d.p50_us,
                d.p90_us,
                d.p99_us,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.p50_us / d.p50_us,
                s.p90_us / d.p90_us,
                s.p99_us / d.p99_us
            );
        }
        md += "\n";
    }
    md
}

/// Per point: filler creation, sync, client CPU, rule position, replies per backend.
fn sync_table(points: &[Point]) -> String {
    let mut md = "## Sync, CPU, replies\n\n\
        | mode | services | fillers created (s) | sync after last write | agent's last sync | \
        client CPU/request new conn direct / service | keep-alive direct / service | \
        measured rule in KUBE-SERVICES | service replies per backend (new conn) |\n\
        |---|---:|---|---:|---:|---|---|---|---|\n"
        .to_string();
    for p in points {
        let cpu = |kind| match (p.summary("direct", kind), p.summary("service", kind)) {
            (Some(d), Some(s)) => format!("{:.1} / {:.1} µs", d.cpu_us, s.cpu_us),
            _ => "–".into(),
        };
        let replies = p
            .summary("service", Kind::NewConnection)
            .map(|s| {
                s.replies
                    .iter()
                    .map(|(b, n)| format!("{b} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        md += &format!(
            "| {} | {} | {} ({:.1}) | {} | {} | {} | {} | {} | {} |\n",
            p.mode,
            p.services,
            p.created,
            p.create_s,
            fmt_opt(p.sync_settle_ms, "ms"),
            fmt_opt(p.last_sync_ms, "ms"),
            cpu(Kind::NewConnection),
            cpu(Kind::KeepAlive),
            p.rule_position
                .map_or("–".into(), |(pos, len)| format!("{pos} of {len}")),
            replies
        );
    }
    md
}

/// Whether eBPF mode met its goal at each N, and what its path adds.
fn ebpf_goal(points: &[Point]) -> String {
    let mut md =
        "\n## Goal: eBPF new-connection latency through the Service within 1.05× of direct\n\n"
            .to_string();
    let ebpf: Vec<&Point> = points.iter().filter(|p| p.mode == "ebpf").collect();
    if ebpf.is_empty() {
        md += "Not measured in this run (eBPF mode not selected).\n";
        return md;
    }
    for p in ebpf {
        if let (Some(d), Some(s)) = (
            p.summary("direct", Kind::NewConnection),
            p.summary("service", Kind::NewConnection),
        ) {
            let (r50, r99) = (s.p50_us / d.p50_us, s.p99_us / d.p99_us);
            let verdict = if r50 <= 1.05 && r99 <= 1.05 {
                "met"
            } else {
                "**missed**"
            };
            md += &format!(
                "- N = {}: p50 {r50:.2}×, p99 {r99:.2}× — {verdict}\n",
                p.services
            );
        }
    }
    md += "\nWhat the eBPF path adds to a `connect()` to the ClusterIP, beyond the direct \
        path's one frontend lookup (a miss): a backend-slot and a backend hash lookup, \
        `bpf_get_prandom_u32`, the socket cookie and one LRU insert (the socket reverse-NAT \
        entry read by `getpeername4`/`recvmsg4`); no per-packet work after that. A p50 ratio \
        that does not grow with N is what the design predicts. Single ratios swing by a few \
        hundredths between runs, even at N = 1 where the frontend map holds one entry, so a \
        lone miss by that much is within the run's noise; a ratio growing with N would not \
        be.\n";
    md
}

/// Latency vs N (log scale), one panel for p50 and one for p99 of new-connection requests;
/// a solid line per mode through the Service, a dashed line for each mode's direct baseline.
fn svg(points: &[Point]) -> String {
    let mut modes: Vec<&str> = points.iter().map(|p| p.mode.as_str()).collect();
    modes.dedup();
    let max_n = points.iter().map(|p| p.services).max().unwrap_or(1).max(10) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * svg_box::W,
        svg_box::H + 30.0
    );
    for (panel, (pick, label)) in [
        ((|s: &Summary| s.p50_us) as fn(&Summary) -> f64, "p50"),
        ((|s: &Summary| s.p99_us) as fn(&Summary) -> f64, "p99"),
    ]
    .into_iter()
    .enumerate()
    {
        let values: Vec<f64> = points
            .iter()
            .flat_map(|p| p.report.summaries.iter())
            .filter(|s| s.kind == Kind::NewConnection)
            .map(pick)
            .collect();
        let axes = PlotAxes {
            max_n,
            max_y: values.iter().copied().fold(0.0, f64::max).max(1.0) * 1.1,
        };
        out += &format!(
            "<g transform=\"translate({},0)\">\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" \
             font-size=\"14\">New-connection latency {label} (µs) vs number of Services</text>\n",
            panel as f64 * svg_box::W,
            svg_box::W / 2.0
        );
        out += &axes.draw();
        for mode in &modes {
            out += &svg_lines(points, mode, pick, &axes);
        }
        out += "</g>\n";
    }
    out += &svg_legend(&modes);
    out += "</svg>\n";
    out
}

/// One panel's box: width, height and the margins (left, right, top, bottom) around the plot.
mod svg_box {
    pub const W: f64 = 460.0;
    pub const H: f64 = 320.0;
    pub const L: f64 = 60.0;
    pub const R: f64 = 20.0;
    pub const T: f64 = 40.0;
    pub const B: f64 = 50.0;
}

/// The scales of one panel: Services (log) across, latency up.
struct PlotAxes {
    max_n: f64,
    max_y: f64,
}

impl PlotAxes {
    fn x_of(&self, n: usize) -> f64 {
        use svg_box::*;
        L + (W - L - R) * ((n as f64).log10() / self.max_n.log10())
    }

    fn y_of(&self, v: f64) -> f64 {
        use svg_box::*;
        T + (H - T - B) * (1.0 - v / self.max_y)
    }

    /// Axes, y grid and ticks, x ticks at powers of ten, the x label.
    fn draw(&self) -> String {
        use svg_box::*;
        let mut out = format!(
            "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
             <line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>\n",
            H - B,
            W - R,
            H - B,
            H - B
        );
        let step = nice_step(self.max_y / 5.0);
        let mut v = 0.0;
        while v <= self.max_y {
            let y = self.y_of(v);
            out += &format!(
                "<line x1=\"{L}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
                W - R,
                L - 5.0,
                y + 4.0
            );
            v += step;
        }
        let mut n = 1usize;
        while n as f64 <= self.max_n {
            let x = self.x_of(n);
            out += &format!(
                "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"black\"/>\n\
                 <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>\n",
                H - B,
                H - B + 5.0,
                H - B + 18.0
            );
            n *= 10;
        }
        out += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">Services (log scale)</text>\n",
            (L + W - R) / 2.0,
            H - B + 36.0
        );
        out
    }
}

fn svg_colour(mode: &str) -> &'static str {
    if mode == "ebpf" { "#1f77b4" } else { "#d62728" }
}

/// The line style of each target: solid through the Service, dashed for the direct baseline.
const SVG_TARGETS: [(&str, &str); 2] = [("service", ""), ("direct", " stroke-dasharray=\"6,4\"")];

/// `mode`'s two lines (service and direct) with their points.
fn svg_lines(points: &[Point], mode: &str, pick: fn(&Summary) -> f64, axes: &PlotAxes) -> String {
    let mut out = String::new();
    for (target, dash) in SVG_TARGETS {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.mode == mode)
            .filter_map(|p| {
                let s = p.summary(target, Kind::NewConnection)?;
                Some((axes.x_of(p.services), axes.y_of(pick(s))))
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
            svg_colour(mode),
            path.join(" ")
        );
        for (x, y) in pts {
            out += &format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"/>\n",
                svg_colour(mode)
            );
        }
    }
    out
}

fn svg_legend(modes: &[&str]) -> String {
    use svg_box::{H, L};
    let mut out = String::new();
    let mut x = L;
    for mode in modes {
        for (target, dash) in SVG_TARGETS {
            out += &format!(
                "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\n\
                 <text x=\"{}\" y=\"{}\">{mode}: {}</text>\n",
                x + 30.0,
                svg_colour(mode),
                x + 35.0,
                H + 19.0,
                if target == "service" {
                    "ClusterIP"
                } else {
                    "pod IP (direct)"
                },
                y = H + 15.0
            );
            x += 200.0;
        }
    }
    out
}

/// 1, 2 or 5 × a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_reject_garbage() {
        let t = parse_target("service=10.99.99.99:80=a,b").unwrap();
        assert_eq!(t.name, "service");
        assert_eq!(t.addr.to_string(), "10.99.99.99:80");
        assert_eq!(t.backends, ["a", "b"]);
        assert!(parse_target("service=10.99.99.99:80").is_err());
        assert!(parse_target("x=notanip:80=a").is_err());
    }

    #[test]
    fn filler_addresses_stay_in_the_unused_half() {
        assert_eq!(filler_ip(0, 0), "10.244.128.0");
        assert_eq!(filler_ip(9_999, 1), "10.244.206.31");
        assert!(filler_ip(MAX_SERVICES, 1).starts_with("10.244."));
    }

    #[test]
    fn unexpected_backend_fails() {
        let t = parse_target("d=10.0.0.1:1=a").unwrap();
        let mut replies = BTreeMap::new();
        count_reply(&t, "a", &mut replies).unwrap();
        assert!(count_reply(&t, "b", &mut replies).is_err());
        assert_eq!(replies["a"], 1);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
        assert_eq!(nice_step(100.0), 100.0);
    }
}
