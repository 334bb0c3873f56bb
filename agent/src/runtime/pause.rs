//! `skiff-agent pause`: the process that holds a pod's namespaces, as Kubernetes' pause
//! container does. It runs before any thread exists (unshare needs a single-threaded
//! process for some namespaces), creates the namespaces, reports readiness on stdout and
//! then sleeps until told to stop.
//!
//! A new PID namespace only takes effect for the children of the process that made it, so
//! the pause process forks once after unsharing: the child is PID 1 of the pod's PID
//! namespace (reaping the orphans of containers that share it, and taking them all down
//! when it ends), the parent reports the child's pid (`ready <pid>`) and exits.

use std::io::Write;
use std::path::PathBuf;

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{ForkResult, fork};

pub struct PauseArgs {
    pub hostname: String,
    pub host_network: bool,
    pub host_pid: bool,
    pub cgroup: Option<PathBuf>,
}

/// The line the pause process reports once its namespaces exist.
pub fn ready_line(pid: i32) -> String {
    format!("ready {pid}")
}

/// The pid of the process holding the namespaces, from the pause process's report; the
/// report itself when it is an error.
pub fn parse_ready(line: &str) -> Result<i32, String> {
    let line = line.trim();
    line.strip_prefix("ready ")
        .and_then(|pid| pid.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| {
            if line.is_empty() {
                "it exited without a report".to_string()
            } else {
                line.to_string()
            }
        })
}

/// Returns the process exit code.
pub fn run(args: PauseArgs) -> i32 {
    if let Err(e) = setup(&args) {
        let _ = writeln!(std::io::stdout(), "error: {e}");
        return 1;
    }
    if !args.host_pid {
        // SAFETY: this process is single-threaded (nothing has started a thread before
        // the internal commands run), so the child may do anything after the fork.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                let _ = writeln!(std::io::stdout(), "{}", ready_line(child.as_raw()));
                return 0;
            }
            Ok(ForkResult::Child) => {}
            Err(e) => {
                let _ = writeln!(std::io::stdout(), "error: fork: {e}");
                return 1;
            }
        }
    } else {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            ready_line(std::process::id() as i32)
        );
    }
    // The agent has its report (from the parent, or above); let go of the pipe.
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return 1;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGHUP) => {}
            Ok(_) => return 0,
            Err(_) => return 1,
        }
    }
}

fn setup(args: &PauseArgs) -> Result<(), String> {
    if let Some(cg) = &args.cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", cg.display()))?;
    }
    let mut flags = CloneFlags::CLONE_NEWIPC;
    if !args.host_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if !args.host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    if !args.host_network {
        nix::unistd::sethostname(&args.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_process_holding_the_namespaces() {
        assert_eq!(parse_ready(&ready_line(4242)), Ok(4242));
        assert_eq!(parse_ready("ready 17\n"), Ok(17));
    }

    #[test]
    fn anything_else_is_the_error_it_reports() {
        assert_eq!(
            parse_ready("error: unshare: EPERM\n"),
            Err("error: unshare: EPERM".into())
        );
        assert_eq!(parse_ready(""), Err("it exited without a report".into()));
        // The report of an older pause binary carries no pid: not a pid to adopt.
        assert_eq!(parse_ready("ready"), Err("ready".into()));
        assert_eq!(parse_ready("ready 0"), Err("ready 0".into()));
    }
}
