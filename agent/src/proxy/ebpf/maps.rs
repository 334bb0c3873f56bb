//! The pinned maps: the kernel-touching edge of the reconciler ([`Table`], [`LbStore`]), and
//! read-only views for inspection without a running agent ([`PinnedMaps::open`]).
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::marker::PhantomData;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::Pod;
use aya::maps::{Map, MapData, MapError};
use serde::Serialize;
use skiff_ebpf_common::{
    AFF_CLIENT_IP, AffinityKey, AffinityMatchKey, AffinityValue, BE_LOCAL, Backend, CT_ORIGINAL,
    CT_SNAT, CtEntry, CtKey, FE_AFFINITY, FE_EXTERNAL_IP, FE_EXTERNAL_LOCAL, FE_HOSTPORT,
    FE_LOADBALANCER, FE_NODEPORT, FE_SRC_RANGE, Frontend, FrontendKey, PROTO_TCP, PROTO_UDP,
    RevNat, SCOPE_EXTERNAL, SCOPE_INTERNAL, SlotKey, SockRev, SockRevKey, SrcRangeKey, ip_from_raw,
    ip_raw, names, port_from_raw, port_raw,
};

/// The userspace-only map holding each frontend's service name (revNAT id → NUL-padded UTF-8),
/// so `skiff-agent bpf lb list` can name services without the API.
pub const SVC_NAMES: &str = "skiff_svc_names";
/// Bytes of a service name in [`SVC_NAMES`].
pub const SVC_NAME_LEN: usize = 192;
pub type SvcName = [u8; SVC_NAME_LEN];

/// The agent flag that sets the size of map `name` (what to raise when it is full).
pub fn size_flag(map: &str) -> Option<&'static str> {
    Some(match map {
        names::FRONTENDS | names::REVNAT | SVC_NAMES => "--bpf-lb-frontends",
        names::BACKENDS => "--bpf-lb-backends",
        names::SLOTS | names::AFF_MATCH | names::SRC_RANGE => "--bpf-lb-slots",
        names::AFFINITY => "--bpf-lb-affinity",
        names::SOCK_REVNAT => "--bpf-lb-sock-rev",
        names::CT => "--bpf-ct-max",
        _ => return None,
    })
}

/// Every pinned map, with the kind of entry it holds.
pub const ALL_MAPS: [&str; 10] = [
    names::FRONTENDS,
    names::SLOTS,
    names::BACKENDS,
    names::REVNAT,
    names::AFFINITY,
    names::AFF_MATCH,
    names::SOCK_REVNAT,
    names::CT,
    names::SRC_RANGE,
    SVC_NAMES,
];

