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

/// Selector-less Service `name` with one EndpointSlice of one endpoint.
fn manual_service(name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-manual
  labels: {{kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: skiff-test}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"], conditions: {{ready: true}}}}]
"#
    )
}

/// (count, message) of every BPFMapFull event on Node `node`.
fn map_full_events(c: &Cluster, node: &str) -> Result<Vec<(i64, String)>> {
    let out = c.kubectl(&["get", "events", "-A", "-o", "json"])?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["reason"] == "BPFMapFull"
                && e["type"] == "Warning"
                && e["involvedObject"]["kind"] == "Node"
                && e["involvedObject"]["name"] == node
        })
        .map(|e| {
            (
                e["count"].as_i64().unwrap_or(1),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// A BPF map too small for the services is reported as one Warning Event on the Node naming
/// the map, its capacity and the flag to raise; not again on every retry, but again once it had
/// room and filled up again.
#[test]
fn ebpf_full_map_event() -> Result<()> {
    if skip_unless_root("ebpf_full_map_event") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        proxy_mode: "ebpf".into(),
        agent_args: vec!["--bpf-lb-frontends".into(), "4".into()],
        ..Default::default()
    })?;
    let node = c.nodes()[0].clone();
    let agent = skiff_tests::cluster::agent_binary_path();
    let agent = agent.to_str().context("agent path")?;
    let bpffs = c.node(&node).bpffs.display().to_string();
    let programmed = || -> Result<BTreeSet<String>> {
        let out = c.exec_ok(
            &node,
            &[agent, "bpf", "--bpffs", &bpffs, "lb", "list", "-o", "json"],
        )?;
        let fes: serde_json::Value = serde_json::from_str(&out)?;
        Ok(fes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["service"].as_str())
            .filter_map(|s| s.strip_prefix("default/")?.strip_suffix(":http"))
            .filter(|s| s.starts_with("full-"))
            .map(String::from)
            .collect())
    };
    // `kubernetes` takes one of the 4 frontends; 6 more do not fit.
    for i in 0..6 {
        c.apply(&manual_service(
            &format!("full-{i}"),
            &format!("10.250.0.{}", i + 1),
        ))?;
    }
    let events = wait_for("a BPFMapFull event", Duration::from_secs(60), || {
        let e = map_full_events(&c, &node)?;
        Ok((!e.is_empty()).then_some(e))
    })?;
    let (_, message) = &events[0];
    ensure!(
        message.contains("is full (4 entries)") && message.contains("raise --bpf-lb-frontends"),
        "{message}"
    );
    wait_for(
        "3 of the 6 services programmed",
        Duration::from_secs(30),
        || Ok((programmed()?.len() == 3).then_some(())),
    )?;
    // The agent retries with back-off (0.1 s, 0.2 s, …): several retries, no new event.
    std::thread::sleep(Duration::from_secs(4));
    let total: i64 = map_full_events(&c, &node)?.iter().map(|e| e.0).sum();
    ensure!(
        total == 1,
        "reported {total} times while the map stayed full"
    );

    // Room again: every remaining service is programmed; then full again: reported again.
    for i in 3..6 {
        c.kubectl(&["delete", "service", &format!("full-{i}")])?;
        c.kubectl(&["delete", "endpointslice", &format!("full-{i}-manual")])?;
    }
    wait_for(
        "the 3 remaining services programmed",
        Duration::from_secs(30),
        || Ok((programmed()? == set(&["full-0", "full-1", "full-2"])).then_some(())),
    )?;
    // A change wakes the proxy at once, whatever its back-off: give it time for the sync
    // after the last deletion (the one that has room for everything).
    std::thread::sleep(Duration::from_secs(3));
    c.apply(&manual_service("full-6", "10.250.0.7"))?;
    c.apply(&manual_service("full-7", "10.250.0.8"))?;
    wait_for(
        "a second BPFMapFull report",
        Duration::from_secs(60),
        || {
            let total: i64 = map_full_events(&c, &node)?.iter().map(|e| e.0).sum();
            Ok((total == 2).then_some(()))
        },
    )?;
    Ok(())
}
