//! `cargo xtask bench`: service latency through the ClusterIP against the pod IP, per proxy
//! mode and number of Services (tests/src/bin/latency-bench.rs does the work).

use anyhow::Result;

use crate::Workspace;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Proxy modes, comma-separated.
    #[arg(long, default_value = "ebpf,iptables")]
    modes: String,
    /// Numbers of Services (the measured one included), comma-separated.
    #[arg(long, default_value = "1,100,1000,5000,10000")]
    services: String,
    /// Requests per target (pod IP, ClusterIP) and kind (new connection, keep-alive) per point.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Rounds the requests are interleaved over (default: chunks of 1,000).
    #[arg(long)]
    rounds: Option<usize>,
    /// The CPU the client is pinned to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
}

pub fn bench_latency(ws: &Workspace, args: &BenchArgs) -> Result<()> {
    let mut options = vec![
        format!("--modes={}", args.modes),
        format!("--services={}", args.services),
        format!("--requests={}", args.requests),
    ];
    if let Some(rounds) = args.rounds {
        options.push(format!("--rounds={rounds}"));
    }
    if let Some(cpu) = args.cpu {
        options.push(format!("--cpu={cpu}"));
    }
    let command = format!("cargo xtask bench {}", options.join(" "));
    crate::bench::build_and_run(
        ws,
        "latency-bench",
        "docs/benchmarks.md",
        &command,
        &options,
    )
}
