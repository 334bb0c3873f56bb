//! Map keys and values shared by skiff's eBPF programs (`skiff-ebpf`) and the node agent.
//!
//! The layout follows Cilium's lb4 maps: a *frontend* (VIP, port, protocol) names a slot set by
//! its reverse-NAT id; *slots* `0..count` of that set hold backend ids; *backends* hold the
//! address. Every struct is `#[repr(C)]` with explicit padding fields (hash keys are compared
//! byte-wise, so padding must be zeroed, which named fields make easy on both sides).
//!
//! Byte order: addresses and ports are stored exactly as they appear in packets and in
//! `struct bpf_sock_addr` — network byte order — so the kernel side never converts.
//! Use [`ip_raw`]/[`ip_from_raw`] and [`port_raw`]/[`port_from_raw`] on the userspace side.
#![no_std]

/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Map names as the kernel (and `bpftool map`) shows them: at most 15 bytes.
pub mod names {
    pub const FRONTENDS: &str = "skiff_frontends";
    pub const SLOTS: &str = "skiff_slots";
    pub const BACKENDS: &str = "skiff_backends";
    pub const REVNAT: &str = "skiff_revnat";
    pub const AFFINITY: &str = "skiff_affinity";
    pub const AFF_MATCH: &str = "skiff_aff_match";
    pub const SOCK_REVNAT: &str = "skiff_sock_rev";
    pub const CT: &str = "skiff_ct";
    pub const SRC_RANGE: &str = "skiff_src_range";
    /// Every pinned map, in a stable order.
    pub const ALL: [&str; 9] = [
        FRONTENDS,
        SLOTS,
        BACKENDS,
        REVNAT,
        AFFINITY,
        AFF_MATCH,
        SOCK_REVNAT,
        CT,
        SRC_RANGE,
    ];
}

/// Program names as `bpftool prog` shows them (at most 15 bytes).
pub mod programs {
    pub const CONNECT4: &str = "skiff_connect4";
    pub const SENDMSG4: &str = "skiff_sendmsg4";
    pub const RECVMSG4: &str = "skiff_recvmsg4";
    pub const GETPEERNAME4: &str = "skiff_peername4";
    pub const POST_BIND4: &str = "skiff_bind4";
    pub const POST_BIND6: &str = "skiff_bind6";
    pub const NODEPORT_INGRESS: &str = "skiff_np_in";
    pub const NODEPORT_EGRESS: &str = "skiff_np_out";
}

/// Names of the load-time constants (`.rodata` globals) the agent sets.
pub mod globals {
    /// `u32`, network byte order: the node IP NodePort frontends are reached on.
    pub const NODE_IP: &str = "SKIFF_NODE_IP";
    /// `u64`: the cookie of the node's network namespace (where frontends on 127.0.0.1 live).
    pub const HOST_NETNS: &str = "SKIFF_HOST_NETNS";
}

/// [`Frontend::flags`]: `sessionAffinity: ClientIP`.
pub const FE_AFFINITY: u8 = 1 << 0;
/// [`Frontend::flags`]: `externalTrafficPolicy: Local` (slots hold local backends only, no SNAT).
pub const FE_EXTERNAL_LOCAL: u8 = 1 << 1;
/// [`Frontend::flags`]: a NodePort frontend (node IP : node port), served by the tc program too.
pub const FE_NODEPORT: u8 = 1 << 2;
/// [`Frontend::flags`]: an external IP (`spec.externalIPs`), served by the tc program too.
pub const FE_EXTERNAL_IP: u8 = 1 << 3;
/// [`Frontend::flags`]: a LoadBalancer ingress address, served by the tc program too.
pub const FE_LOADBALANCER: u8 = 1 << 4;
/// [`Frontend::flags`]: a pod's hostPort, served by the tc program too.
pub const FE_HOSTPORT: u8 = 1 << 5;
/// [`Frontend::flags`]: only clients in the frontend's `skiff_src_range` entries may use it
/// (`loadBalancerSourceRanges`).
pub const FE_SRC_RANGE: u8 = 1 << 6;
/// The frontends traffic from outside reaches on the uplink (the tc program serves these).
pub const FE_FROM_OUTSIDE: u8 = FE_NODEPORT | FE_EXTERNAL_IP | FE_LOADBALANCER | FE_HOSTPORT;