/// A map operation failed; a full map is its own case so callers can report it by name.
#[derive(Debug, thiserror::Error)]
pub enum MapOpError {
    #[error("BPF map {map} is full ({max_entries} entries): raise its size flag")]
    Full { map: &'static str, max_entries: u32 },
    #[error("BPF map {map}: {op}: {source}")]
    Sys {
        map: &'static str,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl MapOpError {
    pub fn map(&self) -> &'static str {
        match self {
            MapOpError::Full { map, .. } | MapOpError::Sys { map, .. } => map,
        }
    }
    fn from_aya(map: &'static str, op: &'static str, max_entries: u32, e: MapError) -> Self {
        let source = match e {
            MapError::SyscallError(s) => s.io_error,
            MapError::KeyNotFound => io::Error::from_raw_os_error(nix::libc::ENOENT),
            other => io::Error::other(other.to_string()),
        };
        // E2BIG: a hash map at max_entries. (ENOMEM: a non-preallocated one that cannot grow.)
        if op == "update" && source.raw_os_error() == Some(nix::libc::E2BIG) {
            return MapOpError::Full { map, max_entries };
        }
        MapOpError::Sys { map, op, source }
    }
}

/// One map as the reconciler sees it.
pub trait Table<K, V> {
    fn name(&self) -> &'static str;
    fn max_entries(&self) -> u32;
    fn entries(&self) -> Result<Vec<(K, V)>, MapOpError>;
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapOpError>;
    /// Deleting a missing key is not an error.
    fn delete(&mut self, key: &K) -> Result<(), MapOpError>;
}

/// The maps the reconciler writes. Implemented by [`PinnedMaps`] (the kernel) and by an
/// in-memory fake in the unit tests.
pub trait LbStore {
    fn frontends(&mut self) -> &mut dyn Table<FrontendKey, Frontend>;
    fn slots(&mut self) -> &mut dyn Table<SlotKey, u32>;
    fn backends(&mut self) -> &mut dyn Table<u32, Backend>;
    fn revnat(&mut self) -> &mut dyn Table<u32, RevNat>;
    fn aff_match(&mut self) -> &mut dyn Table<AffinityMatchKey, u32>;
    fn src_range(&mut self) -> &mut dyn Table<SrcRangeKey, u32>;
    fn svc_names(&mut self) -> &mut dyn Table<u32, SvcName>;
    /// Fill of the maps only the programs write ([`PROGRAM_MAPS`]: session affinity, socket
    /// reverse NAT, conntrack), which the reconciler does not mirror: counted by walking their
    /// keys (one syscall per entry), so callers do it sparingly.
    fn program_maps_fill(&self) -> Result<Vec<MapFill>, MapOpError>;
}

/// The [`LbStore`] accessors of a struct holding the six tables in fields named as the
/// methods (the names map's field given).
macro_rules! lb_store_tables {
    ($svc_names:ident) => {
        fn frontends(&mut self) -> &mut dyn Table<FrontendKey, Frontend> {
            &mut self.frontends
        }
        fn slots(&mut self) -> &mut dyn Table<SlotKey, u32> {
            &mut self.slots
        }
        fn backends(&mut self) -> &mut dyn Table<u32, Backend> {
            &mut self.backends
        }
        fn revnat(&mut self) -> &mut dyn Table<u32, RevNat> {
            &mut self.revnat
        }
        fn aff_match(&mut self) -> &mut dyn Table<AffinityMatchKey, u32> {
            &mut self.aff_match
        }
        fn src_range(&mut self) -> &mut dyn Table<SrcRangeKey, u32> {
            &mut self.src_range
        }
        fn svc_names(&mut self) -> &mut dyn Table<u32, SvcName> {
            &mut self.$svc_names
        }
    };
}
pub(crate) use lb_store_tables;

/// The maps the programs write and the agent only reads, in [`ALL_MAPS`] order.
pub const PROGRAM_MAPS: [&str; 3] = [names::AFFINITY, names::SOCK_REVNAT, names::CT];

/// A typed BPF hash (or LRU hash) map.
pub struct BpfTable<K, V> {
    name: &'static str,
    max_entries: u32,
    map: aya::maps::HashMap<MapData, K, V>,
    _kv: PhantomData<(K, V)>,
}

impl<K: Pod, V: Pod> BpfTable<K, V> {
    pub fn new(name: &'static str, data: MapData) -> anyhow::Result<Self> {
        let map = Map::from_map_data(data).map_err(|e| anyhow::anyhow!("BPF map {name}: {e}"))?;
        Self::from_map(name, map)
    }

    pub fn from_map(name: &'static str, map: Map) -> anyhow::Result<Self> {
        use aya::maps::IterableMap;
        let map: aya::maps::HashMap<MapData, K, V> = aya::maps::HashMap::try_from(map)
            .map_err(|e| anyhow::anyhow!("BPF map {name}: {e}"))?;
        let max_entries = map
            .map()
            .info()
            .map(|i| i.max_entries())
            .map_err(|e| anyhow::anyhow!("BPF map {name}: info: {e}"))?;
        Ok(BpfTable {
            name,
            max_entries,
            map,
            _kv: PhantomData,
        })
    }

