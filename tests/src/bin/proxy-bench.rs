//! `proxy-bench`: how fast the service proxy turns API objects into a programmed dataplane.
//!
//! Everything runs inside a network namespace this process creates for itself (so iptables
//! rules never touch the host's tables, and the namespace disappears with the process even if
//! it is killed), with its own cgroup (where the eBPF socket programs attach; no process is in
//! it) and its own bpffs directory, both removed at the end, on failure and on Ctrl-C too.
//!
//! 1. A `skiff-control` (embedded store) inside the namespace gets `--services` selector-less
//!    Services, each with one EndpointSlice of 2 ready endpoints, created through the API
//!    (managed by `skiff-proxy-bench`, so the EndpointSlice controller leaves them alone).
//! 2. For each mode (eBPF maps, iptables-legacy, iptables-nft), the agent's proxy runner
//!    ([`skiff_agent::proxy::runner::run`], the code `skiff-agent run` uses: reflectors over a
//!    list/watch → state → dataplane) is started against the apiserver on an empty dataplane.
//!    Full sync: from its start until its first sync has programmed every service (seen by
//!    the runner's metrics, then checked by reading the maps / `iptables-save`), split into
//!    the initial list, building the state and writing the dataplane.
//! 3. Endpoint change: `--changes` times, replace one endpoint of one EndpointSlice through
//!    the API, and time from the write returning until the service's frontend in the pinned
//!    maps (eBPF) or its `KUBE-SVC-*` chain (iptables) points at the new endpoint and not the
//!    old one, polling the kernel in a loop.
//!
//! Run through `cargo xtask bench-proxy`, which builds release binaries and writes
//! docs/benchmarks-proxy.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff_agent::proxy::dataplane::Dataplane;
use skiff_agent::proxy::ebpf::{self, EbpfConfig, EbpfDataplane, PinnedMaps};
use skiff_agent::proxy::iptables::{Backend, IptablesDataplane, rules};
use skiff_agent::proxy::metrics::ProxyMetrics;
use skiff_agent::proxy::model::{Protocol, ServicePortName};
use skiff_agent::proxy::runner;
use skiff_tests::{ControlPlane, StoreBackend};

#[derive(Parser)]
struct Args {
    /// Services, each with one EndpointSlice of 2 endpoints.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoint changes timed per mode.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Modes to measure, comma-separated: ebpf, iptables-legacy, iptables-nft.
    #[arg(
        long,
        default_value = "ebpf,iptables-legacy,iptables-nft",
        value_delimiter = ','
    )]
    modes: Vec<String>,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-proxy")]
    command: String,
}

const NAMESPACE: &str = "default";
const PORT_NAME: &str = "http";
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const NODE: &str = "bench-node";
/// Measured in this order: each iptables backend starts from empty tables, and nft's
/// tables (slow to remove at scale) go with the namespace at the end.
const MODES: [&str; 3] = ["ebpf", "iptables-legacy", "iptables-nft"];

/// Endpoint `j` (0 or 1) of service `i`, all distinct: 10.128.0.0/14.
fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    let k = (2 * i + j) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k)
}

