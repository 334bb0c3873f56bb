//! ConfigMaps, Secrets and the Downward API inside a pod, on a one-node cluster with the real
//! kubectl: the environment from `fieldRef`s, `resourceFieldRef`s (a missing limit is the
//! node's allocatable) and `envFrom` with a prefix; a configMap volume that follows `kubectl
//! apply` of a new value within the agent's `--sync-frequency` (a subPath mount of it stays
//! as it was, as in Kubernetes); a downwardAPI labels file that follows `kubectl label`; and a
//! missing required key that keeps the container in CreateContainerConfigError with the
//! kubelet's message, until the key appears.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::test_image::IMAGE;
use skiff_tests::wait_for;

const NS: &str = "config-volumes";
/// The agents' volume re-sync period in this test (kubelet's default is a minute).
const SYNC: Duration = Duration::from_secs(5);

fn config_map(greeting: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config, namespace: {NS}}}
data:
  greeting: {greeting}
  level: "3"
"#
    )
}

fn app_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: {NS}
  labels: {{app: demo, tier: front}}
  annotations: {{owner: ops}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    command: ["sleep", "3600"]
    resources:
      limits: {{cpu: 500m, memory: 64Mi}}
      requests: {{cpu: 250m, memory: 32Mi}}
    envFrom:
    - prefix: CFG_
      configMapRef: {{name: app-config}}
    - secretRef: {{name: app-secret}}
    - configMapRef: {{name: not-there, optional: true}}
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
    - {{name: POD_UID, valueFrom: {{fieldRef: {{fieldPath: metadata.uid}}}}}}
    - {{name: POD_TIER, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['tier']"}}}}}}
    - {{name: POD_OWNER, valueFrom: {{fieldRef: {{fieldPath: "metadata.annotations['owner']"}}}}}}
    - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
    - {{name: SA_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}}}
    - {{name: HOST_IP, valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}}}
    - {{name: HOST_IPS, valueFrom: {{fieldRef: {{fieldPath: status.hostIPs}}}}}}
    - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
    - {{name: POD_IPS, valueFrom: {{fieldRef: {{fieldPath: status.podIPs}}}}}}
    - {{name: MEM_LIMIT_MI, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}
    - {{name: CPU_LIMIT, valueFrom: {{resourceFieldRef: {{resource: limits.cpu}}}}}}
    - {{name: CPU_REQUEST_M, valueFrom: {{resourceFieldRef: {{resource: requests.cpu, divisor: 1m}}}}}}
    - {{name: DISK_LIMIT_MI, valueFrom: {{resourceFieldRef: {{resource: limits.ephemeral-storage, divisor: 1Mi}}}}}}
    - {{name: LEVEL_TWICE, value: "$(CFG_level)$(CFG_level)"}}
    volumeMounts:
    - {{name: config, mountPath: /config}}
    - {{name: config, mountPath: /pinned/greeting, subPath: greeting}}
    - {{name: info, mountPath: /info}}
  volumes:
  - name: config
    configMap: {{name: app-config}}
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: annotations, fieldRef: {{fieldPath: metadata.annotations}}}}
      - {{path: mem, resourceFieldRef: {{containerName: main, resource: limits.memory, divisor: 1Mi}}}}
"#
    )
}

fn missing_key_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: missing-key, namespace: {NS}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    command: ["sleep", "3600"]
    env:
    - name: COLOR
      valueFrom:
        configMapKeyRef: {{name: app-config, key: color}}
"#
    )
}

