//! `ha-bench`: what a highly available control plane costs and buys. On a harness cluster with
//! `--control-planes` API servers (each in its own network namespace) over `--etcd-members`
//! etcd members, and `--nodes` agents renewing their Lease every `--heartbeat`:
//!
//! * memory: the resident set (VmRSS) of every control plane (and etcd member) once the
//!   cluster is up and idle;
//! * API failover seen by the agents: the control plane the agents were started with is killed
//!   (SIGKILL) `--rounds` times (restarting the cluster between rounds would cost minutes, so
//!   each round kills the agents' current server among those left, as long as two live); for
//!   each node, the time from the kill to its next Lease renewal (the renewTime the agent
//!   wrote), and the heartbeats missed: renewals that should have come in the gap.
//!
//! Run through `cargo xtask bench-ha`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use serde_json::Value;
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::{print_report, provenance, rss_kib, wait_for};

#[derive(Parser)]
#[command(about = "HA control plane benchmark: memory per API server, agent failover time")]
struct Args {
    #[arg(long, default_value_t = 3)]
    control_planes: usize,
    #[arg(long, default_value_t = 3)]
    etcd_members: usize,
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// The agents' `--node-status-update-seconds`.
    #[arg(long, default_value_t = 2)]
    heartbeat: u64,
    /// Control planes killed, one after another (at most control planes - 1).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-ha")]
    command: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds < args.control_planes,
        "--rounds must leave one control plane alive"
    );
    let heartbeat = Duration::from_secs(args.heartbeat);
    let mut c = Cluster::start(ClusterOptions {
        nodes: args.nodes,
        control_planes: args.control_planes,
        etcd_members: args.etcd_members,
        agent_args: vec![
            "--node-status-update-seconds".into(),
            args.heartbeat.to_string(),
        ],
        verbose: true,
        ..Default::default()
    })?;
    let all: BTreeSet<String> = c
        .state()
        .control_planes
        .iter()
        .map(|m| m.ip.clone())
        .collect();
    wait_for(
        "every API server in the kubernetes Endpoints",
        Duration::from_secs(60),
        || {
            let ips = c.kubectl(&[
                "get",
                "endpoints",
                "kubernetes",
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ])?;
            let got: BTreeSet<String> = ips.split_whitespace().map(String::from).collect();
            Ok((got == all).then_some(()))
        },
    )?;
    // The agents read the Endpoints every 10 s; let every one learn every server, and the
    // processes settle.
    std::thread::sleep(Duration::from_secs(15));
    let memory = memory_table(&c);

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let victim = agents_server(&c)?;
        let before = lease_renewals(&c)?;
        let killed_at = jiff::Timestamp::now();
        let started = Instant::now();
        c.kill(&victim)?;
        let nodes = c.nodes();
        let after = wait_for(
            "every node's next lease renewal",
            Duration::from_secs(60),
            || {
                let now = lease_renewals(&c)?;
                let renewed: BTreeMap<String, jiff::Timestamp> = nodes
                    .iter()
                    .filter_map(|n| {
                        let t = *now.get(n)?;
                        (t > killed_at).then(|| (n.clone(), t))
                    })
                    .collect();
                Ok((renewed.len() == nodes.len()).then_some(renewed))
            },
        )?;
        eprintln!(
            "ha-bench: round {round}: killed {victim}, all nodes renewed within {:.1?}",
            started.elapsed()
        );
        for node in &nodes {
            let last = before
                .get(node)
                .copied()
                .context("no renewal before the kill")?;
            let next = after[node];
            let failover = Duration::try_from(next.duration_since(killed_at)).unwrap_or_default();
            let gap = Duration::try_from(next.duration_since(last)).unwrap_or_default();
            // Renewals that should have happened in the gap but did not.
            let missed = (gap.as_secs_f64() / heartbeat.as_secs_f64()).round() as u64 - 1;
            rounds.push((round, victim.clone(), node.clone(), failover, gap, missed));
        }
        // Next round: a fresh renewal on every node before killing again.
        std::thread::sleep(heartbeat * 2);
    }

    let mut md = format!(
        "# HA control plane: memory per API server and agent failover\n\n\
         Reproduce: `{}` (as root). {}\n\n\
         A harness cluster with {} control planes (`skiff-control`, each in its own network \
         namespace, all controllers and the scheduler under leader election) over {} etcd \
         members, and {} nodes whose agents renew their Lease every {} s and were started \
         with one API server (they learn the others from the `kubernetes` Endpoints).\n\n\
         ## Memory (VmRSS, idle cluster)\n\n{memory}\n\
         ## API failover seen by the agents\n\n\
         Each round SIGKILLs the API server the agents use. *Failover* is the time from the \
         kill to the node's next Lease renewal time (as the agent wrote it, so not delayed by \
         the polling); *gap* is the time between the renewals before and after it; *missed* is \
         how many renewals due every {} s did not happen in the gap (goal: 0).\n\n\
         | round | killed | node | failover | gap | missed |\n|---|---|---|---|---|---|\n",
        args.command,
        provenance(),
        args.control_planes,
        args.etcd_members,
        args.nodes,
        args.heartbeat,
        args.heartbeat,
    );
    for (round, victim, node, failover, gap, missed) in &rounds {
        md += &format!(
            "| {round} | {victim} | {node} | {:.2} s | {:.2} s | {missed} |\n",
            failover.as_secs_f64(),
            gap.as_secs_f64()
        );
    }
    let worst = rounds.iter().map(|r| r.3).max().unwrap_or_default();
    let missed: u64 = rounds.iter().map(|r| r.5).sum();
    md += &format!(
        "\nWorst failover {:.2} s; {missed} heartbeats missed in all.\n",
        worst.as_secs_f64()
    );
    print_report(&md, args.out.as_deref())?;
    Ok(())
}

