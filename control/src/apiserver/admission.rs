//! What kube-apiserver's registry strategies and built-in admission plugins do to an object
//! beyond plain defaulting: the server-owned parts of status on create, Job selectors, pod QoS,
//! NamespaceLifecycle, and the ClusterIP / NodePort allocators. The ServiceAccount plugin is
//! in [`serviceaccount`].
//!
//! Allocations are one store key per address or port (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`), created with create-if-absent, so two
//! apiservers on one etcd can never hand out the same one, and a restart forgets nothing.

pub mod serviceaccount;

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

pub use skiff_common::cidr::Ipv4Cidr;

use crate::store::{Store, StoreError};

use super::object::{self, meta_mut};
use super::resources::ResourceInfo;
use super::status::{ApiError, ApiResult, FieldCause};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// A port range such as `30000-32767`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range (first-last)"))?;
        let first: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: bad first port"))?;
        let last: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: bad last port"))?;
        if first == 0 || first > last {
            return Err(format!("{s:?}: need 1 <= first <= last"));
        }
        Ok(PortRange { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Hands out ClusterIPs and NodePorts.
pub struct Allocators {
    store: Arc<dyn Store>,
    pub service_cidr: Ipv4Cidr,
    pub node_ports: PortRange,
}

/// Random picks tried before falling back to a scan of what is taken.
const RANDOM_TRIES: usize = 32;

impl Allocators {
    pub fn new(store: Arc<dyn Store>, service_cidr: Ipv4Cidr, node_ports: PortRange) -> Self {
        Allocators {
            store,
            service_cidr,
            node_ports,
        }
    }

    /// The first address of the range, which kube reserves for the `kubernetes` service.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        self.service_cidr.nth(1)
    }

    /// The tenth address of the range: the `kube-dns` Service's, by kubeadm's convention
    /// (10.96.0.10 in the default range), which agents' `--cluster-dns` names.
    pub fn dns_service_ip(&self) -> Ipv4Addr {
        self.service_cidr.nth(10)
    }

    async fn claim(&self, key: String, owner: &str) -> Result<bool, ApiError> {
        let value = serde_json::to_vec(&json!({"owner": owner, "allocatedAt": object::now()}))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match self.store.create(&key, value).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(ApiError::from_store(e, "", "services", owner)),
        }
    }

    /// Allocate `requested` (which must be free and in range) or a random free address.
    /// `owner` is `namespace/name`, kept with the allocation for repair and inspection.
    pub async fn allocate_ip(
        &self,
        requested: Option<Ipv4Addr>,
        owner: &str,
        field: &str,
    ) -> ApiResult<Ipv4Addr> {
        let cidr = self.service_cidr;
        let size = cidr.size();
        if let Some(ip) = requested {
            let offset = u64::from(u32::from(ip).wrapping_sub(cidr.base));
            if !cidr.contains(ip) || offset == 0 || offset == size - 1 {
                return Err(invalid_service(
                    owner,
                    FieldCause::invalid(
                        field,
                        &json!(ip.to_string()),
                        format!(
                            "provided IP is not in the valid range. The range of valid IPs is {cidr}"
                        ),
                    ),
                ));
            }
            if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
            return Err(invalid_service(
                owner,
                FieldCause::invalid(
                    field,
                    &json!(ip.to_string()),
                    "provided IP is already allocated",
                ),
            ));
        }
        // Dynamic allocations come from the upper part of the range, leaving the lower band
        // to users who pick their addresses (kube's KEP-3070), so those rarely collide.
        let low = (size / 16).clamp(2, 256).min(size - 2);
        let high = size - 2;
        use rand::Rng;
        for _ in 0..RANDOM_TRIES {
            let offset = rand::rng().random_range(low..=high);
            let ip = cidr.nth(offset);
            if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        // Crowded range: look at what is taken and try the free addresses in order.
        let taken = self.taken(IP_PREFIX).await?;
        for offset in (low..=high).chain(1..low) {
            let ip = cidr.nth(offset);
            if taken.contains(&ip.to_string()) {
                continue;
            }
            if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "failed to allocate a serviceIP: range {cidr} is full"
        )))
    }

    pub async fn allocate_port(
        &self,
        requested: Option<u16>,
        owner: &str,
        field: &str,
    ) -> ApiResult<u16> {
        let range = self.node_ports;
        if let Some(port) = requested {
            if !range.contains(port) {
                return Err(invalid_service(
                    owner,
                    FieldCause::invalid(
                        field,
                        &json!(port),
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {range}"
                        ),
                    ),
                ));
            }
            if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
            return Err(invalid_service(
                owner,
                FieldCause::invalid(field, &json!(port), "provided port is already allocated"),
            ));
        }
        use rand::Rng;
        for _ in 0..RANDOM_TRIES {
            let port = rand::rng().random_range(range.first..=range.last);
            if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        let taken = self.taken(PORT_PREFIX).await?;
        for port in range.first..=range.last {
            if !taken.contains(&port.to_string())
                && self.claim(format!("{PORT_PREFIX}{port}"), owner).await?
            {
                return Ok(port);
            }
        }
        Err(ApiError::internal(format!(
            "failed to allocate a nodePort: range {range} is full"
        )))
    }

    async fn taken(&self, prefix: &str) -> ApiResult<std::collections::HashSet<String>> {
        let list = self
            .store
            .list(prefix, None, 0, None)
            .await
            .map_err(|e| ApiError::from_store(e, "", "services", ""))?;
        Ok(list
            .items
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_string())
            .collect())
    }

    /// Give back what a service held. Failures are logged: a leaked address is repaired by
    /// [`Allocators::repair`], a lost service is not.
    pub async fn release(&self, held: &ServiceAllocations) {
        for ip in &held.ips {
            if let Err(e) = self.store.delete(&format!("{IP_PREFIX}{ip}"), None).await
                && !matches!(e, StoreError::NotFound(_))
            {
                tracing::warn!(%ip, error = %e, "could not release service IP");
            }
        }
        for port in held.all_node_ports() {
            if let Err(e) = self
                .store
                .delete(&format!("{PORT_PREFIX}{port}"), None)
                .await
                && !matches!(e, StoreError::NotFound(_))
            {
                tracing::warn!(port, error = %e, "could not release node port");
            }
        }
    }

    /// Release allocations whose service no longer holds them (left behind by a crash between
    /// allocating and writing the service). Only allocations older than `min_age` are
    /// considered, so a create in flight is never robbed.
    pub async fn repair(&self, min_age: std::time::Duration) -> ApiResult<usize> {
        let err = |e| ApiError::from_store(e, "", "services", "");
        let services = self
            .store
            .list("/registry/services/", None, 0, None)
            .await
            .map_err(err)?;
        let mut held = std::collections::HashSet::new();
        for kv in &services.items {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let a = ServiceAllocations::of(&svc);
            held.extend(a.ips.iter().map(|ip| format!("{IP_PREFIX}{ip}")));
            held.extend(a.all_node_ports().map(|p| format!("{PORT_PREFIX}{p}")));
        }
        let cutoff = jiff::Timestamp::now()
            - jiff::SignedDuration::try_from(min_age).unwrap_or(jiff::SignedDuration::ZERO);
        let mut released = 0;
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            let list = self.store.list(prefix, None, 0, None).await.map_err(err)?;
            for kv in list.items {
                if held.contains(&kv.key) {
                    continue;
                }
                let old_enough = serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .and_then(|v| v["allocatedAt"].as_str().and_then(object::parse_time))
                    .is_none_or(|t| t < cutoff);
                if old_enough
                    && self
                        .store
                        .delete(&kv.key, Some(kv.mod_revision))
                        .await
                        .is_ok()
                {
                    tracing::info!(key = %kv.key, "released leaked service allocation");
                    released += 1;
                }
            }
        }
        Ok(released)
    }

    /// Fill in and claim the ClusterIP and NodePorts of a service being created, or of one
    /// being updated from `old` (keeping what it already holds). On error nothing new stays
    /// claimed. Returns what was newly claimed (to release if the write then fails).
    pub async fn allocate_service(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<ServiceAllocations> {
        let mut claimed = ServiceAllocations::default();
        match self.allocate_service_inner(svc, old, &mut claimed).await {
            Ok(()) => Ok(claimed),
            Err(e) => {
                self.release(&claimed).await;
                Err(e)
            }
        }
    }

    async fn allocate_service_inner(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        claimed: &mut ServiceAllocations,
    ) -> ApiResult<()> {
        let owner = format!(
            "{}/{}",
            object::meta_str(svc, "namespace").unwrap_or(""),
            object::name(svc)
        );
        let kind = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let held = old.map(ServiceAllocations::of).unwrap_or_default();

        // ClusterIP: ExternalName services have none, headless ones say "None".
        if kind == "ExternalName" {
            if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            let ip = self.cluster_ip(svc, old, &owner, claimed).await?;
            let spec = spec_mut(svc);
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
        }

        // NodePorts: NodePort and LoadBalancer services get one per port, except that a
        // LoadBalancer with `allocateLoadBalancerNodePorts: false` gets only those it asks
        // for (kube's `shouldAllocateNodePorts`).
        let wants_node_ports = kind == "NodePort" || kind == "LoadBalancer";
        let allocates_node_ports = kind == "NodePort"
            || svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false));
        let mut ports: Vec<Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, port) in ports.iter_mut().enumerate() {
            let Some(port) = port.as_object_mut() else {
                continue;
            };
            let asked = port
                .get("nodePort")
                .and_then(Value::as_i64)
                .is_some_and(|p| p != 0);
            if !wants_node_ports || (!allocates_node_ports && !asked) {
                port.remove("nodePort");
                continue;
            }
            self.node_port(port, i, &owner, &held, claimed).await?;
        }
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut)
            && spec.contains_key("ports")
        {
            spec.insert("ports".into(), Value::Array(ports));
        }
        self.health_check_node_port(svc, &owner, &held, claimed)
            .await
    }

    /// `spec.healthCheckNodePort` of a LoadBalancer with `externalTrafficPolicy: Local`: the
    /// one it holds stays, else the requested one or a free one is claimed from the NodePort
    /// range (kube's `allocHealthCheckNodePort`, whose failures are internal errors, not
    /// field errors). Services that do not need one never hold one: validation refuses it.
    async fn health_check_node_port(
        &self,
        svc: &mut Value,
        owner: &str,
        held: &ServiceAllocations,
        claimed: &mut ServiceAllocations,
    ) -> ApiResult<()> {
        if !needs_health_check_node_port(svc) {
            return Ok(());
        }
        let requested = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_i64)
            .filter(|p| *p != 0);
        let port = match requested {
            Some(p)
                if held.health_check_node_port == Some(p as u16) && (1..=65535).contains(&p) =>
            {
                return Ok(());
            }
            Some(p) => self.claim_health_check_node_port(p, owner).await?,
            None => self
                .allocate_port(None, owner, "spec.healthCheckNodePort")
                .await
                .map_err(|e| {
                    ApiError::internal(format!(
                        "Internal error occurred: failed to allocate a HealthCheck NodePort 0: {}",
                        e.message
                    ))
                })?,
        };
        claimed.health_check_node_port = Some(port);
        spec_mut(svc).insert("healthCheckNodePort".into(), json!(port));
        Ok(())
    }

    async fn claim_health_check_node_port(&self, requested: i64, owner: &str) -> ApiResult<u16> {
        let range = self.node_ports;
        let failed = |why: String| {
            ApiError::internal(format!(
                "Internal error occurred: failed to allocate requested HealthCheck NodePort {requested}: {why}"
            ))
        };
        let port = u16::try_from(requested)
            .ok()
            .filter(|p| range.contains(*p))
            .ok_or_else(|| {
                failed(format!(
                    "provided port is not in the valid range. The range of valid ports is {range}"
                ))
            })?;
        if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
            Ok(port)
        } else {
            Err(failed("provided port is already allocated".into()))
        }
    }

    /// The ClusterIP a non-ExternalName service gets: "None" stays, the one it already held
    /// stays, else the requested one or a free one is claimed.
    async fn cluster_ip(
        &self,
        svc: &Value,
        old: Option<&Value>,
        owner: &str,
        claimed: &mut ServiceAllocations,
    ) -> ApiResult<String> {
        let current = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if current == "None" {
            return Ok("None".to_string());
        }
        if !old_ip.is_empty() && (current.is_empty() || current == old_ip) {
            return Ok(old_ip);
        }
        let requested = if current.is_empty() {
            None
        } else {
            Some(current.parse::<Ipv4Addr>().map_err(|_| {
                invalid_service(
                    owner,
                    FieldCause::invalid(
                        "spec.clusterIP",
                        &json!(current),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ),
                )
            })?)
        };
        let ip = self.allocate_ip(requested, owner, "spec.clusterIP").await?;
        claimed.ips.push(ip.to_string());
        Ok(ip.to_string())
    }

    /// Fill in the nodePort of port `i`: one the service already holds (or claimed for an
    /// earlier port) stays, else the requested one or a free one is claimed.
    async fn node_port(
        &self,
        port: &mut serde_json::Map<String, Value>,
        i: usize,
        owner: &str,
        held: &ServiceAllocations,
        claimed: &mut ServiceAllocations,
    ) -> ApiResult<()> {
        let requested = port
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|p| *p != 0);
        if let Some(p) = requested
            && (held.node_ports.contains(&(p as u16)) || claimed.node_ports.contains(&(p as u16)))
        {
            return Ok(());
        }
        let requested = match requested {
            Some(p) => Some(u16::try_from(p).map_err(|_| {
                invalid_service(
                    owner,
                    FieldCause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &json!(p),
                        "must be between 1 and 65535, inclusive",
                    ),
                )
            })?),
            None => None,
        };
        let p = self
            .allocate_port(requested, owner, &format!("spec.ports[{i}].nodePort"))
            .await?;
        claimed.node_ports.push(p);
        port.insert("nodePort".into(), json!(p));
        Ok(())
    }
}

