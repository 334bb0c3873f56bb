//! Time from `skiff-agent join` to the node Ready, on the HA cluster: each round takes one node
//! out of the cluster (its agent stopped, its Node deleted, its credentials removed: a new
//! machine), prints a join command with `skiff-control token create --print-join-command`,
//! and runs that command alone on the node; once it has its certificate, `skiff-agent run`
//! starts as the package's unit would. The clock runs from starting `skiff-agent join` until
//! a client of the API server sees the Node's Ready condition True (polled every 50 ms).
//! The agent's log lines split the time:
//!
//! * discovery: from the start to `no valid node client certificate: bootstrapping`
//!   (process start, cluster-info read unverified and again over TLS, bootstrap kubeconfig);
//! * certificate: from there until `skiff-agent join` exits (the CSR created, approved by the
//!   controller manager, signed, written);
//! * registration: from the exit to `registered the node` of `skiff-agent run` (agent start,
//!   node setup, the Node created);
//! * first Ready: from there until the Ready condition is seen True (podCIDR assigned, pod
//!   network set up, first status).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use skiff_tests::cluster::Cluster;
use skiff_tests::wait_for;

/// One join, its phases (None where a log line was not found).
pub struct JoinRound {
    pub round: usize,
    pub node: String,
    pub total: Duration,
    pub discovery: Option<Duration>,
    pub certificate: Option<Duration>,
    pub registration: Option<Duration>,
    pub first_ready: Option<Duration>,
    /// The API servers the join command named.
    pub servers: usize,
}

/// `rounds` joins of `node`, one after another.
pub fn join_rounds(c: &mut Cluster, node: &str, rounds: usize) -> Result<Vec<JoinRound>> {
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(c.kubeconfig())?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        anyhow::Ok(kube::Client::try_from(config)?)
    })?;
    let nodes: Api<Node> = Api::all(client);
    let mut out = Vec::new();
    for round in 1..=rounds {
        forget_node(c, node)?;
        let command = join_command(c)?;
        let r = join_once(c, &rt, &nodes, node, &command, round)?;
        eprintln!(
            "ha-bench: join round {round}: {node} Ready {:.2} s after `skiff-agent join`",
            r.total.as_secs_f64()
        );
        out.push(r);
    }
    Ok(out)
}

