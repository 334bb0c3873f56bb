//! The boundary between the proxy loop ([`super::runner`]) and a service dataplane (the eBPF
//! maps of [`super::ebpf`] or the iptables rules of [`super::iptables`]): the [`Dataplane`]
//! trait and what a sync reports back ([`SyncReport`]). A leaf: it knows the proxy's model and
//! nothing of the loop or of any dataplane, so each side depends on it and not on the other.

use std::collections::BTreeSet;

use anyhow::Result;
use async_trait::async_trait;
use serde::Serialize;

use super::model::{ProxyState, ServicePortName};

/// What one sync did, in the terms every dataplane shares (for the metrics and the log).
#[derive(Clone, Debug, Default)]
pub struct SyncStats {
    pub services: usize,
    pub backends: usize,
    /// Dataplane writes (map entries or iptables chains), for the log.
    pub writes: usize,
    /// Stale UDP conntrack entries the sync deleted (iptables mode).
    pub conntrack_deleted: u64,
}

/// A map that was full during one sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullMap {
    pub map: &'static str,
    pub max_entries: u32,
    /// Entries (services or backends) that did not fit.
    pub not_programmed: usize,
    /// The first of them, e.g. `default/web:http`.
    pub first: String,
    /// The agent flag that sets the map's size (what to raise), e.g. `--bpf-lb-frontends`.
    pub size_flag: &'static str,
}

impl FullMap {
    /// The event message: the map, its capacity, what is missing and the flag to raise.
    pub fn message(&self) -> String {
        format!(
            "BPF map {} is full ({} entries): {} not programmed (first: {}); raise {} on this node's skiff-agent",
            self.map,
            self.max_entries,
            if self.not_programmed == 1 {
                "1 entry".to_string()
            } else {
                format!("{} entries", self.not_programmed)
            },
            self.first,
            self.size_flag
        )
    }
}

/// What a [`Dataplane::sync`] that ran through reports.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub stats: SyncStats,
    /// The maps that had no room for an entry of the state, each once (empty for a dataplane
    /// without maps).
    pub full_maps: Vec<FullMap>,
    /// `Some`: the dataplane does not match the state — these entries could not be written
    /// (among them those of `full_maps`); everything else was programmed. `None`: it matches.
    pub incomplete: Option<anyhow::Error>,
}

impl SyncReport {
    /// A sync after which the dataplane matches the state.
    pub fn complete(stats: SyncStats) -> SyncReport {
        SyncReport {
            stats,
            full_maps: Vec::new(),
            incomplete: None,
        }
    }
}

/// Fill level of one kernel map, for `bpf maps` and the `skiff_bpf_map_entries` gauges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapFill {
    pub name: String,
    pub entries: usize,
    pub max_entries: u32,
}

/// A service dataplane (eBPF maps or iptables rules).
#[async_trait]
pub trait Dataplane: Send {
    fn mode(&self) -> &'static str;
    /// Make the kernel match `state`, writing only what changed. `changed`: the service
    /// ports that may differ from the previous successful sync's state (everything else is
    /// as it was then); `None`: compare everything.
    ///
    /// `Ok`: the sync ran through; [`SyncReport::incomplete`] says whether everything was
    /// programmed and [`SyncReport::full_maps`] which maps were full. `Err`: it failed and
    /// nothing is known about what the dataplane holds.
    async fn sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<SyncReport>;
    /// Entries and capacity of each of the dataplane's kernel maps, asked after every sync
    /// (success or not) for the `skiff_bpf_map_entries` gauges; cheap. None by default.
    fn map_fill(&mut self) -> Vec<MapFill> {
        Vec::new()
    }
}
