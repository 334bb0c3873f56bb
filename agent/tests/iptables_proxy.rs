//! The iptables dataplane against real iptables, as root. Every test runs on a thread that
//! first moves into a fresh network namespace (`unshare(CLONE_NEWNET)`); the commands it
//! runs (iptables-restore, iptables-save, conntrack, ip) inherit that namespace, so the
//! host's tables are never touched. Without root the tests print a note and pass.
//!
//! `cargo test -p skiff-agent --test iptables_proxy -- --ignored --nocapture scale` prints
//! sync times at 1,000 and 10,000 services.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_agent::proxy::iptables::{Backend, IptablesDataplane, RuleSyncStats, rules};
use skiff_agent::proxy::model::{Endpoint, Protocol, ProxyState, ServicePort, ServicePortName};

// ---------------------------------------------------------------- namespace plumbing

fn netns_id(path: &str) -> String {
    std::fs::read_link(path)
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Run `f` on a thread inside a new network namespace. Skips (returns) without root.
fn in_netns<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    if skiff_common::privileged::skip_unless_root(name) {
        return;
    }
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let host = netns_id("/proc/self/ns/net");
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            let mine = netns_id("/proc/thread-self/ns/net");
            assert_ne!(host, mine, "not in a new network namespace");
            // Child processes must see the same namespace, or we would touch the host.
            let child = sh_out("readlink /proc/self/ns/net");
            assert_eq!(
                child.trim(),
                mine,
                "commands do not run in the test namespace"
            );
            sh("ip link set lo up");
            f()
        })
        .unwrap();
    if let Err(e) = h.join() {
        std::panic::resume_unwind(e);
    }
}

fn sh_out(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sh(cmd: &str) {
    sh_out(cmd);
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A veth (the kernel here has no dummy driver) with the client address 10.0.0.1, backend addresses, and the
/// service range routed onto it (so connect() to a VIP has a route; OUTPUT DNAT then
/// turns it into a local connection).
fn setup_net(backends: &[Ipv4Addr]) {
    sh(
        "ip link add d0 type veth peer name d1 && ip link set d1 up && ip link set d0 up && ip addr add 10.0.0.1/24 dev d0",
    );
    for b in backends {
        sh(&format!("ip addr add {b}/32 dev d0"));
    }
    sh("ip route add 10.96.0.0/12 dev d0 src 10.0.0.1");
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// A TCP server answering its own address to every connection.
fn serve_tcp(ip: Ipv4Addr, port: u16) {
    let l = TcpListener::bind(SocketAddrV4::new(ip, port)).unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(ip.to_string().as_bytes());
        }
    });
}

/// A UDP server answering its own address to every datagram.
fn serve_udp(ip: Ipv4Addr, port: u16) {
    let s = UdpSocket::bind(SocketAddrV4::new(ip, port)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(ip.to_string().as_bytes(), from);
        }
    });
}

/// Connect to `vip:port` and read which backend answered.
fn ask(vip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddrV4::new(vip, port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Backends seen over `n` connections.
fn seen(vip: Ipv4Addr, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let who = ask(vip, port).unwrap_or_else(|e| panic!("connect {vip}:{port}: {e}"));
        *m.entry(who).or_default() += 1;
    }
    m
}

fn save(backend: Backend, table: &str) -> String {
    sh_out(&format!("{} -t {table}", backend.save()))
}

// ---------------------------------------------------------------- model helpers

fn spn(name: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port: port.into(),
        protocol,
    }
}

