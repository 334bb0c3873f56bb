//! The pod lifecycle, run without root: a worker over the recording fakes of the kernel
//! ([`FakeRuntime`], [`FakeNetwork`]) and a fake apiserver, on tokio's paused clock so grace
//! periods and back-offs take no real time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{PodWorker, backoff_delay};
use crate::config::AgentConfig;
use crate::image::ImageStore;
use crate::network::fake::FakeNetwork;
use crate::network::ipam::Ipam;
use crate::network::{Ipv4Net, host_veth_name};
use crate::pods::{Agent, PodUpdate};
use crate::proxy::drain::BackendDrain;
use crate::runtime::Runtime;
use crate::runtime::edge::fake::{FakeRuntime, Plan, Recorder};
use skiff_common::events::EventRecorder;

const UID: &str = "0f8e2a6c-1d3b-4e5f-9a7b-123456789abc";

#[test]
fn backoff_doubles_to_the_cap() {
    let (i, m) = (Duration::from_secs(10), Duration::from_secs(300));
    let d: Vec<u64> = (0..8).map(|n| backoff_delay(n, i, m).as_secs()).collect();
    assert_eq!(d, [0, 10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(backoff_delay(200, i, m), m);
}

/// The requests the fake apiserver received: (method, path, body), and the objects it
/// serves by path (ConfigMaps and Secrets a test puts there).
#[derive(Default)]
struct ApiLog(
    Mutex<Vec<(String, String, Value)>>,
    Mutex<HashMap<String, Value>>,
);

impl ApiLog {
    /// Serve `obj` at `path` (replacing what was there).
    fn put(&self, path: &str, obj: Value) {
        self.1.lock().unwrap().insert(path.to_string(), obj);
    }

    fn event_messages(&self, reason: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(m, p, b)| m == "POST" && p.contains("/events") && b["reason"] == reason)
            .map(|(_, _, body)| body["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn requests(&self) -> Vec<(String, String, Value)> {
        self.0.lock().unwrap().clone()
    }

    /// The pod statuses the worker sent, in order.
    fn statuses(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(m, p, _)| m == "PATCH" && p.ends_with("/status"))
            .map(|(_, _, body)| body["status"].clone())
            .collect()
    }

    fn event_reasons(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(m, p, _)| m == "POST" && p.contains("/events"))
            .map(|(_, _, body)| body["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// An apiserver that accepts everything: a POST gets its object back (a TokenRequest with a
/// token: the first one already due for renewal, the next ones fresh), a ConfigMap GET the
/// cluster CA, anything else a pod.
fn fake_apiserver(log: Arc<ApiLog>) -> Client {
    let tokens = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let service = tower::service_fn(move |req: hyper::Request<Body>| {
        let log = log.clone();
        let tokens = tokens.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let sent: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let path = parts.uri.path();
            let stored = log.1.lock().unwrap().get(path).cloned();
            let reply = if let Some(obj) = stored.filter(|_| parts.method == hyper::Method::GET) {
                obj
            } else if parts.method == hyper::Method::POST && path.ends_with("/token") {
                let n = tokens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut answer = sent.clone();
                answer["status"] =
                    json!({"token": fake_jwt(n), "expirationTimestamp": "2030-01-01T00:00:00Z"});
                answer
            } else if parts.method == hyper::Method::POST {
                sent.clone()
            } else if path.ends_with("/configmaps/kube-root-ca.crt") {
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
                    "data": {"ca.crt": "CA PEM"}})
            } else if path.contains("/configmaps/") || path.contains("/secrets/") {
                log.0
                    .lock()
                    .unwrap()
                    .push((parts.method.to_string(), path.to_string(), sent));
                return Ok(not_found(path));
            } else {
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}})
            };
            log.0.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.path().to_string(),
                sent,
            ));
            let reply = Body::from(serde_json::to_vec(&reply).unwrap());
            Ok::<_, Infallible>(hyper::Response::new(reply))
        }
    });
    Client::new(service, "default")
}

/// The apiserver's 404 for the object at `path`.
fn not_found(path: &str) -> hyper::Response<Body> {
    let name = path.rsplit('/').next().unwrap_or_default();
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("not found: {name}"), "reason": "NotFound", "code": 404});
    let mut resp = hyper::Response::new(Body::from(status.to_string().into_bytes()));
    *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
    resp
}

/// The addresses a worker of [`Node`] gives the Downward API.
fn addresses() -> crate::pods::env::Addresses {
    crate::pods::env::Addresses {
        host_ips: vec!["10.0.0.1".into()],
        pod_ips: vec!["10.244.1.2".into()],
    }
}

