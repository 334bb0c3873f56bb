//! How [`super::stale_flows`] ends flows in eBPF mode: by destroying local sockets in the
//! node's and the pods' network namespaces. The kernel edge is a trait ([`SocketKiller`])
//! with the real sock_diag implementation here and a recording one in the tests, so what gets
//! destroyed after a sync is tested without root.
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddrV4;
use std::path::PathBuf;

use super::ebpf::flow_stats::FlowStats;
use super::ebpf::sock_destroy::{self, DiagSocket, Selector, TCP_ESTABLISHED, TCP_SYN_SENT};
use super::metrics::ProxyMetrics;
use super::model::Protocol;
use super::stale_flows::{FlowCleaner, GoneBackend};

/// A network namespace local sockets live in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    /// For the log: `node`, or the pod's `namespace/name`.
    pub name: String,
    /// `None`: the agent's own (the node's).
    pub path: Option<PathBuf>,
}

impl Netns {
    pub fn node() -> Netns {
        Netns {
            name: "node".into(),
            path: None,
        }
    }
}

/// Destroys the sockets of one protocol that a selector picks, in one namespace.
pub trait SocketKiller: Send {
    fn destroy(
        &mut self,
        netns: &Netns,
        protocol: Protocol,
        sel: &Selector,
    ) -> io::Result<Vec<DiagSocket>>;
}

/// sock_diag `SOCK_DESTROY`.
pub struct SockDiag;

impl SocketKiller for SockDiag {
    fn destroy(
        &mut self,
        netns: &Netns,
        protocol: Protocol,
        sel: &Selector,
    ) -> io::Result<Vec<DiagSocket>> {
        sock_destroy::destroy(netns.path.clone(), protocol, sel.clone())
    }
}

/// The namespaces to look in (the node's and every pod's), asked at each cleanup.
pub type Namespaces = Box<dyn Fn() -> Vec<Netns> + Send>;

/// eBPF mode: destroy local sockets connected to a backend that left.
pub struct SocketCleaner {
    killer: Box<dyn SocketKiller>,
    namespaces: Namespaces,
    destroy_established_tcp: bool,
    /// The node's count in the pinned `skiff_flow_stats` map (for `skiff-agent bpf sockets`).
    pinned: Option<FlowStats>,
}

impl SocketCleaner {
    pub fn new(
        killer: Box<dyn SocketKiller>,
        namespaces: Namespaces,
        destroy_established_tcp: bool,
    ) -> SocketCleaner {
        SocketCleaner {
            killer,
            namespaces,
            destroy_established_tcp,
            pinned: None,
        }
    }

    /// Also count in the node's pinned `skiff_flow_stats` map.
    pub fn with_pinned_stats(mut self, stats: FlowStats) -> SocketCleaner {
        self.pinned = Some(stats);
        self
    }

    fn count(&mut self, protocol: Protocol, n: u64, metrics: &ProxyMetrics) {
        metrics.record_sockets_destroyed(protocol, n);
        if let (Some(stats), true) = (&mut self.pinned, n > 0)
            && let Err(e) = stats.add(protocol, n)
        {
            tracing::warn!("counting destroyed sockets: {e:#}");
        }
    }
}

/// Per protocol, the sockets to destroy after `gone`: those connected to a backend that left
/// (UDP in any state, TCP while connecting, established TCP when asked).
pub fn selectors(gone: &[GoneBackend], established_tcp: bool) -> BTreeMap<Protocol, Selector> {
    let mut out: BTreeMap<Protocol, Selector> = BTreeMap::new();
    for GoneBackend {
        protocol, backend, ..
    } in gone
    {
        let sel = out.entry(*protocol).or_default();
        sel.states = match protocol {
            Protocol::Udp => u32::MAX,
            Protocol::Tcp if established_tcp => (1 << TCP_SYN_SENT) | (1 << TCP_ESTABLISHED),
            Protocol::Tcp => 1 << TCP_SYN_SENT,
        };
        sel.destinations.insert(*backend);
    }
    out
}

