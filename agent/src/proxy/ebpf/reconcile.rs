//! Make the LB maps equal to a [`ProxyState`] with minimal writes, through the [`LbStore`]
//! trait (so all of this is unit-tested without root).
//!
//! - Ids are stable: a frontend keeps its revNAT id (which also names its slot set) for as long
//!   as it exists; a backend (ip, port, protocol) keeps its id while any slot references it.
//!   Ids come from [`IdAllocator`]s (a moving cursor: a freed id is not handed out again at
//!   once), restored from the maps by [`Reconciler::load`].
//! - Slots are stable too: a surviving backend stays in its slot, a new one fills a hole or is
//!   appended, and the tail is compacted into holes — one backend more or less costs one or two
//!   slot writes, not a rewrite of the set.
//! - Write order keeps the datapath consistent at every step: backends and slots before the
//!   frontend that counts them; the frontend's count shrinks before its tail slots go; backends
//!   go last, once no slot references them.
//! - A sync runs as named steps (the `steps` submodule): ensure backends, upsert frontends,
//!   remove frontends, prune orphans, prune backends.
//! - A failed write (a full map) skips that frontend and is reported by map name in
//!   [`SyncError`]; everything else is still programmed. The in-memory mirror only records
//!   writes that succeeded, so the next sync retries what is missing.
mod frontend;
mod slots;
mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

// FxHash (rustc's hasher): the mirror's keys are small integers and structs of integers, for
// which SipHash's DoS resistance buys nothing and costs a third of a 10k-service resync.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::Serialize;
use skiff_ebpf_common::{
    Backend, FE_AFFINITY, FE_EXTERNAL_IP, FE_EXTERNAL_LOCAL, FE_HOSTPORT, FE_LOADBALANCER,
    FE_NODEPORT, FE_SRC_RANGE, Frontend, FrontendKey, RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    ip_raw, port_raw,
};

pub use slots::assign_slots;

use super::id_allocator::IdAllocator;
use super::maps::{ALL_MAPS, LbStore, MapFill, MapOpError, size_flag};
use crate::network::Ipv4Net;
use crate::proxy::dataplane::{FullMap, SyncReport, SyncStats};
use crate::proxy::model::{Endpoint, ProxyState, ServicePort, ServicePortName};

/// A backend's identity (raw: network byte order, as stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
}

impl BackendAddr {
    /// The identity of backend entry `b`.
    pub fn of(b: &Backend) -> Self {
        BackendAddr {
            addr: b.addr,
            port: b.port,
            proto: b.proto,
        }
    }
}

/// What one frontend should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// Service name for the names map (`namespace/name:port`).
    pub name: String,
    /// `FE_*` bits.
    pub flags: u8,
    pub affinity_timeout: u32,
    /// Backends in slot-preference order, each with its `BE_LOCAL` bit.
    pub backends: Vec<(BackendAddr, bool)>,
    /// With `FE_SRC_RANGE`: the client networks allowed, (raw network address, prefix length).
    pub src_ranges: Vec<(u32, u8)>,
}

/// The frontends a [`ProxyState`] asks for: each service port's ClusterIP, plus
/// `node_ip:nodePort` for NodePort services when the node IP is known (with only local
/// backends under `externalTrafficPolicy: Local`).
pub fn desired(
    state: &ProxyState,
    node_ip: Option<Ipv4Addr>,
) -> BTreeMap<FrontendKey, DesiredFrontend> {
    desired_owned(state.values(), node_ip).frontends
}

/// [`desired`] of some service ports, with the port each frontend comes from.
#[derive(Debug, Default)]
pub struct Desired {
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    pub owners: HashMap<FrontendKey, ServicePortName>,
    /// Two service ports asked for the same frontend (the first in `ports` order got it).
    pub contested: bool,
}

/// [`desired`] of `ports` (in [`ProxyState`] order, so a contested frontend goes to the
/// same port as in a full build).
pub fn desired_owned<'a>(
    ports: impl IntoIterator<Item = &'a ServicePort>,
    node_ip: Option<Ipv4Addr>,
) -> Desired {
    let mut d = Desired::default();
    for sp in ports {
        for (key, fe) in port_frontends(sp, node_ip) {
            d.claim(key, &sp.name, move || fe);
        }
    }
    d
}

/// The frontends of one service port: its cluster IP; its node port at the node IP and at
/// 127.0.0.1; its external IPs and LB addresses at the service port; or, for a pod's
/// hostPort, the host port at its host IP (or the node IP and 127.0.0.1). Frontends traffic
/// from outside reaches get a second, internal scope under `externalTrafficPolicy: Local`
/// (local backends from outside, every backend from the node's own sockets).
fn port_frontends(
    sp: &ServicePort,
    node_ip: Option<Ipv4Addr>,
) -> Vec<(FrontendKey, DesiredFrontend)> {
    let proto = sp.name.protocol.number();
    let (aff, timeout) = match sp.affinity_timeout {
        Some(t) => (FE_AFFINITY, t),
        None => (0, 0),
    };
    let make = |flags: u8, eps: Vec<&Endpoint>, ranges: &[Ipv4Net]| DesiredFrontend {
        name: sp.name.to_string(),
        flags: if ranges.is_empty() {
            flags
        } else {
            flags | FE_SRC_RANGE
        },
        affinity_timeout: timeout,
        backends: backends_of(eps, proto),
        src_ranges: ranges
            .iter()
            .map(|r| (ip_raw(r.addr.octets()), r.prefix))
            .collect(),
    };
    let mut out = Vec::new();
    if let Some(hp) = sp.extra.host_port {
        let flags = FE_HOSTPORT | FE_EXTERNAL_LOCAL;
        let addrs = match hp.ip {
            Some(ip) => vec![ip],
            None => node_ip.into_iter().chain([Ipv4Addr::LOCALHOST]).collect(),
        };
        for ip in addrs {
            out.push((
                frontend_key(ip, hp.port, proto),
                make(flags, sp.usable(), &[]),
            ));
        }
        return out;
    }
    if !sp.cluster_ip.is_unspecified() && sp.port != 0 {
        out.push((
            frontend_key(sp.cluster_ip, sp.port, proto),
            make(aff, sp.usable_internal(), &[]),
        ));
    }
    let mut external = |ip: Ipv4Addr, port: u16, kind: u8, ranges: &[Ipv4Net]| {
        let key = frontend_key(ip, port, proto);
        if sp.external_local {
            let flags = aff | kind | FE_EXTERNAL_LOCAL;
            out.push((key, make(flags, sp.usable_local(), ranges)));
            let internal = FrontendKey {
                scope: SCOPE_INTERNAL,
                ..key
            };
            out.push((internal, make(aff | kind, sp.usable(), &[])));
        } else {
            out.push((key, make(aff | kind, sp.usable(), ranges)));
        }
    };
    if sp.node_port != 0
        && let Some(node_ip) = node_ip
    {
        external(node_ip, sp.node_port, FE_NODEPORT, &[]);
    }
    if sp.port != 0 {
        for (ip, lb) in sp.external_addrs() {
            let (kind, ranges) = match lb {
                true => (FE_LOADBALANCER, sp.extra.source_ranges.as_slice()),
                false => (FE_EXTERNAL_IP, &[][..]),
            };
            external(ip, sp.port, kind, ranges);
        }
    }
    // Only the node's own sockets reach 127.0.0.1: every backend, as kube-proxy routes
    // node-local traffic to a `Local` node port through the service chain.
    if sp.node_port != 0 && node_ip.is_some() {
        let key = frontend_key(Ipv4Addr::LOCALHOST, sp.node_port, proto);
        out.push((key, make(aff | FE_NODEPORT, sp.usable(), &[])));
    }
    out
}

