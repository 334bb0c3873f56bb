//! What the service proxy programs, independent of the dataplane: one [`ServicePort`] per
//! (Service, port), with the endpoints that may receive new connections. Built from the
//! API's Services and EndpointSlices by [`build`]; both the eBPF and the iptables dataplane
//! take a [`ProxyState`] and make the kernel match it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::network::Ipv4Net;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None, // SCTP is not supported
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// `namespace/name:portname` — kube-proxy's ServicePortName.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The endpoint runs on this node (for externalTrafficPolicy: Local).
    pub local: bool,
    /// Ready endpoints receive new connections; serving-but-terminating ones only when
    /// no endpoint is ready (kube-proxy's fallback); the rest none.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// 0 when the service has no node port.
    pub node_port: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds (None without affinity).
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: the cluster IP balances over this node's endpoints.
    pub internal_local: bool,
    /// Frontends besides the cluster IP and the node port.
    pub extra: ExtraFrontends,
    /// Endpoints sorted by (ip, port), deduplicated.
    pub endpoints: Vec<Endpoint>,
}

/// The addresses a service port is reached on from outside besides its node port
/// (`spec.externalIPs`, `status.loadBalancer.ingress[].ip`), or, for a pod's `hostPort`
/// entry, the host port itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtraFrontends {
    /// `spec.externalIPs` (IPv4 ones), at the service port.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (IPv4 ones), at the service port.
    pub lb_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges` (IPv4 ones): only these clients may use the LB
    /// addresses; empty: everyone.
    pub source_ranges: Vec<Ipv4Net>,
    /// This entry is a pod's `hostPort`, not a Service (see [`host_ports`]).
    pub host_port: Option<HostPort>,
    /// `spec.healthCheckNodePort` of a LoadBalancer with `externalTrafficPolicy: Local`:
    /// where load balancers ask this node whether it has endpoints of the Service (served
    /// by [`super::healthcheck`], not by the dataplane).
    pub health_check_node_port: Option<u16>,
}

/// A container port published on the node (`containers[].ports[].hostPort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub port: u16,
    /// `hostIP`; `None` (unset or `0.0.0.0`): the node IP (and loopback from the node).
    pub ip: Option<Ipv4Addr>,
}

/// Prefix of the name of a pod's hostPort entries in the [`ProxyState`]: `pod/<name>` cannot
/// be a Service's name, so they never collide with a Service.
pub const HOST_PORT_PREFIX: &str = "pod/";

impl ServicePort {
    /// The endpoints new connections may go to: the ready ones, else (kube-proxy's
    /// terminating fallback) the serving-and-terminating ones.
    pub fn usable(&self) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    /// This node's endpoints new connections may go to, under a `Local` traffic policy: the
    /// ready local ones, else the serving-and-terminating local ones. The fallback looks at
    /// the local endpoints alone (kube-proxy's `CategorizeEndpoints`): a ready endpoint on
    /// another node does not take the traffic away from a terminating local one.
    pub fn usable_local(&self) -> Vec<&Endpoint> {
        let local = || self.endpoints.iter().filter(|e| e.local);
        let ready: Vec<&Endpoint> = local().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        local().filter(|e| e.serving && e.terminating).collect()
    }

    /// The endpoints of traffic to the cluster IP (`internalTrafficPolicy`).
    pub fn usable_internal(&self) -> Vec<&Endpoint> {
        if self.internal_local {
            self.usable_local()
        } else {
            self.usable()
        }
    }

    /// The addresses traffic from outside the cluster reaches this port on at
    /// [`ServicePort::port`] (external IPs, then LB addresses), with whether the address is
    /// an LB one (where source ranges apply).
    pub fn external_addrs(&self) -> impl Iterator<Item = (Ipv4Addr, bool)> + '_ {
        let e = &self.extra;
        e.external_ips
            .iter()
            .map(|ip| (*ip, false))
            .chain(e.lb_ips.iter().map(|ip| (*ip, true)))
    }
}

/// Everything the dataplane should hold, keyed by ServicePortName.
pub type ProxyState = BTreeMap<ServicePortName, ServicePort>;

/// `kubernetes.io/service-name`: the label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node label topology hints name.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A Service's identity: (namespace, name).
pub type ServiceKey = (String, String);

/// The Service an EndpointSlice belongs to (its namespace and `kubernetes.io/service-name`
/// label), whatever its address type.
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        svc.clone(),
    ))
}

