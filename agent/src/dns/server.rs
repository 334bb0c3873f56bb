//! The DNS server: UDP and TCP on one address, answering cluster names from the [`Zone`]
//! and everything else through the [`Forwarder`]. Malformed queries are answered FORMERR
//! (or dropped when not even a header can be read); over UDP an answer larger than the
//! client's buffer (512 bytes, or its EDNS size) is sent truncated, so it asks over TCP.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record as WireRecord, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::answers::{AnswerCache, Keep};
use super::forward::{EDNS_PAYLOAD, Forwarder};
use super::records::{self, Lookup, Rcode, Rdata, Record, Zone};

/// The largest UDP answer to a client without EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;
/// A TCP connection idle this long is closed (RFC 7766 suggests seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries waiting at once per server (for an upstream, or TCP ones); beyond that UDP queries
/// are dropped and TCP ones wait.
const MAX_IN_FLIGHT: usize = 1024;

/// The zone the server answers from, replaced whole when the cluster changes, with the
/// answers already encoded from it.
#[derive(Default)]
pub struct ZoneCell(RwLock<Arc<ZoneSnapshot>>);

#[derive(Default)]
pub struct ZoneSnapshot {
    pub zone: Zone,
    answers: AnswerCache,
}

impl ZoneCell {
    pub fn new(zone: Zone) -> ZoneCell {
        ZoneCell(RwLock::new(Arc::new(ZoneSnapshot::of(zone))))
    }
    pub fn get(&self) -> Arc<ZoneSnapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ZoneSnapshot::of(zone));
    }
}

impl ZoneSnapshot {
    fn of(zone: Zone) -> ZoneSnapshot {
        ZoneSnapshot {
            zone,
            answers: AnswerCache::default(),
        }
    }
}

/// Answers one query message at a time; shared by the UDP and TCP loops.
pub struct Resolver {
    pub zone: Arc<ZoneCell>,
    pub forwarder: Forwarder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Resolver {
    /// The answer to the message in `packet`, encoded; None when the packet is not worth an
    /// answer (shorter than a header, or itself a response).
    pub async fn handle(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return None;
        }
        let snapshot = self.zone.get();
        let over_udp = transport == Transport::Udp;
        if let Some(answer) = snapshot.answers.lookup(over_udp, packet) {
            return Some(answer);
        }
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return Some(formerr(packet)),
        };
        let (mut response, keep) = self.respond(&snapshot.zone, &request).await;
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => udp_limit(&request),
        };
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        let mut bytes = response.to_vec().ok()?;
        if bytes.len() > limit {
            // TC set and the record sections dropped (RFC 2181 §9): the client asks over TCP.
            bytes = response.truncate().to_vec().ok()?;
        }
        snapshot.answers.remember(over_udp, packet, &bytes, keep);
        Some(bytes)
    }

    /// The answer to `packet` if the same query was answered before and its answer is still
    /// good: no parsing, no encoding, nothing to wait for.
    pub fn answered_before(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return None;
        }
        (self.zone.get().answers).lookup(transport == Transport::Udp, packet)
    }

    /// The response to `request`, and how long its encoding may be reused.
    async fn respond(&self, zone: &Zone, request: &Message) -> (Message, Keep) {
        let mut response = reply_to(request);
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return (response, Keep::WithZone);
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return (response, Keep::WithZone);
        };
        let keep = match zone.lookup(&query.name().to_ascii(), u16::from(query.query_type())) {
            Lookup::Authoritative(answer) => {
                response.metadata.authoritative = true;
                response.metadata.response_code = match answer.rcode {
                    Rcode::NoError => ResponseCode::NoError,
                    Rcode::NxDomain => ResponseCode::NXDomain,
                };
                let external = external_cname(zone, &answer.answers, query.query_type());
                add_records(&mut response, query, answer);
                match external {
                    Some(target) if self.chase(&mut response, &target, query).await => {
                        Keep::Briefly
                    }
                    Some(_) => Keep::Never,
                    None => Keep::WithZone,
                }
            }
            Lookup::Forward => self.forward(&mut response, query).await,
        };
        (response, keep)
    }

    /// A name outside the cluster: the upstream's answer, or SERVFAIL when none answers.
    async fn forward(&self, response: &mut Message, query: &Query) -> Keep {
        match self
            .forwarder
            .resolve(query.name(), query.query_type(), query.query_class())
            .await
        {
            Ok(upstream) => {
                response.metadata.response_code = upstream.metadata.response_code;
                response.add_answers(upstream.answers);
                response.add_authorities(upstream.authorities);
                response.add_additionals(upstream.additionals);
                Keep::Briefly
            }
            Err(e) => {
                tracing::debug!(name = %query.name(), "forwarding failed: {e:#}");
                response.metadata.response_code = ResponseCode::ServFail;
                Keep::Never
            }
        }
    }

    /// An ExternalName's target outside the zone, resolved upstream and appended after the
    /// CNAME (as CoreDNS does); a failure leaves the CNAME alone. Whether it was resolved.
    async fn chase(&self, response: &mut Message, target: &Name, query: &Query) -> bool {
        match self
            .forwarder
            .resolve(target, query.query_type(), query.query_class())
            .await
        {
            Ok(upstream) => {
                response.add_answers(upstream.answers);
                true
            }
            Err(_) => false,
        }
    }
}