impl Desired {
    /// Frontend `key` for `port`, unless an earlier port has it.
    fn claim(
        &mut self,
        key: FrontendKey,
        port: &ServicePortName,
        frontend: impl FnOnce() -> DesiredFrontend,
    ) {
        match self.owners.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => self.contested = true,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(port.clone());
                self.frontends.insert(key, frontend());
            }
        }
    }
}

fn frontend_key(ip: Ipv4Addr, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: ip_raw(ip.octets()),
        port: port_raw(port),
        proto,
        scope: SCOPE_EXTERNAL,
    }
}

/// The backends of endpoints `eps`, with their local bit.
fn backends_of(eps: Vec<&Endpoint>, proto: u8) -> Vec<(BackendAddr, bool)> {
    let mut v: Vec<(BackendAddr, bool)> = eps
        .into_iter()
        .map(|e| {
            let addr = BackendAddr {
                addr: ip_raw(e.ip.octets()),
                port: port_raw(e.port),
                proto,
            };
            (addr, e.local)
        })
        .collect();
    // The model's endpoints are sorted and deduplicated by (ip, port): duplicates, if any,
    // are adjacent.
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// What a sync did to the LB maps: entries programmed, added, removed and written (the map
/// detail behind the dataplane's [`SyncStats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MapSyncStats {
    /// Frontends programmed after the sync.
    pub frontends: usize,
    /// Backends programmed after the sync.
    pub backends: usize,
    pub frontends_added: usize,
    pub frontends_updated: usize,
    pub frontends_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Map updates and deletes issued.
    pub writes: usize,
    pub deletes: usize,
    #[serde(skip)]
    pub duration: Duration,
}

/// A frontend (or backend) that could not be programmed.
#[derive(Debug)]
pub struct SyncFailure {
    /// `namespace/name:port` (or `backend a.b.c.d:port`).
    pub service: String,
    pub error: MapOpError,
}

/// Some entries could not be written; the rest of the state was programmed.
#[derive(Debug)]
pub struct SyncError {
    pub stats: MapSyncStats,
    pub failures: Vec<SyncFailure>,
}

impl SyncError {
    /// The maps that were full, deduplicated.
    pub fn full_maps(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .failures
            .iter()
            .filter(|f| matches!(f.error, MapOpError::Full { .. }))
            .map(|f| f.error.map())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The maps that were full, each with its capacity, how many entries did not fit, the
    /// first of them and the flag that sizes it (what the runner reports), in name order.
    pub fn full_map_reports(&self) -> Vec<FullMap> {
        let mut by_map: BTreeMap<&'static str, FullMap> = BTreeMap::new();
        for f in &self.failures {
            if let MapOpError::Full { map, max_entries } = f.error {
                by_map
                    .entry(map)
                    .and_modify(|m| m.not_programmed += 1)
                    .or_insert_with(|| FullMap {
                        map,
                        max_entries,
                        not_programmed: 1,
                        first: f.service.clone(),
                        size_flag: size_flag(map).unwrap_or("its size flag"),
                    });
            }
        }
        by_map.into_values().collect()
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} entries not programmed", self.failures.len())?;
        for (i, x) in self.failures.iter().take(5).enumerate() {
            write!(
                f,
                "{} {}: {}",
                if i == 0 { ":" } else { ";" },
                x.service,
                x.error
            )?;
        }
        if self.failures.len() > 5 {
            write!(f, "; …")?;
        }
        Ok(())
    }
}

impl std::error::Error for SyncError {}

/// The report of a map sync of `state`: a [`SyncError`] (e.g. a full map) is an incomplete
/// sync naming the full maps ([`SyncError::full_map_reports`]), the error itself its reason.
pub fn sync_report(state: &ProxyState, result: Result<MapSyncStats, SyncError>) -> SyncReport {
    let stats = |st: &MapSyncStats| SyncStats {
        services: state.len(),
        backends: st.backends,
        writes: st.writes + st.deletes,
        conntrack_deleted: 0,
    };
    match result {
        Ok(st) => SyncReport::complete(stats(&st)),
        Err(e) => SyncReport {
            stats: stats(&e.stats),
            full_maps: e.full_map_reports(),
            incomplete: Some(e.into()),
        },
    }
}

/// Frontend ↔ service port, for syncing only the frontends of changed ports.
#[derive(Debug, Default)]
struct Owners {
    by_key: HashMap<FrontendKey, ServicePortName>,
    keys_of: HashMap<ServicePortName, Vec<FrontendKey>>,
    /// Some frontend was asked for by two ports: which one gets it depends on all ports.
    contested: bool,
}

impl Owners {
    fn from(d: &Desired) -> Owners {
        let mut o = Owners {
            contested: d.contested,
            ..Default::default()
        };
        o.add(d);
        o
    }
    fn add(&mut self, d: &Desired) {
        for (key, port) in &d.owners {
            self.by_key.insert(*key, port.clone());
            self.keys_of.entry(port.clone()).or_default().push(*key);
        }
    }
}

/// The reconciler's mirror of the maps: what it believes is in the kernel.
#[derive(Debug, Default)]
pub struct Reconciler {
    frontends: HashMap<FrontendKey, Frontend>,
    /// revNAT id → slot → backend id.
    slots: HashMap<u32, BTreeMap<u32, u32>>,
    backends: HashMap<u32, Backend>,
    /// Backend address → the id it is programmed under.
    backend_ids: HashMap<BackendAddr, u32>,
    revnat: HashMap<u32, RevNat>,
    /// revNAT id → backend ids with an affinity-match entry.
    aff_match: HashMap<u32, HashSet<u32>>,
    /// revNAT id → allowed client networks (raw address, prefix length).
    src_range: HashMap<u32, HashSet<(u32, u8)>>,
    names: HashMap<u32, String>,
    /// The ids of `backends`.
    backend_id_alloc: IdAllocator,
    /// The revNAT ids any map holds, and those a sync allocated until it purges them.
    rev_nat_id_alloc: IdAllocator,
    /// Which service port each frontend belongs to, after a [`Reconciler::sync_state`] or
    /// [`Reconciler::sync_changed`] that succeeded (`None` otherwise: the next
    /// `sync_changed` compares everything).
    owners: Option<Owners>,
}

