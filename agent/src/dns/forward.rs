//! Names outside the cluster go to the node's resolvers (CoreDNS's `forward . /etc/resolv.conf`
//! with its `cache`): a question is asked over UDP, again over TCP when the answer comes back
//! truncated, of each upstream in turn; answers are kept for as long as their TTLs allow.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers are not kept longer than this, whatever their TTL (CoreDNS `cache`: 3600 s).
const MAX_CACHE_TTL: u32 = 3600;
/// Negative answers without an SOA are kept this long.
const NEGATIVE_TTL: u32 = 30;
const CACHE_ENTRIES: usize = 10_000;
/// The EDNS payload size we offer and accept (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// An upstream answer: its response code and sections, as of `at`.
#[derive(Clone, Debug)]
struct Cached {
    response: Message,
    at: Instant,
    ttl: u32,
}

type CacheKey = (String, u16, u16);

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream answer to (`name`, `qtype`, `class`), from the cache while it is fresh
    /// (TTLs counted down), else asked anew. The message's id is the caller's to set.
    pub async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> Result<Message> {
        let key = (
            name.to_ascii().to_ascii_lowercase(),
            u16::from(qtype),
            u16::from(class),
        );
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let response = self.ask(name, qtype, class).await?;
        self.store(key, &response);
        Ok(response)
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.at.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        let mut response = entry.response.clone();
        age_records(&mut response, age);
        Some(response)
    }

    fn store(&self, key: CacheKey, response: &Message) {
        let Some(ttl) = cache_ttl(response) else {
            return;
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.at.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                response: response.clone(),
                at: Instant::now(),
                ttl,
            },
        );
    }

    /// Each upstream in turn until one answers.
    async fn ask(&self, name: &Name, qtype: RecordType, class: DNSClass) -> Result<Message> {
        if self.upstreams.is_empty() {
            bail!("no upstream resolvers");
        }
        let mut last = None;
        for upstream in &self.upstreams {
            match exchange(*upstream, name, qtype, class).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    tracing::debug!(%upstream, %name, "upstream resolver failed: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no upstream answered")))
    }
}

/// One question to one upstream: UDP, then TCP if the answer was truncated.
async fn exchange(
    upstream: SocketAddr,
    name: &Name,
    qtype: RecordType,
    class: DNSClass,
) -> Result<Message> {
    let query = upstream_query(name, qtype, class);
    let bytes = query.to_vec()?;
    let response = tokio::time::timeout(UPSTREAM_TIMEOUT, udp_exchange(upstream, &bytes, &query))
        .await
        .context("timed out")??;
    if !response.metadata.truncation {
        return Ok(response);
    }
    tokio::time::timeout(UPSTREAM_TIMEOUT, tcp_exchange(upstream, &bytes, &query))
        .await
        .context("timed out over TCP")?
}

fn upstream_query(name: &Name, qtype: RecordType, class: DNSClass) -> Message {
    let mut q = Query::query(name.clone(), qtype);
    q.set_query_class(class);
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(q);
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    m.set_edns(edns);
    m
}

async fn udp_exchange(upstream: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message> {
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything but the answer to this question (a late or forged datagram) is ignored.
        if let Ok(m) = Message::from_vec(&buf[..n])
            && answers(&m, query)
        {
            return Ok(m);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).context("query too long")?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let m = Message::from_vec(&buf)?;
    if !answers(&m, query) {
        bail!("the upstream answered another question");
    }
    Ok(m)
}

fn answers(response: &Message, query: &Message) -> bool {
    response.metadata.id == query.metadata.id
        && response.metadata.message_type == MessageType::Response
        && response.queries == query.queries
}

/// How long an answer may be kept: its smallest TTL; for a negative answer the SOA's
/// (RFC 2308); server failures and refusals are not kept.
fn cache_ttl(response: &Message) -> Option<u32> {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RData;
    let rcode = response.metadata.response_code;
    if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
        return None;
    }
    let ttl = if response.answers.is_empty() {
        response
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL)
    } else {
        response
            .answers
            .iter()
            .chain(&response.authorities)
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0)
    };
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

/// Count a cached answer's TTLs down by its age.
fn age_records(response: &mut Message, age: u32) {
    let age_all = |records: &mut [hickory_proto::rr::Record]| {
        for r in records {
            r.ttl = r.ttl.saturating_sub(age);
        }
    };
    age_all(&mut response.answers);
    age_all(&mut response.authorities);
    age_all(&mut response.additionals);
}

/// The nameservers of a resolv.conf, leaving out `exclude` (the cluster DNS address itself:
/// asking it would loop back here). Port 53 each.
pub fn resolv_conf_upstreams(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next())?
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !exclude.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_without_the_cluster_dns() {
        let text = "# generated\nsearch example.com\nnameserver 10.96.0.10\nnameserver 192.0.2.53\n  nameserver   fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        let got = resolv_conf_upstreams(text, &["10.96.0.10".parse().unwrap()]);
        assert_eq!(
            got,
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