/// The `n`th replacement endpoint: 10.132.0.0/14, never an initial one.
fn replacement_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 132, 0, 0)) + n as u32)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn port_name(i: usize) -> ServicePortName {
    ServicePortName {
        namespace: NAMESPACE.into(),
        name: service_name(i),
        port: PORT_NAME.into(),
        protocol: Protocol::Tcp,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The bench's own cgroup and bpffs directory; removed (programs detached, pins gone) on drop.
struct Sandbox {
    cgroup: PathBuf,
    bpffs: PathBuf,
}

const SANDBOX_PREFIX: &str = "skiff-pbench-";
const BPFFS: &str = "/sys/fs/bpf";

impl Sandbox {
    fn create() -> Result<Sandbox> {
        let cgroup_parent = skiff_tests::cluster::cgroup2_mount()?;
        Self::sweep(&cgroup_parent);
        let name = format!("{SANDBOX_PREFIX}{}", std::process::id());
        let sandbox = Sandbox {
            cgroup: cgroup_parent.join(&name),
            bpffs: Path::new(BPFFS).join(&name),
        };
        std::fs::create_dir_all(&sandbox.cgroup)
            .with_context(|| format!("creating cgroup {}", sandbox.cgroup.display()))?;
        Ok(sandbox)
    }

    /// Remove what runs of this bench killed before they could clean up left behind.
    fn sweep(cgroup_parent: &Path) {
        for parent in [cgroup_parent, Path::new(BPFFS)] {
            for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix(SANDBOX_PREFIX) else {
                    continue;
                };
                if Path::new("/proc").join(pid).exists() {
                    continue;
                }
                let stale = Sandbox {
                    cgroup: cgroup_parent.join(&name),
                    bpffs: Path::new(BPFFS).join(&name),
                };
                eprintln!("removing the leftovers of an earlier run: {name}");
                drop(stale);
            }
        }
    }

    fn remove_ebpf(&self) -> Result<()> {
        if self.bpffs.exists() {
            ebpf::cleanup(&self.bpffs, Some(&self.cgroup))?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.remove_ebpf() {
            eprintln!("removing the eBPF programs and pins: {e:#}");
        }
        if self.bpffs.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.bpffs)
        {
            eprintln!("removing {}: {e}", self.bpffs.display());
        }
        if self.cgroup.exists()
            && let Err(e) = std::fs::remove_dir(&self.cgroup)
        {
            eprintln!("removing cgroup {}: {e}", self.cgroup.display());
        }
    }
}

/// A service as created: its ClusterIP and current endpoints.
#[derive(Clone)]
struct BenchService {
    cluster_ip: Ipv4Addr,
    endpoints: [Ipv4Addr; 2],
}

fn slice_endpoints(eps: &[Ipv4Addr; 2]) -> serde_json::Value {
    json!(
        eps.iter()
            .map(
                |ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true},
                "nodeName": "bench-other-node"})
            )
            .collect::<Vec<_>>()
    )
}

async fn create_objects(client: &kube::Client, n: usize) -> Result<Vec<BenchService>> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let created: Vec<(usize, BenchService)> = futures::stream::iter(0..n)
        .map(|i| {
            let (services, slices, done) = (services.clone(), slices.clone(), &done);
            async move {
                let name = service_name(i);
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"ports": [{"name": PORT_NAME, "port": SERVICE_PORT,
                        "targetPort": TARGET_PORT, "protocol": "TCP"}]}}))?;
                let svc = services.create(&PostParams::default(), &svc).await?;
                let cluster_ip: Ipv4Addr = svc
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .context("no clusterIP allocated")?
                    .parse()?;
                let endpoints = [endpoint_ip(i, 0), endpoint_ip(i, 1)];
                let slice: EndpointSlice = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}-bench"), "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "skiff-proxy-bench"}},
                    "addressType": "IPv4",
                    "ports": [{"name": PORT_NAME, "port": TARGET_PORT, "protocol": "TCP"}],
                    "endpoints": slice_endpoints(&endpoints)}))?;
                slices.create(&PostParams::default(), &slice).await?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if d % (n / 10).max(1) == 0 {
                    eprintln!("  {d}/{n} services with slices ({:.1?})", start.elapsed());
                }
                anyhow::Ok((
                    i,
                    BenchService {
                        cluster_ip,
                        endpoints,
                    },
                ))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let mut by_index: BTreeMap<usize, BenchService> = created.into_iter().collect();
    Ok((0..n)
        .map(|i| by_index.remove(&i).expect("every service was created"))
        .collect())
}

/// How a mode's dataplane is built and inspected.
enum Mode {
    Ebpf { bpffs: PathBuf, cgroup: PathBuf },
    Iptables(Backend),
}

impl Mode {
    fn parse(name: &str, sandbox: &Sandbox) -> Result<Mode> {
        Ok(match name {
            "ebpf" => Mode::Ebpf {
                bpffs: sandbox.bpffs.clone(),
                cgroup: sandbox.cgroup.clone(),
            },
            "iptables-legacy" => Mode::Iptables(Backend::Legacy),
            "iptables-nft" => Mode::Iptables(Backend::Nft),
            other => bail!("unknown mode {other:?} (ebpf, iptables-legacy, iptables-nft)"),
        })
    }

