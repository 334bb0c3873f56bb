//! `ha-bench`: what a highly available control plane costs and buys. On a harness cluster with
//! `--control-planes` API servers (each in its own network namespace) over `--etcd-members`
//! etcd members, and `--nodes` agents renewing their Lease every `--heartbeat`:
//!
//! * memory: the resident set (VmRSS) of every control plane (and etcd member) once the
//!   cluster is up and idle;
//! * join: the time from `skiff-agent join` (with the printed join command alone) to the node
//!   Ready, `--join-rounds` times (see [`join`]);
//! * API failover seen by the agents: the control plane the agents were started with is killed
//!   (SIGKILL) `--rounds` times (restarting the cluster between rounds would cost minutes, so
//!   each round kills the agents' current server among those left, as long as two live); for
//!   each node, the time from the kill to its next Lease renewal (the renewTime the agent
//!   wrote), and the heartbeats missed: renewals that should have come in the gap.
//!
//! Run through `cargo xtask bench-ha`.

mod join;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use serde_json::Value;
use skiff_tests::cluster::{Cluster, ClusterOptions};
use skiff_tests::{print_report, provenance, rss_kib, wait_for};

#[derive(Parser)]
#[command(
    about = "HA control plane benchmark: memory per API server, join to Ready, agent failover time"
)]
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
    /// Joins of a node from scratch, measured before the control planes are killed.
    #[arg(long, default_value_t = 5)]
    join_rounds: usize,
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
    c.wait_api_servers_published(Duration::from_secs(60))?;
    // The agents read the Endpoints every 10 s; let every one learn every server, and the
    // processes settle.
    std::thread::sleep(Duration::from_secs(15));
    let memory = memory_table(&c);

    let joiner = c.nodes().last().cloned().context("no node")?;
    let joins = join::join_rounds(&mut c, &joiner, args.join_rounds)?;
    // The rejoined agent learns the other API servers from the Endpoints (every 10 s).
    std::thread::sleep(Duration::from_secs(15));

    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        rows.extend(failover_round(&mut c, round, heartbeat)?);
        // Next round: a fresh renewal on every node before killing again.
        std::thread::sleep(heartbeat * 2);
    }
    let md = report(&args, &memory, &rows).replacen(
        "## API failover seen by the agents",
        &format!("{}## API failover seen by the agents", join::report(&joins)),
        1,
    );
    print_report(&md, args.out.as_deref())?;
    Ok(())
}

/// One node's view of one killed API server.
struct Row {
    round: usize,
    victim: String,
    node: String,
    /// From the kill to the agent's switch to another API server (its log's time).
    switched: Option<Duration>,
    /// From the kill to the node's next renewal.
    failover: Duration,
    /// Between the renewals before and after the kill.
    gap: Duration,
    /// Renewals due in the gap that did not happen.
    missed: u64,
}

/// Kills the agents' API server and waits for every node's next Lease renewal.
fn failover_round(c: &mut Cluster, round: usize, heartbeat: Duration) -> Result<Vec<Row>> {
    let victim = agents_server(c)?;
    let before = lease_renewals(c)?;
    let killed_at = jiff::Timestamp::now();
    let started = Instant::now();
    c.kill(&victim)?;
    let nodes = c.nodes();
    let after = wait_for(
        "every node's next lease renewal",
        Duration::from_secs(60),
        || {
            let now = lease_renewals(c)?;
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
    let mut rows = Vec::new();
    for node in &nodes {
        let last = before
            .get(node)
            .copied()
            .context("no renewal before the kill")?;
        let next = after[node];
        let failover = Duration::try_from(next.duration_since(killed_at)).unwrap_or_default();
        let gap = Duration::try_from(next.duration_since(last)).unwrap_or_default();
        let due = (gap.as_secs_f64() / heartbeat.as_secs_f64()).round() as u64;
        rows.push(Row {
            round,
            victim: victim.clone(),
            node: node.clone(),
            switched: switched_after(&c.agent_log(node), killed_at),
            failover,
            gap,
            missed: due.saturating_sub(1),
        });
    }
    Ok(rows)
}

fn report(args: &Args, memory: &str, rows: &[Row]) -> String {
    let mut md = format!(
        "# HA control plane: memory per API server, join to Ready, agent failover\n\n\
         Reproduce: `{}` (as root). {}\n\n\
         A harness cluster with {} control planes (`skiff-control`, each in its own network \
         namespace, all controllers and the scheduler under leader election) over {} etcd \
         members, and {} nodes whose agents renew their Lease every {} s and were started \
         with one API server (they learn the others from the `kubernetes` Endpoints).\n\n\
         ## Memory (VmRSS, idle cluster)\n\n{memory}\n\
         ## API failover seen by the agents\n\n\
         Each round SIGKILLs the API server the agents use. *Switched* is the time from the \
         kill to the agent's move to another API server (the time of its log line \
         `failing over to another API server`: its watches broke, their reconnection was \
         refused, the next server took it); *next renewal* is the time from the kill to the \
         node's next Lease renewal (the renewTime the agent wrote); *gap* is the time between \
         the renewals before and after the kill, *added* what the failover added to the \
         {} s period, and *missed* how many renewals due in the gap did not happen (goal: 0).\n\n\
         | round | killed | node | switched | next renewal | gap | added | missed |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.command,
        provenance(),
        args.control_planes,
        args.etcd_members,
        args.nodes,
        args.heartbeat,
        args.heartbeat,
    );
    let heartbeat = Duration::from_secs(args.heartbeat);
    for r in rows {
        let switched = r
            .switched
            .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
        md += &format!(
            "| {} | {} | {} | {switched} | {:.2} s | {:.2} s | {:.2} s | {} |\n",
            r.round,
            r.victim,
            r.node,
            r.failover.as_secs_f64(),
            r.gap.as_secs_f64(),
            r.gap.saturating_sub(heartbeat).as_secs_f64(),
            r.missed
        );
    }
    let worst = rows.iter().filter_map(|r| r.switched).max();
    let added = rows
        .iter()
        .map(|r| r.gap.saturating_sub(heartbeat))
        .max()
        .unwrap_or_default();
    let missed: u64 = rows.iter().map(|r| r.missed).sum();
    md += &format!(
        "\nSlowest switch {}; at most {:.2} s added to a heartbeat period; {missed} heartbeats \
         missed in all.\n",
        worst.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
        added.as_secs_f64()
    );
    md
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

/// From `since` to the first time after it the agent logged failing over.
fn switched_after(log: &str, since: jiff::Timestamp) -> Option<Duration> {
    log.lines()
        .filter(|l| l.contains("failing over to another API server"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<jiff::Timestamp>().ok())
        .find(|t| *t > since)
        .and_then(|t| Duration::try_from(t.duration_since(since)).ok())
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
