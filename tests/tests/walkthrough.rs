//! The seeds' walkthrough ("Understanding how Kubernetes works", the kubia story) end to end on
//! a 3-node cluster whose control plane stores in a real etcd, driven by the real kubectl:
//! Deployment → ReplicaSet → pods (seen as events) → Service reachable from a pod → scale →
//! rolling update and rollback under load → a node dies and its pods come back elsewhere →
//! the pods as keys in etcd → service environment variables in a pod.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use skiff_tests::cluster::{Cluster, ClusterOptions, Store, agent_binary_path, skip_unless_root};
use skiff_tests::test_image::IMAGE;
use skiff_tests::wait_for;

/// A second name of the test image: `kubectl set image` needs a different image to roll to.
const IMAGE_2: &str = "skiff.test/busybox:2";
/// `kubectl create deployment` names the container after the image.
const CONTAINER: &str = "busybox";
/// kubia: its hostname over HTTP on 8080. On SIGTERM it keeps serving for 5 s before it
/// exits (skiff has no preStop hooks; this is the same drain), so the clients' dataplanes drop
/// a terminating pod before it stops answering (the deletion has to reach the endpoints and
/// every agent's maps first, which takes longer when the machine is busy).
const KUBIA: &str = "mkdir -p /var/www; hostname > /var/www/index.html; \
                     trap 'sleep 5; exit 0' TERM; httpd -f -p 8080 -h /var/www & wait";

/// Node lifecycle timings short enough for a test: agents heartbeat every 2 s, a node
/// silent for 8 s becomes Ready=Unknown, its pods are evicted 5 s later. (The eviction
/// follows `--pod-eviction-timeout` alone; the pods' default 300 s tolerations of the
/// unreachable taint do not delay it.)
const CONTROL_ARGS: &[&str] = &[
    "--node-monitor-grace-period",
    "8",
    "--pod-eviction-timeout",
    "5",
];
const AGENT_ARGS: &[&str] = &["--node-status-update-seconds", "2"];

/// A child process (kubectl watch, request loop) killed when dropped, even if the test fails.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One pod of the kubia deployment as the API shows it.
#[derive(Debug)]
struct KubiaPod {
    name: String,
    node: String,
    phase: String,
    ready: bool,
    terminating: bool,
    image: String,
    running_image: String,
}

fn kubia_pods(c: &Cluster) -> Result<Vec<KubiaPod>> {
    let out = c.kubectl(&["get", "pods", "-l", "app=kubia", "-o", "json"])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| KubiaPod {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
            phase: p["status"]["phase"].as_str().unwrap_or_default().into(),
            ready: p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            terminating: !p["metadata"]["deletionTimestamp"].is_null(),
            image: p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .into(),
            running_image: p["status"]["containerStatuses"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .into(),
        })
        .collect())
}

/// Wait until the deployment has exactly `n` pods, all Running, Ready, not terminating and on
/// `image`; their names.
fn wait_kubia(c: &Cluster, n: usize, image: &str, timeout: Duration) -> Result<BTreeSet<String>> {
    wait_for(
        &format!("{n} kubia pods Running and Ready on {image}"),
        timeout,
        || {
            let pods = kubia_pods(c)?;
            let good = pods.len() == n
                && pods.iter().all(|p| {
                    p.phase == "Running"
                        && p.ready
                        && !p.terminating
                        && p.image == image
                        && p.running_image.ends_with(image)
                });
            if good {
                return Ok(Some(pods.into_iter().map(|p| p.name).collect()));
            }
            bail!("pods: {pods:?}")
        },
    )
}

