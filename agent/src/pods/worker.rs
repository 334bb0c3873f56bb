//! One pod's worker: brings the sandbox up, runs init containers in order, then keeps the
//! app containers running per restartPolicy with CrashLoopBackOff, runs probes, reports
//! status, and on deletion stops everything (SIGTERM, grace period, SIGKILL), removes every
//! trace and confirms the deletion to the apiserver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::probe::{self, ProbeKind};
use super::status::{ContainerView, Now, PodView};
use super::{Agent, PodUpdate, env, sandbox};

use crate::runtime::cgroup::Limits;
use crate::runtime::spec::{ContainerExit, ContainerSpec, SandboxState, read_json};
use crate::runtime::{InstanceStatus, instance_status, process, stop_process};

/// How often a worker looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(1);

enum Note {
    /// A container process (or its shim) ended.
    Exited,
    Probe {
        container: String,
        instance: u32,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

#[derive(Default)]
struct ProbeTrack {
    instance: u32,
    next_due: Option<Instant>,
    successes: u32,
    failures: u32,
    in_flight: bool,
}

#[derive(Default)]
struct Track {
    /// Why the container isn't running right now (image missing, create error).
    waiting: Option<(String, String)>,
    /// CrashLoopBackOff: the instance whose exit it is for, and when the wait ends.
    backoff: Option<(u32, Instant, Duration)>,
    ready: bool,
    started: bool,
    /// The instance an exit watcher runs for.
    watched: Option<u32>,
    /// When we first saw the current instance running (probes' initialDelaySeconds).
    running_since: Option<(u32, Instant)>,
    probes: HashMap<ProbeKind, ProbeTrack>,
    /// The instance being stopped because a probe failed.
    killing: Option<u32>,
    /// Events already recorded for an instance (so one start isn't announced twice).
    announced: Option<u32>,
    /// The id of the image the container runs, resolved once (the store is files on disk;
    /// status is computed on every pass).
    image_id: Option<String>,
}

pub struct PodWorker {
    agent: Arc<Agent>,
    uid: String,
    rx: watch::Receiver<PodUpdate>,
    pod: Arc<Pod>,
    sandbox: Option<SandboxState>,
    sandbox_error: Option<String>,
    tracks: HashMap<String, Track>,
    notes_tx: mpsc::UnboundedSender<Note>,
    notes_rx: mpsc::UnboundedReceiver<Note>,
    last_status: Option<PodStatus>,
    reported: Option<serde_json::Value>,
    /// The pod reached Succeeded or Failed: its sandbox is gone and nothing restarts.
    finished: bool,
    start_time: Option<Time>,
    pod_ip: Option<String>,
}

impl PodWorker {
    pub fn new(agent: Arc<Agent>, uid: String, rx: watch::Receiver<PodUpdate>) -> PodWorker {
        let pod = rx.borrow().clone().unwrap_or_default();
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let last_status = pod.status.clone();
        let start_time = last_status.as_ref().and_then(|s| s.start_time.clone());
        PodWorker {
            agent,
            uid,
            rx,
            pod,
            sandbox: None,
            sandbox_error: None,
            tracks: HashMap::new(),
            notes_tx,
            notes_rx,
            last_status,
            reported: None,
            finished: false,
            start_time,
            pod_ip: None,
        }
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }
    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }
    fn api(&self) -> Api<Pod> {
        Api::namespaced(self.agent.client.clone(), &self.namespace())
    }

    pub async fn run(mut self) {
        self.adopt();
        loop {
            let gone = self.rx.borrow().is_none();
            let deleting = self.pod.metadata.deletion_timestamp.is_some();
            if gone || deleting {
                self.terminate(gone).await;
                return;
            }
            let wake = self.sync().await;
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The manager is gone: the agent is shutting down; leave the pod running.
                        return;
                    }
                    if let Some(p) = self.rx.borrow_and_update().clone() {
                        self.pod = p;
                    }
                }
                Some(note) = self.notes_rx.recv() => self.handle(note).await,
                _ = tokio::time::sleep(wake) => {}
            }
        }
    }

    /// Pick up a sandbox left by an earlier agent process, if its pause is still alive.
    fn adopt(&mut self) {
        let Ok(state) =
            read_json::<SandboxState>(&self.agent.runtime.sandbox_state_path(&self.uid))
        else {
            return;
        };
        if !process::is_alive(state.pause_pid, state.pause_start_ticks) {
            // Left for sync(), which removes the dead sandbox and builds a new one.
            return;
        }
        tracing::info!(pod = %self.name(), pause = state.pause_pid, "adopting a running pod");
        let statuses = self.pod.status.as_ref().map(|s| {
            let mut v = s.container_statuses.clone().unwrap_or_default();
            v.extend(s.init_container_statuses.clone().unwrap_or_default());
            v
        });
        // Keep the readiness the API last saw, so adoption doesn't flap Ready, and don't
        // replay initial probe delays or start events for processes already running.
        for cs in statuses.unwrap_or_default() {
            let n = self
                .agent
                .runtime
                .instances(&self.uid, &cs.name)
                .last()
                .copied();
            let t = self.tracks.entry(cs.name.clone()).or_default();
            t.ready = cs.ready;
            t.started = cs.started.unwrap_or(cs.ready);
            if let Some(n) = n {
                t.running_since = Some((n, Instant::now() - Duration::from_secs(3600)));
                t.announced = Some(n);
            }
        }
        self.pod_ip = state.ip.clone();
        self.sandbox = Some(state);
    }

    fn sandbox_alive(&self) -> bool {
        self.sandbox
            .as_ref()
            .is_some_and(|s| process::is_alive(s.pause_pid, s.pause_start_ticks))
    }

    fn current(&self, name: &str) -> (u32, Option<InstanceStatus>) {
        match self.agent.runtime.instances(&self.uid, name).last() {
            Some(&n) => (
                n,
                Some(instance_status(
                    &self.agent.runtime.instance_dir(&self.uid, name, n),
                )),
            ),
            None => (0, None),
        }
    }

    /// One pass toward the spec. Returns how long until the next pass is due.
    async fn sync(&mut self) -> Duration {
        let Some(spec) = self.pod.spec.clone() else {
            return RESYNC;
        };
        if self.finished {
            self.report(true, false).await;
            return Duration::from_secs(3600);
        }
        if !self.sandbox_alive() {
            let stale = self.sandbox.take().or_else(|| {
                read_json::<SandboxState>(&self.agent.runtime.sandbox_state_path(&self.uid)).ok()
            });
            if let Some(old) = stale {
                tracing::info!(pod = %self.name(), "the pod sandbox died; re-creating it");
                self.kill_all(Duration::ZERO, false).await;
                if let Err(e) = sandbox::destroy(&self.agent, &self.uid, Some(&old)).await {
                    tracing::warn!(pod = %self.name(), "removing the dead sandbox: {e:#}");
                }
                let pod = self.pod.clone();
                self.agent
                    .event(
                        &pod,
                        None,
                        false,
                        "SandboxChanged",
                        "Pod sandbox changed, it will be killed and re-created.".into(),
                    )
                    .await;
            }
            match sandbox::create(&self.agent, &self.pod).await {
                Ok(s) => {
                    self.pod_ip = s.ip.clone();
                    self.sandbox = Some(s);
                    self.sandbox_error = None;
                    if self.start_time.is_none() {
                        self.start_time = Some(Time(jiff::Timestamp::now()));
                    }
                }
                Err(e) => {
                    let msg = format!("Failed to create pod sandbox: {e:#}");
                    tracing::warn!(pod = %self.name(), "{msg}");
                    if self.sandbox_error.as_deref() != Some(msg.as_str()) {
                        let pod = self.pod.clone();
                        self.agent
                            .event(&pod, None, true, "FailedCreatePodSandBox", msg.clone())
                            .await;
                    }
                    self.sandbox_error = Some(msg);
                    self.report(false, false).await;
                    return Duration::from_secs(2);
                }
            }
        }
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut wake = RESYNC;
        let mut initialized = true;
        let mut init_failed = false;
        for c in spec.init_containers.iter().flatten() {
            match self.current(&c.name) {
                (_, None) => {
                    self.start(c, 0, true).await;
                    initialized = false;
                    break;
                }
                (_, Some(InstanceStatus::Starting)) => {
                    initialized = false;
                    break;
                }
                (n, Some(InstanceStatus::Running(st))) => {
                    self.watch_exit(&c.name, n, st.shim_pid);
                    initialized = false;
                    break;
                }
                (_, Some(InstanceStatus::Exited(_, e))) if e.exit_code == 0 => continue,
                (n, Some(InstanceStatus::Exited(..))) => {
                    initialized = false;
                    if policy == "Never" {
                        init_failed = true;
                    } else {
                        wake = wake.min(self.restart_after_backoff(c, n, true).await);
                    }
                    break;
                }
            }
        }
        if initialized {
            for c in &spec.containers {
                match self.current(&c.name) {
                    (_, None) => self.start(c, 0, false).await,
                    (_, Some(InstanceStatus::Starting)) => {}
                    (n, Some(InstanceStatus::Running(st))) => {
                        self.watch_exit(&c.name, n, st.shim_pid);
                        wake = wake.min(self.probe(c, n, &st));
                    }
                    (n, Some(InstanceStatus::Exited(_, e))) => {
                        if should_restart(&policy, e.exit_code) {
                            wake = wake.min(self.restart_after_backoff(c, n, false).await);
                        }
                    }
                }
            }
        }
        let terminal = self.report(initialized, init_failed).await;
        if terminal {
            // A finished pod keeps its logs and status but gives back its address and
            // processes, as the kubelet does.
            self.finished = true;
            self.kill_all(Duration::ZERO, false).await;
            let state = self.sandbox.take();
            if let Err(e) = sandbox::destroy(&self.agent, &self.uid, state.as_ref()).await {
                tracing::warn!(pod = %self.name(), "removing a finished pod's sandbox: {e:#}");
            }
        }
        wake
    }

    async fn start(&mut self, c: &Container, n: u32, init: bool) {
        let field = field_path(c, init);
        let pod = self.pod.clone();
        let Some(image) = self
            .agent
            .images
            .resolve(&c.image.clone().unwrap_or_default())
        else {
            let msg = format!(
                "Container image \"{}\" is not present with pull policy of Never",
                c.image.clone().unwrap_or_default()
            );
            let t = self.tracks.entry(c.name.clone()).or_default();
            if t.waiting.as_ref().map(|w| w.0.as_str()) != Some("ErrImageNeverPull") {
                t.waiting = Some(("ErrImageNeverPull".into(), msg.clone()));
                self.agent
                    .event(&pod, field, true, "ErrImageNeverPull", msg)
                    .await;
            }
            return;
        };
        let spec = match self.container_spec(c, n, &image).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{e:#}");
                let t = self.tracks.entry(c.name.clone()).or_default();
                if t.waiting.as_ref().map(|w| &w.1) != Some(&msg) {
                    t.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                    self.agent
                        .event(&pod, field, true, "Failed", format!("Error: {msg}"))
                        .await;
                }
                return;
            }
        };
        if n == 0 {
            self.agent
                .event(
                    &pod,
                    field.clone(),
                    false,
                    "Pulled",
                    format!(
                        "Container image \"{}\" already present on machine",
                        c.image.clone().unwrap_or_default()
                    ),
                )
                .await;
        }
        match self.agent.runtime.start_container(&spec).await {
            Ok(st) => {
                let t = self.tracks.entry(c.name.clone()).or_default();
                t.image_id = Some(image.id.clone());
                t.waiting = None;
                t.backoff = None;
                t.announced = Some(n);
                self.agent
                    .event(
                        &pod,
                        field.clone(),
                        false,
                        "Created",
                        format!("Created container {}", c.name),
                    )
                    .await;
                match st {
                    InstanceStatus::Exited(
                        _,
                        ContainerExit {
                            start_error: Some(err),
                            ..
                        },
                    ) => {
                        self.agent
                            .event(&pod, field, true, "Failed", format!("Error: {err}"))
                            .await;
                    }
                    _ => {
                        self.agent
                            .event(
                                &pod,
                                field,
                                false,
                                "Started",
                                format!("Started container {}", c.name),
                            )
                            .await;
                    }
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.tracks.entry(c.name.clone()).or_default().waiting =
                    Some(("RunContainerError".into(), msg.clone()));
                self.agent
                    .event(&pod, field, true, "Failed", format!("Error: {msg}"))
                    .await;
            }
        }
    }

    /// Restart an exited container once its back-off is over: the first restart at once,
    /// then initial, 2×initial, … up to the cap (the kubelet's CrashLoopBackOff).
    async fn restart_after_backoff(&mut self, c: &Container, n: u32, init: bool) -> Duration {
        let now = Instant::now();
        let (initial, max) = (self.agent.cfg.backoff_initial, self.agent.cfg.backoff_max);
        let pod = self.pod.clone();
        let msg_pod = format!("{}_{}({})", self.name(), self.namespace(), self.uid);
        let t = self.tracks.entry(c.name.clone()).or_default();
        t.ready = false;
        let until = match t.backoff {
            Some((inst, until, _)) if inst == n => until,
            _ => {
                let d = backoff_delay(n, initial, max);
                t.backoff = Some((n, now + d, d));
                if !d.is_zero() {
                    t.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={msg_pod}",
                            d.as_secs(),
                            c.name
                        ),
                    ));
                    self.agent
                        .event(
                            &pod,
                            field_path(c, init),
                            true,
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {} in pod {msg_pod}",
                                c.name
                            ),
                        )
                        .await;
                }
                now + d
            }
        };
        if now >= until {
            self.start(c, n + 1, init).await;
            RESYNC
        } else {
            until - now
        }
    }

    fn watch_exit(&mut self, name: &str, n: u32, shim_pid: i32) {
        let t = self.tracks.entry(name.to_string()).or_default();
        if t.watched == Some(n) {
            return;
        }
        t.watched = Some(n);
        let tx = self.notes_tx.clone();
        tokio::spawn(async move {
            // The shim writes the exit record and then exits: waiting for it (rather than
            // the container) means the record is there when we look.
            process::wait_exit(shim_pid).await;
            let _ = tx.send(Note::Exited);
        });
    }

    /// Start the probes that are due; returns when the next one is.
    fn probe(
        &mut self,
        c: &Container,
        n: u32,
        st: &crate::runtime::spec::ContainerState,
    ) -> Duration {
        let now = Instant::now();
        let t = self.tracks.entry(c.name.clone()).or_default();
        let since = match t.running_since {
            Some((i, since)) if i == n => since,
            _ => {
                t.running_since = Some((n, now));
                t.ready = false;
                t.started = false;
                t.probes.clear();
                t.killing = None;
                now
            }
        };
        if c.startup_probe.is_none() {
            t.started = true;
        }
        if c.readiness_probe.is_none() {
            t.ready = t.started;
        }
        let mut next = RESYNC;
        for kind in ProbeKind::ALL {
            let Some(p) = kind.of(c) else { continue };
            if (kind == ProbeKind::Startup) == t.started {
                // Startup runs until it passes; the others only after it has.
                continue;
            }
            let timing = probe::timing(p);
            let pt = t.probes.entry(kind).or_default();
            if pt.instance != n {
                *pt = ProbeTrack {
                    instance: n,
                    ..Default::default()
                };
            }
            if pt.in_flight {
                continue;
            }
            let due = pt.next_due.unwrap_or(since + timing.initial_delay);
            if now < due {
                next = next.min(due - now);
                continue;
            }
            pt.in_flight = true;
            pt.next_due = Some(now + timing.period);
            next = next.min(timing.period);
            let (p, c2, tx) = (p.clone(), c.clone(), self.notes_tx.clone());
            let ip = self.pod_ip.clone().unwrap_or_default();
            let (pid, exe) = (st.pid, self.agent.runtime.exe.clone());
            tokio::spawn(async move {
                let result = probe::run(&p, &c2, &ip, pid, &exe).await;
                let _ = tx.send(Note::Probe {
                    container: c2.name.clone(),
                    instance: n,
                    kind,
                    result,
                });
            });
        }
        next
    }

    async fn handle(&mut self, note: Note) {
        let Note::Probe {
            container,
            instance,
            kind,
            result,
        } = note
        else {
            return;
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let Some((c, init)) = spec
            .containers
            .iter()
            .map(|c| (c, false))
            .chain(spec.init_containers.iter().flatten().map(|c| (c, true)))
            .find(|(c, _)| c.name == container)
        else {
            return;
        };
        let Some(p) = kind.of(c) else { return };
        let timing = probe::timing(p);
        let pod = self.pod.clone();
        let t = self.tracks.entry(container.clone()).or_default();
        let Some(pt) = t.probes.get_mut(&kind) else {
            return;
        };
        if pt.instance != instance {
            return;
        }
        pt.in_flight = false;
        let failed_msg = match &result {
            Ok(()) => {
                pt.successes += 1;
                pt.failures = 0;
                None
            }
            Err(m) => {
                pt.failures += 1;
                pt.successes = 0;
                Some(m.clone())
            }
        };
        let (successes, failures) = (pt.successes, pt.failures);
        let mut kill = None;
        match kind {
            ProbeKind::Startup => {
                if successes >= 1 {
                    t.started = true;
                } else if failures >= timing.failure_threshold {
                    kill = Some(format!(
                        "Container {container} failed startup probe, will be restarted"
                    ));
                }
            }
            ProbeKind::Liveness => {
                if failures >= timing.failure_threshold {
                    kill = Some(format!(
                        "Container {container} failed liveness probe, will be restarted"
                    ));
                    if let Some(pt) = t.probes.get_mut(&kind) {
                        pt.failures = 0;
                    }
                }
            }
            ProbeKind::Readiness => {
                if successes >= timing.success_threshold {
                    t.ready = true;
                } else if failures >= timing.failure_threshold {
                    t.ready = false;
                }
            }
        }
        if let Some(msg) = failed_msg {
            self.agent
                .event(
                    &pod,
                    field_path(c, init),
                    true,
                    "Unhealthy",
                    format!("{} probe failed: {msg}", kind.name()),
                )
                .await;
        }
        if let Some(reason) = kill {
            let grace = p
                .termination_grace_period_seconds
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30);
            self.kill_container(
                c,
                init,
                instance,
                reason,
                Duration::from_secs(grace.max(0) as u64),
            )
            .await;
        }
    }

    async fn kill_container(
        &mut self,
        c: &Container,
        init: bool,
        n: u32,
        message: String,
        grace: Duration,
    ) {
        let t = self.tracks.entry(c.name.clone()).or_default();
        if t.killing == Some(n) {
            return;
        }
        t.killing = Some(n);
        t.ready = false;
        let InstanceStatus::Running(st) =
            instance_status(&self.agent.runtime.instance_dir(&self.uid, &c.name, n))
        else {
            return;
        };
        let pod = self.pod.clone();
        self.agent
            .event(&pod, field_path(c, init), false, "Killing", message)
            .await;
        let tx = self.notes_tx.clone();
        tokio::spawn(async move {
            stop_process(st.pid, st.start_ticks, grace).await;
            let _ = tx.send(Note::Exited);
        });
    }

    /// Stop every running container of the pod (concurrently), waiting for them to end.
    async fn kill_all(&mut self, grace: Duration, announce: bool) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut stops = Vec::new();
        let all = spec
            .containers
            .iter()
            .map(|c| (c, false))
            .chain(spec.init_containers.iter().flatten().map(|c| (c, true)));
        for (c, init) in all {
            for n in self.agent.runtime.instances(&self.uid, &c.name) {
                if let InstanceStatus::Running(st) =
                    instance_status(&self.agent.runtime.instance_dir(&self.uid, &c.name, n))
                {
                    if announce {
                        let pod = self.pod.clone();
                        self.agent
                            .event(
                                &pod,
                                field_path(c, init),
                                false,
                                "Killing",
                                format!("Stopping container {}", c.name),
                            )
                            .await;
                    }
                    stops.push(stop_process(st.pid, st.start_ticks, grace));
                }
            }
        }
        futures::future::join_all(stops).await;
    }

    /// Deletion: stop containers within the grace period, remove every trace, then tell the
    /// apiserver the pod is gone (a delete with grace 0), unless it is already gone.
    async fn terminate(&mut self, gone: bool) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        tracing::info!(pod = %self.name(), grace, "stopping pod");
        self.kill_all(Duration::from_secs(grace), !gone).await;
        // The containers have stopped: say so while the pod still exists (Ready=False), as the
        // kubelet does. A last backend that kube-proxy's terminating fallback keeps (serving)
        // then leaves the dataplane, and the drain gate below does not sit out its bound.
        let was_ready = self
            .last_status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !gone && was_ready {
            // Not ready, whether or not the shims have recorded the exits yet.
            for t in self.tracks.values_mut() {
                t.ready = false;
            }
            self.report(true, false).await;
        }
        let state = self.sandbox.take().or_else(|| {
            read_json::<SandboxState>(&self.agent.runtime.sandbox_state_path(&self.uid)).ok()
        });
        // Before the network goes: wait until this node's service dataplane no longer sends
        // new connections to the pod (a same-node client's connection into a removed netns
        // hangs until ARP fails; into the still-wired, empty pod it is refused at once).
        // Bounded: the proxy may not have synced yet, or keep a last terminating backend.
        const DRAIN_BOUND: Duration = Duration::from_secs(5);
        let drain_ip = state
            .as_ref()
            .filter(|s| !s.host_network && s.netns_path.is_some())
            .and_then(|s| s.ip.as_deref().or(self.pod_ip.as_deref()))
            .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
        if let Some(ip) = drain_ip {
            let d = self.agent.drain.wait_unprogrammed(ip, DRAIN_BOUND).await;
            if d.timed_out {
                tracing::warn!(pod = %self.name(), %ip, waited = ?d.waited,
                    "the service dataplane still sends new connections to the pod; removing its network anyway");
            } else {
                tracing::info!(pod = %self.name(), %ip, waited = ?d.waited,
                    "the service dataplane no longer sends new connections to the pod");
            }
        }
        if let Err(e) = sandbox::destroy(&self.agent, &self.uid, state.as_ref()).await {
            tracing::warn!(pod = %self.name(), "removing the pod's sandbox: {e:#}");
        }
        let _ = std::fs::remove_dir_all(self.agent.runtime.pod_dir(&self.uid));
        if let Ok(mut m) = self.agent.pods_by_name.lock() {
            let key = (self.namespace(), self.name());
            if m.get(&key).and_then(|p| p.metadata.uid.as_deref()) == Some(self.uid.as_str()) {
                m.remove(&key);
            }
        }
        if gone {
            return;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        for attempt in 0..5 {
            match self.api().delete(&self.name(), &dp).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    tracing::warn!(pod = %self.name(), "confirming the deletion (attempt {attempt}): {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Compute and, if it changed, send the pod's status. Returns whether the pod is finished.
    async fn report(&mut self, initialized: bool, init_failed: bool) -> bool {
        let spec = self.pod.spec.clone().unwrap_or_default();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let t = self.tracks.entry(c.name.clone()).or_default();
            if t.image_id.is_none() {
                let image_ref = c.image.clone().unwrap_or_default();
                t.image_id = self.agent.images.resolve(&image_ref).map(|i| i.id);
            }
        }
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let view = PodView {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| self.container_view(c, &policy, true))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| self.container_view(c, &policy, false))
                .collect(),
            initialized: initialized || self.finished,
            init_failed,
            pod_ip: self.pod_ip.clone(),
            host_ip: self.agent.cfg.node_ip.to_string(),
            start_time: self.start_time.clone(),
            sandbox_message: self.sandbox_error.clone(),
        };
        let phase = super::status::phase(&view);
        let status = super::status::pod_status(
            &view,
            self.last_status.as_ref(),
            Time(jiff::Timestamp::now()),
        );
        let value = serde_json::to_value(&status).unwrap_or_default();
        if self.reported.as_ref() != Some(&value) {
            let patch = Patch::Merge(json!({ "status": value }));
            match self
                .api()
                .patch_status(&self.name(), &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    self.reported = Some(value);
                    self.last_status = Some(status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(pod = %self.name(), "updating pod status: {e}"),
            }
        }
        phase == "Succeeded" || phase == "Failed"
    }

    fn container_view(&self, c: &Container, policy: &str, init: bool) -> ContainerView {
        let (n, now) = self.current(&c.name);
        let t = self.tracks.get(&c.name);
        let image_ref = c.image.clone().unwrap_or_default();
        let image_id = t.and_then(|t| t.image_id.clone()).unwrap_or_default();
        let last_exit = (n > 0)
            .then(|| self.agent.runtime.instance_dir(&self.uid, &c.name, n - 1))
            .and_then(|d| match instance_status(&d) {
                InstanceStatus::Exited(s, e) => {
                    Some((s, e, container_id(&self.uid, &c.name, n - 1)))
                }
                _ => None,
            });
        let waiting = t.and_then(|t| t.waiting.clone());
        let now = match now {
            None => waiting
                .map(|(r, m)| Now::Waiting(r, m))
                .unwrap_or(Now::NotStarted),
            Some(InstanceStatus::Starting) => {
                Now::Waiting("ContainerCreating".into(), String::new())
            }
            Some(InstanceStatus::Running(s)) => Now::Running(s),
            Some(InstanceStatus::Exited(s, e)) => {
                let will_restart = if init {
                    e.exit_code != 0 && policy != "Never"
                } else {
                    should_restart(policy, e.exit_code)
                };
                Now::Exited {
                    state: s,
                    exit: e,
                    will_restart: will_restart && !self.finished,
                    waiting,
                }
            }
        };
        ContainerView {
            name: c.name.clone(),
            image: image_ref,
            image_id,
            container_id: container_id(&self.uid, &c.name, n),
            restart_count: n,
            now,
            last_exit,
            ready: t.is_some_and(|t| t.ready),
            started: t.is_some_and(|t| t.started),
        }
    }

    async fn container_spec(
        &self,
        c: &Container,
        n: u32,
        image: &crate::image::Image,
    ) -> anyhow::Result<ContainerSpec> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let sandbox = self
            .sandbox
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the pod has no sandbox"))?;
        let pod_ip = sandbox.ip.clone().unwrap_or_default();
        let host_ip = self.agent.cfg.node_ip.to_string();
        let mut vars = OrderedEnv::default();
        for kv in &image.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                vars.set(k, v.to_string());
            }
        }
        vars.set("HOSTNAME", sandbox::hostname(&self.pod));
        let ns = self.namespace();
        if spec.enable_service_links.unwrap_or(true) {
            let services = self.agent.services.state();
            let in_ns = services
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
                .map(|s| s.as_ref());
            for (k, v) in env::service_env(in_ns) {
                vars.set(&k, v);
            }
        }
        // The apiserver's own service is always announced, whatever the namespace.
        if let Some(k) = self.agent.services.state().iter().find(|s| {
            s.metadata.namespace.as_deref() == Some("default")
                && s.metadata.name.as_deref() == Some("kubernetes")
        }) {
            for (key, v) in env::service_env([k.as_ref()]) {
                vars.set(&key, v);
            }
        }
        for e in c.env.iter().flatten() {
            let value = if let Some(v) = &e.value {
                env::expand(v, &vars.0)
            } else if let Some(src) = &e.value_from {
                if let Some(f) = &src.field_ref {
                    env::field_ref(&self.pod, &f.field_path, &host_ip, &pod_ip)
                        .ok_or_else(|| anyhow::anyhow!("unsupported fieldRef {}", f.field_path))?
                } else if let Some(r) = &src.config_map_key_ref {
                    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                        Api::namespaced(self.agent.client.clone(), &ns);
                    match api.get_opt(&r.name).await? {
                        Some(cm) => match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => v,
                            None if r.optional == Some(true) => continue,
                            None => anyhow::bail!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key,
                                r.name
                            ),
                        },
                        None if r.optional == Some(true) => continue,
                        None => anyhow::bail!("configmap \"{}\" not found", r.name),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let api: Api<k8s_openapi::api::core::v1::Secret> =
                        Api::namespaced(self.agent.client.clone(), &ns);
                    match api.get_opt(&r.name).await? {
                        Some(sec) => match sec.data.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => String::from_utf8_lossy(&v.0).to_string(),
                            None if r.optional == Some(true) => continue,
                            None => anyhow::bail!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key,
                                r.name
                            ),
                        },
                        None if r.optional == Some(true) => continue,
                        None => anyhow::bail!("secret \"{}\" not found", r.name),
                    }
                } else {
                    anyhow::bail!(
                        "env {}: only value, fieldRef, configMapKeyRef and secretKeyRef are supported",
                        e.name
                    )
                }
            } else {
                String::new()
            };
            vars.set(&e.name, value);
        }
        let argv = env::argv(c, &image.config, &vars.0);
        let sc = c.security_context.as_ref();
        let psc = spec.security_context.as_ref();
        let (mut uid, mut gid) = parse_user(&image.config.user);
        if let Some(u) = sc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|s| s.run_as_user))
        {
            uid = u as u32;
        }
        if let Some(g) = sc
            .and_then(|s| s.run_as_group)
            .or(psc.and_then(|s| s.run_as_group))
        {
            gid = g as u32;
        }
        let limits = limits_of(c);
        let cgroups = self
            .agent
            .cgroups
            .create_container(&self.uid, &c.name, limits)?;
        let etc = sandbox::etc_dir(&self.agent, &self.uid);
        let mut bind_files = vec![(etc.join("hostname"), "/etc/hostname".to_string())];
        if !c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/etc/hosts")
        {
            bind_files.push((etc.join("hosts"), "/etc/hosts".to_string()));
        }
        bind_files.push((etc.join("resolv.conf"), "/etc/resolv.conf".to_string()));
        let bind_dirs = super::volumes::mounts(&self.agent, &self.pod, &self.uid, c).await?;
        Ok(ContainerSpec {
            pod_uid: self.uid.clone(),
            container: c.name.clone(),
            restart_count: n,
            sandbox_pid: sandbox.pause_pid,
            host_network: sandbox.host_network,
            argv,
            env: vars.0.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: c
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| image.config.working_dir.clone()),
            uid,
            gid,
            image_rootfs: image.rootfs.clone(),
            instance_dir: self.agent.runtime.instance_dir(&self.uid, &c.name, n),
            bind_files,
            bind_dirs,
            cgroups,
            log_dir: self.agent.runtime.log_dir(&self.uid, &c.name),
            log_max_size: self.agent.cfg.log_max_size,
            log_max_files: self.agent.cfg.log_max_files,
        })
    }
}

