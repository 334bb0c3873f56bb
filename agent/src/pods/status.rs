//! The pod status the kubelet reports, computed from what the runtime knows: phase,
//! conditions, IPs and one ContainerStatus per container. Pure functions, unit-tested.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::runtime::spec::{ContainerExit, ContainerState as RunState};

/// Everything known about one container for its status.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: String,
    pub restart_count: u32,
    pub now: Now,
    /// The previous instance's end, for lastState.
    pub last_exit: Option<(Option<RunState>, ContainerExit, String)>,
    pub ready: bool,
    pub started: bool,
    /// An init container with restartPolicy Always: it runs beside the app containers and
    /// counts toward readiness.
    pub sidecar: bool,
    /// What exited instances left as their termination message, by container id.
    pub termination_messages: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default)]
pub enum Now {
    /// Not created yet, or between instances: (reason, message).
    #[default]
    NotStarted,
    Waiting(String, String),
    Running(RunState),
    /// Ended; `will_restart` when the restart policy brings it back.
    Exited {
        state: Option<RunState>,
        exit: ContainerExit,
        will_restart: bool,
        waiting: Option<(String, String)>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct PodView {
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub initialized: bool,
    /// An init container failed and will not be retried (restartPolicy Never).
    pub init_failed: bool,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Option<Time>,
    pub sandbox_message: Option<String>,
}

fn parse_time(s: &str) -> Option<Time> {
    s.parse::<jiff::Timestamp>().ok().map(Time)
}

fn terminated(
    state: &Option<RunState>,
    exit: &ContainerExit,
    id: &str,
    message: Option<&String>,
) -> ContainerStateTerminated {
    let reason = if exit.start_error.is_some() {
        "StartError"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerStateTerminated {
        exit_code: exit.exit_code,
        signal: exit.signal,
        reason: Some(reason.into()),
        message: exit.start_error.clone().or_else(|| message.cloned()),
        started_at: state.as_ref().and_then(|s| parse_time(&s.started_at)),
        finished_at: parse_time(&exit.finished_at),
        container_id: Some(id.to_string()),
    }
}

pub fn container_status(v: &ContainerView, default_waiting: &str) -> ContainerStatus {
    let waiting = |reason: &str, message: &str| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    };
    let mut last = v.last_exit.as_ref().map(|(s, e, id)| ContainerState {
        terminated: Some(terminated(s, e, id, v.termination_messages.get(id))),
        ..Default::default()
    });
    let state = match &v.now {
        Now::NotStarted => waiting(default_waiting, ""),
        Now::Waiting(r, m) => waiting(r, m),
        Now::Running(s) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: parse_time(&s.started_at),
            }),
            ..Default::default()
        },
        Now::Exited {
            state,
            exit,
            will_restart,
            waiting: w,
        } => {
            let t = ContainerState {
                terminated: Some(terminated(
                    state,
                    exit,
                    &v.container_id,
                    v.termination_messages.get(&v.container_id),
                )),
                ..Default::default()
            };
            match (will_restart, w) {
                // Waiting for its restart: the exit moves to lastState.
                (true, Some((r, m))) => {
                    last = Some(t);
                    waiting(r, m)
                }
                _ => t,
            }
        }
    };
    let running = matches!(v.now, Now::Running(_));
    ContainerStatus {
        name: v.name.clone(),
        image: v.image.clone(),
        image_id: v.image_id.clone(),
        container_id: (!matches!(v.now, Now::NotStarted | Now::Waiting(..)) || v.restart_count > 0)
            .then(|| v.container_id.clone()),
        ready: running && v.ready,
        started: Some(running && v.started),
        restart_count: v.restart_count as i32,
        state: Some(state),
        last_state: Some(last.unwrap_or_default()),
        ..Default::default()
    }
}

/// Kubernetes' pod phase from the containers' states.
pub fn phase(view: &PodView) -> &'static str {
    if view.init_failed {
        return "Failed";
    }
    if !view.initialized {
        return "Pending";
    }
    let (mut pending, mut running, mut restarting, mut failed) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.now {
            Now::NotStarted | Now::Waiting(..) => pending += 1,
            Now::Running(_) => running += 1,
            Now::Exited {
                will_restart: true, ..
            } => restarting += 1,
            Now::Exited { exit, .. } => {
                if exit.exit_code != 0 {
                    failed += 1;
                }
            }
        }
    }
    if pending > 0 {
        "Pending"
    } else if running > 0 || restarting > 0 {
        "Running"
    } else if failed > 0 {
        "Failed"
    } else {
        "Succeeded"
    }
}

/// The full status; condition transition times are kept from `previous` when unchanged.
pub fn pod_status(view: &PodView, previous: Option<&PodStatus>, now: Time) -> PodStatus {
    let phase = phase(view);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let conditions = conditions(view, terminal, previous, &now);
    let app_default = if view.initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.clone(),
        }]),
        pod_ip: view.pod_ip.clone(),
        pod_ips: view
            .pod_ip
            .as_ref()
            .map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: view.start_time.clone(),
        message: view.sandbox_message.clone(),
        init_container_statuses: (!view.init.is_empty()).then(|| {
            view.init
                .iter()
                .map(|c| container_status(c, "PodInitializing"))
                .collect()
        }),
        container_statuses: Some(
            view.containers
                .iter()
                .map(|c| container_status(c, app_default))
                .collect(),
        ),
        ..previous
            .cloned()
            .map(|p| PodStatus {
                qos_class: p.qos_class,
                nominated_node_name: p.nominated_node_name,
                ..Default::default()
            })
            .unwrap_or_default()
    }
}