/// Hostnames answering `n` requests to `url` from `client` (every request must succeed).
fn hostnames(c: &Cluster, client: &str, url: &str, n: usize) -> Result<BTreeSet<String>> {
    let script = format!("for i in $(seq {n}); do timeout 3 wget -q -O - {url} || echo FAIL; done");
    let out = c
        .pod_command(client, &["sh", "-c", &script])?
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        !text.contains("FAIL"),
        "requests to {url} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Wait until requests through the service from `client` reach exactly `want`.
fn wait_reaches(c: &Cluster, client: &str, url: &str, want: &BTreeSet<String>) -> Result<()> {
    let requests = 12 * want.len();
    wait_for(
        &format!("{url} answered by {want:?}"),
        Duration::from_secs(60),
        || {
            let got = hostnames(c, client, url, requests)?;
            if &got == want {
                return Ok(Some(()));
            }
            bail!("{requests} requests were answered by {got:?}")
        },
    )
}

/// One line of `kubectl get events -w` (columns LAST SEEN, TYPE, REASON, OBJECT, MESSAGE).
#[derive(Debug)]
struct Event {
    reason: String,
    object: String,
    message: String,
}

/// The events the watch printed, in its order.
fn watched_events(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 4 && cols[0] != "LAST").then(|| Event {
                reason: cols[2].into(),
                object: cols[3].into(),
                message: cols[4..].join(" "),
            })
        })
        .collect()
}

/// Where the first event with `reason` about `object` whose message ends with `tail` is.
fn position(events: &[Event], reason: &str, object: &str, tail: &str) -> Option<usize> {
    events
        .iter()
        .position(|e| e.reason == reason && e.object == object && e.message.ends_with(tail))
}

