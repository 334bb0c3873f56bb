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

/// `cargo xtask bench-authz`: the admin path against RBAC-authorized users on the same
/// workload, under a seeded policy of 200 roles and 500 bindings.
pub fn bench_authz(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(
        ws,
        "authz-bench",
        "bench-authz",
        "docs/benchmarks-authz.md",
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

/// `cargo xtask bench-dns`: the agent's cluster DNS against dnsmasq, same names, one run.
pub fn bench_dns(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(ws, "dns-bench", "bench-dns", "docs/benchmarks.md", extra)
}

/// `cargo xtask bench-ha`: control plane memory with 3 API servers, agent API failover.
pub fn bench_ha(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(ws, "ha-bench", "bench-ha", "docs/benchmarks-ha.md", extra)
}

/// `cargo xtask bench-exec`: `kubectl exec` and WebSocket exec round trips.
pub fn bench_exec(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(ws, "exec-bench", "bench-exec", "docs/benchmarks.md", extra)
}

/// `cargo xtask bench-portforward`: `kubectl port-forward` throughput against a direct
/// connection.
pub fn bench_portforward(ws: &Workspace, extra: &[String]) -> Result<()> {
    bench(
        ws,
        "portforward-bench",
        "bench-portforward",
        "docs/benchmarks.md",
        extra,
    )
}

fn bench(ws: &Workspace, binary: &str, task: &str, out: &str, extra: &[String]) -> Result<()> {
    let mut command = vec![format!("cargo xtask {task}")];
    command.extend(extra.iter().cloned());
    build_and_run(ws, binary, out, &command.join(" "), extra)
}

/// Build the release control plane, agent and the benchmark `binary` of the tests crate, then
/// run it against them; it writes its report to `out` (relative to the workspace) and names
/// `command` there as the way to reproduce it.
pub fn build_and_run(
    ws: &Workspace,
    binary: &str,
    out: &str,
    command: &str,
    args: &[String],
) -> Result<()> {
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
    run(std::process::Command::new(release.join(binary))
        .current_dir(&ws.root)
        .env("SKIFF_CONTROL_BIN", release.join("skiff-control"))
        .env("SKIFF_AGENT_BIN", release.join("skiff-agent"))
        .arg("--out")
        .arg(ws.root.join(out))
        .arg("--command")
        .arg(command)
        .args(args))
}