/// Each backend address's id (of two ids for one address, the lower).
fn backend_ids_by_addr(backends: &HashMap<u32, Backend>) -> HashMap<BackendAddr, u32> {
    let mut ids: Vec<(&u32, &Backend)> = backends.iter().collect();
    ids.sort();
    let mut by_addr = HashMap::default();
    for (id, b) in ids {
        by_addr.entry(BackendAddr::of(b)).or_insert(*id);
    }
    by_addr
}

impl Reconciler {
    /// Read the maps into a mirror (after an agent restart: the pinned maps as they are).
    pub fn load(store: &mut dyn LbStore) -> Result<Reconciler, MapOpError> {
        let frontends = store.frontends().entries()?.into_iter().collect();
        let mut slots: HashMap<u32, BTreeMap<u32, u32>> = HashMap::default();
        for (k, id) in store.slots().entries()? {
            slots.entry(k.rev_nat_id).or_default().insert(k.slot, id);
        }
        let backends: HashMap<u32, Backend> = store.backends().entries()?.into_iter().collect();
        let revnat = store.revnat().entries()?.into_iter().collect();
        let mut aff_match: HashMap<u32, HashSet<u32>> = HashMap::default();
        for (k, _) in store.aff_match().entries()? {
            aff_match
                .entry(k.rev_nat_id)
                .or_default()
                .insert(k.backend_id);
        }
        let mut src_range: HashMap<u32, HashSet<(u32, u8)>> = HashMap::default();
        for (k, _) in store.src_range().entries()? {
            src_range
                .entry(k.rev_nat_id)
                .or_default()
                .insert((k.addr, k.prefix_len));
        }
        let names = store
            .svc_names()
            .entries()?
            .into_iter()
            .map(|(id, n)| (id, super::maps::name_from_bytes(&n)))
            .collect();
        let mut r = Reconciler {
            backend_ids: backend_ids_by_addr(&backends),
            backend_id_alloc: IdAllocator::restore(backends.keys().copied()),
            frontends,
            slots,
            backends,
            revnat,
            aff_match,
            src_range,
            names,
            ..Default::default()
        };
        r.rev_nat_id_alloc = IdAllocator::restore(r.rev_nat_ids_in_use());
        Ok(r)
    }

    /// Every revNAT id some map of the mirror holds.
    fn rev_nat_ids_in_use(&self) -> HashSet<u32> {
        let mut s: HashSet<u32> = self.frontends.values().map(|f| f.rev_nat_id).collect();
        s.extend(self.slots.keys());
        s.extend(self.revnat.keys());
        s.extend(self.aff_match.keys());
        s.extend(self.src_range.keys());
        s.extend(self.names.keys());
        s
    }

    /// Number of frontends and backends the mirror holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.frontends.len(), self.backends.len())
    }

    /// Entries and capacity of each map the reconciler writes, from its mirror: no map is
    /// walked (the mirror holds what the maps hold, save for changes behind the agent's back
    /// until the next [`Reconciler::load`]).
    pub fn mirrored_fill(&self, store: &mut dyn LbStore) -> Vec<MapFill> {
        let slots = self.slots.values().map(BTreeMap::len).sum();
        let aff_match = self.aff_match.values().map(HashSet::len).sum();
        let src_range = self.src_range.values().map(HashSet::len).sum();
        let fill = |name: &str, entries: usize, max_entries: u32| MapFill {
            name: name.to_string(),
            entries,
            max_entries,
        };
        vec![
            fill(
                store.frontends().name(),
                self.frontends.len(),
                store.frontends().max_entries(),
            ),
            fill(store.slots().name(), slots, store.slots().max_entries()),
            fill(
                store.backends().name(),
                self.backends.len(),
                store.backends().max_entries(),
            ),
            fill(
                store.revnat().name(),
                self.revnat.len(),
                store.revnat().max_entries(),
            ),
            fill(
                store.aff_match().name(),
                aff_match,
                store.aff_match().max_entries(),
            ),
            fill(
                store.src_range().name(),
                src_range,
                store.src_range().max_entries(),
            ),
            fill(
                store.svc_names().name(),
                self.names.len(),
                store.svc_names().max_entries(),
            ),
        ]
    }

    /// The revNAT id a frontend has (for tests and diagnostics).
    pub fn rev_nat_id(&self, key: &FrontendKey) -> Option<u32> {
        self.frontends.get(key).map(|f| f.rev_nat_id)
    }

    /// The id a backend has.
    pub fn backend_id(&self, b: &BackendAddr) -> Option<u32> {
        self.backend_ids.get(b).copied()
    }

    /// Make the maps equal to `state`'s frontends ([`desired`]).
    pub fn sync_state(
        &mut self,
        store: &mut dyn LbStore,
        state: &ProxyState,
        node_ip: Option<Ipv4Addr>,
    ) -> Result<MapSyncStats, SyncError> {
        let desired = desired_owned(state.values(), node_ip);
        let result = self.sync(store, &desired.frontends);
        self.owners = result.is_ok().then(|| Owners::from(&desired));
        result
    }

    /// [`Reconciler::sync_state`], given that only the service ports in `changed` differ
    /// from the state of the last successful sync: only their frontends are compared and
    /// written. Falls back to comparing everything when that could give another result (no
    /// successful sync yet, a frontend two ports ask for, a backend's local bit to clear).
    pub fn sync_changed(
        &mut self,
        store: &mut dyn LbStore,
        state: &ProxyState,
        changed: &BTreeSet<ServicePortName>,
        node_ip: Option<Ipv4Addr>,
    ) -> Result<MapSyncStats, SyncError> {
        let Some(mut owners) = self.owners.take().filter(|o| !o.contested) else {
            return self.sync_state(store, state, node_ip);
        };
        let desired = desired_owned(changed.iter().filter_map(|p| state.get(p)), node_ip);
        // A frontend an unchanged port holds: which port gets it depends on both.
        let taken = desired.owners.iter().any(|(key, port)| {
            owners
                .by_key
                .get(key)
                .is_some_and(|o| o != port && !changed.contains(o))
        });
        if desired.contested || taken {
            return self.sync_state(store, state, node_ip);
        }
        let mut scope: HashSet<FrontendKey> = desired.frontends.keys().copied().collect();
        for port in changed {
            scope.extend(owners.keys_of.get(port).into_iter().flatten());
        }
        let Some(result) = self.sync_inner(store, &desired.frontends, Some(&scope)) else {
            return self.sync_state(store, state, node_ip);
        };
        if result.is_ok() {
            for port in changed {
                for key in owners.keys_of.remove(port).unwrap_or_default() {
                    owners.by_key.remove(&key);
                }
            }
            owners.add(&desired);
            self.owners = Some(owners);
        }
        result
    }

    /// Make the maps equal to `desired`.
    pub fn sync(
        &mut self,
        store: &mut dyn LbStore,
        desired: &BTreeMap<FrontendKey, DesiredFrontend>,
    ) -> Result<MapSyncStats, SyncError> {
        self.sync_inner(store, desired, None)
            .expect("a sync of everything is always possible")
    }
}