/// Token number `n`: the first was issued 50 minutes into its hour (due for renewal), the
/// others just now.
fn fake_jwt(n: i64) -> String {
    use base64::Engine;
    let now = jiff::Timestamp::now().as_second();
    let iat = if n == 0 { now - 3000 } else { now };
    let claims = json!({"iat": iat, "exp": iat + 3607, "n": n});
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sig", enc(&json!({"alg": "RS256"})), enc(&claims))
}

/// One node: an agent over the fakes, its files in a temporary directory.
struct Node {
    agent: Arc<Agent>,
    rec: Arc<Recorder>,
    kernel: Arc<FakeRuntime>,
    api: Arc<ApiLog>,
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let rec = Arc::new(Recorder::default());
        let kernel = Arc::new(FakeRuntime::new(rec.clone(), &root.join("cgroup")));
        let api = Arc::new(ApiLog::default());
        let client = fake_apiserver(api.clone());
        let pod_cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let images = ImageStore::open(&root.join("images")).unwrap();
        add_image(&images, "app");
        let agent = Agent {
            cfg: AgentConfig::for_tests(root.clone()),
            recorder: EventRecorder::new(client.clone(), "kubelet"),
            client,
            runtime: Runtime::new(&root).unwrap(),
            edge: kernel.clone(),
            network: Arc::new(FakeNetwork { rec: rec.clone() }),
            ipam: Ipam::open(&root.join("ipam"), pod_cidr).unwrap(),
            pod_cidr,
            images,
            services: kube::runtime::reflector::store::<Service>().0,
            pods_by_name: Mutex::default(),
            drain: Arc::new(BackendDrain::new()),
        };
        Node {
            agent: Arc::new(agent),
            rec,
            kernel,
            api,
            dir,
        }
    }

    /// Run a worker for `pod`; the sender updates it (None: gone from the API).
    fn run(&self, pod: Pod) -> (watch::Sender<PodUpdate>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(Some(Arc::new(pod)));
        let worker = PodWorker::new(self.agent.clone(), UID.to_string(), rx);
        (tx, tokio::spawn(worker.run()))
    }

    fn netns(&self) -> String {
        self.agent.runtime.netns_path(UID).display().to_string()
    }

    fn pod_cgroup(&self) -> String {
        self.dir
            .path()
            .join("cgroup")
            .join(format!("pod{UID}"))
            .display()
            .to_string()
    }

    /// Whether the calls so far include `call`.
    fn called(&self, call: &str) -> bool {
        self.rec.calls().iter().any(|c| c == call)
    }

    /// When `call` was made (the first time).
    fn when(&self, call: &str) -> Instant {
        self.rec
            .timed_calls()
            .into_iter()
            .find(|(_, c)| c == call)
            .unwrap_or_else(|| panic!("no call {call:?} in {:#?}", self.rec.calls()))
            .0
    }

    /// The calls that start with one of `ops`, in order.
    fn calls_of(&self, ops: &[&str]) -> Vec<String> {
        self.rec
            .calls()
            .into_iter()
            .filter(|c| ops.iter().any(|op| c.split(' ').next() == Some(op)))
            .collect()
    }

    /// Wait (on the paused clock) until `done`; a hundred seconds is a hang.
    async fn until(&self, what: &str, done: impl Fn(&Node) -> bool) {
        for _ in 0..10_000 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}; calls: {:#?}",
            self.rec.calls()
        );
    }
}

/// An image in the store's on-disk layout (`names.json`, `<id>/config.json`, `<id>/rootfs`).
fn add_image(store: &ImageStore, name: &str) {
    let hex = "ab".repeat(32);
    let dir = store.root().join(&hex);
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let config = json!({"entrypoint": [], "cmd": ["/bin/app"], "env": ["PATH=/bin"],
        "working_dir": "/", "user": ""});
    let record = json!({"id": format!("sha256:{hex}"), "size_bytes": 0, "config": config,
        "original": {}});
    std::fs::write(dir.join("config.json"), record.to_string()).unwrap();
    let names =
        json!({"names": {format!("docker.io/library/{name}:latest"): format!("sha256:{hex}")}});
    std::fs::write(store.root().join("names.json"), names.to_string()).unwrap();
}

fn container(name: &str) -> Value {
    json!({"name": name, "image": "app"})
}

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": spec,
    }))
    .unwrap()
}

fn deleted(mut pod: Pod, grace: i64) -> Arc<Pod> {
    pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    Arc::new(pod)
}