fn spec_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    obj["spec"].as_object_mut().expect("made an object above")
}

fn invalid_service(owner: &str, cause: FieldCause) -> ApiError {
    let name = owner.rsplit('/').next().unwrap_or(owner);
    ApiError::invalid("", "Service", name, vec![cause])
}

/// The addresses and ports a service holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceAllocations {
    pub ips: Vec<String>,
    pub node_ports: Vec<u16>,
    /// `spec.healthCheckNodePort`, from the same range as the node ports.
    pub health_check_node_port: Option<u16>,
}

/// kube's `NeedsHealthCheck`: a LoadBalancer with `externalTrafficPolicy: Local`.
pub fn needs_health_check_node_port(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && svc
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

impl ServiceAllocations {
    pub fn of(svc: &Value) -> ServiceAllocations {
        let mut out = ServiceAllocations::default();
        if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str)
            && ip.parse::<Ipv4Addr>().is_ok()
        {
            out.ips.push(ip.to_string());
        }
        if let Some(ports) = svc.pointer("/spec/ports").and_then(Value::as_array) {
            for p in ports {
                if let Some(n) = p.get("nodePort").and_then(Value::as_u64)
                    && let Ok(n) = u16::try_from(n)
                    && n != 0
                {
                    out.node_ports.push(n);
                }
            }
        }
        out.health_check_node_port = svc
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        out
    }

    /// Every node port held, the health check one included (they share one range).
    pub fn all_node_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.node_ports
            .iter()
            .copied()
            .chain(self.health_check_node_port)
    }

    /// What `self` holds and `newer` does not.
    pub fn minus(&self, newer: &ServiceAllocations) -> ServiceAllocations {
        ServiceAllocations {
            ips: self
                .ips
                .iter()
                .filter(|ip| !newer.ips.contains(ip))
                .cloned()
                .collect(),
            node_ports: self
                .node_ports
                .iter()
                .filter(|p| !newer.node_ports.contains(p))
                .copied()
                .collect(),
            health_check_node_port: self
                .health_check_node_port
                .filter(|p| newer.health_check_node_port != Some(*p)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.node_ports.is_empty() && self.health_check_node_port.is_none()
    }
}

/// NamespaceLifecycle: nothing is created in a namespace that does not exist or is going away.
pub async fn check_namespace(store: &dyn Store, namespace: &str) -> ApiResult<()> {
    let key = format!("/registry/namespaces/{namespace}");
    let kv = store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store(e, "", "namespaces", namespace))?
        .ok_or_else(|| ApiError::not_found("", "namespaces", namespace))?;
    let ns: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    if object::is_deleting(&ns) {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )));
    }
    Ok(())
}