    pub fn from_pin(name: &'static str, path: &Path) -> anyhow::Result<Self> {
        let data = MapData::from_pin(path)
            .map_err(|e| anyhow::anyhow!("open pinned BPF map {}: {e}", path.display()))?;
        Self::new(name, data)
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, MapOpError> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(MapOpError::from_aya(
                self.name,
                "lookup",
                self.max_entries,
                e,
            )),
        }
    }

    /// Number of entries (walks the keys).
    pub fn count(&self) -> Result<usize, MapOpError> {
        let mut n = 0;
        for k in self.map.keys() {
            k.map_err(|e| MapOpError::from_aya(self.name, "iterate", self.max_entries, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Entries (walking the keys) and capacity.
    pub fn fill(&self) -> Result<MapFill, MapOpError> {
        Ok(MapFill {
            name: self.name.to_string(),
            entries: self.count()?,
            max_entries: self.max_entries,
        })
    }
}

impl<K: Pod, V: Pod> Table<K, V> for BpfTable<K, V> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn max_entries(&self) -> u32 {
        self.max_entries
    }
    fn entries(&self) -> Result<Vec<(K, V)>, MapOpError> {
        let mut out = Vec::new();
        for kv in self.map.iter() {
            match kv {
                Ok(kv) => out.push(kv),
                // An entry deleted (e.g. evicted from an LRU) between next_key and lookup.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => {
                    return Err(MapOpError::from_aya(
                        self.name,
                        "iterate",
                        self.max_entries,
                        e,
                    ));
                }
            }
        }
        Ok(out)
    }
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapOpError> {
        self.map
            .insert(key, value, 0)
            .map_err(|e| MapOpError::from_aya(self.name, "update", self.max_entries, e))
    }
    fn delete(&mut self, key: &K) -> Result<(), MapOpError> {
        match self.map.remove(key) {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(MapOpError::from_aya(
                self.name,
                "delete",
                self.max_entries,
                e,
            )),
        }
    }
}

/// The dataplane's maps, opened from their pins (or handed over by the loader).
pub struct PinnedMaps {
    pub frontends: BpfTable<FrontendKey, Frontend>,
    pub slots: BpfTable<SlotKey, u32>,
    pub backends: BpfTable<u32, Backend>,
    pub revnat: BpfTable<u32, RevNat>,
    pub affinity: BpfTable<AffinityKey, AffinityValue>,
    pub aff_match: BpfTable<AffinityMatchKey, u32>,
    pub sock_rev: BpfTable<SockRevKey, SockRev>,
    pub ct: BpfTable<CtKey, CtEntry>,
    pub src_range: BpfTable<SrcRangeKey, u32>,
    pub svc_names: BpfTable<u32, SvcName>,
}

/// Where map `name` is pinned under an agent's `--bpffs` directory.
pub fn map_pin_path(bpffs_dir: &Path, name: &str) -> PathBuf {
    bpffs_dir.join("maps").join(name)
}

impl LbStore for PinnedMaps {
    lb_store_tables!(svc_names);
    fn program_maps_fill(&self) -> Result<Vec<MapFill>, MapOpError> {
        Ok(vec![
            self.affinity.fill()?,
            self.sock_rev.fill()?,
            self.ct.fill()?,
        ])
    }
}

/// A frontend with everything it points at, for `bpf lb list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendEntry {
    /// `namespace/name:port` (empty if the names map has no entry).
    pub service: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub rev_nat_id: u32,
    /// What the frontend is: `ClusterIP`, `NodePort`, `ExternalIP`, `LoadBalancer` or
    /// `HostPort`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `internal` for the node's own sockets' view of a frontend with a second scope (see
    /// `SCOPE_INTERNAL`), else `external`.
    pub scope: &'static str,
    pub nodeport: bool,
    pub external_local: bool,
    /// `loadBalancerSourceRanges` are enforced: the client networks allowed.
    pub source_ranges: Option<Vec<String>>,
    /// Session-affinity timeout (seconds), if `ClientIP` affinity is on.
    pub affinity_timeout: Option<u32>,
    /// Slot `i` → backend (`None`: the slot entry or its backend is missing).
    pub slots: Vec<Option<BackendEntry>>,
}

/// A backend, for `bpf backends` (and inside [`FrontendEntry::slots`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BackendEntry {
    pub id: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub local: bool,
}