#[tokio::test(start_paused = true)]
async fn the_sandbox_comes_first_then_init_containers_one_by_one_then_the_app() {
    let node = Node::new();
    let spec = json!({"initContainers": [container("setup1"), container("setup2")],
        "containers": [container("app")]});
    let (_tx, _worker) = node.run(pod(spec));
    node.until("setup1 to start", |n| n.called("start setup1/0"))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !node.called("start setup2/0"),
        "setup2 started while setup1 runs"
    );
    assert!(node.kernel.exit("setup1/0", 0));
    node.until("setup2 to start", |n| n.called("start setup2/0"))
        .await;
    assert!(
        !node.called("start app/0"),
        "the app started before its init containers ended"
    );
    assert!(node.kernel.exit("setup2/0", 0));
    node.until("the app to start", |n| n.called("start app/0"))
        .await;

    let ip = node.agent.ipam.lookup(UID).expect("the pod has an address");
    assert_eq!(
        node.rec.calls()[..6],
        [
            format!("create_pod_cgroup {UID}"),
            format!("start_pause web in {}", node.pod_cgroup()),
            format!("pin_netns pause at {}", node.netns()),
            format!("attach_pod {} {ip}", host_veth_name(UID)),
            format!("create_container_cgroups {UID} setup1"),
            "start setup1/0".to_string(),
        ]
    );
    assert_eq!(
        node.calls_of(&["start"]),
        ["start setup1/0", "start setup2/0", "start app/0"]
    );
    node.until("the pod to be reported running", |n| {
        n.api
            .statuses()
            .last()
            .is_some_and(|s| s["phase"] == "Running")
    })
    .await;
    let status = node.api.statuses().pop().unwrap();
    assert_eq!(status["podIP"], ip.to_string());
    assert_eq!(
        status["initContainerStatuses"][1]["state"]["terminated"]["reason"],
        "Completed"
    );
}

