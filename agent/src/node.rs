//! The Node object of this agent: registration (addresses, capacity, daemon endpoint),
//! the heartbeat (a Lease in kube-node-lease renewed every 10 s plus the Ready condition),
//! and the routes to the other nodes' pod ranges, learned by watching Nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

use crate::config::AgentConfig;
use crate::network::{Ipv4Net, NetworkEdge};

const LEASE_NAMESPACE: &str = "kube-node-lease";

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn meminfo_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The node's capacity, all of it allocatable (nothing is reserved for the system): what a
/// container without a limit may use, and what the Downward API reports as its limit.
pub fn allocatable(cfg: &AgentConfig) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = meminfo_total_kib();
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{mem_kib}Ki"))),
        ("pods".to_string(), Quantity(cfg.max_pods.to_string())),
        ("ephemeral-storage".to_string(), Quantity("10Gi".into())),
    ])
}

/// The node's status as this agent reports it.
pub fn node_status(cfg: &AgentConfig, ready: bool, message: &str) -> NodeStatus {
    let capacity = allocatable(cfg);
    let t = now();
    let cond = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(t.clone()),
        last_transition_time: Some(t.clone()),
    };
    let uname = nix::sys::utsname::uname().ok();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.node_name.clone(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            if ready {
                cond(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "skiff-agent is posting ready status",
                )
            } else {
                cond("Ready", "False", "KubeletNotReady", message)
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: cfg.port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!("skiff://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().to_string())
                .unwrap_or_default(),
            kube_proxy_version: String::new(),
            kubelet_version: format!("v1.33.0-skiff.{}", env!("CARGO_PKG_VERSION")),
            machine_id: read_trim("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: read_trim("/etc/machine-id"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Create the Node (or take over an existing one of the same name) and report NotReady
/// until the pod network is up.
pub async fn register(client: &Client, cfg: &AgentConfig) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), cfg.node_name.clone());
    labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
    labels.insert("kubernetes.io/arch".to_string(), "amd64".to_string());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %cfg.node_name, "registered the node"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .context("updating the node's labels")?;
            tracing::info!(node = %cfg.node_name, "the node exists; taking it over");
        }
        Err(e) => return Err(e).context("registering the node"),
    }
    update_status(client, cfg, false, "the pod network is not ready yet").await
}

pub async fn update_status(
    client: &Client,
    cfg: &AgentConfig,
    ready: bool,
    message: &str,
) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let mut status = node_status(cfg, ready, message);
    // Keep transition times of conditions whose status didn't change.
    // A plain GET: nodes may read Nodes but not the status subresource (kube's system:node).
    if let Ok(current) = api.get(&cfg.node_name).await {
        let old = current
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        for c in status.conditions.iter_mut().flatten() {
            if let Some(o) = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
            {
                c.last_transition_time = o.last_transition_time.clone();
            }
        }
    }
    api.patch_status(
        &cfg.node_name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .context("updating the node status")?;
    Ok(())
}

