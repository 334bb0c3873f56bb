//! `cargo xtask test`: what CI runs — setup, build every binary, run every test.

use std::process::Command;

use anyhow::Result;

use crate::cmd::{cargo, phase, run, status};
use crate::{Workspace, dist, setup, sys};

/// Runs the suite; returns `cargo test`'s exit code.
pub fn test(ws: &Workspace, no_setup: bool, cargo_test_args: &[String]) -> Result<u8> {
    if !sys::is_root() {
        println!(
            "warning: not running as root; tests that need namespaces, BPF or iptables will fail"
        );
    }
    if !no_setup {
        phase("setup", || setup::setup(ws, false))?;
    }
    phase("build", || {
        run(with_test_env(ws, cargo()).args(["build", "--workspace", "--bins"]))
    })?;
    let code = phase("test", || {
        let mut cmd = with_test_env(ws, cargo());
        cmd.args(["test", "--workspace", "--no-fail-fast"])
            .args(cargo_test_args);
        Ok(status(&mut cmd)?.code().unwrap_or(1))
    })?;
    println!("cargo test exited with {code}");
    // The packages are part of what CI proves: a static build and units systemd accepts.
    let dist = phase("dist", || dist::dist(ws, &dist::DistArgs::default()));
    if let Err(e) = &dist {
        println!("cargo xtask dist failed: {e:#}");
    }
    match (code, dist) {
        (0, Ok(())) => Ok(0),
        (0, Err(_)) => Ok(1),
        (code, _) => Ok(u8::try_from(code).unwrap_or(1)),
    }
}

/// The environment the tests read. The build gets it too, so the test run rebuilds nothing.
fn with_test_env(ws: &Workspace, mut cmd: Command) -> Command {
    cmd.current_dir(&ws.root)
        .env("SKIFF_KUBECTL_120", ws.kubectl_120())
        .env("SKIFF_TARGET_DIR", &ws.target)
        // A privileged test that cannot run here fails instead of passing by skipping.
        .env("SKIFF_REQUIRE_PRIVILEGED", "1");
    cmd
}
