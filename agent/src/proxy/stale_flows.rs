//! No stale flows when a backend leaves a service port (eBPF mode): after a sync that took a
//! backend out of the set new connections go to ([`ServicePort::usable`]), the local sockets
//! still connected to it are destroyed, so the application sees an error and its next
//! `connect()` picks a live backend. The socket programs translate the service address at
//! `connect()`, so a connected socket's peer is the backend itself: the sockets connected to
//! the removed backend address (UDP in any state, TCP in `SYN_SENT`, established TCP only with
//! `--destroy-established-tcp`) are the ones to destroy, with sock_diag's `SOCK_DESTROY`
//! (what `ss -K` and Cilium do), in the node's network namespace and in every pod's
//! ([`super::flow_cleaners`]). iptables mode needs none of this: its sync deletes the stale
//! UDP conntrack entries itself ([`super::iptables`]).
//!
//! [`StaleFlowsDataplane`] wraps a dataplane: it compares each successful sync with the one
//! before and hands what left to a worker thread, so a sync never waits for the cleanup.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::Result;
use async_trait::async_trait;

use super::dataplane::{Dataplane, MapFill, SyncReport};
use super::metrics::ProxyMetrics;
use super::model::{Protocol, ProxyState, ServicePort, ServicePortName};

/// The backends of one service port that new connections may go to.
fn programmed(sp: &ServicePort) -> BTreeSet<SocketAddrV4> {
    sp.usable()
        .iter()
        .map(|e| SocketAddrV4::new(e.ip, e.port))
        .collect()
}

/// A backend that no longer receives new connections of `service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoneBackend {
    pub service: ServicePortName,
    pub protocol: Protocol,
    pub backend: SocketAddrV4,
}

/// The service ports of the last successful sync, compared with each new one.
#[derive(Debug, Default)]
pub struct SyncDiff {
    last: BTreeMap<ServicePortName, BTreeSet<SocketAddrV4>>,
}

impl SyncDiff {
    pub fn new() -> SyncDiff {
        SyncDiff::default()
    }

    /// The backends that left with a successful sync of `state` (`changed`: the service
    /// ports that may differ from the last sync; `None`: any). The first sync has nothing
    /// to compare with, so it finds none (an agent restart cuts no flows).
    pub fn synced(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> Vec<GoneBackend> {
        let names: BTreeSet<ServicePortName> = match changed {
            Some(c) => c.clone(),
            None => self.last.keys().chain(state.keys()).cloned().collect(),
        };
        let mut out = Vec::new();
        for name in names {
            let now = state.get(&name).map(programmed);
            let before = match &now {
                Some(p) => self.last.insert(name.clone(), p.clone()),
                None => self.last.remove(&name),
            };
            let kept = now.unwrap_or_default();
            for backend in before.unwrap_or_default().difference(&kept) {
                out.push(GoneBackend {
                    service: name.clone(),
                    protocol: name.protocol,
                    backend: *backend,
                });
            }
        }
        out
    }
}

/// Ends the flows of backends that left (blocking; runs on the worker thread).
pub trait FlowCleaner: Send {
    fn clean(&mut self, gone: &[GoneBackend], metrics: &ProxyMetrics);
}

/// A dataplane whose successful syncs end the flows of the backends they removed.
pub struct StaleFlowsDataplane {
    inner: Box<dyn Dataplane>,
    diff: SyncDiff,
    worker: mpsc::Sender<Vec<GoneBackend>>,
}

impl StaleFlowsDataplane {
    /// Wrap `inner`; `cleaner` runs on a thread of its own, in sync order.
    pub fn new(
        inner: Box<dyn Dataplane>,
        mut cleaner: Box<dyn FlowCleaner>,
        metrics: Arc<ProxyMetrics>,
    ) -> Result<StaleFlowsDataplane> {
        let (worker, jobs) = mpsc::channel::<Vec<GoneBackend>>();
        std::thread::Builder::new()
            .name("stale-flows".into())
            .spawn(move || {
                for job in jobs {
                    cleaner.clean(&job, &metrics);
                }
            })?;
        Ok(StaleFlowsDataplane {
            inner,
            diff: SyncDiff::new(),
            worker,
        })
    }
}

#[async_trait]
impl Dataplane for StaleFlowsDataplane {
    fn mode(&self) -> &'static str {
        self.inner.mode()
    }

    async fn sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<SyncReport> {
        let report = self.inner.sync(state, changed).await?;
        // An incomplete sync may not have removed anything; the full sync that follows a
        // failure compares everything again.
        if report.incomplete.is_none() {
            let gone = self.diff.synced(state, changed);
            if !gone.is_empty() && self.worker.send(gone).is_err() {
                tracing::error!("the stale-flow cleanup thread is gone: sockets are not destroyed");
            }
        }
        Ok(report)
    }

