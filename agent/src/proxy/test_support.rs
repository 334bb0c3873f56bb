//! Builders of service ports and proxy states for the proxy's unit tests.
use std::net::Ipv4Addr;

use crate::proxy::model::{Endpoint, Protocol, ProxyState, ServicePort, ServicePortName};

/// A ready, serving endpoint `ip:port`.
pub fn ep(ip: [u8; 4], port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(ip),
        port,
        local,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// Ready remote endpoints, one per address in `ips`, on `port`.
pub fn remote_eps(port: u16, ips: &[[u8; 4]]) -> Vec<Endpoint> {
    ips.iter().map(|ip| ep(*ip, port, false)).collect()
}

/// The ClusterIP service port `default/name` (TCP) on `vip:port` with endpoints `eps`.
pub fn svc(name: &str, vip: [u8; 4], port: u16, eps: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port: String::new(),
            protocol: Protocol::Tcp,
        },
        cluster_ip: Ipv4Addr::from(vip),
        port,
        node_port: 0,
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        extra: Default::default(),
        endpoints: eps,
    }
}

/// A state of the service ports `svcs`.
pub fn state(svcs: Vec<ServicePort>) -> ProxyState {
    svcs.into_iter().map(|s| (s.name.clone(), s)).collect()
}

/// Two services sharing a local backend: `a` on 10.96.0.1:80 and NodePort 30080 with
/// ClientIP affinity, backends 10.244.1.2:8080 (local) and 10.244.2.2:8080; `b` on
/// 10.96.0.2:53 with the local one only.
pub fn nodeport_affinity_pair() -> (ServicePort, ServicePort) {
    let local = ep([10, 244, 1, 2], 8080, true);
    let mut a = svc(
        "a",
        [10, 96, 0, 1],
        80,
        vec![local.clone(), ep([10, 244, 2, 2], 8080, false)],
    );
    a.node_port = 30080;
    a.affinity_timeout = Some(60);
    let b = svc("b", [10, 96, 0, 2], 53, vec![local]);
    (a, b)
}
