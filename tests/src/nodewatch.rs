//! A watcher of the nodes for tests that disturb the control plane: every Lease renewal and
//! every Ready status other than True, seen by polling with kubectl.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::Kubectl;
use crate::cluster::Cluster;

/// What a watcher of the nodes saw: every Lease renewal time and Ready status, per node.
#[derive(Default)]
pub struct NodeWatch {
    pub renewals: BTreeMap<String, BTreeSet<jiff::Timestamp>>,
    pub not_ready: Vec<String>,
    pub polls: usize,
    pub failed_polls: usize,
}

/// Polls the node Leases and Ready conditions every 250 ms until `stop`, with its own kubectl
/// (the admin kubeconfig is moved to a live control plane when one is killed; a poll that
/// meets the dying one fails and is only counted).
pub fn watch_nodes(
    c: &Cluster,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<NodeWatch>> {
    let kubectl = Kubectl::newest()?;
    let (kubeconfig, dir) = (c.kubeconfig().to_path_buf(), c.dir().to_path_buf());
    let nodes = c.nodes();
    Ok(std::thread::spawn(move || {
        let mut seen = NodeWatch::default();
        let get = |args: &[&str]| -> Option<Value> {
            let out = kubectl
                .command_with(&kubeconfig, &dir)
                .arg("--request-timeout=2s")
                .args(args)
                .args(["-o", "json"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).ok())
                .flatten()
        };
        while !stop.load(Ordering::Relaxed) {
            seen.polls += 1;
            match (
                get(&["-n", "kube-node-lease", "get", "leases"]),
                get(&["get", "nodes"]),
            ) {
                (Some(leases), Some(node_list)) => {
                    for l in leases["items"].as_array().into_iter().flatten() {
                        let name = l["metadata"]["name"].as_str().unwrap_or_default();
                        if let Some(t) =
                            l["spec"]["renewTime"].as_str().and_then(|t| t.parse().ok())
                            && nodes.iter().any(|n| n == name)
                        {
                            seen.renewals.entry(name.to_string()).or_default().insert(t);
                        }
                    }
                    for n in node_list["items"].as_array().into_iter().flatten() {
                        let ready = n["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|c| c["type"] == "Ready");
                        if let Some(r) = ready
                            && r["status"] != "True"
                        {
                            seen.not_ready.push(format!(
                                "{} Ready={} at {}",
                                n["metadata"]["name"],
                                r["status"],
                                jiff::Timestamp::now()
                            ));
                        }
                    }
                }
                _ => seen.failed_polls += 1,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        seen
    }))
}

/// The largest gap between consecutive renewals, and between the last one and `end`.
pub fn largest_gap(renewals: &BTreeSet<jiff::Timestamp>, end: jiff::Timestamp) -> Duration {
    let times: Vec<jiff::Timestamp> = renewals.iter().copied().chain([end]).collect();
    times
        .windows(2)
        .map(|w| Duration::try_from(w[1].duration_since(w[0])).unwrap_or_default())
        .max()
        .unwrap_or_default()
}
