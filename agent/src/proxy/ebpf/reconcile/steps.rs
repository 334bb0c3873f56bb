//! A sync as named steps (as Cilium's `bpf_reconciler.go`): ensure backends, upsert frontends,
//! remove frontends, prune orphans, prune backends. The order is what keeps the datapath
//! consistent (see the module doc of [`super`]); each step records what it could not write and
//! the next one still runs.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use skiff_ebpf_common::{BE_LOCAL, Backend, FrontendKey};

use super::{BackendAddr, DesiredFrontend, MapSyncStats, Reconciler, SyncError, SyncFailure};
use crate::proxy::ebpf::maps::{LbStore, MapOpError};

/// One sync in progress: what it asks for, which frontends it may touch, and what it did.
pub(super) struct SyncRun<'a> {
    desired: &'a BTreeMap<FrontendKey, DesiredFrontend>,
    /// `None`: every frontend; `Some`: only these (see [`Reconciler::sync_inner`]).
    scope: Option<&'a HashSet<FrontendKey>>,
    /// Every backend a desired frontend uses, local if any of them has it local.
    want_backends: HashMap<BackendAddr, bool>,
    /// Scoped: the revNAT ids the frontends in scope held before the sync.
    scope_revs: Vec<u32>,
    /// Scoped: the backends the frontends in scope referenced before the sync.
    scope_backends: HashSet<u32>,
    /// The revNAT ids this sync allocated.
    pub(super) fresh_revs: Vec<u32>,
    pub(super) stats: MapSyncStats,
    failures: Vec<SyncFailure>,
}

impl<'a> SyncRun<'a> {
    fn new(
        desired: &'a BTreeMap<FrontendKey, DesiredFrontend>,
        scope: Option<&'a HashSet<FrontendKey>>,
    ) -> Self {
        let mut want_backends: HashMap<BackendAddr, bool> = HashMap::default();
        for d in desired.values() {
            for (a, local) in &d.backends {
                *want_backends.entry(*a).or_default() |= *local;
            }
        }
        SyncRun {
            desired,
            scope,
            want_backends,
            scope_revs: Vec::new(),
            scope_backends: HashSet::default(),
            fresh_revs: Vec::new(),
            stats: MapSyncStats::default(),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, service: String, error: MapOpError) {
        self.failures.push(SyncFailure { service, error });
    }

    fn finish(mut self, rec: &Reconciler, start: Instant) -> Result<MapSyncStats, SyncError> {
        self.stats.frontends = rec.frontends.len();
        self.stats.backends = rec.backends.len();
        self.stats.duration = start.elapsed();
        if self.failures.is_empty() {
            Ok(self.stats)
        } else {
            Err(SyncError {
                stats: self.stats,
                failures: self.failures,
            })
        }
    }
}

impl Reconciler {
    /// Scoped (`scope` given): make the frontends in `scope` equal to `desired` (which holds
    /// only frontends of `scope`: what is in `scope` and not in `desired` is removed) and
    /// leave every other frontend as it is; the backends and ids they share are handled as a
    /// full sync would. `None` (nothing written) when the outcome could differ from a full
    /// sync: a backend whose `BE_LOCAL` bit may have to be cleared, which depends on the
    /// frontends out of scope.
    pub(super) fn sync_inner(
        &mut self,
        store: &mut dyn LbStore,
        desired: &BTreeMap<FrontendKey, DesiredFrontend>,
        scope: Option<&HashSet<FrontendKey>>,
    ) -> Option<Result<MapSyncStats, SyncError>> {
        if scope.is_none() {
            // Whoever syncs everything directly keeps no owners.
            self.owners = None;
        }
        let start = Instant::now();
        let mut run = SyncRun::new(desired, scope);
        if let Some(scope) = scope {
            self.note_scope(&mut run, scope);
            if self.scope_may_clear_a_local_bit(&run) {
                return None;
            }
        }
        self.ensure_backends(store, &mut run);
        self.upsert_frontends(store, &mut run);
        self.remove_frontends(store, &mut run);
        self.prune_orphans(store, &mut run);
        self.prune_backends(store, &mut run);
        Some(run.finish(self, start))
    }

