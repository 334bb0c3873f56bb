//! `kubectl logs` for the pods of this node: finds the container instance's log files and
//! streams them through [`crate::logs::read_logs`].

use std::sync::Arc;

use async_trait::async_trait;

use super::Agent;
use crate::logs::{ByteStream, LogOptions, instances, read_logs};
use crate::runtime::{InstanceStatus, instance_status};
use crate::server::{ContainerLogSource, LogLookupError};

pub struct PodLogs(pub Arc<Agent>);

#[async_trait]
impl ContainerLogSource for PodLogs {
    async fn container_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        opts: LogOptions,
    ) -> Result<ByteStream, LogLookupError> {
        let agent = &self.0;
        let p = agent.running_pod(namespace, pod)?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let spec = p.spec.clone().unwrap_or_default();
        let known = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == container);
        if !known {
            return Err(LogLookupError::BadRequest(format!(
                "container {container} is not valid for pod {pod}"
            )));
        }
        let dir = agent.runtime.log_dir(&uid, container);
        let have = instances(&dir).unwrap_or_default();
        let chosen = if opts.previous {
            if have.len() < 2 {
                return Err(LogLookupError::BadRequest(format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                )));
            }
            have[have.len() - 2]
        } else {
            match have.last() {
                Some(&n) => n,
                None => {
                    return Err(LogLookupError::BadRequest(format!(
                        "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                    )));
                }
            }
        };
        let instance_dir = agent.runtime.instance_dir(&uid, container, chosen);
        let edge = agent.edge.clone();
        let still_running = Box::new(move || {
            matches!(
                instance_status(&*edge, &instance_dir),
                InstanceStatus::Running(_) | InstanceStatus::Starting
            )
        });
        Ok(read_logs(&dir, chosen, &opts, still_running))
    }
}
