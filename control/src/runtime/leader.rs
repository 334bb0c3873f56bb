//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! several control-plane processes compete through the API server's optimistic concurrency;
//! one holds the Lease and works, the others wait until it has not been renewed for a whole
//! lease duration (judged by their own clocks: when they last saw the record change).
//!
//! The leader stops working as soon as it cannot renew within the renew deadline, which is
//! shorter than the lease duration, so two leaders never work at the same time.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per process (hostname + random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    pub fn new(lease_name: &str, identity: &str) -> LeaderElectionConfig {
        LeaderElectionConfig {
            lease_name: lease_name.to_string(),
            namespace: "kube-system".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("lost the {lease} lease: {why}")]
pub struct LeadershipLost {
    pub lease: String,
    pub why: String,
}

/// The last version of the record this process saw, and when it saw it change.
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    at: Instant,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaderElectionConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Wait until this process holds the lease, then run `work` while renewing it. Returns
    /// when `work` ends (after releasing the lease) or fails with [`LeadershipLost`] after
    /// stopping `work`.
    pub async fn run<F: Future<Output = ()>>(&mut self, work: F) -> Result<(), LeadershipLost> {
        let retry = self.config.retry_period;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(lease = %self.config.lease_name, error = %e, "lease attempt failed")
                }
            }
            tokio::time::sleep(jitter(retry)).await;
        }
        tracing::info!(lease = %self.config.lease_name, identity = %self.config.identity, "became leader");
        let mut last_renew = Instant::now();
        tokio::pin!(work);
        loop {
            tokio::select! {
                _ = &mut work => {
                    self.release().await;
                    return Ok(());
                }
                _ = tokio::time::sleep(retry) => {
                    match self.try_acquire_or_renew().await {
                        Ok(true) => last_renew = Instant::now(),
                        Ok(false) => {
                            return Err(LeadershipLost {
                                lease: self.config.lease_name.clone(),
                                why: "another process holds it".into(),
                            });
                        }
                        Err(e) => {
                            tracing::warn!(lease = %self.config.lease_name, error = %e, "could not renew the lease");
                        }
                    }
                    if last_renew.elapsed() > self.config.renew_deadline {
                        return Err(LeadershipLost {
                            lease: self.config.lease_name.clone(),
                            why: format!("not renewed within {:?}", self.config.renew_deadline),
                        });
                    }
                }
            }
        }
    }

    /// One round of client-go's tryAcquireOrRenew: Ok(true) when this process holds the lease.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let existing = match self.api.get_opt(&self.config.lease_name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let changed = match &self.observed {
            Some(o) => o.holder != holder || o.renew_time != spec.renew_time,
            None => true,
        };
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
        let mine = holder == self.config.identity;
        if !mine && !holder.is_empty() {
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0),
            );
            let seen = self
                .observed
                .as_ref()
                .map(|o| o.at)
                .unwrap_or_else(Instant::now);
            if seen.elapsed() < held_for {
                return Ok(false);
            }
        }
        let mut lease = existing;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
            ..Default::default()
        });
        // The resourceVersion we read makes this a compare-and-swap: of two contenders only
        // one update succeeds.
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Hand the lease back (on a clean stop) so another process need not wait it out.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(error = %e, "could not release the lease");
        }
    }
}

/// client-go waits retryPeriod × [1, 1.2) between attempts so contenders spread out.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(1.0..1.2))
}
