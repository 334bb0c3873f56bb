//! Load the embedded eBPF object, reuse (or create) the pinned maps, attach the programs through
//! pinned bpf_links — or swap new programs into the links a previous agent left — and undo it
//! all in [`cleanup`].
//!
//! Pins under an agent's `--bpffs` directory:
//! - `maps/<map name>`: every map of [`super::maps::ALL_MAPS`];
//! - `links/<program name>`: one bpf_link per attached program.
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Map, MapData, MapInfo, MapType};
use aya::{Ebpf, EbpfLoader, Pod};
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, CtEntry, CtKey, Frontend, FrontendKey,
    RevNat, SlotKey, SockRev, SockRevKey, SrcRangeKey, globals, ip_raw, names,
};
use tracing::{debug, info, warn};

use super::maps::{BpfTable, PinnedMaps, SVC_NAME_LEN, SVC_NAMES, SvcName, Table, map_pin_path};
use super::programs::{self, cgroup_sock_addr, tc};
use super::sys;

/// The programs, built by build.rs (empty when built with `SKIFF_EBPF_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/skiff-ebpf"));

/// `max_entries` of each map. The agent's flags set them ([`super::MapSizeFlags`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Frontends (ClusterIP and NodePort service ports); also the revNAT and names maps.
    pub frontends: u32,
    /// Distinct backends (ip, port, protocol).
    pub backends: u32,
    /// Backend slots summed over all frontends; also the affinity-match map.
    pub slots: u32,
    /// Session-affinity entries (LRU).
    pub affinity: u32,
    /// Socket reverse-NAT entries (LRU): translated sockets with replies in flight.
    pub sock_rev: u32,
    /// NodePort conntrack entries (LRU; two per flow).
    pub ct: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            frontends: 32_768,
            backends: 65_536,
            slots: 131_072,
            affinity: 65_536,
            sock_rev: 131_072,
            ct: 131_072,
        }
    }
}

struct MapSpec {
    name: &'static str,
    lru: bool,
    key: usize,
    value: usize,
    max: u32,
}

fn specs(s: &MapSizes) -> Vec<MapSpec> {
    fn spec<K, V>(name: &'static str, lru: bool, max: u32) -> MapSpec {
        MapSpec {
            name,
            lru,
            key: size_of::<K>(),
            value: size_of::<V>(),
            max: max.max(1),
        }
    }
    vec![
        spec::<FrontendKey, Frontend>(names::FRONTENDS, false, s.frontends),
        spec::<SlotKey, u32>(names::SLOTS, false, s.slots),
        spec::<u32, Backend>(names::BACKENDS, false, s.backends),
        spec::<u32, RevNat>(names::REVNAT, false, s.frontends),
        spec::<AffinityKey, AffinityValue>(names::AFFINITY, true, s.affinity),
        spec::<AffinityMatchKey, u32>(names::AFF_MATCH, false, s.slots),
        spec::<SockRevKey, SockRev>(names::SOCK_REVNAT, true, s.sock_rev),
        spec::<CtKey, CtEntry>(names::CT, true, s.ct),
        spec::<SrcRangeKey, u32>(names::SRC_RANGE, false, s.slots),
        spec::<u32, SvcName>(SVC_NAMES, false, s.frontends),
    ]
}

/// How a pinned map compares with what this agent wants.
enum PinState {
    Missing,
    Compatible,
    /// Same layout, other size: migrate the entries into a new map.
    Resize(u32),
    /// Another layout (an agent of another version): start empty.
    Incompatible(String),
}

fn pin_state(path: &Path, spec: &MapSpec) -> PinState {
    if fs::symlink_metadata(path).is_err() {
        return PinState::Missing;
    }
    let info = match MapInfo::from_pin(path) {
        Ok(i) => i,
        Err(e) => return PinState::Incompatible(format!("unreadable: {e}")),
    };
    let want = if spec.lru {
        MapType::LruHash
    } else {
        MapType::Hash
    };
    let ty = info.map_type().ok();
    if ty != Some(want)
        || info.key_size() as usize != spec.key
        || info.value_size() as usize != spec.value
    {
        return PinState::Incompatible(format!(
            "type {ty:?} key {} value {}, want {want:?} key {} value {}",
            info.key_size(),
            info.value_size(),
            spec.key,
            spec.value
        ));
    }
    if info.max_entries() != spec.max {
        return PinState::Resize(info.max_entries());
    }
    PinState::Compatible
}

