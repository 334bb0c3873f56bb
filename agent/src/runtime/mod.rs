//! The container runtime: pod sandboxes (pause processes holding namespaces), container
//! instances (shim + init processes), their cgroups and on-disk state. The agent re-executes
//! its own binary for each of these (`pause`, `shim`, `init`), so a node needs nothing but
//! `skiff-agent`. [`Runtime`] is the on-disk layout; what touches the kernel goes through
//! [`edge::RuntimeEdge`].

pub mod cgroup;
pub mod edge;
pub mod init;
pub mod pause;
pub mod process;
pub mod shim;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use self::edge::RuntimeEdge;
use self::spec::{ContainerExit, ContainerSpec, ContainerState, read_json, write_json_atomic};

/// Where one node's pods live on disk: `<root-dir>/pods/<uid>/…`.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub root: PathBuf,
    pub exe: PathBuf,
}

/// What became of one container instance.
#[derive(Clone, Debug, PartialEq)]
pub enum InstanceStatus {
    /// The shim was spawned but the process doesn't exist yet.
    Starting,
    Running(ContainerState),
    Exited(Option<ContainerState>, ContainerExit),
}

impl Runtime {
    pub fn new(root: &Path) -> Result<Runtime> {
        std::fs::create_dir_all(root.join("pods"))?;
        let exe = std::env::current_exe().context("finding the agent's own binary")?;
        Ok(Runtime {
            root: root.to_path_buf(),
            exe,
        })
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir().join(uid)
    }
    pub fn sandbox_state_path(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("sandbox.json")
    }
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        self.root.join("netns").join(uid)
    }
    pub fn container_dir(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid).join("containers").join(container)
    }
    pub fn instance_dir(&self, uid: &str, container: &str, restart: u32) -> PathBuf {
        self.container_dir(uid, container).join(restart.to_string())
    }
    pub fn log_dir(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid).join("logs").join(container)
    }

    /// The uids of every pod with state on disk.
    pub fn pod_uids(&self) -> Vec<String> {
        std::fs::read_dir(self.pods_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The restart counts of a container's instances on disk, ascending.
    pub fn instances(&self, uid: &str, container: &str) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(self.container_dir(uid, container))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// Start a container instance: write its spec and spawn its shim. Returns once the container
/// process exists (or the instance already ended).
pub async fn start_container(
    edge: &dyn RuntimeEdge,
    spec: &ContainerSpec,
) -> Result<InstanceStatus> {
    std::fs::create_dir_all(&spec.instance_dir)?;
    std::fs::create_dir_all(&spec.log_dir)?;
    for stale in [
        spec.state_path(),
        spec.exit_path(),
        spec.instance_dir.join(shim::START_ERROR_FILE),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    write_json_atomic(&spec.spec_path(), spec)?;
    edge.spawn_shim(&spec.spec_path())?;
    for _ in 0..500 {
        match instance_status(edge, &spec.instance_dir) {
            InstanceStatus::Starting => tokio::time::sleep(Duration::from_millis(10)).await,
            s => return Ok(s),
        }
    }
    bail!("the container shim did not start the container within 5 s")
}

/// Read an instance's state files.
pub fn instance_status(edge: &dyn RuntimeEdge, dir: &Path) -> InstanceStatus {
    let state: Option<ContainerState> = read_json(&dir.join("state.json")).ok();
    if let Ok(exit) = read_json::<ContainerExit>(&dir.join("exit.json")) {
        return InstanceStatus::Exited(state, exit);
    }
    match state {
        Some(s) => {
            if edge.is_alive(s.pid, s.start_ticks) || shim_alive(edge, &s) {
                InstanceStatus::Running(s)
            } else {
                // Both the process and its shim are gone without a record (the node
                // rebooted or someone killed the shim): report it as killed.
                InstanceStatus::Exited(
                    Some(s),
                    ContainerExit {
                        exit_code: 137,
                        signal: Some(9),
                        finished_at: spec::now_rfc3339(),
                        start_error: None,
                    },
                )
            }
        }
        None => InstanceStatus::Starting,
    }
}

fn shim_alive(edge: &dyn RuntimeEdge, s: &ContainerState) -> bool {
    // The shim is still writing the exit record.
    s.shim_pid > 0 && edge.exists(s.shim_pid)
}

/// Stop a container: SIGTERM, then SIGKILL once `grace` is over. Returns when it is gone.
pub async fn stop_process(edge: &dyn RuntimeEdge, pid: i32, ticks: u64, grace: Duration) {
    if !edge.is_alive(pid, ticks) {
        return;
    }
    edge.signal(pid, Signal::SIGTERM);
    if tokio::time::timeout(grace, edge.wait_exit(pid))
        .await
        .is_err()
        && edge.is_alive(pid, ticks)
    {
        edge.signal(pid, Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), edge.wait_exit(pid)).await;
    }
}
