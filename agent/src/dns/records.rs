//! The cluster zone as the Kubernetes DNS specification (github.com/kubernetes/dns,
//! docs/specification.md, schema 1.1.0) defines it, built from Services and EndpointSlices:
//! no I/O and no wire format, only names and record data. [`Zone::lookup`] answers one
//! question the way CoreDNS's `kubernetes` plugin does (with `pods insecure`), or says the
//! name is not the zone's to answer ([`Lookup::Forward`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The `dns-version` TXT record: the schema version of the specification served.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of every cluster record (CoreDNS's `kubernetes` plugin default).
pub const TTL: u32 = 5;
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// Record types by their wire codes (RFC 1035, 2782, 3596).
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const ANY: u16 = 255;
}

/// Record data; names are absolute, lower case, without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Ptr(String),
    Txt(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Soa {
        mname: String,
        rname: String,
        serial: u32,
        refresh: i32,
        retry: i32,
        expire: i32,
        minimum: u32,
    },
}

impl Rdata {
    pub fn rtype(&self) -> u16 {
        match self {
            Rdata::A(_) => rtype::A,
            Rdata::Aaaa(_) => rtype::AAAA,
            Rdata::Cname(_) => rtype::CNAME,
            Rdata::Ptr(_) => rtype::PTR,
            Rdata::Txt(_) => rtype::TXT,
            Rdata::Srv { .. } => rtype::SRV,
            Rdata::Soa { .. } => rtype::SOA,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub ttl: u32,
    pub rdata: Rdata,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    NxDomain,
}

/// The zone's answer to one question. `NoError` with no answers is NODATA: the name exists
/// without records of the type asked. Negative answers carry the zone's SOA as authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: Rcode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Authoritative(Answer),
    /// Not a cluster name: the upstream resolvers answer it.
    Forward,
}

/// One cluster domain's records, rebuilt as a whole when Services or EndpointSlices change.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    domain: String,
    records: BTreeMap<String, BTreeSet<Rdata>>,
    /// Every name that exists in the zone, empty non-terminals included (they answer NODATA).
    names: HashSet<String>,
}

/// An endpoint's address and the label it is published under (`hostname`, else its dashed IP).
struct Published {
    ip: IpAddr,
    label: String,
}

impl Zone {
    /// The zone for `domain` (e.g. `cluster.local`) from all Services and EndpointSlices.
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let domain = normalize(domain);
        let mut zone = Zone {
            records: BTreeMap::new(),
            names: HashSet::new(),
            domain: domain.clone(),
        };
        let soa = zone.soa_rdata();
        zone.add(&domain, soa);
        zone.add(
            &format!("dns-version.{domain}"),
            Rdata::Txt(SCHEMA_VERSION.into()),
        );
        zone.mark(&format!("svc.{domain}"));
        zone.mark(&format!("pod.{domain}"));
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for s in slices {
            if let Some(key) = crate::proxy::model::slice_service(s) {
                by_service.entry(key).or_default().push(s);
            }
        }
        for svc in services {
            let key = (
                svc.metadata.namespace.clone().unwrap_or_default(),
                svc.metadata.name.clone().unwrap_or_default(),
            );
            let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
            zone.add_service(svc, slices);
        }
        zone
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The zone's SOA record (the authority of negative answers).
    pub fn soa(&self) -> Record {
        Record {
            name: self.domain.clone(),
            ttl: TTL,
            rdata: self.soa_rdata(),
        }
    }

    fn soa_rdata(&self) -> Rdata {
        Rdata::Soa {
            mname: format!("ns.dns.{}", self.domain),
            rname: format!("hostmaster.{}", self.domain),
            serial: 1,
            refresh: 7200,
            retry: 1800,
            expire: 86400,
            minimum: TTL,
        }
    }

    fn add(&mut self, name: &str, rdata: Rdata) {
        self.mark(name);
        self.records
            .entry(name.to_string())
            .or_default()
            .insert(rdata);
    }

    /// `name` and its ancestors down to the zone apex exist (reverse names are not nodes of
    /// the zone: they are looked up by their records alone).
    fn mark(&mut self, name: &str) {
        if name != self.domain && !name.ends_with(&format!(".{}", self.domain)) {
            return;
        }
        let mut n = name;
        loop {
            if !self.names.insert(n.to_string()) || n == self.domain {
                return;
            }
            match n.split_once('.') {
                Some((_, parent)) if parent.len() >= self.domain.len() => n = parent,
                _ => return,
            }
        }
    }