/// How often [`FillReporter`] walks the maps the programs write (affinity, socket revNAT,
/// conntrack): a walk costs a syscall per entry, so it is not done on every sync.
pub const PROGRAM_FILL_PERIOD: Duration = Duration::from_secs(15);

/// Entries and capacity of every pinned map, for the `skiff_bpf_map_entries` and
/// `skiff_bpf_map_max_entries` gauges, cheaply enough to ask after every sync: the maps the
/// reconciler writes are counted from its mirror (no syscall), the maps the programs write by
/// walking their keys at most every [`PROGRAM_FILL_PERIOD`] (the last count is reported in
/// between).
#[derive(Debug, Default)]
pub struct FillReporter {
    program: Vec<MapFill>,
    walked: Option<Instant>,
}

impl FillReporter {
    /// Every map's fill, in [`ALL_MAPS`] order.
    pub fn report(&mut self, rec: &Reconciler, store: &mut dyn LbStore) -> Vec<MapFill> {
        if self
            .walked
            .is_none_or(|t| t.elapsed() >= PROGRAM_FILL_PERIOD)
        {
            match store.program_maps_fill() {
                Ok(f) => self.program = f,
                // Keep the last count (the walk is retried after the next period).
                Err(e) => tracing::warn!("counting the entries of the programs' BPF maps: {e}"),
            }
            self.walked = Some(Instant::now());
        }
        let mut all = rec.mirrored_fill(store);
        all.extend(self.program.iter().cloned());
        all.sort_by_key(|m| ALL_MAPS.iter().position(|n| *n == m.name));
        all
    }
}

#[cfg(test)]
#[allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]
mod tests {
    use super::super::fake::FakeMaps;
    use super::super::maps::name_to_bytes;
    use super::*;
    use crate::proxy::model::{Endpoint, Protocol};
    use crate::proxy::test_support::{ep, nodeport_affinity_pair, remote_eps, state, svc};
    use skiff_ebpf_common::{BE_LOCAL, FE_NODEPORT, PROTO_TCP, PROTO_UDP, SlotKey};

    fn fk(vip: [u8; 4], port: u16, proto: u8) -> FrontendKey {
        FrontendKey {
            addr: ip_raw(vip),
            port: port_raw(port),
            proto,
            scope: SCOPE_EXTERNAL,
        }
    }

    fn be(ip: [u8; 4], port: u16) -> (u32, u16) {
        (ip_raw(ip), port_raw(port))
    }

    /// `a` on 10.96.0.1:80 with backends 10.244.0.1:80 and 10.244.0.2:80.
    fn svc_a_two_backends() -> ServicePort {
        svc(
            "a",
            [10, 96, 0, 1],
            80,
            remote_eps(80, &[[10, 244, 0, 1], [10, 244, 0, 2]]),
        )
    }

    fn run(r: &mut Reconciler, s: &mut FakeMaps, st: &ProxyState) -> MapSyncStats {
        r.sync(s, &desired(st, Some(Ipv4Addr::new(192, 168, 0, 1))))
            .expect("sync")
    }

    /// What the maps hold, to compare two stores.
    fn contents(s: &FakeMaps) -> impl PartialEq + std::fmt::Debug {
        fn sorted<K: Ord + Copy, V: Copy>(m: &HashMap<K, V>) -> Vec<(K, V)> {
            let mut v: Vec<(K, V)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            v.sort_by_key(|e| e.0);
            v
        }
        let fe: Vec<_> = sorted(&s.frontends.map)
            .into_iter()
            .map(|(k, f)| {
                (
                    (k.addr, k.port, k.proto),
                    (f.rev_nat_id, f.count, f.flags, f.affinity_timeout),
                )
            })
            .collect();
        let slots: Vec<_> = sorted(&s.slots.map)
            .into_iter()
            .map(|(k, id)| ((k.rev_nat_id, k.slot), id))
            .collect();
        let be: Vec<_> = sorted(&s.backends.map)
            .into_iter()
            .map(|(id, b)| (id, (b.addr, b.port, b.proto, b.flags)))
            .collect();
        let rn: Vec<_> = sorted(&s.revnat.map)
            .into_iter()
            .map(|(id, r)| (id, (r.addr, r.port)))
            .collect();
        let aff: Vec<_> = sorted(&s.aff_match.map)
            .into_iter()
            .map(|(k, _)| (k.rev_nat_id, k.backend_id))
            .collect();
        let names: Vec<_> = sorted(&s.names.map)
            .into_iter()
            .map(|(id, n)| (id, super::super::maps::name_from_bytes(&n)))
            .collect();
        (fe, slots, be, rn, aff, names)
    }

