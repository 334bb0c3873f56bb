//! Service conformance: the same cases on a 3-node cluster, once per proxy mode. Every case
//! asserts which backend answered (its hostname, or its pod IP for DNS), never merely that a
//! connection opened.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::wait_for;

/// A backend pod on `node`: HTTP on 8080 (its hostname at `/`, the client's address at
/// `/cgi-bin/ip`) and a second HTTP port 8081 (`alt-<hostname>`). (Debian's busybox has no
/// UDP server applet, so the UDP cases are not in this suite yet.)
fn backend(name: &str, node: &str, labels: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: skiff.test/busybox:1
    ports: [{{name: web, containerPort: 8080}}, {{name: alt, containerPort: 8081}}]
    command: ["sh", "-c", "mkdir -p /www/cgi-bin /alt; hostname > /www/index.html; echo alt-$(hostname) > /alt/index.html; printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip; chmod +x /www/cgi-bin/ip; httpd -p 8081 -h /alt; exec httpd -f -p 8080 -h /www"]
{extra}"#
    )
}

/// Run `cmd` inside the running container `container` of `pod` (its namespaces and cgroup,
/// so the service dataplane treats it as the pod), via `skiff-agent exec-in`.
fn pod_exec_command(c: &Cluster, pod: &str, cmd: &[&str]) -> Result<std::process::Command> {
    let node = c.jsonpath("pod", pod, ".spec.nodeName")?;
    let uid = c.jsonpath("pod", pod, ".metadata.uid")?;
    let container = c.jsonpath("pod", pod, ".spec.containers[0].name")?;
    let dir = c
        .node(&node)
        .root_dir
        .join("pods")
        .join(&uid)
        .join("containers")
        .join(&container);
    let n = std::fs::read_dir(&dir)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .max()
        .context("no container instance")?;
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(n.to_string()).join("state.json"))?)?;
    let pid = state["pid"].as_i64().context("pid")?.to_string();
    let agent = skiff_tests::cluster::agent_binary_path();
    let mut argv = vec![
        agent.to_str().context("agent path")?,
        "exec-in",
        "--pid",
        &pid,
        "--",
    ];
    argv.extend_from_slice(cmd);
    c.command(&node, &argv)
}

fn pod_exec(c: &Cluster, pod: &str, cmd: &[&str]) -> Result<std::process::Output> {
    Ok(pod_exec_command(c, pod, cmd)?
        .stdin(std::process::Stdio::null())
        .output()?)
}

