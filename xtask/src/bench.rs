//! Benchmark commands: release builds, figures printed and written to docs/.

use anyhow::Result;

use crate::Workspace;
use crate::cmd::{cargo, run};

pub fn bench_api(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(
        ws,
        "api-bench",
        "bench-api",
        "docs/benchmarks-api.md",
        extra,
    )
}

/// `cargo xtask bench-control`: Deployment → bound pods, scheduler throughput.
pub fn bench_control(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(
        ws,
        "control-bench",
        "bench-control",
        "docs/benchmarks-control.md",
        extra,
    )
}

/// `cargo xtask bench-agent`: pod start latency and agent memory on one node.
pub fn bench_agent(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(
        ws,
        "agent-bench",
        "bench-agent",
        "docs/benchmarks-agent.md",
        extra,
    )
}

/// `cargo xtask bench-proxy`: API → service dataplane, full sync and endpoint changes.
pub fn bench_proxy(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(
        ws,
        "proxy-bench",
        "bench-proxy",
        "docs/benchmarks-proxy.md",
        extra,
    )
}

fn bench(ws: &Workspace, binary: &str, task: &str, out: &str, extra: &[String]) -> Result<()> {
    run(cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "-p",
        "skiff-control",
        "-p",
        "skiff-agent",
        "-p",
        "skiff-tests",
        "--bin",
        "skiff-control",
        "--bin",
        "skiff-agent",
        "--bin",
        binary,
    ]))?;
    let release = ws.target.join("release");
    let out = ws.root.join(out);
    let mut command = vec![format!("cargo xtask {task}")];
    command.extend(extra.iter().cloned());
    run(std::process::Command::new(release.join(binary))
        .current_dir(&ws.root)
        .env("SKIFF_CONTROL_BIN", release.join("skiff-control"))
        .env("SKIFF_AGENT_BIN", release.join("skiff-agent"))
        .arg("--out")
        .arg(&out)
        .arg("--command")
        .arg(command.join(" "))
        .args(extra))
}
