//! `exec-bench`: exec round trips on a one-node cluster from the harness.
//!
//! A pod runs `sleep`; the benchmark times `kubectl exec shell -- true` (the process a user
//! runs, start to exit: kubeconfig loading, discovery, TLS, the upgrade, the agent's
//! exec-in, the exit status) and a WebSocket exec of the same command made directly on the
//! API (`v5.channel.k8s.io`, admin credentials, a fresh connection each time: from the
//! request until the `Success` status on the error channel), interleaved in rounds. Run
//! through `cargo xtask bench-exec`, which writes its section of docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use clap::Parser;
use hyper_util::rt::TokioIo;
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::test_image::IMAGE;
use skiff_tests::{print_report_section, report_head, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "Exec round-trip benchmark: kubectl exec and a WebSocket exec")]
struct Args {
    /// Execs of each kind.
    #[arg(long, default_value_t = 200)]
    execs: usize,
    /// Execs per chunk (the kinds alternate chunk by chunk).
    #[arg(long, default_value_t = 20)]
    chunk: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-exec")]
    command: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.chunk > 0, "--chunk must be positive");
    let started = Instant::now();
    eprintln!("starting a one-node cluster…");
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: shell, namespace: default}}\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - {{name: main, image: {IMAGE}, command: [sleep, '3600']}}\n"
    ))?;
    wait_for("the pod to run", Duration::from_secs(90), || {
        let phase = cluster.kubectl(&["get", "pod", "shell", "-o", "jsonpath={.status.phase}"])?;
        Ok((phase == "Running").then_some(()))
    })?;
    let client = cluster.client().await?;
    // Warm both paths (the first kubectl run caches discovery; the agent's first exec-in).
    for _ in 0..3 {
        kubectl_exec(&cluster)?;
        websocket_exec(&client).await?;
    }
    let (mut kubectl, mut websocket) = (Vec::new(), Vec::new());
    let rounds = args.execs.div_ceil(args.chunk);
    for round in 0..rounds {
        let n = args.chunk.min(args.execs - round * args.chunk);
        for kind in 0..2 {
            for _ in 0..n {
                if (kind + round) % 2 == 0 {
                    kubectl.push(kubectl_exec(&cluster)?);
                } else {
                    websocket.push(websocket_exec(&client).await?);
                }
            }
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();
    let md = report(&args, &mut kubectl, &mut websocket, started.elapsed());
    print_report_section(&md, args.out.as_deref(), "bench-exec")?;
    Ok(())
}

/// `kubectl exec shell -- true`, start to exit.
fn kubectl_exec(c: &Cluster) -> Result<Duration> {
    let mut cmd = c.kubectl_command()?;
    cmd.args(["exec", "shell", "--", "true"]);
    let start = Instant::now();
    let out = cmd.output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "kubectl exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// A v5.channel.k8s.io exec of `true` on a new connection: the upgrade request until the
/// status on the error channel (3) says Success.
async fn websocket_exec(client: &kube::Client) -> Result<Duration> {
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let req = http::Request::builder()
        .method("GET")
        .uri("/api/v1/namespaces/default/pods/shell/exec?command=true&stdout=true&stderr=true")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", key)
        .header("Sec-WebSocket-Protocol", "v5.channel.k8s.io")
        .body(kube::client::Body::empty())?;
    let start = Instant::now();
    let resp = client.send(req).await?;
    ensure!(
        resp.status() == http::StatusCode::SWITCHING_PROTOCOLS,
        "exec upgrade answered {}",
        resp.status()
    );
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.context("the upgrade")?);
    loop {
        let (opcode, payload) = read_frame(&mut io).await?;
        match opcode {
            // Binary: channel byte, then data; the status comes on channel 3.
            2 if payload.first() == Some(&3) => {
                let took = start.elapsed();
                let status: serde_json::Value = serde_json::from_slice(&payload[1..])?;
                ensure!(status["status"] == "Success", "exec status: {status}");
                // A masked close frame (code 1000), as a client must send.
                let _ = io.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).await;
                return Ok(took);
            }
            8 => bail!("the server closed the exec without a status"),
            _ => {}
        }
    }
}

/// One server frame (unmasked): its opcode and payload.
async fn read_frame(io: &mut (impl AsyncReadExt + Unpin)) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        n => u64::from(n),
    };
    ensure!(head[1] & 0x80 == 0, "a masked frame from the server");
    ensure!(len <= 1 << 20, "a frame of {len} bytes");
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await?;
    Ok((head[0] & 0x0f, payload))
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(
    args: &Args,
    kubectl: &mut [Duration],
    websocket: &mut [Duration],
    took: Duration,
) -> String {
    let mut md = report_head("Exec round trips", &args.command, took);
    md.push_str(&format!(
        "One node of the test harness; a busybox pod running `sleep`. *kubectl exec* = the newest kubectl's `kubectl exec shell -- true` as a user runs it, process start to exit (kubeconfig, TLS, discovery cache, WebSocket upgrade through the API server to the agent, the agent's `exec-in` joining the container's namespaces, the exit status). *WebSocket exec* = the same exec made directly on the API server on a new connection with the admin's credentials (`v5.channel.k8s.io`), from the upgrade request until the `Success` status on the error channel. {n} of each, in chunks of {c} alternating.\n\n| kind | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |\n|---|---:|---:|---:|---:|\n",
        n = args.execs,
        c = args.chunk
    ));
    for (kind, samples) in [("kubectl exec", kubectl), ("WebSocket exec", websocket)] {
        samples.sort_unstable();
        md.push_str(&format!(
            "| {kind} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            percentile_ms(samples, 0.5),
            percentile_ms(samples, 0.9),
            percentile_ms(samples, 0.99),
            percentile_ms(samples, 1.0)
        ));
    }
    md
}