fn fetch(c: &Cluster, from_pod: &str, url: &str) -> Result<String> {
    let out = pod_exec(c, from_pod, &["timeout", "3", "wget", "-q", "-O", "-", url])?;
    ensure!(
        out.status.success(),
        "wget {url} from {from_pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Hostnames seen over `n` requests.
fn seen(c: &Cluster, from_pod: &str, url: &str, n: usize) -> Result<BTreeSet<String>> {
    let script = format!("for i in $(seq {n}); do timeout 3 wget -q -O - {url} || echo FAIL; done");
    let out = pod_exec(c, from_pod, &["sh", "-c", &script])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        !text.contains("FAIL"),
        "some requests to {url} failed:\n{text}"
    );
    Ok(text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn conformance(mode: &str) -> Result<()> {
    let mut c = Cluster::start(ClusterOptions {
        nodes: 3,
        proxy_mode: mode.into(),
        ..Default::default()
    })?;
    let nodes = c.nodes();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    for (i, node) in nodes.iter().enumerate() {
        c.apply(&backend(&format!("be-{}", i + 1), node, "app: echo", ""))?;
    }
    c.apply(&backend("client", n1, "role: client", ""))?;
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: alt, port: 81, targetPort: alt}
"#,
    )?;
    for p in ["be-1", "be-2", "be-3", "client"] {
        wait_for(&format!("{p} Running"), Duration::from_secs(60), || {
            Ok((c.jsonpath("pod", p, ".status.phase")? == "Running").then_some(()))
        })?;
    }
    let vip = c.jsonpath("svc", "echo", ".spec.clusterIP")?;
    let all = set(&["be-1", "be-2", "be-3"]);

    // ClusterIP TCP reaches every backend (pod → service → backends on all nodes).
    wait_for(
        "all backends through the ClusterIP",
        Duration::from_secs(30),
        || {
            let got = seen(&c, "client", &format!("http://{vip}/"), 60)?;
            if got == all {
                return Ok(Some(()));
            }
            bail!("saw {got:?}")
        },
    )?;
    // `skiff-agent bpf lb list` reads the pinned maps: the service with its three backends.
    if mode == "ebpf" {
        let bpffs = c.node(n1).bpffs.display().to_string();
        let agent = skiff_tests::cluster::agent_binary_path();
        let agent = agent.to_str().context("agent path")?;
        let out = c.exec_ok(
            n1,
            &[agent, "bpf", "--bpffs", &bpffs, "lb", "list", "-o", "json"],
        )?;
        let fes: serde_json::Value = serde_json::from_str(&out)?;
        let echo = fes
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["service"] == "default/echo:http" && f["ip"] == vip.as_str())
            .with_context(|| format!("default/echo:http at {vip} not in bpf lb list:\n{out}"))?;
        let slots = echo["slots"].as_array().map(|s| s.len()).unwrap_or(0);
        ensure!(slots == 3, "echo has {slots} slots, not 3:\n{out}");
        let maps = c.exec_ok(n1, &[agent, "bpf", "--bpffs", &bpffs, "maps"])?;
        ensure!(maps.contains("skiff_frontends"), "{maps}");
    }
    // Multi-port service with named target ports.
    let alt = seen(&c, "client", &format!("http://{vip}:81/"), 30)?;
    ensure!(alt.iter().all(|h| h.starts_with("alt-be-")), "{alt:?}");
    // Host (node namespace) → service.
    let host = c.exec_ok(n2, &["wget", "-q", "-O", "-", &format!("http://{vip}/")])?;
    ensure!(all.contains(host.trim()), "host got {host:?}");

    // A service whose only backend is on another node; and NodePort via every node from the
    // underlay (the host), including nodes without a local backend.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: remote}
spec:
  type: NodePort
  selector: {app: echo, statefulset.kubernetes.io/pod-name: be-3}
  ports: [{port: 80, targetPort: 8080}]
"#,
    )?;
    c.kubectl(&[
        "label",
        "pod",
        "be-3",
        "statefulset.kubernetes.io/pod-name=be-3",
    ])?;
    let remote_vip = c.jsonpath("svc", "remote", ".spec.clusterIP")?;
    let node_port = c.jsonpath("svc", "remote", ".spec.ports[0].nodePort")?;
    wait_for(
        "remote backend via ClusterIP",
        Duration::from_secs(20),
        || Ok((fetch(&c, "client", &format!("http://{remote_vip}/"))? == "be-3").then_some(())),
    )?;
    for node in &nodes {
        let url = format!("http://{}:{node_port}/", c.node_ip(node));
        let got = wait_for(
            &format!("NodePort via {node}"),
            Duration::from_secs(20),
            || {
                let out = std::process::Command::new("timeout")
                    .args(["3", "busybox", "wget", "-q", "-O", "-", &url])
                    .output()?;
                Ok(out
                    .status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
            },
        )?;
        ensure!(got == "be-3", "NodePort via {node} answered {got:?}");
    }

    // ClientIP session affinity keeps one backend.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: echo}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80, targetPort: 8080}]
"#,
    )?;
    let sticky = c.jsonpath("svc", "sticky", ".spec.clusterIP")?;
    std::thread::sleep(Duration::from_secs(1));
    let got = seen(&c, "client", &format!("http://{sticky}/"), 20)?;
    ensure!(got.len() == 1, "affinity broke: {got:?}");

    // externalTrafficPolicy: Local keeps the client's address (the backend echoes it).
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
"#,
    )?;
    let local_port = c.jsonpath("svc", "local", ".spec.ports[0].nodePort")?;
    let url = format!("http://{}:{local_port}/cgi-bin/ip", c.node_ip(n1));
    let client_ip = wait_for("Local NodePort", Duration::from_secs(20), || {
        let out = std::process::Command::new("timeout")
            .args(["3", "busybox", "wget", "-q", "-O", "-", &url])
            .output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
    })?;
    // busybox httpd reports IPv4 peers in IPv6-mapped form.
    let client_ip = client_ip
        .trim_start_matches("[::ffff:")
        .trim_end_matches(']')
        .to_string();
    ensure!(
        client_ip == c.host_ip(),
        "the backend saw {client_ip}, not the client {}",
        c.host_ip()
    );

    // No endpoints → refused at once.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