/// The server-owned parts of a new object, after its uid is set: initial status, Job
/// selectors, pod QoS class.
pub fn prepare_create(info: &ResourceInfo, obj: &mut Value) {
    match info.plural {
        "pods" => {
            let qos = qos_class(obj);
            let status = obj
                .get("status")
                .filter(|s| s.is_object())
                .cloned()
                .unwrap_or_else(|| json!({}));
            let mut status = status;
            if status.get("phase").and_then(Value::as_str).is_none() {
                status["phase"] = json!("Pending");
            }
            status["qosClass"] = json!(qos);
            obj["status"] = status;
        }
        "deployments" | "replicasets" | "daemonsets" | "jobs" => {
            obj["status"] = json!({});
            meta_mut(obj).insert("generation".into(), json!(1));
            if info.plural == "jobs" {
                job_selector(obj);
            }
        }
        "poddisruptionbudgets" => {
            obj["status"] = json!({
                "disruptionsAllowed": 0,
                "currentHealthy": 0,
                "desiredHealthy": 0,
                "expectedPods": 0,
            });
            meta_mut(obj).insert("generation".into(), json!(1));
        }
        "services" => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        "namespaces" => {
            obj["status"] = json!({"phase": "Active"});
        }
        _ => {}
    }
}

/// A Job without `manualSelector` selects its pods by its own uid (kube's
/// `batch.kubernetes.io/controller-uid` scheme), and its template carries those labels.
fn job_selector(job: &mut Value) {
    if job.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = object::meta_str(job, "uid").unwrap_or("").to_string();
    let name = object::name(job).to_string();
    let spec = spec_mut(job);
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if !template.is_object() {
        *template = json!({});
    }
    let labels = meta_mut(template)
        .entry("labels")
        .or_insert_with(|| json!({}));
    if let Some(labels) = labels.as_object_mut() {
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("job-name", &name),
        ] {
            labels.insert(k.into(), json!(v));
        }
    }
}

