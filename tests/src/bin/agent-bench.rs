//! `agent-bench`: pod start latency and agent memory on one node.
//!
//! On a one-node cluster from the harness (a network namespace running a release
//! `skiff-agent`), post `--pods` busybox pods at once (pinned to the node) and time each from
//! its POST until the API shows it Running (sandbox, veth, address, overlay, container
//! process, status report). Then read the agent's RSS with the pods running, and the memory
//! of the per-pod processes (pause and shim). Run through `cargo xtask bench-agent`, which
//! builds release binaries and writes docs/benchmarks-agent.md.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::rss_kib;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    pods: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-agent")]
    command: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Proportional set size (shared pages split among their users), KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Count and total PSS of the processes whose command line is `skiff-agent <what> …`.
fn pss_of(what: &str) -> (usize, u64) {
    let mut n = 0;
    let mut kib = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.len() > 1 && args[0].ends_with(b"skiff-agent") && args[1] == what.as_bytes() {
            n += 1;
            kib += pss_kib(pid).unwrap_or(0);
        }
    }
    (n, kib)
}

/// What `main` measured, for the report.
struct Measured {
    /// POST → Running of every pod, sorted.
    latencies: Vec<Duration>,
    /// First POST until the last pod was Running.
    all_running: Duration,
    /// The agent's RSS (MiB) idle and with the pods, and its PSS with the pods.
    rss_idle: f64,
    rss_loaded: f64,
    agent_pss: f64,
    /// Per-pod processes: count and total PSS (KiB) of pause and of shim.
    pause: (usize, u64),
    shim: (usize, u64),
    /// Deleting every pod until the API lists none.
    deleted: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    eprintln!("starting a one-node cluster…");
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    let node = cluster.nodes()[0].clone();
    let client = cluster.client().await?;
    let agent_pid = cluster.agent_pid(&node);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(agent_pid).unwrap_or(0) as f64 / 1024.0;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Watch first, so no transition to Running is missed.
    let running = watch_running(pods.clone(), args.pods);
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("posting {} pods…", args.pods);
    let start = Instant::now();
    let posted = post_pods(&pods, &node, args.pods).await?;
    let seen = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .context("pods did not all become Running within 120 s")???;
    let all_running = seen
        .values()
        .max()
        .map(|t| t.duration_since(start))
        .unwrap_or_default();
    let mut latencies: Vec<Duration> = posted
        .iter()
        .filter_map(|(name, t)| seen.get(name).map(|r| r.duration_since(*t)))
        .collect();
    if latencies.len() != args.pods {
        bail!(
            "only {} of {} pods became Running",
            latencies.len(),
            args.pods
        );
    }
    latencies.sort();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_loaded = rss_kib(agent_pid).unwrap_or(0) as f64 / 1024.0;
    let agent_pss = pss_kib(agent_pid).unwrap_or(0) as f64 / 1024.0;
    let pause = pss_of("pause");
    let shim = pss_of("shim");
    eprintln!(
        "start latency p50 {:.2?} p99 {:.2?}; all Running after {all_running:.2?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    eprintln!("deleting the pods…");
    let deleted = delete_pods(&pods).await?;
    let md = report(
        &args,
        &Measured {
            latencies,
            all_running,
            rss_idle,
            rss_loaded,
            agent_pss,
            pause,
            shim,
            deleted,
        },
    );
    skiff_tests::print_report(&md, args.out.as_deref())?;
    drop(cluster);
    Ok(())
}

/// Watches the bench pods until `want` of them are Running: when each was first seen so.
fn watch_running(
    pods: Api<Pod>,
    want: usize,
) -> tokio::task::JoinHandle<Result<HashMap<String, Instant>>> {
    tokio::spawn(async move {
        let mut seen = HashMap::new();
        let stream =
            watcher(pods, watcher::Config::default().labels("bench=start")).applied_objects();
        futures::pin_mut!(stream);
        while let Some(p) = stream.try_next().await? {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                let name = p.metadata.name.clone().unwrap_or_default();
                seen.entry(name).or_insert_with(Instant::now);
                if seen.len() >= want {
                    break;
                }
            }
        }
        Ok(seen)
    })
}

/// Posts `count` busybox pods bound to `node`, 16 at a time: when each POST started.
async fn post_pods(pods: &Api<Pod>, node: &str, count: usize) -> Result<HashMap<String, Instant>> {
    futures::stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            let node = node.to_string();
            async move {
                let name = format!("start-{i:04}");
                let p: Pod = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"bench": "start"}},
                    "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "main", "image": "skiff.test/busybox:1",
                            "command": ["sleep", "3600"]}]}}))?;
                let t = Instant::now();
                pods.create(&PostParams::default(), &p).await?;
                anyhow::Ok((name, t))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}

/// Deletes the bench pods; the time until the API lists none (at most about 120 s).
async fn delete_pods(pods: &Api<Pod>) -> Result<Duration> {
    let del_start = Instant::now();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=start"),
    )
    .await?;
    loop {
        let left = pods
            .list(&ListParams::default().labels("bench=start"))
            .await?
            .items
            .len();
        if left == 0 || del_start.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(del_start.elapsed())
}

fn report(args: &Args, m: &Measured) -> String {
    let (p50, p90, p99) = (
        percentile(&m.latencies, 0.5),
        percentile(&m.latencies, 0.9),
        percentile(&m.latencies, 0.99),
    );
    let ((n_pause, pause_kib), (n_shim, shim_kib)) = (m.pause, m.shim);
    format!(
        "# Node agent benchmark: pod start latency and memory\n\n\
         Command: `{}`  \n{}; release build; one node (a network namespace) running `skiff-agent`, \
         control plane on the embedded store; image `skiff.test/busybox:1` (busybox-static), \
         command `sleep 3600`; pods posted by 16 concurrent clients with `spec.nodeName` set.\n\n\
         | measure | result |\n|---|---|\n\
         | {} pods: POST → Running, p50 / p90 / p99 | {:.0} / {:.0} / {:.0} ms |\n\
         | first POST until all {} Running (goal < 10 s) | {:.2} s |\n\
         | skiff-agent RSS idle / with {} pods (PSS with pods) | {:.1} / {:.1} MiB ({:.1} MiB) |\n\
         | per-pod processes, PSS total (shared pages split): {} pause, {} shim | {:.1} MiB, {:.1} MiB |\n\
         | delete all {} (grace 0) until the agent has removed every pod's processes, veth, address, cgroup and files | {:.2} s |\n",
        args.command,
        skiff_tests::provenance(),
        args.pods,
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        args.pods,
        m.all_running.as_secs_f64(),
        args.pods,
        m.rss_idle,
        m.rss_loaded,
        m.agent_pss,
        n_pause,
        n_shim,
        pause_kib as f64 / 1024.0,
        shim_kib as f64 / 1024.0,
        args.pods,
        m.deleted.as_secs_f64(),
    )
}