/// The node the proxy runs on, as the model needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThisNode {
    /// Marks local endpoints.
    pub name: String,
    /// `topology.kubernetes.io/zone`, for topology hints.
    pub zone: Option<String>,
}

impl ThisNode {
    pub fn named(name: &str) -> ThisNode {
        ThisNode {
            name: name.to_string(),
            zone: None,
        }
    }
}

/// Join Services with their EndpointSlices (`kubernetes.io/service-name` label) into the
/// proxy's view. `node` marks local endpoints. Headless services and those without an
/// IPv4 cluster IP are skipped.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &ThisNode,
) -> ProxyState {
    let mut by_service: BTreeMap<ServiceKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(key) = slice_service(s) {
            by_service.entry(key).or_default().push(s);
        }
    }
    let mut out = ProxyState::new();
    for svc in services {
        let key = (
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        );
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        out.extend(
            build_service(svc, slices, node)
                .into_iter()
                .map(|p| (p.name.clone(), p)),
        );
    }
    out
}

/// The entries of `state` that belong to one Service (all its ports).
pub fn service_entries<'a>(
    state: &'a ProxyState,
    (namespace, name): &ServiceKey,
) -> impl Iterator<Item = (&'a ServicePortName, &'a ServicePort)> {
    let from = ServicePortName {
        namespace: namespace.clone(),
        name: name.clone(),
        port: String::new(),
        protocol: Protocol::Tcp,
    };
    state
        .range(from..)
        .take_while(move |(k, _)| k.namespace == *namespace && k.name == *name)
}

/// The zones an endpoint is hinted for (`hints.forZones`), `None` without hints.
fn zone_hints(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> Option<Vec<&str>> {
    let zones: Vec<&str> = ep
        .hints
        .as_ref()?
        .for_zones
        .iter()
        .flatten()
        .map(|z| z.name.as_str())
        .collect();
    (!zones.is_empty()).then_some(zones)
}

/// Topology-aware routing (`trafficDistribution: PreferClose`, or hints the slices carry),
/// as kube-proxy's `CategorizeEndpoints` does it: when every ready endpoint has zone hints
/// and one of them is hinted for this node's `zone`, new connections go to the ready
/// endpoints hinted for it only; otherwise hints are ignored. Ready endpoints for other
/// zones are dropped; the rest stay (the terminating fallback ignores topology, and under a
/// `Local` policy local endpoints, in this zone by definition, are used anyway).
fn keep_closest(endpoints: &mut Vec<Endpoint>, hints: &[Option<Vec<&str>>], zone: &str) {
    let ready = || endpoints.iter().zip(hints).filter(|(e, _)| e.ready);
    let all_hinted = ready().all(|(_, h)| h.is_some());
    let some_here = ready().any(|(_, h)| h.as_ref().is_some_and(|z| z.contains(&zone)));
    if !all_hinted || !some_here {
        return;
    }
    let mut hint = hints.iter();
    endpoints.retain(|e| {
        let for_here = hint
            .next()
            .and_then(Option::as_ref)
            .is_some_and(|z| z.contains(&zone));
        !e.ready || for_here
    });
}

/// One Service's ports joined with its EndpointSlices (those labelled with its name in its
/// namespace; slices of other address types than IPv4 are ignored). Empty for headless
/// and ExternalName services and those without an IPv4 cluster IP.
pub fn build_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &ThisNode,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    let Some(spec) = &svc.spec else { return out };
    let Some(cluster_ip) = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10800)
            .max(1) as u32
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let extra = extra_frontends(svc);
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        // Each endpoint's zone hints (`None`: it has none), beside `endpoints`.
        let mut hints: Vec<Option<Vec<&str>>> = Vec::new();
        for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
            // The slice's port with the service port's name carries the target port.
            let Some(target) = slice.ports.iter().flatten().find(|sp| {
                sp.name.clone().unwrap_or_default() == port_name
                    && Protocol::parse(sp.protocol.as_deref()) == Some(protocol)
            }) else {
                continue;
            };
            let Some(tport) = target.port.and_then(|v| u16::try_from(v).ok()) else {
                continue;
            };
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let local = ep.node_name.as_deref() == Some(node.name.as_str());
                let zones = zone_hints(ep);
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<Ipv4Addr>() {
                        hints.push(zones.clone());
                        endpoints.push(Endpoint {
                            ip,
                            port: tport,
                            local,
                            ready,
                            serving,
                            terminating,
                        });
                    }
                }
            }
        }
        if let Some(zone) = node.zone.as_deref() {
            keep_closest(&mut endpoints, &hints, zone);
        }
        endpoints.sort();
        endpoints.dedup_by(|a, b| a.ip == b.ip && a.port == b.port);
        let key = ServicePortName {
            namespace: ns.clone(),
            name: name.clone(),
            port: port_name,
            protocol,
        };
        // Two ports with the same name and protocol (the API rejects them): the last wins.
        out.retain(|p: &ServicePort| p.name != key);
        out.push(ServicePort {
            name: key,
            cluster_ip,
            port: u16::try_from(p.port).unwrap_or(0),
            node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
            affinity_timeout,
            external_local,
            internal_local,
            extra: extra.clone(),
            endpoints,
        });
    }
    out
}

