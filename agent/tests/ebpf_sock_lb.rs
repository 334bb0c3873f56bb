//! The eBPF socket load balancer for real (root): a cgroup and a network namespace of the
//! test's own, two backends on addresses inside that namespace answering their identity, and a
//! client process (this test binary re-executed, see [`lbtest_client_helper`]) that joins both
//! and dials service addresses. Nothing leaves the namespace: it has only `lo`.
//!
//! Skipped (with a message) when not root or without cgroup2/bpffs.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::libc;
use skiff_agent::proxy::ebpf::{self, EbpfConfig, EbpfDataplane, sys};
use skiff_agent::proxy::model::{Endpoint, Protocol, ProxyState, ServicePort, ServicePortName};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 10);
const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 11);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 12);
const BACKEND_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const BACKEND_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn skip_reason() -> Option<String> {
    if !skiff_common::privileged::is_root() {
        return Some("needs root".into());
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup2 mount".into());
    }
    if !Path::new("/sys/fs/bpf").exists()
        || !sys::is_bpffs(Path::new("/sys/fs/bpf")).unwrap_or(false)
    {
        return Some("no bpffs at /sys/fs/bpf".into());
    }
    if !ebpf::programs_built() {
        return Some("built with SKIFF_EBPF_SKIP".into());
    }
    None
}

/// The cgroup2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
    })
}

/// A new network namespace, held by an fd.
fn new_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let f = fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
        OwnedFd::from(f)
    })
    .join()
    .unwrap()
}

fn enter_netns(fd: RawFd) {
    // SAFETY: setns on a netns fd, for the calling thread only.
    let r = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

fn ip_in(netns: RawFd, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    // SAFETY: only setns(2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = cmd.status().expect("run ip");
    assert!(st.success(), "ip {args:?}: {st}");
}

/// TCP and UDP servers on one address inside the netns, answering `name`.
struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    fn start(netns: RawFd, addr: Ipv4Addr, name: &'static str) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        {
            let stop = stop.clone();
            let tx = tx.clone();
            threads.push(std::thread::spawn(move || {
                enter_netns(netns);
                let l = TcpListener::bind(SocketAddrV4::new(addr, TCP_PORT)).expect("bind tcp");
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let _ = s.write_all(format!("{name}\n").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                enter_netns(netns);
                let u = UdpSocket::bind(SocketAddrV4::new(addr, UDP_PORT)).expect("bind udp");
                u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(name.as_bytes(), from);
                    }
                }
            }));
        }
        rx.recv().unwrap();
        rx.recv().unwrap();
        Backend { stop, threads }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Everything the test made; removed on drop, also when the test fails.
struct Env {
    cgroup: PathBuf,
    bpffs: PathBuf,
    netns: OwnedFd,
    backends: Vec<Backend>,
}

impl Env {
    fn new() -> Env {
        let id = format!("skiff-lbtest-{}", std::process::id());
        let cgroup = cgroup2_mount().unwrap().join(&id);
        let bpffs = Path::new("/sys/fs/bpf").join(&id);
        let _ = ebpf::cleanup(&bpffs, Some(&cgroup));
        let _ = fs::remove_dir(&cgroup);
        fs::create_dir(&cgroup).expect("create test cgroup");
        let netns = new_netns();
        let fd = netns.as_raw_fd();
        let mut env = Env {
            cgroup,
            bpffs,
            netns,
            backends: Vec::new(),
        };
        ip_in(fd, &["link", "set", "lo", "up"]);
        for a in [BACKEND_A, BACKEND_B] {
            ip_in(fd, &["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        env.backends.push(Backend::start(fd, BACKEND_A, "A"));
        env.backends.push(Backend::start(fd, BACKEND_B, "B"));
        env
    }

    fn config(&self) -> EbpfConfig {
        EbpfConfig::new(&self.bpffs, &self.cgroup)
    }

    /// Run the client helper in the test cgroup and netns; its `LBTEST` lines.
    fn client(&self, plan: &str) -> Vec<String> {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let procs_fd = procs.as_raw_fd();
        let netns = self.netns.as_raw_fd();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "lbtest_client_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SKIFF_LBTEST_PLAN", plan)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        // SAFETY: only write(2) and setns(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run client helper");
        drop(procs);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "client helper failed: {stdout}");
        stdout
            .lines()
            // libtest prints "test lbtest_client_helper ... " before the first line.
            .filter_map(|l| l.find("LBTEST ").map(|i| l[i + 7..].to_string()))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.backends.clear();
        if let Err(e) = ebpf::cleanup(&self.bpffs, Some(&self.cgroup)) {
            eprintln!("cleanup {}: {e:#}", self.bpffs.display());
        }
        let _ = fs::remove_dir(&self.cgroup);
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
    name: &str,
    protocol: Protocol,
    vip: Ipv4Addr,
    port: u16,
    target: u16,
    eps: &[Ipv4Addr],
) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: "lbtest".into(),
            name: name.into(),
            port: String::new(),
            protocol,
        },
        cluster_ip: vip,
        port,
        node_port: 0,
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        extra: Default::default(),
        endpoints: eps.iter().map(|ip| ep(*ip, target)).collect(),
    }
}

