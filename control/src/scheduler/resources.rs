//! Quantities and what a pod asks of a node: resource requests (the sum of its containers',
//! at least its largest init container's, plus overhead), the non-zero requests kube scores
//! with, and host ports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What kube assumes a container without a CPU request uses, for scoring (100m).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// What kube assumes a container without a memory request uses, for scoring (200Mi).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

// One exact quantity parser for the scheduler and the node agent.
pub use skiff_common::quantity::{milli_value, parse_millis, value};

/// Amounts of the resources every node has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Res {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

impl Res {
    fn add(&mut self, o: &Res) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
    }

    fn sub(&mut self, o: &Res) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
    }

    fn max(&mut self, o: &Res) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
    }
}

/// Extended resources (`example.com/gpu`, `hugepages-2Mi`, …) the scheduler counts.
pub fn is_scalar(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-")
}

/// A host port a pod takes: `(hostIP, protocol, port)`, `0.0.0.0` meaning every address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || self.ip == "0.0.0.0" || o.ip == "0.0.0.0")
    }
}

/// Everything a pod takes from a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRes {
    pub requests: Res,
    /// Requests with kube's defaults for containers that request no CPU or memory.
    pub non_zero: Res,
    pub scalars: BTreeMap<String, i64>,
    pub ports: Vec<HostPort>,
}

impl PodRes {
    pub fn of(spec: &PodSpec) -> PodRes {
        let mut out = PodRes::default();
        for c in &spec.containers {
            let (r, nz) = container_requests(c, &mut out.scalars, false);
            out.requests.add(&r);
            out.non_zero.add(&nz);
        }
        for c in spec.init_containers.iter().flatten() {
            let (r, nz) = container_requests(c, &mut out.scalars, true);
            out.requests.max(&r);
            out.non_zero.max(&nz);
        }
        for (name, q) in spec.overhead.iter().flatten() {
            let r = single(name, q, &mut out.scalars, false);
            out.requests.add(&r);
            out.non_zero.add(&r);
        }
        let host_network = spec.host_network == Some(true);
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let port = match p.host_port {
                    Some(hp) if hp > 0 => hp,
                    _ if host_network && p.container_port > 0 => p.container_port,
                    _ => continue,
                };
                out.ports.push(HostPort {
                    ip: p
                        .host_ip
                        .clone()
                        .filter(|ip| !ip.is_empty())
                        .unwrap_or_else(|| "0.0.0.0".to_string()),
                    protocol: p
                        .protocol
                        .clone()
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "TCP".to_string()),
                    port,
                });
            }
        }
        out
    }

    /// Whether the pod asks for nothing but a pod slot.
    pub fn is_empty(&self) -> bool {
        self.requests == Res::default() && self.scalars.values().all(|v| *v == 0)
    }
}

/// One resource of a container (or of the pod's overhead); scalars are summed into `scalars`
/// (or maxed, for init containers).
fn single(name: &str, q: &Quantity, scalars: &mut BTreeMap<String, i64>, init: bool) -> Res {
    let mut r = Res::default();
    match name {
        "cpu" => r.milli_cpu = milli_value(q),
        "memory" => r.memory = value(q),
        "ephemeral-storage" => r.ephemeral_storage = value(q),
        n if is_scalar(n) => {
            let v = value(q);
            let e = scalars.entry(n.to_string()).or_insert(0);
            *e = if init {
                (*e).max(v)
            } else {
                e.saturating_add(v)
            };
        }
        _ => {}
    }
    r
}

