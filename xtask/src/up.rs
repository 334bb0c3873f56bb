//! `cargo xtask up` / `down`: run a local control plane in the foreground, and stop it.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{cargo, run, show};
use crate::{Workspace, sys};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff/control";
const PID_FILE: &str = "xtask-up.pid";
const KUBECONFIG: &str = "admin.kubeconfig";
const API_ADDR: &str = "127.0.0.1:6443";
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the control plane keeps its store, certificates and admin kubeconfig.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Use these etcd servers (comma-separated URLs) instead of the embedded store.
    #[arg(long)]
    etcd_servers: Option<String>,
    /// Skip `cargo xtask setup` (on a machine that is already set up).
    #[arg(long)]
    no_setup: bool,
}

pub fn up(ws: &Workspace, args: &UpArgs) -> Result<()> {
    let pid_file = args.data_dir.join(PID_FILE);
    if let Some(pid) = running_pid(&pid_file) {
        bail!("skiff-control is already running (pid {pid}); stop it with `cargo xtask down`");
    }
    if api_answers() {
        bail!("something already listens on {API_ADDR}; stop it first (`cargo xtask down`?)");
    }
    if !args.no_setup {
        // A fresh machine lacks protoc (the etcd client's build needs it) and the rest.
        crate::setup::setup(ws, false)?;
    }
    run(cargo()
        .current_dir(&ws.root)
        .args(["build", "-p", "skiff-control"]))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("could not create {} (root?)", args.data_dir.display()))?;

    // From here on Ctrl-C and SIGTERM are ours to forward, so the child stops cleanly and we
    // get to say goodbye. The child gets its own process group: a terminal Ctrl-C reaches only
    // us, and the child sees exactly one SIGTERM.
    sys::catch_int_and_term();
    let mut control = Command::new(ws.target.join("debug/skiff-control"));
    control.arg("--data-dir").arg(&args.data_dir);
    if let Some(servers) = &args.etcd_servers {
        control.arg("--etcd-servers").arg(servers);
    }
    control.process_group(0);
    println!("$ {}", show(&control));
    let mut child = control.spawn().context("could not start skiff-control")?;
    std::fs::write(&pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("could not write {}", pid_file.display()))?;

    let result = supervise(&mut child, &args.data_dir);
    if read_pid(&pid_file) == Some(child.id()) {
        let _ = std::fs::remove_file(&pid_file);
    }
    result
}

/// Waits for readiness, tells the user what to try, then waits for the child to end.
fn supervise(child: &mut Child, data_dir: &Path) -> Result<()> {
    let kubeconfig = data_dir.join(KUBECONFIG);
    let mut stop = Stopper::default();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("skiff-control exited before it was ready ({status})");
        }
        if stop.forward(child)? {
            return finish(child, true);
        }
        if kubeconfig.exists() && api_answers() {
            break;
        }
        if start.elapsed() > READY_TIMEOUT {
            let _ = sys::send_signal(child.id(), sys::SIGTERM);
            let _ = child.wait();
            bail!(
                "skiff-control did not answer on {API_ADDR} with {} present after {:?}",
                kubeconfig.display(),
                READY_TIMEOUT
            );
        }
        sleep(POLL);
    }
    print_next_steps(&kubeconfig, start.elapsed());
    loop {
        if stop.forward(child)? || child.try_wait()?.is_some() {
            return finish(child, stop.requested());
        }
        sleep(POLL);
    }
}

/// Forwards our SIGINT/SIGTERM to the child: the first as SIGTERM, any later one as SIGKILL.
#[derive(Default)]
struct Stopper {
    forwarded: usize,
}

impl Stopper {
    /// Forwards new signals; true once a stop has been requested.
    fn forward(&mut self, child: &Child) -> Result<bool> {
        let received = sys::received();
        if received > self.forwarded {
            if self.forwarded == 0 {
                println!("\nstopping skiff-control (SIGTERM; press Ctrl-C again to kill it)");
                sys::send_signal(child.id(), sys::SIGTERM)?;
            } else {
                println!("\nkilling skiff-control (SIGKILL)");
                sys::send_signal(child.id(), sys::SIGKILL)?;
            }
            self.forwarded = received;
        }
        Ok(self.requested())
    }

    fn requested(&self) -> bool {
        self.forwarded > 0
    }
}

/// Waits for the child (Ctrl-C still escalates to SIGKILL) and reports how it ended.
fn finish(child: &mut Child, stop_requested: bool) -> Result<()> {
    let mut stop = Stopper {
        forwarded: usize::from(stop_requested),
    };
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        stop.forward(child)?;
        sleep(POLL);
    };
    if status.success() || stop_requested {
        println!("skiff-control stopped ({status}). Bye.");
        Ok(())
    } else {
        bail!("skiff-control exited on its own ({status})")
    }
}

fn print_next_steps(kubeconfig: &Path, took: Duration) {
    let kc = kubeconfig.display();
    println!(
        "\nskiff control plane is up on https://{API_ADDR} (ready in {took:.1?}).\n\
         kubeconfig: {kc}\n\n\
         Try, in another terminal:\n\
         \x20 export KUBECONFIG={kc}\n\
         \x20 kubectl get ns\n\
         \x20 kubectl create deployment web --image=busybox --replicas=2\n\
         \x20 kubectl get deployments,replicasets,pods\n\
         \x20 kubectl get events -w\n\n\
         Ctrl-C here (or `cargo xtask down`) stops it.\n"
    );
}

fn api_answers() -> bool {
    let addr: SocketAddr = API_ADDR.parse().expect("valid address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// `cargo xtask down`: SIGTERM to the control plane recorded in the pid file, then wait.
pub fn down(data_dir: &Path) -> Result<()> {
    let pid_file = data_dir.join(PID_FILE);
    let Some(pid) = read_pid(&pid_file) else {
        println!("nothing to stop: no {}", pid_file.display());
        return Ok(());
    };
    if !is_skiff_control(pid) {
        println!(
            "process {pid} is gone; removing the stale {}",
            pid_file.display()
        );
        let _ = std::fs::remove_file(&pid_file);
        return Ok(());
    }
    println!("stopping skiff-control (pid {pid}) with SIGTERM");
    sys::send_signal(pid, sys::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_skiff_control(pid) {
        if Instant::now() > deadline {
            bail!("skiff-control (pid {pid}) still runs 30 s after SIGTERM; `kill -9 {pid}`");
        }
        sleep(POLL);
    }
    let _ = std::fs::remove_file(&pid_file);
    println!("skiff-control stopped");
    // Later: also remove the agent's kernel state here (links, routes, rules, BPF pins).
    Ok(())
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

fn running_pid(pid_file: &Path) -> Option<u32> {
    read_pid(pid_file).filter(|&pid| is_skiff_control(pid))
}

/// Whether `pid` is a live (not zombie) skiff-control process.
fn is_skiff_control(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    comm.trim() == "skiff-control" && !matches!(state, None | Some('Z' | 'X'))
}
