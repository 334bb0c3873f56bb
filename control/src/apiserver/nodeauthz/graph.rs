//! What each node may reach through the pods bound to it (kube's node authorizer graph,
//! `plugin/pkg/auth/authorizer/node/graph.go`): a scheduled pod links its node to its
//! Secrets, ConfigMaps, ServiceAccount and PersistentVolumeClaims. Kept as reference counts
//! per (node, object) so a lookup is one hash probe and a pod change touches only its own
//! references.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodSpec, Volume};

/// The kinds of objects a node reaches through its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
    ServiceAccount,
    PersistentVolumeClaim,
}

/// The annotation kubelet sets on the API copy of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What one scheduled pod links its node to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRefs {
    pub node: String,
    pub namespace: String,
    pub refs: Vec<(Kind, String)>,
}

/// The references of `pod`, or `None` while it is not bound to a node (unscheduled pods
/// grant nothing, as in kube's graph populator).
pub fn pod_refs(pod: &Pod) -> Option<PodRefs> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut refs = Vec::new();
    // A mirror pod links only to its node: a node must never gain access to other objects
    // by creating a pod (NodeRestriction refuses such pods; this is defence in depth).
    if !is_mirror(pod) {
        if let Some(sa) = spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            refs.push((Kind::ServiceAccount, sa.to_string()));
        }
        visit_secret_names(spec, &mut |s| refs.push((Kind::Secret, s.to_string())));
        visit_config_map_names(spec, &mut |c| refs.push((Kind::ConfigMap, c.to_string())));
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        for claim in claim_names(pod_name, spec) {
            refs.push((Kind::PersistentVolumeClaim, claim));
        }
    }
    refs.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
    refs.dedup();
    Some(PodRefs {
        node: node.to_string(),
        namespace,
        refs,
    })
}

pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
}

/// Every container of a pod, init and ephemeral ones included (kube's `AllContainers`).
fn each_container(spec: &PodSpec, visit: &mut dyn FnMut(ContainerRefs<'_>)) {
    for c in spec.init_containers.iter().flatten() {
        visit(ContainerRefs::from(c));
    }
    for c in &spec.containers {
        visit(ContainerRefs::from(c));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        visit(ContainerRefs::from(c));
    }
}

/// The parts of a container that name Secrets and ConfigMaps.
struct ContainerRefs<'a> {
    env: Option<&'a Vec<k8s_openapi::api::core::v1::EnvVar>>,
    env_from: Option<&'a Vec<k8s_openapi::api::core::v1::EnvFromSource>>,
}

impl<'a> From<&'a Container> for ContainerRefs<'a> {
    fn from(c: &'a Container) -> Self {
        ContainerRefs {
            env: c.env.as_ref(),
            env_from: c.env_from.as_ref(),
        }
    }
}

impl<'a> From<&'a EphemeralContainer> for ContainerRefs<'a> {
    fn from(c: &'a EphemeralContainer) -> Self {
        ContainerRefs {
            env: c.env.as_ref(),
            env_from: c.env_from.as_ref(),
        }
    }
}

/// kube's `podutil.VisitPodSecretNames` over all containers.
pub fn visit_secret_names(spec: &PodSpec, visit: &mut dyn FnMut(&str)) {
    for r in spec.image_pull_secrets.iter().flatten() {
        visit(&r.name);
    }
    each_container(spec, &mut |c| {
        for e in c.env_from.into_iter().flatten() {
            if let Some(s) = &e.secret_ref {
                visit(&s.name);
            }
        }
        for e in c.env.into_iter().flatten() {
            if let Some(s) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                visit(&s.name);
            }
        }
    });
    for v in spec.volumes.iter().flatten() {
        volume_secret_names(v, visit);
    }
}

fn volume_secret_names(v: &Volume, visit: &mut dyn FnMut(&str)) {
    let refs = [
        v.cephfs.as_ref().and_then(|s| s.secret_ref.as_ref()),
        v.cinder.as_ref().and_then(|s| s.secret_ref.as_ref()),
        v.flex_volume.as_ref().and_then(|s| s.secret_ref.as_ref()),
        v.rbd.as_ref().and_then(|s| s.secret_ref.as_ref()),
        v.iscsi.as_ref().and_then(|s| s.secret_ref.as_ref()),
        v.csi
            .as_ref()
            .and_then(|s| s.node_publish_secret_ref.as_ref()),
        v.storageos.as_ref().and_then(|s| s.secret_ref.as_ref()),
        v.scale_io.as_ref().map(|s| &s.secret_ref),
    ];
    for r in refs.into_iter().flatten() {
        visit(&r.name);
    }
    if let Some(a) = &v.azure_file {
        visit(&a.secret_name);
    }
    if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
        visit(name);
    }
    for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        if let Some(s) = &source.secret {
            visit(&s.name);
        }
    }
}

/// kube's `podutil.VisitPodConfigmapNames` over all containers.
pub fn visit_config_map_names(spec: &PodSpec, visit: &mut dyn FnMut(&str)) {
    each_container(spec, &mut |c| {
        for e in c.env_from.into_iter().flatten() {
            if let Some(s) = &e.config_map_ref {
                visit(&s.name);
            }
        }
        for e in c.env.into_iter().flatten() {
            if let Some(s) = e
                .value_from
                .as_ref()
                .and_then(|v| v.config_map_key_ref.as_ref())
            {
                visit(&s.name);
            }
        }
    });
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            visit(&c.name);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &source.config_map {
                visit(&c.name);
            }
        }
    }
}

