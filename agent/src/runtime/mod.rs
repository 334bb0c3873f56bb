//! The container runtime: pod sandboxes (pause processes holding namespaces), container
//! instances (shim + init processes), their cgroups and on-disk state. The agent re-executes
//! its own binary for each of these (`pause`, `shim`, `init`), so a node needs nothing but
//! `skiff-agent`.

pub mod cgroup;
pub mod init;
pub mod pause;
pub mod process;
pub mod shim;
pub mod spec;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::Signal;
use tokio::io::AsyncBufReadExt;

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

    /// Start the pause process; returns its pid and start ticks once its namespaces exist.
    pub async fn start_pause(
        &self,
        hostname: &str,
        host_network: bool,
        cgroup: &Path,
    ) -> Result<(i32, u64)> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("pause")
            .arg("--hostname")
            .arg(hostname)
            .arg("--cgroup")
            .arg(cgroup);
        if host_network {
            cmd.arg("--host-network");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        detach(cmd.as_std_mut());
        let mut child = cmd.spawn().context("starting the pause process")?;
        let pid = child.id().context("pause exited at once")? as i32;
        let stdout = child.stdout.take().context("pause stdout")?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .context("the pause process did not report ready within 10 s")??;
        reap(child);
        if line.trim() != "ready" {
            bail!("the pause process failed: {}", line.trim());
        }
        let ticks = process::start_ticks(pid).context("the pause process exited")?;
        Ok((pid, ticks))
    }

    /// Bind-mount the pause process's network namespace at `<root>/netns/<uid>`.
    pub fn pin_netns(&self, uid: &str, pid: i32) -> Result<PathBuf> {
        let path = self.netns_path(uid);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        if !is_mount_point(&path) {
            std::fs::File::create(&path)?;
            mount(
                Some(Path::new(&format!("/proc/{pid}/ns/net"))),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| {
                format!(
                    "bind-mounting the pod's network namespace at {}",
                    path.display()
                )
            })?;
        }
        Ok(path)
    }

    pub fn unpin_netns(&self, uid: &str) -> Result<()> {
        let path = self.netns_path(uid);
        if is_mount_point(&path) {
            umount2(&path, MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", path.display()))?;
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Start a container instance: write its spec and spawn its shim. Returns once the
    /// container process exists (or the instance already ended).
    pub async fn start_container(&self, spec: &ContainerSpec) -> Result<InstanceStatus> {
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
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("shim").arg("--spec").arg(spec.spec_path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        detach(cmd.as_std_mut());
        let child = cmd.spawn().context("starting the container shim")?;
        reap(child);
        for _ in 0..500 {
            match instance_status(&spec.instance_dir) {
                InstanceStatus::Starting => tokio::time::sleep(Duration::from_millis(10)).await,
                s => return Ok(s),
            }
        }
        bail!("the container shim did not start the container within 5 s")
    }
}

/// Read an instance's state files.
pub fn instance_status(dir: &Path) -> InstanceStatus {
    let state: Option<ContainerState> = read_json(&dir.join("state.json")).ok();
    if let Ok(exit) = read_json::<ContainerExit>(&dir.join("exit.json")) {
        return InstanceStatus::Exited(state, exit);
    }
    match state {
        Some(s) => {
            if process::is_alive(s.pid, s.start_ticks) || shim_alive(&s) {
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

fn shim_alive(s: &ContainerState) -> bool {
    // The shim is still writing the exit record.
    s.shim_pid > 0 && process::start_ticks(s.shim_pid).is_some()
}

/// Stop a container: SIGTERM, then SIGKILL once `grace` is over. Returns when it is gone.
pub async fn stop_process(pid: i32, ticks: u64, grace: Duration) {
    if !process::is_alive(pid, ticks) {
        return;
    }
    process::signal(pid, Signal::SIGTERM);
    if tokio::time::timeout(grace, process::wait_exit(pid))
        .await
        .is_err()
        && process::is_alive(pid, ticks)
    {
        process::signal(pid, Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), process::wait_exit(pid)).await;
    }
}

/// New session and process group: the child must survive the agent and not get signals
/// meant for the agent's group.
fn detach(cmd: &mut std::process::Command) {
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Reap a child in the background so it never lingers as a zombie while the agent runs.
fn reap(mut child: tokio::process::Child) {
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
}

pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&p))
}
