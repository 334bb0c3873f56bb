//! One pod's worker: brings the sandbox up, runs init containers in order, then keeps the
//! app containers running per restartPolicy with CrashLoopBackOff, runs probes, reports
//! status, and on deletion stops everything (SIGTERM, grace period, SIGKILL), removes every
//! trace and confirms the deletion to the apiserver.

mod kill;
mod message;
mod probes;
mod report;
mod spec;
mod start;
mod terminate;

pub use kill::teardown_orphan;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use tokio::sync::{mpsc, watch};
// tokio's clock (the same as std's unless a test pauses it): back-offs and probe timing.
use tokio::time::Instant;

use super::probe::ProbeKind;
use super::{Agent, PodUpdate, sandbox};

use crate::runtime::spec::{SandboxState, read_json};
use crate::runtime::{InstanceStatus, instance_status};

/// How often a worker looks again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(1);
/// How soon a worker tries again to create a sandbox that failed.
const SANDBOX_RETRY: Duration = Duration::from_secs(2);
/// How often a running pod's service-account tokens are looked at (renewal is due at 80 % of
/// a lifetime of at least ten minutes).
const TOKEN_CHECK: Duration = Duration::from_secs(10);

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
    /// The error that last kept it from starting, announced once by an event.
    last_error: Option<String>,
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
    next_token_check: Instant,
    /// Every init container succeeded (or, for a sidecar, started) once: later sidecar exits
    /// do not hold the app containers up again.
    initialized: bool,
    /// Termination messages of exited instances, by container id (`None`: it left none).
    termination_messages: HashMap<String, Option<String>>,
    /// When the pod's API-backed volumes are next re-synced (every `--sync-frequency`).
    next_volume_sync: Instant,
    /// The labels and annotations the downwardAPI volumes were last synced with.
    volume_meta: PodMeta,
}

/// A pod's labels and annotations.
type PodMeta = (
    Option<BTreeMap<String, String>>,
    Option<BTreeMap<String, String>>,
);

fn pod_meta(pod: &Pod) -> PodMeta {
    (
        pod.metadata.labels.clone(),
        pod.metadata.annotations.clone(),
    )
}

