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
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use aya_log_ebpf::debug;
use skiff_ebpf_common::{
    AFF_CLIENT_NETNS, FE_EXTERNAL_IP, FE_EXTERNAL_LOCAL, FE_LOADBALANCER, FE_NODEPORT, Frontend,
    FrontendKey, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SockRev, SockRevKey,
    ip_from_raw,
};

use crate::maps::{FRONTENDS, REVNAT, SKIFF_HOST_NETNS, SKIFF_NODE_IP, SOCK_REV, now_secs};
use crate::select::{Selected, select_backend};

/// cgroup sock_addr verdicts.
const SYS_REJECT: i32 = 0;
const SYS_PROCEED: i32 = 1;

const ECONNREFUSED: i32 = 111;
const EADDRINUSE: i32 = 98;

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

/// A bind in the node's network namespace to a node port, external IP or LB address (on that
/// address, the node IP, 127.0.0.1 or the wildcard) fails with `EADDRINUSE`: the service owns
/// it, and the socket would never see its traffic (Cilium's `sock4_post_bind`).
#[cgroup_sock(post_bind4)]
pub fn skiff_bind4(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `sk` is the `bpf_sock` the kernel passed this program, valid for its whole run;
    // the verifier checks every field access against the context layout.
    let (proto, addr, port) = unsafe { ((*sk).protocol as u8, (*sk).src_ip4, (*sk).src_port) };
    check_bind(&ctx, proto, addr, port)
}

/// [`skiff_bind4`] for IPv6 sockets bound to the wildcard (dual-stack: they receive IPv4
/// too) or to an IPv4-mapped address.
#[cgroup_sock(post_bind6)]
pub fn skiff_bind6(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: as in `skiff_bind4`.
    let (proto, a, port) = unsafe { ((*sk).protocol as u8, (*sk).src_ip6, (*sk).src_port) };
    let addr = match a {
        [0, 0, 0, 0] => 0,
        [0, 0, mapped, v4] if mapped == 0xffff_u32.to_be() => v4,
        _ => return SYS_PROCEED,
    };
    check_bind(&ctx, proto, addr, port)
}

