//! Stopping containers: one whose probe failed, all of a pod's, and what runs of a pod the
//! API no longer has.

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use super::{Agent, Note, PodWorker, field_path, sandbox};
use crate::runtime::spec::{SandboxState, read_json};
use crate::runtime::{InstanceStatus, instance_status, stop_process};

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
        tokio::spawn(async move {
            stop_process(&*edge, st.pid, st.start_ticks, grace).await;
            let _ = tx.send(Note::Exited);
        });
    }

    /// Stop every running container of the pod (concurrently), waiting for them to end.
    pub(super) async fn kill_all(&mut self, grace: Duration, announce: bool) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let edge = self.agent.edge.clone();
        let mut stops = Vec::new();
        let all = spec
            .containers
            .iter()
            .map(|c| (c, false))
            .chain(spec.init_containers.iter().flatten().map(|c| (c, true)));
        for (c, init) in all {
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
                    stops.push(stop_process(&*edge, st.pid, st.start_ticks, grace));
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
