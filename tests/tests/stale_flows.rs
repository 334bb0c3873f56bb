//! No stale flows when a backend leaves: a client holding one connected UDP socket to a
//! Service (`skiff-udp-echo hold`: a datagram every 100 ms; only after an error from
//! send/recv does it close and connect again, through the same code path) keeps talking to
//! the Service's backend when that backend is deleted (it goes on answering while it
//! terminates) and its Deployment brings up another: the client reaches the new backend
//! within 1 s of it being ready in the EndpointSlice, with no restart. eBPF mode destroys the socket (the agent's `skiff_proxy_sockets_destroyed_total`
//! counts it); iptables mode deletes the socket's conntrack entry
//! (`skiff_proxy_conntrack_entries_deleted_total`). Every answer is checked for which backend
//! sent it.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::port_forward::in_netns;
use skiff_tests::streams::{pod_stream, watch_ready_endpoints};
use skiff_tests::wait_for;

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      # A deleted backend keeps answering while it terminates (it ignores SIGTERM), so only
      # the proxy ending the flow moves the client: without that, it would stay with the
      # terminating pod (a dead pod's ICMP errors would make the client reconnect anyway).
      terminationGracePeriodSeconds: 60
      containers:
      - name: main
        image: skiff.test/busybox:1
        ports: [{containerPort: 9053, protocol: UDP}]
        command: ["sh", "-c", "trap '' TERM; exec skiff-udp-echo serve 9053"]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 53, targetPort: 9053, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
"#;

/// One line of `skiff-udp-echo hold`: when the datagram was sent, and the answering host
/// (None for `timeout`, `error …` and `connected …` lines).
fn answer(line: &str) -> Option<(u64, String)> {
    let mut words = line.split_whitespace();
    let at = words.next()?.parse().ok()?;
    let host = words.next()?;
    let peer = words.next()?;
    (!matches!(host, "timeout" | "error" | "connected") && peer.contains(':'))
        .then(|| (at, host.to_string()))
}

/// The next answer from `rx` within `timeout`; every line read on the way goes to `seen`.
fn next_answer(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Result<(u64, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if let Some(a) = answer(&line) {
                    return Ok(a);
                }
            }
            Err(e) => bail!(
                "no answer ({e}); last lines:\n{}",
                seen[seen.len().saturating_sub(30)..].join("\n")
            ),
        }
    }
}

/// The value of the counter series `series` (name and labels) in `node`'s agent metrics.
fn agent_counter(c: &Cluster, node: &str, series: &str) -> Result<u64> {
    let netns = PathBuf::from("/run/netns").join(&c.node(node).netns);
    let text = in_netns(netns, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 10249))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut all = String::new();
        s.read_to_string(&mut all)?;
        Ok(all)
    })?;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {series} in {node}'s metrics:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("{series} in {node}'s metrics"))
}

fn echo_pods(c: &Cluster) -> Result<Vec<(String, String)>> {
    let out = c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=echo",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.metadata.deletionTimestamp} {end}",
    ])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| {
            let mut f = p.split('=');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect())
}

