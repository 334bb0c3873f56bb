//! The fake of the LB maps: [`FakeMaps`] holds them in memory behind the same [`LbStore`]
//! trait [`PinnedMaps`](super::PinnedMaps) implements for the kernel, so the reconciler, the
//! eBPF dataplane's reports and the proxy loop are tested without root. Each map has a
//! capacity (a write of a new key beyond it fails as the kernel's full map does), counts its
//! writes, and takes injected faults ([`Faults`]: fail the next N writes, or report the map
//! full for the next N new keys). [`FakeDataplane`] is the eBPF [`Dataplane`] over it.
//!
//! Not used by the agent itself: this is the fake, for unit tests and benchmarks.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::hash::Hash;
use std::io;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use rustc_hash::FxHashMap as HashMap;
use skiff_ebpf_common::{
    AffinityMatchKey, Backend, Frontend, FrontendKey, RevNat, SlotKey, SrcRangeKey,
};

use super::maps::{
    LbStore, MapFill, MapOpError, PROGRAM_MAPS, SVC_NAMES, SvcName, Table, lb_store_tables,
};
use super::reconcile::{FillReporter, Reconciler, sync_report};
use crate::proxy::dataplane::{Dataplane, SyncReport};
use crate::proxy::model::{ProxyState, ServicePortName};

/// Faults to inject into one [`FakeTable`]; each write they fail uses one up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The next this many writes fail with an I/O error (`EIO`).
    pub fail_writes: usize,
    /// The next this many writes of a new key fail as writes to a full map do.
    pub full_writes: usize,
}

/// An in-memory map with a capacity, counting writes.
pub struct FakeTable<K, V> {
    pub name: &'static str,
    /// Capacity: a write of a new key to a map holding this many entries fails as full.
    pub max: u32,
    pub map: HashMap<K, V>,
    /// Successful writes (updates) and deletes.
    pub writes: usize,
    pub deletes: usize,
    pub faults: Faults,
}

impl<K, V> FakeTable<K, V> {
    pub fn new(name: &'static str, max: u32) -> Self {
        FakeTable {
            name,
            max,
            map: HashMap::default(),
            writes: 0,
            deletes: 0,
            faults: Faults::default(),
        }
    }

    fn full(&self) -> MapOpError {
        MapOpError::Full {
            map: self.name,
            max_entries: self.max,
        }
    }
}

