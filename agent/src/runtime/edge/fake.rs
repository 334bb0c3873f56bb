//! A recording stand-in for the kernel under the runtime, for unit tests of the pod
//! lifecycle without root (as youki's `syscall/test.rs` and aya's `sys/fake.rs`).
//!
//! [`FakeRuntime`] simulates the processes: a pause process per sandbox; a container and its
//! shim per instance, whose "shim" writes `state.json` at once and `exit.json` when the
//! container ends, as the real shim does. A container runs until a test ends it
//! ([`FakeRuntime::exit`]) or a signal does: SIGTERM ends it with 143 unless it was started
//! to ignore it ([`Plan::IgnoreSigterm`]), SIGKILL with 137. Every call is written to a
//! [`Recorder`], which the network's fake can share so one log shows the order across both;
//! a test can make the next call of an operation fail ([`Recorder::fail_next`]).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};
use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use super::RuntimeEdge;
use crate::runtime::cgroup::Limits;
use crate::runtime::spec::{
    ContainerExit, ContainerSpec, ContainerState, now_rfc3339, read_json, write_json_atomic,
};

/// The calls made to the fakes, in order, and the failures to inject.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<(Instant, String)>>,
    /// (operation, message): the next call of the operation fails with the message.
    faults: Mutex<Vec<(String, String)>>,
}

impl Recorder {
    /// Record `call`, whose first word names the operation; fail it if a failure was injected
    /// for that operation.
    pub fn call(&self, call: String) -> Result<()> {
        let op = call
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        self.lock_calls().push((Instant::now(), call));
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = faults.iter().position(|(o, _)| *o == op) {
            let (_, message) = faults.remove(i);
            bail!("{message}");
        }
        Ok(())
    }

