//! Node maintenance on a 3-node cluster, as a person does it with kubectl: `kubectl drain`
//! evicts a Deployment's pods through the `pods/eviction` subresource one at a time under a
//! PodDisruptionBudget (never fewer ready pods than it keeps, as a watch recorded during the
//! drain shows), the node stays cordoned and the replacements run elsewhere; a budget that
//! allows no disruption refuses evictions with 429 (kubectl keeps retrying and times out),
//! with the newest kubectl and with 1.20; `kubectl uncordon` makes the node schedulable.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use skiff_tests::Kubectl;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::wait_for;

const NS: &str = "drain-test";

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: drain-test}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: skiff.test/busybox:1
        command: ["sh", "-c", "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www"]
        # What a Kubernetes user does so that clients have moved on before the server stops.
        lifecycle: {preStop: {sleep: {seconds: 2}}}
        resources: {requests: {cpu: 100m}}
        volumeMounts: [{name: scratch, mountPath: /scratch}]
      volumes: [{name: scratch, emptyDir: {}}]
"#;

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: drain-test}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// A client pod on `node` calling the web Service until `/tmp/stop` exists in it: one line
/// per request, the answering pod's name or FAIL.
fn start_client(c: &Cluster, node: &str) -> Result<std::process::Child> {
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {NS}}}\n\
         spec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - {{name: main, image: skiff.test/busybox:1, command: [sleep, '3600']}}\n"
    ))?;
    c.wait_pod_running(NS, "client", Duration::from_secs(60))?;
    let vip = c.kubectl(&[
        "get",
        "svc",
        "web",
        "-n",
        NS,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let script = format!(
        "until [ -e /tmp/stop ]; do timeout 3 wget -q -O - http://{}/ || echo FAIL; sleep 0.05; done",
        vip.trim()
    );
    Ok(c.pod_command_in(NS, "client", &["sh", "-c", &script])?
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()?)
}

/// Stop the client and check that every request was answered by a web pod.
fn check_client(c: &Cluster, client: std::process::Child, web: &BTreeSet<String>) -> Result<()> {
    let out = c
        .pod_command_in(NS, "client", &["touch", "/tmp/stop"])?
        .output()?;
    ensure!(out.status.success(), "touch /tmp/stop in the client failed");
    let out = client.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        lines.len() > 10,
        "too few requests during the drain:\n{text}"
    );
    let strangers: Vec<&&str> = lines.iter().filter(|l| !web.contains(**l)).collect();
    ensure!(
        strangers.is_empty(),
        "requests during the drain failed or were not answered by a web pod: {strangers:?} of {} requests",
        lines.len()
    );
    // Gone before the next drain: kubectl drain refuses a pod without a controller even
    // while it terminates.
    c.kubectl(&["delete", "pod", "client", "-n", NS, "--timeout=60s"])?;
    Ok(())
}

const BUDGET: &str = r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: drain-test}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#;

/// What the watch saw: each web pod's readiness (ready and not being deleted), the fewest
/// ready pods at any event after the initial list, and the pods that were deleted.
#[derive(Default)]
struct Seen {
    ready: BTreeMap<String, bool>,
    synced: bool,
    fewest_ready: Option<usize>,
    deleted: Vec<String>,
}

fn counts_as_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Seen {
    fn record(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                self.ready.insert(name, counts_as_ready(&p));
            }
            watcher::Event::Delete(p) => {
                let name = p.metadata.name.clone().unwrap_or_default();
                self.ready.remove(&name);
                self.deleted.push(name);
            }
            watcher::Event::Init => self.ready.clear(),
            watcher::Event::InitDone => self.synced = true,
        }
        if self.synced {
            let now = self.ready.values().filter(|r| **r).count();
            self.fewest_ready = Some(self.fewest_ready.map_or(now, |f| f.min(now)));
        }
    }
}

/// Watch the web pods on a runtime of their own, which stops with the returned runtime.
fn watch_web_pods(c: &Cluster) -> Result<(Arc<Mutex<Seen>>, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client = rt.block_on(c.client())?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = seen.clone();
    rt.spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NS);
        let mut events = watcher(pods, watcher::Config::default().labels("app=web")).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => sink.lock().unwrap_or_else(|p| p.into_inner()).record(e),
                // A broken watch would hide a dip: fail loudly in the assertions below.
                Err(e) => {
                    let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                    s.synced = false;
                    s.fewest_ready = Some(0);
                    eprintln!("pod watch failed: {e}");
                }
            }
        }
    });
    Ok((seen, rt))
}

/// `(pod, node)` of the web pods that are ready and not being deleted.
fn ready_pods(c: &Cluster) -> Result<Vec<(String, String)>> {
    let out = c.kubectl(&["get", "pods", "-n", NS, "-l", "app=web", "-o", "json"])?;
    let list: kube::core::ObjectList<Pod> = serde_json::from_str(&out)?;
    Ok(list
        .items
        .iter()
        .filter(|p| counts_as_ready(p))
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            (
                p.metadata.name.clone().unwrap_or_default(),
                node.unwrap_or_default(),
            )
        })
        .collect())
}

fn allowed_disruptions(c: &Cluster) -> Result<String> {
    c.kubectl(&[
        "get",
        "pdb",
        "web",
        "-n",
        NS,
        "-o",
        "jsonpath={.status.disruptionsAllowed}",
    ])
}

