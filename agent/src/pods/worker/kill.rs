//! Stopping containers: one whose probe failed, all of a pod's, and what runs of a pod the
//! API no longer has.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;

use super::{Agent, Note, PodWorker, field_path, sandbox};
use crate::pods::hooks::{self, Hook};
use crate::runtime::spec::{ContainerState, SandboxState, read_json};
use crate::runtime::{InstanceStatus, instance_status, stop_process};

/// The least time a container gets for SIGTERM after its preStop hook (kube's
/// `minimumGracePeriodInSeconds`).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

impl PodWorker {
    pub(super) async fn kill_container(
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
        let edge = self.agent.edge.clone();
        let InstanceStatus::Running(st) = instance_status(
            &*edge,
            &self.agent.runtime.instance_dir(&self.uid, &c.name, n),
        ) else {
            return;
        };
        let pod = self.pod.clone();
        self.agent
            .event(&pod, field_path(c, init), false, "Killing", message)
            .await;
        let tx = self.notes_tx.clone();
        let stop = self.stop(c, init, &st, grace);
        tokio::spawn(async move {
            stop.await;
            let _ = tx.send(Note::Exited);
        });
    }

    /// kube's `killContainer`: the preStop hook first, bounded by the grace period, then
    /// SIGTERM with what is left of it (at least 2 s after a hook), then SIGKILL.
    fn stop(
        &self,
        c: &Container,
        init: bool,
        st: &ContainerState,
        grace: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let hook = Hook::PreStop.of(c).filter(|_| !grace.is_zero()).cloned();
        let (agent, pod, container) = (self.agent.clone(), self.pod.clone(), c.clone());
        let (pod_label, pod_ip) = (self.pod_label(), self.pod_ip.clone().unwrap_or_default());
        let (pid, ticks) = (st.pid, st.start_ticks);
        async move {
            let mut grace = grace;
            if let Some(handler) = hook {
                let started = Instant::now();
                let target = hooks::Target {
                    container: &container,
                    pod: &pod_label,
                    pod_ip: &pod_ip,
                    container_pid: pid,
                    agent_exe: &agent.runtime.exe,
                };
                match tokio::time::timeout(grace, hooks::run(&handler, &target)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(msg)) => {
                        let field = field_path(&container, init);
                        let reason = Hook::PreStop.failed_reason();
                        agent.event(&pod, field, true, reason, msg).await;
                    }
                    Err(_) => tracing::info!(pod = %pod_label, container = %container.name,
                        "PreStop hook not completed in grace period"),
                }
                grace = grace
                    .saturating_sub(started.elapsed())
                    .max(MIN_GRACE_AFTER_HOOK);
            }
            stop_process(&*agent.edge, pid, ticks, grace).await;
        }
    }

    /// Stop every running container of the pod, waiting for them to end: the app containers
    /// together, then the init containers still running (sidecars), with what is left of the
    /// grace period, as kube stops sidecars after the containers they serve.
    pub(super) async fn kill_all(&mut self, grace: Duration, announce: bool) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let started = Instant::now();
        let apps: Vec<&Container> = spec.containers.iter().collect();
        self.kill_group(&apps, false, grace, announce).await;
        let inits: Vec<&Container> = spec.init_containers.iter().flatten().collect();
        let left = grace.saturating_sub(started.elapsed());
        self.kill_group(&inits, true, left, announce).await;
    }

    /// Stop the running instances of `containers` concurrently.
    async fn kill_group(
        &mut self,
        containers: &[&Container],
        init: bool,
        grace: Duration,
        announce: bool,
    ) {
        let edge = self.agent.edge.clone();
        let mut stops = Vec::new();
        for c in containers {
            for n in self.agent.runtime.instances(&self.uid, &c.name) {
                let dir = self.agent.runtime.instance_dir(&self.uid, &c.name, n);
                if let InstanceStatus::Running(st) = instance_status(&*edge, &dir) {
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
                    stops.push(self.stop(c, init, &st, grace));
                }
            }
        }
        futures::future::join_all(stops).await;
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
            let dir = agent.runtime.instance_dir(uid, &name, n);
            if let InstanceStatus::Running(st) = instance_status(&*agent.edge, &dir) {
                stops.push(stop_process(
                    &*agent.edge,
                    st.pid,
                    st.start_ticks,
                    Duration::ZERO,
                ));
            }
        }
    }
    futures::future::join_all(stops).await;
    let state = read_json::<SandboxState>(&agent.runtime.sandbox_state_path(uid)).ok();
    sandbox::destroy(agent, uid, state.as_ref()).await?;
    let _ = std::fs::remove_dir_all(agent.runtime.pod_dir(uid));
    Ok(())
}
