//! One node per Service: a Lease per announced Service, taken and renewed the way client-go's
//! leader election does it. A candidate trusts only its own clock: it takes a Lease over once
//! the holder's record (holder, renewTime) has not changed for `leaseDurationSeconds` since
//! it first saw it, so clock skew between nodes cannot make two of them announce at once.
//! Every write carries the resourceVersion it read, so of two candidates only one wins.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::ObjectMeta;
use skiff_common::loadbalancer;

/// The Lease API, so the election runs against a fake in tests.
#[async_trait::async_trait]
pub trait LeaseApi: Send + Sync {
    async fn get(&self, name: &str) -> Result<Option<Lease>>;
    /// Create; `Ok(false)` when it already exists (someone else was quicker).
    async fn create(&self, lease: &Lease) -> Result<bool>;
    /// Replace guarded by `metadata.resourceVersion`; `Ok(false)` on a conflict.
    async fn replace(&self, lease: &Lease) -> Result<bool>;
}

/// Timing of the election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease stays held without renewal (its `leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often the holder renews and candidates look again.
    pub retry_period: Duration,
}

impl Timing {
    /// A holder that could not renew for this long stops announcing, before anyone else may
    /// take over (client-go's renew deadline, two thirds of the lease).
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// A Service this node competes to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What this node saw of a Lease held by someone else, and when it first saw it so.
struct Observed {
    record: (Option<String>, Option<String>),
    since: Instant,
}

/// The Leases one node holds and watches.
pub struct Election {
    identity: String,
    timing: Timing,
    /// Lease name → when this node last renewed it.
    held: HashMap<String, Instant>,
    observed: HashMap<String, Observed>,
}

/// What changed in one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Leases taken this round (announce, gratuitous ARP).
    pub acquired: Vec<String>,
    /// Leases given up or lost this round (stop announcing).
    pub lost: Vec<String>,
}

impl Election {
    pub fn new(identity: &str, timing: Timing) -> Election {
        Election {
            identity: identity.to_string(),
            timing,
            held: HashMap::new(),
            observed: HashMap::new(),
        }
    }

    pub fn holds(&self, lease: &str) -> bool {
        self.held.contains_key(lease)
    }

    /// One round at `now` over the Leases this node wants (name → Service): take the free and
    /// expired ones, renew the held ones that are due, let go of the ones no longer wanted.
    pub async fn round(
        &mut self,
        api: &dyn LeaseApi,
        wanted: &BTreeMap<String, Candidate>,
        now: Instant,
    ) -> Round {
        let mut round = Round::default();
        for (name, candidate) in wanted {
            let was_held = self.held.contains_key(name);
            let holds = match self.try_hold(api, name, candidate, now).await {
                Ok(holds) => holds,
                Err(e) => {
                    tracing::debug!(lease = %name, "L2 announcement lease: {e:#}");
                    self.still_within_deadline(name, now)
                }
            };
            match (was_held, holds) {
                (false, true) => round.acquired.push(name.clone()),
                (true, false) => {
                    self.held.remove(name);
                    round.lost.push(name.clone());
                }
                _ => {}
            }
        }
        let unwanted: Vec<String> = self
            .held
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in unwanted {
            self.held.remove(&name);
            self.release(api, &name).await;
            round.lost.push(name);
        }
        self.observed.retain(|n, _| wanted.contains_key(n));
        round
    }

    /// Whether a held Lease whose renewal failed may still be announced.
    fn still_within_deadline(&self, name: &str, now: Instant) -> bool {
        self.held
            .get(name)
            .is_some_and(|renewed| now.duration_since(*renewed) < self.timing.renew_deadline())
    }

