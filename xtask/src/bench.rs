//! `cargo xtask bench-api`: control-plane API latency, throughput and memory on both stores,
//! measured on release builds; the table goes to docs/benchmarks-api.md.

use anyhow::Result;

use crate::Workspace;
use crate::cmd::{cargo, run};

pub fn bench_api(ws: &Workspace, extra: &[String]) -> Result<()> {
    run(cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "-p",
        "skiff-control",
        "-p",
        "skiff-tests",
        "--bin",
        "skiff-control",
        "--bin",
        "api-bench",
    ]))?;
    let release = ws.target.join("release");
    let out = ws.root.join("docs/benchmarks-api.md");
    let mut command = vec!["cargo xtask bench-api".to_string()];
    command.extend(extra.iter().cloned());
    run(std::process::Command::new(release.join("api-bench"))
        .current_dir(&ws.root)
        .env("SKIFF_CONTROL_BIN", release.join("skiff-control"))
        .arg("--out")
        .arg(&out)
        .arg("--command")
        .arg(command.join(" "))
        .args(extra))
}
