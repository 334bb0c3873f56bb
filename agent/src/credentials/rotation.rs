//! Renewing the node's client certificate before it expires (client-go's certificate
//! manager): at a jittered 70–90 % of its lifetime the agent asks for a new one with its
//! current identity (approved as `selfnodeclient`), stores it and switches the transport to
//! it. Failures are retried with back-off; if the certificate expires unrenewed the agent
//! stops, so its supervisor restarts it through the bootstrap credentials.

use std::time::Duration;

use anyhow::{Result, bail};
use rand::Rng;

use super::certstore::{CertStore, NodeCert};
use super::request::{self, Naming};
use super::transport::RotatingTransport;

/// client-go's `nextRotationDeadline`: `notBefore + lifetime × jitter`, jitter in [0.7, 0.9).
pub fn renewal_deadline(cert: &NodeCert, jitter: f64) -> jiff::Timestamp {
    let lifetime = cert.not_after.duration_since(cert.not_before);
    let fraction = lifetime.as_secs_f64() * jitter.clamp(0.0, 1.0);
    let offset = jiff::SignedDuration::try_from_secs_f64(fraction).unwrap_or_default();
    cert.not_before
        .checked_add(offset)
        .unwrap_or(cert.not_before)
}

/// Back-off between failed renewals: doubling from 1 s to 5 min.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(9)).min(Duration::from_secs(300))
}

pub struct Rotator {
    pub store: CertStore,
    pub transport: RotatingTransport,
    pub node_name: String,
    /// How long one renewal waits for its certificate.
    pub wait: Duration,
}

impl Rotator {
    /// Renew forever; returns only when the certificate expired without a successor.
    pub async fn run(self, mut cert: NodeCert) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let deadline = renewal_deadline(&cert, rand::rng().random_range(0.7..0.9));
            tracing::info!(expires = %cert.not_after, renew_at = %deadline, "node client certificate");
            sleep_until(deadline).await;
            loop {
                match self.renew().await {
                    Ok(next) => {
                        cert = next;
                        failures = 0;
                        break;
                    }
                    Err(e) if jiff::Timestamp::now() >= cert.not_after => bail!(
                        "the node client certificate expired at {} and could not be renewed: {e:#}",
                        cert.not_after
                    ),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %format!("{e:#}"), "renewing the node client certificate");
                        tokio::time::sleep(backoff(failures)).await;
                    }
                }
            }
        }
    }

    async fn renew(&self) -> Result<NodeCert> {
        let client = self.transport.client()?;
        let next = request::request_node_certificate(
            &client,
            &self.node_name,
            Naming::Generated,
            self.wait,
        )
        .await?;
        self.store.update(&next)?;
        self.transport.present(&next)?;
        tracing::info!(expires = %next.not_after, "node client certificate renewed");
        Ok(next)
    }
}

async fn sleep_until(at: jiff::Timestamp) {
    let wait = at.duration_since(jiff::Timestamp::now());
    if let Ok(wait) = Duration::try_from(wait) {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(from: i64, to: i64) -> NodeCert {
        NodeCert {
            cert_pem: String::new(),
            key_pem: String::new(),
            not_before: jiff::Timestamp::from_second(from).unwrap(),
            not_after: jiff::Timestamp::from_second(to).unwrap(),
        }
    }

    #[test]
    fn renews_within_70_to_90_percent_of_the_lifetime() {
        let c = cert(1_000, 11_000);
        assert_eq!(renewal_deadline(&c, 0.7).as_second(), 8_000);
        assert_eq!(renewal_deadline(&c, 0.9).as_second(), 10_000);
    }

    #[test]
    fn backs_off_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