    /// Whether this node holds `name` after trying to create, renew or take it over.
    async fn try_hold(
        &mut self,
        api: &dyn LeaseApi,
        name: &str,
        candidate: &Candidate,
        now: Instant,
    ) -> Result<bool> {
        let Some(current) = api.get(name).await? else {
            let lease = self.new_lease(name, candidate);
            let created = api.create(&lease).await?;
            if created {
                self.held.insert(name.to_string(), now);
            }
            return Ok(created);
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(self.identity.as_str()) {
            let due = self
                .held
                .get(name)
                .is_none_or(|renewed| now.duration_since(*renewed) >= self.timing.retry_period);
            if !due {
                return Ok(true);
            }
            return self.write(api, name, current, false, now).await;
        }
        if self.held.contains_key(name) {
            // Someone else holds it now: this node lost it.
            return Ok(false);
        }
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let observed = self.observed.entry(name.to_string()).or_insert(Observed {
            record: record.clone(),
            since: now,
        });
        if observed.record != record {
            *observed = Observed { record, since: now };
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timing.lease_duration, Duration::from_secs);
        let expired = holder.is_none() || now.duration_since(observed.since) >= duration;
        if !expired {
            return Ok(false);
        }
        self.write(api, name, current, true, now).await
    }

    /// Write `current` back as held by this node (a renewal, or a takeover when `take`).
    async fn write(
        &mut self,
        api: &dyn LeaseApi,
        name: &str,
        mut current: Lease,
        take: bool,
        now: Instant,
    ) -> Result<bool> {
        let stamp = MicroTime(jiff::Timestamp::now());
        let spec = current.spec.get_or_insert_with(LeaseSpec::default);
        if take {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(stamp.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(self.duration_seconds());
        spec.renew_time = Some(stamp);
        let written = api.replace(&current).await?;
        if written {
            self.held.insert(name.to_string(), now);
            self.observed.remove(name);
        }
        Ok(written)
    }

    /// Let a Lease go (no holder), so another node takes it without waiting it out.
    pub async fn release(&mut self, api: &dyn LeaseApi, name: &str) {
        self.held.remove(name);
        let result = async {
            let Some(mut lease) = api.get(name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            api.replace(&lease).await.map(|_| ())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(lease = %name, "releasing the L2 announcement lease: {e:#}");
        }
    }

    /// Every held Lease, to release them all on shutdown.
    pub fn held(&self) -> Vec<String> {
        self.held.keys().cloned().collect()
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// A new Lease held by this node, labelled with its Service (the control plane deletes
    /// it when the Service is gone).
    fn new_lease(&self, name: &str, candidate: &Candidate) -> Lease {
        let stamp = MicroTime(jiff::Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(loadbalancer::LEASE_NAMESPACE.to_string()),
                labels: Some(BTreeMap::from([
                    (
                        loadbalancer::SERVICE_NAMESPACE_LABEL.to_string(),
                        candidate.namespace.clone(),
                    ),
                    (
                        loadbalancer::SERVICE_NAME_LABEL.to_string(),
                        candidate.name.clone(),
                    ),
                ])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        }
    }
}

/// An in-memory Lease API with resourceVersion checks, shared by several [`Election`]s in
/// tests as the apiserver is shared by nodes.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeLeases {
        pub leases: Mutex<HashMap<String, Lease>>,
        version: Mutex<u64>,
        /// While set, every call fails (the apiserver is unreachable).
        pub down: Mutex<bool>,
    }

    impl FakeLeases {
        fn next_version(&self) -> String {
            let mut v = self.version.lock().unwrap();
            *v += 1;
            v.to_string()
        }

        fn check_up(&self) -> Result<()> {
            if *self.down.lock().unwrap() {
                anyhow::bail!("connection refused");
            }
            Ok(())
        }

        pub fn holder(&self, name: &str) -> Option<String> {
            self.leases
                .lock()
                .unwrap()
                .get(name)
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        }
    }

    #[async_trait::async_trait]
    impl LeaseApi for FakeLeases {
        async fn get(&self, name: &str) -> Result<Option<Lease>> {
            self.check_up()?;
            Ok(self.leases.lock().unwrap().get(name).cloned())
        }

        async fn create(&self, lease: &Lease) -> Result<bool> {
            self.check_up()?;
            let name = lease.metadata.name.clone().unwrap_or_default();
            let version = self.next_version();
            let mut leases = self.leases.lock().unwrap();
            if leases.contains_key(&name) {
                return Ok(false);
            }
            let mut stored = lease.clone();
            stored.metadata.resource_version = Some(version);
            leases.insert(name, stored);
            Ok(true)
        }

        async fn replace(&self, lease: &Lease) -> Result<bool> {
            self.check_up()?;
            let name = lease.metadata.name.clone().unwrap_or_default();
            let version = self.next_version();
            let mut leases = self.leases.lock().unwrap();
            let Some(stored) = leases.get_mut(&name) else {
                return Ok(false);
            };
            if stored.metadata.resource_version != lease.metadata.resource_version {
                return Ok(false);
            }
            *stored = lease.clone();
            stored.metadata.resource_version = Some(version);
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeLeases;
    use super::*;

    const TIMING: Timing = Timing {
        lease_duration: Duration::from_secs(6),
        retry_period: Duration::from_secs(1),
    };

    fn wanted(names: &[&str]) -> BTreeMap<String, Candidate> {
        names
            .iter()
            .map(|n| {
                let candidate = Candidate {
                    namespace: "default".into(),
                    name: n.to_string(),
                    uid: format!("uid-{n}"),
                };
                (
                    skiff_common::loadbalancer::lease_name("default", n),
                    candidate,
                )
            })
            .collect()
    }

    const WEB: &str = "skiff-l2announce-default-web";

    #[tokio::test]
    async fn one_node_holds_and_the_other_takes_over_when_it_stops() {
        let api = FakeLeases::default();
        let (mut a, mut b) = (Election::new("a", TIMING), Election::new("b", TIMING));
        let want = wanted(&["web"]);
        let t0 = Instant::now();
        let first = a.round(&api, &want, t0).await;
        assert_eq!(first.acquired, [WEB]);
        let lease = api.leases.lock().unwrap()[WEB].clone();
        let labels = lease.metadata.labels.unwrap();
        assert_eq!(labels[loadbalancer::SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[loadbalancer::SERVICE_NAMESPACE_LABEL], "default");
        assert_eq!(b.round(&api, &want, t0).await, Round::default());
        // While a renews, b never takes over.
        for s in 1..=20 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(a.round(&api, &want, now).await, Round::default());
            assert_eq!(b.round(&api, &want, now).await, Round::default(), "{s}");
        }
        assert_eq!(api.holder(WEB).as_deref(), Some("a"));
        // a dies at t0+20: b takes over once the record stood still for the lease duration.
        let died = t0 + Duration::from_secs(20);
        let mut took = None;
        for s in 1..=10 {
            let now = died + Duration::from_secs(s);
            if b.round(&api, &want, now).await.acquired == [WEB] {
                took = Some(s);
                break;
            }
        }
        assert_eq!(
            took,
            Some(6),
            "takeover once the record stood still for the lease duration"
        );
        assert_eq!(api.holder(WEB).as_deref(), Some("b"));
        let lease = api.leases.lock().unwrap()[WEB].clone();
        assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
        // a comes back and sees it lost the Lease.
        let back = died + Duration::from_secs(11);
        assert_eq!(a.round(&api, &want, back).await.lost, [WEB]);
        assert!(!a.holds(WEB) && b.holds(WEB));
    }

    #[tokio::test]
    async fn a_holder_cut_off_from_the_api_stops_before_anyone_may_take_over() {
        let api = FakeLeases::default();
        let mut a = Election::new("a", TIMING);
        let want = wanted(&["web"]);
        let t0 = Instant::now();
        a.round(&api, &want, t0).await;
        *api.down.lock().unwrap() = true;
        let mut lost_at = None;
        for s in 1..=6 {
            if a.round(&api, &want, t0 + Duration::from_secs(s)).await.lost == [WEB] {
                lost_at = Some(s);
                break;
            }
        }
        // Two thirds of the 6 s lease: gone well before another node would take over.
        assert_eq!(lost_at, Some(4));
    }

    #[tokio::test]
    async fn unwanted_leases_are_released_for_the_next_node_at_once() {
        let api = FakeLeases::default();
        let (mut a, mut b) = (Election::new("a", TIMING), Election::new("b", TIMING));
        let t0 = Instant::now();
        a.round(&api, &wanted(&["web", "db"]), t0).await;
        b.round(&api, &wanted(&["web", "db"]), t0).await;
        let round = a
            .round(&api, &wanted(&["db"]), t0 + Duration::from_secs(1))
            .await;
        assert_eq!(round.lost, [WEB]);
        assert_eq!(api.holder(WEB), None);
        // A Lease without holder is free: b takes it without waiting out the duration.
        let round = b
            .round(&api, &wanted(&["web", "db"]), t0 + Duration::from_secs(1))
            .await;
        assert_eq!(round.acquired, [WEB]);
    }

    #[tokio::test]
    async fn of_two_candidates_for_an_expired_lease_only_one_wins() {
        let api = FakeLeases::default();
        let want = wanted(&["web"]);
        let t0 = Instant::now();
        Election::new("dead", TIMING).round(&api, &want, t0).await;
        let (mut b, mut c) = (Election::new("b", TIMING), Election::new("c", TIMING));
        b.round(&api, &want, t0).await;
        c.round(&api, &want, t0).await;
        // Both read the expired Lease before either writes.
        let later = t0 + Duration::from_secs(7);
        let stale = api.get(WEB).await.unwrap().unwrap();
        let won_b = b
            .write(&api, WEB, stale.clone(), true, later)
            .await
            .unwrap();
        let won_c = c.write(&api, WEB, stale, true, later).await.unwrap();
        assert!(won_b && !won_c);
        assert_eq!(api.holder(WEB).as_deref(), Some("b"));
    }
}
