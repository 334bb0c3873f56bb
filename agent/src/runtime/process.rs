//! Processes the agent did not necessarily start itself: a pause or container process
//! adopted after an agent restart is identified by pid *and* start time, and its end is
//! observed through a pidfd (works for non-children, unlike waitpid).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// Field 22 (starttime, clock ticks since boot) of /proc/<pid>/stat.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts with field 3 (state); starttime is field 22 → index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `ticks` (and not a zombie).
pub fn is_alive(pid: i32, ticks: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next().unwrap_or("X");
    if state == "Z" || state == "X" {
        return false;
    }
    fields.nth(18).and_then(|t| t.parse::<u64>().ok()) == Some(ticks)
}

pub fn signal(pid: i32, sig: Signal) -> bool {
    pid > 0 && kill(Pid::from_raw(pid), sig).is_ok()
}

/// Resolves when the process exits. Returns at once if it is already gone.
pub async fn wait_exit(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
    // no memory is passed to the kernel.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return;
    }
    // SAFETY: the syscall just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the descriptor (moved in) and deregisters it before closing.
    let Ok(async_fd) =
        (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    // A pidfd becomes readable once the process has exited.
    let _ = async_fd.readable().await;
}

/// The pids in a cgroup (v1 or v2 `cgroup.procs`).
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}