/// Everything [`load`] needs.
pub struct LoadConfig<'a> {
    pub bpffs_dir: &'a Path,
    pub cgroup_root: &'a Path,
    pub uplink: Option<&'a str>,
    pub node_ip: Option<Ipv4Addr>,
    pub sizes: MapSizes,
    pub debug_log: bool,
}

pub use super::programs::AttachReport;

/// The loaded dataplane: its maps, and the debug-log reader if on.
pub struct Loaded {
    pub maps: PinnedMaps,
    pub report: AttachReport,
    pub logger: Option<LogReader>,
}

/// Reads aya-log records from the programs on a thread until dropped.
pub struct LogReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}

/// Whether the embedded object holds programs (false when built with `SKIFF_EBPF_SKIP=1`).
pub fn programs_built() -> bool {
    !OBJECT.is_empty()
}

/// Load the programs and attach them (see the module doc); the maps keep the entries a
/// previous agent pinned.
pub fn load(cfg: &LoadConfig<'_>) -> Result<Loaded> {
    if !programs_built() {
        bail!(
            "this skiff-agent was built with SKIFF_EBPF_SKIP=1: it has no eBPF programs (rebuild without it, or use --proxy-mode iptables)"
        );
    }
    let dir = cfg.bpffs_dir;
    prepare_pin_dirs(dir)?;
    let mut report = AttachReport::default();
    let specs = specs(&cfg.sizes);
    let resized = check_pinned_maps(dir, &specs, &mut report)?;
    let mut ebpf = load_object(dir, &specs, cfg)?;
    let names_data = open_names_map(dir, &specs)?;
    let mut maps = take_maps(&mut ebpf, names_data)?;
    // Before any program uses the new maps.
    migrate_resized(&mut maps, dir, resized)?;
    attach_programs(&mut ebpf, cfg, &mut report)?;
    let logger = if cfg.debug_log {
        Some(start_log_reader(&mut ebpf)?)
    } else {
        None
    };
    debug!(?report, "eBPF dataplane loaded");
    Ok(Loaded {
        maps,
        report,
        logger,
    })
}

/// `dir` and its `maps` and `links`, on a bpffs mount.
fn prepare_pin_dirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if !sys::is_bpffs(dir).with_context(|| format!("statfs {}", dir.display()))? {
        bail!(
            "{} is not on a bpffs mount (pins need one): `mount -t bpf bpf /sys/fs/bpf` and use a directory below it",
            dir.display()
        );
    }
    for sub in ["maps", "links"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("create {}", dir.join(sub).display()))?;
    }
    Ok(())
}

/// Compare the pinned maps with `specs`: keep compatible ones, move resized ones aside for
/// migration (returned), drop incompatible ones.
fn check_pinned_maps(
    dir: &Path,
    specs: &[MapSpec],
    report: &mut AttachReport,
) -> Result<Vec<&'static str>> {
    let mut resized = Vec::new();
    for spec in specs {
        let pin = map_pin_path(dir, spec.name);
        match pin_state(&pin, spec) {
            PinState::Missing => report.maps_created.push(spec.name.into()),
            PinState::Compatible => report.maps_reused.push(spec.name.into()),
            PinState::Resize(old) => {
                let aside = pin.with_extension("old");
                let _ = fs::remove_file(&aside);
                fs::rename(&pin, &aside)
                    .with_context(|| format!("move {} aside", pin.display()))?;
                info!(
                    map = spec.name,
                    old,
                    new = spec.max,
                    "resizing pinned BPF map; entries are migrated"
                );
                resized.push(spec.name);
                report.maps_resized.push(spec.name.into());
            }
            PinState::Incompatible(why) => {
                warn!(map = spec.name, %why, "pinned BPF map has another layout; recreating it empty");
                fs::remove_file(&pin).with_context(|| format!("unpin {}", pin.display()))?;
                report.maps_recreated.push(spec.name.into());
            }
        }
    }
    Ok(resized)
}

