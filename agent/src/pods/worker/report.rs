//! The pod's status: computed from the tracks and the runtime's records, sent when changed.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::{PodWorker, container_id, is_sidecar, restart_policy, should_restart};
use crate::pods::status::{self, ContainerView, Now, PodView};
use crate::runtime::{InstanceStatus, instance_status};

impl PodWorker {
    /// Compute and, if it changed, send the pod's status. Returns whether the pod is finished.
    pub(super) async fn report(&mut self, initialized: bool, init_failed: bool) -> bool {
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
        self.collect_termination_messages().await;
        let policy = restart_policy(&spec);
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
        let phase = status::phase(&view);
        let status = status::pod_status(
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
            .and_then(|d| match instance_status(&*self.agent.edge, &d) {
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
                let will_restart = if init && is_sidecar(c) {
                    true
                } else if init {
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
        let termination_messages = [Some(n), n.checked_sub(1)]
            .into_iter()
            .flatten()
            .map(|i| container_id(&self.uid, &c.name, i))
            .filter_map(|id| {
                let message = self.termination_messages.get(&id)?.clone()?;
                Some((id, message))
            })
            .collect();
        ContainerView {
            name: c.name.clone(),
            sidecar: init && is_sidecar(c),
            termination_messages,
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
}
