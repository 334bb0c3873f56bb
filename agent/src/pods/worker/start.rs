//! Starting a container instance, and restarting an exited one after its back-off.

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;

use super::{Note, PodWorker, RESYNC, backoff_delay, field_path};
use crate::image::Image;
use crate::pods::hooks::{self, Hook};
use crate::pods::volumes::MountError;
use crate::runtime::spec::{ContainerExit, ContainerSpec, ContainerState};
use crate::runtime::{self, InstanceStatus};

impl PodWorker {
    /// Start instance `n` of a container: its image, its spec, the runtime's start, and the
    /// events the kubelet records on the way. What fails leaves the container waiting.
    pub(super) async fn start(&mut self, c: &Container, n: u32, init: bool) {
        let Some(image) = self.image_or_wait(c, init).await else {
            return;
        };
        let Some(spec) = self.spec_or_wait(c, n, init, &image).await else {
            return;
        };
        let pod = self.pod.clone();
        let field = field_path(c, init);
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
        match runtime::start_container(&*self.agent.edge, &spec).await {
            Ok(st) => self.announce_start(c, n, init, &image, st).await,
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

    /// The container's image from the node's store; none leaves it waiting in
    /// ErrImageNeverPull (no registry is reachable), announced once.
    async fn image_or_wait(&mut self, c: &Container, init: bool) -> Option<Image> {
        let reference = c.image.clone().unwrap_or_default();
        if let Some(image) = self.agent.images.resolve(&reference) {
            return Some(image);
        }
        let msg =
            format!("Container image \"{reference}\" is not present with pull policy of Never");
        let pod = self.pod.clone();
        let t = self.tracks.entry(c.name.clone()).or_default();
        if t.waiting.as_ref().map(|w| w.0.as_str()) != Some("ErrImageNeverPull") {
            t.waiting = Some(("ErrImageNeverPull".into(), msg.clone()));
            self.agent
                .event(&pod, field_path(c, init), true, "ErrImageNeverPull", msg)
                .await;
        }
        None
    }

    /// The instance's spec; an error leaves it waiting in CreateContainerConfigError (in
    /// ContainerCreating for a volume that is not ready), announced once per message.
    async fn spec_or_wait(
        &mut self,
        c: &Container,
        n: u32,
        init: bool,
        image: &Image,
    ) -> Option<ContainerSpec> {
        let e = match self.container_spec(c, n, image).await {
            Ok(spec) => return Some(spec),
            Err(e) => e,
        };
        let msg = format!("{e:#}");
        // A volume that is not ready keeps the container in ContainerCreating, with the
        // kubelet's FailedMount event on the pod; a bad config is CreateContainerConfigError.
        let (reason, message, field, event, text) = match e.downcast_ref::<MountError>() {
            Some(m) => ("ContainerCreating", "", None, "FailedMount", m.to_string()),
            None => (
                "CreateContainerConfigError",
                msg.as_str(),
                field_path(c, init),
                "Failed",
                format!("Error: {msg}"),
            ),
        };
        let pod = self.pod.clone();
        let t = self.tracks.entry(c.name.clone()).or_default();
        t.waiting = Some((reason.into(), message.into()));
        if t.last_error.as_ref() != Some(&msg) {
            t.last_error = Some(msg.clone());
            self.agent.event(&pod, field, true, event, text).await;
        }
        None
    }

    /// The runtime started instance `n`: it is no longer waiting or backing off. Created,
    /// then Started, or Failed when the process could not be started.
    async fn announce_start(
        &mut self,
        c: &Container,
        n: u32,
        init: bool,
        image: &Image,
        st: InstanceStatus,
    ) {
        let pod = self.pod.clone();
        let field = field_path(c, init);
        let running = match &st {
            InstanceStatus::Running(cs) => Some(cs.clone()),
            _ => None,
        };
        let t = self.tracks.entry(c.name.clone()).or_default();
        t.image_id = Some(image.id.clone());
        t.waiting = None;
        t.last_error = None;
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
        if let Some(cs) = running {
            self.post_start(c, n, init, &cs).await;
        }
    }

    /// kube's postStart: the hook runs right after the start; a failure is a
    /// FailedPostStartHook event and the container is killed (then restarted per policy).
    async fn post_start(&mut self, c: &Container, n: u32, init: bool, cs: &ContainerState) {
        let Some(handler) = Hook::PostStart.of(c).cloned() else {
            return;
        };
        let (pod_label, pod_ip) = (self.pod_label(), self.pod_ip.clone().unwrap_or_default());
        let exe = self.agent.runtime.exe.clone();
        let target = hooks::Target {
            container: c,
            pod: &pod_label,
            pod_ip: &pod_ip,
            container_pid: cs.pid,
            agent_exe: &exe,
        };
        let Err(msg) = hooks::run(&handler, &target).await else {
            return;
        };
        let pod = self.pod.clone();
        let reason = Hook::PostStart.failed_reason();
        self.agent
            .event(&pod, field_path(c, init), true, reason, msg)
            .await;
        let grace = Duration::from_secs(self.grace_period());
        self.kill_container(c, init, n, reason.to_string(), grace)
            .await;
    }

    /// Restart an exited container once its back-off is over: the first restart at once,
    /// then initial, 2×initial, … up to the cap (the kubelet's CrashLoopBackOff).
    pub(super) async fn restart_after_backoff(
        &mut self,
        c: &Container,
        n: u32,
        init: bool,
    ) -> Duration {
        let now = Instant::now();
        let (initial, max) = (self.agent.cfg.backoff_initial, self.agent.cfg.backoff_max);
        let pod = self.pod.clone();
        let msg_pod = self.pod_label();
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

    pub(super) fn watch_exit(&mut self, name: &str, n: u32, shim_pid: i32) {
        let t = self.tracks.entry(name.to_string()).or_default();
        if t.watched == Some(n) {
            return;
        }
        t.watched = Some(n);
        let (tx, edge) = (self.notes_tx.clone(), self.agent.edge.clone());
        tokio::spawn(async move {
            // The shim writes the exit record and then exits: waiting for it (rather than
            // the container) means the record is there when we look.
            edge.wait_exit(shim_pid).await;
            let _ = tx.send(Note::Exited);
        });
    }
}