    /// The ports whose entries differ between two states.
    fn diff(a: &ProxyState, b: &ProxyState) -> BTreeSet<ServicePortName> {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(k) != b.get(k))
            .cloned()
            .collect()
    }

    #[test]
    fn a_sync_of_changed_ports_touches_only_them_and_equals_a_full_sync() {
        let node_ip = Some(Ipv4Addr::new(192, 168, 0, 1));
        let mut st = ProxyState::new();
        for i in 0..20u8 {
            let mut s = svc(
                &format!("s{i:02}"),
                [10, 96, 0, i + 1],
                80,
                vec![
                    ep([10, 244, 1, i + 1], 8080, false),
                    ep([10, 244, 2, i + 1], 8080, i % 2 == 0),
                ],
            );
            if i % 3 == 0 {
                s.node_port = 30000 + u16::from(i);
                s.external_local = i % 2 == 0;
            }
            if i % 4 == 0 {
                s.affinity_timeout = Some(60);
            }
            st.insert(s.name.clone(), s);
        }
        // Scoped on one store, full on the other, with the same history.
        let (mut scoped, mut scoped_store) = (Reconciler::default(), FakeMaps::new(1024));
        let (mut full, mut full_store) = (Reconciler::default(), FakeMaps::new(1024));
        scoped
            .sync_changed(&mut scoped_store, &st, &BTreeSet::new(), node_ip)
            .unwrap();
        full.sync_state(&mut full_store, &st, node_ip).unwrap();
        assert_eq!(contents(&scoped_store), contents(&full_store));

        let name = |i: u8| svc(&format!("s{i:02}"), [0; 4], 0, vec![]).name;
        type Step = Box<dyn Fn(&mut ProxyState)>;
        let steps: Vec<Step> = vec![
            // An endpoint replaced.
            Box::new(move |st| {
                st.get_mut(&name(1)).unwrap().endpoints[0] = ep([10, 244, 9, 1], 8080, false)
            }),
            // A backend shared with another service (its id is reused, not duplicated).
            Box::new(move |st| {
                st.get_mut(&name(2))
                    .unwrap()
                    .endpoints
                    .push(ep([10, 244, 1, 4], 8080, false))
            }),
            // A service deleted, another added.
            Box::new(move |st| {
                st.remove(&name(5));
                let s = svc(
                    "t00",
                    [10, 96, 1, 1],
                    443,
                    remote_eps(8443, &[[10, 244, 5, 5]]),
                );
                st.insert(s.name.clone(), s);
            }),
            // A new ClusterIP and a NodePort added; affinity switched off.
            Box::new(move |st| {
                let s = st.get_mut(&name(7)).unwrap();
                s.cluster_ip = Ipv4Addr::new(10, 96, 2, 7);
                s.node_port = 31007;
                st.get_mut(&name(8)).unwrap().affinity_timeout = None;
            }),
            // No endpoints left; the last reference to a backend gone.
            Box::new(move |st| {
                st.get_mut(&name(2)).unwrap().endpoints.clear();
                st.get_mut(&name(4)).unwrap().endpoints.clear();
            }),
            // A local backend turned remote: falls back to a full sync, same result.
            Box::new(move |st| {
                st.get_mut(&name(6)).unwrap().endpoints[1].local = false;
            }),
            // A ClusterIP another (unchanged) service holds: full sync, same result.
            Box::new(move |st| {
                st.get_mut(&name(9)).unwrap().cluster_ip = Ipv4Addr::new(10, 96, 0, 11);
            }),
            // Back apart (the contested state is synced in full until it is gone).
            Box::new(move |st| {
                st.get_mut(&name(9)).unwrap().cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
            }),
        ];
        for (i, step) in steps.iter().enumerate() {
            let before = st.clone();
            step(&mut st);
            let changed = diff(&before, &st);
            assert!(!changed.is_empty());
            scoped
                .sync_changed(&mut scoped_store, &st, &changed, node_ip)
                .unwrap();
            full.sync_state(&mut full_store, &st, node_ip).unwrap();
            assert_eq!(contents(&scoped_store), contents(&full_store), "step {i}");
            let owners = desired_owned(st.values(), node_ip).owners;
            for sp in st.values() {
                let key = fk(sp.cluster_ip.octets(), sp.port, PROTO_TCP);
                if owners[&key] != sp.name {
                    // Step 6: s09 took s10's ClusterIP (the first port in order wins).
                    continue;
                }
                let want: BTreeSet<(u32, u16)> = sp
                    .usable()
                    .iter()
                    .map(|e| be(e.ip.octets(), e.port))
                    .collect();
                let got: BTreeSet<(u32, u16)> =
                    scoped_store.resolve(&key).unwrap().into_iter().collect();
                assert_eq!(got, want, "step {i}: {}", sp.name);
            }
        }

        // Only the changed ports are looked at: a frontend the mirror lost (so a full sync
        // would write it again) stays as it is when another port changes.
        let lost = fk([10, 96, 0, 13], 80, PROTO_TCP);
        scoped.frontends.remove(&lost);
        let before = st.clone();
        st.get_mut(&name(1)).unwrap().endpoints[0] = ep([10, 244, 9, 2], 8080, false);
        let writes = scoped_store.total_writes();
        let stats = scoped
            .sync_changed(&mut scoped_store, &st, &diff(&before, &st), node_ip)
            .unwrap();
        // The new backend, its slot (the old one's goes), and nothing of s12.
        assert_eq!(scoped_store.total_writes() - writes, 2, "{stats:?}");
        assert!(!scoped.frontends.contains_key(&lost));
        // A full sync repairs it (under a new revNAT id: the mirror forgot the old one's
        // frontend, the old id's entries are swept as orphans).
        scoped.sync_state(&mut scoped_store, &st, node_ip).unwrap();
        full.sync_state(&mut full_store, &st, node_ip).unwrap();
        assert!(scoped.frontends.contains_key(&lost));
        assert_eq!(scoped_store.resolve(&lost), full_store.resolve(&lost));
        assert_eq!(scoped.counts(), full.counts());
        assert_eq!(scoped_store.revnat.map.len(), full_store.revnat.map.len());
    }

    #[test]
    fn slot_assignment_is_stable() {
        assert_eq!(assign_slots(&[], &[1, 2, 3]), vec![1, 2, 3]);
        // Removing the middle one moves the last into its hole.
        assert_eq!(assign_slots(&[1, 2, 3], &[1, 3]), vec![1, 3]);
        // A new one fills the hole of a removed one.
        assert_eq!(assign_slots(&[1, 2, 3], &[1, 3, 4]), vec![1, 4, 3]);
        // Unchanged stays unchanged, whatever the desired order.
        assert_eq!(assign_slots(&[3, 1, 2], &[1, 2, 3]), vec![3, 1, 2]);
        assert_eq!(assign_slots(&[1, 2], &[]), Vec::<u32>::new());
        // Duplicates and holes in the current set are repaired.
        assert_eq!(assign_slots(&[1, 1, 0, 2], &[1, 2]), vec![1, 2]);
    }

    #[test]
    fn programs_a_state_and_resyncs_with_no_writes() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let st = state(vec![
            svc(
                "a",
                [10, 96, 0, 10],
                80,
                vec![
                    ep([10, 244, 1, 2], 8080, true),
                    ep([10, 244, 2, 2], 8080, false),
                ],
            ),
            svc(
                "b",
                [10, 96, 0, 11],
                53,
                vec![ep([10, 244, 1, 2], 8080, true)],
            ),
        ]);
        let stats = run(&mut r, &mut s, &st);
        assert_eq!(stats.frontends, 2);
        assert_eq!(stats.backends, 2, "a shared backend gets one id");
        assert_eq!(stats.frontends_added, 2);
        assert_eq!(
            s.resolve(&fk([10, 96, 0, 10], 80, PROTO_TCP)).unwrap(),
            vec![be([10, 244, 1, 2], 8080), be([10, 244, 2, 2], 8080)]
        );
        let w = s.total_writes();
        let again = run(&mut r, &mut s, &st);
        assert_eq!((again.writes, again.deletes), (0, 0));
        assert_eq!(s.total_writes(), w);
        // The names map carries the service name per revNAT id.
        let rev = r.rev_nat_id(&fk([10, 96, 0, 10], 80, PROTO_TCP)).unwrap();
        assert_eq!(
            super::super::maps::name_from_bytes(&s.names.map[&rev]),
            "default/a"
        );
        assert_eq!(s.revnat.map[&rev].addr, ip_raw([10, 96, 0, 10]));
    }

    #[test]
    fn ids_are_stable_and_changes_are_minimal() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let eps =
            |n: u8| -> Vec<Endpoint> { (1..=n).map(|i| ep([10, 244, 0, i], 80, false)).collect() };
        run(
            &mut r,
            &mut s,
            &state(vec![
                svc("a", [10, 96, 0, 1], 80, eps(3)),
                svc("b", [10, 96, 0, 2], 80, eps(1)),
            ]),
        );
        let key_a = fk([10, 96, 0, 1], 80, PROTO_TCP);
        let key_b = fk([10, 96, 0, 2], 80, PROTO_TCP);
        let rev_a = r.rev_nat_id(&key_a).unwrap();
        let rev_b = r.rev_nat_id(&key_b).unwrap();
        let b1 = BackendAddr {
            addr: ip_raw([10, 244, 0, 1]),
            port: port_raw(80),
            proto: PROTO_TCP,
        };
        let id1 = r.backend_id(&b1).unwrap();
        let a_without_2 = || {
            svc(
                "a",
                [10, 96, 0, 1],
                80,
                remote_eps(80, &[[10, 244, 0, 1], [10, 244, 0, 3]]),
            )
        };

        // One backend of a goes away: one slot move, one count update, one slot delete.
        let stats = run(
            &mut r,
            &mut s,
            &state(vec![a_without_2(), svc("b", [10, 96, 0, 2], 80, eps(1))]),
        );
        assert_eq!(stats.frontends_updated, 1);
        assert_eq!(stats.writes, 2, "{stats:?}"); // slot 1 ← backend 3, frontend count
        assert_eq!(stats.deletes, 2, "{stats:?}"); // slot 2, backend 2
        assert_eq!(stats.backends_removed, 1);
        assert_eq!(r.rev_nat_id(&key_a), Some(rev_a));
        assert_eq!(r.rev_nat_id(&key_b), Some(rev_b));
        assert_eq!(r.backend_id(&b1), Some(id1));

        // Removing service b keeps a's ids; a new service gets a fresh revNAT id.
        run(
            &mut r,
            &mut s,
            &state(vec![a_without_2(), svc("c", [10, 96, 0, 3], 80, eps(1))]),
        );
        assert_eq!(r.rev_nat_id(&key_a), Some(rev_a));
        let rev_c = r.rev_nat_id(&fk([10, 96, 0, 3], 80, PROTO_TCP)).unwrap();
        assert_ne!(rev_c, rev_b, "a freed revNAT id is not reused at once");
        assert!(!s.frontends.map.contains_key(&key_b));
        assert!(!s.revnat.map.contains_key(&rev_b));
        assert!(!s.names.map.contains_key(&rev_b));
        assert!(s.slots.map.keys().all(|k| k.rev_nat_id != rev_b));
    }

    #[test]
    fn a_restart_reloads_the_mirror_and_writes_nothing() {
        let mut s = FakeMaps::new(64);
        let st = state(vec![svc_a_two_backends()]);
        {
            let mut r = Reconciler::load(&mut s).unwrap();
            run(&mut r, &mut s, &st);
        }
        let before = s.total_writes();
        let mut r2 = Reconciler::load(&mut s).unwrap();
        let stats = run(&mut r2, &mut s, &st);
        assert_eq!((stats.writes, stats.deletes), (0, 0), "{stats:?}");
        assert_eq!(s.total_writes(), before);
        // New ids after a restart do not collide with the pinned ones.
        let st2 = state(vec![
            svc_a_two_backends(),
            svc("d", [10, 96, 0, 4], 80, remote_eps(80, &[[10, 244, 0, 9]])),
        ]);
        run(&mut r2, &mut s, &st2);
        assert_eq!(s.frontends.map.len(), 2);
        assert_eq!(s.backends.map.len(), 3);
        let revs: HashSet<u32> = s.frontends.map.values().map(|f| f.rev_nat_id).collect();
        assert_eq!(revs.len(), 2);
    }

    #[test]
    fn leftovers_of_an_interrupted_sync_are_cleaned() {
        let mut s = FakeMaps::new(64);
        // Slots, a revNAT and a name for id 7 with no frontend; a backend no slot uses.
        s.slots.map.insert(
            SlotKey {
                rev_nat_id: 7,
                slot: 0,
            },
            3,
        );
        s.revnat.map.insert(7, RevNat::default());
        s.names.map.insert(7, name_to_bytes("x/y"));
        s.backends.map.insert(
            3,
            Backend {
                addr: 1,
                port: 2,
                proto: PROTO_TCP,
                flags: 0,
            },
        );
        let mut r = Reconciler::load(&mut s).unwrap();
        run(&mut r, &mut s, &ProxyState::new());
        assert!(s.slots.map.is_empty() && s.revnat.map.is_empty() && s.names.map.is_empty());
        assert!(s.backends.map.is_empty());
    }

    #[test]
    fn no_endpoints_is_a_frontend_with_zero_count() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        run(
            &mut r,
            &mut s,
            &state(vec![svc("a", [10, 96, 0, 1], 80, vec![])]),
        );
        let fe = s.frontends.map[&fk([10, 96, 0, 1], 80, PROTO_TCP)];
        assert_eq!(fe.count, 0);
        assert!(s.slots.map.is_empty());
    }

    #[test]
    fn internal_local_policy_gives_the_cluster_ip_local_backends_only() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let mut sp = svc(
            "a",
            [10, 96, 0, 1],
            80,
            vec![
                ep([10, 244, 0, 5], 8080, true),
                ep([10, 244, 1, 5], 8080, false),
            ],
        );
        sp.internal_local = true;
        run(&mut r, &mut s, &state(vec![sp.clone()]));
        let fe = s.frontends.map[&fk([10, 96, 0, 1], 80, PROTO_TCP)];
        assert_eq!(fe.count, 1);
        // No endpoint here: a frontend without backends, refused at connect.
        sp.endpoints.remove(0);
        run(&mut r, &mut s, &state(vec![sp]));
        let fe = s.frontends.map[&fk([10, 96, 0, 1], 80, PROTO_TCP)];
        assert_eq!(fe.count, 0);
    }

    #[test]
    fn nodeport_affinity_and_external_local() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let mut a = svc(
            "np",
            [10, 96, 0, 1],
            80,
            vec![
                ep([10, 244, 1, 2], 80, true),
                ep([10, 244, 2, 2], 80, false),
            ],
        );
        a.node_port = 30080;
        a.external_local = true;
        a.affinity_timeout = Some(60);
        let mut u = svc(
            "dns",
            [10, 96, 0, 10],
            53,
            vec![ep([10, 244, 1, 3], 53, true)],
        );
        u.name.protocol = Protocol::Udp;
        run(&mut r, &mut s, &state(vec![a.clone(), u]));
        let cluster = s.frontends.map[&fk([10, 96, 0, 1], 80, PROTO_TCP)];
        let node = s.frontends.map[&fk([192, 168, 0, 1], 30080, PROTO_TCP)];
        assert_eq!(cluster.count, 2);
        assert_eq!(cluster.flags, FE_AFFINITY);
        assert_eq!(cluster.affinity_timeout, 60);
        assert_eq!(node.count, 1, "Local: only the local backend");
        assert_eq!(node.flags, FE_AFFINITY | FE_NODEPORT | FE_EXTERNAL_LOCAL);
        assert_ne!(cluster.rev_nat_id, node.rev_nat_id);
        assert_eq!(s.revnat.map[&node.rev_nat_id].port, port_raw(30080));
        assert!(
            s.frontends
                .map
                .contains_key(&fk([10, 96, 0, 10], 53, PROTO_UDP))
        );
        // The node's own sockets (internal scope, and 127.0.0.1) get both backends.
        for k in [
            FrontendKey {
                scope: skiff_ebpf_common::SCOPE_INTERNAL,
                ..fk([192, 168, 0, 1], 30080, PROTO_TCP)
            },
            fk([127, 0, 0, 1], 30080, PROTO_TCP),
        ] {
            assert_eq!(s.frontends.map[&k].flags, FE_AFFINITY | FE_NODEPORT);
            assert_eq!(s.frontends.map[&k].count, 2);
        }
        // Affinity matches: 2 for the ClusterIP frontend, 1 for the NodePort one from outside,
        // 2 each for its internal scope and 127.0.0.1.
        assert_eq!(s.aff_match.map.len(), 7);
        let local = s
            .backends
            .map
            .values()
            .filter(|b| b.flags & BE_LOCAL != 0)
            .count();
        assert_eq!(local, 2);
        // Turning affinity off removes the matches.
        a.affinity_timeout = None;
        run(&mut r, &mut s, &state(vec![a]));
        assert!(s.aff_match.map.is_empty());
    }

    #[test]
    fn a_full_map_is_reported_by_name_and_the_rest_is_programmed() {
        let mut s = FakeMaps::new(64);
        s.frontends.max = 2;
        let mut r = Reconciler::load(&mut s).unwrap();
        let st = state(vec![
            svc("a", [10, 96, 0, 1], 80, remote_eps(80, &[[10, 244, 0, 1]])),
            svc("b", [10, 96, 0, 2], 80, remote_eps(80, &[[10, 244, 0, 2]])),
            svc("c", [10, 96, 0, 3], 80, remote_eps(80, &[[10, 244, 0, 3]])),
        ]);
        let err = r
            .sync(&mut s, &desired(&st, None))
            .expect_err("frontends map is full");
        assert_eq!(err.full_maps(), vec!["skiff_frontends"]);
        assert_eq!(err.failures.len(), 1);
        assert_eq!(err.failures[0].service, "default/c");
        assert!(err.to_string().contains("skiff_frontends is full"), "{err}");
        assert_eq!(err.stats.frontends, 2);
        assert_eq!(s.frontends.map.len(), 2);
        // Nothing dangles from the failed frontend: its slots, revNAT and name were purged,
        // and its backend is gone again.
        assert_eq!(s.revnat.map.len(), 2);
        assert_eq!(s.names.map.len(), 2);
        assert_eq!(s.slots.map.len(), 2);
        assert_eq!(s.backends.map.len(), 2);
        // With room, the next sync programs it.
        s.frontends.max = 3;
        let stats = r.sync(&mut s, &desired(&st, None)).unwrap();
        assert_eq!(stats.frontends, 3);
        assert!(s.resolve(&fk([10, 96, 0, 3], 80, PROTO_TCP)).is_some());
    }

    #[test]
    fn a_full_backends_map_programs_what_fits() {
        let mut s = FakeMaps::new(64);
        s.backends.max = 1;
        let mut r = Reconciler::load(&mut s).unwrap();
        let st = state(vec![svc_a_two_backends()]);
        let err = r.sync(&mut s, &desired(&st, None)).unwrap_err();
        assert_eq!(err.full_maps(), vec!["skiff_backends"]);
        assert_eq!(
            s.resolve(&fk([10, 96, 0, 1], 80, PROTO_TCP)).unwrap().len(),
            1
        );
    }

    #[test]
    fn terminating_fallback_and_unready_endpoints() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let mut unready = ep([10, 244, 0, 2], 80, false);
        unready.ready = false;
        unready.serving = false;
        run(
            &mut r,
            &mut s,
            &state(vec![svc(
                "a",
                [10, 96, 0, 1],
                80,
                vec![ep([10, 244, 0, 1], 80, false), unready],
            )]),
        );
        assert_eq!(
            s.resolve(&fk([10, 96, 0, 1], 80, PROTO_TCP)).unwrap(),
            vec![be([10, 244, 0, 1], 80)]
        );
    }

    #[test]
    fn injected_write_faults_skip_the_frontend_until_the_next_sync() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let st = state(vec![svc(
            "a",
            [10, 96, 0, 1],
            80,
            remote_eps(80, &[[10, 244, 0, 1]]),
        )]);
        let key = fk([10, 96, 0, 1], 80, PROTO_TCP);
        // An I/O error is a failure, not a full map.
        s.fail_next_writes("skiff_slots", 1);
        let err = r.sync(&mut s, &desired(&st, None)).unwrap_err();
        assert!(err.full_maps().is_empty(), "{err}");
        assert_eq!(err.failures.len(), 1);
        assert_eq!(err.failures[0].error.map(), "skiff_slots");
        assert!(s.resolve(&key).is_none());
        // A map reported full although it has room.
        s.report_full("skiff_revnat", 1);
        let err = r.sync(&mut s, &desired(&st, None)).unwrap_err();
        assert_eq!(err.full_maps(), vec!["skiff_revnat"]);
        assert!(s.resolve(&key).is_none());
        // The faults used up, the next sync programs the frontend.
        run(&mut r, &mut s, &st);
        assert_eq!(s.resolve(&key).unwrap(), vec![be([10, 244, 0, 1], 80)]);
    }

    /// Every map's fill as the store really holds it, in `ALL_MAPS` order.
    fn store_fill(s: &FakeMaps) -> Vec<(String, usize, u32)> {
        let mut v = vec![
            (
                s.frontends.name.to_string(),
                s.frontends.map.len(),
                s.frontends.max,
            ),
            (s.slots.name.to_string(), s.slots.map.len(), s.slots.max),
            (
                s.backends.name.to_string(),
                s.backends.map.len(),
                s.backends.max,
            ),
            (s.revnat.name.to_string(), s.revnat.map.len(), s.revnat.max),
            (
                s.aff_match.name.to_string(),
                s.aff_match.map.len(),
                s.aff_match.max,
            ),
            (
                s.src_range.name.to_string(),
                s.src_range.map.len(),
                s.src_range.max,
            ),
            (s.names.name.to_string(), s.names.map.len(), s.names.max),
        ];
        v.extend(s.program.iter().map(|(n, e, m)| (n.to_string(), *e, *m)));
        v.sort_by_key(|m| ALL_MAPS.iter().position(|n| *n == m.0));
        v
    }

    fn fill_rows(f: Vec<MapFill>) -> Vec<(String, usize, u32)> {
        f.into_iter()
            .map(|m| (m.name, m.entries, m.max_entries))
            .collect()
    }

    #[test]
    fn map_fill_counts_every_map_without_walking_the_mirrored_ones() {
        let mut s = FakeMaps::new(64);
        s.program[0].1 = 3; // affinity entries the programs wrote
        let mut r = Reconciler::load(&mut s).unwrap();
        let mut fill = FillReporter::default();
        let (a, b) = nodeport_affinity_pair();
        let steps = [
            state(vec![a.clone(), b.clone()]),
            state(vec![a.clone()]),
            state(vec![svc("c", [10, 96, 0, 3], 80, vec![])]),
            ProxyState::new(),
        ];
        for (i, st) in steps.iter().enumerate() {
            run(&mut r, &mut s, st);
            let got = fill_rows(fill.report(&r, &mut s));
            assert_eq!(got, store_fill(&s), "step {i}");
            assert_eq!(
                got.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
                ALL_MAPS,
                "step {i}"
            );
        }
        // The programs' maps were walked once: the later reports are within the period.
        assert_eq!(s.program_walks.get(), 1);
        assert_eq!(
            fill_rows(fill.report(&r, &mut s))[4],
            ("skiff_affinity".to_string(), 3, 128)
        );
    }

    #[test]
    fn external_ips_lb_addresses_source_ranges_and_host_ports() {
        use crate::proxy::model::HostPort;
        use skiff_ebpf_common::{
            FE_EXTERNAL_IP, FE_HOSTPORT, FE_LOADBALANCER, FE_SRC_RANGE, SCOPE_INTERNAL, mask_raw,
        };
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let mut lb = svc(
            "lb",
            [10, 96, 0, 5],
            80,
            vec![
                ep([10, 244, 1, 2], 8080, true),
                ep([10, 244, 2, 2], 8080, false),
            ],
        );
        lb.external_local = true;
        lb.extra.external_ips = vec![Ipv4Addr::new(203, 0, 113, 7)];
        lb.extra.lb_ips = vec![Ipv4Addr::new(10, 0, 0, 240)];
        lb.extra.source_ranges = vec![
            "10.0.0.1/32".parse().unwrap(),
            "192.168.7.0/24".parse().unwrap(),
        ];
        let mut hp = svc(
            "pod/web",
            [0, 0, 0, 0],
            0,
            vec![ep([10, 244, 1, 9], 80, true)],
        );
        hp.extra.host_port = Some(HostPort {
            port: 18080,
            ip: None,
        });
        run(&mut r, &mut s, &state(vec![lb.clone(), hp.clone()]));
        let local_only = Some(vec![be([10, 244, 1, 2], 8080)]);
        // External IP: from outside the local backend only (Local), from the node's own
        // sockets (internal scope) both.
        let ext = fk([203, 0, 113, 7], 80, PROTO_TCP);
        assert_eq!(
            s.frontends.map[&ext].flags,
            FE_EXTERNAL_IP | FE_EXTERNAL_LOCAL
        );
        assert_eq!(s.resolve(&ext), local_only);
        let internal = |k: FrontendKey| FrontendKey {
            scope: SCOPE_INTERNAL,
            ..k
        };
        assert_eq!(s.frontends.map[&internal(ext)].flags, FE_EXTERNAL_IP);
        assert_eq!(s.resolve(&internal(ext)).map(|v| v.len()), Some(2));
        // LB address: source ranges on the outside view only.
        let lbk = fk([10, 0, 0, 240], 80, PROTO_TCP);
        let lbf = s.frontends.map[&lbk];
        assert_eq!(
            lbf.flags,
            FE_LOADBALANCER | FE_EXTERNAL_LOCAL | FE_SRC_RANGE
        );
        assert_eq!(s.frontends.map[&internal(lbk)].flags, FE_LOADBALANCER);
        let ranges: BTreeSet<(u32, u32, u8)> = s
            .src_range
            .map
            .keys()
            .map(|k| (k.rev_nat_id, k.addr, k.prefix_len))
            .collect();
        let rev = lbf.rev_nat_id;
        let want = [
            (rev, ip_raw([10, 0, 0, 1]), 32),
            (rev, ip_raw([192, 168, 7, 0]), 24),
        ];
        assert_eq!(ranges, want.into_iter().collect());
        // What the kernel probes: a client's network at each prefix length.
        assert_eq!(
            mask_raw(ip_raw([192, 168, 7, 99]), 24),
            ip_raw([192, 168, 7, 0])
        );
        assert_eq!(mask_raw(ip_raw([192, 168, 7, 99]), 0), 0);
        // The host port on the node IP and on loopback, no cluster IP.
        for ip in [[192, 168, 0, 1], [127, 0, 0, 1]] {
            let k = fk(ip, 18080, PROTO_TCP);
            assert_eq!(s.frontends.map[&k].flags, FE_HOSTPORT | FE_EXTERNAL_LOCAL);
            assert_eq!(s.resolve(&k), Some(vec![be([10, 244, 1, 9], 80)]));
        }
        assert!(!s.frontends.map.keys().any(|k| k.addr == 0));
        // Narrowed ranges: one entry goes; the LB address gone: the rest goes with it.
        lb.extra.source_ranges.pop();
        run(&mut r, &mut s, &state(vec![lb.clone(), hp]));
        assert_eq!(s.src_range.map.len(), 1);
        lb.extra.lb_ips.clear();
        run(&mut r, &mut s, &state(vec![lb.clone()]));
        assert!(s.src_range.map.is_empty());
        assert!(
            !s.frontends
                .map
                .keys()
                .any(|k| k.addr == lbk.addr || k.port == port_raw(18080))
        );
        // Ranges back, then an agent restart: the mirror read from the maps needs no write.
        lb.extra.lb_ips = vec![Ipv4Addr::new(10, 0, 0, 240)];
        run(&mut r, &mut s, &state(vec![lb.clone()]));
        assert_eq!(s.src_range.map.len(), 1);
        let mut again = Reconciler::load(&mut s).unwrap();
        let st = run(&mut again, &mut s, &state(vec![lb]));
        assert_eq!((st.writes, st.deletes), (0, 0));
    }

    #[test]
    fn a_node_port_answers_on_loopback_with_every_backend() {
        let mut s = FakeMaps::new(64);
        let mut r = Reconciler::load(&mut s).unwrap();
        let mut a = svc(
            "np",
            [10, 96, 0, 1],
            80,
            vec![
                ep([10, 244, 1, 2], 80, true),
                ep([10, 244, 2, 2], 80, false),
            ],
        );
        a.node_port = 30080;
        a.external_local = true;
        let mut u = a.clone();
        u.name.protocol = Protocol::Udp;
        run(&mut r, &mut s, &state(vec![a, u]));
        for proto in [PROTO_TCP, PROTO_UDP] {
            let lo = fk([127, 0, 0, 1], 30080, proto);
            assert_eq!(s.frontends.map[&lo].flags, FE_NODEPORT);
            assert_eq!(s.resolve(&lo).map(|v| v.len()), Some(2));
            // The same node port for TCP and UDP: one frontend each.
            assert_eq!(
                s.resolve(&fk([192, 168, 0, 1], 30080, proto)),
                Some(vec![be([10, 244, 1, 2], 80)])
            );
        }
    }
}
