//! The entries of one revNAT id: a frontend's name, revNAT, affinity matches and slots,
//! written in an order the programs can read at any step, and purged once no frontend owns
//! the id.
use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use skiff_ebpf_common::{
    AffinityMatchKey, FE_AFFINITY, Frontend, FrontendKey, RevNat, SlotKey, SrcRangeKey,
};

use super::steps::SyncRun;
use super::{DesiredFrontend, MapSyncStats, Reconciler, assign_slots};
use crate::proxy::ebpf::maps::{LbStore, MapOpError, Table, name_to_bytes};

impl Reconciler {
    /// Program frontend `key` as `d` asks, with backend ids `ids`; returns whether anything
    /// was written. Affinity matches come before the slots that may pick their backends; the
    /// slots `0..n` before the frontend that counts them; the tail beyond `n` and stale
    /// matches after it.
    pub(super) fn upsert_frontend(
        &mut self,
        store: &mut dyn LbStore,
        key: &FrontendKey,
        d: &DesiredFrontend,
        ids: &[u32],
        run: &mut SyncRun<'_>,
    ) -> Result<bool, MapOpError> {
        let existing = self.frontends.get(key).copied();
        let rev = match existing {
            Some(f) => f.rev_nat_id,
            None => {
                let id = self.rev_nat_id_alloc.allocate();
                run.fresh_revs.push(id);
                id
            }
        };
        let st = &mut run.stats;
        let before = st.writes + st.deletes;
        self.write_name(store, rev, &d.name, st)?;
        self.write_rev_nat(store, rev, key, st)?;
        let want_match: HashSet<u32> = if d.flags & FE_AFFINITY != 0 {
            ids.iter().copied().collect()
        } else {
            HashSet::default()
        };
        self.add_affinity_matches(store, rev, &want_match, st)?;
        // Source ranges before the frontend whose flag makes the programs check them.
        let want_ranges: HashSet<(u32, u8)> = d.src_ranges.iter().copied().collect();
        self.add_src_ranges(store, rev, &want_ranges, st)?;
        let current_count = existing.map_or(0, |f| f.count);
        let slots = assign_slots(&self.slot_contents(rev, current_count), ids);
        self.write_slots(store, rev, &slots, st)?;
        let fe = Frontend {
            rev_nat_id: rev,
            count: slots.len() as u32,
            affinity_timeout: d.affinity_timeout,
            flags: d.flags,
            pad: [0; 3],
        };
        if existing != Some(fe) {
            store.frontends().put(key, &fe)?;
            st.writes += 1;
            self.frontends.insert(*key, fe);
        }
        let tail = self.slots_from(rev, fe.count);
        self.delete_slots(store, rev, tail, st)?;
        let stale: Vec<u32> = self
            .aff_match
            .get(&rev)
            .map(|s| s.difference(&want_match).copied().collect())
            .unwrap_or_default();
        self.delete_affinity_matches(store, rev, stale, st)?;
        self.delete_src_ranges(store, rev, &want_ranges, st)?;
        Ok(st.writes + st.deletes != before)
    }

    /// Delete everything keyed by revNAT id `rev`, which no frontend owns, and free the id.
    pub(super) fn purge_rev_nat(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let slots = self.slots_from(rev, 0);
        self.delete_slots(store, rev, slots, st)?;
        let matches: Vec<u32> = self
            .aff_match
            .get(&rev)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.delete_affinity_matches(store, rev, matches, st)?;
        self.delete_src_ranges(store, rev, &HashSet::default(), st)?;
        if self.revnat.contains_key(&rev) {
            store.revnat().delete(&rev)?;
            st.deletes += 1;
            self.revnat.remove(&rev);
        }
        if self.names.contains_key(&rev) {
            store.svc_names().delete(&rev)?;
            st.deletes += 1;
            self.names.remove(&rev);
        }
        self.rev_nat_id_alloc.release(rev);
        Ok(())
    }

    /// The service name behind `rev`, for `bpf lb list`.
    fn write_name(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        name: &str,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        if self.names.get(&rev).map(String::as_str) != Some(name) {
            store.svc_names().put(&rev, &name_to_bytes(name))?;
            st.writes += 1;
            self.names.insert(rev, name.to_string());
        }
        Ok(())
    }

    /// The address replies from `rev`'s backends are rewritten to.
    fn write_rev_nat(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        key: &FrontendKey,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let rn = RevNat {
            addr: key.addr,
            port: key.port,
            pad: 0,
        };
        if self.revnat.get(&rev) != Some(&rn) {
            store.revnat().put(&rev, &rn)?;
            st.writes += 1;
            self.revnat.insert(rev, rn);
        }
        Ok(())
    }

    /// Affinity matches of `rev` for the backends in `want` that have none yet.
    fn add_affinity_matches(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        want: &HashSet<u32>,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let mut adds: Vec<u32> = want
            .iter()
            .filter(|id| !self.aff_match.get(&rev).is_some_and(|s| s.contains(id)))
            .copied()
            .collect();
        adds.sort();
        for id in adds {
            let key = AffinityMatchKey {
                backend_id: id,
                rev_nat_id: rev,
            };
            store.aff_match().put(&key, &1)?;
            st.writes += 1;
            self.aff_match.entry(rev).or_default().insert(id);
        }
        Ok(())
    }