/// A native sidecar starts first and keeps running: the next init container starts once it
/// runs, it is restarted after an exit without holding the app up, counts toward readiness,
/// and on deletion it is stopped after the app.
#[tokio::test(start_paused = true)]
async fn a_sidecar_runs_beside_the_app_and_stops_after_it() {
    let node = Node::new();
    let mut sidecar = container("proxy");
    sidecar["restartPolicy"] = json!("Always");
    let spec = json!({"initContainers": [sidecar, container("setup")],
        "containers": [container("app")]});
    let p = pod(spec);
    let (tx, worker) = node.run(p.clone());
    node.until("setup to start", |n| n.called("start setup/0"))
        .await;
    assert!(node.when("start proxy/0") < node.when("start setup/0"));
    assert!(node.kernel.exit("setup/0", 0));
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    node.until("the pod to be ready", |n| {
        n.api.statuses().last().is_some_and(|s| {
            s["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
    })
    .await;
    let status = node.api.statuses().pop().unwrap();
    assert_eq!(status["initContainerStatuses"][0]["started"], true);
    assert_eq!(status["initContainerStatuses"][0]["ready"], true);
    // The sidecar exits: it comes back, the app runs on.
    assert!(node.kernel.exit("proxy/0", 1));
    node.until("the sidecar's restart", |n| n.called("start proxy/1"))
        .await;
    assert!(!node.called("signal app/0 SIGTERM"));
    assert!(!node.called("start app/1"));

    tx.send(Some(deleted(p, 5))).unwrap();
    worker.await.unwrap();
    assert!(node.when("signal app/0 SIGTERM") <= node.when("signal proxy/1 SIGTERM"));
    let order = node.calls_of(&["signal"]);
    let at = |call: &str| order.iter().position(|c| c == call).unwrap();
    assert!(
        at("signal app/0 SIGTERM") < at("signal proxy/1 SIGTERM"),
        "{order:?}"
    );
}

/// With restartPolicy Never the pod completes when its app does; the sidecar is stopped.
#[tokio::test(start_paused = true)]
async fn a_job_with_a_sidecar_completes_when_its_app_does() {
    let node = Node::new();
    let mut sidecar = container("proxy");
    sidecar["restartPolicy"] = json!("Always");
    let spec = json!({"restartPolicy": "Never", "initContainers": [sidecar],
        "containers": [container("app")]});
    let (_tx, _worker) = node.run(pod(spec));
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    assert!(node.kernel.exit("app/0", 0));
    node.until("the pod to succeed", |n| {
        n.api
            .statuses()
            .last()
            .is_some_and(|s| s["phase"] == "Succeeded")
    })
    .await;
    node.until("the sidecar to be stopped", |n| {
        n.called("signal proxy/0 SIGTERM")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_container_is_restarted_with_a_doubling_back_off() {
    let node = Node::new();
    node.kernel
        .plan("app", &[Plan::Exit(1), Plan::Exit(1), Plan::Exit(1)]);
    let (_tx, _worker) = node.run(pod(json!({"containers": [container("app")]})));
    node.until("the fourth instance", |n| n.called("start app/3"))
        .await;
    // The first restart is at once; then the back-off doubles from --backoff-initial (10 s).
    let at = |n: u32| node.when(&format!("start app/{n}"));
    assert!(
        at(1) - at(0) < Duration::from_secs(2),
        "{:?}",
        at(1) - at(0)
    );
    let (first, second) = (at(2) - at(1), at(3) - at(2));
    assert!(
        first >= Duration::from_secs(10) && first < Duration::from_secs(12),
        "{first:?}"
    );
    assert!(
        second >= Duration::from_secs(20) && second < Duration::from_secs(22),
        "{second:?}"
    );
    assert!(node.api.event_reasons().contains(&"BackOff".to_string()));
    let waiting = node.api.statuses().into_iter().find_map(|s| {
        let c = &s["containerStatuses"][0];
        (c["state"]["waiting"]["reason"] == "CrashLoopBackOff").then(|| c.clone())
    });
    let waiting = waiting.expect("a status in CrashLoopBackOff");
    assert_eq!(waiting["lastState"]["terminated"]["exitCode"], 1);
    // The fourth instance keeps running: no fifth.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert!(!node.called("start app/4"));
}

#[tokio::test(start_paused = true)]
async fn with_restart_policy_never_a_failed_container_fails_the_pod_and_frees_its_sandbox() {
    let node = Node::new();
    node.kernel.plan("app", &[Plan::Exit(3)]);
    let spec = json!({"restartPolicy": "Never", "containers": [container("app")]});
    let (_tx, _worker) = node.run(pod(spec));
    node.until("the pod to be reported failed", |n| {
        n.api
            .statuses()
            .last()
            .is_some_and(|s| s["phase"] == "Failed")
    })
    .await;
    node.until("the sandbox to go", |n| {
        n.called(&format!("remove_pod_cgroups {UID}"))
    })
    .await;
    assert_eq!(node.calls_of(&["start"]), ["start app/0"]);
    assert!(node.kernel.live_pauses().is_empty());
    assert_eq!(node.agent.ipam.lookup(UID), None);
}

#[tokio::test(start_paused = true)]
async fn deletion_sends_sigterm_then_sigkill_after_the_grace_period_and_tears_down_the_pod() {
    let node = Node::new();
    node.kernel.plan("app", &[Plan::IgnoreSigterm]);
    let spec = json!({"containers": [container("app"), container("sidecar")]});
    let p = pod(spec);
    let (tx, worker) = node.run(p.clone());
    node.until("the pod to be reported ready", |n| {
        n.api.statuses().last().is_some_and(|s| {
            s["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
    })
    .await;
    let ip = node.agent.ipam.lookup(UID).unwrap();

    tx.send(Some(deleted(p, 5))).unwrap();
    worker.await.unwrap();

    let grace = node.when("signal app/0 SIGKILL") - node.when("signal app/0 SIGTERM");
    assert!(
        grace >= Duration::from_secs(5) && grace < Duration::from_secs(6),
        "{grace:?}"
    );
    // The sidecar heeds SIGTERM: no SIGKILL for it.
    assert!(node.called("signal sidecar/0 SIGTERM"));
    assert!(!node.called("signal sidecar/0 SIGKILL"));
    // Containers first, then the sandbox: pause, network, netns pin, cgroups.
    let teardown = node.calls_of(&["signal", "detach_pod", "unpin_netns", "remove_pod_cgroups"]);
    assert_eq!(
        teardown[teardown.len() - 4..],
        [
            "signal pause SIGKILL".to_string(),
            format!("detach_pod {}", host_veth_name(UID)),
            format!("unpin_netns {}", node.netns()),
            format!("remove_pod_cgroups {UID}"),
        ]
    );
    assert_eq!(node.agent.ipam.lookup(UID), None, "{ip} is still allocated");
    assert!(!node.agent.runtime.pod_dir(UID).exists());
    // Not ready before the network went, then the deletion confirmed.
    let last = node.api.statuses().pop().unwrap();
    assert_eq!(last["containerStatuses"][0]["ready"], false);
    let (method, path, body) = node.api.requests().pop().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("DELETE", "/api/v1/namespaces/default/pods/web")
    );
    assert_eq!(body["gracePeriodSeconds"], 0);
    assert_eq!(body["preconditions"]["uid"], UID);
}

/// The preStop hook runs first and counts against the grace period; SIGTERM gets what is
/// left, at least 2 s.
#[tokio::test(start_paused = true)]
async fn a_prestop_hook_runs_before_sigterm_within_the_grace_period() {
    for (hook_seconds, grace, term_after, kill_after) in [(3, 6, 3, 3), (10, 5, 5, 2)] {
        let node = Node::new();
        node.kernel.plan("app", &[Plan::IgnoreSigterm]);
        let mut app = container("app");
        app["lifecycle"] = json!({"preStop": {"sleep": {"seconds": hook_seconds}}});
        let p = pod(json!({"containers": [app]}));
        let (tx, worker) = node.run(p.clone());
        node.until("the app to start", |n| n.called("start app/0"))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let deleted_at = Instant::now();
        tx.send(Some(deleted(p, grace))).unwrap();
        worker.await.unwrap();
        let term = node.when("signal app/0 SIGTERM") - deleted_at;
        let kill = node.when("signal app/0 SIGKILL") - node.when("signal app/0 SIGTERM");
        let within = |d: Duration, secs: u64| {
            d >= Duration::from_secs(secs)
                && d < Duration::from_secs(secs) + Duration::from_millis(900)
        };
        assert!(
            within(term, term_after),
            "hook {hook_seconds}s, grace {grace}s: SIGTERM after {term:?}"
        );
        assert!(
            within(kill, kill_after),
            "hook {hook_seconds}s, grace {grace}s: SIGKILL {kill:?} after SIGTERM"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_gone_from_the_api_loses_its_containers_network_and_cgroups() {
    let node = Node::new();
    let (tx, worker) = node.run(pod(json!({"containers": [container("app")]})));
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    tx.send(None).unwrap();
    worker.await.unwrap();
    assert_eq!(
        node.calls_of(&["signal", "detach_pod", "unpin_netns", "remove_pod_cgroups"]),
        [
            "signal app/0 SIGTERM".to_string(),
            "signal pause SIGKILL".to_string(),
            format!("detach_pod {}", host_veth_name(UID)),
            format!("unpin_netns {}", node.netns()),
            format!("remove_pod_cgroups {UID}"),
        ]
    );
    assert!(node.kernel.live_pauses().is_empty());
    // Nothing to confirm: the pod is already gone.
    assert!(!node.api.requests().iter().any(|(m, _, _)| m == "DELETE"));
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_failure_is_reported_and_what_was_made_is_removed() {
    let node = Node::new();
    node.rec.fail_next("attach_pod", "no bridge skiff0");
    let (_tx, _worker) = node.run(pod(json!({"containers": [container("app")]})));
    node.until("a second sandbox", |n| {
        n.calls_of(&["start_pause"]).len() == 2
    })
    .await;

    let expected = "Failed to create pod sandbox: wiring the pod's network: no bridge skiff0";
    let first = node.api.statuses().into_iter().next().unwrap();
    assert_eq!(first["message"], expected);
    assert_eq!(first["phase"], "Pending");
    assert!(
        node.api
            .event_reasons()
            .contains(&"FailedCreatePodSandBox".to_string())
    );
    // What the failed attempt made is gone before the next: pause, veth, pin, cgroup.
    let calls = node.rec.calls();
    let failed = calls
        .iter()
        .position(|c| c.starts_with("attach_pod"))
        .unwrap();
    assert_eq!(
        calls[failed + 1..failed + 5],
        [
            "signal pause SIGKILL".to_string(),
            format!("detach_pod {}", host_veth_name(UID)),
            format!("unpin_netns {}", node.netns()),
            format!("remove_pod_cgroups {UID}"),
        ]
    );
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    assert_eq!(node.kernel.live_pauses().len(), 1);
    node.until("the error to clear", |n| {
        n.api
            .statuses()
            .last()
            .is_some_and(|s| s["message"].is_null())
    })
    .await;
}

/// The service-account volume: the bound token, the CA and the namespace written through
/// `..data`; a token past 80 % of its life is renewed, a fresh one is left alone.
#[tokio::test]
async fn the_service_account_volume_is_projected_and_its_token_renewed() {
    let node = Node::new();
    let dir_in_pod = "/var/run/secrets/kubernetes.io/serviceaccount";
    let spec = json!({
        "serviceAccountName": "default",
        "containers": [{"name": "app", "image": "app", "volumeMounts": [
            {"name": "kube-api-access-abcde", "mountPath": dir_in_pod, "readOnly": true}]}],
        "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}],
    });
    let pod = pod(spec);
    let c = &pod.spec.as_ref().unwrap().containers[0];
    let mounts = crate::pods::volumes::mounts(&node.agent, &pod, UID, &addresses(), c)
        .await
        .unwrap();
    assert_eq!(mounts.len(), 1);
    let (dir, path, read_only) = &mounts[0];
    assert_eq!((path.as_str(), *read_only), (dir_in_pod, true));
    assert_eq!(
        std::fs::read_to_string(dir.join("namespace")).unwrap(),
        "default"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        "CA PEM"
    );
    let token = std::fs::read(dir.join("token")).unwrap();
    let (iat, exp) = crate::pods::volumes::projected::token_times(&token).unwrap();
    assert_eq!(exp - iat, 3607);
    assert_eq!(
        std::fs::read_link(dir.join("token")).unwrap(),
        std::path::PathBuf::from("..data/token")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let token_requests = || {
        node.api
            .requests()
            .into_iter()
            .filter(|(m, p, _)| {
                m == "POST" && p == "/api/v1/namespaces/default/serviceaccounts/default/token"
            })
            .map(|(_, _, body)| body)
            .collect::<Vec<_>>()
    };
    let sent = token_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["spec"]["expirationSeconds"], 3607);
    assert_eq!(
        sent[0]["spec"]["boundObjectRef"],
        json!({"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": UID})
    );
    let first = std::fs::read_to_string(dir.join("token")).unwrap();

    // The first token is 50 minutes into its hour: renewed, atomically.
    crate::pods::volumes::refresh_tokens(&node.agent, &pod, UID, &addresses())
        .await
        .unwrap();
    assert_eq!(token_requests().len(), 2);
    let second = std::fs::read_to_string(dir.join("token")).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        "CA PEM"
    );
    // A fresh one is left alone.
    crate::pods::volumes::refresh_tokens(&node.agent, &pod, UID, &addresses())
        .await
        .unwrap();
    assert_eq!(token_requests().len(), 2);
}

/// The environment instance `n` of container `name` was started with.
fn started_env(node: &Node, name: &str, n: u32) -> HashMap<String, String> {
    let dir = node.agent.runtime.instance_dir(UID, name, n);
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
    spec["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|kv| kv.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn labelled_pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": UID,
            "labels": {"app": "web", "tier": "front"}, "annotations": {"owner": "ops \"a\""}},
        "spec": spec,
    }))
    .unwrap()
}

/// The ConfigMaps and Secret the environment test reads.
fn put_env_sources(node: &Node) {
    let cms = "/api/v1/namespaces/default/configmaps";
    node.api.put(
        &format!("{cms}/cfg"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"mode": "fast", "level": "3"}}),
    );
    node.api.put(
        &format!("{cms}/raw"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "raw"},
            "data": {"2fast": "x", "9lives": "y", "GOOD": "z"}}),
    );
    node.api.put(
        "/api/v1/namespaces/default/secrets/sec",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
            "data": {"password": "czNjcjN0"}}),
    );
}

/// A container with envFrom sources and every kind of Downward API variable.
fn env_test_spec() -> Value {
    let field = |p: &str| json!({"fieldRef": {"fieldPath": p}});
    let resource = |r: &str, d: Option<&str>| match d {
        Some(d) => json!({"resourceFieldRef": {"resource": r, "divisor": d}}),
        None => json!({"resourceFieldRef": {"resource": r}}),
    };
    json!({
        "nodeName": "node-1", "serviceAccountName": "builder",
        "containers": [{"name": "app", "image": "app",
            "resources": {"limits": {"memory": "100M", "cpu": "500m"}, "requests": {"cpu": "250m"}},
            "envFrom": [
                {"prefix": "CFG_", "configMapRef": {"name": "cfg"}},
                {"configMapRef": {"name": "raw"}},
                {"secretRef": {"name": "sec"}},
                {"configMapRef": {"name": "absent", "optional": true}}],
            "env": [
                {"name": "CFG_mode", "value": "overridden $(CFG_level)"},
                {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                {"name": "POD_NS", "valueFrom": field("metadata.namespace")},
                {"name": "POD_UID", "valueFrom": field("metadata.uid")},
                {"name": "APP", "valueFrom": field("metadata.labels['app']")},
                {"name": "OWNER", "valueFrom": field("metadata.annotations['owner']")},
                {"name": "NOPE", "valueFrom": field("metadata.annotations['nope']")},
                {"name": "NODE", "valueFrom": field("spec.nodeName")},
                {"name": "SA", "valueFrom": field("spec.serviceAccountName")},
                {"name": "HOST_IP", "valueFrom": field("status.hostIP")},
                {"name": "HOST_IPS", "valueFrom": field("status.hostIPs")},
                {"name": "POD_IP", "valueFrom": field("status.podIP")},
                {"name": "POD_IPS", "valueFrom": field("status.podIPs")},
                {"name": "MEM_MI", "valueFrom": resource("limits.memory", Some("1Mi"))},
                {"name": "CPU_LIMIT", "valueFrom": resource("limits.cpu", None)},
                {"name": "CPU_REQ_M", "valueFrom": resource("requests.cpu", Some("1m"))},
                {"name": "MEM_REQ", "valueFrom": resource("requests.memory", None)},
                {"name": "DISK_GI", "valueFrom": resource("limits.ephemeral-storage", Some("1Gi"))},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x", "optional": true}}},
            ]}],
    })
}

/// envFrom (prefixed, invalid names skipped with the kubelet's warning), the Downward API's
/// fieldRefs and resourceFieldRefs, and an optional key that is not there.
#[tokio::test(start_paused = true)]
async fn env_from_and_the_downward_api_fill_the_environment() {
    let node = Node::new();
    put_env_sources(&node);
    let spec = env_test_spec();
    let (_tx, _worker) = node.run(labelled_pod(spec));
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    let env = started_env(&node, "app", 0);
    let pod_ip = env["POD_IP"].clone();
    assert!(pod_ip.starts_with("10.244.1."), "{pod_ip}");
    let expected = [
        ("CFG_mode", "overridden 3"),
        ("CFG_level", "3"),
        ("GOOD", "z"),
        ("password", "s3cr3t"),
        ("POD_NAME", "web"),
        ("POD_NS", "default"),
        ("POD_UID", UID),
        ("APP", "web"),
        ("OWNER", "ops \"a\""),
        ("NOPE", ""),
        ("NODE", "node-1"),
        ("SA", "builder"),
        ("HOST_IP", "10.0.0.1"),
        ("HOST_IPS", "10.0.0.1"),
        ("POD_IPS", pod_ip.as_str()),
        // 100 MB in MiB, rounded up; half a core is one; 250 millicores.
        ("MEM_MI", "96"),
        ("CPU_LIMIT", "1"),
        ("CPU_REQ_M", "250"),
        ("MEM_REQ", "0"),
        // No limit: the node's allocatable (10Gi).
        ("DISK_GI", "10"),
    ];
    for (k, v) in expected {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    for absent in ["2fast", "9lives", "OPT", "CFG_x"] {
        assert!(!env.contains_key(absent), "{absent}");
    }
    assert_eq!(
        node.api.event_messages("InvalidEnvironmentVariableNames"),
        [
            "Keys [2fast, 9lives] from the EnvFrom configMap default/raw were skipped since they \
          are considered invalid environment variable names."
        ]
    );
}

/// The waiting reason of container `name` in the last status sent.
fn last_waiting(node: &Node, name: &str) -> Option<Value> {
    let status = node.api.statuses().into_iter().last()?;
    let cs = status["containerStatuses"].as_array()?.clone();
    let c = cs.into_iter().find(|c| c["name"] == name)?;
    Some(c["state"]["waiting"].clone())
}

/// A required ConfigMap, key or Secret that is missing keeps the container waiting in
/// CreateContainerConfigError with the kubelet's message; once it appears, the container runs.
#[tokio::test(start_paused = true)]
async fn a_missing_config_key_is_a_create_container_config_error() {
    let node = Node::new();
    let cm = "/api/v1/namespaces/default/configmaps/cfg";
    let spec = json!({"containers": [{"name": "app", "image": "app", "env": [
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}}]}]});
    let (_tx, _worker) = node.run(pod(spec));
    let waiting_with = |msg: &'static str| {
        move |n: &Node| {
            last_waiting(n, "app")
                .is_some_and(|w| w["reason"] == "CreateContainerConfigError" && w["message"] == msg)
        }
    };
    node.until(
        "configmap not found",
        waiting_with("configmap \"cfg\" not found"),
    )
    .await;
    node.api.put(
        cm,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"other": "1"}}),
    );
    node.until(
        "the missing key",
        waiting_with("couldn't find key level in ConfigMap default/cfg"),
    )
    .await;
    assert!(
        node.api
            .event_messages("Failed")
            .contains(&"Error: couldn't find key level in ConfigMap default/cfg".to_string())
    );
    assert!(!node.called("start app/0"));
    node.api.put(
        cm,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"level": "7"}}),
    );
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    assert_eq!(started_env(&node, "app", 0)["LEVEL"], "7");
}

