//! `skiff-agent bpf …`: read the eBPF proxy's pinned maps of one node, with or without a
//! running agent, as tables or JSON.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::proxy::ebpf::maps::PinnedMaps;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    LbList,
    Backends,
    Affinity,
    Ct,
    Maps,
}

fn open(bpffs: &Path) -> Result<PinnedMaps> {
    PinnedMaps::open(bpffs).with_context(|| {
        format!(
            "opening the pinned maps in {} (is --bpffs the node's directory, and has an agent run there in ebpf mode?)",
            bpffs.display()
        )
    })
}

/// Render one view; `json` for `-o json`.
pub fn show(bpffs: &Path, what: What, json: bool) -> Result<String> {
    let m = open(bpffs)?;
    let mut out = String::new();
    match what {
        What::LbList => {
            let fes = m.frontends()?;
            if json {
                return Ok(serde_json::to_string_pretty(&fes)?);
            }
            writeln!(
                out,
                "{:<40} {:<24} {:>6} {:<8} BACKENDS (slot: ip:port)",
                "SERVICE", "FRONTEND", "REVNAT", "FLAGS"
            )?;
            for f in fes {
                let mut flags = Vec::new();
                if f.nodeport {
                    flags.push("nodeport");
                }
                if f.external_local {
                    flags.push("local");
                }
                if f.affinity_timeout.is_some() {
                    flags.push("affinity");
                }
                let backends: Vec<String> = f
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, b)| match b {
                        Some(b) => format!("{}: {}:{}", i + 1, b.ip, b.port),
                        None => format!("{}: (missing)", i + 1),
                    })
                    .collect();
                writeln!(
                    out,
                    "{:<40} {:<24} {:>6} {:<8} {}",
                    f.service,
                    format!("{}:{}/{}", f.ip, f.port, f.protocol),
                    f.rev_nat_id,
                    flags.join(","),
                    if backends.is_empty() {
                        "(none: refused)".to_string()
                    } else {
                        backends.join(", ")
                    }
                )?;
            }
        }
        What::Backends => {
            let bes = m.backends()?;
            if json {
                return Ok(serde_json::to_string_pretty(&bes)?);
            }
            writeln!(out, "{:>6} {:<22} {:<5} LOCAL", "ID", "BACKEND", "PROTO")?;
            for b in bes {
                writeln!(
                    out,
                    "{:>6} {:<22} {:<5} {}",
                    b.id,
                    format!("{}:{}", b.ip, b.port),
                    b.protocol,
                    b.local
                )?;
            }
        }
        What::Affinity => {
            let a = m.affinity()?;
            if json {
                return Ok(serde_json::to_string_pretty(&a)?);
            }
            writeln!(
                out,
                "{:<24} {:<40} {:>8} {:>8}",
                "CLIENT", "SERVICE", "BACKEND", "IDLE(s)"
            )?;
            for e in a {
                writeln!(
                    out,
                    "{:<24} {:<40} {:>8} {:>8}",
                    e.client, e.service, e.backend_id, e.idle_secs
                )?;
            }
        }
        What::Ct => {
            let ct = m.conntrack()?;
            if json {
                return Ok(serde_json::to_string_pretty(&ct)?);
            }
            writeln!(
                out,
                "{:<4} {:<5} {:<22} {:<22} {:<22} {:>8}",
                "DIR", "PROTO", "SRC", "DST", "NAT", "IDLE(s)"
            )?;
            for f in ct {
                writeln!(
                    out,
                    "{:<4} {:<5} {:<22} {:<22} {:<22} {:>8}",
                    f.direction, f.protocol, f.src, f.dst, f.nat, f.idle_secs
                )?;
            }
        }
        What::Maps => {
            let fill = m.fill()?;
            if json {
                return Ok(serde_json::to_string_pretty(&fill)?);
            }
            writeln!(
                out,
                "{:<20} {:>10} {:>10} {:>6}",
                "MAP", "ENTRIES", "MAX", "FILL"
            )?;
            for f in fill {
                let pct = if f.max_entries == 0 {
                    0.0
                } else {
                    100.0 * f.entries as f64 / f.max_entries as f64
                };
                writeln!(
                    out,
                    "{:<20} {:>10} {:>10} {:>5.1}%",
                    f.name, f.entries, f.max_entries, pct
                )?;
            }
        }
    }
    Ok(out)
}