/// The PersistentVolumeClaims a pod uses: named ones and those of its generic ephemeral
/// volumes (`<pod>-<volume>`, kube's `ephemeral.VolumeClaimName`).
pub fn claim_names(pod_name: &str, spec: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.persistent_volume_claim {
            out.push(c.claim_name.clone());
        } else if v.ephemeral.is_some() {
            out.push(format!("{pod_name}-{}", v.name));
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

/// (node, kind, namespace, name)
type Edge = (String, Kind, String, String);

/// The graph: every scheduled pod's references (by storage key) and, per node, how many of
/// its pods reference each object.
#[derive(Default)]
pub struct Graph {
    pods: HashMap<String, PodRefs>,
    edges: HashMap<Edge, u32>,
}

impl Graph {
    /// Whether a pod bound to `node` references the object.
    pub fn has_path(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        // The owned key costs one allocation per check of a node's request, nothing more.
        let key = (
            node.to_string(),
            kind,
            namespace.to_string(),
            name.to_string(),
        );
        self.edges.contains_key(&key)
    }

    /// Record the pod stored at `key` as it now is (`None`: deleted or not bound).
    pub fn set_pod(&mut self, key: &str, refs: Option<PodRefs>) {
        if let Some(old) = self.pods.remove(key) {
            self.adjust(&old, false);
        }
        if let Some(new) = refs {
            self.adjust(&new, true);
            self.pods.insert(key.to_string(), new);
        }
    }

    fn adjust(&mut self, pod: &PodRefs, add: bool) {
        for (kind, name) in &pod.refs {
            let edge = (pod.node.clone(), *kind, pod.namespace.clone(), name.clone());
            if add {
                *self.edges.entry(edge).or_default() += 1;
            } else if let Some(n) = self.edges.get_mut(&edge) {
                *n -= 1;
                if *n == 0 {
                    self.edges.remove(&edge);
                }
            }
        }
    }

    /// The number of pods in the graph (bound ones).
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    /// The number of distinct (node, object) links.
    pub fn edges(&self) -> usize {
        self.edges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn full_pod(node: &str) -> Pod {
        pod(json!({
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "runner",
                "imagePullSecrets": [{"name": "pull"}],
                "initContainers": [{"name": "init", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{"name": "c", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": "envfrom-cm"}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": "vol-secret"}},
                    {"name": "c", "configMap": {"name": "vol-cm"}},
                    {"name": "p", "projected": {"sources": [
                        {"secret": {"name": "proj-secret"}}, {"configMap": {"name": "proj-cm"}}]}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                    {"name": "csi", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "csi-secret"}}}
                ]
            }
        }))
    }

    #[test]
    fn a_pod_links_its_node_to_everything_it_references() {
        let refs = pod_refs(&full_pod("n1")).unwrap();
        assert_eq!(refs.node, "n1");
        assert_eq!(refs.namespace, "app");
        let names = |kind: Kind| -> Vec<&str> {
            refs.refs
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, n)| n.as_str())
                .collect()
        };
        assert_eq!(
            names(Kind::Secret),
            [
                "csi-secret",
                "env-secret",
                "init-env",
                "proj-secret",
                "pull",
                "vol-secret"
            ]
        );
        assert_eq!(
            names(Kind::ConfigMap),
            ["env-cm", "envfrom-cm", "proj-cm", "vol-cm"]
        );
        assert_eq!(names(Kind::ServiceAccount), ["runner"]);
        assert_eq!(names(Kind::PersistentVolumeClaim), ["data", "web-scratch"]);
    }

    #[test]
    fn unscheduled_and_mirror_pods_grant_nothing() {
        assert!(pod_refs(&full_pod("")).is_none());
        let mut mirror = full_pod("n1");
        mirror.metadata.annotations =
            Some([(MIRROR_POD_ANNOTATION.to_string(), "x".to_string())].into());
        let refs = pod_refs(&mirror).unwrap();
        assert_eq!(refs.node, "n1");
        assert!(refs.refs.is_empty());
    }

    #[test]
    fn edges_follow_pods_through_moves_and_deletes() {
        let mut g = Graph::default();
        let key = "/registry/pods/app/web";
        g.set_pod(key, pod_refs(&full_pod("n1")));
        let other = "/registry/pods/app/web2";
        g.set_pod(other, pod_refs(&full_pod("n1")));
        assert!(g.has_path("n1", Kind::Secret, "app", "vol-secret"));
        assert!(!g.has_path("n2", Kind::Secret, "app", "vol-secret"));
        assert!(!g.has_path("n1", Kind::Secret, "other", "vol-secret"));
        assert!(!g.has_path("n1", Kind::ConfigMap, "app", "vol-secret"));
        assert!(g.has_path("n1", Kind::ServiceAccount, "app", "runner"));

        // One of two pods goes: the link stays; the last one goes: it is gone.
        g.set_pod(other, None);
        assert!(g.has_path("n1", Kind::ConfigMap, "app", "vol-cm"));
        // The same pod seen again (a status update) does not double count.
        g.set_pod(key, pod_refs(&full_pod("n1")));
        g.set_pod(key, None);
        assert!(!g.has_path("n1", Kind::ConfigMap, "app", "vol-cm"));
        assert_eq!((g.pods(), g.edges()), (0, 0));

        g.set_pod(key, pod_refs(&full_pod("n2")));
        assert!(g.has_path("n2", Kind::PersistentVolumeClaim, "app", "data"));
        assert!(!g.has_path("n1", Kind::PersistentVolumeClaim, "app", "data"));
    }
}