/// Kubernetes' QoS class: Guaranteed when every container has cpu and memory limits equal to
/// its requests, BestEffort when none has any, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(res));
            // A limit without a request defaults the request to the limit.
            let request = requests.and_then(|r| r.get(res)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn allocators(dir: &std::path::Path, cidr: &str, ports: &str) -> Allocators {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).unwrap());
        Allocators::new(
            store,
            Ipv4Cidr::parse(cidr).unwrap(),
            PortRange::parse(ports).unwrap(),
        )
    }

    #[test]
    fn parses_ranges() {
        let c = Ipv4Cidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.contains("10.111.255.254".parse().unwrap()));
        assert!(!c.contains("10.112.0.1".parse().unwrap()));
        assert_eq!(c.nth(1).to_string(), "10.96.0.1");
        assert!(Ipv4Cidr::parse("10.0.0.0").is_err());
        assert!(Ipv4Cidr::parse("10.0.0.0/31").is_err());
        assert_eq!(
            PortRange::parse("30000-32767").unwrap(),
            PortRange {
                first: 30000,
                last: 32767
            }
        );
        assert!(PortRange::parse("5-1").is_err());
    }

    #[tokio::test]
    async fn allocates_unique_ips_until_the_range_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocators(dir.path(), "10.0.0.0/29", "30000-30001");
        let mut seen = std::collections::HashSet::new();
        // A /29 has 6 usable addresses.
        for i in 0..6 {
            let ip = a
                .allocate_ip(None, &format!("ns/s{i}"), "spec.clusterIP")
                .await
                .unwrap();
            assert!(seen.insert(ip), "{ip} handed out twice");
            assert!(a.service_cidr.contains(ip));
        }
        assert_eq!(
            a.allocate_ip(None, "ns/full", "spec.clusterIP")
                .await
                .unwrap_err()
                .code,
            500
        );
        let taken = *seen.iter().next().unwrap();
        let err = a
            .allocate_ip(Some(taken), "ns/x", "spec.clusterIP")
            .await
            .unwrap_err();
        assert_eq!(err.code, 422);
        a.release(&ServiceAllocations {
            ips: vec![taken.to_string()],
            node_ports: vec![],
            ..Default::default()
        })
        .await;
        assert_eq!(
            a.allocate_ip(Some(taken), "ns/x", "spec.clusterIP")
                .await
                .unwrap(),
            taken
        );
        let outside = "10.0.1.1".parse().unwrap();
        assert_eq!(
            a.allocate_ip(Some(outside), "ns/y", "spec.clusterIP")
                .await
                .unwrap_err()
                .code,
            422
        );
    }

    #[tokio::test]
    async fn service_allocation_keeps_what_an_update_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocators(dir.path(), "10.96.0.0/12", "30000-32767");
        let mut svc = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443, "nodePort": 30443}]}});
        let claimed = a.allocate_service(&mut svc, None).await.unwrap();
        assert_eq!(claimed.ips.len(), 1);
        assert_eq!(claimed.node_ports.len(), 2);
        assert!(claimed.node_ports.contains(&30443));
        // The same service again (an update that changes nothing) claims nothing new.
        let old = svc.clone();
        let mut again = svc.clone();
        let claimed = a.allocate_service(&mut again, Some(&old)).await.unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        assert_eq!(again, old);
        // A second service asking for a held port is refused and keeps nothing.
        let mut other = json!({"metadata": {"name": "b", "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30443}]}});
        assert_eq!(
            a.allocate_service(&mut other, None).await.unwrap_err().code,
            422
        );
        // Switching to ClusterIP gives the node ports back.
        let mut cluster = svc.clone();
        cluster["spec"]["type"] = json!("ClusterIP");
        a.allocate_service(&mut cluster, Some(&old)).await.unwrap();
        let freed = ServiceAllocations::of(&old).minus(&ServiceAllocations::of(&cluster));
        assert_eq!(freed.node_ports.len(), 2);
        assert!(freed.ips.is_empty());
    }

    #[tokio::test]
    async fn a_local_load_balancer_holds_a_health_check_node_port() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocators(dir.path(), "10.96.0.0/12", "30000-30009");
        let local = |name: &str, hc: Option<u16>| {
            let mut v = json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                         "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}});
            if let Some(p) = hc {
                v["spec"]["healthCheckNodePort"] = json!(p);
            }
            v
        };
        let mut svc = local("web", None);
        let claimed = a.allocate_service(&mut svc, None).await.unwrap();
        let port = claimed.health_check_node_port.expect("a port");
        assert!(a.node_ports.contains(port));
        assert_eq!(svc["spec"]["healthCheckNodePort"], json!(port));
        // Kept by an update; asked for by another Service: kube's internal error.
        let old = svc.clone();
        let claimed = a.allocate_service(&mut svc, Some(&old)).await.unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        let e = a
            .allocate_service(&mut local("other", Some(port)), None)
            .await
            .unwrap_err();
        assert_eq!(e.code, 500);
        assert_eq!(
            e.message,
            format!(
                "Internal error occurred: failed to allocate requested HealthCheck NodePort {port}: provided port is already allocated"
            )
        );
        // ... and also a node port of a NodePort Service.
        let mut np = json!({"metadata": {"name": "np", "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}});
        assert_eq!(
            a.allocate_service(&mut np, None).await.unwrap_err().code,
            422
        );
        let e = a
            .allocate_service(&mut local("far", Some(31000)), None)
            .await
            .unwrap_err();
        assert!(
            e.message.ends_with(
                ": provided port is not in the valid range. The range of valid ports is 30000-30009"
            ),
            "{}",
            e.message
        );
        // Cluster policy: the port goes back, and another Service can have it.
        let mut cluster = svc.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        cluster["spec"]
            .as_object_mut()
            .unwrap()
            .remove("healthCheckNodePort");
        let claimed = a.allocate_service(&mut cluster, Some(&old)).await.unwrap();
        assert!(claimed.is_empty());
        let freed = ServiceAllocations::of(&old).minus(&ServiceAllocations::of(&cluster));
        assert_eq!(freed.health_check_node_port, Some(port));
        a.release(&freed).await;
        let mut other = local("other", Some(port));
        let claimed = a.allocate_service(&mut other, None).await.unwrap();
        assert_eq!(claimed.health_check_node_port, Some(port));
        // A service that does not need one claims nothing for it.
        let mut plain = json!({"metadata": {"name": "plain", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}});
        let claimed = a.allocate_service(&mut plain, None).await.unwrap();
        assert_eq!(claimed.health_check_node_port, None);
        assert!(plain["spec"].get("healthCheckNodePort").is_none());
    }

    #[tokio::test]
    async fn load_balancer_node_ports_only_when_allocated_or_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocators(dir.path(), "10.96.0.0/12", "30000-32767");
        let mut lb = json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": true,
                     "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}});
        let claimed = a.allocate_service(&mut lb, None).await.unwrap();
        assert_eq!(claimed.node_ports.len(), 2);
        // Without allocation only the port that asks for one gets it.
        let mut bare = json!({"metadata": {"name": "bare", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false,
                     "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 31081}]}});
        let claimed = a.allocate_service(&mut bare, None).await.unwrap();
        assert_eq!(claimed.node_ports, vec![31081]);
        assert!(bare.pointer("/spec/ports/0/nodePort").is_none());
        assert_eq!(bare.pointer("/spec/ports/1/nodePort"), Some(&json!(31081)));
        // Switching allocation off keeps the ports the update still names.
        let old = lb.clone();
        let mut off = lb.clone();
        off["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
        let claimed = a.allocate_service(&mut off, Some(&old)).await.unwrap();
        assert!(claimed.is_empty(), "{claimed:?}");
        assert_eq!(off["spec"]["ports"], old["spec"]["ports"]);
    }

    #[tokio::test]
    async fn repair_releases_only_old_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let a = allocators(dir.path(), "10.96.0.0/24", "30000-30010");
        let ip = a
            .allocate_ip(None, "default/ghost", "spec.clusterIP")
            .await
            .unwrap();
        assert_eq!(
            a.repair(std::time::Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(a.repair(std::time::Duration::ZERO).await.unwrap(), 1);
        assert_eq!(
            a.allocate_ip(Some(ip), "default/real", "spec.clusterIP")
                .await
                .unwrap(),
            ip
        );
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"spec": {"containers": [{"name": "a"}]}})),
            "BestEffort"
        );
        let g = json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn jobs_select_their_pods_by_uid() {
        let mut job =
            json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"template": {"spec": {}}}});
        let info = super::super::resources::lookup("batch", "v1", "jobs").unwrap();
        prepare_create(info, &mut job);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert_eq!(job["metadata"]["generation"], 1);
    }
}
