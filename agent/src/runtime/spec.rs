//! What the agent hands to the processes it re-executes (`pause`, `shim`, `init`) and what
//! they leave behind on disk. These files are also what a restarted agent adopts pods from,
//! so every field needed to find a running process again lives here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One container instance (one restart) as the shim and init run it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerSpec {
    pub pod_uid: String,
    pub container: String,
    pub restart_count: u32,
    /// The pause process whose network, UTS and IPC namespaces the container joins.
    pub sandbox_pid: i32,
    pub host_network: bool,
    /// Which PID namespace the container's process is started in.
    #[serde(default)]
    pub pid_namespace: PidNamespace,
    /// argv, already resolved from the pod spec and the image config.
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub uid: u32,
    pub gid: u32,
    /// Read-only image root (overlay lowerdir).
    pub image_rootfs: PathBuf,
    /// This instance's directory: `upper/`, `work/`, `rootfs/` (the overlay mount point).
    pub instance_dir: PathBuf,
    /// Files bind-mounted into the container: (host path, path inside the container).
    pub bind_files: Vec<(PathBuf, String)>,
    /// Directories bind-mounted into the container (volumes): (host path, path inside, read-only).
    pub bind_dirs: Vec<(PathBuf, String, bool)>,
    /// cgroup directories (v2 pod cgroup, v1 controller cgroups) the container joins.
    pub cgroups: Vec<PathBuf>,
    pub log_dir: PathBuf,
    pub log_max_size: u64,
    pub log_max_files: usize,
}

impl ContainerSpec {
    pub fn spec_path(&self) -> PathBuf {
        self.instance_dir.join("spec.json")
    }
    pub fn state_path(&self) -> PathBuf {
        self.instance_dir.join("state.json")
    }
    pub fn exit_path(&self) -> PathBuf {
        self.instance_dir.join("exit.json")
    }
}

/// The PID namespace of a container, as Kubernetes chooses it from the pod spec.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PidNamespace {
    /// `hostPID: true`: the node's own (and the only kind before PID namespaces existed
    /// here, so a spec written by an older agent reads as this).
    #[default]
    Host,
    /// `shareProcessNamespace: true`: the pod's, held by the pause process (its PID 1).
    Pod,
    /// Otherwise one of its own, where the container's command is PID 1.
    Container,
}

impl PidNamespace {
    pub fn of(pod: &k8s_openapi::api::core::v1::PodSpec) -> PidNamespace {
        if pod.host_pid == Some(true) {
            PidNamespace::Host
        } else if pod.share_process_namespace == Some(true) {
            PidNamespace::Pod
        } else {
            PidNamespace::Container
        }
    }
}

/// Written by the shim once the container process exists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat: tells a live process from a reused pid.
    pub start_ticks: u64,
    pub shim_pid: i32,
    pub started_at: String,
}

/// Written by the shim when the container process has ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerExit {
    /// As Kubernetes reports it: the exit status, or 128 + signal number.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
    /// Set when the container never ran its command (init failed: bad mount, missing binary).
    pub start_error: Option<String>,
}

/// Written by the agent once a sandbox is up; read back to adopt it after a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SandboxState {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub pause_pid: i32,
    pub pause_start_ticks: u64,
    pub host_network: bool,
    /// Bind mount of the pod's network namespace (kept so the namespace outlives a dead pause).
    pub netns_path: Option<PathBuf>,
    pub ip: Option<String>,
    pub host_veth: Option<String>,
    pub cgroups: Vec<PathBuf>,
    pub created_at: String,
}

/// Write JSON to `path` so a reader never sees half a file (write a temporary, then rename).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    skiff_common::fs::write_json_atomic(path, value)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    #[test]
    fn the_pid_namespace_follows_host_pid_then_share_process_namespace() {
        let spec = |host: Option<bool>, share: Option<bool>| PodSpec {
            host_pid: host,
            share_process_namespace: share,
            ..Default::default()
        };
        assert_eq!(PidNamespace::of(&spec(None, None)), PidNamespace::Container);
        assert_eq!(
            PidNamespace::of(&spec(Some(false), Some(false))),
            PidNamespace::Container
        );
        assert_eq!(PidNamespace::of(&spec(None, Some(true))), PidNamespace::Pod);
        // hostPID wins, as the API server refuses the two together anyway.
        assert_eq!(
            PidNamespace::of(&spec(Some(true), Some(true))),
            PidNamespace::Host
        );
    }

    #[test]
    fn a_spec_from_an_older_agent_ran_in_the_node_pid_namespace() {
        let mut old = serde_json::to_value(ContainerSpec::default()).unwrap();
        old.as_object_mut().unwrap().remove("pid_namespace");
        let spec: ContainerSpec = serde_json::from_value(old).unwrap();
        assert_eq!(spec.pid_namespace, PidNamespace::Host);
    }
}
