//! The object store behind the apiserver: one trait, two backends.
//!
//! The model is etcd v3's: a flat, ordered key space, one cluster-wide revision that every
//! write bumps, per-key `create_revision` / `mod_revision`, history kept until compacted, and
//! watches that replay from any revision still in history. The apiserver maps
//! `resourceVersion` to `mod_revision` and uses compare-and-swap on it for every conditional
//! write, so both backends must give exactly these semantics (`control/tests/store.rs` runs
//! the same suite against each).

pub mod embedded;
pub mod etcd;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

/// A cluster-wide store revision (etcd's `revision`, Kubernetes' `resourceVersion`).
pub type Revision = i64;

/// One key as it stands at some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put` the new value; for `Delete` the key's last value, with `mod_revision` set to
    /// the revision of the delete itself (so a watcher can resume after it).
    pub kv: KeyValue,
    /// The value before a `Put` that modified an existing key (`None` on creation).
    pub prev: Option<KeyValue>,
}

/// A page of a range read.
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The revision the read was served at.
    pub revision: Revision,
    /// More keys follow the last returned one (the caller continues after it).
    pub more: bool,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    /// A compare-and-swap lost: the key's current `mod_revision` is not the expected one.
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The requested revision is older than the oldest kept in history.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current one.
    #[error("revision {requested} is in the future (current: {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Events in revision order. The stream ends with an `Err` when the store cannot keep the
/// watch going (e.g. the watcher fell too far behind); the caller re-lists and re-watches.
pub type WatchStream = Pin<Box<dyn Stream<Item = StoreResult<WatchEvent>> + Send>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if it exists.
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>>;

    /// Keys starting with `prefix`, in key order, strictly after `start_after` if given, at
    /// most `limit` of them (0 = no limit), as of `revision` (`None` = now).
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> StoreResult<ListResult>;

    /// Number of keys starting with `prefix` now.
    async fn count(&self, prefix: &str) -> StoreResult<usize>;

    /// Create `key`; fails with `AlreadyExists` if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> StoreResult<KeyValue>;

    /// Replace `key` if its `mod_revision` is still `expected`; `NotFound` if it is gone,
    /// `Conflict` if someone else wrote it since.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> StoreResult<KeyValue>;

    /// Delete `key` (only if its `mod_revision` is `expected`, when given). Returns the
    /// deleted value with `mod_revision` set to the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> StoreResult<KeyValue>;

    /// Changes to keys under `prefix` with a revision greater than `after`, first those
    /// already in history, then live ones. `Compacted` if `after` is no longer in history.
    async fn watch(&self, prefix: &str, after: Revision) -> StoreResult<WatchStream>;

    /// The store's current revision.
    async fn current_revision(&self) -> StoreResult<Revision>;

    /// Forget history before `revision` (keys' latest values are kept).
    async fn compact(&self, revision: Revision) -> StoreResult<()>;
}
