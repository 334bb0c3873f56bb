//! A control plane restarted one instance at a time drops no API request that the client
//! retries (issue 16's "upgrade without loss"). On a cluster of 2 control planes over an etcd
//! member, each API server in turn gets SIGTERM and is started again with the same command
//! line (`cargo xtask cluster restart`), while:
//!
//! * an API client lists and creates ConfigMaps without pause, balancing over both servers on
//!   the client side as the agents (and k3s's agent) do: a refused connection moves it to the
//!   other server, and a GET whose connection broke is sent again (client-go retries an
//!   idempotent GET on a reset); a create is retried only when it never reached a server.
//!   Not one request fails after that, and every create that was answered is stored;
//! * the agents renew their Leases: no node goes NotReady and no heartbeat is missed;
//! * a client pod calls a Deployment's Service: not one request fails.
//!
//! A stopping API server leaves the `kubernetes` endpoints, closes its listener, ends its
//! watches and answers the requests it has (see `ApiServer::shutdown`).

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::ha_scenario::{CONTROL_ARGS, HEARTBEAT, ServiceLoad, deploy_web_and_client};
use skiff_tests::nodewatch::{largest_gap, watch_nodes};
use skiff_tests::wait_for;

const NS: &str = "ha-rolling";

/// What the API client did.
#[derive(Default, Debug)]
struct ApiLoad {
    lists: usize,
    creates: usize,
    /// Requests sent again (to the other server) after a refused or broken connection.
    retries: usize,
    /// Requests that failed after the retries, with why.
    failures: Vec<String>,
    /// Names of the ConfigMaps whose create was answered 201.
    created: BTreeSet<String>,
}

/// Whether `e` is a connection that was refused: the request never reached a server, so any
/// request may be sent again.
fn refused(e: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// One request with client-side failover over `servers`, starting at `*current` (moved on
/// when a server refuses). `idempotent` requests are also sent again after any connection
/// error; a non-idempotent one only after a refused connection.
async fn with_failover<T, F, Fut>(
    servers: &[kube::Client],
    current: &mut usize,
    retries: &mut usize,
    idempotent: bool,
    call: F,
) -> Result<T, String>
where
    F: Fn(kube::Client) -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut last = String::new();
    // Each server twice: a server restarting may refuse both times, the other must answer.
    for attempt in 0..servers.len() * 2 {
        if attempt > 0 {
            *retries += 1;
        }
        match call(servers[*current].clone()).await {
            Ok(v) => return Ok(v),
            Err(kube::Error::Api(s)) => return Err(format!("{} {}", s.code, s.message)),
            Err(e) if refused(&e) || idempotent => {
                last = format!("server {current}: {e}");
                *current = (*current + 1) % servers.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(format!(
                    "server {current}: {e} (not retried: not idempotent)"
                ));
            }
        }
    }
    Err(format!("no server answered: {last}"))
}