    fn add_service(&mut self, svc: &Service, slices: &[&EndpointSlice]) {
        let Some(spec) = &svc.spec else { return };
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            return;
        };
        let fqdn = format!("{}.{}.svc.{}", lower(name), lower(ns), self.domain);
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().filter(|t| !t.is_empty()) {
                self.add(&fqdn, Rdata::Cname(normalize(target)));
            }
            return;
        }
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        // The deprecated annotation counts as publishNotReadyAddresses (specification 2.1).
        let tolerate_unready = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOLERATE_UNREADY))
            .is_some_and(|v| v == "true");
        let published = published_endpoints(
            slices,
            spec.publish_not_ready_addresses == Some(true) || tolerate_unready,
        );
        if headless {
            self.add_headless(&fqdn, slices, &published);
        } else if !cluster_ips.is_empty() {
            self.add_cluster_ip(&fqdn, svc, &cluster_ips);
        } else {
            return;
        }
        // Endpoint IPs point back at the service's name for them (CoreDNS serves these for
        // the endpoints of every service, not only headless ones).
        for ep in &published {
            self.add(
                &reverse_name(ep.ip),
                Rdata::Ptr(format!("{}.{fqdn}", ep.label)),
            );
        }
    }

    fn add_cluster_ip(&mut self, fqdn: &str, svc: &Service, ips: &[IpAddr]) {
        for ip in ips {
            self.add(fqdn, address(*ip));
            self.add(&reverse_name(*ip), Rdata::Ptr(fqdn.to_string()));
        }
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
        for p in ports.into_iter().flatten() {
            let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let proto = lower(p.protocol.as_deref().unwrap_or("TCP"));
            self.add(
                &format!("_{}._{proto}.{fqdn}", lower(port_name)),
                Rdata::Srv {
                    priority: 0,
                    weight: 100,
                    port,
                    target: fqdn.to_string(),
                },
            );
        }
    }

    /// Without ready endpoints a headless Service has no records at all: its name is
    /// NXDOMAIN (specification 2.4.1).
    fn add_headless(&mut self, fqdn: &str, slices: &[&EndpointSlice], eps: &[Published]) {
        for ep in eps {
            self.add(fqdn, address(ep.ip));
            self.add(&format!("{}.{fqdn}", ep.label), address(ep.ip));
        }
        let ports: BTreeSet<(String, String, u16)> = slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.as_deref().filter(|n| !n.is_empty())?;
                let port = u16::try_from(p.port?).ok()?;
                let proto = lower(p.protocol.as_deref().unwrap_or("TCP"));
                Some((lower(name), proto, port))
            })
            .collect();
        let targets: BTreeSet<&str> = eps.iter().map(|e| e.label.as_str()).collect();
        let weight = u16::try_from(100 / targets.len().max(1))
            .unwrap_or(1)
            .max(1);
        for (name, proto, port) in ports {
            for label in &targets {
                self.add(
                    &format!("_{name}._{proto}.{fqdn}"),
                    Rdata::Srv {
                        priority: 0,
                        weight,
                        port,
                        target: format!("{label}.{fqdn}"),
                    },
                );
            }
        }
    }

    /// Answer `qname` (any case, with or without the trailing dot) for type `qtype`.
    pub fn lookup(&self, qname: &str, qtype: u16) -> Lookup {
        let name = normalize(qname);
        if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
            // Reverse names are ours only where a cluster address has a PTR; the rest go
            // upstream (CoreDNS: `fallthrough in-addr.arpa ip6.arpa`).
            return match self.records.get(&name) {
                Some(_) => Lookup::Authoritative(self.answer_existing(&name, qtype)),
                None => Lookup::Forward,
            };
        }
        if name != self.domain && !name.ends_with(&format!(".{}", self.domain)) {
            return Lookup::Forward;
        }
        if let Some(ip) = self.pod_address(&name) {
            return Lookup::Authoritative(self.positive(&name, qtype, vec![address(ip)]));
        }
        if !self.names.contains(&name) {
            return Lookup::Authoritative(self.negative(Rcode::NxDomain));
        }
        Lookup::Authoritative(self.answer_existing(&name, qtype))
    }

    fn answer_existing(&self, name: &str, qtype: u16) -> Answer {
        let all: Vec<Rdata> = self
            .records
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut answer = self.positive(name, qtype, all);
        // An in-zone CNAME target (an ExternalName naming another service) is followed here;
        // one outside the zone is the server's to resolve upstream.
        if let Some(Rdata::Cname(target)) = answer.answers.last().map(|r| r.rdata.clone())
            && qtype != rtype::CNAME
            && let Lookup::Authoritative(chased) = self.lookup_once(&target, qtype)
        {
            answer.answers.extend(chased.answers);
        }
        answer
    }

    /// A lookup that does not follow CNAMEs again (one level of chasing, no loops).
    fn lookup_once(&self, target: &str, qtype: u16) -> Lookup {
        if target != self.domain && !target.ends_with(&format!(".{}", self.domain)) {
            return Lookup::Forward;
        }
        let rdata: Vec<Rdata> = self
            .records
            .get(target)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let answers = rdata
            .into_iter()
            .filter(|r| r.rtype() == qtype)
            .map(|rdata| record(target, rdata))
            .collect();
        Lookup::Authoritative(Answer {
            rcode: Rcode::NoError,
            answers,
            authority: Vec::new(),
            additionals: Vec::new(),
        })
    }

    /// The records of an existing name matching `qtype` (a CNAME answers every type).
    fn positive(&self, name: &str, qtype: u16, rdata: Vec<Rdata>) -> Answer {
        let cname = rdata.iter().find(|r| matches!(r, Rdata::Cname(_))).cloned();
        let answers: Vec<Record> = match cname {
            Some(c) if qtype != rtype::CNAME => vec![record(name, c)],
            _ => rdata
                .into_iter()
                .filter(|r| qtype == rtype::ANY || r.rtype() == qtype)
                .map(|rdata| record(name, rdata))
                .collect(),
        };
        if answers.is_empty() {
            return self.negative(Rcode::NoError);
        }
        let additionals = self.srv_additionals(&answers);
        Answer {
            rcode: Rcode::NoError,
            answers,
            authority: Vec::new(),
            additionals,
        }
    }

    /// The addresses of SRV targets, so a client need not ask for them.
    fn srv_additionals(&self, answers: &[Record]) -> Vec<Record> {
        let mut out = Vec::new();
        for a in answers {
            let Rdata::Srv { target, .. } = &a.rdata else {
                continue;
            };
            for r in self.records.get(target).into_iter().flatten() {
                if matches!(r, Rdata::A(_) | Rdata::Aaaa(_)) {
                    let rec = record(target, r.clone());
                    if !out.contains(&rec) {
                        out.push(rec);
                    }
                }
            }
        }
        out
    }

    fn negative(&self, rcode: Rcode) -> Answer {
        Answer {
            rcode,
            answers: Vec::new(),
            authority: vec![self.soa()],
            additionals: Vec::new(),
        }
    }

    /// `<a-b-c-d>.<namespace>.pod.<domain>`: the address in the first label (not checked
    /// against running pods, as CoreDNS's `pods insecure`).
    fn pod_address(&self, name: &str) -> Option<IpAddr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (label, ns) = rest.split_once('.')?;
        if ns.is_empty() || ns.contains('.') {
            return None;
        }
        if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