/// The node as a new machine: no agent, no Node object, no credentials.
fn forget_node(c: &mut Cluster, node: &str) -> Result<()> {
    if c.agent_running(node) {
        c.kill_agent(node);
    }
    c.kubectl(&["delete", "node", node, "--ignore-not-found", "--wait=true"])?;
    let root = c.node(node).root_dir.clone();
    for file in ["bootstrap.kubeconfig", "kubelet.kubeconfig"] {
        match std::fs::remove_file(root.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {file} of {node}"));
            }
            _ => {}
        }
    }
    match std::fs::remove_dir_all(root.join("pki")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// `skiff-control token create --print-join-command`, split into words.
fn join_command(c: &Cluster) -> Result<Vec<String>> {
    let control = std::env::var("SKIFF_CONTROL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| skiff_tests::target_dir().join("debug/skiff-control"));
    let out = Command::new(&control)
        .args(["token", "create", "--print-join-command", "--ttl", "10m"])
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .output()?;
    let text = skiff_tests::result("skiff-control token create", out)?;
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    ensure!(
        words.len() == 8 && words[..3] == ["skiff-agent", "join", "--server"],
        "not a join command: {text}"
    );
    Ok(words)
}

fn join_once(
    c: &mut Cluster,
    rt: &tokio::runtime::Runtime,
    nodes: &Api<Node>,
    node: &str,
    command: &[String],
    round: usize,
) -> Result<JoinRound> {
    let n = c.node(node).clone();
    let agent = n.agent_command[0].clone();
    let root = n.root_dir.to_string_lossy().into_owned();
    // The printed command, from the node, with where this node keeps its state.
    let mut argv: Vec<&str> = vec![&agent];
    argv.extend(command[1..].iter().map(String::as_str));
    argv.extend(["--node-name", node, "--root-dir", &root]);
    let started_at = jiff::Timestamp::now();
    let started = Instant::now();
    let joined: Output = c
        .command(node, &argv)?
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .output()
        .context("running skiff-agent join")?;
    let joined_after = started.elapsed();
    let join_log = String::from_utf8_lossy(&joined.stderr).into_owned();
    if !joined.status.success() {
        bail!("skiff-agent join failed on {node}:\n{join_log}");
    }
    let agent_log_before = c.agent_log(node).len();
    c.start_agent(node)?;
    let ready = wait_for(&format!("{node} Ready"), Duration::from_secs(120), || {
        Ok(rt.block_on(node_ready(nodes, node)).then(Instant::now))
    })?;
    let total = ready.duration_since(started);
    let agent_log = c.agent_log(node);
    let run_log = agent_log.get(agent_log_before..).unwrap_or_default();
    let since_start = |log: &str, line: &str| {
        logged_at(log, line).and_then(|t| Duration::try_from(t.duration_since(started_at)).ok())
    };
    let bootstrapping = since_start(&join_log, "no valid node client certificate: bootstrapping");
    let registered = since_start(run_log, "registered the node");
    Ok(JoinRound {
        round,
        node: node.to_string(),
        total,
        discovery: bootstrapping,
        certificate: bootstrapping.map(|b| joined_after.saturating_sub(b)),
        registration: registered.map(|r| r.saturating_sub(joined_after)),
        first_ready: registered.map(|r| total.saturating_sub(r)),
        servers: command[3].split(',').count(),
    })
}

/// Whether the Node's Ready condition is True.
async fn node_ready(nodes: &Api<Node>, node: &str) -> bool {
    let Ok(Some(n)) = nodes.get_opt(node).await else {
        return false;
    };
    n.status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The time of the first log line containing `text` (its first word, an RFC 3339 time).
fn logged_at(log: &str, text: &str) -> Option<jiff::Timestamp> {
    log.lines()
        .filter(|l| l.contains(text))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// The report's section.
pub fn report(rows: &[JoinRound]) -> String {
    let servers = rows.first().map_or(0, |r| r.servers);
    let mut md = format!(
        "## Join: from `skiff-agent join` to the node Ready\n\n\
         Each round makes a node a new machine (agent stopped, Node deleted, credentials \
         removed), prints a join command with `skiff-control token create \
         --print-join-command` (it named {servers} API servers) and runs it alone on the node, \
         then `skiff-agent run` as the package's unit does. *Total* runs from starting \
         `skiff-agent join` until the Node's Ready condition is seen True through the API \
         (polled every 50 ms). From the agent's log lines: *discovery* until `no valid node \
         client certificate: bootstrapping` (process start, cluster-info read and verified \
         twice, bootstrap kubeconfig written), *certificate* until `join` exits (CSR created, \
         approved by the controller manager, signed), *registration* until `registered the \
         node` of `skiff-agent run` (agent start, node setup, Node created), *first Ready* \
         the rest (podCIDR, pod network, first status).\n\n\
         | round | node | total | discovery | certificate | registration | first Ready |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {:.2} s | {} | {} | {} | {} |\n",
            r.round,
            r.node,
            r.total.as_secs_f64(),
            secs(r.discovery),
            secs(r.certificate),
            secs(r.registration),
            secs(r.first_ready)
        );
    }
    let mut totals: Vec<Duration> = rows.iter().map(|r| r.total).collect();
    totals.sort();
    md += &format!(
        "\nJoin to Ready over {} rounds: p50 {:.2} s, max {:.2} s.\n\n",
        rows.len(),
        percentile(&totals, 0.5).as_secs_f64(),
        totals.last().copied().unwrap_or_default().as_secs_f64()
    );
    md
}