fn test_state() -> ProxyState {
    let both = [BACKEND_A, BACKEND_B];
    let mut sticky = service("sticky", Protocol::Tcp, VIP_AFFINITY, 80, TCP_PORT, &both);
    sticky.affinity_timeout = Some(300);
    [
        service("web", Protocol::Tcp, VIP, 80, TCP_PORT, &both),
        service("dns", Protocol::Udp, VIP, 53, UDP_PORT, &both),
        sticky,
        service("empty", Protocol::Tcp, VIP_EMPTY, 80, TCP_PORT, &[]),
    ]
    .into_iter()
    .map(|s| (s.name.clone(), s))
    .collect()
}

/// Count of `LBTEST` result lines by their first words.
fn tally(lines: &[String], prefix: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines.iter().filter_map(|l| l.strip_prefix(prefix)) {
        *m.entry(l.trim().to_string()).or_default() += 1;
    }
    m
}

/// Skiff links attached to the test cgroup.
fn cgroup_links(cgroup: &Path) -> Vec<sys::LinkInfo> {
    let id = sys::cgroup_id(cgroup).unwrap();
    sys::link_ids()
        .unwrap()
        .into_iter()
        .filter_map(|l| sys::link_info(sys::link_fd_by_id(l).ok()?).ok())
        .filter(|i| i.link_type == sys::LINK_TYPE_CGROUP && i.cgroup_id == id)
        .collect()
}

