//! `dns-bench`: the agent's cluster DNS against Debian's dnsmasq, answering the same names.
//!
//! On a one-node cluster from the harness (network namespaces the harness creates), a
//! Service `bench` gives the name `bench.default.svc.cluster.local`; an upstream resolver
//! this benchmark runs on 127.0.0.1:5300 in the node's namespace knows `www.example.test`
//! (A 192.0.2.10, TTL 300). The agent serves on the pods' gateway address, port 53, forwarding
//! to that upstream (`--dns-upstream`); dnsmasq runs beside it on the same address, port 5353,
//! with the Service's record as a `--host-record` and the same upstream (`--server`). A client
//! in the node's namespace, pinned to one CPU, asks both servers both names: *latency* = one
//! query at a time, *throughput* = `--window` queries in flight on one socket. Every answer
//! is checked (its id, NOERROR, the expected address); the targets run in chunks, the order
//! rotating each round, samples pooled. Run through `cargo xtask bench-dns`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::{print_report_section, provenance, wait_for};

const UPSTREAM: (Ipv4Addr, u16) = (Ipv4Addr::LOCALHOST, 5300);
const DNSMASQ_PORT: u16 = 5353;
const SERVICE_NAME: &str = "bench.default.svc.cluster.local.";
const EXTERNAL_NAME: &str = "www.example.test.";
const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

#[derive(Parser)]
#[command(about = "Cluster DNS benchmark: the agent against dnsmasq")]
struct Args {
    /// Queries per server and name, for latency and again for throughput.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Queries per chunk (one target at a time).
    #[arg(long, default_value_t = 1_000)]
    chunk: usize,
    /// Queries in flight in the throughput runs.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// The CPU the client is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-dns")]
    command: String,
}

/// One server asked one name.
#[derive(Clone)]
struct Target {
    server: &'static str,
    addr: SocketAddr,
    /// The process answering, for its CPU time.
    pid: u32,
    kind: &'static str,
    name: Name,
    want: Ipv4Addr,
}

#[derive(Default)]
struct Samples {
    latencies_ns: Vec<u64>,
    /// Throughput runs: answers and the time they took.
    answered: usize,
    busy: Duration,
    lost: usize,
    /// The server's CPU time (user + system) over all runs, and the queries it answered.
    server_cpu: Duration,
    server_queries: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.chunk > 0 && args.window > 0,
        "--chunk and --window must be positive"
    );
    let started = Instant::now();
    eprintln!("starting a one-node cluster…");
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        agent_args: vec![
            "--dns-upstream".into(),
            format!("{}:{}", UPSTREAM.0, UPSTREAM.1),
        ],
        ..Default::default()
    })?;
    let node = cluster.nodes()[0].clone();
    let netns = cluster.node(&node).netns_path();
    let cluster_ip = bench_service(&cluster)?;
    let gateway = pod_gateway(&cluster, &node)?;
    let upstream = Upstream::start(&netns)?;
    let dnsmasq = Dnsmasq::start(&netns, gateway, cluster_ip, &cluster.dir().join("dnsmasq"))?;
    let agent_pid = cluster.agent_pid(&node);
    let mut targets = Vec::new();
    for (server, port, pid) in [
        ("skiff-agent", 53, agent_pid),
        ("dnsmasq", DNSMASQ_PORT, dnsmasq.pid()),
    ] {
        for (kind, name, want) in [
            ("service", SERVICE_NAME, cluster_ip),
            ("external (forwarded)", EXTERNAL_NAME, EXTERNAL_ADDR),
        ] {
            targets.push(Target {
                server,
                addr: (gateway, port).into(),
                pid,
                kind,
                name: Name::from_ascii(name)?,
                want,
            });
        }
    }
    let cpu = args
        .cpu
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) - 1);
    let load = (
        netns.clone(),
        targets.clone(),
        args.queries,
        args.chunk,
        args.window,
        cpu,
    );
    let samples = std::thread::spawn(move || measure(load))
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    let upstream_queries = upstream.stop();
    drop(dnsmasq);
    let md = report(
        &args,
        &targets,
        &samples,
        upstream_queries,
        started.elapsed(),
        cpu,
    );
    print_report_section(&md, args.out.as_deref(), "bench-dns")?;
    Ok(())
}

/// The Service `bench` (no selector: its name is what is asked); its ClusterIP.
fn bench_service(c: &Cluster) -> Result<Ipv4Addr> {
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: bench, namespace: default}\n\
         spec: {ports: [{port: 80}]}\n",
    )?;
    let ip = c.kubectl(&[
        "get",
        "service",
        "bench",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ip.trim()
        .parse()
        .with_context(|| format!("the ClusterIP of bench: {ip:?}"))
}

/// The first address of the node's pod CIDR, where the agent serves DNS.
fn pod_gateway(c: &Cluster, node: &str) -> Result<Ipv4Addr> {
    let cidr = c.kubectl(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])?;
    let net: Ipv4Addr = cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the pod CIDR of {node}: {cidr:?}"))?;
    Ok(Ipv4Addr::from(u32::from(net) + 1))
}