fn stale_flows(mode: &str) -> Result<()> {
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        proxy_mode: mode.into(),
        ..Default::default()
    })?;
    c.assert_proxy_mode(mode)?;
    let node = c.nodes().first().cloned().context("no node")?;
    c.apply(APP)?;
    let old = wait_for("the echo pod running", Duration::from_secs(90), || {
        let pods = echo_pods(&c)?;
        Ok(pods
            .iter()
            .find(|(_, phase)| phase == "Running")
            .map(|(n, _)| n.clone()))
    })?;
    wait_for("the client pod running", Duration::from_secs(90), || {
        Ok((c.jsonpath("pod", "client", ".status.phase")?.trim() == "Running").then_some(()))
    })?;
    let vip = c
        .jsonpath("svc", "echo", ".spec.clusterIP")?
        .trim()
        .to_string();
    let (counter, before) = match mode {
        "ebpf" => {
            let s = "skiff_proxy_sockets_destroyed_total{protocol=\"udp\"}";
            (s, agent_counter(&c, &node, s)?)
        }
        _ => {
            let s = "skiff_proxy_conntrack_entries_deleted_total";
            (s, agent_counter(&c, &node, s)?)
        }
    };

    let (mut client, lines) = pod_stream(
        &c,
        "client",
        &[
            "skiff-udp-echo",
            "hold",
            "-w",
            "100",
            "-i",
            "100",
            &vip,
            "53",
        ],
    )?;
    let mut seen = Vec::new();
    // The held socket answers from the one backend, several times in a row.
    for _ in 0..5 {
        let (_, host) = next_answer(&lines, Duration::from_secs(20), &mut seen)?;
        ensure!(
            host == old,
            "answered by {host}, not {old}:\n{}",
            seen.join("\n")
        );
    }

    let old_ip = c.jsonpath("pod", &old, ".status.podIP")?.trim().to_string();
    let (mut watch, slices) = watch_ready_endpoints(&c, "echo")?;
    c.kubectl(&["delete", "pod", &old, "--wait=false"])?;
    // The replacement ready in the EndpointSlice: the proxy programs it right after.
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready_at = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, ready) = slices
            .recv_timeout(left)
            .context("no EndpointSlice with the replacement ready")?;
        if !ready.is_empty() && !ready.contains(&old_ip) {
            break at;
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    let new = wait_for("the replacement pod", Duration::from_secs(10), || {
        Ok(echo_pods(&c)?
            .into_iter()
            .find(|(n, phase)| *n != old && phase == "Running")
            .map(|(n, _)| n))
    })?;
    // The first answer from another backend: the new one, within 1 s of it being ready.
    let (at, host) = loop {
        let (at, host) = next_answer(&lines, Duration::from_secs(20), &mut seen)?;
        if host != old {
            break (at, host);
        }
    };
    ensure!(
        host == new,
        "answered by {host}, neither {old} nor the replacement {new}"
    );
    let late = at.saturating_sub(ready_at);
    eprintln!("[{mode}] the held client reached {new} {late} ms after it was ready");
    ensure!(
        at <= ready_at + 1000,
        "the client reached {new} {late} ms after it was ready (goal: 1 s):\n{}",
        seen[seen.len().saturating_sub(40)..].join("\n")
    );
    // Still the same process: it was never restarted.
    ensure!(
        client.try_wait()?.is_none(),
        "the client process ended:\n{}",
        seen.join("\n")
    );
    let after = agent_counter(&c, &node, counter)?;
    ensure!(after > before, "{counter} stayed at {before}");
    if mode == "ebpf" {
        // The socket was destroyed: the client connected again through its one code path.
        ensure!(
            seen.iter().any(|l| l.contains(" connected 2")),
            "the client never reconnected:\n{}",
            seen.join("\n")
        );
        ensure!(
            c.agent_log(&node)
                .contains("destroyed a socket connected to a backend"),
            "no log line for the destroyed socket"
        );
        // `skiff-agent bpf sockets` reads the node's pinned count.
        let bpffs = c.node(&node).bpffs.display().to_string();
        let agent = skiff_tests::cluster::agent_binary_path();
        let agent = agent.to_str().context("agent path")?;
        let out = c.exec_ok(
            &node,
            &[agent, "bpf", "--bpffs", &bpffs, "sockets", "-o", "json"],
        )?;
        let rows: serde_json::Value = serde_json::from_str(&out)?;
        let udp = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["protocol"] == "udp")
            .and_then(|r| r["destroyed"].as_u64())
            .with_context(|| format!("no udp row in bpf sockets:\n{out}"))?;
        ensure!(
            udp >= 1,
            "bpf sockets shows {udp} destroyed UDP sockets:\n{out}"
        );
    }
    // And it stays with the new backend.
    for _ in 0..5 {
        let (_, host) = next_answer(&lines, Duration::from_secs(5), &mut seen)?;
        ensure!(host == new, "answered by {host}, not {new}");
    }
    let _ = client.kill();
    let _ = client.wait();
    c.kubectl(&["delete", "deployment", "echo", "--wait=false"])?;
    c.kubectl(&["delete", "svc", "echo"])?;
    c.kubectl(&[
        "delete",
        "pod",
        "client",
        &old,
        "--wait=false",
        "--grace-period=0",
        "--force",
    ])?;
    Ok(())
}

#[test]
fn stale_flows_ebpf() -> Result<()> {
    if skip_unless_root("stale_flows_ebpf") {
        return Ok(());
    }
    stale_flows("ebpf")
}

#[test]
fn stale_flows_iptables() -> Result<()> {
    if skip_unless_root("stale_flows_iptables") {
        return Ok(());
    }
    stale_flows("iptables")
}