#[test]
fn socket_lb_end_to_end() {
    if let Some(why) = skip_reason() {
        skiff_common::privileged::cannot_run("socket_lb_end_to_end", &why);
        return;
    }
    let env = Env::new();
    let state = test_state();

    let mut dp = EbpfDataplane::open(&env.config()).expect("open dataplane");
    assert_eq!(
        dp.attach_report().attached.len(),
        6,
        "{:?}",
        dp.attach_report()
    );
    let stats = dp.sync(&state).expect("sync");
    assert_eq!((stats.frontends, stats.backends), (4, 4), "{stats:?}");

    // Inspection from the pins, as the CLI will do it.
    let pinned = ebpf::PinnedMaps::open(&env.bpffs).expect("open pinned maps");
    let fes = pinned.frontends().unwrap();
    let web = fes
        .iter()
        .find(|f| f.service == "lbtest/web" && f.protocol == "tcp")
        .expect("web frontend");
    assert_eq!((web.ip, web.port, web.slots.len()), (VIP, 80, 2));
    assert!(web.slots.iter().all(|s| s.is_some()));
    let empty = fes.iter().find(|f| f.service == "lbtest/empty").unwrap();
    assert!(empty.slots.is_empty());
    assert_eq!(pinned.backends().unwrap().len(), 4);
    let fill = pinned.fill().unwrap();
    assert_eq!(
        fill.iter()
            .find(|m| m.name == "skiff_frontends")
            .unwrap()
            .entries,
        4
    );
    // What the metrics report (`skiff_bpf_map_entries`, from the reconciler's mirror and a
    // walk of the programs' maps) is what a walk of every pinned map finds.
    assert_eq!(dp.map_fill(), fill);
    assert_eq!(fill.len(), ebpf::maps::ALL_MAPS.len());
    drop(pinned);

    let out = env.client(&format!(
        "tcp {VIP}:80 60;udp {VIP}:53 40;peer {VIP}:80;tcp {VIP_AFFINITY}:80 20;refused {VIP_EMPTY}:80"
    ));
    // ClusterIP TCP: both backends answer.
    let tcp = tally(&out, &format!("tcp {VIP}:80 "));
    assert_eq!(
        tcp.keys().cloned().collect::<Vec<_>>(),
        ["A", "B"],
        "{out:?}"
    );
    assert_eq!(tcp.values().sum::<usize>(), 60);
    // UDP on an unconnected socket: both backends, every reply from the service address.
    let udp = tally(&out, &format!("udp {VIP}:53 "));
    assert_eq!(
        udp.keys().cloned().collect::<Vec<_>>(),
        [format!("A from {VIP}:53"), format!("B from {VIP}:53")],
        "{out:?}"
    );
    assert_eq!(udp.values().sum::<usize>(), 40);
    // getpeername shows the service address.
    assert!(out.contains(&format!("peer {VIP}:80 {VIP}:80")), "{out:?}");
    // ClientIP affinity: one backend for every connection.
    let sticky = tally(&out, &format!("tcp {VIP_AFFINITY}:80 "));
    assert_eq!(sticky.len(), 1, "{out:?}");
    assert_eq!(sticky.values().sum::<usize>(), 20);
    // No backends: refused at once.
    let refused = out
        .iter()
        .find_map(|l| l.strip_prefix(&format!("refused {VIP_EMPTY}:80 ")))
        .expect("refused line");
    let (kind, ms) = refused.split_once(' ').unwrap();
    assert_eq!(kind, "ECONNREFUSED", "{out:?}");
    assert!(ms.parse::<u64>().unwrap() < 100, "{out:?}");
    let aff = ebpf::PinnedMaps::open(&env.bpffs)
        .unwrap()
        .affinity()
        .unwrap();
    assert_eq!(aff.len(), 1, "{aff:?}");
    assert_eq!(aff[0].service, "lbtest/sticky");

    // Endpoint change: B goes away → only A answers; affinity cannot stick to B any more.
    let mut only_a = state.clone();
    for sp in only_a.values_mut() {
        sp.endpoints.retain(|e| e.ip == BACKEND_A);
    }
    let stats = dp.sync(&only_a).unwrap();
    assert_eq!(stats.backends, 2, "{stats:?}");
    let out = env.client(&format!("tcp {VIP}:80 20;tcp {VIP_AFFINITY}:80 10"));
    assert_eq!(
        tally(&out, &format!("tcp {VIP}:80 "))
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["A"]
    );
    assert_eq!(
        tally(&out, &format!("tcp {VIP_AFFINITY}:80 "))
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        ["A"]
    );
    dp.sync(&state).unwrap();

    // Session affinity expiry (the NodePort test runs the same case on its path).
    let expiry_state = |eps: &[Ipv4Addr]| {
        let mut st = state.clone();
        let mut s = service("expiry", Protocol::Tcp, VIP_EXPIRY, 80, TCP_PORT, eps);
        s.affinity_timeout = Some(AFF_TIMEOUT);
        st.insert(s.name.clone(), s);
        st
    };
    let dial = |n: usize| -> Vec<Option<Ipv4Addr>> {
        let prefix = format!("tcp {VIP_EXPIRY}:80 ");
        env.client(&format!("tcp {VIP_EXPIRY}:80 {n}"))
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|who| match who {
                "A" => Some(BACKEND_A),
                "B" => Some(BACKEND_B),
                _ => None,
            })
            .collect()
    };
    affinity_expiry_case(
        "socket",
        &mut dp,
        &env.bpffs,
        "lbtest/expiry",
        [BACKEND_A, BACKEND_B],
        expiry_state,
        dial,
    );
    dp.sync(&state).unwrap();

    // Agent restart under traffic: drop the dataplane, re-open from the pins, sync the same
    // state. The programs are swapped into the same links (no duplicates) and no request fails.
    let links_before: Vec<u32> = cgroup_links(&env.cgroup).iter().map(|l| l.id).collect();
    assert_eq!(links_before.len(), 6);
    let traffic = {
        let plan = format!("tcpslow {VIP}:80 150");
        let env = &env;
        std::thread::scope(|s| {
            let h = s.spawn(move || env.client(&plan));
            std::thread::sleep(Duration::from_millis(100));
            drop(dp);
            let mut dp2 = {
                // The new agent also turns the programs' debug log on: the swapped-in
                // programs differ (aya-log records live), which the links must not mind.
                let mut cfg = env.config();
                cfg.debug_log = true;
                EbpfDataplane::open(&cfg).expect("re-open from pins")
            };
            let rep = dp2.attach_report().clone();
            assert!(rep.attached.is_empty(), "{rep:?}");
            assert_eq!(rep.updated.len(), 6, "{rep:?}");
            assert!(
                rep.maps_created.is_empty() && rep.maps_recreated.is_empty(),
                "{rep:?}"
            );
            let st = dp2.sync(&state).expect("sync after restart");
            assert_eq!(
                (st.writes, st.deletes),
                (0, 0),
                "a restart rewrites nothing: {st:?}"
            );
            (h.join().unwrap(), dp2)
        })
    };
    let (out, dp2) = traffic;
    let slow = tally(&out, &format!("tcpslow {VIP}:80 "));
    assert_eq!(slow.values().sum::<usize>(), 150, "{out:?}");
    assert!(
        !slow.contains_key("ERR"),
        "requests failed across the restart: {slow:?}"
    );
    let links_after: Vec<u32> = cgroup_links(&env.cgroup).iter().map(|l| l.id).collect();
    assert_eq!(links_after, links_before, "same links, no duplicates");
    let out = env.client(&format!("tcp {VIP}:80 40"));
    assert_eq!(tally(&out, &format!("tcp {VIP}:80 ")).len(), 2, "{out:?}");

    // Cleanup: links detached, pins gone, programs and maps freed.
    let prog_ids: Vec<u32> = cgroup_links(&env.cgroup)
        .iter()
        .map(|l| l.prog_id)
        .collect();
    drop(dp2);
    let rep = ebpf::cleanup(&env.bpffs, Some(&env.cgroup)).expect("cleanup");
    assert_eq!(rep.links.len(), 6, "{rep:?}");
    assert_eq!(rep.maps.len(), 10, "{rep:?}");
    assert!(cgroup_links(&env.cgroup).is_empty());
    assert!(!env.bpffs.exists());
    // Programs go once nothing references them (freed asynchronously: poll briefly).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .filter(|p| prog_ids.contains(&p.id()))
            .map(|p| p.id())
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "skiff programs still loaded after cleanup: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Without the dataplane traffic is not translated any more (the VIP is unreachable).
    let out = env.client(&format!("refused {VIP}:80"));
    assert!(
        out.iter()
            .any(|l| l.starts_with(&format!("refused {VIP}:80 ENETUNREACH"))),
        "{out:?}"
    );
    // And cleanup is idempotent.
    ebpf::cleanup(&env.bpffs, Some(&env.cgroup)).expect("second cleanup");
}