    /// Scoped: note the revNAT ids and backends the frontends in scope hold now.
    fn note_scope(&self, run: &mut SyncRun<'_>, scope: &HashSet<FrontendKey>) {
        for key in scope {
            if let Some(f) = self.frontends.get(key) {
                run.scope_revs.push(f.rev_nat_id);
                if let Some(s) = self.slots.get(&f.rev_nat_id) {
                    run.scope_backends.extend(s.values().copied());
                }
            }
        }
    }

    /// Scoped: whether a local backend the scope uses or wants is no longer wanted local by
    /// the scope — whether it stays local is up to the frontends out of scope.
    fn scope_may_clear_a_local_bit(&self, run: &SyncRun<'_>) -> bool {
        let is_local = |id: &u32| {
            self.backends
                .get(id)
                .is_some_and(|b| b.flags & BE_LOCAL != 0)
        };
        let wanted_local = |id: &u32| run.want_backends.get(&BackendAddr::of(&self.backends[id]));
        run.scope_backends
            .iter()
            .chain(
                run.want_backends
                    .keys()
                    .filter_map(|a| self.backend_ids.get(a)),
            )
            .any(|id| is_local(id) && wanted_local(id) != Some(&true))
    }

    /// Step 1: the backends every desired frontend needs, added or re-flagged, before any
    /// slot points at them.
    fn ensure_backends(&mut self, store: &mut dyn LbStore, run: &mut SyncRun<'_>) {
        let mut wanted: Vec<(BackendAddr, bool)> =
            run.want_backends.iter().map(|(a, l)| (*a, *l)).collect();
        wanted.sort();
        for (a, local) in wanted {
            if let Err(error) = self.ensure_backend(store, a, local, &mut run.stats) {
                let ip = Ipv4Addr::from(a.addr.to_ne_bytes());
                run.fail(format!("backend {ip}:{}", u16::from_be(a.port)), error);
            }
        }
    }

    /// Write backend `a` under its id (a new one if it has none) unless the map holds it so.
    fn ensure_backend(
        &mut self,
        store: &mut dyn LbStore,
        a: BackendAddr,
        local: bool,
        st: &mut MapSyncStats,
    ) -> Result<(), MapOpError> {
        let value = Backend {
            addr: a.addr,
            port: a.port,
            proto: a.proto,
            flags: if local { BE_LOCAL } else { 0 },
        };
        let known = self.backend_ids.get(&a).copied();
        let id = known.unwrap_or_else(|| self.backend_id_alloc.allocate());
        if self.backends.get(&id) == Some(&value) {
            return Ok(());
        }
        if let Err(e) = store.backends().put(&id, &value) {
            if known.is_none() {
                self.backend_id_alloc.release(id);
            }
            return Err(e);
        }
        st.writes += 1;
        if known.is_none() {
            st.backends_added += 1;
        }
        self.backends.insert(id, value);
        self.backend_ids.insert(a, id);
        Ok(())
    }

    /// Step 2: every desired frontend, with its name, revNAT, affinity matches and slots.
    fn upsert_frontends(&mut self, store: &mut dyn LbStore, run: &mut SyncRun<'_>) {
        let desired = run.desired;
        for (key, d) in desired {
            let ids: Vec<u32> = d
                .backends
                .iter()
                .filter_map(|(a, _)| self.backend_ids.get(a).copied())
                .collect();
            let existed = self.frontends.contains_key(key);
            match self.upsert_frontend(store, key, d, &ids, run) {
                Ok(_) if !existed => run.stats.frontends_added += 1,
                Ok(true) => run.stats.frontends_updated += 1,
                Ok(false) => {}
                Err(error) => run.fail(d.name.clone(), error),
            }
        }
    }

