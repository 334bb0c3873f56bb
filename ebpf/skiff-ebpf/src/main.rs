//! skiff's service dataplane in the kernel.
//!
//! - [`sock_lb`]: cgroup `connect4`/`sendmsg4`/`recvmsg4`/`getpeername4` — ClusterIP (and
//!   node-local NodePort) load balancing at the socket, no per-packet NAT;
//! - [`nodeport`]: tc programs on the node's uplink — NodePort traffic from outside;
//! - [`select`]: backend selection and session affinity, one copy for both;
//! - [`maps`]: the maps both share (layouts in `skiff-ebpf-common`).
#![no_std]
#![no_main]

mod maps;
mod nodeport;
mod select;
mod sock_lb;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
