//! `control-bench`: how fast the control plane turns intent into bound pods.
//!
//! 1. Deployment → bound pods: on a fresh `skiff-control` (embedded store) with `--nodes` Ready
//!    nodes, post one Deployment with `--replicas` replicas and time until every pod has a
//!    node (deployment controller → ReplicaSet controller → scheduler → binding).
//! 2. Scheduler throughput: post `--pods` bare pods at once and time their binding (pods/s).
//!
//! Nodes are API objects only (no kubelets are needed to bind). Run through
//! `cargo xtask bench-control`, which builds release binaries and writes
//! docs/benchmarks-control.md.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use skiff_tests::{ControlPlane, StoreBackend, rss_kib};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    replicas: usize,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "cargo xtask bench-control")]
    command: String,
}

async fn client(cp: &ControlPlane) -> Result<kube::Client> {
    let text = std::fs::read_to_string(&cp.kubeconfig)?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn add_nodes(client: &kube::Client, n: usize) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..n)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let name = format!("bench-node-{i:03}");
                let node: Node = serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"kubernetes.io/hostname": name}}}))?;
                nodes.create(&PostParams::default(), &node).await?;
                let res = json!({"cpu": "32", "memory": "128Gi", "pods": "250"});
                let now = k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let status = json!({"status": {"capacity": res, "allocatable": res,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
                nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Wait until `want` pods matching `labels` are bound; returns the time from `start` to the
/// last binding and the bindings per node.
async fn wait_bound(
    client: &kube::Client,
    labels: &str,
    want: usize,
    start: Instant,
) -> Result<(Duration, HashMap<String, usize>)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(pods, watcher::Config::default().labels(labels))
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut bound: HashMap<String, String> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = start + Duration::from_secs(300);
    while bound.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, stream.try_next()).await else {
            bail!(
                "only {} of {want} pods bound after 300 s ({} seen)",
                bound.len(),
                seen.len()
            );
        };
        let Some(pod) = next? else {
            bail!("watch ended")
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        seen.insert(name.clone());
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            bound.insert(name, node);
        }
    }
    let took = start.elapsed();
    let mut per_node = HashMap::new();
    for node in bound.values() {
        *per_node.entry(node.clone()).or_insert(0) += 1;
    }
    Ok((took, per_node))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cp = ControlPlane::start(StoreBackend::Embedded)?;
    let client = client(&cp).await?;
    eprintln!("adding {} nodes…", args.nodes);
    add_nodes(&client, args.nodes).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(cp.pid()).unwrap_or(0) as f64 / 1024.0;

    eprintln!("posting a Deployment with {} replicas…", args.replicas);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"replicas": args.replicas, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "main", "image": "kubia:v1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))?;
    let start = Instant::now();
    deploys
        .create(&PostParams::default(), &d)
        .await
        .context("creating the deployment")?;
    let (deploy_time, per_node) = wait_bound(&client, "app=bench", args.replicas, start).await?;
    let spread = (
        per_node.values().min().copied().unwrap_or(0),
        per_node.values().max().copied().unwrap_or(0),
    );
    eprintln!(
        "deployment: {} pods bound in {deploy_time:.2?}",
        args.replicas
    );
    let rss_loaded = rss_kib(cp.pid()).unwrap_or(0) as f64 / 1024.0;

    eprintln!("posting {} bare pods…", args.pods);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    futures::stream::iter(0..args.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(json!({"metadata": {"name": format!("bare-{i:05}"), "labels": {"bench": "bare"}},
                    "spec": {"containers": [{"name": "main", "image": "kubia:v1"}]}}))?;
                pods.create(&PostParams::default(), &p).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let posted = start.elapsed();
    let (bare_time, _) = wait_bound(&client, "bench=bare", args.pods, start).await?;
    let throughput = args.pods as f64 / bare_time.as_secs_f64();
    eprintln!(
        "scheduler: {} pods bound in {bare_time:.2?} ({throughput:.0} pods/s)",
        args.pods
    );

    let md = format!(
        "# Control-plane benchmark: from a Deployment to bound pods\n\n\
         Command: `{}`  \n{}; release build; embedded store; \
         all components (apiserver, controllers, scheduler) in one `skiff-control`, clients over TLS on loopback.\n\n\
         | measure | result |\n|---|---|\n\
         | Deployment of {} replicas on {} nodes: POST until every pod is bound | {:.2} s (goal < 5 s) |\n\
         | spread of those pods over nodes (min / max per node) | {} / {} |\n\
         | {} bare pods posted at once (32 concurrent clients; posting took {:.2} s): POST of the first until the last is bound | {:.2} s, {:.0} pods/s |\n\
         | skiff-control RSS with {} nodes, idle / with the {} pods | {:.1} / {:.1} MiB |\n",
        args.command,
        skiff_tests::provenance(),
        args.replicas,
        args.nodes,
        deploy_time.as_secs_f64(),
        spread.0,
        spread.1,
        args.pods,
        posted.as_secs_f64(),
        bare_time.as_secs_f64(),
        throughput,
        args.nodes,
        args.replicas,
        rss_idle,
        rss_loaded,
    );
    skiff_tests::print_report(&md, args.out.as_deref())?;
    Ok(())
}