/// A session-affinity entry, for `bpf affinity`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityEntry {
    /// `netns:<cookie>` (socket LB) or the client IP (NodePort).
    pub client: String,
    pub rev_nat_id: u32,
    pub service: String,
    pub backend_id: u32,
    /// Seconds since the entry was last used.
    pub idle_secs: u64,
}

/// A NodePort conntrack entry, for `bpf ct`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CtFlow {
    /// `original` (client → node port) or `reply` (backend → client).
    pub direction: String,
    pub protocol: String,
    pub src: String,
    pub dst: String,
    /// What the packet is rewritten to: `dst` for original, `src → dst` for reply.
    pub nat: String,
    pub snat: bool,
    pub rev_nat_id: u32,
    pub backend_id: u32,
    pub idle_secs: u64,
}

/// Fill level of one map (defined with the dataplane boundary, which reports it).
pub use crate::proxy::dataplane::MapFill;

pub(crate) fn proto_str(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        other => other.to_string(),
    }
}

fn ip(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip_from_raw(raw))
}

pub(crate) fn name_from_bytes(b: &SvcName) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(crate) fn name_to_bytes(s: &str) -> SvcName {
    let mut out = [0u8; SVC_NAME_LEN];
    // Truncate on a char boundary, leaving a NUL.
    let mut n = s.len().min(SVC_NAME_LEN - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// `CLOCK_MONOTONIC` seconds: the clock the kernel side stamps entries with.
pub fn monotonic_secs() -> u64 {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64
}

impl PinnedMaps {
    /// Open every map pinned under `bpffs_dir` (an agent's `--bpffs`), without loading or
    /// attaching anything: works whether or not the agent runs.
    pub fn open(bpffs_dir: &Path) -> anyhow::Result<PinnedMaps> {
        let p = |n| map_pin_path(bpffs_dir, n);
        Ok(PinnedMaps {
            frontends: BpfTable::from_pin(names::FRONTENDS, &p(names::FRONTENDS))?,
            slots: BpfTable::from_pin(names::SLOTS, &p(names::SLOTS))?,
            backends: BpfTable::from_pin(names::BACKENDS, &p(names::BACKENDS))?,
            revnat: BpfTable::from_pin(names::REVNAT, &p(names::REVNAT))?,
            affinity: BpfTable::from_pin(names::AFFINITY, &p(names::AFFINITY))?,
            aff_match: BpfTable::from_pin(names::AFF_MATCH, &p(names::AFF_MATCH))?,
            sock_rev: BpfTable::from_pin(names::SOCK_REVNAT, &p(names::SOCK_REVNAT))?,
            ct: BpfTable::from_pin(names::CT, &p(names::CT))?,
            src_range: BpfTable::from_pin(names::SRC_RANGE, &p(names::SRC_RANGE))?,
            svc_names: BpfTable::from_pin(SVC_NAMES, &p(SVC_NAMES))?,
        })
    }

    fn names_by_id(&self) -> Result<HashMap<u32, String>, MapOpError> {
        Ok(self
            .svc_names
            .entries()?
            .into_iter()
            .map(|(id, n)| (id, name_from_bytes(&n)))
            .collect())
    }

    /// Every backend, by id.
    pub fn backends(&self) -> Result<Vec<BackendEntry>, MapOpError> {
        let mut out: Vec<BackendEntry> = self
            .backends
            .entries()?
            .into_iter()
            .map(|(id, b)| backend_entry(id, &b))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every frontend with its service name, revNAT id and slots → backends, sorted by
    /// service name then address.
    pub fn frontends(&self) -> Result<Vec<FrontendEntry>, MapOpError> {
        let names = self.names_by_id()?;
        let backends: HashMap<u32, Backend> = self.backends.entries()?.into_iter().collect();
        let mut slots: HashMap<u32, BTreeMap<u32, u32>> = HashMap::new();
        for (k, id) in self.slots.entries()? {
            slots.entry(k.rev_nat_id).or_default().insert(k.slot, id);
        }
        let mut ranges: HashMap<u32, Vec<String>> = HashMap::new();
        for (k, _) in self.src_range.entries()? {
            let net = format!("{}/{}", ip(k.addr), k.prefix_len);
            ranges.entry(k.rev_nat_id).or_default().push(net);
        }
        let mut out = Vec::new();
        for (k, fe) in self.frontends.entries()? {
            let set = slots.get(&fe.rev_nat_id);
            let slots = (0..fe.count)
                .map(|i| {
                    let id = *set?.get(&i)?;
                    backends.get(&id).map(|b| backend_entry(id, b))
                })
                .collect();
            let service = names.get(&fe.rev_nat_id).cloned().unwrap_or_default();
            let mut e = frontend_entry(service, &k, &fe, slots);
            if let Some(r) = e.source_ranges.as_mut() {
                *r = ranges.get(&fe.rev_nat_id).cloned().unwrap_or_default();
                r.sort();
            }
            out.push(e);
        }
        out.sort_by(|a, b| {
            (&a.service, a.ip, a.port, &a.protocol).cmp(&(&b.service, b.ip, b.port, &b.protocol))
        });
        Ok(out)
    }

    /// One frontend, looked up by key (a handful of map lookups, not a walk of every map):
    /// for watching a single service change.
    pub fn frontend(
        &self,
        vip: Ipv4Addr,
        port: u16,
        protocol: u8,
    ) -> Result<Option<FrontendEntry>, MapOpError> {
        let key = FrontendKey {
            addr: ip_raw(vip.octets()),
            port: port_raw(port),
            proto: protocol,
            scope: SCOPE_EXTERNAL,
        };
        let Some(fe) = self.frontends.get(&key)? else {
            return Ok(None);
        };
        let mut slots = Vec::with_capacity(fe.count as usize);
        for slot in 0..fe.count {
            let id = self.slots.get(&SlotKey {
                rev_nat_id: fe.rev_nat_id,
                slot,
            })?;
            let backend = match id {
                Some(id) => self.backends.get(&id)?.map(|b| backend_entry(id, &b)),
                None => None,
            };
            slots.push(backend);
        }
        let service = self
            .svc_names
            .get(&fe.rev_nat_id)?
            .map(|n| name_from_bytes(&n))
            .unwrap_or_default();
        let mut e = frontend_entry(service, &key, &fe, slots);
        if let Some(r) = e.source_ranges.as_mut() {
            for (k, _) in self.src_range.entries()? {
                if k.rev_nat_id == fe.rev_nat_id {
                    r.push(format!("{}/{}", ip(k.addr), k.prefix_len));
                }
            }
            r.sort();
        }
        Ok(Some(e))
    }

    /// Session-affinity entries.
    pub fn affinity(&self) -> Result<Vec<AffinityEntry>, MapOpError> {
        let names = self.names_by_id()?;
        let now = monotonic_secs();
        let mut out: Vec<AffinityEntry> = self
            .affinity
            .entries()?
            .into_iter()
            .map(|(k, v)| AffinityEntry {
                client: if k.kind == AFF_CLIENT_IP {
                    ip(k.client as u32).to_string()
                } else {
                    format!("netns:{}", k.client)
                },
                rev_nat_id: k.rev_nat_id,
                service: names.get(&k.rev_nat_id).cloned().unwrap_or_default(),
                backend_id: v.backend_id,
                idle_secs: now.saturating_sub(u64::from(v.last_used)),
            })
            .collect();
        out.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
        Ok(out)
    }

    /// NodePort conntrack entries.
    pub fn conntrack(&self) -> Result<Vec<CtFlow>, MapOpError> {
        let now = monotonic_secs();
        let ep = |a: u32, p: u16| format!("{}:{}", ip(a), port_from_raw(p));
        let mut out: Vec<CtFlow> = self
            .ct
            .entries()?
            .into_iter()
            .map(|(k, v)| {
                let original = k.dir == CT_ORIGINAL;
                let snat = v.flags & CT_SNAT != 0;
                CtFlow {
                    direction: if original { "original" } else { "reply" }.into(),
                    protocol: proto_str(k.proto),
                    src: ep(k.saddr, k.sport),
                    dst: ep(k.daddr, k.dport),
                    nat: if original {
                        if snat {
                            format!("{} → {}", ep(v.nat_addr, v.nat_port), ep(v.addr, v.port))
                        } else {
                            ep(v.addr, v.port)
                        }
                    } else {
                        format!("{} → {}", ep(v.nat_addr, v.nat_port), ep(v.addr, v.port))
                    },
                    snat,
                    rev_nat_id: v.rev_nat_id,
                    backend_id: v.backend_id,
                    idle_secs: now.saturating_sub(u64::from(v.last_seen)),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.src, &a.dst, &a.direction).cmp(&(&b.src, &b.dst, &b.direction)));
        Ok(out)
    }

    /// Fill level of every map.
    pub fn fill(&self) -> Result<Vec<MapFill>, MapOpError> {
        Ok(vec![
            self.frontends.fill()?,
            self.slots.fill()?,
            self.backends.fill()?,
            self.revnat.fill()?,
            self.affinity.fill()?,
            self.aff_match.fill()?,
            self.sock_rev.fill()?,
            self.ct.fill()?,
            self.src_range.fill()?,
            self.svc_names.fill()?,
        ])
    }
}

/// What a frontend with `flags` is, for `bpf lb list`.
pub fn frontend_kind(flags: u8) -> &'static str {
    if flags & FE_HOSTPORT != 0 {
        "HostPort"
    } else if flags & FE_LOADBALANCER != 0 {
        "LoadBalancer"
    } else if flags & FE_EXTERNAL_IP != 0 {
        "ExternalIP"
    } else if flags & FE_NODEPORT != 0 {
        "NodePort"
    } else {
        "ClusterIP"
    }
}

/// Frontend `k` → `fe` as `bpf lb list` shows it (source ranges empty, filled in by the
/// caller when `FE_SRC_RANGE` is set).
fn frontend_entry(
    service: String,
    k: &FrontendKey,
    fe: &Frontend,
    slots: Vec<Option<BackendEntry>>,
) -> FrontendEntry {
    FrontendEntry {
        service,
        ip: ip(k.addr),
        port: port_from_raw(k.port),
        protocol: proto_str(k.proto),
        rev_nat_id: fe.rev_nat_id,
        kind: frontend_kind(fe.flags),
        scope: if k.scope == SCOPE_INTERNAL {
            "internal"
        } else {
            "external"
        },
        nodeport: fe.flags & FE_NODEPORT != 0,
        external_local: fe.flags & FE_EXTERNAL_LOCAL != 0,
        source_ranges: (fe.flags & FE_SRC_RANGE != 0).then(Vec::new),
        affinity_timeout: (fe.flags & FE_AFFINITY != 0).then_some(fe.affinity_timeout),
        slots,
    }
}

fn backend_entry(id: u32, b: &Backend) -> BackendEntry {
    BackendEntry {
        id,
        ip: ip(b.addr),
        port: port_from_raw(b.port),
        protocol: proto_str(b.proto),
        local: b.flags & BE_LOCAL != 0,
    }
}