    fn map_fill(&mut self) -> Vec<MapFill> {
        self.inner.map_fill()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_support::{ep, state, svc};

    fn udp(mut sp: ServicePort) -> ServicePort {
        sp.name.protocol = Protocol::Udp;
        sp
    }

    fn backend(ip: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(std::net::Ipv4Addr::from(ip), port)
    }

    fn gone(sp: &ServicePort, ip: [u8; 4], port: u16) -> GoneBackend {
        GoneBackend {
            service: sp.name.clone(),
            protocol: sp.name.protocol,
            backend: backend(ip, port),
        }
    }

    #[test]
    fn the_first_sync_finds_nothing_gone() {
        let mut d = SyncDiff::new();
        let s = state(vec![udp(svc(
            "dns",
            [10, 96, 0, 10],
            53,
            vec![ep([10, 244, 1, 2], 53, true)],
        ))]);
        assert!(d.synced(&s, None).is_empty());
        assert!(d.synced(&s, None).is_empty());
    }

    #[test]
    fn a_removed_backend_is_gone_once() {
        let mut d = SyncDiff::new();
        let a = ep([10, 244, 1, 2], 5353, true);
        let b = ep([10, 244, 2, 2], 5353, false);
        let sp = udp(svc("dns", [10, 96, 0, 10], 53, vec![a.clone(), b]));
        d.synced(&state(vec![sp.clone()]), None);
        let mut without_b = sp.clone();
        without_b.endpoints = vec![a];
        let changed = BTreeSet::from([sp.name.clone()]);
        let got = d.synced(&state(vec![without_b.clone()]), Some(&changed));
        assert_eq!(got, vec![gone(&sp, [10, 244, 2, 2], 5353)]);
        // Nothing changed since: nothing more is gone.
        assert!(d.synced(&state(vec![without_b]), None).is_empty());
    }

    #[test]
    fn a_backend_that_stops_being_ready_leaves_and_a_deleted_service_takes_its_backends() {
        let mut d = SyncDiff::new();
        let a = ep([10, 244, 1, 2], 80, true);
        let b = ep([10, 244, 1, 3], 80, true);
        let sp = svc("web", [10, 96, 0, 1], 80, vec![a.clone(), b.clone()]);
        d.synced(&state(vec![sp.clone()]), None);
        // b terminating while a is ready: new connections go to a only.
        let mut terminating = b.clone();
        terminating.ready = false;
        terminating.terminating = true;
        let mut rolled = sp.clone();
        rolled.endpoints = vec![a, terminating];
        assert_eq!(
            d.synced(&state(vec![rolled]), None),
            vec![gone(&sp, [10, 244, 1, 3], 80)]
        );
        // The service deleted: its last backend leaves too.
        assert_eq!(
            d.synced(&ProxyState::new(), None),
            vec![gone(&sp, [10, 244, 1, 2], 80)]
        );
    }

    #[test]
    fn a_new_port_of_the_same_backend_leaves_the_old_port() {
        let mut d = SyncDiff::new();
        let sp = svc(
            "web",
            [10, 96, 0, 1],
            80,
            vec![ep([10, 244, 1, 2], 8080, true)],
        );
        d.synced(&state(vec![sp.clone()]), None);
        let mut moved = sp.clone();
        moved.endpoints = vec![ep([10, 244, 1, 2], 9090, true)];
        assert_eq!(
            d.synced(&state(vec![moved]), None),
            vec![gone(&sp, [10, 244, 1, 2], 8080)]
        );
    }

    #[test]
    fn only_the_changed_ports_are_compared() {
        let mut d = SyncDiff::new();
        let a = svc("a", [10, 96, 0, 1], 80, vec![ep([10, 244, 1, 2], 80, true)]);
        let b = svc("b", [10, 96, 0, 2], 80, vec![ep([10, 244, 1, 3], 80, true)]);
        d.synced(&state(vec![a.clone(), b.clone()]), None);
        let mut a2 = a.clone();
        a2.endpoints.clear();
        let mut b2 = b.clone();
        b2.endpoints.clear();
        // Only a was said to change: b is compared when it is.
        let got = d.synced(
            &state(vec![a2.clone(), b2.clone()]),
            Some(&BTreeSet::from([a.name.clone()])),
        );
        assert_eq!(got, vec![gone(&a, [10, 244, 1, 2], 80)]);
        let got = d.synced(&state(vec![a2, b2]), None);
        assert_eq!(got, vec![gone(&b, [10, 244, 1, 3], 80)]);
    }
}