/// Lists and creates ConfigMaps in [`NS`] until `stop`.
async fn api_load(servers: Vec<kube::Client>, stop: Arc<AtomicBool>) -> ApiLoad {
    let mut load = ApiLoad::default();
    let mut current = 0;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let listed = with_failover(&servers, &mut current, &mut load.retries, true, |c| async {
            Api::<ConfigMap>::namespaced(c, NS)
                .list(&ListParams::default().limit(5))
                .await
        })
        .await;
        load.lists += 1;
        if let Err(e) = listed {
            load.failures
                .push(format!("list at {}: {e}", jiff::Timestamp::now()));
        }
        n += 1;
        let name = format!("load-{n}");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = with_failover(&servers, &mut current, &mut load.retries, false, |c| {
            let cm = cm.clone();
            async move {
                Api::<ConfigMap>::namespaced(c, NS)
                    .create(&PostParams::default(), &cm)
                    .await
            }
        })
        .await;
        load.creates += 1;
        match created {
            Ok(_) => {
                load.created.insert(name);
            }
            Err(e) => load
                .failures
                .push(format!("create {name} at {}: {e}", jiff::Timestamp::now())),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load
}

/// A client of each control plane, with the admin kubeconfig's credentials.
async fn clients(c: &Cluster) -> Result<Vec<kube::Client>> {
    let kubeconfig = kube::config::Kubeconfig::read_from(c.kubeconfig())?;
    let mut out = Vec::new();
    for m in &c.state().control_planes {
        let mut config = kube::Config::from_custom_kubeconfig(
            kubeconfig.clone(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        config.cluster_url = format!("https://{}:6443", m.ip).parse()?;
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(20));
        out.push(kube::Client::try_from(config)?);
    }
    Ok(out)
}

fn setup_workload(c: &Cluster) -> Result<()> {
    deploy_web_and_client(c, NS)?;
    wait_for("2 web pods available", Duration::from_secs(60), || {
        let ready = c.kubectl(&[
            "-n",
            NS,
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ])?;
        Ok((ready.trim() == "2").then_some(()))
    })?;
    Ok(())
}

#[test]
fn rolling_control_plane_restart_drops_no_retried_request() -> Result<()> {
    if skip_unless_root("rolling_control_plane_restart_drops_no_retried_request") {
        return Ok(());
    }
    let mut c = Cluster::start(ClusterOptions {
        nodes: 2,
        control_planes: 2,
        etcd_members: 1,
        control_args: CONTROL_ARGS.iter().map(|s| s.to_string()).collect(),
        agent_args: vec![
            "--node-status-update-seconds".into(),
            HEARTBEAT.as_secs().to_string(),
        ],
        ..Default::default()
    })?;
    c.wait_api_servers_published(Duration::from_secs(30))?;
    setup_workload(&c)?;

    // The Service, from a pod, without pause.
    let service_load = ServiceLoad::start(&c, NS, "service-load.txt")?;
    // The API, from this process.
    let rt = tokio::runtime::Runtime::new()?;
    let servers = rt.block_on(clients(&c))?;
    let stop = Arc::new(AtomicBool::new(false));
    let api = rt.spawn(api_load(servers, stop.clone()));
    let watcher = watch_nodes(&c, stop.clone())?;
    std::thread::sleep(HEARTBEAT);

    // One at a time, each ready (and back in the endpoints) before the next.
    let names: Vec<String> = c
        .state()
        .control_planes
        .iter()
        .map(|m| m.name.clone())
        .collect();
    for name in &names {
        let before = c
            .state()
            .control_planes
            .iter()
            .find(|m| &m.name == name)
            .and_then(|m| m.process);
        c.restart(name)?;
        let after = c
            .state()
            .control_planes
            .iter()
            .find(|m| &m.name == name)
            .and_then(|m| m.process);
        ensure!(
            before != after && after.is_some_and(|p| p.alive()),
            "{name} was not restarted"
        );
        c.wait_api_servers_published(Duration::from_secs(30))?;
        eprintln!("ha_rolling: {name} restarted and back in the kubernetes endpoints");
        std::thread::sleep(HEARTBEAT * 2);
    }

    let end = jiff::Timestamp::now();
    stop.store(true, Ordering::Relaxed);
    let load = rt.block_on(api).context("the API client panicked")?;
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the node watcher panicked"))?;
    let service_text = service_load.stop(&c, NS)?;

    // The API requests: none failed after its retry, every answered create is stored.
    eprintln!(
        "ha_rolling: {} lists and {} creates, {} sent again after a refused or broken \
         connection, {} failed",
        load.lists,
        load.creates,
        load.retries,
        load.failures.len()
    );
    ensure!(
        load.failures.is_empty(),
        "API requests failed across the rolling restart:\n{}",
        load.failures.join("\n")
    );
    ensure!(load.creates >= 50, "too few requests to judge: {load:?}");
    let stored: BTreeSet<String> = c
        .kubectl(&["-n", NS, "get", "configmaps", "-o", "name"])?
        .lines()
        .filter_map(|l| l.strip_prefix("configmap/"))
        .filter(|n| n.starts_with("load-"))
        .map(String::from)
        .collect();
    let lost: Vec<&String> = load.created.difference(&stored).collect();
    ensure!(lost.is_empty(), "answered creates not stored: {lost:?}");

    // The Service.
    let text = service_text;
    let ok = text.lines().filter(|l| l.starts_with("ok ")).count();
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    eprintln!(
        "ha_rolling: {ok} Service requests answered, {} failed",
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

    // The nodes.
    ensure!(
        seen.failed_polls * 2 < seen.polls,
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
            "ha_rolling: {node}: {} lease renewals, largest gap {gap:.1?}",
            renewals.len()
        );
        if renewals.len() < 4 || gap >= HEARTBEAT * 2 {
            bail!(
                "{node} missed a heartbeat: largest gap between lease renewals {gap:?} \
                 (renewals {renewals:?})"
            );
        }
    }
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