/// Wait for the node IPAM controller to give this node a podCIDR.
pub async fn wait_pod_cidr(client: &Client, node: &str) -> Result<Ipv4Net> {
    let api: Api<Node> = Api::all(client.clone());
    let mut logged = false;
    loop {
        if let Some(cidr) = api
            .get(node)
            .await
            .ok()
            .and_then(|n| n.spec)
            .and_then(|s| s.pod_cidr)
        {
            return cidr
                .parse()
                .map_err(|e: String| anyhow::anyhow!("node {node} has podCIDR {cidr}: {e}"));
        }
        if !logged {
            tracing::info!(
                node,
                "waiting for the node IPAM controller to assign a podCIDR"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How often a failed lease renewal is tried again before the next beat (kubelet's lease
/// controller: `maxUpdateRetries`), and how long apart.
const LEASE_RETRIES: u32 = 5;
const LEASE_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Renew the node's Lease and refresh its status, every `heartbeat_interval`. A failed renewal
/// (e.g. its API server died with the request) is retried at once, so a failover costs no beat.
pub async fn heartbeat(client: Client, cfg: AgentConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for attempt in 1..=LEASE_RETRIES {
            match renew_lease(&leases, &cfg).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(attempt, "renewing the node lease: {e}");
                    tokio::time::sleep(LEASE_RETRY_DELAY).await;
                }
            }
        }
        if let Err(e) = update_status(&client, &cfg, true, "").await {
            tracing::warn!("{e:#}");
        }
    }
}

async fn renew_lease(leases: &Api<Lease>, cfg: &AgentConfig) -> Result<(), kube::Error> {
    let renew = MicroTime(jiff::Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(cfg.node_name.clone()),
        lease_duration_seconds: Some(cfg.lease_duration_seconds),
        renew_time: Some(renew),
        ..Default::default()
    };
    match leases
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        r => r.map(|_| ()),
    }
}

/// A route to another node's pod range: its podCIDR via its InternalIP.
type NodeRoute = (Ipv4Net, Ipv4Addr);

fn route_of(n: &Node) -> Option<NodeRoute> {
    let cidr: Ipv4Net = n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let ip = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((cidr, ip))
}

/// The other nodes' routes as the node watch tells them. A (re)list is collected apart and
/// replaces the known routes only when complete: a watch that breaks (an API server or etcd
/// member lost) relists, and the routes must stay in place meanwhile, or pods lose every
/// other node for the length of the list.
#[derive(Debug, Default)]
struct NodeRoutes {
    own: String,
    known: BTreeMap<String, NodeRoute>,
    /// Set from a list's start to its end.
    listing: Option<BTreeMap<String, NodeRoute>>,
    /// The first list has completed: before, nothing is known.
    listed: bool,
}

impl NodeRoutes {
    fn new(own: &str) -> NodeRoutes {
        NodeRoutes {
            own: own.to_string(),
            ..Default::default()
        }
    }

    /// Take one watch event; returns the routes wanted now, or `None` while they are not
    /// known (before the first list completes, and during a relist).
    fn observe(&mut self, ev: watcher::Event<Node>) -> Option<Vec<NodeRoute>> {
        match ev {
            watcher::Event::Init => self.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(n) => {
                let own = &self.own;
                let listing = self.listing.get_or_insert_default();
                Self::put(own, listing, &n);
            }
            watcher::Event::InitDone => {
                self.known = self.listing.take().unwrap_or_default();
                self.listed = true;
            }
            watcher::Event::Apply(n) => Self::put(&self.own, &mut self.known, &n),
            watcher::Event::Delete(n) => {
                self.known
                    .remove(n.metadata.name.as_deref().unwrap_or_default());
            }
        }
        (self.listed && self.listing.is_none()).then(|| self.known.values().copied().collect())
    }

    fn put(own: &str, routes: &mut BTreeMap<String, NodeRoute>, n: &Node) {
        let name = n.metadata.name.clone().unwrap_or_default();
        match route_of(n).filter(|_| name != own) {
            Some(r) => {
                routes.insert(name, r);
            }
            None => {
                routes.remove(&name);
            }
        }
    }
}

/// Keep a route to every other node's podCIDR via its InternalIP.
pub async fn sync_node_routes(client: Client, node_name: String, network: Arc<dyn NetworkEdge>) {
    let api: Api<Node> = Api::all(client);
    let mut routes = NodeRoutes::new(&node_name);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut applied: Option<Vec<NodeRoute>> = None;
    while let Some(ev) = stream.next().await {
        let want = match ev {
            Ok(ev) => routes.observe(ev),
            Err(e) => {
                tracing::warn!("watching nodes: {e}");
                continue;
            }
        };
        let Some(want) = want else { continue };
        if applied.as_ref() == Some(&want) {
            continue;
        }
        match network.sync_routes(&want).await {
            Ok(()) => {
                tracing::info!(
                    routes = want.len(),
                    "routes to other nodes' pod ranges are in place"
                );
                applied = Some(want);
            }
            Err(e) => tracing::warn!("syncing node routes: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_keeps_the_routes_until_it_completes() {
        let (a, b, c) = (
            node("a", "10.244.0.0/24", "10.0.0.1"),
            node("b", "10.244.1.0/24", "10.0.0.2"),
            node("c", "10.244.2.0/24", "10.0.0.3"),
        );
        let route = |n: &Node| route_of(n).unwrap();
        let mut r = NodeRoutes::new("a");
        assert_eq!(r.observe(watcher::Event::Init), None);
        assert_eq!(r.observe(watcher::Event::InitApply(a.clone())), None);
        assert_eq!(r.observe(watcher::Event::InitApply(b.clone())), None);
        assert_eq!(r.observe(watcher::Event::InitDone), Some(vec![route(&b)]));
        assert_eq!(
            r.observe(watcher::Event::Apply(c.clone())),
            Some(vec![route(&b), route(&c)])
        );
        // The watch broke and relists: nothing changes until the list is complete, and
        // then only what the list says (c is gone).
        assert_eq!(r.observe(watcher::Event::Init), None);
        assert_eq!(r.observe(watcher::Event::InitApply(a)), None);
        assert_eq!(r.observe(watcher::Event::InitApply(b.clone())), None);
        assert_eq!(r.observe(watcher::Event::InitDone), Some(vec![route(&b)]));
        assert_eq!(r.observe(watcher::Event::Delete(b)), Some(Vec::new()));
    }

    #[test]
    fn status_reports_addresses_capacity_and_endpoint() {
        let cfg = AgentConfig::for_tests("/tmp/x".into());
        let s = node_status(&cfg, true, "");
        let addrs = s.addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.0.0.1");
        assert_eq!(s.capacity.as_ref().unwrap()["pods"].0, "110");
        assert!(s.capacity.unwrap()["memory"].0.ends_with("Ki"));
        assert_eq!(
            s.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
            10250
        );
        let ready = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }
}
