//! `skiff-agent shim`: one per container instance, like conmon. It starts the container
//! (through `skiff-agent init`), holds its stdout and stderr and writes them to the log
//! files, and records the exit status. It runs in its own session so it outlives an agent
//! that is killed or restarted: containers keep running and keep logging meanwhile.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, signal};

use super::process::start_ticks;
use super::spec::{
    ContainerExit, ContainerSpec, ContainerState, now_rfc3339, read_json, write_json_atomic,
};
use crate::logs::{LogStream, LogWriter};

pub const START_ERROR_FILE: &str = "start-error";

pub fn run(spec_path: &Path) -> i32 {
    // The agent signals the container, never the shim; ignore what a session or terminal
    // might deliver so the logs and the exit status are always recorded.
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
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
    let writer = match LogWriter::create(
        &spec.log_dir,
        spec.restart_count,
        spec.log_max_size,
        spec.log_max_files,
    ) {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            eprintln!(
                "skiff shim: opening the log in {}: {e}",
                spec.log_dir.display()
            );
            return 1;
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let child = Command::new(exe)
        .arg("init")
        .arg("--spec")
        .arg(spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let exit = ContainerExit {
                exit_code: 128,
                signal: None,
                finished_at: now_rfc3339(),
                start_error: Some(format!("starting the container process: {e}")),
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
    let (exit_code, sig) = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (255, None),
        },
        Err(_) => (255, None),
    };
    let start_error = std::fs::read_to_string(spec.instance_dir.join(START_ERROR_FILE)).ok();
    let exit = ContainerExit {
        exit_code,
        signal: sig,
        finished_at: now_rfc3339(),
        start_error,
    };
    if let Err(e) = write_json_atomic(&spec.exit_path(), &exit) {
        eprintln!("skiff shim: writing {}: {e}", spec.exit_path().display());
        return 1;
    }
    0
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