// ---- the client, run as a separate process inside the test cgroup and netns ----

/// Not a test: the client half of `socket_lb_end_to_end`, which runs this binary again with
/// `SKIFF_LBTEST_PLAN` set. Steps, `;`-separated:
/// `tcp ADDR N` (N connections, print who answered), `tcpslow ADDR N` (same, 10 ms apart,
/// printing ERR on failure), `udp ADDR N` (N datagrams on one unconnected socket, print who
/// answered and from which address), `peer ADDR` (getpeername after connect), `refused ADDR`
/// (connect; print the errno name and milliseconds).
#[test]
#[ignore = "a helper process, not a test: the cases above run it with SKIFF_LBTEST_PLAN set"]
fn lbtest_client_helper() {
    let plan = std::env::var("SKIFF_LBTEST_PLAN").expect(
        "lbtest_client_helper is started by the tests in this file, with SKIFF_LBTEST_PLAN",
    );
    for step in plan.split(';') {
        let w: Vec<&str> = step.split_whitespace().collect();
        let addr: SocketAddrV4 = w[1].parse().unwrap();
        let n: usize = w.get(2).map_or(1, |n| n.parse().unwrap());
        match w[0] {
            "tcp" | "tcpslow" => {
                for _ in 0..n {
                    let who = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            let mut b = String::new();
                            s.read_to_string(&mut b)?;
                            Ok(b.trim().to_string())
                        })
                        .unwrap_or_else(|e| {
                            eprintln!("{step}: {e}");
                            "ERR".into()
                        });
                    println!("LBTEST {} {addr} {who}", w[0]);
                    if w[0] == "tcpslow" {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            "udp" => {
                let u = UdpSocket::bind("0.0.0.0:0").unwrap();
                u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 64];
                for _ in 0..n {
                    u.send_to(b"who", addr).unwrap();
                    match u.recv_from(&mut buf) {
                        Ok((len, from)) => println!(
                            "LBTEST udp {addr} {} from {from}",
                            String::from_utf8_lossy(&buf[..len])
                        ),
                        Err(e) => println!("LBTEST udp {addr} ERR {e}"),
                    }
                }
            }
            "peer" => {
                let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).unwrap();
                println!("LBTEST peer {addr} {}", s.peer_addr().unwrap());
            }
            "refused" => {
                let t = Instant::now();
                let r = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2));
                let ms = t.elapsed().as_millis();
                let kind = match r {
                    Ok(_) => "CONNECTED".to_string(),
                    Err(e) => match e.raw_os_error() {
                        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
                        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
                        Some(libc::EPERM) => "EPERM".into(),
                        _ => format!("{e}").replace(' ', "_"),
                    },
                };
                println!("LBTEST refused {addr} {kind} {ms}");
            }
            other => panic!("unknown step {other}"),
        }
    }
}

// ---- NodePort: tc on the uplink of a "node" namespace ----

/// Named network namespaces (`ip netns`), deleted on drop.
struct NetnsSet {
    names: Vec<String>,
}

impl NetnsSet {
    fn path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }
    fn add(&mut self, name: &str) {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        self.names.push(name.to_string());
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        for n in self.names.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
}

fn ipn(ns: &str, args: &str) {
    let mut a = vec!["-n", ns];
    a.extend(args.split_whitespace());
    let st = Command::new("ip").args(&a).status().unwrap();
    assert!(st.success(), "ip {a:?}");
}

/// Run `f` on a thread inside netns `name`.
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = NetnsSet::path(name);
    std::thread::spawn(move || {
        let ns = fs::File::open(&path).expect("open netns");
        enter_netns(ns.as_raw_fd());
        f()
    })
    .join()
    .unwrap()
}