/// The pod's conditions, as the kubelet sets them.
fn conditions(
    view: &PodView,
    terminal: bool,
    previous: Option<&PodStatus>,
    now: &Time,
) -> Vec<PodCondition> {
    // kube counts the sidecars (restartable init containers) first, then the app containers.
    let counted = || {
        view.init
            .iter()
            .filter(|c| c.sidecar)
            .chain(view.containers.iter())
    };
    let all_ready = !view.containers.is_empty()
        && counted().all(|c| matches!(c.now, Now::Running(_)) && c.ready);
    let not_ready_names: Vec<&str> = counted()
        .filter(|c| !(matches!(c.now, Now::Running(_)) && c.ready))
        .map(|c| c.name.as_str())
        .collect();
    let cond = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        condition(previous, now, type_, ok, reason, message)
    };
    let unready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_msg = format!(
        "containers with unready status: [{}]",
        not_ready_names.join(" ")
    );
    let init_msg = format!(
        "containers with incomplete status: [{}]",
        view.init
            .iter()
            .filter(|c| match &c.now {
                Now::Exited { exit, .. } => exit.exit_code != 0 || c.sidecar,
                Now::Running(_) => !(c.sidecar && c.started),
                _ => true,
            })
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    vec![
        cond(
            "PodReadyToStartContainers",
            view.pod_ip.is_some(),
            None,
            None,
        ),
        cond(
            "Initialized",
            view.initialized || terminal && !view.init_failed,
            Some("ContainersNotInitialized".into()),
            Some(init_msg),
        ),
        cond(
            "Ready",
            all_ready && !terminal,
            Some(unready_reason.into()),
            Some(unready_msg.clone()),
        ),
        cond(
            "ContainersReady",
            all_ready && !terminal,
            Some(unready_reason.into()),
            Some(unready_msg),
        ),
        cond("PodScheduled", true, None, None),
    ]
}

/// One condition; its transition time is `previous`'s while the status stays the same.
/// A reason and message only go with a False condition.
fn condition(
    previous: Option<&PodStatus>,
    now: &Time,
    type_: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let since = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: since,
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ContainerExit {
        ContainerExit {
            exit_code: code,
            signal: None,
            finished_at: "2026-01-01T00:00:01Z".into(),
            start_error: None,
        }
    }
    fn run_state() -> RunState {
        RunState {
            pid: 10,
            start_ticks: 1,
            shim_pid: 9,
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }
    fn view(now: Now) -> ContainerView {
        ContainerView {
            name: "c".into(),
            container_id: "skiff://x".into(),
            now,
            ..Default::default()
        }
    }
    fn pod(cs: Vec<ContainerView>) -> PodView {
        PodView {
            containers: cs,
            initialized: true,
            pod_ip: Some("10.244.0.2".into()),
            host_ip: "10.0.0.1".into(),
            ..Default::default()
        }
    }
    fn t() -> Time {
        Time("2026-01-01T00:00:05Z".parse().unwrap())
    }

    #[test]
    fn phases() {
        assert_eq!(phase(&pod(vec![view(Now::NotStarted)])), "Pending");
        assert_eq!(
            phase(&pod(vec![view(Now::Running(run_state()))])),
            "Running"
        );
        let restarting = Now::Exited {
            state: None,
            exit: exit(1),
            will_restart: true,
            waiting: Some(("CrashLoopBackOff".into(), "back-off".into())),
        };
        assert_eq!(phase(&pod(vec![view(restarting)])), "Running");
        let failed = Now::Exited {
            state: None,
            exit: exit(1),
            will_restart: false,
            waiting: None,
        };
        let done = Now::Exited {
            state: None,
            exit: exit(0),
            will_restart: false,
            waiting: None,
        };
        assert_eq!(phase(&pod(vec![view(done.clone())])), "Succeeded");
        assert_eq!(phase(&pod(vec![view(done), view(failed)])), "Failed");
        let mut init = pod(vec![view(Now::NotStarted)]);
        init.initialized = false;
        assert_eq!(phase(&init), "Pending");
        init.init_failed = true;
        assert_eq!(phase(&init), "Failed");
    }

    #[test]
    fn crashloop_shows_waiting_with_last_state() {
        let mut v = view(Now::Exited {
            state: Some(run_state()),
            exit: exit(1),
            will_restart: true,
            waiting: Some(("CrashLoopBackOff".into(), "back-off 10s".into())),
        });
        v.restart_count = 2;
        let s = container_status(&v, "ContainerCreating");
        assert_eq!(
            s.state.unwrap().waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        let last = s.last_state.unwrap().terminated.unwrap();
        assert_eq!(last.exit_code, 1);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(s.restart_count, 2);
        assert!(!s.ready);
    }

    #[test]
    fn ready_conditions_and_transition_times() {
        let mut c = view(Now::Running(run_state()));
        c.ready = true;
        c.started = true;
        let s1 = pod_status(&pod(vec![c.clone()]), None, t());
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .clone()
        };
        assert_eq!(ready(&s1).status, "True");
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        assert!(s1.container_statuses.as_ref().unwrap()[0].ready);
        // Unchanged → the transition time stays; flipped → it moves.
        let later = Time("2026-01-01T00:01:00Z".parse().unwrap());
        let s2 = pod_status(&pod(vec![c.clone()]), Some(&s1), later.clone());
        assert_eq!(ready(&s2).last_transition_time, Some(t()));
        c.ready = false;
        let s3 = pod_status(&pod(vec![c]), Some(&s2), later.clone());
        assert_eq!(ready(&s3).status, "False");
        assert_eq!(ready(&s3).reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(ready(&s3).last_transition_time, Some(later));
    }
}
