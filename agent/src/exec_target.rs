//! `kubectl exec`, `attach` and `port-forward` for the pods of this node: the running process of a pod's
//! container, found as the log server finds its log files.

use std::sync::Arc;

use async_trait::async_trait;

use crate::logs::instances;
use crate::pods::Agent;
use crate::pods::sandbox::host_network;
use crate::runtime::{InstanceStatus, instance_status};
use crate::server::streaming::PodNetwork;
use crate::server::{ContainerProcesses, LogLookupError};

pub struct PodProcesses(pub Arc<Agent>);

#[async_trait]
impl ContainerProcesses for PodProcesses {
    async fn container_pid(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<i32, LogLookupError> {
        let agent = &self.0;
        let p = agent.running_pod(namespace, pod)?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        // Kubelet's answer for a container that is not running (kubelet `findContainer`).
        let not_found = || LogLookupError::Internal(format!("container not found ({container:?})"));
        let latest = instances(&agent.runtime.log_dir(&uid, container))
            .ok()
            .and_then(|have| have.last().copied())
            .ok_or_else(not_found)?;
        let dir = agent.runtime.instance_dir(&uid, container, latest);
        match instance_status(&*agent.edge, &dir) {
            InstanceStatus::Running(state) => Ok(state.pid),
            _ => Err(not_found()),
        }
    }

    fn agent_exe(&self) -> std::path::PathBuf {
        self.0.runtime.exe.clone()
    }

    async fn pod_network(&self, namespace: &str, pod: &str) -> Result<PodNetwork, LogLookupError> {
        let agent = &self.0;
        let p = agent.running_pod(namespace, pod)?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        // A host-network pod's ports are the node's.
        let netns = (!host_network(&p)).then(|| agent.runtime.netns_path(&uid));
        Ok(PodNetwork { uid, netns })
    }
}