fn env_of(c: &Cluster, pod: &str, var: &str) -> Result<String> {
    let out = c
        .pod_command(pod, &["sh", "-c", &format!("echo ${var}")])?
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "reading {var} in {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The wall-clock time of day (UTC), to line test steps up with the pods' `date +%T`.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let day = secs % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

fn rollout_status(c: &Cluster) -> Result<()> {
    c.kubectl(&[
        "rollout",
        "status",
        "deployment/kubia",
        "--timeout=120s",
        "--request-timeout=0",
    ])
    .map(drop)
}

#[test]
fn kubia_walkthrough() -> Result<()> {
    if skip_unless_root("kubia_walkthrough") {
        return Ok(());
    }
    let started = Instant::now();
    let mut c = Cluster::start(ClusterOptions {
        nodes: 3,
        store: Store::Etcd,
        control_args: CONTROL_ARGS.iter().map(|s| s.to_string()).collect(),
        agent_args: AGENT_ARGS.iter().map(|s| s.to_string()).collect(),
        verbose: true,
        ..Default::default()
    })?;
    let nodes = c.nodes();
    let agent = agent_binary_path();
    let agent = agent.to_str().context("agent path")?;
    for node in &nodes {
        let root = c.node(node).root_dir.display().to_string();
        c.exec_ok(
            node,
            &[agent, "image", "--root-dir", &root, "tag", IMAGE, IMAGE_2],
        )?;
    }

    // kubectl get events -w, watching before anything is created.
    let events_path = c.dir().join("events-watch.txt");
    let _events_watch = Background(
        c.kubectl_command()?
            .args(["get", "events", "-w", "--request-timeout=0"])
            .stdout(File::create(&events_path)?)
            .stderr(File::create(c.dir().join("events-watch.err"))?)
            .spawn()
            .context("starting kubectl get events -w")?,
    );
    wait_for("the events watch to list", Duration::from_secs(20), || {
        Ok(std::fs::read_to_string(&events_path)?
            .contains("REASON")
            .then_some(()))
    })?;

    // Deployment → ReplicaSet → 3 pods.
    c.kubectl(&[
        "create",
        "deployment",
        "kubia",
        &format!("--image={IMAGE}"),
        "--replicas=3",
        "--",
        "sh",
        "-c",
        KUBIA,
    ])?;
    rollout_status(&c)?;
    let first = wait_kubia(&c, 3, IMAGE, Duration::from_secs(60))?;
    let rs = c.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=kubia",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])?;

    // The watch saw the chain of controllers, per pod: the deployment scaled up its
    // ReplicaSet (ScalingReplicaSet), which created the pod (SuccessfulCreate), which the
    // scheduler bound (Scheduled) and the agent started (Started). SuccessfulCreate and
    // Scheduled both follow the pod's creation and are recorded asynchronously by two
    // components, so the watch may print them either way round (it does: the scheduler often
    // wins); each must precede the Started that depends on it.
    let rs_object = format!("replicaset/{rs}");
    let events = wait_for("events of every pod", Duration::from_secs(30), || {
        let ev = watched_events(&events_path);
        let complete = first.iter().all(|p| {
            let pod = format!("pod/{p}");
            position(&ev, "SuccessfulCreate", &rs_object, p).is_some()
                && position(&ev, "Scheduled", &pod, "").is_some()
                && position(&ev, "Started", &pod, "").is_some()
        });
        Ok(complete.then_some(ev))
    })?;
    let scaled = position(&events, "ScalingReplicaSet", "deployment/kubia", "")
        .context("no ScalingReplicaSet event for deployment/kubia")?;
    for p in &first {
        let pod = format!("pod/{p}");
        let created = position(&events, "SuccessfulCreate", &rs_object, p).context("created")?;
        let scheduled = position(&events, "Scheduled", &pod, "").context("scheduled")?;
        let started = position(&events, "Started", &pod, "").context("started")?;
        ensure!(
            scaled < created && scaled < scheduled && created < started && scheduled < started,
            "events of {pod} out of causal order: {events:#?}"
        );
    }
    eprintln!("walkthrough: the events watch printed:");
    for e in events.iter().filter(|e| e.object.contains("kubia")) {
        eprintln!("  {:<18} {:<34} {}", e.reason, e.object, e.message);
    }

    // A Service in front of them, and a client pod created after it.
    c.kubectl(&[
        "expose",
        "deployment",
        "kubia",
        "--port=80",
        "--target-port=8080",
    ])?;
    let vip = c.jsonpath("svc", "kubia", ".spec.clusterIP")?;
    let url = format!("http://{vip}/");
    let client_node = nodes[0].clone();
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {client_node}}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {IMAGE}
    command: ["sleep", "100000"]
"#
    ))?;
    wait_for("client Running", Duration::from_secs(60), || {
        Ok((c.jsonpath("pod", "client", ".status.phase")? == "Running").then_some(()))
    })?;
    ensure!(
        env_of(&c, "client", "KUBIA_SERVICE_HOST")? == vip,
        "the client pod does not see KUBIA_SERVICE_HOST={vip}"
    );
    ensure!(env_of(&c, "client", "KUBIA_SERVICE_PORT")? == "80");
    wait_reaches(&c, "client", &url, &first)?;

    // Scale out: five pods, five hostnames behind the service.
    c.kubectl(&["scale", "deployment", "kubia", "--replicas=5"])?;
    let five = wait_kubia(&c, 5, IMAGE, Duration::from_secs(60))?;
    wait_reaches(&c, "client", &url, &five)?;

    // Readiness probes and a surge-only strategy, so a rolling update never has fewer than
    // five ready pods (this patch itself rolls out once).
    c.kubectl(&[
        "patch",
        "deployment",
        "kubia",
        "-p",
        &format!(
            r#"{{"spec":{{"strategy":{{"rollingUpdate":{{"maxUnavailable":0,"maxSurge":1}}}},
            "template":{{"spec":{{"containers":[{{"name":"{CONTAINER}",
            "readinessProbe":{{"httpGet":{{"path":"/","port":8080}},"periodSeconds":1}}}}]}}}}}}}}"#
        ),
    ])?;
    rollout_status(&c)?;
    wait_kubia(&c, 5, IMAGE, Duration::from_secs(90))?;

    // Rolling update and rollback while a client keeps asking the service.
    let loop_script = format!(
        "while [ ! -e /tmp/stop-load ]; do \
           if out=$(timeout 3 wget -q -O - {url} 2>&1); then echo ok; \
           else rc=$?; case $rc in 124|143) out=\"no answer within 3 s $out\";; esac; \
                echo \"FAIL $(date +%T) exit $rc: $out\"; fi; sleep 0.05; \
         done; echo done"
    );
    let _ = c
        .pod_command("client", &["rm", "-f", "/tmp/stop-load"])?
        .output()?;
    let load = Background(
        c.pod_command("client", &["sh", "-c", &loop_script])?
            .stdin(Stdio::null())
            .stdout(File::create(c.dir().join("load.txt"))?)
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut steps = vec![format!("{} set image", clock())];
    c.kubectl(&[
        "set",
        "image",
        "deployment/kubia",
        &format!("{CONTAINER}={IMAGE_2}"),
    ])?;
    rollout_status(&c)?;
    steps.push(format!("{} rolled out", clock()));
    let updated = wait_kubia(&c, 5, IMAGE_2, Duration::from_secs(60))?;
    steps.push(format!("{} old pods gone", clock()));
    ensure!(
        updated.is_disjoint(&five),
        "pods survived the update: {updated:?}"
    );
    c.kubectl(&["rollout", "undo", "deployment/kubia"])?;
    steps.push(format!("{} undo", clock()));
    rollout_status(&c)?;
    steps.push(format!("{} rolled back", clock()));
    let rolled_back = wait_kubia(&c, 5, IMAGE, Duration::from_secs(60))?;
    steps.push(format!("{} old pods gone", clock()));
    wait_reaches(&c, "client", &url, &rolled_back)?;
    let stop = c
        .pod_command("client", &["touch", "/tmp/stop-load"])?
        .output()?;
    ensure!(stop.status.success(), "cannot stop the request loop");
    let mut load = load;
    wait_for("the request loop to stop", Duration::from_secs(10), || {
        Ok(load.0.try_wait()?.map(drop))
    })?;
    let text = std::fs::read_to_string(c.dir().join("load.txt"))?;
    let ok = text.lines().filter(|l| *l == "ok").count();
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    let failed = failures.len();
    eprintln!("walkthrough: {ok} requests answered, {failed} failed during update and rollback");
    ensure!(
        text.ends_with("done\n"),
        "the request loop broke off:\n{text}"
    );
    ensure!(
        failed == 0 && ok >= 50,
        "{failed} of {} requests failed during the update and rollback:\n{}\nsteps: {steps:?}",
        ok + failed,
        failures.join("\n")
    );

    // A node dies: NotReady, and its pods come back on the other nodes.
    let pods = kubia_pods(&c)?;
    let victim = nodes[1..]
        .iter()
        .max_by_key(|n| pods.iter().filter(|p| &p.node == *n).count())
        .context("no node to stop")?
        .clone();
    let lost: BTreeSet<String> = pods
        .iter()
        .filter(|p| p.node == victim)
        .map(|p| p.name.clone())
        .collect();
    ensure!(!lost.is_empty(), "no kubia pod on {victim}: {pods:?}");
    c.kill_agent(&victim);
    let died = Instant::now();
    wait_for(
        &format!("{victim} NotReady"),
        Duration::from_secs(60),
        || Ok((c.node_ready(&victim)?.as_deref() == Some("Unknown")).then_some(())),
    )?;
    let line = c.kubectl(&["get", "node", &victim, "--no-headers"])?;
    ensure!(line.contains("NotReady"), "kubectl get node: {line}");
    eprintln!("walkthrough: {victim} NotReady after {:?}", died.elapsed());
    let survivors = wait_kubia(&c, 5, IMAGE, Duration::from_secs(90))?;
    let placed = kubia_pods(&c)?;
    ensure!(
        placed.iter().all(|p| p.node != victim) && survivors.is_disjoint(&lost),
        "pods left on {victim}: {placed:?}"
    );
    eprintln!(
        "walkthrough: {} pods of {victim} replaced after {:?}",
        lost.len(),
        died.elapsed()
    );
    wait_reaches(&c, "client", &url, &survivors)?;

    // The pods as etcd keys, exactly those the API lists.
    wait_for("etcd keys of every pod", Duration::from_secs(20), || {
        let keys: BTreeSet<String> = c
            .etcdctl(&["get", "--prefix", "--keys-only", "/registry/pods/"])?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        let api: BTreeSet<String> = c
            .kubectl(&[
                "get",
                "pods",
                "-A",
                "-o",
                "jsonpath={range .items[*]}/registry/pods/{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
            ])?
            .lines()
            .map(String::from)
            .collect();
        ensure!(
            survivors
                .iter()
                .all(|p| keys.contains(&format!("/registry/pods/default/{p}"))),
            "etcd keys {keys:?} lack pods {survivors:?}"
        );
        if keys == api {
            return Ok(Some(()));
        }
        bail!("etcd keys {keys:?}, API pods {api:?}")
    })?;

    // A kubia pod (all were created after the service) sees it in its environment too.
    let some = survivors.iter().next().context("no pod")?;
    ensure!(
        env_of(&c, some, "KUBIA_SERVICE_HOST")? == vip,
        "{some} does not see KUBIA_SERVICE_HOST={vip}"
    );
    eprintln!("walkthrough: done in {:?}", started.elapsed());
    Ok(())
}
