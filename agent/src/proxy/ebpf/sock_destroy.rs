//! sock_diag's `SOCK_DESTROY` (`ss -K`; `CONFIG_INET_DIAG_DESTROY`) in a given network
//! namespace: dump the IPv4 sockets of one protocol, keep those a filter selects, destroy
//! them. A destroyed socket reports `ECONNABORTED` to its owner, whose next `connect()`
//! goes through the socket programs again and picks a live backend.
//!
//! sock_diag answers for the calling thread's network namespace only, so each namespace is
//! worked on by a short-lived thread that enters it (`setns` changes only that thread, which
//! then ends: no other thread ever runs in a foreign namespace).
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::libc;

use crate::proxy::model::Protocol;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` up to and including the id (family, state, timer, retrans, id).
const MSG_MIN: usize = 4 + SOCKID_LEN;

/// TCP states (`include/net/tcp_states.h`); a UDP socket is `ESTABLISHED` once connected.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;

/// One socket as sock_diag names it: enough to destroy exactly it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub protocol: Protocol,
    pub state: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The raw `inet_diag_sockid` (with interface and cookie), sent back to destroy it.
    id: [u8; SOCKID_LEN],
}

impl DiagSocket {
    /// A socket for tests (the id is built from the addresses; the cookie is zero).
    pub fn new(protocol: Protocol, state: u8, src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&src.port().to_be_bytes());
        id[2..4].copy_from_slice(&dst.port().to_be_bytes());
        id[4..8].copy_from_slice(&src.ip().octets());
        id[20..24].copy_from_slice(&dst.ip().octets());
        DiagSocket {
            protocol,
            state,
            src,
            dst,
            id,
        }
    }
}

/// Which sockets of one protocol to destroy: the states to dump and the destinations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Bit `1 << state` per wanted state.
    pub states: u32,
    pub destinations: std::collections::BTreeSet<SocketAddrV4>,
}

impl Selector {
    pub fn selects(&self, s: &DiagSocket) -> bool {
        self.states & (1u32 << u32::from(s.state.min(31))) != 0
            && self.destinations.contains(&s.dst)
    }
}

/// Destroy the sockets of `protocol` that `sel` selects in the network namespace at `netns`
/// (`None`: the agent's own). Returns the destroyed ones; a socket that went away between
/// the dump and the destroy is not an error.
pub fn destroy(
    netns: Option<PathBuf>,
    protocol: Protocol,
    sel: Selector,
) -> io::Result<Vec<DiagSocket>> {
    let work = move || -> io::Result<Vec<DiagSocket>> {
        if let Some(path) = &netns {
            let f = std::fs::File::open(path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        }
        let nl = Netlink::open()?;
        let mut destroyed = Vec::new();
        for s in nl.dump(protocol, sel.states)? {
            if !sel.selects(&s) {
                continue;
            }
            match nl.destroy(&s) {
                Ok(()) => destroyed.push(s),
                // Closed meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(destroyed)
    };
    std::thread::Builder::new()
        .name("sock-destroy".into())
        .spawn(work)?
        .join()
        .map_err(|_| io::Error::other("the sock_diag thread panicked"))?
}

struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl with the family set addresses the kernel.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and addr are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is writable for its length.
        let r = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    fn dump(&self, protocol: Protocol, states: u32) -> io::Result<Vec<DiagSocket>> {
        let id = [0u8; SOCKID_LEN];
        self.send(&request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            protocol,
            states,
            &id,
        ))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for (ty, payload) in messages(&buf[..n.min(buf.len())]) {
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match error_code(payload) {
                        0 => {}
                        code => return Err(io::Error::from_raw_os_error(-code)),
                    },
                    SOCK_DIAG_BY_FAMILY => out.extend(parse_socket(protocol, payload)),
                    _ => {}
                }
            }
        }
    }

    fn destroy(&self, s: &DiagSocket) -> io::Result<()> {
        self.send(&request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            s.protocol,
            u32::MAX,
            &s.id,
        ))?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.recv(&mut buf)?;
            for (ty, payload) in messages(&buf[..n.min(buf.len())]) {
                if ty == NLMSG_ERROR {
                    return match error_code(payload) {
                        0 => Ok(()),
                        code => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
            }
        }
    }
}

fn request(ty: u16, flags: u16, protocol: Protocol, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.push(libc::AF_INET as u8);
    m.push(protocol.number());
    m.push(0); // no extensions
    m.push(0);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

/// The (type, payload) of each netlink message in `buf`; stops at the first malformed one.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        out.push((ty, &rest[NLMSG_HDRLEN..len]));
        let aligned = (len + 3) & !3;
        rest = rest.get(aligned..).unwrap_or(&[]);
    }
    out
}

/// `struct nlmsgerr`'s error (0: an ack); a truncated one counts as `EIO`.
fn error_code(payload: &[u8]) -> i32 {
    match payload.get(0..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => -libc::EIO,
    }
}

fn parse_socket(protocol: Protocol, payload: &[u8]) -> Option<DiagSocket> {
    if payload.len() < MSG_MIN || payload[0] != libc::AF_INET as u8 {
        return None;
    }
    let id: [u8; SOCKID_LEN] = payload[4..4 + SOCKID_LEN].try_into().ok()?;
    let port = |at: usize| u16::from_be_bytes([id[at], id[at + 1]]);
    let ip = |at: usize| Ipv4Addr::new(id[at], id[at + 1], id[at + 2], id[at + 3]);
    Some(DiagSocket {
        protocol,
        state: payload[1],
        src: SocketAddrV4::new(ip(4), port(0)),
        dst: SocketAddrV4::new(ip(20), port(2)),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dumped_socket_is_parsed_and_a_malformed_message_is_skipped() {
        let s = DiagSocket::new(
            Protocol::Udp,
            TCP_ESTABLISHED,
            "10.244.1.5:40000".parse().unwrap(),
            "10.244.2.7:5353".parse().unwrap(),
        );
        let mut msg = vec![libc::AF_INET as u8, TCP_ESTABLISHED, 0, 0];
        msg.extend_from_slice(&s.id);
        msg.extend_from_slice(&[0u8; 20]);
        let mut buf = Vec::new();
        let len = (NLMSG_HDRLEN + msg.len()) as u32;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 10]);
        buf.extend_from_slice(&msg);
        // A truncated second header.
        buf.extend_from_slice(&[200, 0, 0, 0, 2, 0]);
        let got = messages(&buf);
        assert_eq!(got.len(), 1);
        assert_eq!(parse_socket(Protocol::Udp, got[0].1), Some(s));
        assert_eq!(parse_socket(Protocol::Udp, &got[0].1[..10]), None);
    }

    /// The real thing, in this process's namespace: a connected UDP socket to a local server
    /// is destroyed and its owner sees `ECONNABORTED`; a socket to another port is kept.
    #[test]
    fn sock_destroy_aborts_the_selected_socket() {
        if skiff_common::privileged::skip_unless_root("sock_destroy_aborts_the_selected_socket") {
            return;
        }
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let bystander = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        bystander.connect(other.local_addr().unwrap()).unwrap();
        let std::net::SocketAddr::V4(dst) = server.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        let sel = Selector {
            states: u32::MAX,
            destinations: [dst].into(),
        };
        // Read before: the destroyed socket is disconnected and loses its port.
        let src = client.local_addr().unwrap();
        let gone = destroy(None, Protocol::Udp, sel).unwrap();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(std::net::SocketAddr::V4(gone[0].src), src);
        client.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let err = client.recv(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        bystander.send(b"x").unwrap();
        assert_eq!(other.recv(&mut buf).unwrap(), 1);
    }

    #[test]
    fn the_selector_wants_the_state_and_the_destination() {
        let dst: SocketAddrV4 = "10.244.2.7:80".parse().unwrap();
        let sel = Selector {
            states: 1 << TCP_SYN_SENT,
            destinations: [dst].into(),
        };
        let src = "10.244.1.5:40000".parse().unwrap();
        assert!(sel.selects(&DiagSocket::new(Protocol::Tcp, TCP_SYN_SENT, src, dst)));
        assert!(!sel.selects(&DiagSocket::new(Protocol::Tcp, TCP_ESTABLISHED, src, dst)));
        let other = "10.244.2.8:80".parse().unwrap();
        assert!(!sel.selects(&DiagSocket::new(Protocol::Tcp, TCP_SYN_SENT, src, other)));
    }
}
