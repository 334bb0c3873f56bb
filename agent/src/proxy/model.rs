//! What the service proxy programs, independent of the dataplane: one [`ServicePort`] per
//! (Service, port), with the endpoints that may receive new connections. Built from the
//! API's Services and EndpointSlices by [`build`]; both the eBPF and the iptables dataplane
//! take a [`ProxyState`] and make the kernel match it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

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
    /// Endpoints sorted by (ip, port), deduplicated.
    pub endpoints: Vec<Endpoint>,
}

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

    /// For traffic arriving at a node port with externalTrafficPolicy: Local.
    pub fn usable_local(&self) -> Vec<&Endpoint> {
        self.usable().into_iter().filter(|e| e.local).collect()
    }
}

/// Everything the dataplane should hold, keyed by ServicePortName.
pub type ProxyState = BTreeMap<ServicePortName, ServicePort>;

/// `kubernetes.io/service-name`: the label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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

/// Join Services with their EndpointSlices (`kubernetes.io/service-name` label) into the
/// proxy's view. `node` marks local endpoints. Headless services and those without an
/// IPv4 cluster IP are skipped.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
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

/// One Service's ports joined with its EndpointSlices (those labelled with its name in its
/// namespace; slices of other address types than IPv4 are ignored). Empty for headless
/// and ExternalName services and those without an IPv4 cluster IP.
pub fn build_service(svc: &Service, slices: &[&EndpointSlice], node: &str) -> Vec<ServicePort> {
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
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
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
                let local = ep.node_name.as_deref() == Some(node);
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<Ipv4Addr>() {
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
            endpoints,
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
        let st = build([&s, &headless], [&sl], "n1");
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
}
