//! A pod's deletion: stop, report not ready, wait for the service dataplane, remove every
//! trace, confirm to the apiserver.

use std::time::Duration;

use kube::api::{DeleteParams, Preconditions};

use super::{PodWorker, sandbox};
use crate::runtime::spec::{SandboxState, read_json};

/// How long a deleted pod's network waits for the service dataplane to stop sending it new
/// connections.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

impl PodWorker {
    /// Deletion: stop containers within the grace period, remove every trace, then tell the
    /// apiserver the pod is gone (a delete with grace 0), unless it is already gone.
    pub(super) async fn terminate(&mut self, gone: bool) {
        let grace = self.grace_period();
        tracing::info!(pod = %self.name(), grace, "stopping pod");
        self.kill_all(Duration::from_secs(grace), !gone).await;
        if !gone {
            self.report_stopped().await;
        }
        let state = self.sandbox.take().or_else(|| {
            read_json::<SandboxState>(&self.agent.runtime.sandbox_state_path(&self.uid)).ok()
        });
        self.wait_for_drain(state.as_ref()).await;
        if let Err(e) = sandbox::destroy(&self.agent, &self.uid, state.as_ref()).await {
            tracing::warn!(pod = %self.name(), "removing the pod's sandbox: {e:#}");
        }
        let _ = std::fs::remove_dir_all(self.agent.runtime.pod_dir(&self.uid));
        self.forget_name();
        if !gone {
            self.confirm_deletion().await;
        }
    }

    /// The deletion's grace period, else the pod's, else 30 s.
    pub(super) fn grace_period(&self) -> u64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64
    }

    /// The containers have stopped: say so while the pod still exists (Ready=False), as the
    /// kubelet does. A last backend that kube-proxy's terminating fallback keeps (serving)
    /// then leaves the dataplane, and the drain gate does not sit out its bound.
    async fn report_stopped(&mut self) {
        let was_ready = self
            .last_status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if was_ready {
            // Not ready, whether or not the shims have recorded the exits yet.
            for t in self.tracks.values_mut() {
                t.ready = false;
            }
            self.report(true, false).await;
        }
    }

    /// Before the network goes: wait until this node's service dataplane no longer sends
    /// new connections to the pod (a same-node client's connection into a removed netns
    /// hangs until ARP fails; into the still-wired, empty pod it is refused at once).
    /// Bounded: the proxy may not have synced yet, or keep a last terminating backend.
    async fn wait_for_drain(&self, state: Option<&SandboxState>) {
        let drain_ip = state
            .filter(|s| !s.host_network && s.netns_path.is_some())
            .and_then(|s| s.ip.as_deref().or(self.pod_ip.as_deref()))
            .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
        let Some(ip) = drain_ip else { return };
        let d = self.agent.drain.wait_unprogrammed(ip, DRAIN_BOUND).await;
        if d.timed_out {
            tracing::warn!(pod = %self.name(), %ip, waited = ?d.waited,
                "the service dataplane still sends new connections to the pod; removing its network anyway");
        } else {
            tracing::info!(pod = %self.name(), %ip, waited = ?d.waited,
                "the service dataplane no longer sends new connections to the pod");
        }
    }

    /// The log server no longer finds the pod by name (unless a new pod took the name).
    fn forget_name(&self) {
        if let Ok(mut m) = self.agent.pods_by_name.lock() {
            let key = (self.namespace(), self.name());
            if m.get(&key).and_then(|p| p.metadata.uid.as_deref()) == Some(self.uid.as_str()) {
                m.remove(&key);
            }
        }
    }

    /// Tell the apiserver the pod is gone: a delete with grace 0 for this uid, retried a few
    /// times; 404 and 409 (gone, or a new pod of the same name) end it.
    async fn confirm_deletion(&self) {
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
}