    /// Step 3: the frontends no longer wanted (their ids and entries go in step 4).
    fn remove_frontends(&mut self, store: &mut dyn LbStore, run: &mut SyncRun<'_>) {
        let gone: Vec<FrontendKey> = match run.scope {
            None => self
                .frontends
                .keys()
                .filter(|k| !run.desired.contains_key(k))
                .copied()
                .collect(),
            Some(scope) => scope
                .iter()
                .filter(|k| self.frontends.contains_key(k) && !run.desired.contains_key(k))
                .copied()
                .collect(),
        };
        for key in gone {
            let rev = self.frontends[&key].rev_nat_id;
            match store.frontends().delete(&key) {
                Ok(()) => {
                    run.stats.deletes += 1;
                    self.frontends.remove(&key);
                    run.stats.frontends_removed += 1;
                }
                Err(error) => {
                    let name = self.names.get(&rev).cloned().unwrap_or_default();
                    run.fail(name, error);
                }
            }
        }
    }

    /// Step 4: slot sets, revNATs, names and affinity matches no frontend owns (removed
    /// frontends, frontends whose creation failed, leftovers of an interrupted sync), and
    /// their ids.
    fn prune_orphans(&mut self, store: &mut dyn LbStore, run: &mut SyncRun<'_>) {
        let mut orphans: Vec<u32> = match run.scope {
            None => {
                let owned: HashSet<u32> = self.frontends.values().map(|f| f.rev_nat_id).collect();
                // Every id known at the start, plus those allocated since.
                self.rev_nat_id_alloc
                    .in_use()
                    .filter(|id| !owned.contains(id))
                    .collect()
            }
            // A frontend out of scope owns none of the scope's ids.
            Some(scope) => {
                let owned: HashSet<u32> = scope
                    .iter()
                    .filter_map(|k| self.frontends.get(k))
                    .map(|f| f.rev_nat_id)
                    .collect();
                let mut v: Vec<u32> = run
                    .scope_revs
                    .iter()
                    .chain(&run.fresh_revs)
                    .filter(|id| !owned.contains(id))
                    .copied()
                    .collect();
                v.sort();
                v.dedup();
                v
            }
        };
        orphans.sort();
        for rev in orphans {
            if let Err(error) = self.purge_rev_nat(store, rev, &mut run.stats) {
                run.fail(format!("revnat {rev}"), error);
            }
        }
    }

    /// Step 5: the backends no slot references any more, and their ids.
    fn prune_backends(&mut self, store: &mut dyn LbStore, run: &mut SyncRun<'_>) {
        let mut unused: Vec<u32> = match run.scope {
            None => {
                let referenced = self.referenced_backends();
                self.backends
                    .keys()
                    .filter(|id| !referenced.contains(id))
                    .copied()
                    .collect()
            }
            Some(scope) => self.unused_scope_backends(run, scope),
        };
        unused.sort();
        for id in unused {
            match store.backends().delete(&id) {
                Ok(()) => {
                    run.stats.deletes += 1;
                    run.stats.backends_removed += 1;
                    self.forget_backend(id);
                }
                Err(error) => run.fail(format!("backend {id}"), error),
            }
        }
    }

    /// Scoped: only backends the scope used or wanted can have lost their last reference.
    fn unused_scope_backends(
        &self,
        run: &mut SyncRun<'_>,
        scope: &HashSet<FrontendKey>,
    ) -> Vec<u32> {
        let mut candidates = std::mem::take(&mut run.scope_backends);
        candidates.extend(
            run.want_backends
                .keys()
                .filter_map(|a| self.backend_ids.get(a).copied()),
        );
        for key in scope {
            if let Some(s) = self
                .frontends
                .get(key)
                .and_then(|f| self.slots.get(&f.rev_nat_id))
            {
                for id in s.values() {
                    candidates.remove(id);
                }
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        let referenced = self.referenced_backends();
        candidates
            .into_iter()
            .filter(|id| self.backends.contains_key(id) && !referenced.contains(id))
            .collect()
    }

    /// The backend ids some slot holds.
    fn referenced_backends(&self) -> HashSet<u32> {
        self.slots
            .values()
            .flat_map(|s| s.values().copied())
            .collect()
    }

    /// Drop deleted backend `id` from the mirror and free its id.
    fn forget_backend(&mut self, id: u32) {
        if let Some(b) = self.backends.remove(&id) {
            self.backend_id_alloc.release(id);
            let a = BackendAddr::of(&b);
            if self.backend_ids.get(&a) == Some(&id) {
                self.backend_ids.remove(&a);
            }
        }
    }
}
