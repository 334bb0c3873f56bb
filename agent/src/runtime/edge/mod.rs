//! The kernel edge of the pod lifecycle, behind one syscall-style trait (as youki's
//! `syscall` module and aya's `sys`): the processes the agent watches and signals, the helper
//! processes the runtime re-executes itself as (`pause`, `shim`), the bind mounts pinning
//! network namespaces, and the pod cgroups. [`linux::LinuxEdge`] does it for real;
//! `fake::FakeRuntime` (tests only) records every call, simulates the processes, and fails
//! the calls a test asks it to, so the pod worker's logic is tested without root.
//!
//! Not behind it: what runs inside the helper processes themselves ([`super::pause`],
//! [`super::shim`], and [`super::init`] after the fork: setns, mount, pivot_root, exec). Those
//! are the kernel calls the edge's real implementation sets in motion, and stay direct
//! syscalls, as youki keeps its container-side code.

pub mod linux;

#[cfg(test)]
pub mod fake;

use std::path::{Path, PathBuf};

use anyhow::Result;
use async_trait::async_trait;
use nix::sys::signal::Signal;

use super::cgroup::Limits;

/// What the pod lifecycle needs from the kernel.
#[async_trait]
pub trait RuntimeEdge: Send + Sync + 'static {
    /// Whether `pid` is still the process that started at `ticks` (and not a zombie): a pid
    /// alone may have been reused since the agent recorded it.
    fn is_alive(&self, pid: i32, ticks: u64) -> bool;
    /// Whether any process `pid` exists, zombie or not.
    fn exists(&self, pid: i32) -> bool;
    /// Send `sig` to `pid`; false if it could not be sent.
    fn signal(&self, pid: i32, sig: Signal) -> bool;
    /// Resolves when `pid` has exited (at once if it is gone); works for non-children.
    async fn wait_exit(&self, pid: i32);

    /// Start a pod's pause process in `cgroup`; returns its pid and start ticks once its
    /// namespaces exist. Unless `host_pid`, it is PID 1 of a new PID namespace.
    async fn start_pause(
        &self,
        hostname: &str,
        host_network: bool,
        host_pid: bool,
        cgroup: &Path,
    ) -> Result<(i32, u64)>;
    /// Spawn the shim of the container instance whose spec is at `spec_path`, detached.
    fn spawn_shim(&self, spec_path: &Path) -> Result<()>;

    /// Bind-mount the network namespace of `pid` at `path`, unless already mounted there.
    fn pin_netns(&self, pid: i32, path: &Path) -> Result<()>;
    /// Undo [`RuntimeEdge::pin_netns`]; nothing to do is no error.
    fn unpin_netns(&self, path: &Path) -> Result<()>;

    /// Create the pod's cgroup; returns it.
    fn create_pod_cgroup(&self, uid: &str) -> Result<PathBuf>;
    /// The cgroups a container's process joins, created with its limits.
    fn create_container_cgroups(
        &self,
        uid: &str,
        container: &str,
        limits: Limits,
    ) -> Result<Vec<PathBuf>>;
    /// Kill whatever is left in the pod's cgroups and remove them.
    fn remove_pod_cgroups(&self, uid: &str) -> Result<()>;
}