/// Refuse a bind of `proto` to `addr` (network order, 0: wildcard) and `port` (host order) in
/// the node's network namespace if a service frontend owns it.
#[inline(always)]
fn check_bind(ctx: &SockContext, proto: u8, addr: u32, port: u32) -> i32 {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return SYS_PROCEED;
    }
    // SAFETY: a helper reading the socket's netns; ctx is the program's own context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != SKIFF_HOST_NETNS.load() {
        return SYS_PROCEED;
    }
    // The wildcard and loopback binds cover the node IP's node ports too.
    let addr = if addr == 0 || ip_from_raw(addr)[0] == 127 {
        SKIFF_NODE_IP.load()
    } else {
        addr
    };
    let key = FrontendKey {
        addr,
        // `bpf_sock.src_port` is in host byte order.
        port: (port as u16).to_be(),
        proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: the flags are copied out at once (see `lookup`).
    let flags = match unsafe { FRONTENDS.get(key) } {
        Some(fe) => fe.flags,
        None => return SYS_PROCEED,
    };
    if flags & (FE_NODEPORT | FE_EXTERNAL_IP | FE_LOADBALANCER) == 0 {
        return SYS_PROCEED;
    }
    // SAFETY: a helper taking only a value; cgroup programs may call it (kernel ≥ 5.18).
    unsafe { bpf_set_retval(-EADDRINUSE) };
    SYS_REJECT
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: a helper taking only a value; cgroup sock_addr programs may call it (kernel ≥ 5.18,
    // the verifier rejects the program on older kernels instead).
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    SYS_REJECT
}

/// Service address → backend.
#[inline(always)]
fn xlate_fwd(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the `bpf_sock_addr` the kernel passed this program, valid for its whole
    // run; the verifier checks every field access against the context layout.
    let proto = unsafe { (*sa).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return SYS_PROCEED;
    }
    let key = FrontendKey {
        // SAFETY: as for `proto` above.
        addr: unsafe { (*sa).user_ip4 },
        // SAFETY: as for `proto` above.
        port: unsafe { (*sa).user_port } as u16,
        proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: a helper reading the socket's netns; ctx is the program's own context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // 127.0.0.1 frontends (node ports, host ports) belong to the node, not to a pod's loopback.
    if ip_from_raw(key.addr)[0] == 127 && netns != SKIFF_HOST_NETNS.load() {
        return SYS_PROCEED;
    }
    let Some(fe) = lookup(&key) else {
        return SYS_PROCEED;
    };
    if fe.count == 0 {
        debug!(
            ctx,
            "skiff: no backend for {:i}:{}",
            u32::from_be(key.addr),
            u16::from_be(key.port)
        );
        return refuse();
    }
    let rev_nat_id = fe.rev_nat_id;
    let Some(Selected {
        backend_id,
        backend: be,
    }) = select_backend(&fe, netns, AFF_CLIENT_NETNS, now_secs())
    else {
        return refuse();
    };
    let (be_addr, be_port) = (be.addr, be.port);

    // Remember the translation for recvmsg4/getpeername4.
    // SAFETY: a helper reading the socket's cookie; ctx is the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = SOCK_REV.insert(
        SockRevKey {
            cookie,
            addr: be_addr,
            port: be_port,
            pad: 0,
        },
        SockRev {
            addr: key.addr,
            port: key.port,
            pad: 0,
            rev_nat_id,
        },
        0,
    );
    // SAFETY: `sa` is this program's context (see `proto`); connect4/sendmsg4 may write
    // `user_ip4`/`user_port`, which the verifier checks.
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

/// The frontend the node's own sockets use for `key`: its internal scope if it has one
/// (`externalTrafficPolicy: Local`: every backend, not only the local ones).
#[inline(always)]
fn lookup(key: &FrontendKey) -> Option<Frontend> {
    // SAFETY: the value is copied out before any other map operation; an update or delete of
    // the entry by the agent meanwhile yields the old or the new bytes of a plain-integer
    // struct, both valid.
    let fe = *unsafe { FRONTENDS.get(key) }?;
    if fe.flags & FE_EXTERNAL_LOCAL == 0 {
        return Some(fe);
    }
    let internal = FrontendKey {
        scope: SCOPE_INTERNAL,
        ..*key
    };
    // SAFETY: as above.
    match unsafe { FRONTENDS.get(internal) } {
        Some(i) => Some(*i),
        None => Some(fe),
    }
}

/// Backend → service address, for sockets that were translated by [`xlate_fwd`].
#[inline(always)]
fn xlate_rev(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the `bpf_sock_addr` the kernel passed this program, valid for its whole
    // run; the verifier checks every field access against the context layout.
    let proto = unsafe { (*sa).protocol } as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return;
    }
    let key = SockRevKey {
        // SAFETY: a helper reading the socket's cookie; ctx is the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        // SAFETY: as for `proto` above.
        addr: unsafe { (*sa).user_ip4 },
        // SAFETY: as for `proto` above.
        port: unsafe { (*sa).user_port } as u16,
        pad: 0,
    };
    // SAFETY: the fields are copied out on the next line, before any other map operation; a
    // concurrent update or LRU eviction yields the old or the new bytes of a plain-integer
    // struct, both valid.
    let Some(rev) = (unsafe { SOCK_REV.get(key) }) else {
        return;
    };
    let (addr, port, rev_nat_id) = (rev.addr, rev.port, rev.rev_nat_id);
    // The service must still exist with that address, or the entry is stale.
    // SAFETY: the entry is only read inside this match, no map operation in between (see above).
    match unsafe { REVNAT.get(rev_nat_id) } {
        Some(r) if r.addr == addr && r.port == port => {}
        _ => {
            let _ = SOCK_REV.remove(key);
            return;
        }
    }
    // SAFETY: `sa` is this program's context (see `proto`); recvmsg4/getpeername4 may write
    // `user_ip4`/`user_port`, which the verifier checks.
    unsafe {
        (*sa).user_ip4 = addr;
        (*sa).user_port = port as u32;
    }
}
