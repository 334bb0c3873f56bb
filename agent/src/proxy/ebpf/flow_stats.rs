//! `skiff_flow_stats`: how many sockets this node's agents destroyed because their backend
//! left its Service, per IP protocol, in a pinned userspace-only map next to the proxy's
//! maps — so `skiff-agent bpf sockets` shows it with or without a running agent, and the
//! count survives agent restarts (the Prometheus counter counts per process).
use std::path::Path;

use anyhow::{Result, anyhow};
use aya::maps::{HashMap, MapData};
use serde::Serialize;

use super::maps::map_pin_path;
use crate::proxy::model::Protocol;

pub const FLOW_STATS: &str = "skiff_flow_stats";

/// One row of `bpf sockets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestroyedCount {
    pub protocol: String,
    pub destroyed: u64,
}

pub struct FlowStats {
    map: HashMap<MapData, u32, u64>,
}

impl FlowStats {
    /// The pinned map under `bpffs_dir`, created and pinned when missing.
    pub fn open_or_create(bpffs_dir: &Path) -> Result<FlowStats> {
        let pin = map_pin_path(bpffs_dir, FLOW_STATS);
        let data = match MapData::from_pin(&pin) {
            Ok(m) => m,
            Err(_) => {
                const BPF_MAP_TYPE_HASH: u32 = 1;
                let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_HASH, 4, 8, 8, 0);
                let m = MapData::create(obj, FLOW_STATS, None)
                    .map_err(|e| anyhow!("create BPF map {FLOW_STATS}: {e}"))?;
                m.pin(&pin)
                    .map_err(|e| anyhow!("pin {}: {e}", pin.display()))?;
                m
            }
        };
        Self::from_data(data)
    }

    /// The pinned map under `bpffs_dir` (for reading).
    pub fn open(bpffs_dir: &Path) -> Result<FlowStats> {
        let pin = map_pin_path(bpffs_dir, FLOW_STATS);
        let data = MapData::from_pin(&pin)
            .map_err(|e| anyhow!("open pinned BPF map {}: {e}", pin.display()))?;
        Self::from_data(data)
    }

    fn from_data(data: MapData) -> Result<FlowStats> {
        let map = aya::maps::Map::from_map_data(data)
            .map_err(|e| anyhow!("BPF map {FLOW_STATS}: {e}"))?;
        let map = HashMap::try_from(map).map_err(|e| anyhow!("BPF map {FLOW_STATS}: {e}"))?;
        Ok(FlowStats { map })
    }

    /// Count `n` more destroyed sockets of `protocol`.
    pub fn add(&mut self, protocol: Protocol, n: u64) -> Result<()> {
        let key = u32::from(protocol.number());
        let now = self.map.get(&key, 0).unwrap_or(0);
        self.map
            .insert(key, now.saturating_add(n), 0)
            .map_err(|e| anyhow!("BPF map {FLOW_STATS}: {e}"))
    }

    /// The counts, UDP then TCP.
    pub fn read(&self) -> Vec<DestroyedCount> {
        [Protocol::Udp, Protocol::Tcp]
            .into_iter()
            .map(|p| DestroyedCount {
                protocol: p.as_str().to_string(),
                destroyed: self.map.get(&u32::from(p.number()), 0).unwrap_or(0),
            })
            .collect()
    }
}