/// The object, with its maps pinned (aya reuses a pin when present) and its globals set.
fn load_object(dir: &Path, specs: &[MapSpec], cfg: &LoadConfig<'_>) -> Result<Ebpf> {
    let node_ip = cfg.node_ip.map_or(0, |ip| ip_raw(ip.octets()));
    let log_level: u8 = if cfg.debug_log {
        aya_log::Level::Debug as u8
    } else {
        0
    };
    let mut loader = EbpfLoader::new();
    for spec in specs.iter().filter(|s| s.name != SVC_NAMES) {
        loader.map_pin_path(spec.name, map_pin_path(dir, spec.name));
        loader.map_max_entries(spec.name, spec.max);
    }
    loader.override_global(globals::NODE_IP, &node_ip, true);
    // Frontends on 127.0.0.1 are the node's own: the programs compare a socket's netns with it.
    let host_netns = super::sys::netns_cookie().context("read this network namespace's cookie")?;
    loader.override_global(globals::HOST_NETNS, &host_netns, true);
    loader.override_global(aya_log::LEVEL, &log_level, false);
    loader.load(OBJECT).context("load the eBPF object")
}

/// The names map, pinned. It is userspace-only, so not in the object: created by hand (with
/// no preallocation: names are big).
fn open_names_map(dir: &Path, specs: &[MapSpec]) -> Result<MapData> {
    let names_spec = specs
        .iter()
        .find(|s| s.name == SVC_NAMES)
        .expect("names spec");
    let names_pin = map_pin_path(dir, SVC_NAMES);
    if let Ok(m) = MapData::from_pin(&names_pin) {
        return Ok(m);
    }
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let obj = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_HASH,
        4,
        SVC_NAME_LEN as u32,
        names_spec.max,
        BPF_F_NO_PREALLOC,
    );
    let m = MapData::create(obj, SVC_NAMES, None)
        .map_err(|e| anyhow!("create BPF map {SVC_NAMES}: {e}"))?;
    m.pin(&names_pin)
        .map_err(|e| anyhow!("pin {}: {e}", names_pin.display()))?;
    Ok(m)
}

/// The object's maps, typed, with the names map.
fn take_maps(ebpf: &mut Ebpf, names_data: MapData) -> Result<PinnedMaps> {
    let mut take = |name: &'static str| -> Result<Map> {
        ebpf.take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    };
    Ok(PinnedMaps {
        frontends: BpfTable::from_map(names::FRONTENDS, take(names::FRONTENDS)?)?,
        slots: BpfTable::from_map(names::SLOTS, take(names::SLOTS)?)?,
        backends: BpfTable::from_map(names::BACKENDS, take(names::BACKENDS)?)?,
        revnat: BpfTable::from_map(names::REVNAT, take(names::REVNAT)?)?,
        affinity: BpfTable::from_map(names::AFFINITY, take(names::AFFINITY)?)?,
        aff_match: BpfTable::from_map(names::AFF_MATCH, take(names::AFF_MATCH)?)?,
        sock_rev: BpfTable::from_map(names::SOCK_REVNAT, take(names::SOCK_REVNAT)?)?,
        ct: BpfTable::from_map(names::CT, take(names::CT)?)?,
        src_range: BpfTable::from_map(names::SRC_RANGE, take(names::SRC_RANGE)?)?,
        svc_names: BpfTable::new(SVC_NAMES, names_data)?,
    })
}

/// Copy the entries of the maps moved aside by [`check_pinned_maps`] into the new ones.
fn migrate_resized(maps: &mut PinnedMaps, dir: &Path, resized: Vec<&'static str>) -> Result<()> {
    for name in resized {
        let aside = map_pin_path(dir, name).with_extension("old");
        let n = migrate(maps, name, &aside).with_context(|| format!("migrate BPF map {name}"))?;
        info!(map = name, entries = n, "migrated pinned BPF map");
        let _ = fs::remove_file(&aside);
    }
    Ok(())
}