"#,
    )?;
    let empty = c.jsonpath("svc", "empty", ".spec.clusterIP")?;
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let out = pod_exec(
        &c,
        "client",
        &[
            "timeout",
            "3",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{empty}/"),
        ],
    )?;
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        !out.status.success(),
        "a service without endpoints answered"
    );
    if mode == "ebpf" {
        // connect4 fails the connect() itself with ECONNREFUSED.
        ensure!(err.contains("refused"), "not refused: {err}");
        ensure!(took < Duration::from_secs(2), "refusal took {took:?}");
    } else {
        // Known gap (issue #5): the REJECT rule matches, but the client in these node
        // namespaces does not get the ICMP error and times out instead of being refused.
        eprintln!("[{mode}] no-endpoints service: client failed after {took:?}: {err}");
    }

    // Hairpin: a backend reaches itself through its own service.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: self}
spec:
  selector: {statefulset.kubernetes.io/pod-name: be-3}
  ports: [{port: 80, targetPort: 8080}]
"#,
    )?;
    let self_vip = c.jsonpath("svc", "self", ".spec.clusterIP")?;
    wait_for("hairpin", Duration::from_secs(20), || {
        Ok((fetch(&c, "be-3", &format!("http://{self_vip}/"))? == "be-3").then_some(()))
    })?;

    // A failing readiness probe takes the backend out.
    c.apply(&backend(
            "be-ready",
            n3,
            "app: echo",
            "    readinessProbe:\n      exec: {command: [\"cat\", \"/tmp/ready\"]}\n      periodSeconds: 1\n      failureThreshold: 1\n",
        ),
    )?;
    wait_for("be-ready Running", Duration::from_secs(60), || {
        Ok((c.jsonpath("pod", "be-ready", ".status.phase")? == "Running").then_some(()))
    })?;
    let ready = |c: &Cluster| {
        c.jsonpath(
            "pod",
            "be-ready",
            r#".status.conditions[?(@.type=="Ready")].status"#,
        )
    };
    wait_for("be-ready Ready", Duration::from_secs(30), || {
        let out = pod_exec(&c, "be-ready", &["touch", "/tmp/ready"])?;
        ensure!(
            out.status.success(),
            "touch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((ready(&c)? == "True").then_some(()))
    })?;
    wait_for("be-ready serving", Duration::from_secs(30), || {
        let got = seen(&c, "client", &format!("http://{vip}/"), 30)?;
        if got.contains("be-ready") {
            return Ok(Some(()));
        }
        bail!("saw {got:?}")
    })?;
    pod_exec(&c, "be-ready", &["rm", "/tmp/ready"])?;
    let gone = Instant::now();
    wait_for("be-ready out of rotation", Duration::from_secs(20), || {
        Ok(
            (!seen(&c, "client", &format!("http://{vip}/"), 30)?.contains("be-ready"))
                .then_some(()),
        )
    })?;
    eprintln!(
        "[{mode}] unready backend out of rotation after {:?}",
        gone.elapsed()
    );

    // eBPF: an agent restart under continuous requests loses none (maps stay pinned and are
    // reconciled in place, not flushed).
    if mode == "ebpf" {
        let url = format!("http://{vip}/");
        let script = format!(
            "for i in $(seq 150); do timeout 3 wget -q -O - {url} >/dev/null && echo ok || echo FAIL; sleep 0.05; done"
        );
        let load = pod_exec_command(&c, "client", &["sh", "-c", &script])?
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(1));
        c.kill_agent(n1);
        std::thread::sleep(Duration::from_secs(1));
        c.start_agent(n1)?;
        let out = load.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            !text.contains("FAIL"),
            "requests failed across the agent restart:\n{text}"
        );
        ensure!(text.matches("ok").count() == 150, "{text}");
        let log = c.agent_log(n1);
        ensure!(
            log.matches("service proxy started").count() >= 2,
            "the agent did not come back"
        );
    }
    let _ = (n2, n3);
    Ok(())
}

#[test]
fn services_ebpf() -> Result<()> {
    if skip_unless_root("services_ebpf") {
        return Ok(());
    }
    conformance("ebpf")
}

#[test]
fn services_iptables() -> Result<()> {
    if skip_unless_root("services_iptables") {
        return Ok(());
    }
    conformance("iptables")
}