/// A running pod's configMap volume follows its ConfigMap within the sync period, through
/// `..data`; its downwardAPI labels file follows the pod's labels at once.
#[tokio::test(start_paused = true)]
async fn config_and_downward_volumes_follow_their_sources() {
    let node = Node::new();
    let cm = "/api/v1/namespaces/default/configmaps/cfg";
    let put = |v: &str| {
        node.api.put(
            cm,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                "data": {"greeting": v}}),
        )
    };
    put("hello");
    let spec = json!({"containers": [{"name": "app", "image": "app", "volumeMounts": [
            {"name": "config", "mountPath": "/config"},
            {"name": "info", "mountPath": "/info"}]}],
        "volumes": [
            {"name": "config", "configMap": {"name": "cfg"}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "app",
                    "resource": "limits.memory", "divisor": "1Gi"}}]}}]});
    let mut pod = labelled_pod(spec);
    let (tx, _worker) = node.run(pod.clone());
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    let volumes = node.agent.runtime.pod_dir(UID).join("volumes");
    let read = |p: &str| std::fs::read_to_string(volumes.join(p)).unwrap_or_default();
    assert_eq!(read("config/greeting"), "hello");
    assert_eq!(read("info/labels"), "app=\"web\"\ntier=\"front\"");
    assert!(read("info/mem").parse::<u64>().unwrap() >= 1);

    // The pod's labels change: the labels file follows on the worker's next pass.
    pod.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "back".into());
    let changed = Instant::now();
    tx.send(Some(Arc::new(pod.clone()))).unwrap();
    node.until("the new labels", |_| {
        std::fs::read_to_string(volumes.join("info/labels")).unwrap_or_default()
            == "app=\"web\"\ntier=\"back\""
    })
    .await;
    assert!(changed.elapsed() < Duration::from_secs(3));

    // The ConfigMap changes: the file follows within the sync period, swapped atomically.
    let before = std::fs::read_link(volumes.join("config/..data")).unwrap();
    put("bonjour");
    let changed = Instant::now();
    node.until("the new greeting", |_| {
        std::fs::read_to_string(volumes.join("config/greeting")).unwrap_or_default() == "bonjour"
    })
    .await;
    assert!(changed.elapsed() <= node.agent.cfg.sync_frequency + Duration::from_secs(2));
    assert_ne!(
        std::fs::read_link(volumes.join("config/..data")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_link(volumes.join("config/greeting")).unwrap(),
        std::path::PathBuf::from("..data/greeting")
    );

    // Deleted: the files stay, and FailedMount says why.
    node.api.1.lock().unwrap().remove(cm);
    node.until("FailedMount", |n| {
        !n.api.event_messages("FailedMount").is_empty()
    })
    .await;
    assert_eq!(
        node.api.event_messages("FailedMount")[0],
        "MountVolume.SetUp failed for volume \"config\" : configmap \"cfg\" not found"
    );
    assert_eq!(read("config/greeting"), "bonjour");
}

