//! The scheduler's view of the cluster: every node with what its pods take, counting pods
//! the scheduler has just bound before the informer shows them bound (kube's assumed pods),
//! so a burst of pods does not all land on the node that looked emptiest at the start.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use super::filters::NodeInfo;
use super::resources::{PodRes, Usage};

#[derive(Default)]
pub struct NodeState {
    /// `None` while pods are known on a node the informer does not (yet) show.
    pub info: Option<NodeInfo>,
    pub usage: Usage,
}

struct Accounted {
    uid: String,
    node: String,
    res: PodRes,
    /// Since when the pod is assumed (decided, or bound but not yet seen bound).
    assumed: Option<Instant>,
}

#[derive(Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeState>,
    pods: HashMap<String, Accounted>,
}

impl Cache {
    /// A node added or changed; returns whether it changed anything scheduling looks at.
    pub fn set_node(&mut self, info: NodeInfo) -> bool {
        let state = self.nodes.entry(info.name().to_string()).or_default();
        let changed = !state
            .info
            .as_ref()
            .is_some_and(|old| old.same_for_scheduling(&info));
        state.info = Some(info);
        changed
    }

    /// The resource version of a known node.
    pub fn node_version(&self, name: &str) -> Option<&str> {
        self.nodes
            .get(name)?
            .info
            .as_ref()?
            .node
            .metadata
            .resource_version
            .as_deref()
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(state) = self.nodes.get_mut(name) {
            state.info = None;
            if state.usage.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    pub fn node_names(&self) -> impl Iterator<Item = &String> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.info.is_some())
            .map(|(n, _)| n)
    }

    /// The accounted pod under `key`: its uid, and whether it is only assumed.
    pub fn pod(&self, key: &str) -> Option<(&str, bool)> {
        self.pods
            .get(key)
            .map(|a| (a.uid.as_str(), a.assumed.is_some()))
    }

    pub fn pod_keys(&self) -> impl Iterator<Item = (&String, &str, Option<Instant>)> {
        self.pods
            .iter()
            .map(|(k, a)| (k, a.uid.as_str(), a.assumed))
    }

    /// Count a pod against a node; `assumed` when the scheduler put it there itself.
    pub fn add_pod(&mut self, key: &str, uid: &str, node: &str, res: PodRes, assumed: bool) {
        self.remove_pod(key);
        self.nodes
            .entry(node.to_string())
            .or_default()
            .usage
            .add(&res);
        self.pods.insert(
            key.to_string(),
            Accounted {
                uid: uid.to_string(),
                node: node.to_string(),
                res,
                assumed: assumed.then(Instant::now),
            },
        );
    }

    /// The informer shows a bound pod. Returns true if it is new to the cache (its resources
    /// must be worked out and added with `add_pod`).
    pub fn confirm(&mut self, key: &str, uid: &str, node: &str) -> bool {
        match self.pods.get_mut(key) {
            Some(a) if a.uid == uid && a.node == node => {
                a.assumed = None;
                false
            }
            _ => true,
        }
    }

    /// The binding went through: restart the assumed pod's expiry clock.
    pub fn bound(&mut self, key: &str, uid: &str) {
        if let Some(a) = self.pods.get_mut(key).filter(|a| a.uid == uid)
            && a.assumed.is_some()
        {
            a.assumed = Some(Instant::now());
        }
    }

    /// Stop counting a pod; returns whether it was counted.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(a) = self.pods.remove(key) else {
            return false;
        };
        if let Some(state) = self.nodes.get_mut(&a.node) {
            state.usage.remove(&a.res);
            if state.info.is_none() && state.usage.is_empty() {
                self.nodes.remove(&a.node);
            }
        }
        true
    }

    /// Forget an assumption (the binding failed); true if it was there.
    pub fn forget(&mut self, key: &str, uid: &str) -> bool {
        if self
            .pods
            .get(key)
            .is_some_and(|a| a.uid == uid && a.assumed.is_some())
        {
            self.remove_pod(key)
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::default();
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "resourceVersion": "1"},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"}}}))
        .unwrap();
        assert!(c.set_node(NodeInfo::new(Arc::new(node.clone()))));
        assert!(!c.set_node(NodeInfo::new(Arc::new(node))));
        let res = PodRes::default();
        c.add_pod("ns/a", "u1", "n", res.clone(), true);
        assert_eq!(c.nodes["n"].usage.pods, 1);
        assert_eq!(c.pod("ns/a"), Some(("u1", true)));
        assert!(!c.confirm("ns/a", "u1", "n"));
        assert_eq!(c.pod("ns/a"), Some(("u1", false)));
        assert!(!c.forget("ns/a", "u1")); // confirmed pods are not forgotten
        c.add_pod("ns/b", "u2", "n", res, true);
        assert!(c.forget("ns/b", "u2"));
        assert_eq!(c.nodes["n"].usage.pods, 1);
        assert!(c.remove_pod("ns/a"));
        assert_eq!(c.nodes["n"].usage.pods, 0);
        c.remove_node("n");
        assert!(c.nodes.is_empty());
    }
}