/// The target of a CNAME answer that the zone could not follow itself.
fn external_cname(zone: &Zone, answers: &[Record], qtype: RecordType) -> Option<Name> {
    if qtype == RecordType::CNAME {
        return None;
    }
    match &answers.last()?.rdata {
        Rdata::Cname(target) if zone.lookup(target, records::rtype::A) == Lookup::Forward => {
            Name::from_ascii(format!("{target}.")).ok()
        }
        _ => None,
    }
}

/// The response skeleton: the request's id, question and RD flag; recursion available.
fn reply_to(request: &Message) -> Message {
    let mut m = Message::response(request.metadata.id, request.metadata.op_code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = request.metadata.checking_disabled;
    m.add_queries(request.queries.iter().cloned());
    m
}

/// FORMERR for a message that did not parse: its id and opcode echoed, nothing else.
fn formerr(packet: &[u8]) -> Vec<u8> {
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let opcode = (packet[2] >> 3) & 0x0f;
    let flags = 0x80 | (opcode << 3);
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&id.to_be_bytes());
    // RA, RCODE 1 (FORMERR).
    out.extend_from_slice(&[flags, 0x80 | 1]);
    out.extend_from_slice(&[0; 8]);
    out
}

/// What a UDP client can take: 512 bytes, or its EDNS buffer size (at most ours).
fn udp_limit(request: &Message) -> usize {
    match &request.edns {
        Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => PLAIN_UDP_LIMIT,
    }
}

/// The zone's answer in wire records; names equal to the question keep the asker's case.
fn add_records(response: &mut Message, query: &Query, answer: records::Answer) {
    let asked = records::normalize(&query.name().to_ascii());
    let wire = |r: Record| to_wire(r, query.name(), &asked);
    response.add_answers(answer.answers.into_iter().filter_map(wire));
    response.add_authorities(answer.authority.into_iter().filter_map(wire));
    response.add_additionals(answer.additionals.into_iter().filter_map(wire));
}

fn to_wire(r: Record, qname: &Name, asked: &str) -> Option<WireRecord> {
    let name = if r.name == asked {
        qname.clone()
    } else {
        fqdn(&r.name)?
    };
    let rdata = match r.rdata {
        Rdata::A(ip) => RData::A(A(ip)),
        Rdata::Aaaa(ip) => RData::AAAA(AAAA(ip)),
        Rdata::Cname(t) => RData::CNAME(CNAME(fqdn(&t)?)),
        Rdata::Ptr(t) => RData::PTR(PTR(fqdn(&t)?)),
        Rdata::Txt(t) => RData::TXT(TXT::new(vec![t])),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(priority, weight, port, fqdn(&target)?)),
        Rdata::Soa {
            mname,
            rname,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        } => RData::SOA(SOA::new(
            fqdn(&mname)?,
            fqdn(&rname)?,
            serial,
            refresh,
            retry,
            expire,
            minimum,
        )),
    };
    Some(WireRecord::from_rdata(name, r.ttl, rdata))
}

/// A zone name as an absolute wire name (None for a name the wire cannot carry, such as an
/// over-long label: such a record is left out rather than sent wrong).
fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{name}.")).ok()
}

/// A bound UDP socket and TCP listener on the same address.
pub struct DnsServer {
    udp: Arc<std::net::UdpSocket>,
    tcp: TcpListener,
}