fn ep(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint {
        ip,
        port,
        local: true,
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn service(
    name: &ServicePortName,
    vip: Ipv4Addr,
    port: u16,
    eps: &[Ipv4Addr],
    ep_port: u16,
) -> ServicePort {
    let mut endpoints: Vec<Endpoint> = eps.iter().map(|ip| ep(*ip, ep_port)).collect();
    endpoints.sort();
    ServicePort {
        name: name.clone(),
        cluster_ip: vip,
        port,
        node_port: 0,
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        extra: Default::default(),
        endpoints,
    }
}

fn put(st: &mut ProxyState, sp: ServicePort) {
    st.insert(sp.name.clone(), sp);
}

fn changed(stats: &RuleSyncStats) -> Vec<String> {
    let mut v = stats.changed_chains.clone();
    v.sort();
    v
}

fn assert_no_kube(backend: Backend) {
    for t in ["nat", "filter"] {
        let s = save(backend, t);
        assert!(!s.contains("KUBE-"), "{t} still holds KUBE- rules:\n{s}");
    }
}

const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const B2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const B3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

// ---------------------------------------------------------------- tests

/// Shape, restart, real traffic, incremental endpoint and service changes, REJECT,
/// affinity and cleanup, on one backend.
fn cluster_ip_lifecycle(backend: Backend) {
    setup_net(&[B1, B2, B3]);
    for b in [B1, B2, B3] {
        serve_tcp(b, 8080);
    }
    let web = spn("web", "http", Protocol::Tcp);
    let svc = rules::svc_chain(&web);
    let sep = |ip: Ipv4Addr| rules::sep_chain(&web, ip, 8080);
    let mut st = ProxyState::new();
    put(&mut st, service(&web, VIP, 80, &[B1, B2], 8080));

    // First sync: everything.
    let mut dp = IptablesDataplane::new(backend);
    let s = dp.sync(&st).unwrap();
    println!("{backend:?} first sync: {s:?}");
    assert!(s.reloaded && s.chains_written >= 8, "{s:?}");
    let nat = save(backend, "nat");
    for line in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_string(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
            .to_string(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .to_string(),
        format!(
            "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j {svc}"
        ),
        format!("-A KUBE-SERVICES {}", rules::NODEPORTS_JUMP),
        format!(
            "-A {svc} -m comment --comment \"default/web:http -> 10.0.1.1:8080\" -m statistic --mode random --probability 0.50000000000 -j {}",
            sep(B1)
        ),
        format!(
            "-A {svc} -m comment --comment \"default/web:http -> 10.0.1.2:8080\" -j {}",
            sep(B2)
        ),
        format!(
            "-A {} -s 10.0.1.1/32 -m comment --comment \"default/web:http\" -j KUBE-MARK-MASQ",
            sep(B1)
        ),
        format!(
            "-A {} -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination 10.0.1.1:8080",
            sep(B1)
        ),
        "-j MARK --set-xmark 0x4000/0x4000".to_string(),
        "-j MASQUERADE --random-fully".to_string(),
    ] {
        assert!(nat.contains(&line), "missing {line:?} in\n{nat}");
    }
    let ks: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES "))
        .collect();
    assert!(ks.last().unwrap().ends_with("-j KUBE-NODEPORTS"), "{ks:?}");
    let filter = save(backend, "filter");
    assert!(filter.contains("-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"), "{filter}");
    assert!(filter.contains("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT"), "{filter}");
    for l in nat
        .lines()
        .chain(filter.lines())
        .filter(|l| l.starts_with("-A KUBE-"))
    {
        assert!(
            l.contains("-m comment --comment "),
            "rule without comment: {l}"
        );
    }

    // Same state again: nothing written.
    let s = dp.sync(&st).unwrap();
    assert_eq!(
        (s.chains_written, s.rules_written, s.chains_deleted),
        (0, 0, 0),
        "{s:?}"
    );

    // A restarted agent reads the tables back and writes nothing (our text is exactly
    // what iptables-save prints), but sweeps a stale chain.
    sh(&format!(
        "{} -t nat -N KUBE-SEP-STALESTALESTALE",
        backend.iptables()
    ));
    let mut dp = IptablesDataplane::new(backend);
    let s = dp.sync(&st).unwrap();
    assert!(s.reloaded);
    assert_eq!(
        changed(&s),
        vec!["nat/KUBE-SEP-STALESTALESTALE".to_string()],
        "{s:?}"
    );
    assert_eq!((s.chains_written, s.chains_deleted), (0, 1));

    // Real traffic: both backends within 60 connections.
    let m = seen(VIP, 80, 60);
    println!("{backend:?} 2 endpoints: {m:?}");
    assert_eq!(
        m.keys().cloned().collect::<Vec<_>>(),
        vec!["10.0.1.1", "10.0.1.2"]
    );

    // Add an endpoint: only the service chain and the new endpoint chain are written.
    put(&mut st, service(&web, VIP, 80, &[B1, B2, B3], 8080));
    let s = dp.sync(&st).unwrap();
    let mut want = vec![format!("nat/{svc}"), format!("nat/{}", sep(B3))];
    want.sort();
    assert_eq!(changed(&s), want, "{s:?}");
    assert_eq!(s.chains_deleted, 0);
    let m = seen(VIP, 80, 90);
    assert_eq!(m.len(), 3, "{m:?}");

    // Remove one: the service chain is rewritten, the endpoint chain deleted.
    put(&mut st, service(&web, VIP, 80, &[B2, B3], 8080));
    let s = dp.sync(&st).unwrap();
    let mut want = vec![format!("nat/{svc}"), format!("nat/{}", sep(B1))];
    want.sort();
    assert_eq!(changed(&s), want, "{s:?}");
    assert_eq!((s.chains_written, s.chains_deleted), (1, 1));
    assert!(!save(backend, "nat").contains(&sep(B1)));
    let m = seen(VIP, 80, 30);
    assert!(!m.contains_key("10.0.1.1"), "{m:?}");

    // A second service: KUBE-SERVICES is edited (one -I), not rewritten.
    let api = spn("api", "", Protocol::Tcp);
    let vip2 = Ipv4Addr::new(10, 96, 0, 11);
    put(&mut st, service(&api, vip2, 443, &[B1], 8080));
    let s = dp.sync(&st).unwrap();
    assert!(
        changed(&s).contains(&"nat/KUBE-SERVICES".to_string()),
        "{s:?}"
    );
    // One -I in KUBE-SERVICES, the service chain (1 rule), the endpoint chain (2 rules).
    assert_eq!(s.rules_written, 1 + 1 + 2, "{s:?}");
    assert_eq!(
        seen(vip2, 443, 3).keys().cloned().collect::<Vec<_>>(),
        vec!["10.0.1.1"]
    );
    // And removing it: one -D plus the two chains deleted.
    st.remove(&api);
    let s = dp.sync(&st).unwrap();
    assert_eq!((s.rules_written, s.chains_deleted), (1, 2), "{s:?}");
    assert!(ask(vip2, 443).is_err());

    // Session affinity: one backend for every connection of this client.
    let mut sticky = service(&web, VIP, 80, &[B1, B2, B3], 8080);
    sticky.affinity_timeout = Some(300);
    put(&mut st, sticky);
    dp.sync(&st).unwrap();
    let m = seen(VIP, 80, 20);
    assert_eq!(m.len(), 1, "affinity broken: {m:?}");

    // No endpoints: REJECT, i.e. connection refused at once.
    put(&mut st, service(&web, VIP, 80, &[], 8080));
    let s = dp.sync(&st).unwrap();
    assert!(
        changed(&s).contains(&"filter/KUBE-SERVICES".to_string()),
        "{s:?}"
    );
    assert!(!save(backend, "nat").contains(&svc));
    let t = Instant::now();
    let e = ask(VIP, 80).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );

    // Back with endpoints, then cleanup leaves nothing.
    put(&mut st, service(&web, VIP, 80, &[B2], 8080));
    dp.sync(&st).unwrap();
    assert_eq!(ask(VIP, 80).unwrap(), "10.0.1.2");
    let removed = dp.cleanup().unwrap();
    assert!(removed >= 9, "{removed}");
    assert_no_kube(backend);
    assert!(ask(VIP, 80).is_err());
    // A sync after cleanup puts everything back.
    let s = dp.sync(&st).unwrap();
    assert!(s.reloaded && s.chains_written > 0);
    assert_eq!(ask(VIP, 80).unwrap(), "10.0.1.2");
    IptablesDataplane::cleanup_all().unwrap();
    assert_no_kube(backend);
}

#[test]
fn nft_cluster_ip_lifecycle() {
    in_netns("nft", || cluster_ip_lifecycle(Backend::Nft));
}

#[test]
fn legacy_cluster_ip_lifecycle() {
    if !have("iptables-legacy") {
        skiff_common::privileged::cannot_run(
            "legacy_cluster_ip_lifecycle",
            "no iptables-legacy (Debian package iptables)",
        );
        return;
    }
    in_netns("legacy", || cluster_ip_lifecycle(Backend::Legacy));
}

/// A UDP backend replaced while the old one still answers: without the conntrack flush
/// the client's flow would stay on the old backend for 30 s.
#[test]
fn udp_backend_replaced_answers_within_2s() {
    in_netns("udp", || {
        setup_net(&[B1, B2]);
        serve_udp(B1, 5353);
        serve_udp(B2, 5353);
        let dns = spn("dns", "dns", Protocol::Udp);
        let vip = Ipv4Addr::new(10, 96, 0, 53);
        let mut st = ProxyState::new();
        put(&mut st, service(&dns, vip, 53, &[B1], 5353));
        let mut dp = IptablesDataplane::new(Backend::Nft);
        dp.sync(&st).unwrap();

        let c = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).unwrap();
        c.connect(SocketAddrV4::new(vip, 53)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let ask = || -> Option<String> {
            c.send(b"?").ok()?;
            let mut buf = [0u8; 64];
            let n = c.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        for _ in 0..5 {
            assert_eq!(ask().as_deref(), Some("10.0.1.1"));
        }

        put(&mut st, service(&dns, vip, 53, &[B2], 5353));
        let t = Instant::now();
        let s = dp.sync(&st).unwrap();
        assert!(s.conntrack_flushes >= 1, "{s:?}");
        let mut answer = None;
        while t.elapsed() < Duration::from_secs(2) {
            answer = ask();
            if answer.as_deref() == Some("10.0.1.2") {
                break;
            }
        }
        println!("new UDP backend answered after {:?}", t.elapsed());
        assert_eq!(answer.as_deref(), Some("10.0.1.2"));
        dp.cleanup().unwrap();
    });
}

/// Node port from the node itself (OUTPUT → KUBE-SERVICES → KUBE-NODEPORTS → KUBE-EXT).
#[test]
fn node_port_from_the_node() {
    in_netns("nodeport", || {
        setup_net(&[B1, B2]);
        serve_tcp(B1, 8080);
        serve_tcp(B2, 8080);
        let web = spn("web", "", Protocol::Tcp);
        let mut sp = service(&web, VIP, 80, &[B1, B2], 8080);
        sp.node_port = 30080;
        let mut st = ProxyState::new();
        put(&mut st, sp.clone());
        let mut dp = IptablesDataplane::new(Backend::Nft);
        dp.sync(&st).unwrap();
        let nat = save(Backend::Nft, "nat");
        let ext = rules::ext_chain(&web);
        assert!(nat.contains(&format!("-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/web\" -m tcp --dport 30080 -j {ext}")), "{nat}");
        let m = seen(CLIENT, 30080, 60);
        assert_eq!(m.len(), 2, "{m:?}");
        // No endpoints: the node port is rejected too.
        sp.endpoints.clear();
        put(&mut st, sp);
        dp.sync(&st).unwrap();
        assert!(save(Backend::Nft, "filter").contains("-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"default/web has no endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j REJECT"));
        assert_eq!(
            ask(CLIENT, 30080).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
        dp.cleanup().unwrap();
    });
}

/// On the nft backend a big change goes through a whole-table restore; rules of other
/// programs in the same tables survive it (and the cleanup that follows), counters too.
#[test]
fn nft_whole_table_restore_keeps_foreign_rules() {
    in_netns("whole-table", || {
        sh("iptables -t nat -N SKIFF-POSTROUTING \
            && iptables -t nat -A SKIFF-POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE \
            && iptables -t nat -A POSTROUTING -m comment --comment skiff -j SKIFF-POSTROUTING \
            && iptables -t nat -A PREROUTING -p tcp --dport 2222 -j DNAT --to-destination 10.0.0.1:22 \
            && iptables -t filter -A INPUT -p tcp --dport 9 -j DROP");
        // Some packets through OUTPUT/POSTROUTING so the counters are not all zero.
        let _ = ask(Ipv4Addr::LOCALHOST, 9);
        let before =
            sh_out("iptables-save -c -t nat | grep -- '-A POSTROUTING -m comment --comment skiff'");
        assert!(!before.starts_with("[0:0]"), "{before}");
        let st = scale_state(3_000);
        let mut dp = IptablesDataplane::new(Backend::Nft);
        let s = dp.sync(&st).unwrap();
        println!(
            "3,000 services from empty: {:?}, whole-table restore: {}",
            s.duration, s.full_table_restore
        );
        assert!(s.full_table_restore, "{s:?}");
        let nat = save(Backend::Nft, "nat");
        for l in [
            "-A SKIFF-POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE",
            "-A POSTROUTING -m comment --comment skiff -j SKIFF-POSTROUTING",
            "-A PREROUTING -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.0.0.1:22",
        ] {
            assert!(nat.contains(l), "lost {l:?}");
        }
        assert_eq!(
            sh_out("iptables-save -c -t nat | grep -- '-A POSTROUTING -m comment --comment skiff'"),
            before
        );
        assert!(save(Backend::Nft, "filter").contains("-A INPUT -p tcp -m tcp --dport 9 -j DROP"));
        // Our jumps come first in the built-in chains.
        let post: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING "))
            .collect();
        assert!(post[0].ends_with("-j KUBE-POSTROUTING"), "{post:?}");
        // What we believe we wrote is what is there.
        let s = IptablesDataplane::new(Backend::Nft).sync(&st).unwrap();
        assert_eq!((s.chains_written, s.rules_written), (0, 0), "{s:?}");
        // Incremental again after it.
        let mut st2 = st.clone();
        st2.remove(&spn("svc-7", "http", Protocol::Tcp));
        let s = dp.sync(&st2).unwrap();
        assert!(!s.full_table_restore && s.chains_deleted == 3, "{s:?}");
        // Cleanup (whole-table too, at this size) keeps them as well.
        let removed = dp.cleanup().unwrap();
        assert!(removed > 8_000, "{removed}");
        assert_no_kube(Backend::Nft);
        let nat = save(Backend::Nft, "nat");
        assert!(nat.contains("-A POSTROUTING -m comment --comment skiff -j SKIFF-POSTROUTING"));
        assert!(nat.contains("-A PREROUTING -p tcp -m tcp --dport 2222"));
        assert!(save(Backend::Nft, "filter").contains("--dport 9 -j DROP"));
    });
}

// ---------------------------------------------------------------- scale figures

fn scale_state(n: usize) -> ProxyState {
    let mut st = ProxyState::new();
    for i in 0..n {
        let name = spn(&format!("svc-{i}"), "http", Protocol::Tcp);
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
        let e1 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 2 * i as u32 + 1);
        let e2 = Ipv4Addr::from(u32::from(e1) + 1);
        put(&mut st, service(&name, vip, 80, &[e1, e2], 8080));
    }
    st
}

fn restore_noflush(backend: Backend, payload: &str) {
    let mut child = Command::new(backend.restore())
        .args(["--noflush", "-w"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(payload.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn scale(backend: Backend) {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    for n in [1_000usize, 10_000] {
        // A clean slate for each size.
        IptablesDataplane::cleanup_all().unwrap();
        let mut st = scale_state(n);
        let mut dp = IptablesDataplane::new(backend);
        let s = dp.sync(&st).unwrap();
        println!(
            "{backend:?} {n:>6} services x 2 endpoints, from empty: {} ({} chains, {} rules, whole-table restore: {})",
            ms(s.duration),
            s.chains_written,
            s.rules_written,
            s.full_table_restore
        );
        // One endpoint changed.
        let mid = spn(&format!("svc-{}", n / 2), "http", Protocol::Tcp);
        let sp = st.get_mut(&mid).unwrap();
        sp.endpoints[1].ip = Ipv4Addr::new(10, 255, 0, 1);
        let s = dp.sync(&st).unwrap();
        println!(
            "{backend:?} {n:>6}: one endpoint changed: {} ({} chains written, {} deleted, {} rules)",
            ms(s.duration),
            s.chains_written,
            s.chains_deleted,
            s.rules_written
        );
        assert_eq!((s.chains_written, s.chains_deleted), (2, 1));
        // One service added, then removed.
        let extra = spn("extra", "http", Protocol::Tcp);
        put(
            &mut st,
            service(
                &extra,
                Ipv4Addr::new(10, 97, 0, 1),
                80,
                &[Ipv4Addr::new(10, 254, 0, 1)],
                8080,
            ),
        );
        let s = dp.sync(&st).unwrap();
        println!(
            "{backend:?} {n:>6}: one service added: {} ({} rules)",
            ms(s.duration),
            s.rules_written
        );
        st.remove(&extra);
        let s = dp.sync(&st).unwrap();
        println!(
            "{backend:?} {n:>6}: one service removed: {} ({} rules)",
            ms(s.duration),
            s.rules_written
        );
        // For comparison, what a service add/remove costs when KUBE-SERVICES is flushed
        // and rewritten whole instead of edited (same content, so nothing changes).
        let nat = save(backend, "nat");
        let mut payload = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        for l in nat.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")) {
            payload.push_str(l);
            payload.push('\n');
        }
        payload.push_str("COMMIT\n");
        let t = Instant::now();
        restore_noflush(backend, &payload);
        println!(
            "{backend:?} {n:>6}: (rewriting KUBE-SERVICES whole instead: {})",
            ms(t.elapsed())
        );
        // Nothing changed.
        let s = dp.sync(&st).unwrap();
        println!("{backend:?} {n:>6}: no change: {}", ms(s.duration));
        // A restarted agent: read back, nothing written.
        let mut dp2 = IptablesDataplane::new(backend);
        let s = dp2.sync(&st).unwrap();
        println!(
            "{backend:?} {n:>6}: restart (read back, compare): {} ({} chains written)",
            ms(s.duration),
            s.chains_written
        );
        assert_eq!(s.chains_written, 0);
        let t = Instant::now();
        dp2.cleanup().unwrap();
        println!("{backend:?} {n:>6}: cleanup: {}", ms(t.elapsed()));
        assert_no_kube(backend);
    }
}

#[test]
#[ignore = "slow: prints sync figures at 1,000 and 10,000 services"]
fn scale_nft() {
    in_netns("scale-nft", || scale(Backend::Nft));
}

#[test]
#[ignore = "slow: prints sync figures at 1,000 and 10,000 services"]
fn scale_legacy() {
    if !have("iptables-legacy") {
        return;
    }
    in_netns("scale-legacy", || scale(Backend::Legacy));
}