/// Move this thread into the network namespace at `netns`.
fn in_netns(netns: &Path) -> Result<()> {
    let ns = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns(net)")?;
    Ok(())
}

/// The resolver both servers forward to: `www.example.test` A 192.0.2.10, NXDOMAIN otherwise.
struct Upstream {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Upstream {
    fn start(netns: &Path) -> Result<Upstream> {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (netns, flag, count) = (netns.to_path_buf(), stop.clone(), queries.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            in_netns(&netns)?;
            let socket = UdpSocket::bind(UPSTREAM)?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = upstream_answer(&buf[..n]) {
                    count.fetch_add(1, Ordering::SeqCst);
                    socket.send_to(&answer, peer)?;
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the upstream resolver did not start")?;
        Ok(Upstream {
            stop,
            queries,
            thread: Some(thread),
        })
    }

    /// Stop it; how many queries it answered.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn upstream_answer(packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let q = query.queries.first()?.clone();
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.clone());
    if q.name().to_ascii().eq_ignore_ascii_case(EXTERNAL_NAME) {
        if q.query_type() == RecordType::A {
            m.add_answer(hickory_proto::rr::Record::from_rdata(
                q.name().clone(),
                300,
                RData::A(EXTERNAL_ADDR.into()),
            ));
        }
    } else {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m.to_vec().ok()
}

/// dnsmasq in the node's network namespace, with the cluster's record and upstream.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(netns: &Path, gateway: Ipv4Addr, cluster_ip: Ipv4Addr, dir: &Path) -> Result<Dnsmasq> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(dir)?;
        let ns = std::fs::File::open(netns)?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--cache-size=10000",
            "--log-facility=-",
        ])
        .arg(format!("--listen-address={gateway}"))
        .arg(format!("--port={DNSMASQ_PORT}"))
        .arg(format!("--server={}#{}", UPSTREAM.0, UPSTREAM.1))
        .arg(format!(
            "--host-record={},{cluster_ip}",
            SERVICE_NAME.trim_end_matches('.')
        ))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("dnsmasq.log"))?);
        // SAFETY: setns(2) only, on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting dnsmasq (Debian: dnsmasq-base; `cargo xtask setup` installs it)")?;
        drop(ns);
        Ok(Dnsmasq(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Load = (PathBuf, Vec<Target>, usize, usize, usize, usize);

/// The client: wait until every target answers right, then interleave the chunks.
fn measure((netns, targets, queries, chunk, window, cpu): Load) -> Result<Vec<Samples>> {
    in_netns(&netns)?;
    pin(cpu);
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut id: u16 = 0;
    for t in &targets {
        wait_for(
            &format!("{} to answer {}", t.server, t.name),
            Duration::from_secs(60),
            || {
                id = id.wrapping_add(1);
                Ok(ask(&socket, t, id).ok())
            },
        )?;
    }
    let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    let rounds = queries.div_ceil(chunk);
    for round in 0..rounds {
        let n = chunk.min(queries - round * chunk);
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (t, s) = (&targets[i], &mut samples[i]);
            let cpu0 = cpu_time(t.pid);
            for _ in 0..n {
                id = id.wrapping_add(1);
                s.latencies_ns.push(ask(&socket, t, id)?.as_nanos() as u64);
            }
            throughput(t, n, window, s)?;
            s.server_cpu += cpu_time(t.pid).saturating_sub(cpu0);
            s.server_queries += 2 * n;
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();
    Ok(samples)
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn query(t: &Target, id: u16) -> Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(t.name.clone(), RecordType::A));
    Ok(m.to_vec()?)
}

/// Whether `packet` is the right answer to query `id` of `t`.
fn check(packet: &[u8], t: &Target, id: u16) -> Result<()> {
    let m = Message::from_vec(packet)?;
    ensure!(
        m.metadata.id == id,
        "answer to query {} for query {id}",
        m.metadata.id
    );
    ensure!(
        m.metadata.response_code == ResponseCode::NoError,
        "{} answered {} for {}",
        t.server,
        m.metadata.response_code,
        t.name
    );
    let found = m
        .answers
        .iter()
        .any(|r| matches!(&r.data, RData::A(a) if a.0 == t.want));
    ensure!(
        found,
        "{} did not answer {} with {}: {m:?}",
        t.server,
        t.name,
        t.want
    );
    Ok(())
}

/// One query, its answer checked; the round trip.
fn ask(socket: &UdpSocket, t: &Target, id: u16) -> Result<Duration> {
    let packet = query(t, id)?;
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    socket.send_to(&packet, t.addr)?;
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .with_context(|| format!("no answer from {} for {}", t.server, t.name))?;
        // A late answer to an earlier query is skipped.
        if from == t.addr && buf[..2] == id.to_be_bytes() {
            let rtt = start.elapsed();
            check(&buf[..n], t, id)?;
            return Ok(rtt);
        }
    }
}

/// `n` queries with `window` in flight on one socket of its own: answers, time, losses.
fn throughput(t: &Target, n: usize, window: usize, s: &mut Samples) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(t.addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let packets: Vec<Vec<u8>> = (0..n).map(|i| query(t, i as u16)).collect::<Result<_>>()?;
    let mut in_flight: HashSet<u16> = HashSet::new();
    let (mut sent, mut done) = (0, 0);
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    while done < n {
        while sent < n && in_flight.len() < window {
            socket.send(&packets[sent])?;
            in_flight.insert(sent as u16);
            sent += 1;
        }
        match socket.recv(&mut buf) {
            Ok(len) if len >= 2 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if in_flight.remove(&id) {
                    check(&buf[..len], t, id)?;
                    done += 1;
                    s.answered += 1;
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Nothing for 200 ms: what is in flight is lost.
                s.lost += in_flight.len();
                done += in_flight.len();
                in_flight.clear();
            }
        }
    }
    s.busy += start.elapsed();
    if s.lost > n / 10 {
        bail!(
            "{} lost {} of {} queries for {}",
            t.server,
            s.lost,
            n,
            t.name
        );
    }
    Ok(())
}

/// User + system CPU time of `pid` (from /proc, clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat[stat.rfind(')')? + 1..].to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn report(
    args: &Args,
    targets: &[Target],
    samples: &[Samples],
    upstream_queries: usize,
    took: Duration,
    cpu: usize,
) -> String {
    let mut md = String::from("# Cluster DNS: the agent against dnsmasq\n\n");
    md.push_str(&format!(
        "Command: `{}`  \n{}; dnsmasq {}  \nLoad average (1/5/15 min) after: {}; the run took {:.0} s.\n\n",
        args.command,
        provenance(),
        dnsmasq_version(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        took.as_secs_f64()
    ));
    md.push_str(&format!(
        "One node of the test harness (its network namespace); the agent's DNS on the pods' gateway address port 53, dnsmasq on the same address port {DNSMASQ_PORT} (`--host-record` for the Service's name, `--server` the same upstream, `--cache-size=10000`). Both forward `{EXTERNAL_NAME}` to a resolver the benchmark runs in the namespace (A, TTL 300), so after the first query the external name is answered from each server's cache, as in steady state; the upstream saw {upstream_queries} queries in all. The client runs in the node's namespace pinned to CPU {cpu}: *latency* = one query at a time ({q} per row), *throughput* = {w} in flight on one socket ({q} per row); chunks of {c}, the four targets rotating each round. Every answer is checked (id, NOERROR, the address). Server CPU = the server process's user + system time over its chunks (10 ms ticks) per query.\n\n",
        q = args.queries,
        w = args.window,
        c = args.chunk,
    ));
    md.push_str("| name | server | latency p50 / p90 / p99 (µs) | throughput (queries/s) | lost | server CPU / query (µs) |\n|---|---|---|---:|---:|---:|\n");
    let figures: Vec<Figures> = samples.iter().map(Figures::of).collect();
    for (t, f) in targets.iter().zip(&figures) {
        md.push_str(&format!(
            "| {} `{}` | {} | {:.0} / {:.0} / {:.0} | {:.0} | {} | {:.1} |\n",
            t.kind, t.name, t.server, f.p50, f.p90, f.p99, f.qps, f.lost, f.cpu
        ));
    }
    md.push_str("\nGoal: ahead of dnsmasq. The agent ÷ dnsmasq, same name (below 1 is ahead for latency and CPU, above 1 for throughput):\n\n| name | latency p50 | p99 | throughput | server CPU / query |\n|---|---:|---:|---:|---:|\n");
    for (i, t) in targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.server == "skiff-agent")
    {
        let Some(j) = targets
            .iter()
            .position(|o| o.server == "dnsmasq" && o.kind == t.kind)
        else {
            continue;
        };
        let (a, d) = (&figures[i], &figures[j]);
        md.push_str(&format!(
            "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
            t.kind,
            a.p50 / d.p50.max(1e-9),
            a.p99 / d.p99.max(1e-9),
            a.qps / d.qps.max(1e-9),
            a.cpu / d.cpu.max(1e-9)
        ));
    }
    md
}

/// One target's figures for the report.
struct Figures {
    p50: f64,
    p90: f64,
    p99: f64,
    qps: f64,
    lost: usize,
    cpu: f64,
}

impl Figures {
    fn of(s: &Samples) -> Figures {
        let mut lat = s.latencies_ns.clone();
        lat.sort_unstable();
        Figures {
            p50: percentile_us(&lat, 0.5),
            p90: percentile_us(&lat, 0.9),
            p99: percentile_us(&lat, 0.99),
            qps: s.answered as f64 / s.busy.as_secs_f64().max(1e-9),
            lost: s.lost,
            cpu: s.server_cpu.as_secs_f64() * 1e6 / s.server_queries.max(1) as f64,
        }
    }
}

fn dnsmasq_version() -> String {
    Command::new("dnsmasq")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}