/// The control plane the agents talk to: the one their kubeconfig names (the first), or,
/// once that one is dead, the live one the agents' logs last named as in use.
fn agents_server(c: &Cluster) -> Result<String> {
    let live: Vec<&skiff_tests::cluster::MemberState> = c
        .state()
        .control_planes
        .iter()
        .filter(|m| m.process.is_some_and(|p| p.alive()))
        .collect();
    let node = c.nodes().first().cloned().context("no node")?;
    let log = c.agent_log(&node);
    let in_use = log
        .lines()
        .rev()
        .find_map(|l| {
            let to = l
                .split("to=")
                .nth(1)
                .or_else(|| l.split("server=").nth(1))?;
            to.split_whitespace().next().map(str::to_string)
        })
        .and_then(|a| {
            live.iter()
                .find(|m| a.starts_with(&m.ip))
                .map(|m| m.name.clone())
        });
    in_use
        .or_else(|| live.first().map(|m| m.name.clone()))
        .context("no live control plane")
}

/// Each node's Lease renewTime.
fn lease_renewals(c: &Cluster) -> Result<BTreeMap<String, jiff::Timestamp>> {
    let out = c.kubectl(&["-n", "kube-node-lease", "get", "leases", "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let name = l["metadata"]["name"].as_str()?.to_string();
            let t = l["spec"]["renewTime"].as_str()?.parse().ok()?;
            Some((name, t))
        })
        .collect())
}

fn memory_table(c: &Cluster) -> String {
    let mut md = String::from("| process | address | RSS |\n|---|---|---|\n");
    let mut total = 0;
    for (kind, members) in [
        ("skiff-control", &c.state().control_planes),
        ("etcd", &c.state().etcd_members),
    ] {
        for m in members {
            let rss = m.process.and_then(|p| rss_kib(p.pid)).unwrap_or(0);
            if kind == "skiff-control" {
                total += rss;
            }
            md += &format!(
                "| {kind} {} | {} | {:.1} MiB |\n",
                m.name,
                m.ip,
                rss as f64 / 1024.0
            );
        }
    }
    md += &format!(
        "\nThe {} control planes together: {:.1} MiB.\n\n",
        c.state().control_planes.len(),
        total as f64 / 1024.0
    );
    md
}
