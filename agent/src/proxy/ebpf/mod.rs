//! The eBPF service dataplane (`--proxy-mode ebpf`): socket-level load balancing at the cgroup
//! (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`) and NodePort on the uplink (tc/TCX),
//! driven by maps in Cilium's lb4 layout. Kernel side: `ebpf/skiff-ebpf`; shared layouts:
//! `ebpf/skiff-ebpf-common`.
//!
//! - [`EbpfDataplane::open`] loads the programs, reusing the maps pinned under `--bpffs` (no
//!   flush after an agent restart), attaches through pinned bpf_links (or swaps the new
//!   programs into the links a previous agent left, atomically) — [`loader`], with one module
//!   per program kind in [`programs`];
//! - [`EbpfDataplane::sync`] makes the maps equal to a [`ProxyState`] with minimal writes
//!   ([`reconcile`], ids from [`id_allocator`]); a full map is an error naming it
//!   ([`SyncError`]), which the proxy loop gets as a [`SyncReport`] with the full maps;
//! - [`cleanup`] detaches and unpins everything;
//! - [`PinnedMaps::open`] reads the pinned maps without a running agent (for the `bpf` CLI);
//! - [`fake`] holds the maps in memory, with fault injection, for tests without root.
pub mod fake;
pub mod flow_stats;
pub mod id_allocator;
pub mod loader;
pub mod maps;
pub mod programs;
pub mod reconcile;
pub mod sock_destroy;
pub mod sys;

use std::net::Ipv4Addr;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use loader::{AttachReport, CleanupReport, MapSizes, programs_built};
pub use maps::{
    AffinityEntry, BackendEntry, CtFlow, FrontendEntry, MapFill, MapOpError, PinnedMaps, size_flag,
};
pub use reconcile::{MapSyncStats, SyncError, SyncFailure, sync_report};

use std::collections::BTreeSet;

use crate::proxy::dataplane::{Dataplane, SyncReport};
use crate::proxy::model::{ProxyState, ServicePortName};

/// Everything [`EbpfDataplane::open`] needs.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// This agent's directory on bpffs (`--bpffs`), e.g. `/sys/fs/bpf/skiff/<node>`; created.
    pub bpffs_dir: PathBuf,
    /// The cgroup2 directory whose processes get socket LB (`--cgroup-root`).
    pub cgroup_root: PathBuf,
    /// The interface NodePort traffic arrives on; `None`: no NodePort from outside (and
    /// NodePort programs a previous run attached are removed).
    pub uplink: Option<String>,
    /// The node IP NodePort frontends are keyed on; `None`: no NodePort frontends.
    pub node_ip: Option<Ipv4Addr>,
    pub sizes: MapSizes,
    /// Turn on the programs' aya-log debug records (forwarded to `log`/`tracing`, target
    /// `skiff_ebpf`). Off by default: the records are compiled out by the verifier.
    pub debug_log: bool,
}

impl EbpfConfig {
    pub fn new(bpffs_dir: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        EbpfConfig {
            bpffs_dir: bpffs_dir.into(),
            cgroup_root: cgroup_root.into(),
            uplink: None,
            node_ip: None,
            sizes: MapSizes::default(),
            debug_log: false,
        }
    }
}

/// Map-size flags, for `#[command(flatten)]` into the agent's CLI.
#[derive(Clone, Debug, clap::Args)]
pub struct MapSizeFlags {
    /// eBPF proxy: max frontends (service ports × (ClusterIP + NodePort)).
    #[arg(long, default_value_t = MapSizes::default().frontends)]
    pub bpf_lb_frontends: u32,
    /// eBPF proxy: max distinct backends (ip, port, protocol).
    #[arg(long, default_value_t = MapSizes::default().backends)]
    pub bpf_lb_backends: u32,
    /// eBPF proxy: max backend slots summed over all frontends.
    #[arg(long, default_value_t = MapSizes::default().slots)]
    pub bpf_lb_slots: u32,
    /// eBPF proxy: max session-affinity entries (LRU).
    #[arg(long, default_value_t = MapSizes::default().affinity)]
    pub bpf_lb_affinity: u32,
    /// eBPF proxy: max translated sockets remembered for reverse NAT (LRU).
    #[arg(long, default_value_t = MapSizes::default().sock_rev)]
    pub bpf_lb_sock_rev: u32,
    /// eBPF proxy: max NodePort conntrack entries (LRU, two per flow).
    #[arg(long, default_value_t = MapSizes::default().ct)]
    pub bpf_ct_max: u32,
}

impl From<&MapSizeFlags> for MapSizes {
    fn from(f: &MapSizeFlags) -> Self {
        MapSizes {
            frontends: f.bpf_lb_frontends,
            backends: f.bpf_lb_backends,
            slots: f.bpf_lb_slots,
            affinity: f.bpf_lb_affinity,
            sock_rev: f.bpf_lb_sock_rev,
            ct: f.bpf_ct_max,
        }
    }
}

/// The loaded, attached dataplane. Dropping it leaves everything attached and pinned (traffic
/// keeps flowing across an agent restart); [`cleanup`] removes it.
pub struct EbpfDataplane {
    maps: PinnedMaps,
    rec: reconcile::Reconciler,
    /// When `rec` was last read from the maps.
    mirror_at: std::time::Instant,
    node_ip: Option<Ipv4Addr>,
    report: AttachReport,
    fill: reconcile::FillReporter,
    _logger: Option<loader::LogReader>,
}

