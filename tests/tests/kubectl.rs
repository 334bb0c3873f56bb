//! kubectl end to end: every kubectl on the machine (1.27–1.33 where present, and Debian's
//! 1.20) runs the same user session against a real `skiff-control`, and the session on etcd
//! is checked with `etcdctl` as the seeds do.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::{ControlPlane, Etcd, Kubectl, StoreBackend};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: main
        image: kubia:v1
        ports:
        - containerPort: 8080
"#;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-pod
  labels: {app: lone}
spec:
  containers:
  - name: main
    image: kubia:v1
"#;

fn event_for(pod_uid: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Event
metadata:
  name: web-pod.test
involvedObject:
  apiVersion: v1
  kind: Pod
  name: web-pod
  namespace: e2e
  uid: {pod_uid}
reason: Testing
message: an event from the e2e test
type: Normal
source:
  component: e2e
count: 1
firstTimestamp: "2026-01-01T00:00:00Z"
lastTimestamp: "2026-01-01T00:00:00Z"
"#
    )
}

/// Lines a background `kubectl get -w` prints, as they arrive.
struct Watcher {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    fn start(k: &Kubectl, cp: &ControlPlane, args: &[&str]) -> Result<Watcher> {
        let mut child = k
            .command(cp)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("watch stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Watcher {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Wait until a line satisfying `pred` arrives.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return Ok(l.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!("watch never printed {what}; it printed {:?}", self.seen),
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user session every kubectl version goes through.
fn session(k: &Kubectl, cp: &ControlPlane) -> Result<()> {
    let validate: &[&str] = if k.validates_with_openapi_v3() {
        &[]
    } else {
        &["--validate=false"]
    };
    let with = |base: &[&'static str]| -> Vec<&str> {
        base.iter()
            .copied()
            .chain(validate.iter().copied())
            .collect()
    };

    let version = k.run(cp, &["version", "-o", "json"])?;
    ensure!(
        version.contains("\"minor\": \"33\""),
        "server version: {version}"
    );

    let resources = k.run(cp, &["api-resources"])?;
    for want in [
        "deployments",
        "deploy",
        "endpointslices",
        "leases",
        "namespaces",
    ] {
        ensure!(
            resources.contains(want),
            "api-resources lacks {want}:\n{resources}"
        );
    }

    k.run_stdin(
        cp,
        &with(&["create", "-f", "-"]),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: e2e\n",
    )?;
    let ns = k.run(cp, &["get", "namespaces"])?;
    for want in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "e2e",
        "Active",
    ] {
        ensure!(ns.contains(want), "get namespaces lacks {want}:\n{ns}");
    }

    // Typed generators (protobuf bodies from kubectl 1.32+).
    k.run(
        cp,
        &[
            "create",
            "deployment",
            "gen",
            "-n",
            "e2e",
            "--image=kubia:v1",
            "--replicas=3",
        ],
    )?;
    let generated = k.run(
        cp,
        &[
            "get",
            "deploy",
            "gen",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
        ],
    )?;
    ensure!(
        generated.trim() == "3 kubia:v1",
        "create deployment: {generated}"
    );
    k.run(
        cp,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "e2e",
            "--from-literal=k=v",
        ],
    )?;
    let data = k.run(
        cp,
        &[
            "get",
            "secret",
            "s1",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.data.k}",
        ],
    )?;
    ensure!(data.trim() == "dg==", "secret data: {data}");
    k.run(cp, &["delete", "deployment", "gen", "-n", "e2e"])?;

