//! Cluster DNS on a 2-node cluster, once per proxy mode: busybox `nslookup` in a pod asks the
//! `kube-dns` ClusterIP (10.96.0.10, answered by the pod's own node) for service, headless,
//! SRV, PTR, ExternalName and missing names, and for a name outside the cluster, which the
//! agent forwards to a resolver this test runs on 127.0.0.1 inside each node's namespace.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::wait_for;

/// Where each node's agent forwards names outside the cluster (`--dns-upstream`).
const UPSTREAM_PORT: u16 = 5300;
/// What the test's upstream resolver knows: `www.example.test` A 192.0.2.10.
const EXTERNAL_NAME: &str = "www.example.test";
const EXTERNAL_ADDR: [u8; 4] = [192, 0, 2, 10];

/// A minimal authoritative responder for `www.example.test` (A 192.0.2.10, NODATA for other
/// types), NXDOMAIN for every other name, on 127.0.0.1 in the node's network namespace.
struct Upstream {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Upstream {
    fn start(c: &Cluster) -> Result<Upstream> {
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for node in c.nodes() {
            let netns = c.node(&node).netns_path();
            let (stop, queries) = (stop.clone(), queries.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || -> Result<()> {
                // This thread alone enters the node's network namespace.
                let ns = std::fs::File::open(&netns)?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let socket = UdpSocket::bind(("127.0.0.1", UPSTREAM_PORT))?;
                socket.set_read_timeout(Some(Duration::from_millis(100)))?;
                let _ = ready_tx.send(());
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(answer) = respond(&buf[..n]) {
                        queries.fetch_add(1, Ordering::SeqCst);
                        socket.send_to(&answer, peer)?;
                    }
                }
                Ok(())
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .with_context(|| format!("the upstream resolver in {node} did not start"))?;
        }
        Ok(Upstream {
            stop,
            queries,
            threads,
        })
    }

    fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        for t in std::mem::take(&mut self.threads) {
            t.join()
                .map_err(|_| anyhow::anyhow!("upstream thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Upstream {
    /// A failed test still stops the responders (their sockets close with the threads).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The answer to one query: the question echoed, then one A record or none.
fn respond(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = query.get(12..i + 4)?;
    let known = labels.join(".") == EXTERNAL_NAME;
    let answer_a = known && qtype == 1;
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    // QR, RD copied, RA; NOERROR or NXDOMAIN.
    out.push(0x80 | (query[2] & 0x01));
    out.push(0x80 | if known { 0 } else { 3 });
    out.extend_from_slice(&[0, 1, 0, u8::from(answer_a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if answer_a {
        // Name: pointer to the question; A IN, TTL 60, 4 bytes.
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&EXTERNAL_ADDR);
    }
    Some(out)
}

fn backend(name: &str, node: &str, ready: bool) -> String {
    let probe = if ready { "true" } else { "false" };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: kubia}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  hostname: {name}
  subdomain: kubia-headless
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: skiff.test/busybox:1
    ports: [{{name: http, containerPort: 8080}}]
    command: ["sh", "-c", "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      exec: {{command: ["{probe}"]}}
      periodSeconds: 1
"#
    )
}

const SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata: {name: kubia}
spec:
  selector: {app: kubia}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: kubia-headless}
spec:
  clusterIP: None
  selector: {app: kubia}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: external}
spec:
  type: ExternalName
  externalName: www.example.test
"#;

/// `nslookup ARGS` in the client pod: (exit success, stdout and stderr).
fn nslookup(c: &Cluster, args: &[&str]) -> Result<(bool, String)> {
    nslookup_in(c, "client", args)
}

fn nslookup_in(c: &Cluster, pod: &str, args: &[&str]) -> Result<(bool, String)> {
    let mut argv = vec!["timeout", "10", "nslookup"];
    argv.extend(args);
    let out = c
        .pod_command(pod, &argv)?
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The (name, address) pairs of busybox nslookup's answers (the server's own `Address:`
/// line comes before any `Name:` and is left out).
fn addresses(text: &str) -> BTreeSet<(String, String)> {
    let mut name = None;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("Name:") {
            name = Some(n.trim().to_string());
        } else if let (Some(a), Some(n)) = (line.strip_prefix("Address:"), &name) {
            out.insert((n.clone(), a.trim().to_string()));
        } else if line.trim().is_empty() {
            name = None;
        }
    }
    out
}

fn pair(name: &str, addr: &str) -> (String, String) {
    (name.to_string(), addr.to_string())
}

fn scenario(mode: &str) -> Result<()> {
    let c = Cluster::start(ClusterOptions {
        nodes: 2,
        proxy_mode: mode.into(),
        agent_args: vec![
            "--dns-upstream".into(),
            format!("127.0.0.1:{UPSTREAM_PORT}"),
        ],
        ..Default::default()
    })?;
    c.assert_proxy_mode(mode)?;
    let upstream = Upstream::start(&c)?;
    let nodes = c.nodes();
    // Backends on both nodes; the client on the first asks its own node's server.
    let (n1, n2) = (&nodes[0], &nodes[1]);
    c.apply(&backend("kubia-0", n1, true))?;
    c.apply(&backend("kubia-1", n2, true))?;
    c.apply(&backend("kubia-unready", n2, false))?;
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {n1}}}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: sh, image: skiff.test/busybox:1, command: ["sleep", "3600"]}}
"#
    ))?;
    c.apply(SERVICES)?;
    for p in ["kubia-0", "kubia-1", "client"] {
        wait_for(&format!("{p} ready"), Duration::from_secs(60), || {
            Ok(
                (c.jsonpath("pod", p, ".status.conditions[?(@.type==\"Ready\")].status")?
                    == "True")
                    .then_some(()),
            )
        })?;
    }
    let svc_ip = c.jsonpath("svc", "kubia", ".spec.clusterIP")?;
    let ip0 = c.jsonpath("pod", "kubia-0", ".status.podIP")?;
    let ip1 = c.jsonpath("pod", "kubia-1", ".status.podIP")?;
    let dns_ip = c.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "svc",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(
        dns_ip == "10.96.0.10",
        "kube-system/kube-dns is at {dns_ip:?}"
    );

    // ClusterFirst: the cluster DNS, the namespace's search path, ndots:5.
    let resolv = String::from_utf8(
        c.pod_command("client", &["cat", "/etc/resolv.conf"])?
            .output()?
            .stdout,
    )?;
    ensure!(
        resolv.starts_with("search default.svc.cluster.local svc.cluster.local cluster.local")
            && resolv.contains("\nnameserver 10.96.0.10\n")
            && resolv.contains("options ndots:5"),
        "resolv.conf:\n{resolv}"
    );

    // The service by its short name (search path) and by its full name.
    let kubia = pair("kubia.default.svc.cluster.local", &svc_ip);
    wait_for("kubia by name", Duration::from_secs(30), || {
        let (_, out) = nslookup(&c, &["kubia"])?;
        Ok(addresses(&out).contains(&kubia).then_some(()))
    })?;
    let (ok, out) = nslookup(&c, &["kubia.default.svc.cluster.local"])?;
    ensure!(
        ok && addresses(&out) == BTreeSet::from([kubia.clone()]),
        "{out}"
    );
    // A pod on the other node is answered by that node's server.
    let (ok, out) = nslookup_in(&c, "kubia-1", &["kubia.default.svc.cluster.local"])?;
    ensure!(
        ok && addresses(&out) == BTreeSet::from([kubia.clone()]),
        "{out}"
    );
    // Headless: every ready pod, not the unready one; pods by hostname.
    let (ok, out) = nslookup(&c, &["kubia-headless.default.svc.cluster.local"])?;
    let headless = "kubia-headless.default.svc.cluster.local";
    ensure!(
        ok && addresses(&out) == BTreeSet::from([pair(headless, &ip0), pair(headless, &ip1)]),
        "{out}"
    );
    let (ok, out) = nslookup(&c, &["kubia-0.kubia-headless.default.svc.cluster.local"])?;
    ensure!(
        ok && addresses(&out)
            == BTreeSet::from([pair(
                "kubia-0.kubia-headless.default.svc.cluster.local",
                &ip0
            )]),
        "{out}"
    );

    // SRV for the named port.
    let (ok, out) = nslookup(
        &c,
        &["-type=srv", "_http._tcp.kubia.default.svc.cluster.local"],
    )?;
    ensure!(
        ok && out.contains("service = 0 100 80 kubia.default.svc.cluster.local"),
        "{out}"
    );

    // PTR of the ClusterIP and of a headless endpoint.
    let (ok, out) = nslookup(&c, &[&svc_ip])?;
    ensure!(
        ok && out.contains("name = kubia.default.svc.cluster.local"),
        "{out}"
    );
    let (ok, out) = nslookup(&c, &[&ip0])?;
    ensure!(
        ok && out.contains("name = kubia-0.kubia-headless.default.svc.cluster.local"),
        "{out}"
    );

    // ExternalName: the CNAME, and its target's address from the upstream resolver.
    let external = EXTERNAL_ADDR.map(|b| b.to_string()).join(".");
    let before = upstream.queries.load(Ordering::SeqCst);
    let (ok, out) = nslookup(&c, &["external.default.svc.cluster.local"])?;
    ensure!(
        ok && out.contains("external.default.svc.cluster.local\tcanonical name = www.example.test")
            && addresses(&out).contains(&pair(EXTERNAL_NAME, &external)),
        "{out}"
    );
    ensure!(
        upstream.queries.load(Ordering::SeqCst) > before,
        "the upstream resolver was not asked for the ExternalName's target"
    );

    // The schema version, and a missing name.
    let (ok, out) = nslookup(&c, &["-type=txt", "dns-version.cluster.local"])?;
    ensure!(ok && out.contains("text = \"1.1.0\""), "{out}");
    let (_, out) = nslookup(&c, &["nothere.default.svc.cluster.local"])?;
    ensure!(
        out.contains("can't find nothere.default.svc.cluster.local: NXDOMAIN")
            && addresses(&out).is_empty(),
        "{out}"
    );

    // A name outside the cluster comes from the upstream resolver; this one from the cache
    // the ExternalName's lookup filled (A for 60 s, the empty AAAA answer for 30 s).
    let before = upstream.queries.load(Ordering::SeqCst);
    let (ok, out) = nslookup(&c, &[EXTERNAL_NAME])?;
    ensure!(
        ok && addresses(&out) == BTreeSet::from([pair(EXTERNAL_NAME, &external)]),
        "{out}"
    );
    ensure!(
        upstream.queries.load(Ordering::SeqCst) == before,
        "a cached answer was asked upstream again"
    );
    let before = upstream.queries.load(Ordering::SeqCst);
    let (_, out) = nslookup(&c, &["missing.example.test"])?;
    ensure!(
        upstream.queries.load(Ordering::SeqCst) > before,
        "the upstream resolver was not asked for missing.example.test"
    );
    ensure!(
        out.contains("can't find missing.example.test: NXDOMAIN"),
        "{out}"
    );

    drop(c);
    upstream.stop()
}

#[test]
fn dns_ebpf() -> Result<()> {
    if skip_unless_root("dns_ebpf") {
        return Ok(());
    }
    scenario("ebpf")
}

#[test]
fn dns_iptables() -> Result<()> {
    if skip_unless_root("dns_iptables") {
        return Ok(());
    }
    scenario("iptables")
}
