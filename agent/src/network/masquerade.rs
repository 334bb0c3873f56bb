//! Masquerade for pod traffic leaving the cluster network: one rule in a chain of our own,
//! written with `iptables-restore --noflush` so the rest of the nat table is untouched.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::Ipv4Net;

pub const CHAIN: &str = "SKIFF-POSTROUTING";

fn restore(payload: &str) -> Result<()> {
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .arg("-w")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (is iptables installed?)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(payload.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn iptables(args: &[&str]) -> Result<bool> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running iptables")?;
    Ok(out.status.success())
}

const JUMP_COMMENT: &str = "skiff: pod masquerade";

fn jump(op: &str) -> Vec<&str> {
    vec![
        "-t",
        "nat",
        op,
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        JUMP_COMMENT,
        "-j",
        CHAIN,
    ]
}

/// Masquerade traffic from `pod_cidr` to anywhere outside `cluster_cidr`.
pub fn ensure(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<()> {
    // Declaring the chain flushes it, so the rule set is replaced as a whole.
    restore(&format!(
        "*nat\n:{CHAIN} - [0:0]\n-A {CHAIN} -s {pod_cidr} ! -d {cluster_cidr} -m comment --comment \"skiff: masquerade pod traffic leaving the cluster\" -j MASQUERADE\nCOMMIT\n"
    ))?;
    if !iptables(&jump("-C"))? && !iptables(&jump("-A"))? {
        bail!("could not add the jump to {CHAIN} in nat POSTROUTING");
    }
    Ok(())
}

pub fn remove() -> Result<()> {
    while iptables(&jump("-D"))? {}
    if iptables(&["-t", "nat", "-F", CHAIN])? {
        iptables(&["-t", "nat", "-X", CHAIN])?;
    }
    Ok(())
}
