//! The dataplane's maps. `max_entries` here are placeholders: the agent sets every size at load
//! time from its flags and pins the maps under its `--bpffs` directory.
use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use skiff_ebpf_common::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, CtEntry, CtKey, Frontend, FrontendKey,
    RevNat, SlotKey, SockRev, SockRevKey, SrcRangeKey,
};

/// (VIP, port, proto) → backend count, revNAT id, flags, affinity timeout.
#[map(name = "skiff_frontends")]
pub static FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::with_max_entries(1024, 0);

/// (revNAT id, slot) → backend id.
#[map(name = "skiff_slots")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::with_max_entries(1024, 0);

/// backend id → (ip, port).
#[map(name = "skiff_backends")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(1024, 0);

/// revNAT id → (VIP, port).
#[map(name = "skiff_revnat")]
pub static REVNAT: HashMap<u32, RevNat> = HashMap::with_max_entries(1024, 0);

/// (client, revNAT id) → (backend id, last used).
#[map(name = "skiff_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::with_max_entries(1024, 0);

/// (backend id, revNAT id) present ⇔ the backend still serves that frontend.
#[map(name = "skiff_aff_match")]
pub static AFF_MATCH: HashMap<AffinityMatchKey, u32> = HashMap::with_max_entries(1024, 0);

/// (socket cookie, backend ip, port) → the frontend the socket dialled.
#[map(name = "skiff_sock_rev")]
pub static SOCK_REV: LruHashMap<SockRevKey, SockRev> = LruHashMap::with_max_entries(1024, 0);

/// (revNAT id, client network) present ⇔ clients in it may use that frontend.
#[map(name = "skiff_src_range")]
pub static SRC_RANGE: HashMap<SrcRangeKey, u32> = HashMap::with_max_entries(1024, 0);

/// NodePort connection tracking.
#[map(name = "skiff_ct")]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(1024, 0);

/// The node IP (network byte order) NodePort frontends are keyed on; set at load time.
#[unsafe(no_mangle)]
pub static SKIFF_NODE_IP: Global<u32> = Global::new(0);

/// The cookie of the node's network namespace; set at load time. Only its sockets may use the
/// frontends on 127.0.0.1 (a pod's loopback is its own).
#[unsafe(no_mangle)]
pub static SKIFF_HOST_NETNS: Global<u64> = Global::new(0);

/// `CLOCK_MONOTONIC` seconds, the clock of `last_used`/`last_seen`.
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: a helper without arguments, allowed in every program type.
    (unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() } / 1_000_000_000) as u32
}
