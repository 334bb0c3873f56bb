//! kube-proxy's iptables layout as text: chain names and the rules of every chain, written
//! exactly as `iptables-save` prints them back (option order, quoting, the statistic
//! match's probability), so a restarted agent that reads the tables finds its own rules
//! unchanged and rewrites nothing.
//!
//! Per service port with usable endpoints (nat table):
//! - `KUBE-SERVICES`: `-d VIP/32 -p proto --dport port -j KUBE-SVC-<hash>`;
//! - `KUBE-SVC-<hash>`: optional masquerade (cluster CIDR / masquerade-all), `-m recent`
//!   affinity checks, then one `-m statistic --probability 1/(n-i)` jump per endpoint;
//! - `KUBE-SEP-<hash>`: hairpin `-s EP/32 -j KUBE-MARK-MASQ`, then DNAT to the endpoint;
//! - with a node port, `KUBE-NODEPORTS` jumps to `KUBE-EXT-<hash>`, which masquerades and
//!   goes to the service chain (`Cluster` policy) or balances over local endpoints only,
//!   keeping the client address (`Local` policy).
//!
//! - external IPs jump from `KUBE-SERVICES` to `KUBE-EXT-<hash>` too; LoadBalancer addresses
//!   as well, or, with `loadBalancerSourceRanges`, to `KUBE-FW-<hash>`, which sends clients
//!   in the ranges on to `KUBE-EXT-<hash>`; what it leaves untranslated is dropped in the
//!   filter table (kube-proxy's `KUBE-PROXY-FIREWALL`);
//! - a pod's hostPort: `KUBE-HOSTPORTS` (from PREROUTING and OUTPUT, local destinations)
//!   jumps to `KUBE-HP-<hash>`, which DNATs to the pod (kubelet's old hostport manager,
//!   the CNI portmap plugin's rules), masquerading hairpin and loopback clients.
//!
//! Without usable endpoints the filter table's `KUBE-SERVICES` (and for node ports, external
//! IPs and LB addresses `KUBE-EXTERNAL-SERVICES`) REJECTs new connections: TCP with a reset,
//! UDP with ICMP port-unreachable (see [`reject_with`]).
//!
//! NodePorts and hostPorts answer on 127.0.0.1 as in kube-proxy: the dataplane sets
//! `route_localnet` and `KUBE-FIREWALL` drops outside packets to 127.0.0.0/8.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::network::Ipv4Net;
use crate::proxy::model::{
    Endpoint, HOST_PORT_PREFIX, HostPort, Protocol, ServicePort, ServicePortName,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_HOSTPORTS: &str = "KUBE-HOSTPORTS";
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// Rejects new connections to the service CIDR that no Service rule translated, so they
/// fail on the node instead of leaving it by the default route (as kube-proxy's nftables
/// mode does for unallocated cluster IPs).
pub const KUBE_CLUSTER_IPS: &str = "KUBE-CLUSTER-IPS";

/// The last rule of the nat `KUBE-SERVICES` chain.
pub const NODEPORTS_JUMP: &str = "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS";

/// Prefixes of the per-service chains. A chain with one of these prefixes that the
/// current state does not want is stale and deleted (kube-proxy's names included, so
/// leftovers of an older layout go too).
pub const SERVICE_CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-EXT-",
    "KUBE-SVL-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-HP-",
];