fn unschedulable(c: &Cluster, node: &str) -> Result<String> {
    c.jsonpath("node", node, ".spec.unschedulable")
}

fn run() -> Result<()> {
    let c = Cluster::start(ClusterOptions {
        nodes: 3,
        ..Default::default()
    })?;
    c.kubectl(&["create", "namespace", NS])?;
    c.apply(DEPLOYMENT)?;
    c.apply(SERVICE)?;
    c.apply(BUDGET)?;
    let pods = wait_for("3 ready web pods", Duration::from_secs(120), || {
        let pods = ready_pods(&c)?;
        Ok((pods.len() == 3).then_some(pods))
    })?;
    wait_for(
        "the budget allows one disruption",
        Duration::from_secs(30),
        || Ok((allowed_disruptions(&c)? == "1").then_some(())),
    )?;
    let table = c.kubectl(&["get", "pdb", "-n", NS])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    ensure!(
        header
            == [
                "NAME",
                "MIN",
                "AVAILABLE",
                "MAX",
                "UNAVAILABLE",
                "ALLOWED",
                "DISRUPTIONS",
                "AGE"
            ],
        "kubectl get pdb:\n{table}"
    );
    ensure!(
        table
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            == ["web", "2", "N/A", "1"],
        "kubectl get pdb:\n{table}"
    );

    // The node with the most web pods: with two there, the second eviction must wait.
    let mut per_node: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (pod, node) in &pods {
        per_node
            .entry(node.as_str())
            .or_default()
            .push(pod.as_str());
    }
    let (target, evicted) = per_node
        .iter()
        .max_by_key(|(_, p)| p.len())
        .map(|(n, p)| (n.to_string(), p.clone()))
        .context("no web pods")?;

    // A client on another node calls the Service throughout the drain.
    let client_node = c
        .nodes()
        .into_iter()
        .find(|n| *n != target)
        .context("a second node")?;
    let client = start_client(&c, &client_node)?;
    let (seen, _watch) = watch_web_pods(&c)?;
    wait_for(
        "the watch has listed the pods",
        Duration::from_secs(30),
        || {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            Ok((s.synced && s.fewest_ready == Some(3)).then_some(()))
        },
    )?;
    let out = c.kubectl(&[
        "drain",
        &target,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=120s",
    ])?;
    ensure!(
        out.contains(&format!("node/{target} drained")),
        "drain said:\n{out}"
    );
    for pod in &evicted {
        ensure!(
            out.contains(&format!("pod/{pod} evicted")),
            "drain said:\n{out}"
        );
    }
    ensure!(
        unschedulable(&c, &target)? == "true",
        "{target} is not cordoned"
    );

    // Replacements run on the other nodes; the budget was never broken.
    let after = wait_for("3 ready web pods again", Duration::from_secs(120), || {
        let pods = ready_pods(&c)?;
        Ok((pods.len() == 3).then_some(pods))
    })?;
    ensure!(
        after.iter().all(|(_, node)| *node != target),
        "a web pod runs on the drained node: {after:?}"
    );
    let web: BTreeSet<String> = pods.iter().chain(&after).map(|(p, _)| p.clone()).collect();
    check_client(&c, client, &web)?;
    {
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        ensure!(s.synced, "the pod watch broke during the drain");
        ensure!(
            s.fewest_ready == Some(2),
            "fewest ready web pods during the drain: {:?} (the budget keeps 2)",
            s.fewest_ready
        );
        for pod in &evicted {
            ensure!(s.deleted.iter().any(|d| d == pod), "{pod} was not deleted");
        }
    }

    // A budget that allows nothing: evictions are refused with 429, which kubectl retries
    // until its timeout, both the newest kubectl and 1.20.
    c.kubectl(&[
        "patch",
        "pdb",
        "web",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":3}}"#,
    ])?;
    wait_for("the budget allows none", Duration::from_secs(30), || {
        Ok((allowed_disruptions(&c)? == "0").then_some(()))
    })?;
    let other = after[0].1.clone();
    let refused = c
        .kubectl_command()?
        .args([
            "drain",
            &other,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=8s",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success(),
        "drain of {other} succeeded against the budget"
    );
    ensure!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "kubectl drain said:\n{stderr}"
    );
    let old = Kubectl::debian_120()?;
    let refused = old
        .command_with(c.kubeconfig(), c.dir())
        .args([
            "drain",
            &other,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=8s",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success(),
        "kubectl 1.20 drained {other} against the budget"
    );
    ensure!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "kubectl 1.20 drain said:\n{stderr}"
    );
    ensure!(
        ready_pods(&c)?.len() == 3,
        "a refused eviction deleted a pod"
    );

    // Uncordon clears both.
    for node in [&target, &other] {
        let out = c.kubectl(&["uncordon", node])?;
        ensure!(out.contains(&format!("node/{node} uncordoned")), "{out}");
        let flag = unschedulable(&c, node)?;
        if !flag.is_empty() && flag != "false" {
            bail!("{node} is still unschedulable ({flag})");
        }
    }
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

#[test]
fn drain_respects_the_disruption_budget() -> Result<()> {
    if skip_unless_root("drain_respects_the_disruption_budget") {
        return Ok(());
    }
    run()
}