impl EbpfDataplane {
    /// Load or reuse the pinned maps and programs and attach them (see the module doc).
    pub fn open(cfg: &EbpfConfig) -> Result<EbpfDataplane> {
        let loaded = loader::load(&loader::LoadConfig {
            bpffs_dir: &cfg.bpffs_dir,
            cgroup_root: &cfg.cgroup_root,
            uplink: cfg.uplink.as_deref(),
            node_ip: cfg.node_ip,
            sizes: cfg.sizes,
            debug_log: cfg.debug_log,
        })?;
        let mut maps = loaded.maps;
        let rec = reconcile::Reconciler::load(&mut maps).context("read the pinned LB maps")?;
        Ok(EbpfDataplane {
            maps,
            rec,
            mirror_at: std::time::Instant::now(),
            node_ip: cfg.node_ip,
            report: loaded.report,
            fill: reconcile::FillReporter::default(),
            _logger: loaded.logger,
        })
    }

    /// Make the maps equal to `state`. On [`SyncError`] everything that fit was programmed.
    pub fn sync(&mut self, state: &ProxyState) -> Result<MapSyncStats, SyncError> {
        self.rec.sync_state(&mut self.maps, state, self.node_ip)
    }

    /// Make the maps equal to `state`, given that only the service ports in `changed` differ
    /// from the state of the last successful sync ([`reconcile::Reconciler::sync_changed`]).
    pub fn sync_changed(
        &mut self,
        state: &ProxyState,
        changed: &BTreeSet<ServicePortName>,
    ) -> Result<MapSyncStats, SyncError> {
        self.rec
            .sync_changed(&mut self.maps, state, changed, self.node_ip)
    }

    /// Re-read the maps into the reconciler's mirror, so the next sync also repairs entries
    /// changed behind the agent's back (e.g. with bpftool). `sync` alone trusts the mirror.
    pub fn refresh_mirror(&mut self) -> Result<()> {
        self.rec =
            reconcile::Reconciler::load(&mut self.maps).context("read the pinned LB maps")?;
        self.mirror_at = std::time::Instant::now();
        Ok(())
    }

    /// What `open` attached, swapped, reused or created.
    pub fn attach_report(&self) -> &AttachReport {
        &self.report
    }

    /// The maps, for inspection (the same views [`PinnedMaps::open`] gives the CLI).
    pub fn maps(&self) -> &PinnedMaps {
        &self.maps
    }

    /// Entries and capacity of every pinned map, cheap enough for every sync
    /// ([`reconcile::FillReporter`]: the reconciler's maps from its mirror, the programs' maps
    /// walked at most every [`reconcile::PROGRAM_FILL_PERIOD`]).
    pub fn map_fill(&mut self) -> Vec<MapFill> {
        self.fill.report(&self.rec, &mut self.maps)
    }

    /// (frontends, backends) currently programmed.
    pub fn counts(&self) -> (usize, usize) {
        self.rec.counts()
    }
}

/// How often the runner's syncs also re-read the maps ([`EbpfDataplane::refresh_mirror`]).
const MIRROR_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

#[async_trait::async_trait]
impl Dataplane for EbpfDataplane {
    fn mode(&self) -> &'static str {
        "ebpf"
    }

    /// [`EbpfDataplane::sync`] (or `sync_changed`); a [`SyncError`] (e.g. a full map) is an
    /// incomplete [`SyncReport`] ([`sync_report`]); failing to re-read the maps an error.
    async fn sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<SyncReport> {
        if self.mirror_at.elapsed() > MIRROR_REFRESH {
            self.refresh_mirror()?;
        }
        let result = match changed {
            Some(changed) => self.sync_changed(state, changed),
            None => EbpfDataplane::sync(self, state),
        };
        Ok(sync_report(state, result))
    }

    fn map_fill(&mut self) -> Vec<MapFill> {
        EbpfDataplane::map_fill(self)
    }
}

// The proxy runner keeps the dataplane in a task.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<EbpfDataplane>();
};

/// Detach every skiff program and unpin every map under `bpffs_dir` (and sweep unpinned skiff
/// cgroup links on `cgroup_root`). Idempotent.
pub fn cleanup(bpffs_dir: &Path, cgroup_root: Option<&Path>) -> Result<CleanupReport> {
    loader::cleanup(bpffs_dir, cgroup_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_full_maps_with_capacity_and_count() {
        let mut e = SyncError {
            stats: MapSyncStats::default(),
            failures: Vec::new(),
        };
        for (svc, map) in [
            ("default/a:http", "skiff_frontends"),
            ("backend 10.0.0.1:80", "skiff_backends"),
            ("default/b:http", "skiff_frontends"),
        ] {
            e.failures.push(SyncFailure {
                service: svc.into(),
                error: MapOpError::Full {
                    map,
                    max_entries: 4,
                },
            });
        }
        e.failures.push(SyncFailure {
            service: "default/c".into(),
            error: MapOpError::Sys {
                map: "skiff_slots",
                op: "update",
                source: std::io::Error::from_raw_os_error(1),
            },
        });
        let report = sync_report(&ProxyState::new(), Err(e));
        assert!(report.incomplete.is_some());
        let maps = report.full_maps;
        assert_eq!(maps.len(), 2, "{maps:?}");
        let fe = maps.iter().find(|m| m.map == "skiff_frontends").unwrap();
        assert_eq!((fe.max_entries, fe.not_programmed), (4, 2));
        assert_eq!(fe.first, "default/a:http");
        assert_eq!(
            fe.message(),
            "BPF map skiff_frontends is full (4 entries): 2 entries not programmed \
             (first: default/a:http); raise --bpf-lb-frontends on this node's skiff-agent"
        );
        let be = maps.iter().find(|m| m.map == "skiff_backends").unwrap();
        assert!(be.message().contains("raise --bpf-lb-backends"));
        // A sync without failures names no map.
        let ok = sync_report(&ProxyState::new(), Ok(MapSyncStats::default()));
        assert!(ok.full_maps.is_empty() && ok.incomplete.is_none());
    }
}
