//! Socket-level load balancing (Cilium's `bpf_sock.c`, IPv4 only): service addresses are
//! translated once, when a socket connects (`connect4`) or sends a datagram (`sendmsg4`), so
//! the packets themselves carry the backend address and need no NAT. `recvmsg4` and
//! `getpeername4` translate back, so a UDP reply or `getpeername()` shows the service address.
//!
//! A service without a usable backend makes `connect()`/`sendmsg()` fail at once with
//! `ECONNREFUSED`: the program sets the syscall's return value with `bpf_set_retval` and
//! rejects (kernel ≥ 5.18; older kernels would report `EPERM`).
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use skiff_ebpf_common::{
    AFF_CLIENT_NETNS, AffinityKey, AffinityMatchKey, AffinityValue, FE_AFFINITY, FrontendKey,
    PROTO_TCP, PROTO_UDP, SlotKey, SockRev, SockRevKey,
};

use crate::maps::{AFF_MATCH, AFFINITY, BACKENDS, FRONTENDS, REVNAT, SLOTS, SOCK_REV, now_secs};

/// cgroup sock_addr verdicts.
const SYS_REJECT: i32 = 0;
const SYS_PROCEED: i32 = 1;

const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn skiff_connect4(ctx: SockAddrContext) -> i32 {
    xlate_fwd(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn skiff_sendmsg4(ctx: SockAddrContext) -> i32 {
    xlate_fwd(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn skiff_recvmsg4(ctx: SockAddrContext) -> i32 {
    xlate_rev(&ctx);
    SYS_PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn skiff_peername4(ctx: SockAddrContext) -> i32 {
    xlate_rev(&ctx);
    SYS_PROCEED
}

#[inline(always)]
fn refuse() -> i32 {
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    SYS_REJECT
}

/// Service address → backend.
#[inline(always)]
fn xlate_fwd(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let proto = unsafe { (*sa).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return SYS_PROCEED;
    }
    let key = FrontendKey {
        addr: unsafe { (*sa).user_ip4 },
        port: unsafe { (*sa).user_port } as u16,
        proto,
        pad: 0,
    };
    let Some(fe) = (unsafe { FRONTENDS.get(&key) }) else {
        return SYS_PROCEED;
    };
    let rev_nat_id = fe.rev_nat_id;
    let count = fe.count;
    let flags = fe.flags;
    let timeout = fe.affinity_timeout;
    if count == 0 {
        debug!(
            ctx,
            "skiff: no backend for {:i}:{}",
            u32::from_be(key.addr),
            u16::from_be(key.port)
        );
        return refuse();
    }

    let now = now_secs();
    let mut backend_id = 0u32;
    let aff_key = AffinityKey {
        client: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        rev_nat_id,
        kind: AFF_CLIENT_NETNS,
    };
    if flags & FE_AFFINITY != 0 {
        if let Some(a) = unsafe { AFFINITY.get(&aff_key) } {
            let id = a.backend_id;
            let fresh = now.wrapping_sub(a.last_used) <= timeout;
            let member = AFF_MATCH
                .get_ptr(AffinityMatchKey {
                    backend_id: id,
                    rev_nat_id,
                })
                .is_some();
            if fresh && member {
                backend_id = id;
            } else {
                let _ = AFFINITY.remove(&aff_key);
            }
        }
    }
    if backend_id == 0 {
        let slot = unsafe { bpf_get_prandom_u32() } % count;
        match unsafe { SLOTS.get(SlotKey { rev_nat_id, slot }) } {
            Some(id) => backend_id = *id,
            None => return refuse(),
        }
    }
    let Some(be) = (unsafe { BACKENDS.get(&backend_id) }) else {
        return refuse();
    };
    let (be_addr, be_port) = (be.addr, be.port);

    if flags & FE_AFFINITY != 0 {
        let _ = AFFINITY.insert(
            &aff_key,
            &AffinityValue {
                backend_id,
                last_used: now,
            },
            0,
        );
    }
    // Remember the translation for recvmsg4/getpeername4.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCK_REV.insert(
        &SockRevKey {
            cookie,
            addr: be_addr,
            port: be_port,
            pad: 0,
        },
        &SockRev {
            addr: key.addr,
            port: key.port,
            pad: 0,
            rev_nat_id,
        },
        0,
    );
    unsafe {
        (*sa).user_ip4 = be_addr;
        (*sa).user_port = be_port as u32;
    }
    debug!(
        ctx,
        "skiff: {:i}:{} -> backend {} {:i}:{}",
        u32::from_be(key.addr),
        u16::from_be(key.port),
        backend_id,
        u32::from_be(be_addr),
        u16::from_be(be_port)
    );
    SYS_PROCEED
}

/// Backend → service address, for sockets that were translated by [`xlate_fwd`].
#[inline(always)]
fn xlate_rev(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let proto = unsafe { (*sa).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return;
    }
    let key = SockRevKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: unsafe { (*sa).user_ip4 },
        port: unsafe { (*sa).user_port } as u16,
        pad: 0,
    };
    let Some(rev) = (unsafe { SOCK_REV.get(&key) }) else {
        return;
    };
    let (addr, port, rev_nat_id) = (rev.addr, rev.port, rev.rev_nat_id);
    // The service must still exist with that address, or the entry is stale.
    match unsafe { REVNAT.get(&rev_nat_id) } {
        Some(r) if r.addr == addr && r.port == port => {}
        _ => {
            let _ = SOCK_REV.remove(&key);
            return;
        }
    }
    unsafe {
        (*sa).user_ip4 = addr;
        (*sa).user_port = port as u32;
    }
}