impl DnsServer {
    /// Bind UDP and TCP on `addr` (port 0: one free port for both).
    pub async fn bind(addr: SocketAddr) -> Result<DnsServer> {
        let mut last = None;
        for _ in 0..10 {
            let udp =
                std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
            let local = udp.local_addr()?;
            match TcpListener::bind(local).await {
                Ok(tcp) => {
                    udp.set_read_timeout(Some(UDP_STOP_CHECK))?;
                    return Ok(DnsServer {
                        udp: Arc::new(udp),
                        tcp,
                    });
                }
                // With port 0 the UDP port's TCP twin may be taken: try another.
                Err(e) if addr.port() == 0 => last = Some(e),
                Err(e) => return Err(e).with_context(|| format!("binding TCP {local}")),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no free port"), anyhow::Error::from))
            .context("binding TCP")
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.udp.local_addr()?)
    }

    /// Serve until the future is dropped: TCP on the runtime, UDP on a thread of its own
    /// (stopped within [`UDP_STOP_CHECK`] of the drop).
    pub async fn run(self, resolver: Arc<Resolver>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let udp = UdpLoop {
            socket: self.udp,
            resolver: resolver.clone(),
            limit: limit.clone(),
            runtime: tokio::runtime::Handle::current(),
            stop: stop.0.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("dns-udp".into())
            .spawn(move || udp.serve());
        if let Err(e) = spawned {
            tracing::error!("cluster DNS: cannot start the UDP thread: {e}");
        }
        serve_tcp(self.tcp, resolver, limit).await;
        drop(stop);
    }
}

/// How often the UDP thread looks whether its server was dropped.
const UDP_STOP_CHECK: Duration = Duration::from_millis(250);

/// Tells the UDP thread to stop when the serving future is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The UDP side. A query the zone (or the forwarder's cache) answers is answered on this
/// thread as soon as it arrives: no task, no wake-up of another thread, one receive and one
/// send per query, which is what lets it keep up with dnsmasq's single loop. Only a query
/// that must wait (for an upstream) becomes a task on the runtime.
struct UdpLoop {
    socket: Arc<std::net::UdpSocket>,
    resolver: Arc<Resolver>,
    limit: Arc<tokio::sync::Semaphore>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
}

impl UdpLoop {
    fn serve(self) {
        // The forwarder's sockets and timers belong to the runtime.
        let _runtime = self.runtime.enter();
        let mut buf = vec![0u8; 65535];
        while !self.stop.load(Ordering::Relaxed) {
            match self.socket.recv_from(&mut buf) {
                Ok((n, peer)) => self.answer(&buf[..n], peer),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // ICMP errors from earlier sends surface here; the socket stays usable.
                Err(e) => tracing::debug!("dns udp receive: {e}"),
            }
        }
    }

    /// Answer now if nothing has to be waited for, else hand the query to the runtime
    /// (dropped when [`MAX_IN_FLIGHT`] are waiting already: the client asks again, as with
    /// dnsmasq's `dns-forward-max`).
    fn answer(&self, packet: &[u8], peer: SocketAddr) {
        if let Some(answer) = self.resolver.answered_before(packet, Transport::Udp) {
            let _ = self.socket.send_to(&answer, peer);
            return;
        }
        let (socket, resolver, packet) =
            (self.socket.clone(), self.resolver.clone(), packet.to_vec());
        let mut query: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            if let Some(answer) = resolver.handle(&packet, Transport::Udp).await {
                let _ = socket.send_to(&answer, peer);
            }
        });
        let mut cx = TaskContext::from_waker(Waker::noop());
        if query.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "cluster DNS: too many queries waiting; one dropped");
            return;
        };
        // Polled again by the runtime with a real waker, which replaces the no-op one.
        self.runtime.spawn(async move {
            query.await;
            drop(permit);
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    resolver: Arc<Resolver>,
    limit: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!("dns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (resolver, limit) = (resolver.clone(), limit.clone());
        tokio::spawn(async move {
            let _ = serve_connection(stream, &resolver, &limit).await;
        });
    }
}

/// Length-prefixed queries on one connection, answered in order, until the client closes
/// it or stays idle.
async fn serve_connection(
    mut stream: TcpStream,
    resolver: &Resolver,
    limit: &tokio::sync::Semaphore,
) -> Result<()> {
    loop {
        let len = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await??;
        let mut packet = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await??;
        let _permit = limit.acquire().await?;
        let Some(answer) = resolver.handle(&packet, Transport::Tcp).await else {
            return Ok(());
        };
        let mut framed = u16::try_from(answer.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests;