/// IPv4 addresses of `ips`, sorted and deduplicated (others are skipped).
fn ipv4s<'a>(ips: impl IntoIterator<Item = &'a str>) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = ips
        .into_iter()
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A Service's external IPs, LB ingress addresses (only for `type: LoadBalancer`, as
/// kube-proxy) and LB source ranges.
fn extra_frontends(svc: &Service) -> ExtraFrontends {
    let Some(spec) = &svc.spec else {
        return ExtraFrontends::default();
    };
    let external_ips = ipv4s(spec.external_ips.iter().flatten().map(String::as_str));
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return ExtraFrontends {
            external_ips,
            ..Default::default()
        };
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let lb_ips = ipv4s(
        ingress
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()),
    );
    let mut source_ranges: Vec<Ipv4Net> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    source_ranges.sort();
    source_ranges.dedup();
    let health_check_node_port = (spec.external_traffic_policy.as_deref() == Some("Local"))
        .then(|| {
            spec.health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
        })
        .flatten()
        .filter(|p| *p != 0);
    ExtraFrontends {
        external_ips,
        lb_ips,
        source_ranges,
        host_port: None,
        health_check_node_port,
    }
}

/// A pod's `hostPort`s as entries of the proxy state: one per (host port, protocol), named
/// `<namespace>/pod/<name>:hostport-<port>`, its only endpoint the pod's container port.
/// Pods without an IP, finished ones and those on the host network (whose container port is
/// the host port already) have none.
pub fn host_ports(pod: &Pod) -> Vec<ServicePort> {
    let mut out = Vec::new();
    let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
        return out;
    };
    if spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return out;
    }
    let Some(pod_ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) else {
        return out;
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = format!(
        "{HOST_PORT_PREFIX}{}",
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten());
    for p in ports {
        let (Some(hp), Ok(cp)) = (
            p.host_port
                .and_then(|h| u16::try_from(h).ok())
                .filter(|h| *h != 0),
            u16::try_from(p.container_port),
        ) else {
            continue;
        };
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let ip = p
            .host_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let key = ServicePortName {
            namespace: ns.clone(),
            name: name.clone(),
            port: format!("hostport-{hp}"),
            protocol,
        };
        if out.iter().any(|e: &ServicePort| e.name == key) {
            continue; // one host port, one binding (the scheduler ensures it)
        }
        out.push(ServicePort {
            name: key,
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            node_port: 0,
            affinity_timeout: None,
            external_local: true,
            internal_local: false,
            extra: ExtraFrontends {
                host_port: Some(HostPort { port: hp, ip }),
                ..Default::default()
            },
            endpoints: vec![Endpoint {
                ip: pod_ip,
                port: cp,
                local: true,
                ready: true,
                serving: true,
                terminating: false,
            }],
        });
    }
    out
}

/// The Service whose ClusterIP every node answers itself: the agent serves cluster DNS on
/// its pods' gateway address, and a pod's queries to `kube-dns` go to its own node's server
/// (as with NodeLocal DNSCache), whatever the Service's EndpointSlices say.
pub const NODE_LOCAL_DNS: (&str, &str) = ("kube-system", "kube-dns");
/// The port the node-local DNS server listens on (UDP and TCP).
pub const DNS_PORT: u16 = 53;