    // create -f, get, get -o wide, get -o yaml
    let created = k.run_stdin(cp, &with(&["create", "-n", "e2e", "-f", "-"]), DEPLOYMENT)?;
    ensure!(created.contains("deployment.apps/web created"), "{created}");
    k.run_stdin(cp, &with(&["create", "-n", "e2e", "-f", "-"]), POD)?;
    let err = k
        .run_stdin(cp, &with(&["create", "-n", "e2e", "-f", "-"]), POD)
        .unwrap_err();
    ensure!(
        format!("{err}").contains("AlreadyExists") || format!("{err}").contains("already exists"),
        "{err}"
    );
    let pods = k.run(cp, &["get", "pods", "-n", "e2e", "-o", "wide"])?;
    let header = pods.lines().next().unwrap_or("");
    for col in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"] {
        ensure!(
            header.contains(col),
            "get pods -o wide header lacks {col}:\n{pods}"
        );
    }
    ensure!(
        pods.contains("web-pod") && pods.contains("Pending"),
        "{pods}"
    );
    let deploys = k.run(cp, &["get", "deploy", "-n", "e2e"])?;
    ensure!(
        deploys.contains("UP-TO-DATE") && deploys.contains("web"),
        "{deploys}"
    );
    let yaml = k.run(cp, &["get", "deployment", "web", "-n", "e2e", "-o", "yaml"])?;
    for want in [
        "name: web",
        "replicas: 2",
        "resourceVersion:",
        "uid:",
        "strategy:",
        "RollingUpdate",
    ] {
        ensure!(yaml.contains(want), "get -o yaml lacks {want}:\n{yaml}");
    }

    // get -w sees ADDED, MODIFIED and DELETED.
    let mut watch = Watcher::start(
        k,
        cp,
        &[
            "get",
            "configmaps",
            "-n",
            "e2e",
            "-w",
            "--output-watch-events",
        ],
    )?;
    // The watch starts with a list; give it a moment to be established before writing.
    std::thread::sleep(Duration::from_millis(700));
    k.run(
        cp,
        &[
            "create",
            "configmap",
            "watched",
            "-n",
            "e2e",
            "--from-literal=a=1",
        ],
    )?;
    watch.wait_for("ADDED", |l| l.contains("ADDED") && l.contains("watched"))?;
    k.run(
        cp,
        &["label", "configmap", "watched", "-n", "e2e", "seen=yes"],
    )?;
    watch.wait_for("MODIFIED", |l| {
        l.contains("MODIFIED") && l.contains("watched")
    })?;
    k.run(cp, &["delete", "configmap", "watched", "-n", "e2e"])?;
    watch.wait_for("DELETED", |l| {
        l.contains("DELETED") && l.contains("watched")
    })?;
    drop(watch);

    // apply twice with a change, then once more without one.
    let applied = k.run_stdin(
        cp,
        &with(&["apply", "-n", "e2e", "-f", "-"]),
        &DEPLOYMENT.replace("name: web", "name: applied"),
    )?;
    ensure!(applied.contains("created"), "{applied}");
    let changed = DEPLOYMENT
        .replace("name: web", "name: applied")
        .replace("kubia:v1", "kubia:v2");
    let applied = k.run_stdin(cp, &with(&["apply", "-n", "e2e", "-f", "-"]), &changed)?;
    ensure!(applied.contains("configured"), "{applied}");
    let image = k.run(
        cp,
        &[
            "get",
            "deploy",
            "applied",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )?;
    ensure!(image.trim() == "kubia:v2", "image after apply: {image}");
    let ports = k.run(
        cp,
        &[
            "get",
            "deploy",
            "applied",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].ports[0].containerPort}",
        ],
    )?;
    ensure!(
        ports.trim() == "8080",
        "apply lost the container port: {ports}"
    );
    let again = k.run_stdin(cp, &with(&["apply", "-n", "e2e", "-f", "-"]), &changed)?;
    ensure!(again.contains("unchanged"), "{again}");

    // scale, expose
    k.run(
        cp,
        &["scale", "deployment", "web", "-n", "e2e", "--replicas=3"],
    )?;
    let replicas = k.run(
        cp,
        &[
            "get",
            "deploy",
            "web",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
    )?;
    ensure!(replicas.trim() == "3", "replicas after scale: {replicas}");
    k.run(
        cp,
        &[
            "expose",
            "deployment",
            "web",
            "-n",
            "e2e",
            "--port=80",
            "--target-port=8080",
        ],
    )?;
    let svc = k.run(cp, &["get", "svc", "web", "-n", "e2e", "-o", "wide"])?;
    ensure!(
        svc.contains("ClusterIP") && svc.contains("80/TCP") && svc.contains("app=web"),
        "{svc}"
    );
    let ip = k.run(
        cp,
        &[
            "get",
            "svc",
            "web",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    let ip: std::net::Ipv4Addr = ip
        .trim()
        .parse()
        .with_context(|| format!("clusterIP {ip:?}"))?;
    ensure!(
        ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]),
        "clusterIP {ip} outside 10.96.0.0/12"
    );

    // events: get events, and describe shows the pod's events (field-selected).
    let uid = k.run(
        cp,
        &[
            "get",
            "pod",
            "web-pod",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    )?;
    k.run_stdin(
        cp,
        &with(&["create", "-n", "e2e", "-f", "-"]),
        &event_for(uid.trim()),
    )?;
    let events = k.run(cp, &["get", "events", "-n", "e2e"])?;
    ensure!(
        events.contains("Testing") && events.contains("pod/web-pod"),
        "{events}"
    );
    let describe = k.run(cp, &["describe", "pod", "web-pod", "-n", "e2e"])?;
    ensure!(
        describe.contains("Name:") && describe.contains("web-pod"),
        "{describe}"
    );
    ensure!(
        describe.contains("Testing") && describe.contains("an event from the e2e test"),
        "describe shows no events:\n{describe}"
    );

    // delete (and kubectl waits until the object is gone)
    k.run(cp, &["delete", "pod", "web-pod", "-n", "e2e"])?;
    let err = k
        .run(cp, &["get", "pod", "web-pod", "-n", "e2e"])
        .unwrap_err();
    ensure!(
        format!("{err}").contains("NotFound") || format!("{err}").contains("not found"),
        "{err}"
    );
    k.run(cp, &["delete", "deployment", "web", "applied", "-n", "e2e"])?;
    k.run(cp, &["delete", "service", "web", "-n", "e2e"])?;
    let left = k.run(cp, &["get", "deploy,svc", "-n", "e2e", "-o", "name"])?;
    ensure!(left.trim().is_empty(), "left after delete: {left}");
    Ok(())
}

#[test]
fn every_kubectl_version_runs_the_session() {
    let versions = Kubectl::all().expect("finding kubectl binaries");
    // One control plane per version, all in parallel (each session takes a few seconds).
    let handles: Vec<_> = versions
        .into_iter()
        .map(|k| {
            std::thread::spawn(move || {
                let cp = ControlPlane::start(StoreBackend::Embedded)?;
                session(&k, &cp).map_err(|e| {
                    anyhow::anyhow!(
                        "kubectl 1.{}: {e:#}\nserver log:\n{}",
                        k.minor,
                        tail(&cp.log())
                    )
                })
            })
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|h| match h.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("a session thread panicked".into()),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn etcd_backed_control_plane_lays_out_keys_like_kubernetes() {
    let etcd = Etcd::start().expect("starting etcd");
    let mut cp =
        ControlPlane::start(StoreBackend::Etcd(&etcd)).expect("starting skiff-control on etcd");
    let k = Kubectl::newest().unwrap();
    session(&k, &cp).unwrap_or_else(|e| panic!("{e:#}\nserver log:\n{}", tail(&cp.log())));
    k.run_stdin(&cp, &["create", "-n", "default", "-f", "-"], POD)
        .unwrap();
    let out = etcd
        .etcdctl()
        .args(["get", "--prefix", "--keys-only", "/registry/pods/"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "etcdctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        keys.lines().any(|l| l == "/registry/pods/default/web-pod"),
        "etcdctl keys: {keys}"
    );
    // The value is the pod as JSON.
    let out = etcd
        .etcdctl()
        .args([
            "get",
            "--print-value-only",
            "/registry/pods/default/web-pod",
        ])
        .output()
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pod stored as JSON");
    assert_eq!(value["metadata"]["name"], "web-pod");

    // A crash of the control plane loses nothing: a new one on the same etcd sees the pod.
    cp.kill();
    let cp2 = ControlPlane::start(StoreBackend::Etcd(&etcd)).unwrap();
    let pods = k.run(&cp2, &["get", "pods", "-n", "default"]).unwrap();
    assert!(pods.contains("web-pod"), "{pods}");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