/// The programs, behind their pinned links: socket LB on the cgroup; NodePort on the uplink,
/// or (no uplink any more) the NodePort programs a previous run attached taken away.
fn attach_programs(ebpf: &mut Ebpf, cfg: &LoadConfig<'_>, report: &mut AttachReport) -> Result<()> {
    let links = links_dir(cfg.bpffs_dir);
    cgroup_sock_addr::attach(ebpf, &links, cfg.cgroup_root, report)?;
    match cfg.uplink {
        Some(ifname) => tc::attach(ebpf, &links, ifname, report),
        None => tc::detach(&links, report),
    }
}

fn copy_entries<K: Pod, V: Pod>(new: &mut BpfTable<K, V>, old: &Path) -> Result<usize> {
    let old: BpfTable<K, V> = BpfTable::from_pin(new.name(), old)?;
    let mut n = 0;
    for (k, v) in old.entries()? {
        match new.put(&k, &v) {
            Ok(()) => n += 1,
            // Shrunk below the number of entries: the rest is reported, not silently lost.
            Err(e) => bail!("{e} (after copying {n} entries)"),
        }
    }
    Ok(n)
}

fn migrate(maps: &mut PinnedMaps, name: &str, old: &Path) -> Result<usize> {
    match name {
        names::FRONTENDS => copy_entries(&mut maps.frontends, old),
        names::SLOTS => copy_entries(&mut maps.slots, old),
        names::BACKENDS => copy_entries(&mut maps.backends, old),
        names::REVNAT => copy_entries(&mut maps.revnat, old),
        names::AFFINITY => copy_entries(&mut maps.affinity, old),
        names::AFF_MATCH => copy_entries(&mut maps.aff_match, old),
        names::SOCK_REVNAT => copy_entries(&mut maps.sock_rev, old),
        names::CT => copy_entries(&mut maps.ct, old),
        names::SRC_RANGE => copy_entries(&mut maps.src_range, old),
        SVC_NAMES => copy_entries(&mut maps.svc_names, old),
        other => bail!("unknown map {other}"),
    }
}

fn start_log_reader(ebpf: &mut Ebpf) -> Result<LogReader> {
    use std::os::fd::AsRawFd;
    let mut logger = aya_log::EbpfLogger::init(ebpf).context("aya-log")?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("skiff-bpf-log".into())
        .spawn(move || {
            let fd = logger.as_raw_fd();
            while !stop2.load(Ordering::Relaxed) {
                let mut pfd = nix::libc::pollfd {
                    fd,
                    events: nix::libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { nix::libc::poll(&mut pfd, 1, 200) };
                logger.flush();
            }
        })?;
    Ok(LogReader {
        stop,
        thread: Some(thread),
    })
}

/// What [`cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub links: Vec<String>,
    pub maps: Vec<String>,
    /// Unpinned skiff links found attached to the cgroup root and detached.
    pub swept: usize,
}

/// Detach every program and unpin every map an agent left under `bpffs_dir`; with
/// `cgroup_root`, also detach skiff cgroup links attached there that are not pinned (left by a
/// crash between attach and pin). Missing pieces are fine: cleanup is idempotent.
pub fn cleanup(bpffs_dir: &Path, cgroup_root: Option<&Path>) -> Result<CleanupReport> {
    let mut rep = CleanupReport::default();
    let links = links_dir(bpffs_dir);
    if let Ok(rd) = fs::read_dir(&links) {
        for e in rd.flatten() {
            programs::detach_pinned(&e.path())?;
            rep.links.push(e.file_name().to_string_lossy().into());
        }
    }
    if let Some(root) = cgroup_root {
        rep.swept = cgroup_sock_addr::sweep(root).unwrap_or_else(|e| {
            warn!(cgroup = %root.display(), error = %e, "sweeping skiff cgroup links");
            0
        });
    }
    let maps = bpffs_dir.join("maps");
    if let Ok(rd) = fs::read_dir(&maps) {
        for e in rd.flatten() {
            let p = e.path();
            match fs::remove_file(&p) {
                Ok(()) => rep.maps.push(e.file_name().to_string_lossy().into()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("unpin {}", p.display())),
            }
        }
    }
    for d in [&links, &maps] {
        let _ = fs::remove_dir(d);
    }
    // The node's directory itself, if now empty (never a parent).
    let _ = fs::remove_dir(bpffs_dir);
    rep.links.sort();
    rep.maps.sort();
    Ok(rep)
}