/// Run `script` with `sh -c` in the pod's container; its stdout.
fn sh(c: &Cluster, pod: &str, script: &str) -> Result<String> {
    let out = c
        .pod_command_in(NS, pod, &["sh", "-c", script])?
        .stdin(std::process::Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn get(c: &Cluster, pod: &str, path: &str) -> Result<String> {
    c.kubectl(&[
        "get",
        "pod",
        pod,
        "-n",
        NS,
        "-o",
        &format!("jsonpath={{{path}}}"),
    ])
}

/// Wait until `cat file` in the pod prints `want`; how long it took.
fn wait_file(c: &Cluster, pod: &str, file: &str, want: &str, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    wait_for(&format!("{file} to be {want:?}"), within, || {
        Ok((sh(c, pod, &format!("cat {file}"))? == want).then_some(()))
    })?;
    Ok(start.elapsed())
}

#[test]
fn config_maps_secrets_and_the_downward_api_in_pods() -> Result<()> {
    if skip_unless_root("config_maps_secrets_and_the_downward_api_in_pods") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        agent_args: vec!["--sync-frequency".into(), format!("{}s", SYNC.as_secs())],
        ..Default::default()
    })?;
    c.kubectl(&["create", "namespace", NS])?;
    c.apply(&config_map("hello"))?;
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "app-secret",
        "-n",
        NS,
        "--from-literal=DB_PASSWORD=s3cr3t",
    ])?;
    c.apply(&app_pod())?;
    wait_for("pod app running", Duration::from_secs(90), || {
        Ok((get(&c, "app", ".status.phase")? == "Running").then_some(()))
    })?;

    // The environment, as the kubelet makes it.
    let env: BTreeMap<String, String> = sh(&c, "app", "env")?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pod_ip = get(&c, "app", ".status.podIP")?;
    let host_ip = get(&c, "app", ".status.hostIP")?;
    let uid = get(&c, "app", ".metadata.uid")?;
    let node = get(&c, "app", ".spec.nodeName")?;
    ensure!(!pod_ip.is_empty() && !host_ip.is_empty(), "no addresses");
    // No ephemeral-storage limit: the node's allocatable, in MiB.
    let disk = c.kubectl(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.allocatable.ephemeral-storage}",
    ])?;
    ensure!(disk == "10Gi", "allocatable ephemeral-storage {disk}");
    let want = [
        ("CFG_greeting", "hello"),
        ("CFG_level", "3"),
        ("DB_PASSWORD", "s3cr3t"),
        ("POD_NAME", "app"),
        ("POD_NAMESPACE", NS),
        ("POD_UID", uid.as_str()),
        ("POD_TIER", "front"),
        ("POD_OWNER", "ops"),
        ("NODE_NAME", node.as_str()),
        ("SA_NAME", "default"),
        ("HOST_IP", host_ip.as_str()),
        ("HOST_IPS", host_ip.as_str()),
        ("POD_IP", pod_ip.as_str()),
        ("POD_IPS", pod_ip.as_str()),
        ("MEM_LIMIT_MI", "64"),
        ("CPU_LIMIT", "1"),
        ("CPU_REQUEST_M", "250"),
        ("DISK_LIMIT_MI", "10240"),
        ("LEVEL_TWICE", "33"),
    ];
    for (k, v) in want {
        ensure!(
            env.get(k).map(String::as_str) == Some(v),
            "{k}: want {v:?}, got {:?}",
            env.get(k)
        );
    }

    // The volumes: the ConfigMap's keys, the subPath file, the pod's metadata.
    ensure!(sh(&c, "app", "cat /config/greeting")? == "hello");
    ensure!(sh(&c, "app", "cat /pinned/greeting")? == "hello");
    ensure!(sh(&c, "app", "readlink /config/greeting")?.trim() == "..data/greeting");
    ensure!(sh(&c, "app", "cat /info/labels")? == "app=\"demo\"\ntier=\"front\"");
    ensure!(sh(&c, "app", "cat /info/annotations")?.contains("owner=\"ops\""));
    ensure!(sh(&c, "app", "cat /info/mem")? == "64");

    // kubectl apply of a new value: the file follows within the sync period (plus the
    // watch's delay), swapped atomically; the subPath mount keeps what it had.
    c.apply(&config_map("bonjour"))?;
    let took = wait_file(&c, "app", "/config/greeting", "bonjour", SYNC * 4)
        .context("the configMap volume did not follow kubectl apply")?;
    eprintln!("the configMap volume followed kubectl apply after {took:?}");
    ensure!(sh(&c, "app", "cat /pinned/greeting")? == "hello");
    // The environment is the container's own: it does not change.
    ensure!(sh(&c, "app", "echo $CFG_greeting")?.trim() == "hello");

    // kubectl label: the labels file follows.
    c.kubectl(&["label", "pod", "app", "-n", NS, "tier=back", "--overwrite"])?;
    wait_file(
        &c,
        "app",
        "/info/labels",
        "app=\"demo\"\ntier=\"back\"",
        SYNC * 4,
    )
    .context("the downwardAPI labels file did not follow kubectl label")?;

    // A missing key: CreateContainerConfigError with the kubelet's message, in kubectl get.
    c.apply(&missing_key_pod())?;
    let msg = format!("couldn't find key color in ConfigMap {NS}/app-config");
    wait_for(
        "CreateContainerConfigError",
        Duration::from_secs(60),
        || {
            let w = get(
                &c,
                "missing-key",
                ".status.containerStatuses[0].state.waiting.reason",
            )?;
            Ok((w == "CreateContainerConfigError").then_some(()))
        },
    )?;
    let message = get(
        &c,
        "missing-key",
        ".status.containerStatuses[0].state.waiting.message",
    )?;
    ensure!(message == msg, "waiting message {message:?}");
    let table = c.kubectl(&["get", "pod", "missing-key", "-n", NS])?;
    ensure!(
        table.contains("CreateContainerConfigError"),
        "kubectl get pod:\n{table}"
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.name=missing-key",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    ensure!(
        events.contains(&format!("Error: {msg}")),
        "events: {events}"
    );

    // The key appears: the container starts with it.
    c.apply(&format!("{}  color: blue\n", config_map("bonjour")))?;
    wait_for("missing-key running", Duration::from_secs(60), || {
        Ok((get(&c, "missing-key", ".status.phase")? == "Running").then_some(()))
    })?;
    ensure!(sh(&c, "missing-key", "echo $COLOR")?.trim() == "blue");

    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