/// Point the DNS ports (service port 53) of the node-local DNS Service's entries in `state`
/// at `server` on this node, its only endpoint.
pub fn localize_dns(state: &mut ProxyState, server: Ipv4Addr) {
    let key = (NODE_LOCAL_DNS.0.to_string(), NODE_LOCAL_DNS.1.to_string());
    let names: Vec<ServicePortName> = service_entries(state, &key)
        .map(|(k, _)| k.clone())
        .collect();
    for name in names {
        if let Some(port) = state.get_mut(&name)
            && port.port == DNS_PORT
        {
            port.endpoints = vec![Endpoint {
                ip: server,
                port: DNS_PORT,
                local: true,
                ready: true,
                serving: true,
                terminating: false,
            }];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn joins_services_and_slices_per_named_port() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort", "sessionAffinity": "ClientIP",
                "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}));
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let sl = slice(
            json!({"metadata": {"name": "web-abc", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.5"], "nodeName": "n2", "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]}),
        );
        let st = build([&s, &headless], [&sl], &ThisNode::named("n1"));
        assert_eq!(st.len(), 2);
        let http = st.values().find(|p| p.port == 80).unwrap();
        assert_eq!(http.node_port, 30080);
        assert_eq!(http.affinity_timeout, Some(10800));
        assert!(http.external_local);
        assert_eq!(http.endpoints.len(), 2);
        assert_eq!(http.usable().len(), 1);
        assert_eq!(http.usable()[0].port, 8080);
        assert!(http.usable()[0].local);
        let dns = st.values().find(|p| p.port == 53).unwrap();
        assert_eq!(dns.name.protocol, Protocol::Udp);
        assert_eq!(dns.endpoints[0].port, 5353);
        assert_eq!(dns.name.to_string(), "default/web:dns");
    }

    #[test]
    fn zone_hints_keep_traffic_in_the_zone_when_every_ready_endpoint_has_them() {
        let s = svc(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}));
        let ep = |ip: &str, zone: Option<&str>, ready: bool| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready, "serving": true, "terminating": !ready}});
            if let Some(z) = zone {
                e["hints"] = json!({"forZones": [{"name": z}]});
            }
            e
        };
        let sl = |eps: Vec<serde_json::Value>| {
            slice(
                json!({"metadata": {"name": "web-abc", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps}),
            )
        };
        let in_a = ThisNode {
            name: "n1".into(),
            zone: Some("a".into()),
        };
        let usable = |sl: &EndpointSlice, node: &ThisNode| -> Vec<String> {
            let st = build([&s], [sl], node);
            let port = st.values().next().unwrap();
            port.usable().iter().map(|e| e.ip.to_string()).collect()
        };
        let hinted = sl(vec![
            ep("10.0.0.1", Some("a"), true),
            ep("10.0.0.2", Some("b"), true),
            ep("10.0.0.3", Some("a"), false),
        ]);
        assert_eq!(usable(&hinted, &in_a), ["10.0.0.1"]);
        // A node without a zone, or in a zone no endpoint is hinted for: every endpoint.
        assert_eq!(usable(&hinted, &ThisNode::named("n1")).len(), 2);
        let in_c = ThisNode {
            zone: Some("c".into()),
            ..in_a.clone()
        };
        assert_eq!(usable(&hinted, &in_c).len(), 2);
        // One ready endpoint without hints: hints are ignored.
        let partly = sl(vec![
            ep("10.0.0.1", Some("a"), true),
            ep("10.0.0.2", None, true),
        ]);
        assert_eq!(usable(&partly, &in_a).len(), 2);
        // The terminating fallback is not filtered by zone.
        let terminating = sl(vec![ep("10.0.0.2", Some("b"), false)]);
        assert_eq!(usable(&terminating, &in_a), ["10.0.0.2"]);
    }

    #[test]
    fn the_local_fallback_looks_at_local_endpoints_alone() {
        let e = |ip: [u8; 4], local: bool, ready: bool| Endpoint {
            ip: Ipv4Addr::from(ip),
            port: 80,
            local,
            ready,
            serving: true,
            terminating: !ready,
        };
        let mut sp = crate::proxy::test_support::svc(
            "web",
            [10, 96, 0, 1],
            80,
            vec![e([10, 0, 0, 1], true, false), e([10, 0, 0, 2], false, true)],
        );
        let ips = |eps: Vec<&Endpoint>| eps.iter().map(|e| e.ip.octets()[3]).collect::<Vec<_>>();
        assert_eq!(ips(sp.usable()), [2]);
        assert_eq!(ips(sp.usable_local()), [1]);
        assert_eq!(ips(sp.usable_internal()), [2]);
        sp.internal_local = true;
        assert_eq!(ips(sp.usable_internal()), [1]);
        sp.endpoints[0].serving = false;
        assert!(sp.usable_internal().is_empty());
    }

    #[test]
    fn terminating_fallback() {
        let p = ServicePort {
            name: ServicePortName {
                namespace: "a".into(),
                name: "b".into(),
                port: String::new(),
                protocol: Protocol::Tcp,
            },
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            node_port: 0,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            extra: ExtraFrontends::default(),
            endpoints: vec![Endpoint {
                ip: Ipv4Addr::new(10, 244, 0, 2),
                port: 80,
                local: false,
                ready: false,
                serving: true,
                terminating: true,
            }],
        };
        assert_eq!(p.usable().len(), 1);
    }

    #[test]
    fn external_ips_lb_ingress_and_source_ranges() {
        let lb = svc(json!({"metadata": {"name": "lb", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "type": "LoadBalancer",
                "externalIPs": ["203.0.113.7", "2001:db8::1"],
                "loadBalancerSourceRanges": ["10.0.0.0/8", " 192.168.1.0/24 "],
                "ports": [{"port": 80, "nodePort": 30081}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.1.0.240"}, {"hostname": "lb.example"}]}}}));
        let st = build([&lb], [], &ThisNode::named("n1"));
        let p = st.values().next().unwrap();
        assert_eq!(p.extra.external_ips, vec![Ipv4Addr::new(203, 0, 113, 7)]);
        assert_eq!(p.extra.lb_ips, vec![Ipv4Addr::new(10, 1, 0, 240)]);
        let ranges: Vec<String> = p
            .extra
            .source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(ranges, ["10.0.0.0/8", "192.168.1.0/24"]);
        let addrs: Vec<(Ipv4Addr, bool)> = p.external_addrs().collect();
        assert_eq!(
            addrs,
            [
                (Ipv4Addr::new(203, 0, 113, 7), false),
                (Ipv4Addr::new(10, 1, 0, 240), true)
            ]
        );
        // A status left over from type LoadBalancer does not count on another type.
        let mut np = lb.clone();
        np.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        let st = build([&np], [], &ThisNode::named("n1"));
        let p = st.values().next().unwrap();
        assert!(p.extra.lb_ips.is_empty() && p.extra.source_ranges.is_empty());
        assert_eq!(p.extra.external_ips.len(), 1);
    }

    #[test]
    fn host_ports_of_a_pod() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let web = pod(json!({"metadata": {"name": "web", "namespace": "ns1"},
            "spec": {"containers": [
                {"name": "a", "ports": [
                    {"containerPort": 8080, "hostPort": 18080},
                    {"containerPort": 53, "hostPort": 18053, "protocol": "UDP", "hostIP": "10.0.0.11"},
                    {"containerPort": 9090}]},
                {"name": "b", "ports": [{"containerPort": 7070, "hostPort": 17070, "hostIP": "0.0.0.0"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.9"}}));
        let hp = host_ports(&web);
        let got: Vec<(String, Option<HostPort>, u16)> = hp
            .iter()
            .map(|p| (p.name.to_string(), p.extra.host_port, p.endpoints[0].port))
            .collect();
        let at = |port, ip| Some(HostPort { port, ip });
        assert_eq!(
            got,
            [
                (
                    "ns1/pod/web:hostport-18080".to_string(),
                    at(18080, None),
                    8080
                ),
                (
                    "ns1/pod/web:hostport-18053".to_string(),
                    at(18053, Some(Ipv4Addr::new(10, 0, 0, 11))),
                    53
                ),
                (
                    "ns1/pod/web:hostport-17070".to_string(),
                    at(17070, None),
                    7070
                ),
            ]
        );
        assert!(
            hp.iter()
                .all(|p| p.endpoints[0].ip == Ipv4Addr::new(10, 244, 1, 9))
        );
        assert!(
            hp.iter()
                .all(|p| p.cluster_ip.is_unspecified() && p.external_local)
        );
        // No IP yet, finished, or on the host network: nothing to map.
        for status in [
            json!({"phase": "Pending"}),
            json!({"phase": "Succeeded", "podIP": "10.244.1.9"}),
        ] {
            let mut p = web.clone();
            p.status = serde_json::from_value(status).unwrap();
            assert!(host_ports(&p).is_empty());
        }
        let mut host = web.clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(host_ports(&host).is_empty());
    }
}
