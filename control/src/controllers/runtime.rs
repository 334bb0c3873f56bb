//! The one controller runtime: kube's `Controller` (watch → reflector → debounced, rate-limited
//! queue → reconcile, with periodic requeue as resync), plus the helpers every reconcile
//! function shares: per-object exponential back-off, owner references, pod predicates.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use kube::Resource;
use kube::runtime::Controller;
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::Context;
use crate::apiserver::selectors;

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

/// Wait until an informer's first list is in its cache. kube's `Store::wait_until_ready` sits
/// on a oneshot channel, which wakes only the last of several concurrent waiters and leaves
/// the others pending for ever; so every waiter here polls instead.
pub async fn cache_ready<K>(store: &kube::runtime::reflector::Store<K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    use futures::FutureExt;
    loop {
        match store.wait_until_ready().now_or_never() {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(Error::other(format!("informer stopped: {e}"))),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// An owner reference to `owner` marking it as the controller, as controllers set on what
/// they create (so the garbage collector and adoption logic recognise it).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The owners of type `O` an event on `child` concerns: its controller if that is an `O`, or,
/// for an orphan, every `O` of its namespace whose selector selects it (adoption candidates).
pub fn owners_to_notify<O, C>(
    child: &C,
    owners: &kube::runtime::reflector::Store<O>,
    selector: impl Fn(&O) -> Option<&LabelSelector>,
) -> Vec<kube::runtime::reflector::ObjectRef<O>>
where
    O: Resource<DynamicType = ()> + Clone + 'static,
    C: Resource,
{
    let ns = child.meta().namespace.clone().unwrap_or_default();
    if let Some(owner) = controller_of(child) {
        if owner.kind == O::kind(&()) {
            return vec![kube::runtime::reflector::ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    owners
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns.as_str()))
        .filter(|o| selects(selector(o), child.meta().labels.as_ref()))
        .map(|o| kube::runtime::reflector::ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Whether a typed label selector selects these labels (an empty selector selects all, a
/// missing one nothing, as for workload controllers).
pub fn selects(
    selector: Option<&LabelSelector>,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    match selectors::LabelSelector::from_label_selector(selector) {
        Ok(s) => s.matches(labels.unwrap_or(&Default::default())),
        Err(_) => false,
    }
}

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A pod that is neither finished nor being deleted (what a ReplicaSet counts).
pub fn is_pod_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds` (what Deployments call available).
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: &Time) -> bool {
    if !is_pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref());
    match since {
        Some(t) => now.0.as_second() - t.0.as_second() >= i64::from(min_ready_seconds),
        None => false,
    }
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

    #[test]
    fn selectors_on_typed_objects() {
        let sel: LabelSelector =
            serde_json::from_value(serde_json::json!({"matchLabels": {"app": "a"}})).unwrap();
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), "a".to_string())].into();
        assert!(selects(Some(&sel), Some(&labels)));
        assert!(!selects(Some(&sel), None));
        assert!(!selects(None, Some(&labels)));
        assert!(selects(Some(&LabelSelector::default()), None));
    }
}
