//! The drain gate: a pod worker about to tear down a pod's network first waits until this
//! node's service dataplane no longer sends new connections to the pod's IP.
//!
//! Why: a same-node client whose dataplane still picks the pod as a backend would send its
//! connection into a network namespace that no longer exists, where it hangs until ARP gives
//! up, instead of being refused by the (still wired, but empty) pod. Waiting for the proxy to
//! have synced the endpoint away closes that window.
//!
//! Cheap on the hot path: the proxy runner tells the gate about every successful sync
//! ([`BackendDrain::synced`]), which costs one lock and an emptiness check while nobody waits.
//! Only while waiters exist (pod deletions are rare) the synced state is scanned for their
//! IPs, and the waiters whose IP no service port can choose any more are woken. A new waiter
//! also wakes the runner ([`BackendDrain::registered`]), which checks it against the state it
//! last synced, so an IP that was already removed (or never programmed) is released at once.
//! A waiter never waits longer than its bound: the proxy may not have synced yet, or the
//! endpoint may stay usable (kube-proxy's terminating fallback for a last backend).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use super::model::ProxyState;

/// One pod worker waiting for an IP to leave the dataplane.
struct Waiter {
    id: u64,
    ip: Ipv4Addr,
    wake: oneshot::Sender<()>,
}

/// The gate, shared by the proxy runner and the pod workers.
#[derive(Default)]
pub struct BackendDrain {
    waiters: Mutex<Vec<Waiter>>,
    next_id: AtomicU64,
    /// Wakes the runner when a waiter registered.
    registered: Notify,
    /// How often the synced state was scanned (for tests: none without waiters).
    scans: AtomicU64,
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    pub waited: Duration,
    /// The bound was reached with the IP still programmed (or its absence unconfirmed).
    pub timed_out: bool,
}

/// Removes a waiter when its wait ends, however it ends (also when the future is dropped).
struct Deregister<'a> {
    drain: &'a BackendDrain,
    id: u64,
}

impl Drop for Deregister<'_> {
    fn drop(&mut self) {
        self.drain.lock().retain(|w| w.id != self.id);
    }
}

impl BackendDrain {
    pub fn new() -> BackendDrain {
        BackendDrain::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        // A panic elsewhere while holding the lock leaves a valid list.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the proxy has synced a state in which no service port sends new
    /// connections to `ip`, or `bound` has passed.
    pub async fn wait_unprogrammed(&self, ip: Ipv4Addr, bound: Duration) -> Drained {
        let started = Instant::now();
        let (wake, woken) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Waiter { id, ip, wake });
        let _deregister = Deregister { drain: self, id };
        self.registered.notify_one();
        let timed_out = tokio::time::timeout(bound, woken).await.is_err();
        Drained {
            waited: started.elapsed(),
            timed_out,
        }
    }

    /// Resolves when a waiter registered since the last call (for the runner: check the new
    /// waiter against the state it last synced).
    pub async fn registered(&self) {
        self.registered.notified().await
    }

    /// How many waiters there are.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// How often a synced state was scanned.
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    /// The dataplane now matches `state`: wake the waiters whose IP is no usable endpoint
    /// ([`super::model::ServicePort::usable`]) of any service port. Returns how many were
    /// woken. Without waiters this does no scan.
    pub fn synced(&self, state: &ProxyState) -> usize {
        // The waiters as of now; one registering during the scan is checked at the runner's
        // next wake-up (its registration notifies it).
        let (upto, wanted): (u64, HashSet<Ipv4Addr>) = {
            let waiters = self.lock();
            if waiters.is_empty() {
                return 0;
            }
            (
                waiters.iter().map(|w| w.id).max().unwrap_or(0),
                waiters.iter().map(|w| w.ip).collect(),
            )
        };
        self.scans.fetch_add(1, Ordering::Relaxed);
        let mut still = HashSet::new();
        // A pod's own hostPort entry lives as long as the pod object: not a service backend.
        for sp in state.values().filter(|sp| sp.extra.host_port.is_none()) {
            for e in sp.usable() {
                if wanted.contains(&e.ip) {
                    still.insert(e.ip);
                }
            }
            if still.len() == wanted.len() {
                break;
            }
        }
        let wake: Vec<Waiter> = {
            let mut waiters = self.lock();
            let (wake, keep) = std::mem::take(&mut *waiters)
                .into_iter()
                .partition(|w| w.id <= upto && !still.contains(&w.ip));
            *waiters = keep;
            wake
        };
        let woken = wake.len();
        for w in wake {
            // The receiver may be gone (the wait timed out meanwhile): nothing to wake.
            let _ = w.wake.send(());
        }
        woken
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::model::{Endpoint, Protocol, ServicePort, ServicePortName};

    pub(crate) fn ep(ip: [u8; 4], ready: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            port: 8080,
            local: true,
            ready,
            serving: ready,
            terminating: !ready,
        }
    }