fn record(name: &str, rdata: Rdata) -> Record {
    Record {
        name: name.to_string(),
        ttl: TTL,
        rdata,
    }
}

fn address(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(v4) => Rdata::A(v4),
        IpAddr::V6(v6) => Rdata::Aaaa(v6),
    }
}

/// The endpoints a service publishes: the ready ones, or all with `publishNotReadyAddresses`.
fn published_endpoints(slices: &[&EndpointSlice], not_ready_too: bool) -> Vec<Published> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in &slice.endpoints {
            // A missing `ready` condition means ready (EndpointSlice API).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            if !ready && !not_ready_too {
                continue;
            }
            let hostname = ep.hostname.as_deref().filter(|h| !h.is_empty()).map(lower);
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let label = hostname.clone().unwrap_or_else(|| dashed(ip));
                if seen.insert((ip, label.clone())) {
                    out.push(Published { ip, label });
                }
            }
        }
    }
    out
}

/// `10.244.1.5` → `10-244-1-5` (an IPv6 address with its colons as dashes).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// `10.96.0.10` → `10.0.96.10.in-addr.arpa`; IPv6 as nibbles under `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

/// Lower case without the trailing dot: names compare case-insensitively (RFC 4343).
pub fn normalize(name: &str) -> String {
    lower(name.trim_end_matches('.'))
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
