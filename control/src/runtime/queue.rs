//! The work queue every controller runs on: kube's `Controller` (watch → reflector → debounced,
//! rate-limited queue → reconcile, with periodic requeue as resync), client-go's per-object
//! exponential back-off, and the error a reconcile returns.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Resource;
use kube::runtime::Controller;
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::Context;

/// Why a reconcile failed; the object is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn other(msg: impl Into<String>) -> Error {
        Error::Other(msg.into())
    }

    /// The API's status code, if the API refused.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Kube(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// client-go's per-item exponential failure rate limiter: 5 ms doubling up to 1000 s, reset on
/// success, so one broken object cannot hog the queue and a fixed one is retried quickly.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1000);

    pub fn failed(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow((*n - 1).min(31));
        Self::BASE.saturating_mul(factor).min(Self::MAX)
    }

    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// `kind/namespace/name` of an object, for back-off bookkeeping and logs.
pub fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// After a successful reconcile: forget past failures and come back at the resync period.
pub fn done<K: Resource<DynamicType = ()>>(obj: &K, ctx: &Context) -> Action {
    ctx.backoff.succeeded(&key_of(obj));
    Action::requeue(ctx.config.resync_period)
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = key_of(obj.as_ref());
    let delay = ctx.backoff.failed(&key);
    // Conflicts are the normal price of optimistic concurrency; retry soon and quietly.
    if err.code() == Some(409) {
        tracing::debug!(object = %key, error = %err, "reconcile conflict; retrying");
    } else {
        tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    }
    Action::requeue(delay)
}

/// Run `controller` with `reconcile` on the shared back-off policy, as a task in `tasks`.
pub fn drive<K, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    ctx: Arc<Context>,
    concurrency: u16,
    reconcile: F,
    tasks: &mut JoinSet<()>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    ObjectRef<K>: Hash + Eq,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    let controller = controller.with_config(
        // A short debounce folds the bursts of events one change causes into one reconcile.
        Config::default()
            .concurrency(concurrency)
            .debounce(Duration::from_millis(20)),
    );
    tasks.spawn(async move {
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(controller = name, error = %e, "controller event");
                }
            })
            .await;
        tracing::info!(controller = name, "stopped");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_millis(5));
        assert_eq!(b.failed("a"), Duration::from_millis(10));
        assert_eq!(b.failed("a"), Duration::from_millis(20));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_millis(5));
        for _ in 0..64 {
            b.failed("b");
        }
        assert_eq!(b.failed("b"), Duration::from_secs(1000));
    }
}