/// [`FrontendKey::scope`]: the frontend as traffic from outside sees it (and the only one of
/// frontends without a second scope).
pub const SCOPE_EXTERNAL: u8 = 0;
/// [`FrontendKey::scope`]: the frontend as the node's own sockets see it, for frontends whose
/// outside view differs (`externalTrafficPolicy: Local`: outside traffic goes to local
/// backends only, in-cluster traffic to all — Cilium's two service scopes).
pub const SCOPE_INTERNAL: u8 = 1;

/// [`Backend::flags`]: the backend runs on this node.
pub const BE_LOCAL: u8 = 1 << 0;

/// [`AffinityKey::kind`]: the client is a network namespace (socket LB: netns cookie).
pub const AFF_CLIENT_NETNS: u32 = 0;
/// [`AffinityKey::kind`]: the client is an IPv4 address (NodePort from outside).
pub const AFF_CLIENT_IP: u32 = 1;

/// [`CtKey::dir`]: the client → node-port direction, as received on the uplink.
pub const CT_ORIGINAL: u8 = 0;
/// [`CtKey::dir`]: the backend → client direction, keyed as the reply packet looks.
pub const CT_REPLY: u8 = 1;

/// [`CtEntry::flags`]: the flow is source-NATed to the node IP (remote backend).
pub const CT_SNAT: u32 = 1 << 0;

/// `skiff_frontends` key: a service address as clients dial it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SCOPE_EXTERNAL`] or [`SCOPE_INTERNAL`].
    pub scope: u8,
}

/// `skiff_frontends` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Frontend {
    /// Reverse-NAT id; also names this frontend's slot set in `skiff_slots`.
    pub rev_nat_id: u32,
    /// Number of backend slots (`0..count`); 0 = no usable endpoint → reject.
    pub count: u32,
    /// Session-affinity timeout in seconds (with [`FE_AFFINITY`]).
    pub affinity_timeout: u32,
    /// `FE_*` bits.
    pub flags: u8,
    pub pad: [u8; 3],
}

/// `skiff_slots` key → backend id (`u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub rev_nat_id: u32,
    pub slot: u32,
}

/// `skiff_src_range` key → `u32` (1): clients in `addr/prefix_len` may use the frontend with
/// revNAT id `rev_nat_id` ([`FE_SRC_RANGE`]). A hash map probed once per prefix length, from
/// the longest, when a flow starts (Cilium keeps these in an LPM trie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SrcRangeKey {
    pub rev_nat_id: u32,
    /// The network address (host bits zero), network byte order.
    pub addr: u32,
    pub prefix_len: u8,
    pub pad: [u8; 3],
}

/// The network of `addr` (network byte order) at `prefix_len` bits.
#[inline(always)]
pub const fn mask_raw(addr: u32, prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        addr
    } else {
        // The mask in host order, turned into the stored (network) order.
        let mask = u32::MAX << (32 - prefix_len as u32);
        addr & mask.to_be()
    }
}

/// `skiff_backends` value (key: backend id `u32`, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `BE_*` bits.
    pub flags: u8,
}

/// `skiff_revnat` value (key: reverse-NAT id `u32`): the frontend a reply must appear from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNat {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// `skiff_affinity` key (LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Netns cookie ([`AFF_CLIENT_NETNS`]) or IPv4 address in network order ([`AFF_CLIENT_IP`]).
    pub client: u64,
    pub rev_nat_id: u32,
    pub kind: u32,
}

/// `skiff_affinity` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// `CLOCK_MONOTONIC` seconds (`bpf_ktime_get_ns() / 1e9`) of the last use.
    pub last_used: u32,
}

