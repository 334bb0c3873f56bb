//! Running a container's probes and acting on their results: startup gates the others,
//! liveness and startup failures restart the container, readiness sets Ready.

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::time::Instant;

use super::{Note, PodWorker, ProbeTrack, RESYNC, Track, field_path};
use crate::pods::probe::{self, ProbeKind, Timing};
use crate::runtime::spec::ContainerState;

impl PodWorker {
    /// Start the probes that are due; returns when the next one is.
    pub(super) fn probe(&mut self, c: &Container, n: u32, st: &ContainerState) -> Duration {
        let now = Instant::now();
        let t = self.tracks.entry(c.name.clone()).or_default();
        let since = match t.running_since {
            Some((i, since)) if i == n => since,
            _ => {
                t.running_since = Some((n, now));
                t.ready = false;
                t.started = false;
                t.probes.clear();
                t.killing = None;
                now
            }
        };
        if c.startup_probe.is_none() {
            t.started = true;
        }
        if c.readiness_probe.is_none() {
            t.ready = t.started;
        }
        let mut next = RESYNC;
        for kind in ProbeKind::ALL {
            let Some(p) = kind.of(c) else { continue };
            if (kind == ProbeKind::Startup) == t.started {
                // Startup runs until it passes; the others only after it has.
                continue;
            }
            let timing = probe::timing(p);
            let pt = t.probes.entry(kind).or_default();
            if pt.instance != n {
                *pt = ProbeTrack {
                    instance: n,
                    ..Default::default()
                };
            }
            if pt.in_flight {
                continue;
            }
            let due = pt.next_due.unwrap_or(since + timing.initial_delay);
            if now < due {
                next = next.min(due - now);
                continue;
            }
            pt.in_flight = true;
            pt.next_due = Some(now + timing.period);
            next = next.min(timing.period);
            let (p, c2, tx) = (p.clone(), c.clone(), self.notes_tx.clone());
            let ip = self.pod_ip.clone().unwrap_or_default();
            let (pid, exe) = (st.pid, self.agent.runtime.exe.clone());
            tokio::spawn(async move {
                let result = probe::run(&p, &c2, &ip, pid, &exe).await;
                let _ = tx.send(Note::Probe {
                    container: c2.name.clone(),
                    instance: n,
                    kind,
                    result,
                });
            });
        }
        next
    }

    /// A probe finished: count it, record an Unhealthy event for a failure, and stop the
    /// container when its startup or liveness probe failed too often.
    pub(super) async fn handle(&mut self, note: Note) {
        let Note::Probe {
            container,
            instance,
            kind,
            result,
        } = note
        else {
            return;
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        let Some((c, init)) = spec
            .containers
            .iter()
            .map(|c| (c, false))
            .chain(spec.init_containers.iter().flatten().map(|c| (c, true)))
            .find(|(c, _)| c.name == container)
        else {
            return;
        };
        let Some(p) = kind.of(c) else { return };
        let timing = probe::timing(p);
        let pod = self.pod.clone();
        let t = self.tracks.entry(container.clone()).or_default();
        let Some(outcome) = t.count_probe(kind, instance, &result, &timing, &container) else {
            return;
        };
        if let Some(msg) = outcome.failed {
            self.agent
                .event(
                    &pod,
                    field_path(c, init),
                    true,
                    "Unhealthy",
                    format!("{} probe failed: {msg}", kind.name()),
                )
                .await;
        }
        if let Some(reason) = outcome.kill {
            let grace = p
                .termination_grace_period_seconds
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30);
            self.kill_container(
                c,
                init,
                instance,
                reason,
                Duration::from_secs(grace.max(0) as u64),
            )
            .await;
        }
    }
}

/// What one probe result means for its container.
struct ProbeOutcome {
    /// The failure's message, for the Unhealthy event.
    failed: Option<String>,
    /// Why the container is to be restarted.
    kill: Option<String>,
}

impl Track {
    /// Count a result of probe `kind` on `instance` and update started and ready. None when
    /// the result is for an instance the probe no longer tracks.
    fn count_probe(
        &mut self,
        kind: ProbeKind,
        instance: u32,
        result: &Result<(), String>,
        timing: &Timing,
        container: &str,
    ) -> Option<ProbeOutcome> {
        let pt = self.probes.get_mut(&kind)?;
        if pt.instance != instance {
            return None;
        }
        pt.in_flight = false;
        let failed = match result {
            Ok(()) => {
                pt.successes += 1;
                pt.failures = 0;
                None
            }
            Err(m) => {
                pt.failures += 1;
                pt.successes = 0;
                Some(m.clone())
            }
        };
        let (successes, failures) = (pt.successes, pt.failures);
        let mut kill = None;
        match kind {
            ProbeKind::Startup => {
                if successes >= 1 {
                    self.started = true;
                } else if failures >= timing.failure_threshold {
                    kill = Some(format!(
                        "Container {container} failed startup probe, will be restarted"
                    ));
                }
            }
            ProbeKind::Liveness => {
                if failures >= timing.failure_threshold {
                    kill = Some(format!(
                        "Container {container} failed liveness probe, will be restarted"
                    ));
                    pt.failures = 0;
                }
            }
            ProbeKind::Readiness => {
                if successes >= timing.success_threshold {
                    self.ready = true;
                } else if failures >= timing.failure_threshold {
                    self.ready = false;
                }
            }
        }
        Some(ProbeOutcome { failed, kill })
    }
}