    /// Why this mode cannot run here, if it cannot.
    fn unavailable(&self) -> Option<String> {
        match self {
            Mode::Ebpf { .. } if !ebpf::programs_built() => {
                Some("the agent was built without its eBPF programs (SKIFF_EBPF_SKIP)".into())
            }
            Mode::Ebpf { .. } => None,
            Mode::Iptables(b) if !b.available() => Some(format!("{} is not installed", b.save())),
            Mode::Iptables(_) => None,
        }
    }

    fn open(&self) -> Result<Box<dyn Dataplane>> {
        Ok(match self {
            Mode::Ebpf { bpffs, cgroup } => {
                // No uplink and no node IP: ClusterIP frontends only, nothing on interfaces.
                Box::new(EbpfDataplane::open(&EbpfConfig::new(bpffs, cgroup))?)
            }
            Mode::Iptables(b) => Box::new(skiff_agent::proxy::IptablesProxy::new(
                IptablesDataplane::new(*b)
                    .with_cluster_cidr(Some("10.244.0.0/16".parse().map_err(anyhow::Error::msg)?)),
            )),
        })
    }

    /// Check that the dataplane holds every service with both its endpoints.
    fn verify(&self, services: &[BenchService]) -> Result<()> {
        match self {
            Mode::Ebpf { bpffs, .. } => {
                let maps = PinnedMaps::open(bpffs)?;
                let frontends = maps.frontends()?;
                let by_vip: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> = frontends
                    .into_iter()
                    .map(|f| (f.ip, f.slots.iter().flatten().map(|b| b.ip).collect()))
                    .collect();
                for (i, s) in services.iter().enumerate() {
                    let mut got = by_vip.get(&s.cluster_ip).cloned().unwrap_or_default();
                    got.sort();
                    let mut want = s.endpoints.to_vec();
                    want.sort();
                    if got != want {
                        bail!(
                            "{}: the maps hold backends {got:?}, not {want:?}",
                            service_name(i)
                        );
                    }
                }
            }
            Mode::Iptables(b) => {
                let out = Command::new(b.save()).args(["-t", "nat"]).output()?;
                if !out.status.success() {
                    bail!("{} failed", b.save());
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let mut chains: HashMap<&str, Vec<&str>> = HashMap::new();
                for l in text.lines() {
                    if let Some(rest) = l.strip_prefix("-A ")
                        && let Some((chain, rule)) = rest.split_once(' ')
                    {
                        chains.entry(chain).or_default().push(rule);
                    }
                }
                let rules_of = |chain: &str| chains.get(chain).cloned().unwrap_or_default();
                let entries: HashSet<(String, String)> = rules_of("KUBE-SERVICES")
                    .iter()
                    .filter_map(|r| {
                        let vip = r.strip_prefix("-d ")?.split_once('/')?.0;
                        let target = r.rsplit_once("-j ")?.1;
                        Some((vip.to_string(), target.to_string()))
                    })
                    .collect();
                for (i, s) in services.iter().enumerate() {
                    let svc = rules::svc_chain(&port_name(i));
                    if !entries.contains(&(s.cluster_ip.to_string(), svc.clone())) {
                        bail!(
                            "{}: no KUBE-SERVICES rule for {}",
                            service_name(i),
                            s.cluster_ip
                        );
                    }
                    let svc_rules = rules_of(&svc);
                    for ep in s.endpoints {
                        let sep = rules::sep_chain(&port_name(i), ep, TARGET_PORT);
                        let jump = format!("-j {sep}");
                        if !svc_rules.iter().any(|r| r.ends_with(&jump)) {
                            bail!("{}: {svc} does not jump to {sep} ({ep})", service_name(i));
                        }
                        let dnat = format!("--to-destination {ep}:{TARGET_PORT}");
                        if !rules_of(&sep).iter().any(|r| r.contains(&dnat)) {
                            bail!("{}: {sep} does not DNAT to {ep}", service_name(i));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A check of one service in the kernel, repeated until the change is visible.
    fn probe(&self) -> Result<Probe> {
        Ok(match self {
            Mode::Ebpf { bpffs, .. } => Probe::Maps(Box::new(PinnedMaps::open(bpffs)?)),
            Mode::Iptables(b) => Probe::Iptables(*b),
        })
    }
}

enum Probe {
    Maps(Box<PinnedMaps>),
    Iptables(Backend),
}

impl Probe {
    /// A map lookup (polled with short sleeps), not a process per poll.
    fn is_cheap(&self) -> bool {
        matches!(self, Probe::Maps(_))
    }

    /// Whether service `i` now sends to `new` and no longer to `old`.
    fn switched(&self, i: usize, vip: Ipv4Addr, old: Ipv4Addr, new: Ipv4Addr) -> Result<bool> {
        match self {
            Probe::Maps(maps) => {
                let Some(fe) = maps.frontend(vip, SERVICE_PORT, Protocol::Tcp.number())? else {
                    return Ok(false);
                };
                let ips: Vec<Ipv4Addr> = fe.slots.iter().flatten().map(|b| b.ip).collect();
                Ok(ips.contains(&new) && !ips.contains(&old))
            }
            Probe::Iptables(b) => {
                let name = port_name(i);
                let out = Command::new(b.iptables())
                    .args(["-w", "-t", "nat", "-S", &rules::svc_chain(&name)])
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "{} -S: {}",
                        b.iptables(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let jumps = |ip| {
                    let sep = rules::sep_chain(&name, ip, TARGET_PORT);
                    text.lines().any(|l| l.ends_with(&format!("-j {sep}")))
                };
                Ok(jumps(new) && !jumps(old))
            }
        }
    }
}

/// What one mode measured.
struct ModeResult {
    name: String,
    open: Duration,
    full_sync: Duration,
    initial_list: Duration,
    state_build: Duration,
    dataplane_write: Duration,
    changes: Vec<Duration>,
    /// The same changes, until the runner's sync returned (its metrics).
    synced: Vec<Duration>,
    /// Medians of the runner's sync after a change: state build, dataplane write.
    change_build: Duration,
    change_write: Duration,
    /// Mean time of one poll of the kernel (the resolution of the change latencies).
    poll: Duration,
}

async fn measure_mode(
    name: &str,
    mode: &Mode,
    client: &kube::Client,
    services: &mut [BenchService],
    expected: usize,
    changes: usize,
    replacements: &mut usize,
) -> Result<ModeResult> {
    let n = services.len();
    eprintln!("[{name}] opening the dataplane…");
    let t = Instant::now();
    let dataplane = mode.open()?;
    let open = t.elapsed();
    let metrics = Arc::new(ProxyMetrics::default());
    eprintln!(
        "[{name}] starting the proxy; waiting for {expected} service ports in the dataplane…"
    );
    let start = Instant::now();
    let mut runner = AbortOnDrop(tokio::spawn(runner::run(
        client.clone(),
        NODE.into(),
        dataplane,
        metrics.clone(),
    )));
    let full_sync = wait_for_full_sync(name, &metrics, &runner, expected, start).await?;
    let m = metrics.snapshot();
    let initial_list = Duration::from_secs_f64(m.initial_list_seconds.unwrap_or(0.0));
    let state_build = Duration::from_secs_f64(m.last_state_build_seconds);
    let dataplane_write = Duration::from_secs_f64(m.last_sync_seconds - m.last_state_build_seconds);
    eprintln!(
        "[{name}] full sync of {n} services: {:.1} ms (list/watch {:.1} ms, build state {:.1} ms, dataplane {:.1} ms)",
        ms(full_sync),
        ms(initial_list),
        ms(state_build),
        ms(dataplane_write)
    );
    eprintln!("[{name}] checking every service in the dataplane…");
    {
        let check = services.to_vec();
        let mode = mode_for_blocking(mode);
        tokio::task::spawn_blocking(move || mode.verify(&check)).await??;
    }

    eprintln!("[{name}] timing {changes} endpoint changes…");
    let probe = Arc::new(mode.probe()?);
    let mut times = time_changes(
        name,
        client,
        services,
        changes,
        replacements,
        &metrics,
        probe,
    )
    .await?;
    // Stopped (and its dataplane handles closed) before the next mode clears the kernel.
    runner.0.abort();
    let _ = (&mut runner.0).await;
    times.kernel.sort();
    times.synced.sort();
    times.builds.sort();
    times.writes.sort();
    Ok(ModeResult {
        name: name.into(),
        open,
        full_sync,
        initial_list,
        state_build,
        dataplane_write,
        change_build: percentile(&times.builds, 0.5),
        change_write: percentile(&times.writes, 0.5),
        poll: times.poll_time / times.polls.max(1) as u32,
        changes: times.kernel,
        synced: times.synced,
    })
}

/// Until the runner's dataplane holds all `expected` service ports: the time since `start`.
async fn wait_for_full_sync(
    name: &str,
    metrics: &ProxyMetrics,
    runner: &AbortOnDrop,
    expected: usize,
    start: Instant,
) -> Result<Duration> {
    let mut last_report = Instant::now();
    loop {
        let m = metrics.snapshot();
        if m.syncs > 0 && m.services == expected {
            return Ok(start.elapsed());
        }
        if runner.0.is_finished() {
            bail!("the proxy runner stopped");
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("the dataplane did not hold {expected} service ports after 900 s: {m:?}");
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "[{name}]   {:.0?}: listed: {}, sync errors: {}",
                start.elapsed(),
                m.initial_list_seconds
                    .map_or("not yet".into(), |s| format!("in {s:.2} s")),
                m.errors
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// What the endpoint changes of one mode took.
struct ChangeTimes {
    /// Until the kernel sent to the new endpoint.
    kernel: Vec<Duration>,
    /// Until the runner's sync returned.
    synced: Vec<Duration>,
    /// The runner's last sync after each change: building the state, writing the dataplane.
    builds: Vec<Duration>,
    writes: Vec<Duration>,
    /// Polls of the kernel, and the time they took.
    polls: u64,
    poll_time: Duration,
}

impl ChangeTimes {
    fn with_capacity(changes: usize) -> ChangeTimes {
        ChangeTimes {
            kernel: Vec::with_capacity(changes),
            synced: Vec::with_capacity(changes),
            builds: Vec::with_capacity(changes),
            writes: Vec::with_capacity(changes),
            polls: 0,
            poll_time: Duration::ZERO,
        }
    }
}

/// Replaces one endpoint of a service `changes` times, timing each change until the kernel
/// and the runner show it.
async fn time_changes(
    name: &str,
    client: &kube::Client,
    services: &mut [BenchService],
    changes: usize,
    replacements: &mut usize,
    metrics: &ProxyMetrics,
    probe: Arc<Probe>,
) -> Result<ChangeTimes> {
    let n = services.len();
    let mut times = ChangeTimes::with_capacity(changes);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let mut syncs_before = metrics.snapshot().syncs;
    for c in 0..changes {
        // Spread over the services, not in creation order.
        let i = (c * 7919 + 13) % n;
        let j = c % 2;
        let old = services[i].endpoints[j];
        let new = replacement_ip(*replacements);
        *replacements += 1;
        let mut eps = services[i].endpoints;
        eps[j] = new;
        let patch = json!({"endpoints": slice_endpoints(&eps)});
        slices
            .patch(
                &format!("{}-bench", service_name(i)),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("changing an endpoint of {}", service_name(i)))?;
        let written = Instant::now();
        let kernel =
            poll_until_switched(probe.clone(), i, services[i].cluster_ip, old, new, written);
        let synced = wait_for_sync(metrics, syncs_before, written);
        let (kernel, synced) = tokio::join!(kernel, synced);
        let (latency, n_polls, polling) = kernel??;
        let after = metrics.snapshot();
        if after.syncs > syncs_before {
            times
                .builds
                .push(Duration::from_secs_f64(after.last_state_build_seconds));
            times.writes.push(Duration::from_secs_f64(
                after.last_sync_seconds - after.last_state_build_seconds,
            ));
        }
        syncs_before = after.syncs;
        times.synced.push(synced);
        services[i].endpoints = eps;
        times.kernel.push(latency);
        times.polls += n_polls;
        times.poll_time += polling;
        if (c + 1) % (changes / 10).max(1) == 0 {
            let mut sorted = times.kernel.clone();
            sorted.sort();
            eprintln!(
                "[{name}]   {}/{changes}: p50 {:.1} ms, max {:.1} ms",
                c + 1,
                ms(percentile(&sorted, 0.5)),
                ms(*sorted.last().expect("one at least"))
            );
        }
        // Let the runner settle (its post-sync wake-up) before the next change.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(times)
}

/// Polls the kernel until service `i` sends to `new` instead of `old`: the time since
/// `written`, the number of polls and the time they took.
fn poll_until_switched(
    probe: Arc<Probe>,
    i: usize,
    vip: Ipv4Addr,
    old: Ipv4Addr,
    new: Ipv4Addr,
    written: Instant,
) -> tokio::task::JoinHandle<Result<(Duration, u64, Duration)>> {
    tokio::task::spawn_blocking(move || {
        let mut n_polls = 0u64;
        let mut polling = Duration::ZERO;
        loop {
            let t = Instant::now();
            let done = probe.switched(i, vip, old, new)?;
            polling += t.elapsed();
            n_polls += 1;
            if done {
                return anyhow::Ok((written.elapsed(), n_polls, polling));
            }
            if written.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} did not switch {old} → {new} within 30 s",
                    service_name(i)
                );
            }
            // Leave the CPU to the proxy between the (cheap) map lookups.
            if probe.is_cheap() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    })
}

/// The runner's own view of a change: the time since `written` until a sync after it
/// returned.
async fn wait_for_sync(metrics: &ProxyMetrics, syncs_before: u64, written: Instant) -> Duration {
    loop {
        // (A failed sync never counts: give up with the kernel probe's limit.)
        if metrics.snapshot().syncs > syncs_before || written.elapsed() > Duration::from_secs(30) {
            return written.elapsed();
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// A `Mode` to move into a blocking task (the eBPF one only needs its paths).
fn mode_for_blocking(mode: &Mode) -> Mode {
    match mode {
        Mode::Ebpf { bpffs, cgroup } => Mode::Ebpf {
            bpffs: bpffs.clone(),
            cgroup: cgroup.clone(),
        },
        Mode::Iptables(b) => Mode::Iptables(*b),
    }
}

/// Remove what a mode left in the kernel, so the next mode starts from nothing.
async fn clear_mode(mode: &Mode, sandbox: &Sandbox) -> Result<()> {
    match mode {
        Mode::Ebpf { .. } => sandbox.remove_ebpf(),
        // Both backends (the other one is empty by then, so this is quick).
        Mode::Iptables(Backend::Legacy) => {
            tokio::task::spawn_blocking(IptablesDataplane::cleanup_all).await??;
            Ok(())
        }
        // The last mode: its tables go with the network namespace (removing 10,000
        // services' chains from nft takes longer than the whole benchmark).
        Mode::Iptables(Backend::Nft) => Ok(()),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn tool_version(cmd: &str) -> String {
    Command::new(cmd)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{cmd}: not installed"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn bench(args: &Args, sandbox: &Sandbox) -> Result<String> {
    let mut modes = Vec::new();
    for m in MODES {
        if args.modes.iter().any(|a| a == m) {
            modes.push((m, Mode::parse(m, sandbox)?));
        }
    }
    for a in &args.modes {
        Mode::parse(a, sandbox)?;
    }
    if args.services == 0 {
        bail!("--services must be at least 1");
    }
    let load_before = load_average();
    eprintln!("starting skiff-control (embedded store) in the bench's network namespace…");
    let cp = ControlPlane::start(StoreBackend::Embedded)?;
    let client = {
        let text = std::fs::read_to_string(&cp.kubeconfig)?;
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        kube::Client::try_from(config)?
    };
    eprintln!(
        "creating {} Services and EndpointSlices (2 endpoints each)…",
        args.services
    );
    // The proxy programs every service port, the apiserver's own `kubernetes` service too.
    let existing: usize = Api::<Service>::all(client.clone())
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter_map(|s| s.spec.as_ref()?.ports.as_ref().map(Vec::len))
        .sum();
    let t = Instant::now();
    let mut services = create_objects(&client, args.services).await?;
    let created = t.elapsed();
    eprintln!("created in {created:.1?}");

    let mut results = Vec::new();
    let mut skipped = Vec::new();
    let mut replacements = 0;
    for (name, mode) in &modes {
        if let Some(why) = mode.unavailable() {
            eprintln!("[{name}] skipped: {why}");
            skipped.push(format!("{name}: {why}"));
            continue;
        }
        let r = measure_mode(
            name,
            mode,
            &client,
            &mut services,
            existing + args.services,
            args.changes,
            &mut replacements,
        )
        .await;
        clear_mode(mode, sandbox)
            .await
            .with_context(|| format!("removing what {name} programmed"))?;
        results.push(r.with_context(|| format!("mode {name}"))?);
    }
    let load_after = load_average();
    Ok(report(
        args,
        &results,
        &skipped,
        created,
        &load_before,
        &load_after,
    ))
}

fn report(
    args: &Args,
    results: &[ModeResult],
    skipped: &[String],
    created: Duration,
    load_before: &str,
    load_after: &str,
) -> String {
    let n = args.services;
    let mut md = format!(
        "# Service proxy benchmark: API → dataplane\n\n\
         Command: `{}`  \n{}; iptables: {} / {}; load average before / after: {} / {}; \
         {} build.\n\n\
         Setup: one `skiff-control` (embedded store) with {n} selector-less Services (one TCP \
         port each) and {n} EndpointSlices of 2 ready endpoints, created through the API in \
         {:.1} s; the agent's proxy runner (reflectors on list/watch → state → dataplane, as \
         in `skiff-agent run`) started on an empty dataplane, in a network namespace, cgroup \
         and bpffs directory of the benchmark's own.\n\n\
         ## Full sync: proxy start until the dataplane holds all {n} services\n\n\
         | mode | start → all programmed | list/watch (initial list) | build state | write dataplane | open dataplane (before start) |\n\
         |---|---|---|---|---|---|\n",
        args.command,
        skiff_tests::provenance(),
        tool_version("iptables"),
        tool_version("iptables-legacy"),
        load_before,
        load_after,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        created.as_secs_f64(),
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |\n",
            r.name,
            ms(r.full_sync),
            ms(r.initial_list),
            ms(r.state_build),
            ms(r.dataplane_write),
            ms(r.open),
        ));
    }
    md.push_str(&format!(
        "\n## Endpoint change → dataplane updated ({} changes per mode)\n\n\
         From the EndpointSlice PATCH returning until the kernel sends the service to the new \
         endpoint and no longer to the old one (polled in a loop; the last column is the time \
         one poll takes, i.e. the resolution). For comparison, the same changes until the \
         runner's sync returned (seen in its metrics, polled every 0.5 ms).\n\n\
         | mode | p50 | p90 | p99 | max | runner's sync returned: p50 / p99 | of which, median: build state / write dataplane | one poll of the kernel |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.changes
    ));
    for r in results {
        let s = &r.changes;
        md.push_str(&format!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.2} ms ({}) |\n",
            r.name,
            ms(percentile(s, 0.5)),
            ms(percentile(s, 0.9)),
            ms(percentile(s, 0.99)),
            ms(s.last().copied().unwrap_or_default()),
            ms(percentile(&r.synced, 0.5)),
            ms(percentile(&r.synced, 0.99)),
            ms(r.change_build),
            ms(r.change_write),
            ms(r.poll),
            if r.name == "ebpf" {
                "lookup of the frontend, its slots and backends in the pinned maps, then 0.2 ms sleep"
            } else {
                "`iptables -t nat -S KUBE-SVC-…`, a process per poll"
            },
        ));
    }
    for s in skipped {
        md.push_str(&format!("\nSkipped: {s}\n"));
    }
    md
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("proxy-bench: needs root (network namespace, BPF, iptables)");
        return std::process::ExitCode::FAILURE;
    }
    // A network namespace for this process alone, entered before any thread exists so every
    // thread and child (skiff-control, iptables-restore) is in it; the kernel removes it when
    // the process exits, however it exits.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        eprintln!("proxy-bench: unshare(CLONE_NEWNET): {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = (|| -> Result<String> {
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        if !st.success() {
            bail!("ip link set lo up: {st}");
        }
        let sandbox = Sandbox::create()?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = bench(&args, &sandbox) => r,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
                _ = term.recv() => bail!("terminated"),
            }
        })
        // `sandbox` is dropped here, after the runtime's tasks stopped using it.
    })();
    match result {
        Ok(md) => {
            println!("{md}");
            if let Some(path) = &args.out {
                if let Err(e) = std::fs::write(path, &md) {
                    eprintln!("proxy-bench: writing {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxy-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
