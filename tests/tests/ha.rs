//! A highly available control plane survives its failures: on a cluster with 3 etcd members
//! and 2 control planes (each in a network namespace of its own), `kill -9` of one etcd member
//! and then of the control plane leading the controllers, while a Deployment scales from 2 to
//! 6 replicas and a client pod calls its Service without pause. The scale completes (under the
//! new leader), every node's Lease keeps being renewed on time (agents fail over to the live
//! API server without missing a heartbeat) and no node ever reports NotReady, and not one
//! request to the Service fails; every replica answers.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::ha_scenario::{CONTROL_ARGS, HEARTBEAT, ServiceLoad, deploy_web_and_client};
use skiff_tests::nodewatch::{largest_gap, watch_nodes};
use skiff_tests::wait_for;

const NS: &str = "ha-test";
/// The web pods: names of those Running, Ready and not terminating.
fn ready_web_pods(c: &Cluster) -> Result<BTreeSet<String>> {
    let out = c.kubectl(&["-n", NS, "get", "pods", "-l", "app=web", "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["phase"] == "Running"
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect())
}

fn wait_web(c: &Cluster, n: usize, timeout: Duration) -> Result<BTreeSet<String>> {
    wait_for(&format!("{n} web pods Ready"), timeout, || {
        let pods = ready_web_pods(c)?;
        if pods.len() == n {
            return Ok(Some(pods));
        }
        bail!("ready: {pods:?}")
    })
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn control_plane_failures_cost_no_heartbeat_and_no_request() -> Result<()> {
    if skip_unless_root("control_plane_failures_cost_no_heartbeat_and_no_request") {
        return Ok(());
    }
    let mut c = Cluster::start(ClusterOptions {
        nodes: 2,
        control_planes: 2,
        etcd_members: 3,
        control_args: CONTROL_ARGS.iter().map(|s| s.to_string()).collect(),
        agent_args: vec![
            "--node-status-update-seconds".into(),
            HEARTBEAT.as_secs().to_string(),
        ],
        ..Default::default()
    })?;
    let control_planes: Vec<String> = c
        .state()
        .control_planes
        .iter()
        .map(|m| m.name.clone())
        .collect();
    ensure!(
        control_planes.len() == 2,
        "control planes: {control_planes:?}"
    );

    // Both API servers are in the `kubernetes` Endpoints (which the agents learn them from).
    c.wait_api_servers_published(Duration::from_secs(30))?;
    let leader = wait_for(
        "a controller-manager leader",
        Duration::from_secs(30),
        || c.leader(),
    )?;

    deploy_web_and_client(&c, NS)?;
    wait_web(&c, 2, Duration::from_secs(60))?;
    // The client asks the Service without pause.
    let load = ServiceLoad::start(&c, NS, "load.txt")?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_nodes(&c, stop.clone())?;
    std::thread::sleep(HEARTBEAT);

    // Scale, and while that happens, lose an etcd member and then the leading control plane.
    let started = Instant::now();
    c.kubectl(&["-n", NS, "scale", "deployment", "web", "--replicas=6"])?;
    let etcd_victim = c.state().etcd_members[0].name.clone();
    c.kill(&etcd_victim)?;
    std::thread::sleep(Duration::from_secs(1));
    let killed = c.kill("leader")?;
    ensure!(killed == leader, "killed {killed}, but {leader} led");
    let survivor = control_planes
        .iter()
        .find(|n| **n != killed)
        .context("no other control plane")?
        .clone();
    let six = wait_web(&c, 6, Duration::from_secs(90))?;
    let new_leader = wait_for(
        "the surviving control plane to lead",
        Duration::from_secs(30),
        || Ok(c.leader()?.filter(|l| *l == survivor)),
    )?;
    // The scale is complete when the Deployment's status says so: the pods became ready
    // after the kill, so the controllers of the new leader wrote that.
    wait_for(
        "the Deployment's status: 6 available",
        Duration::from_secs(60),
        || {
            let out = c.kubectl(&["-n", NS, "get", "deployment", "web", "-o", "json"])?;
            let d: Value = serde_json::from_str(&out)?;
            let status = &d["status"];
            let done = status["observedGeneration"] == d["metadata"]["generation"]
                && status["availableReplicas"] == 6
                && status["readyReplicas"] == 6
                && status["updatedReplicas"] == 6;
            Ok(done.then_some(()))
        },
    )?;
    let scaled_in = started.elapsed();
    // `cargo xtask cluster status` shows what happened: the killed ones exited, the survivor
    // leads.
    let status = c.state().processes();
    for line in status.lines() {
        let name = line.split_whitespace().nth(1).unwrap_or_default();
        let dead = name == killed || name == etcd_victim;
        ensure!(
            line.contains("exited") == dead && line.contains("pid ") != dead,
            "status of {name}: {line}\n{status}"
        );
        ensure!(
            line.contains("(leader)") == (name == new_leader),
            "status of {name}: {line}\n{status}"
        );
    }
    ensure!(
        status.lines().count() == 7,
        "status lists 7 processes:\n{status}"
    );
    // Every replica answers the client before the load stops, and the agents keep beating for
    // a few more intervals.
    wait_for(
        "every replica answering the client",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&load.path)?;
            let answered: BTreeSet<&str> =
                text.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
            if six.iter().all(|p| answered.contains(p.as_str())) {
                return Ok(Some(()));
            }
            bail!("answered by {answered:?}")
        },
    )?;
    std::thread::sleep(HEARTBEAT * 2);
    let end = jiff::Timestamp::now();
    stop.store(true, Ordering::Relaxed);
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the node watcher panicked"))?;
    // The requests.
    let text = load.stop(&c, NS)?;
    let answered: BTreeMap<&str, usize> =
        text.lines()
            .filter_map(|l| l.strip_prefix("ok "))
            .fold(BTreeMap::new(), |mut m, h| {
                *m.entry(h).or_default() += 1;
                m
            });
    let ok: usize = answered.values().sum();
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    eprintln!(
        "ha: scaled 2→6 in {scaled_in:.1?} while {etcd_victim} and {killed} were killed; \
         {new_leader} leads; {ok} requests answered by {answered:?}, {} failed",
        failures.len()
    );
    ensure!(
        text.ends_with("done\n"),
        "the request loop broke off:\n{text}"
    );
    ensure!(
        failures.is_empty() && ok >= 100,
        "{} of {} requests to the Service failed:\n{}",
        failures.len(),
        ok + failures.len(),
        failures.join("\n")
    );
    let backends: BTreeSet<String> = answered.keys().map(|h| h.to_string()).collect();
    ensure!(
        six.is_subset(&backends),
        "not every replica answered: {six:?} vs {backends:?}"
    );

    // The nodes.
    ensure!(
        seen.failed_polls * 4 < seen.polls,
        "the node watcher mostly failed ({} of {} polls)",
        seen.failed_polls,
        seen.polls
    );
    ensure!(
        seen.not_ready.is_empty(),
        "nodes went NotReady: {:?}",
        seen.not_ready
    );
    for node in c.nodes() {
        let renewals = seen.renewals.get(&node).cloned().unwrap_or_default();
        let gap = largest_gap(&renewals, end);
        eprintln!(
            "ha: {node}: {} lease renewals seen, largest gap {gap:.1?}",
            renewals.len()
        );
        ensure!(
            renewals.len() >= 4 && gap < HEARTBEAT * 2,
            "{node} missed a heartbeat: largest gap between lease renewals {gap:?} \
             (renewals {renewals:?})\n----- agent log (last 60 lines) -----\n{}",
            tail(&c.agent_log(&node), 60)
        );
    }
    // The agents were given the first control plane only (see the harness): when that one
    // died, they failed over to the survivor they had learned from the Endpoints.
    if killed == control_planes[0] {
        for node in c.nodes() {
            let log = c.agent_log(&node);
            ensure!(
                log.contains("failing over to another API server"),
                "{node} did not fail over from {killed}:\n{}",
                tail(&log, 60)
            );
        }
    }
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