pub fn is_service_chain(chain: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// Chains whose rules come from many services and are maintained rule by rule
/// (`-D CHAIN n` / `-I CHAIN 1 rule`) instead of being flushed and rewritten: at 10,000
/// services rewriting `KUBE-SERVICES` costs ~1.5 s on the nft backend, an edit ~0.1–0.3 s.
/// `tail` is a rule that must stay last.
pub struct SharedChain {
    pub table: Table,
    pub chain: &'static str,
    pub tail: Option<&'static str>,
}

pub const SHARED_CHAINS: &[SharedChain] = &[
    SharedChain {
        table: Table::Nat,
        chain: KUBE_SERVICES,
        tail: Some(NODEPORTS_JUMP),
    },
    SharedChain {
        table: Table::Nat,
        chain: KUBE_NODEPORTS,
        tail: None,
    },
    SharedChain {
        table: Table::Nat,
        chain: KUBE_HOSTPORTS,
        tail: None,
    },
    SharedChain {
        table: Table::Filter,
        chain: KUBE_SERVICES,
        tail: None,
    },
    SharedChain {
        table: Table::Filter,
        chain: KUBE_EXTERNAL_SERVICES,
        tail: None,
    },
];

/// Chains with fixed content (for a configuration).
pub fn static_chains(cfg: &RuleConfig) -> Vec<(Table, &'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    // By the filter table a translated packet carries its endpoint's address: whatever
    // still heads for the service CIDR matched no Service.
    // TCP gets a reset, as services without endpoints do (see `reject_with`): this chain
    // may be reached before KUBE-SERVICES, and an ICMP error would leave connect() waiting.
    let cluster_ips = cfg
        .service_cidr
        .map(|cidr| {
            vec![
                format!(
                    "-d {cidr} -p tcp -m comment --comment \"no service at this cluster IP and port\" -j REJECT --reject-with tcp-reset"
                ),
                format!(
                    "-d {cidr} -m comment --comment \"no service at this cluster IP and port\" -j REJECT --reject-with icmp-port-unreachable"
                ),
            ]
        })
        .unwrap_or_default();
    vec![
        (Table::Filter, KUBE_CLUSTER_IPS, cluster_ips),
        (
            Table::Filter,
            KUBE_FIREWALL,
            s(&[
                "! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
            ]),
        ),
        (
            Table::Nat,
            KUBE_MARK_MASQ,
            s(&[
                "-m comment --comment \"kubernetes: mark traffic for masquerade\" -j MARK --set-xmark 0x4000/0x4000",
            ]),
        ),
        (
            Table::Nat,
            KUBE_POSTROUTING,
            s(&[
                "-m comment --comment \"kubernetes: only marked traffic is masqueraded\" -m mark ! --mark 0x4000/0x4000 -j RETURN",
                "-m comment --comment \"kubernetes: clear the masquerade mark\" -j MARK --set-xmark 0x4000/0x0",
                "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            ]),
        ),
        (
            Table::Filter,
            KUBE_FORWARD,
            s(&[
                "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
                "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ]),
        ),
    ]
}

/// The jumps from built-in chains, as kube-proxy installs them: `(table, chain, rule)`.
pub fn jumps() -> Vec<(Table, &'static str, &'static str)> {
    const PORTALS: &str = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    const NEW_PORTALS: &str = "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    const NEW_EXTERNAL: &str = "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES";
    const HOSTPORTS: &str = "-m comment --comment \"kube hostport portals\" -m addrtype --dst-type LOCAL -j KUBE-HOSTPORTS";
    const FIREWALL: &str = "-j KUBE-FIREWALL";
    const NEW_CLUSTER_IPS: &str = "-m conntrack --ctstate NEW -m comment --comment \"cluster IPs without a service\" -j KUBE-CLUSTER-IPS";
    vec![
        (Table::Nat, "PREROUTING", PORTALS),
        (Table::Nat, "OUTPUT", PORTALS),
        (Table::Nat, "PREROUTING", HOSTPORTS),
        (Table::Nat, "OUTPUT", HOSTPORTS),
        (Table::Filter, "INPUT", FIREWALL),
        (Table::Filter, "OUTPUT", FIREWALL),
        (
            Table::Nat,
            "POSTROUTING",
            "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        ),
        (Table::Filter, "INPUT", NEW_EXTERNAL),
        (Table::Filter, "FORWARD", NEW_EXTERNAL),
        (Table::Filter, "FORWARD", NEW_PORTALS),
        (Table::Filter, "OUTPUT", NEW_PORTALS),
        (Table::Filter, "FORWARD", NEW_CLUSTER_IPS),
        (Table::Filter, "OUTPUT", NEW_CLUSTER_IPS),
        (
            Table::Filter,
            "FORWARD",
            "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        ),
    ]
}

/// Chains the dataplane owns outright (fixed and shared), per table.
pub fn is_fixed_chain(table: Table, chain: &str) -> bool {
    match table {
        Table::Nat => matches!(
            chain,
            KUBE_SERVICES | KUBE_NODEPORTS | KUBE_HOSTPORTS | KUBE_MARK_MASQ | KUBE_POSTROUTING
        ),
        Table::Filter => matches!(
            chain,
            KUBE_SERVICES
                | KUBE_EXTERNAL_SERVICES
                | KUBE_FORWARD
                | KUBE_CLUSTER_IPS
                | KUBE_FIREWALL
        ),
    }
}

/// RFC 4648 base32 (Go's `base32.StdEncoding`), without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in data {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// kube-proxy's `portProtoHash`: `base32(sha256(name + protocol))[:16]`.
pub fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut s = base32(&digest);
    s.truncate(16);
    s
}

fn port_proto(name: &ServicePortName) -> String {
    format!("{name}{}", name.protocol.as_str())
}

/// `KUBE-SVC-<hash>` of a service port.
pub fn svc_chain(name: &ServicePortName) -> String {
    format!("KUBE-SVC-{}", hash16(&port_proto(name)))
}

/// `KUBE-SVL-<hash>`: the local endpoints of a service port (`internalTrafficPolicy: Local`).
pub fn svl_chain(name: &ServicePortName) -> String {
    format!("KUBE-SVL-{}", hash16(&port_proto(name)))
}

/// `KUBE-EXT-<hash>`: the node port entry of a service port.
pub fn ext_chain(name: &ServicePortName) -> String {
    format!("KUBE-EXT-{}", hash16(&port_proto(name)))
}

/// `KUBE-FW-<hash>`: the source-range check of a service port's LB addresses.
pub fn fw_chain(name: &ServicePortName) -> String {
    format!("KUBE-FW-{}", hash16(&port_proto(name)))
}

/// `KUBE-HP-<hash>`: one hostPort of a pod (its entry's name and the host port).
pub fn hp_chain(name: &ServicePortName) -> String {
    format!("KUBE-HP-{}", hash16(&port_proto(name)))
}

/// `KUBE-SEP-<hash>` of one endpoint of a service port.
pub fn sep_chain(name: &ServicePortName, ip: Ipv4Addr, port: u16) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{}{ip}:{port}", port_proto(name)))
    )
}

/// The probability of the `i`-th of `n` statistic rules, `1/(n-i)`: kube-proxy writes it
/// with `%0.10f`; the statistic match stores `lround(2^31 * p)` and `iptables-save` prints
/// that back with 11 decimals. This returns the printed-back form (same kernel value as
/// kube-proxy's rule), so restored rules compare equal.
pub fn probability(n: usize, i: usize) -> String {
    let p = 1.0 / (n - i) as f64;
    let kube: f64 = format!("{p:.10}").parse().unwrap_or(p);
    let stored = (kube * 2_147_483_648.0).round();
    format!("{:.11}", stored / 2_147_483_648.0)
}

/// Quote a match argument the way `iptables-save` does (`xtables_save_string`).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Knobs of the generated rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleConfig {
    /// Traffic to a cluster IP from outside this CIDR is masqueraded (kube-proxy's
    /// `--cluster-cidr`); with `Local` node ports, pod traffic short-circuits to the
    /// service chain.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Masquerade all traffic to cluster IPs (kube-proxy's `--masquerade-all`).
    pub masquerade_all: bool,
    /// The service CIDR: new connections to it that no Service translated are rejected.
    pub service_cidr: Option<Ipv4Net>,
}

/// What one service port contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chains owned by this service port (nat table), with their rules.
    pub chains: Vec<(String, Vec<String>)>,
    /// Rules in shared chains: `(table, chain, rule)`.
    pub shared: Vec<(Table, &'static str, String)>,
}

/// The load-balancing rules of a service (or `Local` external) chain over `seps`.
fn balance(out: &mut Vec<String>, name: &str, seps: &[(String, &Endpoint)], affinity: Option<u32>) {
    let comment = |ep: &Endpoint| quote(&format!("{name} -> {}:{}", ep.ip, ep.port));
    if let Some(secs) = affinity {
        for (sep, ep) in seps {
            out.push(format!(
                "-m comment --comment {} -m recent --rcheck --seconds {secs} --reap --name {sep} --mask 255.255.255.255 --rsource -j {sep}",
                comment(ep)
            ));
        }
    }
    let n = seps.len();
    for (i, (sep, ep)) in seps.iter().enumerate() {
        if i + 1 < n {
            out.push(format!(
                "-m comment --comment {} -m statistic --mode random --probability {} -j {sep}",
                comment(ep),
                probability(n, i)
            ));
        } else {
            out.push(format!("-m comment --comment {} -j {sep}", comment(ep)));
        }
    }
}

/// How a service port without endpoints refuses a new connection. kube-proxy answers TCP
/// with ICMP port-unreachable too, but a TCP socket drops an ICMP error that arrives while
/// its owner still holds the socket lock, and one REJECTed on the same machine (the node
/// itself, or a pod behind its bridge) arrives within the `connect()` call that sent the SYN:
/// the client learns of the refusal only from the error of the SYN retransmitted a second
/// later (and, for pods, the per-host ICMP rate limit may eat that too). A reset is queued to
/// the socket's backlog instead of dropped, so `connect()` fails with ECONNREFUSED at once.
pub fn reject_with(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp-reset",
        Protocol::Udp => "icmp-port-unreachable",
    }
}

/// Everything one service port needs, in `iptables-save` form.
pub fn service_rules(sp: &ServicePort, cfg: &RuleConfig) -> ServiceRules {
    let usable = sp.usable();
    let mut out = ServiceRules::default();
    if let Some(hp) = sp.extra.host_port {
        host_port_rules(sp, hp, &mut out);
        return out;
    }
    if usable.is_empty() {
        reject_rules(sp, &mut out);
        return out;
    }
    let port = Balanced {
        sp,
        cfg,
        name: sp.name.to_string(),
        proto: sp.name.protocol.as_str(),
        svc: svc_chain(&sp.name),
        seps: with_sep_chains(&sp.name, usable),
        local: with_sep_chains(&sp.name, sp.usable_local()),
    };
    port.service_chain(&mut out);
    if sp.internal_local {
        port.local_chain(&mut out);
    }
    if sp.node_port != 0 || sp.external_addrs().next().is_some() {
        port.external_chain(&mut out);
        port.external_addr_jumps(&mut out);
    }
    port.endpoint_chains(&mut out);
    out
}

fn with_sep_chains<'a>(
    name: &ServicePortName,
    eps: Vec<&'a Endpoint>,
) -> Vec<(String, &'a Endpoint)> {
    eps.into_iter()
        .map(|e| (sep_chain(name, e.ip, e.port), e))
        .collect()
}

/// A service port with usable endpoints, and what its chains are built from.
struct Balanced<'a> {
    sp: &'a ServicePort,
    cfg: &'a RuleConfig,
    /// `namespace/name:port`.
    name: String,
    proto: &'static str,
    /// Its `KUBE-SVC-*` chain.
    svc: String,
    /// Its endpoints, each with its `KUBE-SEP-*` chain.
    seps: Vec<(String, &'a Endpoint)>,
    /// This node's endpoints for the `Local` policies (with their own terminating fallback,
    /// so not always a part of `seps`).
    local: Vec<(String, &'a Endpoint)>,
}

/// Without usable endpoints: REJECT new connections to the cluster IP and the node port
/// (filter table).
fn reject_rules(sp: &ServicePort, out: &mut ServiceRules) {
    let (vip, port, np) = (sp.cluster_ip, sp.port, sp.node_port);
    let proto = sp.name.protocol.as_str();
    let comment = quote(&format!("{} has no endpoints", sp.name));
    let reject = reject_with(sp.name.protocol);
    out.shared.push((
        Table::Filter,
        KUBE_SERVICES,
        format!(
            "-d {vip}/32 -p {proto} -m comment --comment {comment} -m {proto} --dport {port} -j REJECT --reject-with {reject}"
        ),
    ));
    if np != 0 {
        out.shared.push((
            Table::Filter,
            KUBE_EXTERNAL_SERVICES,
            format!(
                "-p {proto} -m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} --dport {np} -j REJECT --reject-with {reject}"
            ),
        ));
    }
    for (ip, _) in sp.external_addrs() {
        out.shared.push((
            Table::Filter,
            KUBE_EXTERNAL_SERVICES,
            format!(
                "-d {ip}/32 -p {proto} -m comment --comment {comment} -m {proto} --dport {port} -j REJECT --reject-with {reject}"
            ),
        ));
    }
}

/// A pod's hostPort: `KUBE-HOSTPORTS` → `KUBE-HP-*` → DNAT to the pod, hairpin and loopback
/// clients masqueraded (their replies must come back through this node's NAT).
fn host_port_rules(sp: &ServicePort, hp: HostPort, out: &mut ServiceRules) {
    let Some(ep) = sp.endpoints.first() else {
        return;
    };
    let proto = sp.name.protocol.as_str();
    let chain = hp_chain(&sp.name);
    let c = quote(&format!(
        "{}/{} hostport {}",
        sp.name.namespace,
        pod_name(sp),
        hp.port
    ));
    let dst = hp.ip.map(|ip| format!("-d {ip}/32 ")).unwrap_or_default();
    out.shared.push((
        Table::Nat,
        KUBE_HOSTPORTS,
        format!(
            "{dst}-p {proto} -m comment --comment {c} -m {proto} --dport {} -j {chain}",
            hp.port
        ),
    ));
    out.chains.push((
        chain,
        vec![
            format!("-s {}/32 -m comment --comment {c} -j KUBE-MARK-MASQ", ep.ip),
            format!("-s 127.0.0.0/8 -m comment --comment {c} -j KUBE-MARK-MASQ"),
            format!(
                "-p {proto} -m comment --comment {c} -m {proto} -j DNAT --to-destination {}:{}",
                ep.ip, ep.port
            ),
        ],
    ));
}

/// The pod a hostPort entry belongs to.
fn pod_name(sp: &ServicePort) -> &str {
    sp.name
        .name
        .strip_prefix(HOST_PORT_PREFIX)
        .unwrap_or(&sp.name.name)
}

impl Balanced<'_> {
    /// `KUBE-SVC-*` (masquerade, then balance over every endpoint) and its jump from
    /// `KUBE-SERVICES`.
    fn service_chain(&self, out: &mut ServiceRules) {
        let (vip, port, proto, svc) = (self.sp.cluster_ip, self.sp.port, self.proto, &self.svc);
        let cluster_ip = quote(&format!("{} cluster IP", self.name));
        let mut svc_rules = Vec::with_capacity(self.seps.len() * 2 + 1);
        if self.cfg.masquerade_all {
            svc_rules.push(format!(
                "-d {vip}/32 -p {proto} -m comment --comment {cluster_ip} -m {proto} --dport {port} -j KUBE-MARK-MASQ"
            ));
        } else if let Some(cidr) = self.cfg.cluster_cidr {
            svc_rules.push(format!(
                "! -s {cidr} -d {vip}/32 -p {proto} -m comment --comment {cluster_ip} -m {proto} --dport {port} -j KUBE-MARK-MASQ"
            ));
        }
        balance(
            &mut svc_rules,
            &self.name,
            &self.seps,
            self.sp.affinity_timeout,
        );
        out.chains.push((svc.clone(), svc_rules));
        if !self.sp.internal_local {
            out.shared.push((
                Table::Nat,
                KUBE_SERVICES,
                format!(
                    "-d {vip}/32 -p {proto} -m comment --comment {cluster_ip} -m {proto} --dport {port} -j {svc}"
                ),
            ));
        }
    }

    /// `internalTrafficPolicy: Local`: the cluster IP goes to `KUBE-SVL-*`, which balances
    /// over this node's endpoints; without any, new connections to it are dropped (the
    /// service has endpoints, just none here), as kube-proxy does.
    fn local_chain(&self, out: &mut ServiceRules) {
        let (vip, port, proto) = (self.sp.cluster_ip, self.sp.port, self.proto);
        if self.local.is_empty() {
            let comment = quote(&format!("{} has no local endpoints", self.name));
            out.shared.push((
                Table::Filter,
                KUBE_SERVICES,
                format!(
                    "-d {vip}/32 -p {proto} -m comment --comment {comment} -m {proto} --dport {port} -j DROP"
                ),
            ));
            return;
        }
        let svl = svl_chain(&self.sp.name);
        let mut rules = Vec::with_capacity(self.local.len() * 2);
        balance(
            &mut rules,
            &self.name,
            &self.local,
            self.sp.affinity_timeout,
        );
        out.chains.push((svl.clone(), rules));
        let cluster_ip = quote(&format!("{} cluster IP", self.name));
        out.shared.push((
            Table::Nat,
            KUBE_SERVICES,
            format!(
                "-d {vip}/32 -p {proto} -m comment --comment {cluster_ip} -m {proto} --dport {port} -j {svl}"
            ),
        ));
    }

    /// `KUBE-EXT-*`, the node port's entry, and its jump from `KUBE-NODEPORTS`: masquerade and
    /// go to the service chain (`Cluster` policy), or balance over the local endpoints keeping
    /// the client address (`Local`; dropped in the filter table without local endpoints).
    fn external_chain(&self, out: &mut ServiceRules) {
        let (sp, name, proto, svc) = (self.sp, &self.name, self.proto, &self.svc);
        let np = sp.node_port;
        let c = quote(name);
        let ext = ext_chain(&sp.name);
        let mut ext_rules = Vec::new();
        if sp.external_local {
            if let Some(cidr) = self.cfg.cluster_cidr {
                ext_rules.push(format!(
                    "-s {cidr} -m comment --comment {} -j {svc}",
                    quote(&format!("pod traffic for {name} external destinations"))
                ));
            }
            ext_rules.push(format!(
                "-m comment --comment {} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                quote(&format!(
                    "masquerade LOCAL traffic for {name} external destinations"
                ))
            ));
            ext_rules.push(format!(
                "-m comment --comment {} -m addrtype --src-type LOCAL -j {svc}",
                quote(&format!(
                    "route LOCAL traffic for {name} external destinations"
                ))
            ));
            let local = &self.local;
            if local.is_empty() {
                self.drop_external(
                    out,
                    &quote(&format!("{name} has no local endpoints")),
                    false,
                );
            } else {
                balance(&mut ext_rules, name, local, sp.affinity_timeout);
            }
        } else {
            ext_rules.push(format!(
                "-m comment --comment {} -j KUBE-MARK-MASQ",
                quote(&format!(
                    "masquerade traffic for {name} external destinations"
                ))
            ));
            ext_rules.push(format!("-m comment --comment {c} -j {svc}"));
        }
        out.chains.push((ext.clone(), ext_rules));
        if np != 0 {
            out.shared.push((
                Table::Nat,
                KUBE_NODEPORTS,
                format!("-p {proto} -m comment --comment {c} -m {proto} --dport {np} -j {ext}"),
            ));
        }
    }

    /// Filter-table DROPs of new connections to the external frontends (the node port and
    /// every external address, or with `lb_only` the LB addresses alone) that no rule
    /// translated.
    fn drop_external(&self, out: &mut ServiceRules, comment: &str, lb_only: bool) {
        let (sp, proto, port) = (self.sp, self.proto, self.sp.port);
        if sp.node_port != 0 && !lb_only {
            out.shared.push((
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                format!(
                    "-p {proto} -m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} --dport {} -j DROP",
                    sp.node_port
                ),
            ));
        }
        for (ip, lb) in sp.external_addrs() {
            if lb_only && !lb {
                continue;
            }
            // INPUT (an address the node holds) and FORWARD through KUBE-EXTERNAL-SERVICES,
            // the node's own sockets (OUTPUT) through KUBE-SERVICES.
            for chain in [KUBE_EXTERNAL_SERVICES, KUBE_SERVICES] {
                out.shared.push((
                    Table::Filter,
                    chain,
                    format!(
                        "-d {ip}/32 -p {proto} -m comment --comment {comment} -m {proto} --dport {port} -j DROP"
                    ),
                ));
            }
        }
    }

    /// `KUBE-SERVICES` jumps for the external IPs (to `KUBE-EXT-*`) and LB addresses (to
    /// `KUBE-EXT-*`, or through `KUBE-FW-*` with source ranges).
    fn external_addr_jumps(&self, out: &mut ServiceRules) {
        let (sp, name, proto) = (self.sp, &self.name, self.proto);
        let port = sp.port;
        let ext = ext_chain(&sp.name);
        let ranges = &sp.extra.source_ranges;
        let fw = fw_chain(&sp.name);
        let lb_comment = quote(&format!("{name} loadbalancer IP"));
        for (ip, lb) in sp.external_addrs() {
            let (comment, target) = match lb {
                true if !ranges.is_empty() => (lb_comment.clone(), &fw),
                true => (lb_comment.clone(), &ext),
                false => (quote(&format!("{name} external IP")), &ext),
            };
            out.shared.push((
                Table::Nat,
                KUBE_SERVICES,
                format!(
                    "-d {ip}/32 -p {proto} -m comment --comment {comment} -m {proto} --dport {port} -j {target}"
                ),
            ));
        }
        if ranges.is_empty() || sp.extra.lb_ips.is_empty() {
            return;
        }
        let fw_rules = ranges
            .iter()
            .map(|r| format!("-s {r} -m comment --comment {lb_comment} -j {ext}"))
            .collect();
        out.chains.push((fw, fw_rules));
        let comment = quote(&format!(
            "{name} traffic not accepted by {}",
            fw_chain(&sp.name)
        ));
        self.drop_external(out, &comment, true);
    }

    /// `KUBE-SEP-*` of each endpoint: hairpin masquerade, (affinity) and DNAT.
    fn endpoint_chains(&self, out: &mut ServiceRules) {
        let (c, proto) = (quote(&self.name), self.proto);
        // Every endpoint a chain of this port jumps to, once.
        let extra_local = self
            .local
            .iter()
            .filter(|(sep, _)| !self.seps.iter().any(|(s, _)| s == sep));
        for (sep, ep) in self.seps.iter().chain(extra_local) {
            let recent = if self.sp.affinity_timeout.is_some() {
                format!(" -m recent --set --name {sep} --mask 255.255.255.255 --rsource")
            } else {
                String::new()
            };
            out.chains.push((
                sep.clone(),
                vec![
                    format!("-s {}/32 -m comment --comment {c} -j KUBE-MARK-MASQ", ep.ip),
                    format!(
                        "-p {proto} -m comment --comment {c}{recent} -m {proto} -j DNAT --to-destination {}:{}",
                        ep.ip, ep.port
                    ),
                ],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_support::ep;

    pub(crate) fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    #[test]
    fn chain_names_match_kube_proxy() {
        // Vectors from kube-proxy's proxier_test.go.
        let n = spn("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(svc_chain(&n), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            sep_chain(&n, Ipv4Addr::new(10, 180, 0, 1), 80),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let n2 = spn("ns2", "svc2", "p80", Protocol::Tcp);
        assert_eq!(ext_chain(&n2), "KUBE-EXT-GNZBNJ2PO5MGZ6GT");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn probabilities_as_iptables_save_prints_them() {
        assert_eq!(probability(2, 0), "0.50000000000");
        assert_eq!(probability(3, 0), "0.33333333349");
        assert_eq!(probability(4, 0), "0.25000000000");
        assert_eq!(probability(3, 1), "0.50000000000");
        assert_eq!(probability(7, 0), "0.14285714272");
    }

    #[test]
    fn fixed_chains_are_the_static_and_shared_ones() {
        for t in Table::ALL {
            let mut listed: Vec<&str> = static_chains(&RuleConfig::default())
                .into_iter()
                .filter(|(tt, _, _)| *tt == t)
                .map(|(_, c, _)| c)
                .chain(
                    SHARED_CHAINS
                        .iter()
                        .filter(|s| s.table == t)
                        .map(|s| s.chain),
                )
                .collect();
            listed.sort();
            for c in &listed {
                assert!(is_fixed_chain(t, c), "{t} {c}");
            }
            assert!(!is_fixed_chain(t, "KUBE-SVC-X"));
            assert!(!is_fixed_chain(t, "POSTROUTING"));
        }
    }

    #[test]
    fn the_service_cidr_is_rejected_after_translation() {
        let chain = |cfg: &RuleConfig| {
            static_chains(cfg)
                .into_iter()
                .find(|(t, c, _)| *t == Table::Filter && *c == KUBE_CLUSTER_IPS)
                .map(|(_, _, rules)| rules)
                .unwrap()
        };
        assert!(chain(&RuleConfig::default()).is_empty());
        let cfg = RuleConfig {
            service_cidr: Some(Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12)),
            ..RuleConfig::default()
        };
        assert_eq!(
            chain(&cfg),
            [
                "-d 10.96.0.0/12 -p tcp -m comment --comment \"no service at this cluster IP and port\" -j REJECT --reject-with tcp-reset",
                "-d 10.96.0.0/12 -m comment --comment \"no service at this cluster IP and port\" -j REJECT --reject-with icmp-port-unreachable"
            ]
        );
        // Reached from OUTPUT and FORWARD, for new connections only.
        let from: Vec<&str> = jumps()
            .into_iter()
            .filter(|(t, _, rule)| *t == Table::Filter && rule.ends_with("-j KUBE-CLUSTER-IPS"))
            .map(|(_, chain, rule)| {
                assert!(rule.starts_with("-m conntrack --ctstate NEW "), "{rule}");
                chain
            })
            .collect();
        assert_eq!(from, ["FORWARD", "OUTPUT"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("abc_d-1"), "abc_d-1");
        assert_eq!(quote("ns/svc:p"), "\"ns/svc:p\"");
        assert_eq!(quote("a b"), "\"a b\"");
    }

    #[test]
    fn cluster_ip_service_with_two_endpoints() {
        let sp = ServicePort {
            name: spn("ns1", "svc1", "p80", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
            port: 80,
            node_port: 0,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            extra: Default::default(),
            endpoints: vec![
                ep([10, 180, 0, 1], 80, false),
                ep([10, 180, 0, 2], 80, false),
            ],
        };
        let r = service_rules(&sp, &RuleConfig::default());
        assert_eq!(r.chains.len(), 3);
        let (svc, rules) = &r.chains[0];
        assert_eq!(svc, "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            rules[0],
            "-m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(rules.len(), 2);
        assert!(!rules[1].contains("statistic"));
        let (sep, sep_rules) = &r.chains[1];
        assert_eq!(sep, "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(
            sep_rules,
            &vec![
                "-s 10.180.0.1/32 -m comment --comment \"ns1/svc1:p80\" -j KUBE-MARK-MASQ"
                    .to_string(),
                "-p tcp -m comment --comment \"ns1/svc1:p80\" -m tcp -j DNAT --to-destination 10.180.0.1:80".to_string(),
            ]
        );
        assert_eq!(
            r.shared,
            vec![(
                Table::Nat,
                KUBE_SERVICES,
                "-d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O".to_string()
            )]
        );
    }

    #[test]
    fn no_endpoints_rejects_in_filter() {
        let sp = ServicePort {
            name: spn("ns", "s", "", Protocol::Udp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            node_port: 30053,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            extra: Default::default(),
            endpoints: vec![],
        };
        let r = service_rules(&sp, &RuleConfig::default());
        assert!(r.chains.is_empty());
        assert_eq!(r.shared.len(), 2);
        assert_eq!(
            r.shared[0].2,
            "-d 10.96.0.10/32 -p udp -m comment --comment \"ns/s has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable"
        );
        assert_eq!(r.shared[1].1, KUBE_EXTERNAL_SERVICES);
        assert_eq!(
            r.shared[1].2,
            "-p udp -m comment --comment \"ns/s has no endpoints\" -m addrtype --dst-type LOCAL -m udp --dport 30053 -j REJECT --reject-with icmp-port-unreachable"
        );
    }

    #[test]
    fn no_endpoints_resets_tcp() {
        let sp = ServicePort {
            name: spn("ns", "web", "http", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
            port: 80,
            node_port: 30080,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            extra: Default::default(),
            // Not ready and not terminating: not usable.
            endpoints: vec![Endpoint {
                ready: false,
                ..ep([10, 244, 1, 5], 8080, false)
            }],
        };
        let r = service_rules(&sp, &RuleConfig::default());
        assert!(r.chains.is_empty(), "no usable endpoint, no nat chains");
        assert_eq!(
            r.shared,
            vec![
                (
                    Table::Filter,
                    KUBE_SERVICES,
                    "-d 10.96.0.11/32 -p tcp -m comment --comment \"ns/web:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with tcp-reset".to_string()
                ),
                (
                    Table::Filter,
                    KUBE_EXTERNAL_SERVICES,
                    "-p tcp -m comment --comment \"ns/web:http has no endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j REJECT --reject-with tcp-reset".to_string()
                ),
            ]
        );
    }

    #[test]
    fn affinity_node_port_and_local_policy() {
        let sp = ServicePort {
            name: spn("ns", "web", "http", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            node_port: 30080,
            affinity_timeout: Some(60),
            external_local: true,
            internal_local: false,
            extra: Default::default(),
            endpoints: vec![
                ep([10, 244, 1, 5], 8080, true),
                ep([10, 244, 2, 5], 8080, false),
                ep([10, 244, 3, 5], 8080, true),
            ],
        };
        let cfg = RuleConfig {
            cluster_cidr: Some(Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16)),
            ..RuleConfig::default()
        };
        let r = service_rules(&sp, &cfg);
        let svc = svc_chain(&sp.name);
        let ext = ext_chain(&sp.name);
        let svc_rules = &r.chains.iter().find(|(c, _)| *c == svc).unwrap().1;
        assert!(svc_rules[0].starts_with("! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp"));
        // 3 affinity checks, then 3 balancing rules.
        assert_eq!(svc_rules.len(), 7);
        assert!(svc_rules[1].contains("-m recent --rcheck --seconds 60 --reap --name KUBE-SEP-"));
        assert!(svc_rules[4].contains("--probability 0.33333333349"));
        assert!(svc_rules[5].contains("--probability 0.50000000000"));
        let ext_rules = &r.chains.iter().find(|(c, _)| *c == ext).unwrap().1;
        // pod short-circuit, LOCAL masquerade, LOCAL route, 2 affinity, 2 balancing.
        assert_eq!(ext_rules.len(), 7);
        assert!(ext_rules.iter().all(|r| !r.contains("10.244.2.5")));
        assert!(
            ext_rules
                .iter()
                .filter(|r| r.contains("KUBE-MARK-MASQ"))
                .count()
                == 1
        );
        assert!(r.shared.iter().any(|(t, c, rule)| *t == Table::Nat
            && *c == KUBE_NODEPORTS
            && rule.contains("--dport 30080 -j KUBE-EXT-")));
        let sep = &r
            .chains
            .iter()
            .find(|(c, _)| c.starts_with("KUBE-SEP-"))
            .unwrap();
        assert!(sep.1[1].contains(&format!(
            "-m recent --set --name {} --mask 255.255.255.255 --rsource -m tcp -j DNAT",
            sep.0
        )));
        // Every rule has a comment.
        for (_, rules) in &r.chains {
            assert!(rules.iter().all(|r| r.contains("-m comment --comment ")));
        }
    }

    #[test]
    fn internal_local_policy_balances_over_local_endpoints_or_drops() {
        let mut sp = ServicePort {
            name: spn("ns", "web", "http", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
            port: 80,
            node_port: 0,
            affinity_timeout: None,
            external_local: false,
            internal_local: true,
            extra: Default::default(),
            endpoints: vec![
                ep([10, 244, 1, 5], 8080, true),
                // Terminating here while a remote one is ready: not for the local policy.
                Endpoint {
                    ready: false,
                    serving: true,
                    terminating: true,
                    ..ep([10, 244, 1, 6], 8080, true)
                },
                ep([10, 244, 2, 5], 8080, false),
            ],
        };
        let r = service_rules(&sp, &RuleConfig::default());
        let svl = svl_chain(&sp.name);
        assert!(svl.starts_with("KUBE-SVL-"));
        let jump: Vec<&String> = r
            .shared
            .iter()
            .filter(|(t, c, _)| *t == Table::Nat && *c == KUBE_SERVICES)
            .map(|(_, _, rule)| rule)
            .collect();
        assert_eq!(jump.len(), 1, "{jump:?}");
        assert!(jump[0].ends_with(&format!("-j {svl}")), "{}", jump[0]);
        let svl_rules = &r.chains.iter().find(|(c, _)| *c == svl).unwrap().1;
        assert_eq!(svl_rules.len(), 1, "{svl_rules:?}");
        assert!(svl_rules[0].contains("10.244.1.5:8080"));

        // Only the terminating one is left here: the local fallback takes it.
        sp.endpoints.remove(0);
        let r = service_rules(&sp, &RuleConfig::default());
        let svl_rules = &r.chains.iter().find(|(c, _)| *c == svl).unwrap().1;
        assert!(svl_rules[0].contains("10.244.1.6:8080"), "{svl_rules:?}");
        let sep = sep_chain(&sp.name, Ipv4Addr::new(10, 244, 1, 6), 8080);
        assert!(
            r.chains.iter().any(|(c, _)| *c == sep),
            "no chain for the fallback"
        );

        // None here, some elsewhere: dropped, not rejected, and no nat jump.
        sp.endpoints.remove(0);
        let r = service_rules(&sp, &RuleConfig::default());
        assert!(!r.chains.iter().any(|(c, _)| *c == svl));
        assert!(
            r.shared.contains(&(
                Table::Filter,
                KUBE_SERVICES,
                "-d 10.96.0.12/32 -p tcp -m comment --comment \"ns/web:http has no local endpoints\" -m tcp --dport 80 -j DROP".to_string()
            )),
            "{:?}",
            r.shared
        );
        assert!(
            !r.shared
                .iter()
                .any(|(t, c, _)| *t == Table::Nat && *c == KUBE_SERVICES)
        );
    }

    #[test]
    fn local_policy_without_local_endpoints_drops_external_traffic() {
        let sp = ServicePort {
            name: spn("ns", "web", "", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            node_port: 30080,
            affinity_timeout: None,
            external_local: true,
            internal_local: false,
            extra: Default::default(),
            endpoints: vec![ep([10, 244, 2, 5], 8080, false)],
        };
        let r = service_rules(&sp, &RuleConfig::default());
        assert!(r.shared.iter().any(|(t, c, rule)| *t == Table::Filter
            && *c == KUBE_EXTERNAL_SERVICES
            && rule.ends_with("--dport 30080 -j DROP")));
    }

    /// The shared rules of `r` in `(table, chain)`.
    fn shared_in(r: &ServiceRules, table: Table, chain: &str) -> Vec<String> {
        r.shared
            .iter()
            .filter(|(t, c, _)| *t == table && *c == chain)
            .map(|(_, _, rule)| rule.clone())
            .collect()
    }

    #[test]
    fn external_ips_and_lb_addresses_with_source_ranges() {
        let mut sp = ServicePort {
            name: spn("ns1", "lb", "http", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(172, 30, 0, 42),
            port: 80,
            node_port: 0,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            extra: Default::default(),
            endpoints: vec![ep([10, 180, 0, 1], 8080, false)],
        };
        sp.extra.external_ips = vec![Ipv4Addr::new(203, 0, 113, 7)];
        sp.extra.lb_ips = vec![Ipv4Addr::new(10, 1, 0, 240)];
        sp.extra.source_ranges = vec!["10.1.0.1/32".parse().unwrap()];
        let r = service_rules(&sp, &RuleConfig::default());
        let ext = ext_chain(&sp.name);
        let fw = fw_chain(&sp.name);
        assert_eq!(
            shared_in(&r, Table::Nat, KUBE_SERVICES)[1..],
            [
                format!(
                    "-d 203.0.113.7/32 -p tcp -m comment --comment \"ns1/lb:http external IP\" -m tcp --dport 80 -j {ext}"
                ),
                format!(
                    "-d 10.1.0.240/32 -p tcp -m comment --comment \"ns1/lb:http loadbalancer IP\" -m tcp --dport 80 -j {fw}"
                ),
            ]
        );
        let chain = |name: &str| {
            r.chains
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            chain(&fw).unwrap(),
            [format!(
                "-s 10.1.0.1/32 -m comment --comment \"ns1/lb:http loadbalancer IP\" -j {ext}"
            )]
        );
        assert!(chain(&ext).unwrap()[0].ends_with("-j KUBE-MARK-MASQ"));
        // What KUBE-FW did not send on is dropped: in INPUT/FORWARD and OUTPUT.
        let drop = format!(
            "-d 10.1.0.240/32 -p tcp -m comment --comment \"ns1/lb:http traffic not accepted by {fw}\" -m tcp --dport 80 -j DROP"
        );
        for c in [KUBE_EXTERNAL_SERVICES, KUBE_SERVICES] {
            assert_eq!(shared_in(&r, Table::Filter, c), std::slice::from_ref(&drop));
        }
        // No node port: no KUBE-NODEPORTS jump.
        assert!(shared_in(&r, Table::Nat, KUBE_NODEPORTS).is_empty());
        // Without endpoints both addresses reject.
        sp.endpoints.clear();
        let r = service_rules(&sp, &RuleConfig::default());
        let rejects = shared_in(&r, Table::Filter, KUBE_EXTERNAL_SERVICES);
        assert_eq!(rejects.len(), 2, "{rejects:?}");
        assert!(rejects[1].starts_with("-d 10.1.0.240/32 -p tcp") && rejects[1].contains("REJECT"));
    }

    #[test]
    fn a_pods_host_port() {
        let mut sp = ServicePort {
            name: spn("ns1", "pod/web", "hostport-18080", Protocol::Tcp),
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            node_port: 0,
            affinity_timeout: None,
            external_local: true,
            internal_local: false,
            extra: Default::default(),
            endpoints: vec![ep([10, 180, 0, 9], 8080, true)],
        };
        sp.extra.host_port = Some(HostPort {
            port: 18080,
            ip: Some(Ipv4Addr::new(10, 0, 0, 11)),
        });
        let r = service_rules(&sp, &RuleConfig::default());
        let hp = hp_chain(&sp.name);
        assert!(hp.starts_with("KUBE-HP-") && is_service_chain(&hp));
        assert_eq!(
            shared_in(&r, Table::Nat, KUBE_HOSTPORTS),
            [format!(
                "-d 10.0.0.11/32 -p tcp -m comment --comment \"ns1/web hostport 18080\" -m tcp --dport 18080 -j {hp}"
            )]
        );
        assert_eq!(r.shared.len(), 1, "no service rules: {:?}", r.shared);
        assert_eq!(
            r.chains,
            [(
                hp,
                vec![
                    "-s 10.180.0.9/32 -m comment --comment \"ns1/web hostport 18080\" -j KUBE-MARK-MASQ".to_string(),
                    "-s 127.0.0.0/8 -m comment --comment \"ns1/web hostport 18080\" -j KUBE-MARK-MASQ".to_string(),
                    "-p tcp -m comment --comment \"ns1/web hostport 18080\" -m tcp -j DNAT --to-destination 10.180.0.9:8080".to_string(),
                ]
            )]
        );
    }
}
