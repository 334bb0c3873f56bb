//! LoadBalancer Services on the 3-node harness: the control plane gives a Service an address
//! from the harness's pool (the top of the underlay subnet), one node answers ARP for it on
//! the underlay (checked from a namespace of the test's own on the underlay bridge, by the
//! MAC its kernel resolves), requests to it from there reach both backends, and when that
//! node's agent dies another node answers within 10 s and the requests go on through it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{self, Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::port_forward::in_netns;
use skiff_tests::wait_for;

/// A namespace of the test's own on the underlay bridge: a host asking ARP there.
struct Probe {
    netns: String,
}

impl Probe {
    fn create(c: &Cluster) -> Result<Probe> {
        let s = c.state();
        let netns = format!("{}-lbprobe", c.name());
        let link = format!("{}-lbp", c.name());
        let _ = ip(&["netns", "del", &netns]);
        ip(&["netns", "add", &netns])?;
        let probe = Probe { netns };
        let ns = probe.netns.as_str();
        let ul = s.underlay_netns.as_str();
        ip(&[
            "-n", ul, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", ul, "link", "set", &link, "master", &s.bridge, "up"])?;
        let addr = format!("10.{}.0.239/24", s.index);
        ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(probe)
    }

    /// The MAC the probe's kernel resolves `addr` to by ARP right now (its neighbour cache
    /// emptied first), or None when nobody answers.
    fn resolve(&self, addr: &str) -> Result<Option<String>> {
        ip(&["-n", &self.netns, "neigh", "flush", "dev", "eth0"])?;
        // Only the ARP exchange matters; the echo itself may go unanswered.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                addr,
            ])
            .output()?;
        let out = ip(&["-n", &self.netns, "neigh", "show", addr, "dev", "eth0"])?;
        Ok(word_after(&out, "lladdr"))
    }
}

impl Probe {
    /// `GET http://addr/` from the probe: the body.
    fn fetch(&self, addr: &str) -> Result<String> {
        let addr = addr.to_string();
        in_netns(Path::new("/run/netns").join(&self.netns), move || {
            let target = (addr.as_str(), 80)
                .to_socket_addrs()?
                .next()
                .context("address")?;
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
            let mut all = String::new();
            s.read_to_string(&mut all)?;
            let (head, body) = all.split_once("\r\n\r\n").context("no HTTP answer")?;
            ensure!(head.contains(" 200 "), "{head}");
            Ok(body.trim().to_string())
        })
    }

    /// Requests to `addr` until every pod in `pods` has answered (at most 40); each answer
    /// must name one of them.
    fn reaches_all(&self, addr: &str, pods: &[String]) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let body = self.fetch(addr)?;
            let pod = body.strip_prefix("served-by-").unwrap_or_default();
            ensure!(
                pods.iter().any(|p| p == pod),
                "answer {body:?} is not from {pods:?}"
            );
            seen.insert(pod.to_string());
            if seen.len() == pods.len() {
                return Ok(());
            }
        }
        bail!("only {seen:?} of {pods:?} answered at {addr}")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Deleting the namespace takes its end of the veth pair, and so the other end.
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(str::to_string)
}

/// The MAC of `node`'s underlay link.
fn node_mac(c: &Cluster, node: &str) -> Result<String> {
    let out = ip(&["-n", &c.node(node).netns, "-o", "link", "show", "eth0"])?;
    word_after(&out, "link/ether").context("no MAC on eth0")
}

fn holder(c: &Cluster, lease: &str) -> Result<String> {
    c.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        lease,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .map(|h| h.trim().to_string())
}

fn lb_ip(c: &Cluster, name: &str) -> Result<String> {
    c.jsonpath("svc", name, ".status.loadBalancer.ingress[*].ip")
        .map(|s| s.trim().to_string())
}

fn events(c: &Cluster, name: &str) -> Result<String> {
    c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message,SOURCE:.source.component",
        "--no-headers",
    ])
}

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: skiff.test/busybox:1
        command: ["sh", "-c", "mkdir -p /www; echo served-by-$(hostname) > /www/index.html; exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// The control plane's side: an address from the pool for `web` (returned), none for another
/// class or for an address outside the pool (with the Event saying why).
fn allocation(c: &Cluster) -> Result<String> {
    let index = c.state().index;
    let pool = cluster::lb_pool(index);
    let in_pool = |ip: &str| {
        ip.strip_prefix(&format!("10.{index}.0."))
            .and_then(|h| h.parse::<u8>().ok())
            .is_some_and(|h| (240..=254).contains(&h))
    };
    // An address from the pool, and MetalLB's Event for it.
    c.apply(WEB)?;
    let addr = wait_for(
        "web's LoadBalancer address",
        Duration::from_secs(30),
        || {
            let ip = lb_ip(c, "web")?;
            Ok((!ip.is_empty()).then_some(ip))
        },
    )?;
    ensure!(in_pool(&addr), "{addr} is not from the pool {pool}");
    let ev = events(c, "web")?;
    ensure!(
        ev.contains("IPAllocated") && ev.contains(&format!("Assigned IP [\"{addr}\"]")),
        "no IPAllocated event:\n{ev}"
    );

    // Another class is someone else's: it stays pending. Asking for an address outside the
    // pool gets none, with an Event saying why.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: other-class}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/bgp
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  type: LoadBalancer
  loadBalancerIP: 192.0.2.7
  allocateLoadBalancerNodePorts: false
  ports: [{port: 80}]
"#,
    )?;
    wait_for(
        "the AllocationFailed event",
        Duration::from_secs(30),
        || {
            let ev = events(c, "outside")?;
            Ok(ev
            .contains("Failed to allocate IP for \"default/outside\": \"192.0.2.7\" is not allowed in config")
            .then_some(()))
        },
    )?;
    ensure!(lb_ip(c, "outside")?.is_empty());
    ensure!(
        lb_ip(c, "other-class")?.is_empty(),
        "another class's Service got an address"
    );
    let node_ports = c.jsonpath("svc", "outside", ".spec.ports[*].nodePort")?;
    ensure!(
        node_ports.trim().is_empty(),
        "nodePorts allocated: {node_ports}"
    );

    Ok(addr)
}