/// `skiff_aff_match` key → `u32` (1): this backend still belongs to this frontend, so an
/// affinity entry pointing at it may be honoured (Cilium's `lb4_affinity_match`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityMatchKey {
    pub backend_id: u32,
    pub rev_nat_id: u32,
}

/// `skiff_sock_rev` key (LRU; Cilium's `lb4_reverse_sk`): a socket and the backend it was
/// sent to, written by connect4/sendmsg4, read by recvmsg4/getpeername4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// `skiff_sock_rev` value: the frontend the socket dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRev {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
    pub rev_nat_id: u32,
}

/// `skiff_ct` key (LRU): a NodePort flow as one packet direction sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// [`CT_ORIGINAL`] or [`CT_REPLY`].
    pub dir: u8,
    pub pad: u16,
}

/// `skiff_ct` value. For a [`CT_ORIGINAL`] key: rewrite the destination to `addr:port` and, with
/// [`CT_SNAT`], the source to `nat_addr:nat_port`. For a [`CT_REPLY`] key: rewrite the
/// destination to `addr:port` (the client) and the source to `nat_addr:nat_port` (the frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    pub addr: u32,
    pub nat_addr: u32,
    pub port: u16,
    pub nat_port: u16,
    pub rev_nat_id: u32,
    pub backend_id: u32,
    /// `CT_*` bits.
    pub flags: u32,
    /// `CLOCK_MONOTONIC` seconds of the last packet.
    pub last_seen: u32,
    pub pad: u32,
}

/// IPv4 octets → the `u32` the kernel stores (network byte order in memory).
#[inline]
pub const fn ip_raw(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The inverse of [`ip_raw`].
#[inline]
pub const fn ip_from_raw(raw: u32) -> [u8; 4] {
    raw.to_ne_bytes()
}

/// Host-order port → network-order `u16`.
#[inline]
pub const fn port_raw(port: u16) -> u16 {
    port.to_be()
}

/// The inverse of [`port_raw`].
#[inline]
pub const fn port_from_raw(raw: u16) -> u16 {
    u16::from_be(raw)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // Every type below is a `#[repr(C)]` struct of plain integers whose padding is spelled out
    // as named fields (the size checks at the end of this file equal the sum of the fields), so
    // any bit pattern is a valid value and no byte is uninitialised: what `aya::Pod` requires.
    // SAFETY: `FrontendKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for FrontendKey {}
    // SAFETY: `Frontend` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for Frontend {}
    // SAFETY: `SlotKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for SlotKey {}
    // SAFETY: `Backend` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for Backend {}
    // SAFETY: `RevNat` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for RevNat {}
    // SAFETY: `AffinityKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: `AffinityValue` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: `AffinityMatchKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for AffinityMatchKey {}
    // SAFETY: `SockRevKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for SockRevKey {}
    // SAFETY: `SockRev` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for SockRev {}
    // SAFETY: `CtKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: `CtEntry` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for CtEntry {}
    // SAFETY: `SrcRangeKey` is repr(C), integers only, explicit padding (see above).
    unsafe impl aya::Pod for SrcRangeKey {}
}

// Layout checks: the kernel and the agent must agree byte for byte.
const _: () = {
    assert!(core::mem::size_of::<FrontendKey>() == 8);
    assert!(core::mem::size_of::<Frontend>() == 16);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend>() == 8);
    assert!(core::mem::size_of::<RevNat>() == 8);
    assert!(core::mem::size_of::<AffinityKey>() == 16);
    assert!(core::mem::size_of::<AffinityValue>() == 8);
    assert!(core::mem::size_of::<AffinityMatchKey>() == 8);
    assert!(core::mem::size_of::<SockRevKey>() == 16);
    assert!(core::mem::size_of::<SockRev>() == 12);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtEntry>() == 32);
    assert!(core::mem::size_of::<SrcRangeKey>() == 12);
};