impl<K: Copy + Eq + Hash, V: Copy> Table<K, V> for FakeTable<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn max_entries(&self) -> u32 {
        self.max
    }
    fn entries(&self) -> Result<Vec<(K, V)>, MapOpError> {
        Ok(self.map.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put(&mut self, k: &K, v: &V) -> Result<(), MapOpError> {
        if self.faults.fail_writes > 0 {
            self.faults.fail_writes -= 1;
            return Err(MapOpError::Sys {
                map: self.name,
                op: "update",
                source: io::Error::from_raw_os_error(nix::libc::EIO),
            });
        }
        if !self.map.contains_key(k) {
            if self.faults.full_writes > 0 {
                self.faults.full_writes -= 1;
                return Err(self.full());
            }
            if self.map.len() as u32 >= self.max {
                return Err(self.full());
            }
        }
        self.writes += 1;
        self.map.insert(*k, *v);
        Ok(())
    }
    fn delete(&mut self, k: &K) -> Result<(), MapOpError> {
        self.deletes += 1;
        self.map.remove(k);
        Ok(())
    }
}

/// The LB maps in memory, shaped as [`PinnedMaps`](super::PinnedMaps) (same names; the slot
/// and affinity-match maps four times the others' capacity, the programs' maps twice).
pub struct FakeMaps {
    pub frontends: FakeTable<FrontendKey, Frontend>,
    pub slots: FakeTable<SlotKey, u32>,
    pub backends: FakeTable<u32, Backend>,
    pub revnat: FakeTable<u32, RevNat>,
    pub aff_match: FakeTable<AffinityMatchKey, u32>,
    pub src_range: FakeTable<SrcRangeKey, u32>,
    pub names: FakeTable<u32, SvcName>,
    /// The maps the programs write, as (name, entries, max entries).
    pub program: Vec<(&'static str, usize, u32)>,
    /// How often `program` was walked.
    pub program_walks: Cell<usize>,
}

impl FakeMaps {
    /// Empty maps; the frontend, backend, revNAT and name maps hold `max` entries.
    pub fn new(max: u32) -> Self {
        use skiff_ebpf_common::names;
        FakeMaps {
            frontends: FakeTable::new(names::FRONTENDS, max),
            slots: FakeTable::new(names::SLOTS, max * 4),
            backends: FakeTable::new(names::BACKENDS, max),
            revnat: FakeTable::new(names::REVNAT, max),
            aff_match: FakeTable::new(names::AFF_MATCH, max * 4),
            src_range: FakeTable::new(names::SRC_RANGE, max * 4),
            names: FakeTable::new(SVC_NAMES, max),
            program: PROGRAM_MAPS.iter().map(|n| (*n, 0, max * 2)).collect(),
            program_walks: Cell::new(0),
        }
    }

    /// The faults of the reconciler's map `map` (e.g. `skiff_frontends`); `None` for a map
    /// the reconciler does not write.
    pub fn faults(&mut self, map: &str) -> Option<&mut Faults> {
        [
            &mut self.frontends.faults,
            &mut self.slots.faults,
            &mut self.backends.faults,
            &mut self.revnat.faults,
            &mut self.aff_match.faults,
            &mut self.src_range.faults,
            &mut self.names.faults,
        ]
        .into_iter()
        .zip([
            self.frontends.name,
            self.slots.name,
            self.backends.name,
            self.revnat.name,
            self.aff_match.name,
            self.src_range.name,
            self.names.name,
        ])
        .find_map(|(f, name)| (name == map).then_some(f))
    }

    /// Fail the next `n` writes to `map` with an I/O error.
    ///
    /// # Panics
    /// If the reconciler does not write `map`.
    pub fn fail_next_writes(&mut self, map: &str, n: usize) {
        self.faults(map)
            .expect("a map the reconciler writes")
            .fail_writes = n;
    }

    /// Report `map` full for the next `n` writes of a new key.
    ///
    /// # Panics
    /// If the reconciler does not write `map`.
    pub fn report_full(&mut self, map: &str, n: usize) {
        self.faults(map)
            .expect("a map the reconciler writes")
            .full_writes = n;
    }

    /// Frontend → backends (address, port) through slots, as the kernel would resolve them.
    pub fn resolve(&self, key: &FrontendKey) -> Option<Vec<(u32, u16)>> {
        let fe = self.frontends.map.get(key)?;
        let mut v: Vec<(u32, u16)> = (0..fe.count)
            .map(|i| {
                let id = self.slots.map[&SlotKey {
                    rev_nat_id: fe.rev_nat_id,
                    slot: i,
                }];
                let b = self.backends.map[&id];
                (b.addr, b.port)
            })
            .collect();
        v.sort();
        Some(v)
    }

    /// Successful writes to all the reconciler's maps.
    pub fn total_writes(&self) -> usize {
        self.frontends.writes
            + self.slots.writes
            + self.backends.writes
            + self.revnat.writes
            + self.aff_match.writes
            + self.src_range.writes
            + self.names.writes
    }
}

impl LbStore for FakeMaps {
    lb_store_tables!(names);
    fn program_maps_fill(&self) -> Result<Vec<MapFill>, MapOpError> {
        self.program_walks.set(self.program_walks.get() + 1);
        Ok(self
            .program
            .iter()
            .map(|(name, entries, max_entries)| MapFill {
                name: name.to_string(),
                entries: *entries,
                max_entries: *max_entries,
            })
            .collect())
    }
}

/// The eBPF dataplane's sync and fill over [`FakeMaps`]: what
/// [`EbpfDataplane`](super::EbpfDataplane) does over the pinned maps, reported the same way
/// ([`sync_report`]).
pub struct FakeDataplane {
    pub rec: Reconciler,
    pub maps: FakeMaps,
    fill: FillReporter,
    node_ip: Option<Ipv4Addr>,
}

impl FakeDataplane {
    /// The dataplane over `maps` (read into the reconciler's mirror), with NodePort frontends
    /// keyed on `node_ip`.
    pub fn new(mut maps: FakeMaps, node_ip: Option<Ipv4Addr>) -> Result<Self, MapOpError> {
        let rec = Reconciler::load(&mut maps)?;
        Ok(FakeDataplane {
            rec,
            maps,
            fill: FillReporter::default(),
            node_ip,
        })
    }
}

#[async_trait]
impl Dataplane for FakeDataplane {
    fn mode(&self) -> &'static str {
        "ebpf-in-memory"
    }
    async fn sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> anyhow::Result<SyncReport> {
        let result = match changed {
            Some(changed) => self
                .rec
                .sync_changed(&mut self.maps, state, changed, self.node_ip),
            None => self.rec.sync_state(&mut self.maps, state, self.node_ip),
        };
        Ok(sync_report(state, result))
    }
    fn map_fill(&mut self) -> Vec<MapFill> {
        self.fill.report(&self.rec, &mut self.maps)
    }
}