/// A volume whose ConfigMap is missing keeps the container in ContainerCreating with the
/// kubelet's FailedMount event; an optional one mounts empty.
#[tokio::test(start_paused = true)]
async fn a_missing_volume_source_is_a_failed_mount() {
    let node = Node::new();
    let spec = json!({"containers": [{"name": "app", "image": "app", "volumeMounts": [
            {"name": "config", "mountPath": "/config"},
            {"name": "maybe", "mountPath": "/maybe"}]}],
        "volumes": [
            {"name": "config", "configMap": {"name": "gone"}},
            {"name": "maybe", "secret": {"secretName": "absent", "optional": true}}]});
    let (_tx, _worker) = node.run(pod(spec));
    node.until("FailedMount", |n| {
        !n.api.event_messages("FailedMount").is_empty()
            && last_waiting(n, "app").is_some_and(|w| w["reason"] == "ContainerCreating")
    })
    .await;
    assert_eq!(
        node.api.event_messages("FailedMount"),
        ["MountVolume.SetUp failed for volume \"config\" : configmap \"gone\" not found"]
    );
    node.api.put(
        "/api/v1/namespaces/default/configmaps/gone",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gone"},
            "data": {"k": "v"}}),
    );
    node.until("the app to start", |n| n.called("start app/0"))
        .await;
    let volumes = node.agent.runtime.pod_dir(UID).join("volumes");
    assert_eq!(
        std::fs::read_to_string(volumes.join("config/k")).unwrap(),
        "v"
    );
    let maybe: Vec<_> = std::fs::read_dir(volumes.join("maybe"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    assert!(maybe.is_empty(), "{maybe:?}");
}

/// The PID namespace each container is started in, as the shim reads it from the
/// instance's spec: the pause process's with `shareProcessNamespace`, one of its own
/// otherwise, the node's with `hostPID` (and then the pause process makes none either).
#[tokio::test(start_paused = true)]
async fn containers_get_the_pid_namespace_the_pod_spec_asks_for() {
    use crate::runtime::spec::{ContainerSpec, PidNamespace, read_json};
    let cases = [
        (json!({}), PidNamespace::Container, ""),
        (
            json!({"shareProcessNamespace": true}),
            PidNamespace::Pod,
            "",
        ),
        (json!({"hostPID": true}), PidNamespace::Host, " host-pid"),
    ];
    for (extra, want, pause_flag) in cases {
        let node = Node::new();
        let mut spec = json!({"containers": [container("a"), container("b")]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (_tx, _worker) = node.run(pod(spec));
        node.until("both containers to start", |n| {
            n.called("start a/0") && n.called("start b/0")
        })
        .await;
        assert!(
            node.called(&format!(
                "start_pause web{pause_flag} in {}",
                node.pod_cgroup()
            )),
            "{:#?}",
            node.rec.calls()
        );
        let sandbox: crate::runtime::spec::SandboxState =
            read_json(&node.agent.runtime.sandbox_state_path(UID)).unwrap();
        for c in ["a", "b"] {
            let dir = node.agent.runtime.instance_dir(UID, c, 0);
            let s: ContainerSpec = read_json(&dir.join("spec.json")).unwrap();
            assert_eq!((c, s.pid_namespace), (c, want));
            assert_eq!(s.sandbox_pid, sandbox.pause_pid);
        }
    }
}
