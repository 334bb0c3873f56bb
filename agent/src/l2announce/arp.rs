//! ARP for the announced addresses, answered from userspace as MetalLB's speaker does: the
//! kernel does not own these addresses, so it stays silent, and an `AF_PACKET` socket on the
//! node's underlay link sees every ARP request and answers those for an announced address
//! with the link's MAC. Nothing is configured in the kernel (no address, no neighbour entry,
//! no filter): closing the socket, at exit or when the process dies, stops the answers.
//!
//! [`ArpEdge`] is the kernel-facing edge ([`PacketSocket`] for real, [`fake::FakeArp`] in
//! tests); the frame parsing and building beside it are plain functions.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use anyhow::Result;

/// What the announcer needs from the link.
pub trait ArpEdge: Send + Sync {
    /// Answer ARP requests for exactly these addresses from now on.
    fn set_addresses(&self, addrs: BTreeSet<Ipv4Addr>);
    /// Tell the link that `addr` is at this node now (gratuitous ARP), so neighbours that
    /// cached the previous node's MAC move over at once.
    fn gratuitous(&self, addr: Ipv4Addr) -> Result<()>;
}

pub type Mac = [u8; 6];
const BROADCAST: Mac = [0xff; 6];
const ETHERTYPE_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// The ARP packet in an Ethernet frame, if it is an Ethernet/IPv4 one.
pub fn parse(frame: &[u8]) -> Option<Arp> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let arp = frame.get(ETH_HEADER..ETH_HEADER + ARP_LEN)?;
    let htype = u16::from_be_bytes([arp[0], arp[1]]);
    let ptype = u16::from_be_bytes([arp[2], arp[3]]);
    if ethertype != ETHERTYPE_ARP || htype != 1 || ptype != 0x0800 || arp[4] != 6 || arp[5] != 4 {
        return None;
    }
    let mac = |at: usize| -> Option<Mac> { arp.get(at..at + 6)?.try_into().ok() };
    let ip = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = arp.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    Some(Arp {
        op: u16::from_be_bytes([arp[6], arp[7]]),
        sender_mac: mac(8)?,
        sender_ip: ip(14)?,
        target_mac: mac(18)?,
        target_ip: ip(24)?,
    })
}

/// `arp` in an Ethernet frame from `source` to `destination`.
pub fn frame(destination: Mac, source: Mac, arp: &Arp) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    f.extend_from_slice(&destination);
    f.extend_from_slice(&source);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&arp.op.to_be_bytes());
    f.extend_from_slice(&arp.sender_mac);
    f.extend_from_slice(&arp.sender_ip.octets());
    f.extend_from_slice(&arp.target_mac);
    f.extend_from_slice(&arp.target_ip.octets());
    f
}

/// The reply (as a frame) this node owes a received frame: one for an ARP request for an
/// announced address, from someone else.
pub fn answer(received: &[u8], own: Mac, announced: &BTreeSet<Ipv4Addr>) -> Option<Vec<u8>> {
    let req = parse(received)?;
    if req.op != OP_REQUEST || req.sender_mac == own || !announced.contains(&req.target_ip) {
        return None;
    }
    let reply = Arp {
        op: OP_REPLY,
        sender_mac: own,
        sender_ip: req.target_ip,
        target_mac: req.sender_mac,
        target_ip: req.sender_ip,
    };
    Some(frame(req.sender_mac, own, &reply))
}

/// Gratuitous ARP for `addr`, both forms (a broadcast request and a broadcast reply naming
/// the address as sender and target), as neighbours differ in which one they act on.
pub fn gratuitous_frames(own: Mac, addr: Ipv4Addr) -> [Vec<u8>; 2] {
    let arp = |op, target_mac| Arp {
        op,
        sender_mac: own,
        sender_ip: addr,
        target_mac,
        target_ip: addr,
    };
    [
        frame(BROADCAST, own, &arp(OP_REQUEST, [0; 6])),
        frame(BROADCAST, own, &arp(OP_REPLY, BROADCAST)),
    ]
}

