//! `skiff-agent bpf …`: read the eBPF proxy's pinned maps of one node, with or without a
//! running agent, as tables or JSON.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::proxy::ebpf::maps::{FrontendEntry, MapFill, PinnedMaps};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    LbList,
    Backends,
    Affinity,
    Ct,
    Maps,
    Sockets,
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
    match what {
        What::LbList => view(
            m.frontends()?,
            json,
            format!(
                "{:<40} {:<24} {:>6} {:<12} {:<8} BACKENDS (slot: ip:port)",
                "SERVICE", "FRONTEND", "REVNAT", "TYPE", "FLAGS"
            ),
            frontend_row,
        ),
        What::Backends => view(
            m.backends()?,
            json,
            format!("{:>6} {:<22} {:<5} LOCAL", "ID", "BACKEND", "PROTO"),
            |b| {
                let backend = format!("{}:{}", b.ip, b.port);
                format!("{:>6} {backend:<22} {:<5} {}", b.id, b.protocol, b.local)
            },
        ),
        What::Affinity => view(
            m.affinity()?,
            json,
            format!(
                "{:<24} {:<40} {:>8} {:>8}",
                "CLIENT", "SERVICE", "BACKEND", "IDLE(s)"
            ),
            |e| {
                format!(
                    "{:<24} {:<40} {:>8} {:>8}",
                    e.client, e.service, e.backend_id, e.idle_secs
                )
            },
        ),
        What::Ct => view(
            m.conntrack()?,
            json,
            format!(
                "{:<4} {:<5} {:<22} {:<22} {:<22} {:>8}",
                "DIR", "PROTO", "SRC", "DST", "NAT", "IDLE(s)"
            ),
            |f| {
                format!(
                    "{:<4} {:<5} {:<22} {:<22} {:<22} {:>8}",
                    f.direction, f.protocol, f.src, f.dst, f.nat, f.idle_secs
                )
            },
        ),
        What::Maps => view(
            m.fill()?,
            json,
            format!(
                "{:<20} {:>10} {:>10} {:>6}",
                "MAP", "ENTRIES", "MAX", "FILL"
            ),
            map_row,
        ),
        What::Sockets => sockets(bpffs, json),
    }
}

/// `bpf sockets`: the sockets this node's agents destroyed because their backend left its
/// Service, per protocol.
fn sockets(bpffs: &Path, json: bool) -> Result<String> {
    use crate::proxy::ebpf::flow_stats::FlowStats;
    let stats = FlowStats::open(bpffs).with_context(|| {
        format!(
            "opening the destroyed-socket count in {} (has an agent run there in ebpf mode?)",
            bpffs.display()
        )
    })?;
    view(
        stats.read(),
        json,
        format!("{:<8} {:>10}", "PROTOCOL", "DESTROYED"),
        |r| format!("{:<8} {:>10}", r.protocol, r.destroyed),
    )
}

/// `rows` as pretty JSON, or as a table: `header`, then one line per row.
fn view<T: Serialize>(
    rows: Vec<T>,
    json: bool,
    header: String,
    row: impl Fn(&T) -> String,
) -> Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let mut out = header;
    out.push('\n');
    for r in &rows {
        out.push_str(&row(r));
        out.push('\n');
    }
    Ok(out)
}

/// The flags column of `lb list`: the frontend's scope and options.
fn frontend_flags(f: &FrontendEntry) -> String {
    let mut flags = Vec::new();
    if f.scope == "internal" {
        flags.push("internal".to_string());
    }
    if f.external_local {
        flags.push("local".to_string());
    }
    if f.affinity_timeout.is_some() {
        flags.push("affinity".to_string());
    }
    if let Some(ranges) = &f.source_ranges {
        flags.push(format!("src-ranges={}", ranges.join(";")));
    }
    if flags.is_empty() {
        return "-".into();
    }
    flags.join(",")
}

fn frontend_row(f: &FrontendEntry) -> String {
    let backends: Vec<String> = f
        .slots
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            Some(b) => format!("{}: {}:{}", i + 1, b.ip, b.port),
            None => format!("{}: (missing)", i + 1),
        })
        .collect();
    format!(
        "{:<40} {:<24} {:>6} {:<12} {:<8} {}",
        f.service,
        format!("{}:{}/{}", f.ip, f.port, f.protocol),
        f.rev_nat_id,
        f.kind,
        frontend_flags(f),
        if backends.is_empty() {
            "(none: refused)".to_string()
        } else {
            backends.join(", ")
        }
    )
}

fn map_row(f: &MapFill) -> String {
    let pct = if f.max_entries == 0 {
        0.0
    } else {
        100.0 * f.entries as f64 / f.max_entries as f64
    };
    format!(
        "{:<20} {:>10} {:>10} {:>5.1}%",
        f.name, f.entries, f.max_entries, pct
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ebpf::maps::frontend_kind;
    use skiff_ebpf_common::{FE_EXTERNAL_LOCAL, FE_HOSTPORT, FE_LOADBALANCER, FE_NODEPORT};

    #[test]
    fn lb_list_rows_show_the_type_and_flags() {
        let mut f = FrontendEntry {
            service: "default/lb".into(),
            ip: std::net::Ipv4Addr::new(10, 1, 0, 240),
            port: 80,
            protocol: "tcp".into(),
            rev_nat_id: 7,
            kind: frontend_kind(FE_LOADBALANCER | FE_EXTERNAL_LOCAL),
            scope: "external",
            nodeport: false,
            external_local: true,
            source_ranges: Some(vec!["10.1.0.1/32".into(), "192.168.0.0/16".into()]),
            affinity_timeout: None,
            slots: Vec::new(),
        };
        let row = frontend_row(&f);
        assert!(row.contains(" LoadBalancer "), "{row}");
        assert!(
            row.contains(" local,src-ranges=10.1.0.1/32;192.168.0.0/16 "),
            "{row}"
        );
        assert!(row.ends_with("(none: refused)"), "{row}");
        f.scope = "internal";
        f.external_local = false;
        f.source_ranges = None;
        assert!(frontend_row(&f).contains(" internal "));
        assert_eq!(frontend_kind(FE_HOSTPORT | FE_EXTERNAL_LOCAL), "HostPort");
        assert_eq!(frontend_kind(FE_NODEPORT), "NodePort");
        assert_eq!(frontend_kind(0), "ClusterIP");
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["type"], "LoadBalancer");
        assert_eq!(json["scope"], "internal");
    }
}