    /// A state with one service port per `(name, endpoints)`.
    pub(crate) fn state(ports: &[(&str, Vec<Endpoint>)]) -> ProxyState {
        ports
            .iter()
            .enumerate()
            .map(|(i, (name, endpoints))| {
                let name = ServicePortName {
                    namespace: "default".into(),
                    name: name.to_string(),
                    port: "http".into(),
                    protocol: Protocol::Tcp,
                };
                (
                    name.clone(),
                    ServicePort {
                        name,
                        cluster_ip: Ipv4Addr::new(10, 96, 0, i as u8 + 1),
                        port: 80,
                        node_port: 0,
                        affinity_timeout: None,
                        external_local: false,
                        internal_local: false,
                        extra: Default::default(),
                        endpoints: endpoints.clone(),
                    },
                )
            })
            .collect()
    }

    const POD: [u8; 4] = [10, 244, 1, 5];
    const OTHER: [u8; 4] = [10, 244, 1, 6];

    /// Waits in a task until the waiter is registered.
    async fn spawn_wait(
        drain: &Arc<BackendDrain>,
        ip: [u8; 4],
        bound: Duration,
    ) -> tokio::task::JoinHandle<Drained> {
        let before = drain.waiting();
        let d = drain.clone();
        let task =
            tokio::spawn(async move { d.wait_unprogrammed(Ipv4Addr::from(ip), bound).await });
        while drain.waiting() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_its_ip_leaves_the_synced_state() {
        let drain = Arc::new(BackendDrain::new());
        let task = spawn_wait(&drain, POD, Duration::from_secs(30)).await;
        // Still a ready backend of one service: stays.
        let with = state(&[
            ("a", vec![ep(POD, true), ep(OTHER, true)]),
            ("b", vec![ep(OTHER, true)]),
        ]);
        assert_eq!(drain.synced(&with), 0);
        assert_eq!(drain.waiting(), 1);
        // Not ready but another is: no new connection may go there.
        let terminating = state(&[
            ("a", vec![ep(POD, false), ep(OTHER, true)]),
            ("b", vec![ep(OTHER, true)]),
        ]);
        assert_eq!(drain.synced(&terminating), 1);
        let d = task.await.unwrap();
        assert!(!d.timed_out, "{d:?}");
        assert!(d.waited < Duration::from_secs(30));
        assert_eq!(drain.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_stays_while_its_ip_is_usable_and_the_bound_is_kept() {
        let drain = Arc::new(BackendDrain::new());
        let bound = Duration::from_millis(200);
        let task = spawn_wait(&drain, POD, bound).await;
        // The last backend, terminating but serving: kube-proxy's fallback still uses it.
        let fallback = state(&[(
            "a",
            vec![Endpoint {
                serving: true,
                ..ep(POD, false)
            }],
        )]);
        for _ in 0..3 {
            assert_eq!(drain.synced(&fallback), 0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!task.is_finished());
        let d = task.await.unwrap();
        assert!(d.timed_out, "{d:?}");
        assert!(d.waited >= bound && d.waited < bound * 10, "{d:?}");
        // The timed-out waiter is gone: later syncs do no scan.
        assert_eq!(drain.waiting(), 0);
        let scans = drain.scans();
        drain.synced(&fallback);
        assert_eq!(drain.scans(), scans);
    }

    #[tokio::test]
    async fn an_ip_never_programmed_is_released_by_the_first_check() {
        let drain = Arc::new(BackendDrain::new());
        let task = spawn_wait(&drain, POD, Duration::from_secs(30)).await;
        assert_eq!(drain.synced(&state(&[("b", vec![ep(OTHER, true)])])), 1);
        assert!(!task.await.unwrap().timed_out);
    }

    #[tokio::test]
    async fn no_scan_without_waiters() {
        let drain = BackendDrain::new();
        let st = state(&[("a", vec![ep(POD, true)])]);
        for _ in 0..10 {
            assert_eq!(drain.synced(&st), 0);
        }
        assert_eq!(drain.scans(), 0);
    }

    #[tokio::test]
    async fn waiters_are_woken_independently_and_registration_notifies_the_runner() {
        let drain = Arc::new(BackendDrain::new());
        let pod = spawn_wait(&drain, POD, Duration::from_secs(30)).await;
        // The registration left a wake-up for the runner.
        tokio::time::timeout(Duration::from_secs(1), drain.registered())
            .await
            .expect("the runner is told about a new waiter");
        let other = spawn_wait(&drain, OTHER, Duration::from_secs(30)).await;
        assert_eq!(drain.synced(&state(&[("a", vec![ep(OTHER, true)])])), 1);
        assert!(!pod.await.unwrap().timed_out);
        assert!(!other.is_finished());
        assert_eq!(drain.synced(&state(&[])), 1);
        assert!(!other.await.unwrap().timed_out);
    }

    #[tokio::test]
    async fn a_dropped_wait_deregisters() {
        let drain = Arc::new(BackendDrain::new());
        let task = spawn_wait(&drain, POD, Duration::from_secs(30)).await;
        task.abort();
        let _ = task.await;
        assert_eq!(drain.waiting(), 0);
        assert_eq!(drain.synced(&state(&[])), 0);
        assert_eq!(drain.scans(), 0);
    }
}