/// A TCP + UDP server on `addr` inside netns `name` answering `<who> <peer ip>`.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PeerEcho {
    fn start(ns: &str, addr: Ipv4Addr, who: &'static str) -> PeerEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let stop = stop.clone();
            let tx = tx.clone();
            let path = NetnsSet::path(ns);
            threads.push(std::thread::spawn(move || {
                let f = fs::File::open(&path).unwrap();
                enter_netns(f.as_raw_fd());
                if udp {
                    let u = UdpSocket::bind(SocketAddrV4::new(addr, UDP_PORT)).unwrap();
                    u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    tx.send(()).unwrap();
                    let mut buf = [0u8; 512];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = u.recv_from(&mut buf) {
                            let _ = u.send_to(format!("{who} {}", from.ip()).as_bytes(), from);
                        }
                    }
                } else {
                    let l = TcpListener::bind(SocketAddrV4::new(addr, TCP_PORT)).unwrap();
                    l.set_nonblocking(true).unwrap();
                    tx.send(()).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut s, peer)) => {
                                s.set_nonblocking(false).unwrap();
                                let _ = s.write_all(format!("{who} {}\n", peer.ip()).as_bytes());
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                }
            }));
        }
        rx.recv().unwrap();
        rx.recv().unwrap();
        PeerEcho { stop, threads }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// Underlay `c` (a bridge, and the client), node `n` (uplink0 = NODE_IP, a local pod `p`
/// behind pod0), remote node `r` (on the underlay, hosting REMOTE_POD).
struct NodePortEnv {
    // Drop order: servers, then the dataplane pins and cgroup, then the namespaces.
    servers: Vec<PeerEcho>,
    bpffs: PathBuf,
    cgroup: PathBuf,
    ns: NetnsSet,
    c: String,
    n: String,
}

impl NodePortEnv {
    fn new() -> NodePortEnv {
        let id = std::process::id();
        let [c, n, p, r] = ["c", "n", "p", "r"].map(|x| format!("skiff-np{id}-{x}"));
        let bpffs = Path::new("/sys/fs/bpf").join(format!("skiff-nptest-{id}"));
        let cgroup = cgroup2_mount().unwrap().join(format!("skiff-nptest-{id}"));
        let _ = ebpf::cleanup(&bpffs, Some(&cgroup));
        let _ = fs::remove_dir(&cgroup);
        fs::create_dir(&cgroup).unwrap();
        let mut env = NodePortEnv {
            servers: Vec::new(),
            bpffs,
            cgroup,
            ns: NetnsSet { names: Vec::new() },
            c: c.clone(),
            n: n.clone(),
        };
        for x in [&c, &n, &p, &r] {
            env.ns.add(x);
            ipn(x, "link set lo up");
        }
        ipn(&c, "link add br0 type bridge");
        ipn(&c, &format!("addr add {CLIENT_IP}/24 dev br0"));
        ipn(&c, "link set br0 up");
        // node: uplink0 ↔ c/np0 (bridged); pod0 ↔ p/eth0
        ipn(
            &n,
            &format!("link add uplink0 type veth peer name np0 netns {c}"),
        );
        ipn(&c, "link set np0 master br0 up");
        ipn(&n, &format!("addr add {NODE_IP}/24 dev uplink0"));
        ipn(&n, "link set uplink0 up");
        ipn(
            &n,
            &format!("link add pod0 type veth peer name eth0 netns {p}"),
        );
        ipn(&n, "addr add 10.88.0.1/24 dev pod0");
        ipn(&n, "link set pod0 up");
        ipn(&n, "route add 10.99.0.0/24 via 192.168.77.3");
        ipn(&p, &format!("addr add {LOCAL_POD}/24 dev eth0"));
        ipn(&p, "link set eth0 up");
        ipn(&p, "route add default via 10.88.0.1");
        // remote node: eth0 ↔ c/rp0 (bridged), REMOTE_POD on lo
        ipn(
            &r,
            &format!("link add eth0 type veth peer name rp0 netns {c}"),
        );
        ipn(&c, "link set rp0 master br0 up");
        ipn(&r, "addr add 192.168.77.3/24 dev eth0");
        ipn(&r, "link set eth0 up");
        ipn(&r, &format!("addr add {REMOTE_POD}/32 dev lo"));
        in_netns(&n, || {
            fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap()
        });
        env.servers.push(PeerEcho::start(&p, LOCAL_POD, "local"));
        env.servers.push(PeerEcho::start(&r, REMOTE_POD, "remote"));
        env
    }
}

impl Drop for NodePortEnv {
    fn drop(&mut self) {
        self.servers.clear();
        if let Err(e) = ebpf::cleanup(&self.bpffs, Some(&self.cgroup)) {
            eprintln!("cleanup {}: {e:#}", self.bpffs.display());
        }
        let _ = fs::remove_dir(&self.cgroup);
        let _ = &self.ns; // dropped after this
    }
}