impl PodWorker {
    pub fn new(agent: Arc<Agent>, uid: String, rx: watch::Receiver<PodUpdate>) -> PodWorker {
        let pod = rx.borrow().clone().unwrap_or_default();
        let (notes_tx, notes_rx) = mpsc::unbounded_channel();
        let last_status = pod.status.clone();
        let start_time = last_status.as_ref().and_then(|s| s.start_time.clone());
        let next_volume_sync = Instant::now() + agent.cfg.sync_frequency;
        let volume_meta = pod_meta(&pod);
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
            initialized: false,
            termination_messages: HashMap::new(),
            pod_ip: None,
            next_token_check: Instant::now(),
            next_volume_sync,
            volume_meta,
        }
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }
    /// `<name>_<namespace>(<uid>)`, as the kubelet names a pod in its messages.
    fn pod_label(&self) -> String {
        format!("{}_{}({})", self.name(), self.namespace(), self.uid)
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
        if !self
            .agent
            .edge
            .is_alive(state.pause_pid, state.pause_start_ticks)
        {
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
            .is_some_and(|s| self.agent.edge.is_alive(s.pause_pid, s.pause_start_ticks))
    }

    fn current(&self, name: &str) -> (u32, Option<InstanceStatus>) {
        match self.agent.runtime.instances(&self.uid, name).last() {
            Some(&n) => (
                n,
                Some(instance_status(
                    &*self.agent.edge,
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
        if !self.ensure_sandbox().await {
            self.report(false, false).await;
            return SANDBOX_RETRY;
        }
        self.refresh_tokens().await;
        self.resync_volumes().await;
        let policy = restart_policy(&spec);
        let init = self.run_init_containers(&spec, &policy).await;
        let mut wake = init.wake;
        if init.done {
            wake = wake.min(self.run_app_containers(&spec, &policy).await);
        }
        if self.report(init.done, init.failed).await {
            self.finish().await;
        }
        wake
    }

    /// Renew the service-account tokens in the pod's volumes when due (checked every
    /// [`TOKEN_CHECK`]); a failure is retried at the next check.
    async fn refresh_tokens(&mut self) {
        if Instant::now() < self.next_token_check {
            return;
        }
        self.next_token_check = Instant::now() + TOKEN_CHECK;
        let at = self.addresses();
        if let Err(e) = super::volumes::refresh_tokens(&self.agent, &self.pod, &self.uid, &at).await
        {
            tracing::warn!(pod = %self.name(), "renewing service-account tokens: {e:#}");
        }
    }

    /// Re-project the pod's API-backed volumes every sync period, and at once when its labels
    /// or annotations changed (downwardAPI files follow them). A failing source is reported
    /// as the kubelet does (FailedMount) and tried again next period.
    async fn resync_volumes(&mut self) {
        let meta = pod_meta(&self.pod);
        if Instant::now() < self.next_volume_sync && meta == self.volume_meta {
            return;
        }
        self.volume_meta = meta;
        self.next_volume_sync = Instant::now() + self.agent.cfg.sync_frequency;
        let at = self.addresses();
        let done = super::volumes::resync(&self.agent, &self.pod, &self.uid, &at).await;
        for v in done.changed {
            tracing::info!(pod = %self.name(), volume = %v, "volume updated");
        }
        let pod = self.pod.clone();
        for (volume, message) in done.failed {
            let msg = super::volumes::MountError { volume, message }.to_string();
            tracing::warn!(pod = %self.name(), "{msg}");
            self.agent.event(&pod, None, true, "FailedMount", msg).await;
        }
    }

    /// The node's and the pod's addresses, for the Downward API.
    fn addresses(&self) -> super::env::Addresses {
        let host = self.agent.cfg.node_ip.to_string();
        let pod_ip = self.pod_ip.clone().filter(|ip| !ip.is_empty());
        super::env::Addresses {
            host_ips: vec![host],
            pod_ips: pod_ip.into_iter().collect(),
        }
    }

    /// Make sure a live sandbox exists, replacing a dead one. Returns false when creating it
    /// failed (the error is in `sandbox_error` and an event).
    async fn ensure_sandbox(&mut self) -> bool {
        if self.sandbox_alive() {
            return true;
        }
        self.remove_dead_sandbox().await;
        match sandbox::create(&self.agent, &self.pod).await {
            Ok(s) => {
                self.pod_ip = s.ip.clone();
                self.sandbox = Some(s);
                self.sandbox_error = None;
                if self.start_time.is_none() {
                    self.start_time = Some(Time(jiff::Timestamp::now()));
                }
                true
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
                false
            }
        }
    }

    /// A sandbox whose pause process died takes its containers with it: stop them, remove
    /// what is left of it, and say it will be re-created.
    async fn remove_dead_sandbox(&mut self) {
        let stale = self.sandbox.take().or_else(|| {
            read_json::<SandboxState>(&self.agent.runtime.sandbox_state_path(&self.uid)).ok()
        });
        let Some(old) = stale else { return };
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

    /// Run the init containers one at a time, in order: start the first that has not
    /// succeeded yet, or restart it after its back-off (unless restartPolicy is Never).
    /// A sidecar (an init container with restartPolicy Always) lets the next one start once
    /// it has started, and keeps running (restarted whatever the pod's policy) next to the
    /// app containers; its exit after initialization holds nothing up.
    async fn run_init_containers(&mut self, spec: &PodSpec, policy: &str) -> InitProgress {
        let mut progress = InitProgress {
            done: true,
            failed: false,
            wake: RESYNC,
        };
        for c in spec.init_containers.iter().flatten() {
            let sidecar = is_sidecar(c);
            match self.current(&c.name) {
                (_, Some(InstanceStatus::Exited(_, e))) if e.exit_code == 0 && !sidecar => {
                    continue;
                }
                (_, None) => self.start(c, 0, true).await,
                (_, Some(InstanceStatus::Starting)) => {}
                (n, Some(InstanceStatus::Running(st))) => {
                    self.watch_exit(&c.name, n, st.shim_pid);
                    if sidecar {
                        progress.wake = progress.wake.min(self.probe(c, n, &st));
                        if self.tracks.get(&c.name).is_some_and(|t| t.started) {
                            continue;
                        }
                    }
                }
                (n, Some(InstanceStatus::Exited(..))) => {
                    if policy == "Never" && !sidecar {
                        progress.failed = true;
                    } else {
                        let after = self.restart_after_backoff(c, n, true).await;
                        progress.wake = progress.wake.min(after);
                    }
                }
            }
            if sidecar && self.initialized {
                continue;
            }
            progress.done = false;
            break;
        }
        if progress.done {
            self.initialized = true;
        }
        progress
    }

    /// Keep the app containers running: start them, watch and probe the running ones, and
    /// restart the exited ones the restart policy brings back. Returns when to look again.
    async fn run_app_containers(&mut self, spec: &PodSpec, policy: &str) -> Duration {
        let mut wake = RESYNC;
        for c in &spec.containers {
            match self.current(&c.name) {
                (_, None) => self.start(c, 0, false).await,
                (_, Some(InstanceStatus::Starting)) => {}
                (n, Some(InstanceStatus::Running(st))) => {
                    self.watch_exit(&c.name, n, st.shim_pid);
                    wake = wake.min(self.probe(c, n, &st));
                }
                (n, Some(InstanceStatus::Exited(_, e))) => {
                    if should_restart(policy, e.exit_code) {
                        wake = wake.min(self.restart_after_backoff(c, n, false).await);
                    }
                }
            }
        }
        wake
    }

    /// A finished pod keeps its logs and status but gives back its address and processes,
    /// as the kubelet does.
    async fn finish(&mut self) {
        self.finished = true;
        self.kill_all(Duration::ZERO, false).await;
        let state = self.sandbox.take();
        if let Err(e) = sandbox::destroy(&self.agent, &self.uid, state.as_ref()).await {
            tracing::warn!(pod = %self.name(), "removing a finished pod's sandbox: {e:#}");
        }
    }
}

/// Where the init containers got to in one pass.
struct InitProgress {
    /// Every init container has succeeded: the app containers may run.
    done: bool,
    /// One failed and will not be retried (restartPolicy Never).
    failed: bool,
    wake: Duration,
}

fn restart_policy(spec: &PodSpec) -> String {
    spec.restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into())
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

/// A native sidecar: an init container with restartPolicy Always.
fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
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

#[cfg(test)]
mod tests;