/// Environment variables in order, a later definition replacing an earlier one in place.
#[derive(Default)]
struct OrderedEnv(Vec<(String, String)>);

impl OrderedEnv {
    fn set(&mut self, k: &str, v: String) {
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }
}

fn parse_user(user: &str) -> (u32, u32) {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse().unwrap_or(0);
    (uid, g.parse().unwrap_or(uid))
}

fn field_path(c: &Container, init: bool) -> Option<String> {
    Some(if init {
        format!("spec.initContainers{{{}}}", c.name)
    } else {
        format!("spec.containers{{{}}}", c.name)
    })
}

pub fn container_id(uid: &str, name: &str, n: u32) -> String {
    format!("skiff://{uid}/{name}/{n}")
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Delay before restart number `n + 1` of a container whose instance `n` exited.
pub fn backoff_delay(n: u32, initial: Duration, max: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

fn limits_of(c: &Container) -> Limits {
    let res = c.resources.as_ref();
    let get = |m: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
               k: &str| { m.and_then(|m| m.get(k)).map(|q| q.0.clone()) };
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    Limits {
        // The scheduler's exact parser, rounded up as kubelet's Value()/MilliValue() are:
        // bytes and millicores.
        memory_bytes: get(limits, "memory").and_then(|q| skiff_common::quantity::parse_value(&q)),
        cpu_millis: get(limits, "cpu").and_then(|q| skiff_common::quantity::parse_milli_value(&q)),
        cpu_request_millis: get(requests, "cpu")
            .and_then(|q| skiff_common::quantity::parse_milli_value(&q)),
    }
}

/// Remove a pod found on disk that the API no longer has: kill what runs, drop its network
/// and cgroups, delete its files.
pub async fn teardown_orphan(agent: &Agent, uid: &str) -> anyhow::Result<()> {
    let containers = agent.runtime.pod_dir(uid).join("containers");
    let mut stops = Vec::new();
    for entry in std::fs::read_dir(&containers)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        for n in agent.runtime.instances(uid, &name) {
            if let InstanceStatus::Running(st) =
                instance_status(&agent.runtime.instance_dir(uid, &name, n))
            {
                stops.push(stop_process(st.pid, st.start_ticks, Duration::ZERO));
            }
        }
    }
    futures::future::join_all(stops).await;
    let state = read_json::<SandboxState>(&agent.runtime.sandbox_state_path(uid)).ok();
    sandbox::destroy(agent, uid, state.as_ref()).await?;
    let _ = std::fs::remove_dir_all(agent.runtime.pod_dir(uid));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let (i, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let d: Vec<u64> = (0..8).map(|n| backoff_delay(n, i, m).as_secs()).collect();
        assert_eq!(d, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff_delay(200, i, m), m);
    }

    #[test]
    fn limits_read_quantities_exactly() {
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "1Pi", "cpu": "1500u"},
                          "requests": {"cpu": "250m"}}}))
        .unwrap();
        let l = limits_of(&c);
        assert_eq!(l.memory_bytes, Some(1 << 50));
        assert_eq!(l.cpu_millis, Some(2)); // 1.5 millicores round up
        assert_eq!(l.cpu_request_millis, Some(250));
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "2Ei", "cpu": "1n"}}}))
        .unwrap();
        let l = limits_of(&c);
        assert_eq!(l.memory_bytes, Some(2 << 60));
        assert_eq!(l.cpu_millis, Some(1));
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c",
            "resources": {"limits": {"memory": "128Mi", "cpu": "x"}}}))
        .unwrap();
        let l = limits_of(&c);
        assert_eq!(l.memory_bytes, Some(128 << 20));
        assert_eq!(l.cpu_millis, None);
    }

    #[test]
    fn users() {
        assert_eq!(parse_user(""), (0, 0));
        assert_eq!(parse_user("1000"), (1000, 1000));
        assert_eq!(parse_user("1000:50"), (1000, 50));
    }
}
