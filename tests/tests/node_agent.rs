//! The node agent on a 2-node cluster (network namespaces as nodes, real kubectl): pods on
//! both nodes reach each other by pod IP, logs, restarts with back-off, probes, deletion
//! leaving no kernel state behind, adoption after `kill -9`, missing images.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::wait_for;

fn wait_running(c: &Cluster, pod: &str) -> Result<()> {
    wait_for(
        &format!("pod {pod} Running"),
        Duration::from_secs(60),
        || Ok((c.jsonpath("pod", pod, ".status.phase")? == "Running").then_some(())),
    )
}

/// A busybox pod on `node` serving its hostname over HTTP on 8080.
fn web_pod(name: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: skiff.test/busybox:1
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && echo serving $(hostname) && exec httpd -f -p 8080 -h /www"]
"#
    )
}

/// A pod on `node` that fetches `url` every second and prints what it got.
fn client_pod(name: &str, node: &str, url: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: skiff.test/busybox:1
    command: ["sh", "-c", "while true; do echo got=$(timeout 2 wget -q -O - {url}); sleep 1; done"]
"#
    )
}

fn pod_uid(c: &Cluster, pod: &str) -> Result<String> {
    c.jsonpath("pod", pod, ".metadata.uid")
}

/// The pids in a pod's cgroup on `node`.
fn pod_pids(c: &Cluster, node: &str, uid: &str) -> Result<BTreeSet<u32>> {
    let path = c
        .node(node)
        .cgroup
        .join("kubepods")
        .join(format!("pod{uid}"))
        .join("cgroup.procs");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

#[test]
fn node_agent_on_two_nodes() -> Result<()> {
    if skip_unless_root("node_agent_on_two_nodes") {
        return Ok(());
    }
    // One manifest directory for both nodes: each runs the static pod as `<name>-<node>`.
    let manifests = tempfile::tempdir()?;
    std::fs::write(
        manifests.path().join("static-web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static-web}\nspec:\n  containers:\n  - name: web\n    image: skiff.test/busybox:1\n    command: [\"sh\", \"-c\", \"echo static; exec sleep 3600\"]\n",
    )?;
    let mut c = Cluster::start(ClusterOptions {
        nodes: 2,
        agent_args: vec![
            "--crashloop-backoff-initial".into(),
            "1".into(),
            "--crashloop-backoff-max".into(),
            "4".into(),
            "--manifest-dir".into(),
            manifests.path().display().to_string(),
        ],
        ..Default::default()
    })?;
    let nodes = c.nodes();
    let (n1, n2) = (nodes[0].clone(), nodes[1].clone());

    // --- Pods on both nodes reach each other by pod IP (no NAT between nodes).
    c.apply(&web_pod("web-1", &n1))?;
    c.apply(&web_pod("web-2", &n2))?;
    wait_running(&c, "web-1")?;
    wait_running(&c, "web-2")?;
    let ip1 = c.jsonpath("pod", "web-1", ".status.podIP")?;
    let ip2 = c.jsonpath("pod", "web-2", ".status.podIP")?;
    assert_ne!(ip1, ip2);
    let wide = c.kubectl(&["get", "pods", "-o", "wide"])?;
    assert!(wide.contains(&n1) && wide.contains(&n2), "{wide}");
    c.apply(&client_pod("client-1", &n1, &format!("http://{ip2}:8080/")))?;
    c.apply(&client_pod("client-2", &n2, &format!("http://{ip1}:8080/")))?;
    for (client, want) in [("client-1", "got=web-2"), ("client-2", "got=web-1")] {
        wait_for(
            &format!("{client} to fetch {want}"),
            Duration::from_secs(60),
            || Ok(c.kubectl(&["logs", client])?.contains(want).then_some(())),
        )?;
    }
    // `kubectl logs` shows the container's output.
    let logs = c.kubectl(&["logs", "web-1"])?;
    assert!(logs.contains("serving web-1"), "{logs}");
    // `logs -f` streams through the API server's proxy: new lines arrive while it runs.
    {
        use std::io::BufRead;
        let mut follow = c
            .kubectl_command()?
            .args(["logs", "-f", "--tail", "1", "client-1"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(follow.stdout.take().context("stdout")?).lines();
        let mut seen = 0;
        while seen < 3 {
            match lines.next() {
                Some(Ok(l)) if l.contains("got=web-2") => seen += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = follow.kill();
        let _ = follow.wait();
        assert_eq!(seen, 3, "logs -f stopped streaming");
    }

    // --- Static pods run on both nodes and appear as mirror pods.
    for node in [&n1, &n2] {
        let name = format!("static-web-{node}");
        wait_running(&c, &name)?;
        let mirror = c.jsonpath(
            "pod",
            &name,
            r#".metadata.annotations.kubernetes\.io/config\.mirror"#,
        )?;
        assert!(!mirror.is_empty(), "{name} is not a mirror pod");
        assert!(c.kubectl(&["logs", &name])?.contains("static"));
    }

    // --- A container exiting 1 restarts with back-off and a growing restartCount;
    // `logs --previous` shows the last instance.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: crash
    image: skiff.test/busybox:1
    command: ["sh", "-c", "echo attempt; exit 1"]
"#,
    )?;
    let mut saw_backoff = false;
    wait_for("crasher restartCount >= 3", Duration::from_secs(60), || {
        let reason = c.jsonpath(
            "pod",
            "crasher",
            ".status.containerStatuses[0].state.waiting.reason",
        )?;
        saw_backoff |= reason == "CrashLoopBackOff";
        let n: u32 = c
            .jsonpath(
                "pod",
                "crasher",
                ".status.containerStatuses[0].restartCount",
            )?
            .parse()?;
        Ok((n >= 3).then_some(()))
    })?;
    assert!(saw_backoff, "never saw CrashLoopBackOff");
    assert_eq!(
        c.jsonpath(
            "pod",
            "crasher",
            ".status.containerStatuses[0].lastState.terminated.exitCode"
        )?,
        "1"
    );
    assert!(
        c.kubectl(&["logs", "crasher", "--previous"])?
            .contains("attempt")
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crasher",
    ])?;
    assert!(events.contains("BackOff"), "{events}");

    // --- A failing liveness probe restarts the container (SIGTERM, grace, SIGKILL → 137):
    // this one ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: liveness}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "trap '' TERM; touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    )?;
    wait_for("liveness restart", Duration::from_secs(60), || {
        let n: u32 = c
            .jsonpath(
                "pod",
                "liveness",
                ".status.containerStatuses[0].restartCount",
            )?
            .parse()?;
        Ok((n >= 1).then_some(()))
    })?;
    assert_eq!(
        c.jsonpath(
            "pod",
            "liveness",
            ".status.containerStatuses[0].lastState.terminated.exitCode"
        )?,
        "137"
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=liveness",
    ])?;
    assert!(events.contains("Liveness probe failed"), "{events}");

    // --- Readiness flips the Ready condition: not ready, ready, not ready again.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: readiness}
spec:
  containers:
  - name: app
    image: skiff.test/busybox:1
    command: ["sh", "-c", "sleep 3; touch /tmp/ready; sleep 6; rm /tmp/ready; sleep 3600"]
    resources:
      limits: {memory: 64Mi, cpu: 200m}
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
"#,
    )?;
    let ready = |c: &Cluster| {
        c.jsonpath(
            "pod",
            "readiness",
            r#".status.conditions[?(@.type=="Ready")].status"#,
        )
    };
    wait_running(&c, "readiness")?;
    assert_eq!(ready(&c)?, "False");
    wait_for("Ready=True", Duration::from_secs(30), || {
        Ok((ready(&c)? == "True").then_some(()))
    })?;
    wait_for("Ready=False again", Duration::from_secs(30), || {
        Ok((ready(&c)? == "False").then_some(()))
    })?;

    // --- A missing image is a waiting reason, not a crash.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers:
  - name: app
    image: skiff.test/does-not-exist:1
"#,
    )?;
    wait_for("ErrImageNeverPull", Duration::from_secs(30), || {
        let r = c.jsonpath(
            "pod",
            "noimage",
            ".status.containerStatuses[0].state.waiting.reason",
        )?;
        Ok((r == "ErrImageNeverPull").then_some(()))
    })?;

    // --- Agent kill -9 and restart leaves running pods untouched (same pids, no restart).
    let uid1 = pod_uid(&c, "web-1")?;
    let before = pod_pids(&c, &n1, &uid1)?;
    assert!(
        before.len() >= 2,
        "pause and httpd expected in the pod cgroup: {before:?}"
    );
    c.kill_agent(&n1);
    std::thread::sleep(Duration::from_secs(1));
    c.start_agent(&n1)?;
    wait_for(
        "the restarted agent to adopt web-1",
        Duration::from_secs(30),
        || {
            Ok(c.agent_log(&n1)
                .contains("adopting a running pod")
                .then_some(()))
        },
    )?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pod_pids(&c, &n1, &uid1)?, before);
    assert_eq!(
        c.jsonpath("pod", "web-1", ".status.containerStatuses[0].restartCount")?,
        "0"
    );
    assert_eq!(c.jsonpath("pod", "web-1", ".status.phase")?, "Running");
    wait_for(
        "client-2 still reaching web-1",
        Duration::from_secs(20),
        || {
            let l = c.kubectl(&["logs", "client-2", "--tail", "2"])?;
            Ok(l.contains("got=web-1").then_some(()))
        },
    )?;

    // --- Deleting a pod removes all of its kernel state before the API object goes.
    let node_root = c.node(&n1).root_dir.clone();
    let cgroup = c
        .node(&n1)
        .cgroup
        .join("kubepods")
        .join(format!("pod{uid1}"));
    let veth = format!(
        "skv{}",
        uid1.chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(11)
            .collect::<String>()
    );
    assert!(c.exec_ok(&n1, &["ip", "-o", "link"])?.contains(&veth));
    let bridge_mac = || -> Result<String> {
        // `ip`, not /sys/class/net: the host's sysfs shows the host's namespace.
        let link = c.exec_ok(&n1, &["ip", "-o", "link", "show", "skiff0"])?;
        let mac = link.split("link/ether ").nth(1).unwrap_or_default();
        Ok(mac
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    };
    let mac_before = bridge_mac()?;
    c.kubectl(&["delete", "pod", "web-1", "--wait=true"])?;
    // The gateway's MAC is fixed (02:5c + the gateway address), not the lowest of its ports:
    // pods that cached it keep reaching other nodes when a pod's veth goes.
    let gateway = c.jsonpath("node", &n1, ".spec.podCIDR")?;
    let octets: Vec<u8> = gateway
        .split('/')
        .next()
        .unwrap_or_default()
        .split('.')
        .filter_map(|o| o.parse().ok())
        .collect();
    assert_eq!(octets.len(), 4, "podCIDR {gateway}");
    let want = format!(
        "02:5c:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0],
        octets[1],
        octets[2],
        octets[3] + 1
    );
    assert_eq!(mac_before, want, "skiff0's MAC before the deletion");
    assert_eq!(
        bridge_mac()?,
        want,
        "skiff0's MAC changed with a pod's veth"
    );
    let links = c.exec_ok(&n1, &["ip", "-o", "link"])?;
    assert!(!links.contains(&veth), "veth {veth} left behind:\n{links}");
    let addrs = c.exec_ok(&n1, &["ip", "-o", "addr"])?;
    assert!(!addrs.contains(&format!(" {ip1}/")), "{addrs}");
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(&uid1), "mounts of the pod left behind");
    assert!(!node_root.join("netns").join(&uid1).exists());
    assert!(!node_root.join("pods").join(&uid1).exists());
    let ipam = std::fs::read_dir(node_root.join("ipam"))?
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .any(|f| f.file_name().to_string_lossy() == ip1);
    assert!(!ipam, "address {ip1} still allocated");
    for pid in &before {
        // A zombie has ended; whoever inherited it (pid 1 after the agent restart) reaps it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().chars().next())
            })
            .flatten();
        assert!(matches!(state, None | Some('Z')), "process {pid} survived");
    }
    Ok(())
}
