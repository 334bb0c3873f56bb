//! `portforward-bench`: `kubectl port-forward` throughput on a one-node cluster from the harness.
//!
//! A busybox pod serves a file of random bytes with `httpd`. From the node's network namespace
//! the benchmark downloads it over plain HTTP three ways, rotating each round: straight to the
//! pod's IP (the ceiling: the bridge and veth only), through the newest kubectl's
//! port-forward (SPDY tunnelled in a WebSocket: kubectl → API server → agent → the pod's
//! namespace) and through Debian's kubectl 1.20 (plain SPDY/3.1). Every download is checked
//! for its length. Run through `cargo xtask bench-portforward`, which writes its section of
//! docs/benchmarks.md.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use skiff_tests::Kubectl;
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::port_forward::{Forward, in_netns};
use skiff_tests::test_image::IMAGE;
use skiff_tests::{print_report_section, report_head, wait_for};

#[derive(Parser)]
#[command(about = "kubectl port-forward throughput against a direct connection to the pod")]
struct Args {
    /// Size of the file downloaded, in MiB.
    #[arg(long, default_value_t = 64)]
    mib: usize,
    /// Downloads per way.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-portforward")]
    command: String,
}

/// One way to reach the pod's port from the node's namespace.
struct Way {
    label: String,
    addr: (String, u16),
    mib_per_s: Vec<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.mib > 0 && args.rounds > 0,
        "--mib and --rounds must be positive"
    );
    let started = Instant::now();
    eprintln!("starting a one-node cluster…");
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    let node = c.nodes().first().context("a node")?.clone();
    let netns = c.node(&node).netns_path();
    let bytes = args.mib << 20;
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: blob, namespace: default}}\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: main\n    image: {IMAGE}\n    command: [sh, -c, 'mkdir -p /www; \
         head -c {bytes} /dev/urandom > /www/blob.tmp; mv /www/blob.tmp /www/blob; \
         exec httpd -f -p 8080 -h /www']\n"
    ))?;
    c.wait_pod_running("default", "blob", Duration::from_secs(90))?;
    let pod_ip = c.jsonpath("pod", "blob", ".status.podIP")?;
    wait_for("the pod serving its file", Duration::from_secs(90), || {
        Ok(download(netns.clone(), (pod_ip.clone(), 8080), bytes).ok())
    })?;

    let newest = Kubectl::newest()?;
    let old = Kubectl::debian_120()?;
    let mut forwards = Vec::new();
    let mut ways = vec![Way {
        label: "direct to the pod IP (no port-forward)".into(),
        addr: (pod_ip, 8080),
        mib_per_s: Vec::new(),
    }];
    for (kubectl, local, how) in [
        (&newest, 18080u16, "SPDY in a WebSocket"),
        (&old, 18090, "SPDY/3.1"),
    ] {
        let mapping = format!("{local}:8080");
        let mut fwd = Forward::start(&c, &node, kubectl, &["pod/blob", &mapping])?;
        fwd.wait_listening(local)?;
        forwards.push(fwd);
        ways.push(Way {
            label: format!("kubectl 1.{} port-forward ({how})", kubectl.minor),
            addr: ("127.0.0.1".into(), local),
            mib_per_s: Vec::new(),
        });
    }
    // Warm each way once (kubectl opens its stream to the agent on the first connection).
    for way in &ways {
        download(netns.clone(), way.addr.clone(), bytes)?;
    }
    let n = ways.len();
    for round in 0..args.rounds {
        for k in 0..n {
            let way = &mut ways[(round + k) % n];
            let took = download(netns.clone(), way.addr.clone(), bytes)
                .with_context(|| way.label.clone())?;
            way.mib_per_s.push(args.mib as f64 / took.as_secs_f64());
        }
        eprint!("\rround {}/{}", round + 1, args.rounds);
    }
    eprintln!();
    drop(forwards);
    let md = report(&args, &mut ways, started.elapsed());
    print_report_section(&md, args.out.as_deref(), "bench-portforward")?;
    Ok(())
}

/// GET /blob from `addr` in `netns` over HTTP/1.0: the time from connecting until the last of
/// its `bytes` bytes arrived (and the connection closed).
fn download(netns: PathBuf, addr: (String, u16), bytes: usize) -> Result<Duration> {
    in_netns(netns, move || {
        let start = Instant::now();
        let mut s = TcpStream::connect((addr.0.as_str(), addr.1))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"GET /blob HTTP/1.0\r\nHost: blob\r\n\r\n")?;
        let mut buf = vec![0u8; 256 << 10];
        let (mut head, mut body) = (Vec::new(), 0usize);
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if body == 0 && !head.ends_with(b"\r\n\r\n") {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    body = head.len() - end - 4;
                    head.truncate(end + 4);
                }
            } else {
                body += n;
            }
        }
        let took = start.elapsed();
        let status = String::from_utf8_lossy(&head);
        ensure!(
            status.starts_with("HTTP/1.") && status.contains(" 200 "),
            "{status}"
        );
        ensure!(body == bytes, "{body} of {bytes} bytes");
        Ok(took)
    })
}

fn report(args: &Args, ways: &mut [Way], took: Duration) -> String {
    let mut md = report_head("Port-forward throughput", &args.command, took);
    md.push_str(&format!(
        "One node of the test harness; a busybox pod serves {mib} MiB of random bytes with `httpd`. From the node's network namespace a client downloads it over HTTP/1.0 ({rounds} times each way after one warm-up, the ways rotating each round; every length checked): straight to the pod's IP, and through `kubectl port-forward` listening in the same namespace (kubectl → API server → agent → the pod's network namespace). Throughput = size ÷ time from connect to the last byte.\n\n| way | MiB/s p50 | min | max | of direct (p50) |\n|---|---:|---:|---:|---:|\n",
        mib = args.mib,
        rounds = args.rounds
    ));
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let direct = median(&mut ways[0].mib_per_s);
    for way in ways.iter_mut() {
        let p50 = median(&mut way.mib_per_s);
        let (min, max) = (
            way.mib_per_s.first().copied().unwrap_or(0.0),
            way.mib_per_s.last().copied().unwrap_or(0.0),
        );
        md.push_str(&format!(
            "| {} | {p50:.0} | {min:.0} | {max:.0} | {:.2}× |\n",
            way.label,
            p50 / direct.max(f64::EPSILON)
        ));
    }
    md
}
