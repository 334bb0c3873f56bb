//! The resources skiff serves, described once: the apiserver's discovery, routing, storage
//! keys, decoding and Table output read this table (through [`crate::apiserver::resources`]),
//! and so do the namespace controller (what a namespace's deletion must empty) and the
//! garbage collector (the resource of an owner's `apiVersion`/`kind`, what to list for
//! dependents).
//!
//! A leaf shared by both sides rather than API discovery in the controllers (what
//! kube-controller-manager does, since its API server's resources can change at run time):
//! skiff's resources are fixed at build time, so discovery would only add a startup round trip
//! and a failure mode to the garbage collector and change the order it walks resources in,
//! while this table keeps both sides provably in step (see the namespace controller's test).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::{apps, batch, certificates, coordination, core, discovery, policy, rbac};

#[derive(Debug)]
pub struct ResourceInfo {
    /// API group; "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served below an object, e.g. `status`, `scale`, `binding`, `log`.
    pub subresources: &'static [&'static str],
    /// Decode into the real wire type and back: checks types and drops unknown fields.
    pub normalize: fn(Value) -> Result<Value, serde_json::Error>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// Whether `status` is written only through the status subresource (and spec changes
    /// bump `metadata.generation`).
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        match self.plural {
            // Namespaces are removed by the namespace controller, one at a time.
            "namespaces" => &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ],
            _ => &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        }
    }

    /// The storage key prefix of the resource (`/registry/pods/`) or of one namespace
    /// (`/registry/pods/default/`).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.plural),
            _ => format!("/registry/{}/", self.plural),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.key_prefix(namespace))
    }
}

fn normalize<T: Serialize + DeserializeOwned>(v: Value) -> Result<Value, serde_json::Error> {
    serde_json::to_value(serde_json::from_value::<T>(v)?)
}

macro_rules! resource {
    ($group:expr, $version:expr, $ty:ty, $kind:expr, $plural:expr, $singular:expr,
     namespaced: $ns:expr, short: [$($short:expr),*], categories: [$($cat:expr),*],
     sub: [$($sub:expr),*]) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: &[$($sub),*],
            normalize: normalize::<$ty>,
        }
    };
}

pub static RESOURCES: &[ResourceInfo] = &[
    resource!("", "v1", core::v1::Namespace, "Namespace", "namespaces", "namespace",
        namespaced: false, short: ["ns"], categories: [], sub: ["status", "finalize"]),
    resource!("", "v1", core::v1::Pod, "Pod", "pods", "pod",
        namespaced: true, short: ["po"], categories: ["all"], sub: ["status", "binding", "eviction", "log", "exec", "attach", "portforward"]),
    resource!("", "v1", core::v1::Service, "Service", "services", "service",
        namespaced: true, short: ["svc"], categories: ["all"], sub: ["status"]),
    resource!("", "v1", core::v1::Endpoints, "Endpoints", "endpoints", "endpoints",
        namespaced: true, short: ["ep"], categories: [], sub: []),
    resource!("", "v1", core::v1::Node, "Node", "nodes", "node",
        namespaced: false, short: ["no"], categories: [], sub: ["status"]),
    resource!("", "v1", core::v1::Event, "Event", "events", "event",
        namespaced: true, short: ["ev"], categories: [], sub: []),
    resource!("", "v1", core::v1::ConfigMap, "ConfigMap", "configmaps", "configmap",
        namespaced: true, short: ["cm"], categories: [], sub: []),
    resource!("", "v1", core::v1::Secret, "Secret", "secrets", "secret",
        namespaced: true, short: [], categories: [], sub: []),
    resource!("", "v1", core::v1::ServiceAccount, "ServiceAccount", "serviceaccounts", "serviceaccount",
        namespaced: true, short: ["sa"], categories: [], sub: ["token"]),
    resource!("apps", "v1", apps::v1::Deployment, "Deployment", "deployments", "deployment",
        namespaced: true, short: ["deploy"], categories: ["all"], sub: ["status", "scale"]),
    resource!("apps", "v1", apps::v1::ReplicaSet, "ReplicaSet", "replicasets", "replicaset",
        namespaced: true, short: ["rs"], categories: ["all"], sub: ["status", "scale"]),
    resource!("apps", "v1", apps::v1::DaemonSet, "DaemonSet", "daemonsets", "daemonset",
        namespaced: true, short: ["ds"], categories: ["all"], sub: ["status"]),
    resource!("batch", "v1", batch::v1::Job, "Job", "jobs", "job",
        namespaced: true, short: [], categories: ["all"], sub: ["status"]),
    resource!("policy", "v1", policy::v1::PodDisruptionBudget, "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget",
        namespaced: true, short: ["pdb"], categories: [], sub: ["status"]),
    resource!("coordination.k8s.io", "v1", coordination::v1::Lease, "Lease", "leases", "lease",
        namespaced: true, short: [], categories: [], sub: []),
    resource!("discovery.k8s.io", "v1", discovery::v1::EndpointSlice, "EndpointSlice", "endpointslices", "endpointslice",
        namespaced: true, short: [], categories: [], sub: []),
    resource!("rbac.authorization.k8s.io", "v1", rbac::v1::ClusterRoleBinding, "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding",
        namespaced: false, short: [], categories: [], sub: []),
    resource!("rbac.authorization.k8s.io", "v1", rbac::v1::ClusterRole, "ClusterRole", "clusterroles", "clusterrole",
        namespaced: false, short: [], categories: [], sub: []),
    resource!("rbac.authorization.k8s.io", "v1", rbac::v1::RoleBinding, "RoleBinding", "rolebindings", "rolebinding",
        namespaced: true, short: [], categories: [], sub: []),
    resource!("rbac.authorization.k8s.io", "v1", rbac::v1::Role, "Role", "roles", "role",
        namespaced: true, short: [], categories: [], sub: []),
    resource!("certificates.k8s.io", "v1", certificates::v1::CertificateSigningRequest,
        "CertificateSigningRequest", "certificatesigningrequests", "certificatesigningrequest",
        namespaced: false, short: ["csr"], categories: [], sub: ["status", "approval"]),
];
