//! [`RuntimeEdge`] on Linux: /proc, pidfds and signals for processes, the agent's own binary
//! re-executed as `pause` and `shim`, bind mounts for network namespaces, and the cgroup
//! filesystem through [`CgroupLayout`].

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::Signal;
use tokio::io::AsyncBufReadExt;

use super::RuntimeEdge;
use crate::runtime::cgroup::{CgroupLayout, Limits};
use crate::runtime::process;

pub struct LinuxEdge {
    /// The agent's own binary, re-executed as `pause` and `shim`.
    pub exe: PathBuf,
    pub cgroups: CgroupLayout,
}

#[async_trait]
impl RuntimeEdge for LinuxEdge {
    fn is_alive(&self, pid: i32, ticks: u64) -> bool {
        process::is_alive(pid, ticks)
    }

    fn exists(&self, pid: i32) -> bool {
        process::start_ticks(pid).is_some()
    }

    fn signal(&self, pid: i32, sig: Signal) -> bool {
        process::signal(pid, sig)
    }

    async fn wait_exit(&self, pid: i32) {
        process::wait_exit(pid).await
    }

    async fn start_pause(
        &self,
        hostname: &str,
        host_network: bool,
        host_pid: bool,
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
        if host_pid {
            cmd.arg("--host-pid");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        detach(cmd.as_std_mut());
        let mut child = cmd.spawn().context("starting the pause process")?;
        let stdout = child.stdout.take().context("pause stdout")?;
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .context("the pause process did not report ready within 10 s")??;
        reap(child);
        // Not the pid we spawned: in its own PID namespace the holder is the forked child.
        let pid = crate::runtime::pause::parse_ready(&line)
            .map_err(|e| anyhow::anyhow!("the pause process failed: {e}"))?;
        let ticks = process::start_ticks(pid).context("the pause process exited")?;
        Ok((pid, ticks))
    }

    fn spawn_shim(&self, spec_path: &Path) -> Result<()> {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("shim").arg("--spec").arg(spec_path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        detach(cmd.as_std_mut());
        let child = cmd.spawn().context("starting the container shim")?;
        reap(child);
        Ok(())
    }

    fn pin_netns(&self, pid: i32, path: &Path) -> Result<()> {
        pin_netns(pid, path)
    }

    fn unpin_netns(&self, path: &Path) -> Result<()> {
        unpin_netns(path)
    }

    fn create_pod_cgroup(&self, uid: &str) -> Result<PathBuf> {
        self.cgroups.create_pod(uid)
    }

    fn create_container_cgroups(
        &self,
        uid: &str,
        container: &str,
        limits: Limits,
    ) -> Result<Vec<PathBuf>> {
        self.cgroups.create_container(uid, container, limits)
    }

    fn remove_pod_cgroups(&self, uid: &str) -> Result<()> {
        self.cgroups.remove_pod(uid)
    }
}

/// Bind-mount the network namespace of `pid` at `path`.
pub fn pin_netns(pid: i32, path: &Path) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
    if !is_mount_point(path) {
        std::fs::File::create(path)?;
        mount(
            Some(Path::new(&format!("/proc/{pid}/ns/net"))),
            path,
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
    Ok(())
}

pub fn unpin_netns(path: &Path) -> Result<()> {
    if is_mount_point(path) {
        umount2(path, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", path.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
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