    /// Source ranges of `rev` in `want` that the map lacks.
    fn add_src_ranges(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        want: &HashSet<(u32, u8)>,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let mut adds: Vec<(u32, u8)> = want
            .iter()
            .filter(|r| !self.src_range.get(&rev).is_some_and(|s| s.contains(r)))
            .copied()
            .collect();
        adds.sort();
        for (addr, prefix_len) in adds {
            store
                .src_range()
                .put(&src_range_key(rev, addr, prefix_len), &1)?;
            st.writes += 1;
            self.src_range
                .entry(rev)
                .or_default()
                .insert((addr, prefix_len));
        }
        Ok(())
    }

    /// Source ranges of `rev` not in `keep`, deleted (and the set, once empty).
    fn delete_src_ranges(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        keep: &HashSet<(u32, u8)>,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let mut stale: Vec<(u32, u8)> = self
            .src_range
            .get(&rev)
            .map(|s| s.difference(keep).copied().collect())
            .unwrap_or_default();
        stale.sort();
        for (addr, prefix_len) in stale {
            store
                .src_range()
                .delete(&src_range_key(rev, addr, prefix_len))?;
            st.deletes += 1;
            if let Some(s) = self.src_range.get_mut(&rev) {
                s.remove(&(addr, prefix_len));
            }
        }
        if self.src_range.get(&rev).is_some_and(HashSet::is_empty) {
            self.src_range.remove(&rev);
        }
        Ok(())
    }

    /// Affinity matches `ids` of `rev`, deleted (and the set, once empty).
    fn delete_affinity_matches(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        mut ids: Vec<u32>,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        ids.sort();
        let key = |backend_id| AffinityMatchKey {
            backend_id,
            rev_nat_id: rev,
        };
        delete_members(store.aff_match(), &mut self.aff_match, rev, ids, key, st)
    }

    /// Slots `0..count` of `rev` as the mirror holds them (0: a hole).
    fn slot_contents(&self, rev: u32, count: u32) -> Vec<u32> {
        let set = self.slots.get(&rev);
        (0..count)
            .map(|i| set.and_then(|s| s.get(&i)).copied().unwrap_or(0))
            .collect()
    }

    /// The slots of `rev` from `first` on.
    fn slots_from(&self, rev: u32, first: u32) -> Vec<u32> {
        self.slots
            .get(&rev)
            .map(|s| s.range(first..).map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }

    /// Slot `i` of `rev` ← `slots[i]`, where the map holds something else.
    fn write_slots(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        slots: &[u32],
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        for (i, id) in slots.iter().enumerate() {
            let slot = i as u32;
            if self.slots.get(&rev).and_then(|s| s.get(&slot)) == Some(id) {
                continue;
            }
            store.slots().put(
                &SlotKey {
                    rev_nat_id: rev,
                    slot,
                },
                id,
            )?;
            st.writes += 1;
            self.slots.entry(rev).or_default().insert(slot, *id);
        }
        Ok(())
    }

    /// Slots `slots` of `rev`, deleted (and the set, once empty).
    fn delete_slots(
        &mut self,
        store: &mut dyn LbStore,
        rev: u32,
        slots: Vec<u32>,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let key = |slot| SlotKey {
            rev_nat_id: rev,
            slot,
        };
        delete_members(store.slots(), &mut self.slots, rev, slots, key, st)
    }
}

fn src_range_key(rev_nat_id: u32, addr: u32, prefix_len: u8) -> SrcRangeKey {
    SrcRangeKey {
        rev_nat_id,
        addr,
        prefix_len,
        pad: [0; 3],
    }
}

/// What the mirror holds per revNAT id of a map keyed by (id, member): its slots (slot →
/// backend id) or its affinity matches (backend ids).
trait Members {
    fn remove_member(&mut self, member: u32);
    fn is_empty(&self) -> bool;
}

impl Members for BTreeMap<u32, u32> {
    fn remove_member(&mut self, slot: u32) {
        self.remove(&slot);
    }
    fn is_empty(&self) -> bool {
        BTreeMap::is_empty(self)
    }
}

impl Members for HashSet<u32> {
    fn remove_member(&mut self, backend_id: u32) {
        self.remove(&backend_id);
    }
    fn is_empty(&self) -> bool {
        HashSet::is_empty(self)
    }
}

/// Delete `members` of `rev` from `table` (entry `key(member)`) and from the mirror's `sets`,
/// in order, and `rev`'s set once empty.
fn delete_members<K, S: Members>(
    table: &mut dyn Table<K, u32>,
    sets: &mut HashMap<u32, S>,
    rev: u32,
    members: Vec<u32>,
    key: impl Fn(u32) -> K,
    st: &mut MapSyncStats,
) -> Result<(), MapOpError> {
    for member in members {
        table.delete(&key(member))?;
        st.deletes += 1;
        if let Some(s) = sets.get_mut(&rev) {
            s.remove_member(member);
        }
    }
    if sets.get(&rev).is_some_and(S::is_empty) {
        sets.remove(&rev);
    }
    Ok(())
}