/// A container's requests (a limit stands in for a missing request, as API defaulting does)
/// and its non-zero requests.
fn container_requests(
    c: &Container,
    scalars: &mut BTreeMap<String, i64>,
    init: bool,
) -> (Res, Res) {
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let mut r = Res::default();
    let mut has_cpu = false;
    let mut has_memory = false;
    for (name, q) in requests.into_iter().flatten() {
        has_cpu |= name == "cpu";
        has_memory |= name == "memory";
        r.add(&single(name, q, scalars, init));
    }
    for (name, q) in limits.into_iter().flatten() {
        if requests.is_some_and(|req| req.contains_key(name)) {
            continue;
        }
        has_cpu |= name == "cpu";
        has_memory |= name == "memory";
        r.add(&single(name, q, scalars, init));
    }
    let mut nz = r;
    if !has_cpu {
        nz.milli_cpu = DEFAULT_MILLI_CPU;
    }
    if !has_memory {
        nz.memory = DEFAULT_MEMORY;
    }
    (r, nz)
}

/// A node's allocatable resources (capacity if it reports no allocatable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub res: Res,
    pub pods: i64,
    pub scalars: BTreeMap<String, i64>,
}

impl Allocatable {
    pub fn of(node: &Node) -> Allocatable {
        let status = node.status.as_ref();
        let list = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        let mut out = Allocatable::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => out.res.milli_cpu = milli_value(q),
                "memory" => out.res.memory = value(q),
                "ephemeral-storage" => out.res.ephemeral_storage = value(q),
                "pods" => out.pods = value(q),
                n if is_scalar(n) => {
                    out.scalars.insert(n.to_string(), value(q));
                }
                _ => {}
            }
        }
        out
    }
}

/// What the pods on a node take, summed.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub requests: Res,
    pub non_zero: Res,
    pub scalars: BTreeMap<String, i64>,
    pub pods: i64,
    pub ports: Vec<HostPort>,
}

impl Usage {
    pub fn add(&mut self, p: &PodRes) {
        self.requests.add(&p.requests);
        self.non_zero.add(&p.non_zero);
        for (k, v) in &p.scalars {
            let e = self.scalars.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
        self.pods += 1;
        self.ports.extend(p.ports.iter().cloned());
    }

    pub fn remove(&mut self, p: &PodRes) {
        self.requests.sub(&p.requests);
        self.non_zero.sub(&p.non_zero);
        for (k, v) in &p.scalars {
            if let Some(e) = self.scalars.get_mut(k) {
                *e = e.saturating_sub(*v);
            }
        }
        self.pods -= 1;
        for port in &p.ports {
            if let Some(i) = self.ports.iter().position(|x| x == port) {
                self.ports.swap_remove(i);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pods <= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        // The parser is skiff_common::quantity's (tested there); what the scheduler reads.
        assert_eq!(milli_value(&Quantity("100m".into())), 100);
        assert_eq!(value(&Quantity("1Pi".into())), 1 << 50);
        assert_eq!(value(&Quantity("1.5".into())), 2);
        assert_eq!(milli_value(&Quantity("garbage".into())), 0);
        assert_eq!(parse_millis("250n"), Some(1));
    }

    #[test]
    fn pod_requests_like_kube() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "1Gi"}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "resources": {"limits": {"cpu": "1", "example.com/gpu": "1"}}},
                {"name": "c"},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            "overhead": {"memory": "10Mi"},
        }))
        .unwrap();
        let r = PodRes::of(&spec);
        assert_eq!(r.requests.milli_cpu, 2000);
        assert_eq!(r.requests.memory, (1 << 30) + 10 * (1 << 20));
        assert_eq!(r.non_zero.milli_cpu, 2000);
        // b and c get the 200Mi default, plus the overhead.
        assert_eq!(
            r.non_zero.memory,
            (1 << 30) + 2 * DEFAULT_MEMORY + 10 * (1 << 20)
        );
        assert_eq!(r.scalars.get("example.com/gpu"), Some(&1));
        assert_eq!(
            r.ports,
            vec![HostPort {
                ip: "0.0.0.0".into(),
                protocol: "TCP".into(),
                port: 8080
            }]
        );
        let empty = PodRes::of(
            &serde_json::from_value(serde_json::json!({"containers": [{"name": "x"}]})).unwrap(),
        );
        assert!(empty.is_empty());
        assert_eq!(empty.non_zero.milli_cpu, DEFAULT_MILLI_CPU);
    }
}
