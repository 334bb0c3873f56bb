//! NodePort on the node's uplink (tc, attached through TCX), after Cilium's `nodeport.h`.
//! External IPs, LoadBalancer addresses and hostPorts are served the same way (any frontend
//! with a `FE_FROM_OUTSIDE` flag, whatever its address); LB frontends with source ranges
//! drop new flows from clients outside them.
//!
//! - ingress, `node_ip:nodePort` → a backend of the NodePort frontend (same slots as the
//!   socket LB). A local backend (or any backend under `externalTrafficPolicy: Local`, whose
//!   slots hold only local ones) is DNATed and handed to the stack, which routes it to the pod;
//!   the client IP is kept. A remote backend is DNATed *and* SNATed to `node_ip:<port>` and
//!   redirected straight back out (`bpf_redirect_neigh`), so its replies return here;
//! - ingress, a reply to such an SNATed flow → translated back to `node_ip:nodePort → client`
//!   and redirected out to the client;
//! - egress, a local backend's reply on its way to the client → source rewritten to
//!   `node_ip:nodePort`.
//!
//! Flows are tracked in `skiff_ct` (LRU): an *original* entry (client → node port) and a
//! *reply* entry (as the backend's reply looks). A frontend without backends drops.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_get_prandom_u32, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use skiff_ebpf_common::{
    AFF_CLIENT_IP, BE_LOCAL, CT_ORIGINAL, CT_REPLY, CT_SNAT, CtEntry, CtKey, FE_EXTERNAL_LOCAL,
    FE_FROM_OUTSIDE, FE_SRC_RANGE, Frontend, FrontendKey, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    SrcRangeKey, mask_raw,
};

use crate::maps::{CT, FRONTENDS, SKIFF_NODE_IP, SRC_RANGE, now_secs};
use crate::select::{Selected, select_backend};

/// TCX_NEXT / TC_ACT_UNSPEC: not ours, let the next program (or the stack) decide.
const TC_NEXT: i32 = -1;
const TC_PASS: i32 = TC_ACT_OK;
const TC_DROP: i32 = TC_ACT_SHOT;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// Source ports for SNAT to the node IP: above Linux's default ephemeral range, so they do
/// not collide with the node's own connections.
const SNAT_PORT_MIN: u32 = 61_000;
const SNAT_PORT_SPAN: u32 = 4_535;