fn nodeport_state() -> ProxyState {
    let eps = vec![
        ep(LOCAL_POD, TCP_PORT),
        Endpoint {
            local: false,
            ..ep(REMOTE_POD, TCP_PORT)
        },
    ];
    let udp_eps: Vec<Endpoint> = eps
        .iter()
        .map(|e| Endpoint {
            port: UDP_PORT,
            ..e.clone()
        })
        .collect();
    let mut cluster = service(
        "np",
        Protocol::Tcp,
        Ipv4Addr::new(10, 96, 78, 10),
        80,
        TCP_PORT,
        &[],
    );
    cluster.endpoints = eps.clone();
    cluster.node_port = 30080;
    let mut local = service(
        "nplocal",
        Protocol::Tcp,
        Ipv4Addr::new(10, 96, 78, 11),
        80,
        TCP_PORT,
        &[],
    );
    local.endpoints = eps;
    local.node_port = 30081;
    local.external_local = true;
    let mut udp = service(
        "npudp",
        Protocol::Udp,
        Ipv4Addr::new(10, 96, 78, 10),
        53,
        UDP_PORT,
        &[],
    );
    udp.endpoints = udp_eps;
    udp.node_port = 30053;
    [cluster, local, udp]
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
}

fn tcp_ask(addr: SocketAddrV4) -> String {
    TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok(b.trim().to_string())
        })
        .unwrap_or_else(|e| format!("ERR {e}"))
}

#[test]
fn nodeport_end_to_end() {
    if let Some(why) = skip_reason() {
        skiff_common::privileged::cannot_run("nodeport_end_to_end", &why);
        return;
    }
    let env = NodePortEnv::new();
    let mut cfg = EbpfConfig::new(&env.bpffs, &env.cgroup);
    cfg.uplink = Some("uplink0".into());
    cfg.node_ip = Some(NODE_IP);
    let mut dp = in_netns(&env.n, move || {
        EbpfDataplane::open(&cfg).expect("open dataplane in the node netns")
    });
    assert_eq!(
        dp.attach_report().attached.len(),
        8,
        "{:?}",
        dp.attach_report()
    );
    let stats = dp.sync(&nodeport_state()).expect("sync");
    assert_eq!(
        stats.frontends, 10,
        "3 ClusterIP + 3 NodePort frontends at the node IP and 3 at 127.0.0.1, and the \
         internal scope of the Local one: {stats:?}"
    );

    // externalTrafficPolicy: Cluster — both backends; the local one sees the client, the
    // remote one the node (SNAT).
    let answers: Vec<String> = in_netns(&env.c, || {
        (0..40)
            .map(|_| tcp_ask(SocketAddrV4::new(NODE_IP, 30080)))
            .collect()
    });
    let mut seen: Vec<&str> = answers.iter().map(String::as_str).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [format!("local {CLIENT_IP}"), format!("remote {NODE_IP}")],
        "{answers:?}"
    );

    // externalTrafficPolicy: Local — only the local backend, client IP kept.
    let answers: Vec<String> = in_netns(&env.c, || {
        (0..10)
            .map(|_| tcp_ask(SocketAddrV4::new(NODE_IP, 30081)))
            .collect()
    });
    assert!(
        answers.iter().all(|a| *a == format!("local {CLIENT_IP}")),
        "{answers:?}"
    );

    // UDP: fresh sockets spread over both backends; replies come from the node port.
    let answers: Vec<String> = in_netns(&env.c, || {
        (0..30)
            .map(|_| {
                let u = UdpSocket::bind("0.0.0.0:0").unwrap();
                u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                u.send_to(b"who", SocketAddrV4::new(NODE_IP, 30053))
                    .unwrap();
                let mut buf = [0u8; 64];
                match u.recv_from(&mut buf) {
                    Ok((n, from)) => format!("{} from {from}", String::from_utf8_lossy(&buf[..n])),
                    Err(e) => format!("ERR {e}"),
                }
            })
            .collect()
    });
    let mut seen: Vec<&str> = answers.iter().map(String::as_str).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            format!("local {CLIENT_IP} from {NODE_IP}:30053"),
            format!("remote {NODE_IP} from {NODE_IP}:30053")
        ],
        "{answers:?}"
    );

    let ct = ebpf::PinnedMaps::open(&env.bpffs)
        .unwrap()
        .conntrack()
        .unwrap();
    assert!(ct.iter().any(|f| f.snat), "{ct:?}");
    assert!(
        ct.iter()
            .any(|f| f.direction == "original" && f.dst == format!("{NODE_IP}:30080")),
        "{ct:?}"
    );

    // Session affinity expiry, as on the socket path.
    let np_expiry_state = |eps: &[Ipv4Addr]| {
        let mut st = nodeport_state();
        let mut s = service(
            "npexpiry",
            Protocol::Tcp,
            Ipv4Addr::new(10, 96, 78, 12),
            80,
            TCP_PORT,
            &[],
        );
        s.endpoints = eps
            .iter()
            .map(|ip| Endpoint {
                local: *ip == LOCAL_POD,
                ..ep(*ip, TCP_PORT)
            })
            .collect();
        s.node_port = NP_EXPIRY_PORT;
        s.affinity_timeout = Some(AFF_TIMEOUT);
        st.insert(s.name.clone(), s);
        st
    };
    let client_ns = env.c.clone();
    let dial = move |n: usize| -> Vec<Option<Ipv4Addr>> {
        let answers = in_netns(&client_ns, move || {
            (0..n)
                .map(|_| tcp_ask(SocketAddrV4::new(NODE_IP, NP_EXPIRY_PORT)))
                .collect::<Vec<String>>()
        });
        answers
            .iter()
            .map(|a| {
                if *a == format!("local {CLIENT_IP}") {
                    Some(LOCAL_POD)
                } else if *a == format!("remote {NODE_IP}") {
                    Some(REMOTE_POD)
                } else {
                    None
                }
            })
            .collect()
    };
    affinity_expiry_case(
        "nodeport",
        &mut dp,
        &env.bpffs,
        "lbtest/npexpiry",
        [LOCAL_POD, REMOTE_POD],
        np_expiry_state,
        dial,
    );
    dp.sync(&nodeport_state()).unwrap();

    // Restart: the tc links are reused too.
    drop(dp);
    let mut cfg = EbpfConfig::new(&env.bpffs, &env.cgroup);
    cfg.uplink = Some("uplink0".into());
    cfg.node_ip = Some(NODE_IP);
    dp = in_netns(&env.n, move || EbpfDataplane::open(&cfg).expect("re-open"));
    assert_eq!(
        dp.attach_report().updated.len(),
        8,
        "{:?}",
        dp.attach_report()
    );
    let st = dp.sync(&nodeport_state()).unwrap();
    assert_eq!((st.writes, st.deletes), (0, 0), "{st:?}");
    let a = in_netns(&env.c, || tcp_ask(SocketAddrV4::new(NODE_IP, 30081)));
    assert_eq!(a, format!("local {CLIENT_IP}"));
    drop(dp);

    let rep = ebpf::cleanup(&env.bpffs, Some(&env.cgroup)).unwrap();
    assert_eq!(rep.links.len(), 8, "{rep:?}");
    // Without the programs the node port is closed.
    let a = in_netns(&env.c, || tcp_ask(SocketAddrV4::new(NODE_IP, 30081)));
    assert!(a.starts_with("ERR"), "{a}");
}

