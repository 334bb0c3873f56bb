//! `skiff-agent pause`: the process that holds a pod's namespaces, as Kubernetes' pause
//! container does. It runs before any thread exists (unshare needs a single-threaded
//! process for some namespaces), creates the namespaces, reports readiness on stdout and
//! then sleeps until told to stop.

use std::io::Write;
use std::path::PathBuf;

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, waitpid};

pub struct PauseArgs {
    pub hostname: String,
    pub host_network: bool,
    pub cgroup: Option<PathBuf>,
}

/// Returns the process exit code.
pub fn run(args: PauseArgs) -> i32 {
    match setup(&args) {
        Ok(()) => {}
        Err(e) => {
            let _ = writeln!(std::io::stdout(), "error: {e}");
            return 1;
        }
    }
    // Tell the agent the namespaces exist, then let go of the pipe.
    let _ = writeln!(std::io::stdout(), "ready");
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
    if !args.host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    if !args.host_network {
        nix::unistd::sethostname(&args.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
    Ok(())
}
