//! Static pods: manifests in `--manifest-dir` run on this node without the scheduler, as
//! the kubelet's file source does. Each runs under a uid derived from its manifest and
//! appears in the API as a mirror pod (annotation `kubernetes.io/config.mirror`, owned by
//! the Node) that carries its status; a deleted mirror pod is re-created, a removed manifest
//! stops the pod and removes its mirror.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::pods::Agent;

pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const STATIC_UID_PREFIX: &str = "static-";

/// Read every manifest in `dir` into the pod this node runs for it. Bad files are logged
/// and skipped (a typo in one manifest must not stop the others).
pub fn read_manifests(dir: &Path, node: &str) -> Vec<Pod> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "yaml" | "yml" | "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match static_pod(&text, node) {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!(file = %path.display(), "skipping static pod manifest: {e}"),
        }
    }
    out
}

fn static_pod(text: &str, node: &str) -> Result<Pod, String> {
    let mut pod: Pod = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("the manifest has no metadata.name")?;
    let spec = pod.spec.as_mut().ok_or("the manifest has no spec")?;
    if spec.containers.is_empty() {
        return Err("the manifest has no containers".into());
    }
    spec.node_name = Some(node.to_string());
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    let hash = hex(&Sha256::digest(format!("{node}\n{text}").as_bytes())[..16]);
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pod.metadata.uid = Some(format!("{STATIC_UID_PREFIX}{hash}"));
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert("kubernetes.io/config.hash".into(), hash.clone());
    pod.status = None;
    Ok(pod)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Poll the manifest directory, hand the set of static pods to the pod manager, and keep
/// their mirror pods in the API.
pub async fn run(agent: Arc<Agent>, dir: PathBuf, to_manager: mpsc::Sender<Vec<Pod>>) {
    let mut last: Option<Vec<String>> = None;
    loop {
        let pods = read_manifests(&dir, &agent.cfg.node_name);
        let uids: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        if last.as_ref() != Some(&uids) {
            if to_manager.send(pods.clone()).await.is_err() {
                return;
            }
            last = Some(uids);
        }
        if let Err(e) = sync_mirrors(&agent, &pods).await {
            tracing::warn!("syncing mirror pods: {e}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn sync_mirrors(agent: &Agent, pods: &[Pod]) -> Result<(), kube::Error> {
    let node: Node = Api::<Node>::all(agent.client.clone())
        .get(&agent.cfg.node_name)
        .await?;
    let all: Api<Pod> = Api::all(agent.client.clone());
    let existing = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", agent.cfg.node_name)))
        .await?;
    let mut mirrors: HashMap<(String, String), Pod> = HashMap::new();
    for p in existing.items.into_iter().filter(crate::pods::is_mirror) {
        let key = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        mirrors.insert(key, p);
    }
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    for pod in pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let hash = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.hash"))
            .cloned()
            .unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(agent.client.clone(), &ns);
        if let Some(m) = mirrors.remove(&(ns.clone(), name.clone())) {
            let current = m
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRROR_ANNOTATION))
                .cloned();
            if m.metadata.deletion_timestamp.is_none() && current.as_deref() == Some(hash.as_str())
            {
                continue;
            }
            // Deleted by a user or out of date: replace it.
            let _ = api.delete(&name, &force).await;
            continue;
        }
        let mut mirror = pod.clone();
        mirror.metadata.uid = None;
        mirror.metadata.resource_version = None;
        mirror
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(MIRROR_ANNOTATION.into(), hash);
        mirror.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: agent.cfg.node_name.clone(),
            uid: node.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            ..Default::default()
        }]);
        match api.create(&PostParams::default(), &mirror).await {
            Ok(_) => tracing::info!(pod = %name, "created mirror pod"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    // Mirrors whose manifest is gone.
    for ((ns, name), _) in mirrors {
        let api: Api<Pod> = Api::namespaced(agent.client.clone(), &ns);
        let _ = api.delete(&name, &force).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_node_pods_with_stable_uids() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: skiff.test/busybox:1\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("bad.yaml"),
            "kind: Pod\nmetadata: {name: x}\n",
        )
        .unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let pods = read_manifests(d.path(), "node-1");
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-1")
        );
        let uid = p.metadata.uid.clone().unwrap();
        assert!(uid.starts_with(STATIC_UID_PREFIX));
        assert_eq!(
            read_manifests(d.path(), "node-1")[0]
                .metadata
                .uid
                .as_deref(),
            Some(uid.as_str())
        );
        assert_ne!(
            read_manifests(d.path(), "node-2")[0]
                .metadata
                .uid
                .as_deref(),
            Some(uid.as_str())
        );
    }
}