// ---- session-affinity expiry: the same on the socket and the NodePort path ----

/// The short `sessionAffinityConfig.clientIP.timeoutSeconds` of the expiry cases.
const AFF_TIMEOUT: u32 = 2;
/// The socket path's expiry service (ClusterIP only).
const VIP_EXPIRY: Ipv4Addr = Ipv4Addr::new(10, 96, 77, 13);
/// The NodePort path's expiry service.
const NP_EXPIRY_PORT: u16 = 30082;

/// One affinity entry of a service, as the kernel holds it.
#[derive(Debug)]
struct AffinityRow {
    key: skiff_ebpf_common::AffinityKey,
    value: skiff_ebpf_common::AffinityValue,
    backend: Option<Ipv4Addr>,
    idle_secs: u64,
}

/// The affinity entries of every frontend of `service` (`namespace/name`).
fn affinity_rows(bpffs: &Path, service: &str) -> Vec<AffinityRow> {
    use skiff_agent::proxy::ebpf::maps::Table as _;
    let pinned = ebpf::PinnedMaps::open(bpffs).unwrap();
    let revs: Vec<u32> = pinned
        .frontends()
        .unwrap()
        .into_iter()
        .filter(|f| f.service == service)
        .map(|f| f.rev_nat_id)
        .collect();
    assert!(!revs.is_empty(), "no frontend of {service}");
    let backends: BTreeMap<u32, Ipv4Addr> = pinned
        .backends()
        .unwrap()
        .into_iter()
        .map(|b| (b.id, b.ip))
        .collect();
    let now = ebpf::maps::monotonic_secs();
    pinned
        .affinity
        .entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| revs.contains(&k.rev_nat_id))
        .map(|(key, value)| AffinityRow {
            key,
            value,
            backend: backends.get(&value.backend_id).copied(),
            idle_secs: now.saturating_sub(u64::from(value.last_used)),
        })
        .collect()
}

