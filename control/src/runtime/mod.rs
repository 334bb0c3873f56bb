//! The runtime the controllers and the scheduler both stand on, as client-go is for
//! kube-controller-manager and kube-scheduler: API clients only, never the store.
//!
//! - [`Context`]: what every controller (and the scheduler) gets: the client, the shared
//!   [`informer::Informers`], the settings ([`config`]), an event recorder ([`events`]) and the
//!   per-object back-off;
//! - [`informer`]: one watch + reflector cache per type, shared by everybody;
//!   [`cache_ready`] waits for a cache's first list;
//! - [`queue`]: kube's rate-limited work queue with periodic resync ([`drive`]), back-off
//!   ([`Backoff`]) and the reconcile [`Error`];
//! - [`leader`]: leader election on a Lease, so only one process runs all this at a time;
//! - [`now`] and [`merge_status`], which every controller uses the same way.

pub mod config;
pub mod credentials;
pub use skiff_common::events;
pub mod informer;
pub mod leader;
pub mod queue;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use self::config::{COMPONENTS, ControllerConfig, Enabled};
use self::events::EventRecorder;
pub use self::informer::{Informer, Informers, cache_ready};
pub use self::queue::{Backoff, Error, Result, done, drive, key_of};

/// What every reconcile function gets.
pub struct Context {
    /// The controller's own client (its ServiceAccount's token; the scheduler's identity).
    pub client: Client,
    /// Shared by every controller; they watch as the controller manager.
    pub informers: Arc<Informers>,
    pub config: ControllerConfig,
    /// Events, as `kube-controller-manager` (the scheduler has its own recorder).
    pub recorder: EventRecorder,
    pub backoff: Backoff,
}

impl Context {
    /// A context for a controller that calls the API with `client` and reads `informers`
    /// (which have not started yet: controllers subscribe first).
    pub fn new(client: Client, informers: Arc<Informers>, config: ControllerConfig) -> Context {
        Context {
            recorder: EventRecorder::new(client.clone(), "kube-controller-manager"),
            informers,
            backoff: Backoff::default(),
            client,
            config,
        }
    }
}

/// Merge `patch` (`{"status": …}`, perhaps with a `metadata.resourceVersion` guard) into an
/// object's status subresource: the object as written, or `None` if it is gone (nothing
/// left to report on).
pub async fn merge_status<K>(api: &Api<K>, name: &str, patch: &Value) -> Result<Option<K>>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