struct Flow {
    l4_off: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Flow> {
    let eth_proto: u16 = ctx.load(12).ok()?;
    if eth_proto != ETH_P_IP.to_be() {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    // Non-first fragments carry no ports: not ours.
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let l4_off = ETH_HLEN + ihl;
    Some(Flow {
        l4_off,
        proto,
        saddr: ctx.load(IP_SADDR_OFF).ok()?,
        daddr: ctx.load(IP_DADDR_OFF).ok()?,
        sport: ctx.load(l4_off).ok()?,
        dport: ctx.load(l4_off + 2).ok()?,
    })
}

/// Rewrite addresses and ports, fixing the IP and L4 checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    f: &Flow,
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
) -> Result<(), i64> {
    let csum_off = f.l4_off + if f.proto == PROTO_TCP { 16 } else { 6 };
    // A UDP checksum of 0 means "none": keep it so.
    let l4_flags = if f.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    if daddr != f.daddr {
        ctx.l3_csum_replace(IP_CSUM_OFF, f.daddr as u64, daddr as u64, 4)?;
        ctx.l4_csum_replace(
            csum_off,
            f.daddr as u64,
            daddr as u64,
            BPF_F_PSEUDO_HDR as u64 | l4_flags | 4,
        )?;
        ctx.store(IP_DADDR_OFF, &daddr, 0)?;
    }
    if saddr != f.saddr {
        ctx.l3_csum_replace(IP_CSUM_OFF, f.saddr as u64, saddr as u64, 4)?;
        ctx.l4_csum_replace(
            csum_off,
            f.saddr as u64,
            saddr as u64,
            BPF_F_PSEUDO_HDR as u64 | l4_flags | 4,
        )?;
        ctx.store(IP_SADDR_OFF, &saddr, 0)?;
    }
    if dport != f.dport {
        ctx.l4_csum_replace(csum_off, f.dport as u64, dport as u64, l4_flags | 2)?;
        ctx.store(f.l4_off + 2, &dport, 0)?;
    }
    if sport != f.sport {
        ctx.l4_csum_replace(csum_off, f.sport as u64, sport as u64, l4_flags | 2)?;
        ctx.store(f.l4_off, &sport, 0)?;
    }
    Ok(())
}

/// Send the (rewritten) packet out of the interface it came in on, next hop and MAC resolved
/// by the kernel's FIB and neighbour tables.
#[inline(always)]
fn redirect_out(ctx: &TcContext) -> i32 {
    // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed this program, valid for its
    // whole run; the verifier checks the field access against the context layout.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper taking values only; a null `params` with length 0 is its documented
    // "look the next hop up in the FIB" form, allowed in tc programs.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

#[classifier]
pub fn skiff_np_in(ctx: TcContext) -> i32 {
    let node_ip = SKIFF_NODE_IP.load();
    if node_ip == 0 {
        return TC_NEXT;
    }
    let Some(f) = parse(&ctx) else {
        return TC_NEXT;
    };
    let now = now_secs();

    // A remote backend's reply to an SNATed flow (SNATed flows are sent from the node IP).
    let rkey = CtKey {
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        dir: CT_REPLY,
        pad: 0,
    };
    if f.daddr == node_ip
        && let Some(e) = CT.get_ptr_mut(rkey)
    {
        // SAFETY: `get_ptr_mut` returned a non-null pointer to the entry's value, which the
        // kernel keeps allocated while the program runs (RCU); the reference ends with this
        // block, and another CPU or the agent writing the same entry meanwhile can only change
        // plain integers (at worst a `last_seen` update is lost).
        let e = unsafe { &mut *e };
        if e.flags & CT_SNAT != 0 {
            e.last_seen = now;
            let (caddr, cport, naddr, nport) = (e.addr, e.port, e.nat_addr, e.nat_port);
            if rewrite(&ctx, &f, naddr, nport, caddr, cport).is_err() {
                return TC_DROP;
            }
            return redirect_out(&ctx);
        }
    }

    // Traffic to a node port, external IP, LB address or host port.
    let fkey = FrontendKey {
        addr: f.daddr,
        port: f.dport,
        proto: f.proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: the value is read at once and copied (`*fe`) before any other map operation; an
    // update or delete of the entry by the agent meanwhile yields the old or the new bytes of a
    // plain-integer struct, both valid.
    let Some(fe) = (unsafe { FRONTENDS.get(fkey) }) else {
        return TC_NEXT;
    };
    if fe.flags & FE_FROM_OUTSIDE == 0 {
        return TC_NEXT;
    }
    let fe = *fe;

    let okey = CtKey {
        dir: CT_ORIGINAL,
        ..rkey
    };
    let (be_addr, be_port, snat, snat_port) = match CT.get_ptr_mut(okey) {
        Some(e) => {
            // SAFETY: as for the reply entry above: a live, non-null value pointer, the
            // reference ends with this arm.
            let e = unsafe { &mut *e };
            e.last_seen = now;
            (e.addr, e.port, e.flags & CT_SNAT != 0, e.nat_port)
        }
        None => match new_flow(&f, &fe, node_ip, now) {
            Some(t) => t,
            None => return TC_DROP,
        },
    };
    let (saddr, sport) = if snat {
        (node_ip, snat_port)
    } else {
        (f.saddr, f.sport)
    };
    if rewrite(&ctx, &f, saddr, sport, be_addr, be_port).is_err() {
        return TC_DROP;
    }
    debug!(
        &ctx,
        "skiff nodeport {:i}:{} -> {:i}:{} snat={}",
        u32::from_be(f.saddr),
        u16::from_be(f.sport),
        u32::from_be(be_addr),
        u16::from_be(be_port),
        snat as u8
    );
    if snat { redirect_out(&ctx) } else { TC_PASS }
}

/// Whether client `saddr` is in one of frontend `rev_nat_id`'s source ranges: one lookup per
/// prefix length, longest first.
#[inline(always)]
fn src_range_ok(rev_nat_id: u32, saddr: u32) -> bool {
    let mut len: u8 = 33;
    while len > 0 {
        len -= 1;
        let key = SrcRangeKey {
            rev_nat_id,
            addr: mask_raw(saddr, len),
            prefix_len: len,
            pad: [0; 3],
        };
        if SRC_RANGE.get_ptr(key).is_some() {
            return true;
        }
    }
    false
}

/// Pick a backend for a new NodePort flow and record it; (backend addr, port, snat, snat port).
/// `None`: no backend, or a client outside the frontend's source ranges.
#[inline(always)]
fn new_flow(f: &Flow, fe: &Frontend, node_ip: u32, now: u32) -> Option<(u32, u16, bool, u16)> {
    let (rev_nat_id, flags) = (fe.rev_nat_id, fe.flags);
    if flags & FE_SRC_RANGE != 0 && !src_range_ok(rev_nat_id, f.saddr) {
        return None;
    }
    let Selected {
        backend_id,
        backend: be,
    } = select_backend(fe, f.saddr as u64, AFF_CLIENT_IP, now)?;
    let (be_addr, be_port, be_flags) = (be.addr, be.port, be.flags);
    let snat = be_flags & BE_LOCAL == 0 && flags & FE_EXTERNAL_LOCAL == 0;
    let reply = CtEntry {
        addr: f.saddr,
        nat_addr: f.daddr,
        port: f.sport,
        nat_port: f.dport,
        rev_nat_id,
        backend_id,
        flags: if snat { CT_SNAT } else { 0 },
        last_seen: now,
        pad: 0,
    };
    let mut snat_port = 0u16;
    if snat {
        // A free source port: the reply entry must not exist yet.
        let mut i = 0;
        while i < 8 {
            // SAFETY: a helper without arguments.
            let p = ((SNAT_PORT_MIN + unsafe { bpf_get_prandom_u32() } % SNAT_PORT_SPAN) as u16)
                .to_be();
            let rkey = CtKey {
                saddr: be_addr,
                daddr: node_ip,
                sport: be_port,
                dport: p,
                proto: f.proto,
                dir: CT_REPLY,
                pad: 0,
            };
            if CT.insert(rkey, reply, BPF_NOEXIST as u64).is_ok() {
                snat_port = p;
                break;
            }
            i += 1;
        }
        if snat_port == 0 {
            return None;
        }
    } else {
        let rkey = CtKey {
            saddr: be_addr,
            daddr: f.saddr,
            sport: be_port,
            dport: f.sport,
            proto: f.proto,
            dir: CT_REPLY,
            pad: 0,
        };
        CT.insert(rkey, reply, 0).ok()?;
    }
    let okey = CtKey {
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        dir: CT_ORIGINAL,
        pad: 0,
    };
    let orig = CtEntry {
        addr: be_addr,
        nat_addr: if snat { node_ip } else { 0 },
        port: be_port,
        nat_port: snat_port,
        rev_nat_id,
        backend_id,
        flags: if snat { CT_SNAT } else { 0 },
        last_seen: now,
        pad: 0,
    };
    CT.insert(okey, orig, 0).ok()?;
    Some((be_addr, be_port, snat, snat_port))
}

#[classifier]
pub fn skiff_np_out(ctx: TcContext) -> i32 {
    let Some(f) = parse(&ctx) else {
        return TC_NEXT;
    };
    // A local backend's reply to a NodePort client: make it come from the node port.
    let rkey = CtKey {
        saddr: f.saddr,
        daddr: f.daddr,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        dir: CT_REPLY,
        pad: 0,
    };
    let Some(e) = CT.get_ptr_mut(rkey) else {
        return TC_NEXT;
    };
    // SAFETY: as in `skiff_np_in`: a live, non-null value pointer, the reference ends with this
    // function.
    let e = unsafe { &mut *e };
    if e.flags & CT_SNAT != 0 {
        return TC_NEXT;
    }
    e.last_seen = now_secs();
    let (naddr, nport) = (e.nat_addr, e.nat_port);
    if rewrite(&ctx, &f, naddr, nport, f.daddr, f.dport).is_err() {
        return TC_DROP;
    }
    TC_NEXT
}