/// Age every affinity entry of `service` past its timeout, through the pinned map.
fn expire_affinity(bpffs: &Path, service: &str) {
    use skiff_agent::proxy::ebpf::maps::Table as _;
    let rows = affinity_rows(bpffs, service);
    assert!(!rows.is_empty(), "no affinity entry of {service} to expire");
    let mut pinned = ebpf::PinnedMaps::open(bpffs).unwrap();
    let stale = (ebpf::maps::monotonic_secs() as u32).wrapping_sub(AFF_TIMEOUT + 10);
    for r in rows {
        let value = skiff_ebpf_common::AffinityValue {
            last_used: stale,
            ..r.value
        };
        pinned.affinity.put(&r.key, &value).unwrap();
    }
}

/// Delete every slot of `service`'s frontends (the count stays): what a half-applied sync, or
/// a backend removed behind the agent's back, leaves — no backend can be chosen.
fn drop_slots(bpffs: &Path, service: &str) {
    use skiff_agent::proxy::ebpf::maps::Table as _;
    let mut pinned = ebpf::PinnedMaps::open(bpffs).unwrap();
    let revs: Vec<u32> = pinned
        .frontends()
        .unwrap()
        .into_iter()
        .filter(|f| f.service == service)
        .map(|f| f.rev_nat_id)
        .collect();
    let slots: Vec<skiff_ebpf_common::SlotKey> = pinned
        .slots
        .entries()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| revs.contains(&k.rev_nat_id))
        .collect();
    assert!(!slots.is_empty(), "{service} has no slots");
    for k in slots {
        pinned.slots.delete(&k).unwrap();
    }
}

/// `sessionAffinity: ClientIP` expiry, run the same way on the socket path and on the NodePort
/// path (`path` names it in messages). `state(backends)`: the test's state with `service`
/// served by `backends` (affinity timeout [`AFF_TIMEOUT`]); `dial(n)`: which backend answered
/// each of `n` new connections of the one client (`None`: none did).
fn affinity_expiry_case(
    path: &str,
    dp: &mut EbpfDataplane,
    bpffs: &Path,
    service: &str,
    [x, y]: [Ipv4Addr; 2],
    state: impl Fn(&[Ipv4Addr]) -> ProxyState,
    dial: impl Fn(usize) -> Vec<Option<Ipv4Addr>>,
) {
    dp.sync(&state(&[x, y])).expect("sync");
    let rows = || affinity_rows(bpffs, service);

    // Fresh: every connection goes to the backend of the first one, and the entry says so.
    let got = dial(8);
    let first = got[0].unwrap_or_else(|| panic!("{path}: no answer: {got:?}"));
    assert!(got.iter().all(|g| *g == Some(first)), "{path}: {got:?}");
    let r = rows();
    assert_eq!(r.len(), 1, "{path}: {r:?}");
    assert_eq!(r[0].backend, Some(first), "{path}: {r:?}");

    // Expired (both backends still serve): not honoured — a fresh pick, which replaces the
    // entry. Honoured, one backend would answer every time.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..16 {
        expire_affinity(bpffs, service);
        let got = dial(1)[0].unwrap_or_else(|| panic!("{path}: round {i}: no answer"));
        seen.insert(got);
        let r = rows();
        assert_eq!(r.len(), 1, "{path}: round {i}: {r:?}");
        assert_eq!(r[0].backend, Some(got), "{path}: round {i}: {r:?}");
        assert!(
            r[0].idle_secs <= 1,
            "{path}: round {i}: not refreshed: {r:?}"
        );
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [x, y],
        "{path}: an expired affinity entry was honoured"
    );

    // Expired, and its backend left the service: the other one answers, the entry names it.
    let bound = rows()[0].backend.unwrap();
    let other = if bound == x { y } else { x };
    expire_affinity(bpffs, service);
    dp.sync(&state(&[other])).expect("sync");
    let got = dial(4);
    assert!(got.iter().all(|g| *g == Some(other)), "{path}: {got:?}");
    let r = rows();
    assert_eq!(r.len(), 1, "{path}: {r:?}");
    assert_eq!(r[0].backend, Some(other), "{path}: {r:?}");
    assert!(r[0].idle_secs <= 1, "{path}: {r:?}");

    // Expired, and no backend can be chosen (the slots are gone, the count is not): the
    // connection fails and the stale entry is removed, not left for later.
    expire_affinity(bpffs, service);
    drop_slots(bpffs, service);
    let got = dial(1);
    assert_eq!(got, [None], "{path}");
    let r = rows();
    assert!(
        r.is_empty(),
        "{path}: a stale affinity entry was left behind: {r:?}"
    );
    // The agent's next full look at the maps repairs the slots.
    dp.refresh_mirror().unwrap();
    dp.sync(&state(&[other])).expect("sync");
    assert_eq!(dial(2), [Some(other); 2], "{path}");
}