/// The names of the two running `web` pods.
fn web_pods(c: &Cluster) -> Result<Vec<String>> {
    wait_for("two web pods running", Duration::from_secs(90), || {
        let phases = c.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
        ])?;
        let running: Vec<String> = phases
            .split_whitespace()
            .filter_map(|p| p.strip_suffix("=Running"))
            .map(str::to_string)
            .collect();
        Ok((running.len() == 2).then_some(running))
    })
}

#[test]
fn load_balancer_l2() -> Result<()> {
    if skip_unless_root("load_balancer_l2") {
        return Ok(());
    }
    let mut c = Cluster::start(ClusterOptions {
        nodes: 3,
        ..Default::default()
    })?;
    let addr = allocation(&c)?;

    // One node holds the Lease and answers ARP from the underlay with its MAC.
    let lease = "skiff-l2announce-default-web";
    let first = wait_for("the announcement lease", Duration::from_secs(30), || {
        let h = holder(&c, lease)?;
        Ok((!h.is_empty()).then_some(h))
    })?;
    ensure!(c.nodes().contains(&first), "lease held by {first:?}");
    let probe = Probe::create(&c)?;
    let first_mac = node_mac(&c, &first)?;
    let seen = wait_for(
        "an ARP answer for the address",
        Duration::from_secs(15),
        || probe.resolve(&addr),
    )?;
    ensure!(
        seen == first_mac,
        "{addr} resolved to {seen}, not the holder {first}'s {first_mac}"
    );
    let ev = events(&c, "web")?;
    ensure!(
        ev.contains(&format!(
            "announcing from node \"{first}\" with protocol \"layer2\""
        )),
        "no nodeAssigned event:\n{ev}"
    );
    // Requests from the underlay reach both backends through the announcing node.
    let pods = web_pods(&c)?;
    wait_for(
        "web answering at its address",
        Duration::from_secs(30),
        || Ok(probe.fetch(&addr).ok()),
    )?;
    probe.reaches_all(&addr, &pods)?;

    // The holder's agent dies: another node answers within 10 s.
    let others: Vec<(String, String)> = c
        .nodes()
        .into_iter()
        .filter(|n| *n != first)
        .map(|n| node_mac(&c, &n).map(|m| (n, m)))
        .collect::<Result<_>>()?;
    c.kill_agent(&first);
    let killed = Instant::now();
    let (next, took) = loop {
        if let Some(mac) = probe.resolve(&addr)?
            && let Some((n, _)) = others.iter().find(|(_, m)| *m == mac)
        {
            break (n.clone(), killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(20) {
            bail!("no other node answered ARP for {addr} in 20 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{next} answers for {addr} {took:?} after {first}'s agent was killed");
    ensure!(
        took <= Duration::from_secs(10),
        "{next} took over {addr} after {took:?} (goal: 10 s)"
    );
    ensure!(holder(&c, lease)? == next, "the lease is not {next}'s");
    probe
        .reaches_all(&addr, &pods)
        .with_context(|| format!("through {next} after the takeover"))?;
    c.start_agent(&first)?;

    // Not a LoadBalancer any more: the address is given back and taken by the next Service.
    c.kubectl(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ])?;
    wait_for("web's address released", Duration::from_secs(30), || {
        Ok(lb_ip(&c, "web")?.is_empty().then_some(()))
    })?;
    c.kubectl(&[
        "patch",
        "svc",
        "outside",
        "-p",
        &format!(r#"{{"spec":{{"loadBalancerIP":"{addr}"}}}}"#),
    ])?;
    wait_for("the freed address reused", Duration::from_secs(30), || {
        Ok((lb_ip(&c, "outside")? == addr).then_some(()))
    })?;
    // The Lease goes with its Service.
    c.kubectl(&["delete", "svc", "outside", "web", "other-class"])?;
    c.kubectl(&["delete", "deployment", "web"])?;
    wait_for(
        "the announcement leases gone",
        Duration::from_secs(60),
        || {
            let left = c.kubectl(&["get", "lease", "-n", "kube-system", "-o", "name"])?;
            Ok((!left.contains("skiff-l2announce-")).then_some(()))
        },
    )?;
    drop(probe);
    Ok(())
}