    /// Make the next call of `op` fail with `message`.
    pub fn fail_next(&self, op: &str, message: &str) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((op.to_string(), message.to_string()));
    }

    pub fn calls(&self) -> Vec<String> {
        self.lock_calls().iter().map(|(_, c)| c.clone()).collect()
    }

    /// The calls with when they were made (tokio's clock, so paused time counts).
    pub fn timed_calls(&self) -> Vec<(Instant, String)> {
        self.lock_calls().clone()
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the next instance of a container does once started.
#[derive(Clone, Copy, Debug)]
pub enum Plan {
    /// Runs until ended.
    Run,
    /// Exits at once with this code.
    Exit(i32),
    /// Runs, and only SIGKILL ends it.
    IgnoreSigterm,
}

enum Role {
    Pause,
    Shim,
    Container {
        /// `<container>/<restart count>`, as calls name it.
        name: String,
        dir: PathBuf,
        shim: i32,
        ignores_sigterm: bool,
    },
}

struct Process {
    role: Role,
    alive: bool,
}

pub struct FakeRuntime {
    pub rec: Arc<Recorder>,
    processes: Mutex<HashMap<i32, Process>>,
    plans: Mutex<HashMap<String, VecDeque<Plan>>>,
    /// Bumped whenever a process ends, for [`RuntimeEdge::wait_exit`].
    exits: watch::Sender<u64>,
    root: PathBuf,
}

/// Fake processes all "started" at this tick.
const TICKS: u64 = 7;
const FIRST_PID: i32 = 1000;

impl FakeRuntime {
    /// Cgroup paths are made up under `root`; nothing is created there.
    pub fn new(rec: Arc<Recorder>, root: &Path) -> FakeRuntime {
        FakeRuntime {
            rec,
            processes: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            exits: watch::channel(0).0,
            root: root.to_path_buf(),
        }
    }

    /// What the next instances of `container` do, in order; after these, [`Plan::Run`].
    pub fn plan(&self, container: &str, plans: &[Plan]) {
        self.lock_plans()
            .entry(container.to_string())
            .or_default()
            .extend(plans);
    }

    /// End the running instance `name` (`<container>/<n>`) with `exit_code`, as if its
    /// process exited. False if no such instance runs.
    pub fn exit(&self, name: &str, exit_code: i32) -> bool {
        let pid = self.lock().iter().find_map(|(pid, p)| match &p.role {
            Role::Container { name: n, .. } if n == name && p.alive => Some(*pid),
            _ => None,
        });
        pid.is_some_and(|pid| self.end(pid, exit_code, None))
    }

    /// The pids of the pause processes still alive.
    pub fn live_pauses(&self) -> Vec<i32> {
        self.lock()
            .iter()
            .filter(|(_, p)| p.alive && matches!(p.role, Role::Pause))
            .map(|(pid, _)| *pid)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Process>> {
        self.processes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_plans(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Plan>>> {
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, role: Role) -> i32 {
        let mut procs = self.lock();
        let pid = FIRST_PID + procs.len() as i32;
        procs.insert(pid, Process { role, alive: true });
        pid
    }

    /// The name calls give `pid`: `pause`, `shim` or the container instance.
    fn name_of(&self, pid: i32) -> String {
        match self.lock().get(&pid).map(|p| &p.role) {
            Some(Role::Pause) => "pause".into(),
            Some(Role::Shim) => "shim".into(),
            Some(Role::Container { name, .. }) => name.clone(),
            None => format!("pid {pid}"),
        }
    }

    /// Process `pid` ends; a container's shim writes its exit record and ends with it.
    fn end(&self, pid: i32, exit_code: i32, signal: Option<i32>) -> bool {
        let mut procs = self.lock();
        let Some(p) = procs.get_mut(&pid).filter(|p| p.alive) else {
            return false;
        };
        p.alive = false;
        if let Role::Container { dir, shim, .. } = &p.role {
            let exit = ContainerExit {
                exit_code,
                signal,
                finished_at: now_rfc3339(),
                start_error: None,
            };
            let _ = write_json_atomic(&dir.join("exit.json"), &exit);
            let shim = *shim;
            if let Some(s) = procs.get_mut(&shim) {
                s.alive = false;
            }
        }
        drop(procs);
        self.exits.send_modify(|n| *n += 1);
        true
    }

    fn is_running(&self, pid: i32) -> bool {
        self.lock().get(&pid).is_some_and(|p| p.alive)
    }
}

#[async_trait]
impl RuntimeEdge for FakeRuntime {
    fn is_alive(&self, pid: i32, ticks: u64) -> bool {
        ticks == TICKS && self.is_running(pid)
    }

    fn exists(&self, pid: i32) -> bool {
        self.is_running(pid)
    }

    fn signal(&self, pid: i32, sig: Signal) -> bool {
        let _ = self.rec.call(format!("signal {} {sig}", self.name_of(pid)));
        let ignores_sigterm = match self.lock().get(&pid) {
            Some(p) if p.alive => {
                matches!(
                    p.role,
                    Role::Container {
                        ignores_sigterm: true,
                        ..
                    }
                )
            }
            _ => return false,
        };
        match sig {
            Signal::SIGKILL => self.end(pid, 137, Some(9)),
            Signal::SIGTERM if !ignores_sigterm => self.end(pid, 143, Some(15)),
            _ => true,
        }
    }

    async fn wait_exit(&self, pid: i32) {
        let mut exits = self.exits.subscribe();
        while self.is_running(pid) {
            if exits.changed().await.is_err() {
                return;
            }
        }
    }

    async fn start_pause(
        &self,
        hostname: &str,
        host_network: bool,
        host_pid: bool,
        cgroup: &Path,
    ) -> Result<(i32, u64)> {
        let net = if host_network { " host-network" } else { "" };
        let pid = if host_pid { " host-pid" } else { "" };
        self.rec.call(format!(
            "start_pause {hostname}{net}{pid} in {}",
            cgroup.display()
        ))?;
        Ok((self.spawn(Role::Pause), TICKS))
    }

    /// As the shim does: record the container's process in `state.json`, and its exit in
    /// `exit.json` when it ends.
    fn spawn_shim(&self, spec_path: &Path) -> Result<()> {
        let spec: ContainerSpec = read_json(spec_path)?;
        let name = format!("{}/{}", spec.container, spec.restart_count);
        self.rec.call(format!("start {name}"))?;
        let plan = self
            .lock_plans()
            .get_mut(&spec.container)
            .and_then(|p| p.pop_front())
            .unwrap_or(Plan::Run);
        let shim = self.spawn(Role::Shim);
        let pid = self.spawn(Role::Container {
            name,
            dir: spec.instance_dir.clone(),
            shim,
            ignores_sigterm: matches!(plan, Plan::IgnoreSigterm),
        });
        let state = ContainerState {
            pid,
            start_ticks: TICKS,
            shim_pid: shim,
            started_at: now_rfc3339(),
        };
        write_json_atomic(&spec.state_path(), &state)?;
        if let Plan::Exit(code) = plan {
            self.end(pid, code, None);
        }
        Ok(())
    }

    fn pin_netns(&self, pid: i32, path: &Path) -> Result<()> {
        self.rec.call(format!(
            "pin_netns {} at {}",
            self.name_of(pid),
            path.display()
        ))
    }

    fn unpin_netns(&self, path: &Path) -> Result<()> {
        self.rec.call(format!("unpin_netns {}", path.display()))
    }

    fn create_pod_cgroup(&self, uid: &str) -> Result<PathBuf> {
        self.rec.call(format!("create_pod_cgroup {uid}"))?;
        Ok(self.root.join(format!("pod{uid}")))
    }

    fn create_container_cgroups(
        &self,
        uid: &str,
        container: &str,
        _limits: Limits,
    ) -> Result<Vec<PathBuf>> {
        self.rec
            .call(format!("create_container_cgroups {uid} {container}"))?;
        Ok(vec![self.root.join(format!("pod{uid}")).join(container)])
    }

    fn remove_pod_cgroups(&self, uid: &str) -> Result<()> {
        self.rec.call(format!("remove_pod_cgroups {uid}"))
    }
}
