//! `kubectl port-forward` through the API server to the node agent: the newest kubectl (SPDY
//! tunnelled in a WebSocket) and Debian's kubectl 1.20 (plain SPDY/3.1). kubectl runs in a
//! node's network namespace and the test fetches through its local port from there: the
//! pod's own answer, two connections at once (4 MiB each, byte for byte), kubectl's error for
//! a port where nothing listens, and kube's 403 for a user who may not port-forward.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use skiff_tests::Kubectl;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::port_forward::{Forward, in_netns};
use skiff_tests::wait_for;

const NS: &str = "portforward-e2e";

/// An HTTP/1.0 GET on each of `conns` (already connected), sent before any answer is read:
/// the bodies.
fn get_all(conns: Vec<TcpStream>, path: &str) -> Result<Vec<String>> {
    let mut conns = conns;
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(20)))?;
        c.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    }
    conns
        .into_iter()
        .map(|mut c| {
            let mut all = String::new();
            c.read_to_string(&mut all)?;
            let body = all
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .with_context(|| format!("no HTTP answer: {all:?}"))?;
            ensure!(all.starts_with("HTTP/1.") && all.contains(" 200 "), "{all}");
            Ok(body)
        })
        .collect()
}

/// `path` on `n` connections to 127.0.0.1:`port` in `netns`, made together: the bodies.
fn fetch_concurrently(
    netns: PathBuf,
    port: u16,
    n: usize,
    path: &'static str,
) -> Result<Vec<String>> {
    in_netns(netns, move || {
        let conns = (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?;
        get_all(conns, path)
    })
}

#[test]
fn kubectl_port_forward_through_the_api_server() -> Result<()> {
    if skip_unless_root("kubectl_port_forward_through_the_api_server") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    let node = c.nodes().first().context("a node")?.clone();
    let netns = c.node(&node).netns_path();
    c.kubectl(&["create", "namespace", NS])?;
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {NS}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.test/busybox:1
    command: ["sh", "-c", "mkdir -p /www; echo served-by-$(hostname) > /www/index.html; head -c 4194304 /dev/zero | tr '\\0' x > /www/big; exec httpd -f -p 8080 -h /www"]
"#
    ))?;
    c.wait_pod_running(NS, "web", Duration::from_secs(90))?;
    // httpd listens once the 4 MiB file is written.
    wait_for("web serving", Duration::from_secs(60), || {
        let probe = c
            .kubectl_command()?
            .args([
                "exec",
                "-n",
                NS,
                "web",
                "--",
                "wget",
                "-q",
                "-O",
                "/dev/null",
            ])
            .arg("http://127.0.0.1:8080/big")
            .output()?;
        ensure!(
            probe.status.success(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        Ok(Some(()))
    })?;

    let newest = Kubectl::newest()?;
    let old = Kubectl::debian_120()?;
    for (kubectl, local) in [(&newest, 18080u16), (&old, 18090)] {
        let label = format!("kubectl 1.{}", kubectl.minor);
        let mapping = format!("{local}:8080");
        let mut fwd = Forward::start(&c, &node, kubectl, &["-n", NS, "pod/web", &mapping])?;
        fwd.wait_listening(local).with_context(|| label.clone())?;
        // The pod's answer, once and then on two connections at once.
        let one = fetch_concurrently(netns.clone(), local, 1, "/")
            .with_context(|| format!("{label} /: {:?}", fwd.printed()))?;
        assert_eq!(one, ["served-by-web\n"], "{label}");
        let two = fetch_concurrently(netns.clone(), local, 2, "/")
            .with_context(|| format!("{label} / twice: {:?}", fwd.printed()))?;
        assert_eq!(two, ["served-by-web\n", "served-by-web\n"], "{label}");
        // 4 MiB, on two connections at once: many frames, interleaved, byte for byte.
        let big = fetch_concurrently(netns.clone(), local, 2, "/big")
            .with_context(|| format!("{label} /big: {:?}", fwd.printed()))?;
        let want = "x".repeat(4 << 20);
        for body in &big {
            assert!(
                body.len() == want.len() && *body == want,
                "{label}: {} bytes",
                body.len()
            );
        }
        drop(fwd);

        // Nothing listens on 9999 in the pod: kubectl reports the kubelet's error.
        let local = local + 1;
        let mapping = format!("{local}:9999");
        let mut fwd = Forward::start(&c, &node, kubectl, &["-n", NS, "pod/web", &mapping])?;
        fwd.wait_listening(local).with_context(|| label.clone())?;
        let closed = in_netns(netns.clone(), move || {
            let mut s = TcpStream::connect(("127.0.0.1", local))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            Ok(got)
        })?;
        assert!(closed.is_empty(), "{label}: {closed:?}");
        let want = format!(
            "an error occurred forwarding {local} -> 9999: error forwarding port 9999 to pod "
        );
        wait_for(
            &format!("{label} reports the refused port"),
            Duration::from_secs(20),
            || {
                let (_, err) = fwd.printed();
                Ok((err.contains(&want) && err.contains("connection refused")).then_some(()))
            },
        )
        .with_context(|| format!("{label}: {:?}", fwd.printed()))?;
    }
    // The newest kubectl used the WebSocket tunnel, not its SPDY fallback.
    let log = c.agent_log(&node);
    assert!(
        log.contains("port-forward") && log.contains("Tunnel"),
        "{log}"
    );
    assert!(log.contains("Spdy"), "{log}");

    // A user who may read pods but not forward to them gets kube's 403, whichever protocol.
    c.grant_pod_reader(NS, "pf-viewer")?;
    let kubeconfig = c.user_kubeconfig("pf-viewer")?;
    for kubectl in [&newest, &old] {
        let mut fwd = Forward::start_as(
            &c,
            &kubeconfig,
            &node,
            kubectl,
            &["-n", NS, "pod/web", "18100:8080"],
        )?;
        let status = wait_for("port-forward refused", Duration::from_secs(30), || {
            Ok(fwd.child.try_wait()?)
        })?;
        let (out, err) = fwd.printed();
        assert!(!status.success(), "{out}{err}");
        assert!(
            err.contains("pods \"web\" is forbidden: User \"pf-viewer\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"portforward-e2e\""),
            "kubectl 1.{}: {err}",
            kubectl.minor
        );
    }

    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