impl FlowCleaner for SocketCleaner {
    fn clean(&mut self, gone: &[GoneBackend], metrics: &ProxyMetrics) {
        let selectors = selectors(gone, self.destroy_established_tcp);
        if selectors.is_empty() {
            return;
        }
        let services: BTreeMap<SocketAddrV4, String> = gone
            .iter()
            .map(|g| (g.backend, g.service.to_string()))
            .collect();
        for ns in (self.namespaces)() {
            for (protocol, sel) in &selectors {
                match self.killer.destroy(&ns, *protocol, sel) {
                    Ok(destroyed) => {
                        for s in &destroyed {
                            tracing::info!(
                                netns = %ns.name,
                                protocol = protocol.as_str(),
                                src = %s.src,
                                dst = %s.dst,
                                service = services.get(&s.dst).map_or("", String::as_str),
                                "destroyed a socket connected to a backend that left its service"
                            );
                        }
                        self.count(*protocol, destroyed.len() as u64, metrics);
                    }
                    // A pod that went away meanwhile has no sockets left.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        netns = %ns.name,
                        "destroying {} sockets to backends that left: {e}",
                        protocol.as_str()
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::proxy::model::ServicePortName;
    use crate::proxy::stale_flows::SyncDiff;
    use crate::proxy::test_support::{ep, state, svc};

    /// Sockets per namespace; destroying removes and records them.
    #[derive(Clone, Default)]
    struct FakeSockets(Arc<Mutex<BTreeMap<String, Vec<DiagSocket>>>>);

    impl SocketKiller for FakeSockets {
        fn destroy(
            &mut self,
            netns: &Netns,
            protocol: Protocol,
            sel: &Selector,
        ) -> io::Result<Vec<DiagSocket>> {
            let mut all = self.0.lock().unwrap();
            let Some(socks) = all.get_mut(&netns.name) else {
                return Err(io::ErrorKind::NotFound.into());
            };
            let (gone, kept) = socks
                .drain(..)
                .partition(|s| s.protocol == protocol && sel.selects(s));
            *socks = kept;
            Ok(gone)
        }
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn sock(p: Protocol, state: u8, src: &str, dst: &str) -> DiagSocket {
        DiagSocket::new(p, state, addr(src), addr(dst))
    }

    #[test]
    fn sockets_to_a_backend_that_left_are_destroyed_in_every_namespace() {
        let udp = |mut sp: crate::proxy::model::ServicePort| {
            sp.name.protocol = Protocol::Udp;
            sp
        };
        let old = ep([10, 244, 2, 7], 5353, false);
        let new = ep([10, 244, 1, 9], 5353, true);
        let dns = udp(svc("dns", [10, 96, 0, 10], 53, vec![old.clone()]));
        let web = svc(
            "web",
            [10, 96, 0, 1],
            80,
            vec![ep([10, 244, 2, 7], 80, false)],
        );
        let mut d = SyncDiff::new();
        d.synced(&state(vec![dns.clone(), web.clone()]), None);

        let kernel = FakeSockets::default();
        let u = Protocol::Udp;
        let t = Protocol::Tcp;
        kernel.0.lock().unwrap().extend([
            (
                "node".to_string(),
                vec![sock(u, 1, "192.168.1.2:4000", "10.244.2.7:5353")],
            ),
            (
                "default/client".to_string(),
                vec![
                    sock(u, 1, "10.244.1.5:4000", "10.244.2.7:5353"),
                    // Another port of the same pod: not this service's backend.
                    sock(u, 1, "10.244.1.5:4001", "10.244.2.7:9999"),
                    // TCP to the web backend: connecting, and established.
                    sock(t, TCP_SYN_SENT, "10.244.1.5:4002", "10.244.2.7:80"),
                    sock(t, TCP_ESTABLISHED, "10.244.1.5:4003", "10.244.2.7:80"),
                ],
            ),
        ]);
        let names = vec![
            Netns::node(),
            Netns {
                name: "default/client".into(),
                path: Some("/run/netns/x".into()),
            },
            // Gone before its turn.
            Netns {
                name: "default/gone".into(),
                path: Some("/run/netns/y".into()),
            },
        ];
        let mut cleaner = SocketCleaner::new(
            Box::new(kernel.clone()),
            Box::new(move || names.clone()),
            false,
        );
        let mut dns2 = dns.clone();
        dns2.endpoints = vec![new];
        let mut web2 = web.clone();
        web2.endpoints.clear();
        let cleanups = d.synced(&state(vec![dns2, web2]), None);
        let metrics = ProxyMetrics::default();
        cleaner.clean(&cleanups, &metrics);

        let left = kernel.0.lock().unwrap().clone();
        assert_eq!(left["node"], vec![]);
        assert_eq!(
            left["default/client"],
            vec![
                sock(u, 1, "10.244.1.5:4001", "10.244.2.7:9999"),
                sock(t, TCP_ESTABLISHED, "10.244.1.5:4003", "10.244.2.7:80"),
            ]
        );
        assert_eq!(metrics.sockets_destroyed(Protocol::Udp), 2);
        assert_eq!(metrics.sockets_destroyed(Protocol::Tcp), 1);
        let text = metrics.render();
        assert!(
            text.contains("skiff_proxy_sockets_destroyed_total{protocol=\"udp\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn established_tcp_only_when_asked() {
        let gone = GoneBackend {
            service: ServicePortName {
                namespace: "default".into(),
                name: "web".into(),
                port: String::new(),
                protocol: Protocol::Tcp,
            },
            protocol: Protocol::Tcp,
            backend: addr("10.244.2.7:80"),
        };
        let est = sock(
            Protocol::Tcp,
            TCP_ESTABLISHED,
            "10.0.0.1:1",
            "10.244.2.7:80",
        );
        let off = selectors(std::slice::from_ref(&gone), false);
        assert!(!off[&Protocol::Tcp].selects(&est));
        let on = selectors(&[gone], true);
        assert!(on[&Protocol::Tcp].selects(&est));
    }
}
