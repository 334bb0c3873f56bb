//! `skiff-agent shim`: one per container instance, like conmon. It starts the container
//! (through `skiff-agent init`), holds its stdout and stderr and writes them to the log
//! files, and records the exit status. It runs in its own session so it outlives an agent
//! that is killed or restarted: containers keep running and keep logging meanwhile.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigHandler, Signal, signal};

use super::process::start_ticks;
use super::spec::{
    ContainerExit, ContainerSpec, ContainerState, PidNamespace, now_rfc3339, read_json,
    write_json_atomic,
};
use crate::logs::{LogStream, LogWriter};

pub const START_ERROR_FILE: &str = "start-error";

/// The signals the shim ignores, and gives back to the container at their defaults.
const SHIM_IGNORES: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGPIPE,
];

pub fn run(spec_path: &Path) -> i32 {
    // The agent signals the container, never the shim; ignore what a session or terminal
    // might deliver so the logs and the exit status are always recorded.
    for s in SHIM_IGNORES {
        // SAFETY: SIG_IGN installs no handler code; nothing runs asynchronously.
        unsafe {
            let _ = signal(s, SigHandler::SigIgn);
        }
    }
    let spec: ContainerSpec = match read_json(spec_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skiff shim: {e}");
            return 1;
        }
    };
    let Some(writer) = open_log(&spec) else {
        return 1;
    };
    // Back to the shim's own PID namespace once init is forked: while new children would land
    // in another one, clone(2) refuses to make threads, and the log pumps are threads.
    let own_pid_ns = std::fs::File::open("/proc/self/ns/pid");
    let started = enter_pid_namespace(&spec).and_then(|()| {
        spawn_init(spec_path).map_err(|e| format!("starting the container process: {e}"))
    });
    match &own_pid_ns {
        Ok(ns) => {
            if let Err(e) = setns(ns, CloneFlags::CLONE_NEWPID) {
                eprintln!("skiff shim: back to its own PID namespace: {e}");
            }
        }
        Err(e) => eprintln!("skiff shim: opening its own PID namespace: {e}"),
    }
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            let exit = ContainerExit {
                exit_code: 128,
                signal: None,
                finished_at: now_rfc3339(),
                start_error: Some(e),
            };
            let _ = write_json_atomic(&spec.exit_path(), &exit);
            return 0;
        }
    };
    let pid = child.id() as i32;
    let state = ContainerState {
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
        shim_pid: std::process::id() as i32,
        started_at: now_rfc3339(),
    };
    let _ = write_json_atomic(&spec.state_path(), &state);
    let status = log_until_exit(&mut child, &writer);
    let exit = exit_record(&spec, status);
    if let Err(e) = write_json_atomic(&spec.exit_path(), &exit) {
        eprintln!("skiff shim: writing {}: {e}", spec.exit_path().display());
        return 1;
    }
    0
}

fn open_log(spec: &ContainerSpec) -> Option<Arc<Mutex<LogWriter>>> {
    match LogWriter::create(
        &spec.log_dir,
        spec.restart_count,
        spec.log_max_size,
        spec.log_max_files,
    ) {
        Ok(w) => Some(Arc::new(Mutex::new(w))),
        Err(e) => {
            eprintln!(
                "skiff shim: opening the log in {}: {e}",
                spec.log_dir.display()
            );
            None
        }
    }
}

/// Make the container's process start in its PID namespace. setns and unshare of a PID
/// namespace apply to the caller's future children, never to the caller: the shim stays in
/// the node's namespace (it sees the container's pid as the agent does), `init` is forked
/// into the pod's namespace or is PID 1 of a new one.
fn enter_pid_namespace(spec: &ContainerSpec) -> Result<(), String> {
    match spec.pid_namespace {
        PidNamespace::Host => Ok(()),
        PidNamespace::Container => {
            unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(pid): {e}"))
        }
        PidNamespace::Pod => {
            let path = format!("/proc/{}/ns/pid", spec.sandbox_pid);
            let ns = std::fs::File::open(&path)
                .map_err(|e| format!("opening {path} (is the pod sandbox running?): {e}"))?;
            setns(&ns, CloneFlags::CLONE_NEWPID)
                .map_err(|e| format!("joining the pod's PID namespace: {e}"))
        }
    }
}

/// `skiff-agent init`, which becomes the container, with its output piped to the shim.
fn spawn_init(spec_path: &Path) -> std::io::Result<Child> {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut init = Command::new(exe);
    init.arg("init")
        .arg("--spec")
        .arg(spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    restore_default_signals(&mut init);
    init.spawn()
}

/// Copy the container's stdout and stderr to its log until it exits; returns how it ended.
fn log_until_exit(
    child: &mut Child,
    writer: &Arc<Mutex<LogWriter>>,
) -> std::io::Result<std::process::ExitStatus> {
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, LogStream::Stdout, writer.clone()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, LogStream::Stderr, writer.clone()));
    }
    let status = child.wait();
    // A process the container left behind may hold the pipes open; don't wait for it forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for p in pumps {
        while !p.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Ok(mut w) = writer.lock() {
        let _ = w.flush_partial();
    }
    status
}

/// The exit record: the code (128 + signal when killed) and what init reported failing.
fn exit_record(
    spec: &ContainerSpec,
    status: std::io::Result<std::process::ExitStatus>,
) -> ContainerExit {
    let (exit_code, sig) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (255, None),
        },
        Err(_) => (255, None),
    };
    let start_error = std::fs::read_to_string(spec.instance_dir.join(START_ERROR_FILE)).ok();
    ContainerExit {
        exit_code,
        signal: sig,
        finished_at: now_rfc3339(),
        start_error,
    }
}

/// An ignored signal stays ignored across fork and exec, and a shell cannot even trap a
/// signal ignored on entry (POSIX): a container started with the shim's SIG_IGN for SIGTERM
/// never heard the agent's SIGTERM and sat out the whole grace period until SIGKILL. The
/// container process starts with every signal at its default, as under any runtime.
fn restore_default_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls signal(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            for s in SHIM_IGNORES {
                signal(s, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

fn pump(
    mut from: impl Read + Send + 'static,
    stream: LogStream,
    writer: Arc<Mutex<LogWriter>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Ok(mut w) = writer.lock() {
                        let _ = w.write(stream, &buf[..n]);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// `sh` whose trap exits 7 on SIGTERM, started with SIGTERM ignored as the shim has it.
    fn shell_started_by_the_shim() -> Command {
        let mut sh = Command::new("sh");
        sh.args(["-c", "trap 'exit 7' TERM; kill -TERM $$; sleep 2; exit 0"]);
        // SAFETY: only signal(2) between fork and exec.
        unsafe {
            sh.pre_exec(|| {
                signal(Signal::SIGTERM, SigHandler::SigIgn).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        sh
    }

    /// The container hears SIGTERM although the shim ignores it: its trap runs. Without the
    /// reset the shell may not even trap it (ignored on entry) and sleeps on.
    #[test]
    fn the_container_hears_sigterm_although_the_shim_ignores_it() {
        let unreset = shell_started_by_the_shim().status().unwrap();
        assert_eq!(
            unreset.code(),
            Some(0),
            "premise: an ignored SIGTERM cannot be trapped"
        );
        let mut sh = shell_started_by_the_shim();
        restore_default_signals(&mut sh);
        let status = sh.status().unwrap();
        assert_eq!(status.code(), Some(7), "the trap did not run: {status:?}");
    }
}