/// The real edge: an `AF_PACKET` socket bound to the link for ARP, and a thread answering
/// requests for the announced addresses.
pub struct PacketSocket {
    announced: Arc<RwLock<BTreeSet<Ipv4Addr>>>,
    socket: Arc<sys::RawSocket>,
    mac: Mac,
}

impl PacketSocket {
    /// Open the socket on `link` and start answering (nothing, until addresses are set).
    pub fn open(link: &str) -> Result<PacketSocket> {
        let socket = Arc::new(sys::RawSocket::arp_on(link)?);
        let mac = socket.mac;
        let announced: Arc<RwLock<BTreeSet<Ipv4Addr>>> = Arc::default();
        let (reader, addrs) = (socket.clone(), announced.clone());
        std::thread::Builder::new()
            .name("l2-arp".into())
            .spawn(move || answer_loop(&reader, &addrs))?;
        tracing::info!(link, mac = %format_mac(&mac), "answering ARP for LoadBalancer addresses");
        Ok(PacketSocket {
            announced,
            socket,
            mac,
        })
    }
}

fn answer_loop(socket: &sys::RawSocket, announced: &RwLock<BTreeSet<Ipv4Addr>>) {
    let mut buf = [0u8; 1514];
    loop {
        let n = match socket.recv(&mut buf) {
            Ok(Some(n)) => n,
            // Our own frames going out.
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("reading ARP from the link stopped: {e}");
                return;
            }
        };
        let reply = {
            let addrs = announced.read().unwrap_or_else(|p| p.into_inner());
            answer(&buf[..n], socket.mac, &addrs)
        };
        if let Some(reply) = reply
            && let Err(e) = socket.send(&reply)
        {
            tracing::warn!("answering ARP: {e}");
        }
    }
}

impl ArpEdge for PacketSocket {
    fn set_addresses(&self, addrs: BTreeSet<Ipv4Addr>) {
        *self.announced.write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }

    fn gratuitous(&self, addr: Ipv4Addr) -> Result<()> {
        for f in gratuitous_frames(self.mac, addr) {
            self.socket.send(&f)?;
        }
        Ok(())
    }
}

pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `AF_PACKET` socket: the FFI edge.
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use anyhow::{Context, Result};
    use nix::libc;

    use super::{ETHERTYPE_ARP, Mac};

    pub struct RawSocket {
        fd: OwnedFd,
        ifindex: i32,
        pub mac: Mac,
    }

    impl RawSocket {
        /// A packet socket seeing the ARP frames of `link`, with the link's MAC.
        pub fn arp_on(link: &str) -> Result<RawSocket> {
            let name = CString::new(link).context("link name")?;
            // SAFETY: a NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::last_os_error()).context(format!("no link {link}"));
            }
            let ifindex = i32::try_from(ifindex).context("interface index")?;
            let protocol = i32::from(ETHERTYPE_ARP.to_be());
            // SAFETY: plain socket(2); the result is checked before it is owned.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    protocol,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
            }
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETHERTYPE_ARP.to_be();
            addr.sll_ifindex = ifindex;
            // SAFETY: `addr` is a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error()).context(format!("binding to {link}"));
            }
            let mac = hardware_address(&fd, link)?;
            Ok(RawSocket { fd, ifindex, mac })
        }

        /// One frame into `buf`: its length, or `None` for a frame this host sent.
        pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            loop {
                // SAFETY: `buf` and `from` are valid for the sizes given.
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &raw mut len,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    return Ok(None);
                }
                return Ok(Some(n.unsigned_abs()));
            }
        }

        /// Send one whole Ethernet frame out of the link.
        pub fn send(&self, frame: &[u8]) -> io::Result<()> {
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = ETHERTYPE_ARP.to_be();
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: `frame` and `to` are valid for the sizes given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// The link's MAC (SIOCGIFHWADDR), read in the socket's own network namespace.
    fn hardware_address(fd: &OwnedFd, link: &str) -> Result<Mac> {
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        let bytes = link.as_bytes();
        if bytes.len() >= req.ifr_name.len() {
            anyhow::bail!("link name {link:?} is too long");
        }
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills the ifreq it is given.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::SIOCGIFHWADDR as libc::Ioctl,
                &raw mut req,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context(format!("reading the MAC of {link}"));
        }
        // SAFETY: after SIOCGIFHWADDR the union holds `ifru_hwaddr`.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(data.iter()) {
            *dst = *src as u8;
        }
        Ok(mac)
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Records what the announcer asked of the link.
    #[derive(Default)]
    pub struct FakeArp {
        pub addresses: Mutex<BTreeSet<Ipv4Addr>>,
        pub gratuitous: Mutex<Vec<Ipv4Addr>>,
    }

    impl ArpEdge for FakeArp {
        fn set_addresses(&self, addrs: BTreeSet<Ipv4Addr>) {
            *self.addresses.lock().unwrap() = addrs;
        }

        fn gratuitous(&self, addr: Ipv4Addr) -> Result<()> {
            self.gratuitous.lock().unwrap().push(addr);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: Mac = [0x02, 0, 0, 0, 0, 1];
    const ASKER: Mac = [0x02, 0, 0, 0, 0, 9];

    fn request(target: &str) -> Vec<u8> {
        frame(
            BROADCAST,
            ASKER,
            &Arp {
                op: OP_REQUEST,
                sender_mac: ASKER,
                sender_ip: "10.7.0.1".parse().unwrap(),
                target_mac: [0; 6],
                target_ip: target.parse().unwrap(),
            },
        )
    }

    #[test]
    fn answers_requests_for_announced_addresses_only() {
        let announced = BTreeSet::from(["10.7.0.200".parse().unwrap()]);
        let reply = answer(&request("10.7.0.200"), OWN, &announced).unwrap();
        assert_eq!(&reply[..6], &ASKER, "unicast back to the asker");
        assert_eq!(&reply[6..12], &OWN);
        let arp = parse(&reply).unwrap();
        assert_eq!(
            arp,
            Arp {
                op: OP_REPLY,
                sender_mac: OWN,
                sender_ip: "10.7.0.200".parse().unwrap(),
                target_mac: ASKER,
                target_ip: "10.7.0.1".parse().unwrap(),
            }
        );
        assert_eq!(answer(&request("10.7.0.201"), OWN, &announced), None);
        // Replies, our own requests, and truncated or non-ARP frames get nothing.
        assert_eq!(answer(&reply, OWN, &announced), None);
        let mut own = request("10.7.0.200");
        own[6..12].copy_from_slice(&OWN);
        own[22..28].copy_from_slice(&OWN);
        assert_eq!(answer(&own, OWN, &announced), None);
        assert_eq!(answer(&request("10.7.0.200")[..30], OWN, &announced), None);
        let mut ipv6 = request("10.7.0.200");
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(answer(&ipv6, OWN, &announced), None);
    }

    #[test]
    fn gratuitous_arp_names_the_address_as_sender_and_target() {
        let addr: Ipv4Addr = "10.7.0.200".parse().unwrap();
        let [req, reply] = gratuitous_frames(OWN, addr);
        for (f, op) in [(&req, OP_REQUEST), (&reply, OP_REPLY)] {
            assert_eq!(&f[..6], &BROADCAST);
            let arp = parse(f).unwrap();
            assert_eq!((arp.op, arp.sender_ip, arp.target_ip), (op, addr, addr));
            assert_eq!(arp.sender_mac, OWN);
        }
        assert_eq!(format_mac(&OWN), "02:00:00:00:00:01");
    }
}
