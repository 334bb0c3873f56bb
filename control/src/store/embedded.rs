//! The embedded store: etcd's data model in one redb file, for single-machine clusters
//! (the role SQLite-through-kine plays for k3s).
//!
//! Layout (all in one ACID redb database, fsync'd on every commit so an acknowledged write
//! survives `kill -9`):
//! - `kv`: key → (create_revision, mod_revision, value): the current state, for fast reads;
//! - `history`: (key, revision) → (kind, create_revision, value): every change, so reads at
//!   an older revision and watches from one can be served until compacted;
//! - `log`: revision → key: the changes in revision order, for watch replay;
//! - `meta`: the current and the compacted revision.
//!
//! Writes go through one writer thread that group-commits them: it takes every request queued
//! while the previous commit was being fsync'd and applies them, in arrival order, in one
//! transaction with one fsync. Concurrent writers thus share the cost of durability instead of
//! queueing for one fsync each, and no write is acknowledged before the commit that holds it.
//!
//! Live watch events fan out through a broadcast channel that the writer feeds while holding
//! the write lock, so a watcher that subscribes under the same lock sees every revision after
//! its snapshot exactly once.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{
    EventKind, KeyValue, ListResult, Revision, Store, StoreError, StoreResult, WatchEvent,
    WatchStream,
};

const KV: TableDefinition<'static, &str, (i64, i64, &[u8])> = TableDefinition::new("kv");
const HISTORY: TableDefinition<'static, (&str, i64), (u8, i64, &[u8])> =
    TableDefinition::new("history");
const LOG: TableDefinition<'static, i64, &str> = TableDefinition::new("log");
const META: TableDefinition<'static, &str, i64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

/// How many live events a watcher may fall behind before its watch is ended (it then
/// re-lists, as with etcd's slow-watcher cancellation).
const WATCH_BUFFER: usize = 16 * 1024;

/// The most writes one commit carries. Batches form only from what queued up during the
/// previous commit, so this just bounds one transaction's size and how long the writes at the
/// head of a batch wait for the ones behind them.
const MAX_BATCH: usize = 256;

fn internal<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Internal(e.to_string())
}

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// The writer thread's queue. `None` only while the store is being dropped.
    requests: Option<mpsc::Sender<WriteRequest>>,
    /// Joined on drop, so the database is closed (and can be reopened) once drop returns.
    writer: Option<JoinHandle<()>>,
}

struct Inner {
    db: Database,
    /// Held by the writer from the start of a batch's transaction until its events are
    /// broadcast (and by compaction), so that revision order, commit order and broadcast order
    /// agree and `watch` can subscribe at a consistent snapshot.
    write_lock: Mutex<()>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Transactions committed by the writer: lets tests see that writes share commits.
    commits: AtomicU64,
}

/// One write waiting for the writer thread.
struct WriteRequest {
    key: String,
    mutation: Mutation,
    reply: oneshot::Sender<StoreResult<KeyValue>>,
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir` (file `dir/store.redb`).
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(internal)?;
        {
            let mut meta = txn.open_table(META).map_err(internal)?;
            if meta.get(META_REVISION).map_err(internal)?.is_none() {
                // etcd starts at revision 1 on an empty cluster; so do we.
                meta.insert(META_REVISION, 1).map_err(internal)?;
                meta.insert(META_COMPACTED, 0).map_err(internal)?;
            }
            txn.open_table(KV).map_err(internal)?;
            txn.open_table(HISTORY).map_err(internal)?;
            txn.open_table(LOG).map_err(internal)?;
        }
        txn.commit().map_err(internal)?;
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        let inner = Arc::new(Inner {
            db,
            write_lock: Mutex::new(()),
            events,
            commits: AtomicU64::new(0),
        });
        let (requests, queue) = mpsc::channel();
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("skiff-store-writer".into())
                .spawn(move || inner.run_writer(queue))
                .map_err(|e| StoreError::Unavailable(format!("start the store writer: {e}")))?
        };
        Ok(EmbeddedStore {
            inner,
            requests: Some(requests),
            writer: Some(writer),
        })
    }

    /// How many transactions the writer has committed since the store was opened (each
    /// carrying one or more writes).
    #[doc(hidden)]
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Hands a write to the writer thread and waits for its commit.
    async fn write(&self, key: &str, mutation: Mutation) -> StoreResult<KeyValue> {
        let requests = self.requests.as_ref().ok_or_else(writer_stopped)?;
        let (reply, answer) = oneshot::channel();
        // Enqueued before the first await: writes issued one after another by one task are
        // applied in that order even if it does not wait for each one.
        requests
            .send(WriteRequest {
                key: key.to_string(),
                mutation,
                reply,
            })
            .map_err(|_| writer_stopped())?;
        // A dropped reply means the writer died (panicked) before answering.
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn blocking<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(internal)?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; joining it drops
        // its handle on the database, so the file is closed (once no read is still running)
        // and the watch channel closes, ending live watches with an error.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take() {
            // A writer that panicked has nothing left to clean up.
            let _ = writer.join();
        }
    }
}

/// Where a scan for keys under `prefix` strictly after `start_after` begins: a `start_after`
/// sorting before the prefix must not start the scan outside it (that would end it at once).
fn range_start<'a>(prefix: &'a str, start_after: Option<&'a str>) -> &'a str {
    match start_after {
        Some(after) if after > prefix => after,
        _ => prefix,
    }
}

/// What a write wants to do to one key, decided by the writer from the key's state at that
/// point of its batch.
enum Mutation {
    Create(Vec<u8>),
    Update(Vec<u8>, Revision),
    Delete(Option<Revision>),
}

/// What `mutation` does to `key` given its `current` state, as the event of a write at
/// `revision`; or why it cannot be done.
fn plan(
    key: &str,
    mutation: Mutation,
    current: Option<KeyValue>,
    revision: Revision,
) -> StoreResult<WatchEvent> {
    Ok(match (mutation, current) {
        (Mutation::Create(_), Some(_)) => {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        (Mutation::Create(value), None) => WatchEvent {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_string(),
                value,
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        },
        (Mutation::Update(..) | Mutation::Delete(_), None) => {
            return Err(StoreError::NotFound(key.to_string()));
        }
        (Mutation::Update(value, expected), Some(cur)) => {
            if cur.mod_revision != expected {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    actual: cur.mod_revision,
                });
            }
            WatchEvent {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision: cur.create_revision,
                    mod_revision: revision,
                },
                prev: Some(cur),
            }
        }
        (Mutation::Delete(expected), Some(cur)) => {
            if let Some(expected) = expected
                && cur.mod_revision != expected
            {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    actual: cur.mod_revision,
                });
            }
            WatchEvent {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_revision: revision,
                    ..cur
                },
                prev: None,
            }
        }
    })
}

impl Inner {
    fn meta(&self, txn: &redb::ReadTransaction, name: &str) -> StoreResult<i64> {
        let meta = txn.open_table(META).map_err(internal)?;
        Ok(meta
            .get(name)
            .map_err(internal)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// The write lock. Poisoned means a writer panicked mid-batch: refuse rather than guess.
    fn lock_writes(&self) -> StoreResult<MutexGuard<'_, ()>> {
        self.write_lock
            .lock()
            .map_err(|_| StoreError::Unavailable("a store writer panicked".into()))
    }

    /// The writer thread: group-commits queued writes until the store is dropped.
    fn run_writer(&self, queue: mpsc::Receiver<WriteRequest>) {
        // `recv` fails only once the store has dropped its sender and the queue is empty.
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let (writes, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|r| ((r.key, r.mutation), r.reply))
                .unzip();
            let outcomes = self.write_batch(writes);
            // Only now, after the commit and the broadcast: an acknowledged write is durable
            // and a watcher that saw nothing of it yet will.
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // The caller may have given up waiting; the write stands regardless.
                let _ = reply.send(outcome);
            }
        }
    }

    /// Applies `writes` in order in one transaction, commits it and broadcasts the events;
    /// returns each write's outcome, in order.
    fn write_batch(&self, writes: Vec<(String, Mutation)>) -> Vec<StoreResult<KeyValue>> {
        let n = writes.len();
        let guard = match self.lock_writes() {
            Ok(guard) => guard,
            Err(e) => return vec![Err(e); n],
        };
        match self.commit_batch(writes) {
            Ok((outcomes, events)) => {
                for event in events {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(event);
                }
                drop(guard);
                outcomes
            }
            // Nothing was committed, so nothing of the batch happened: even a write that
            // failed logically may have failed only because of an earlier, now undone one.
            Err(e) => vec![Err(e); n],
        }
    }

    /// The transaction of one batch: each write sees the ones before it; one that fails
    /// logically (exists, missing, lost CAS) changes nothing and takes no revision. Returns
    /// the outcomes and, in revision order, the events to broadcast.
    #[allow(clippy::type_complexity)]
    fn commit_batch(
        &self,
        writes: Vec<(String, Mutation)>,
    ) -> StoreResult<(Vec<StoreResult<KeyValue>>, Vec<Arc<WatchEvent>>)> {
        let txn = self.db.begin_write().map_err(internal)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut events = Vec::new();
        {
            let mut kv = txn.open_table(KV).map_err(internal)?;
            let mut history = txn.open_table(HISTORY).map_err(internal)?;
            let mut log = txn.open_table(LOG).map_err(internal)?;
            let mut meta = txn.open_table(META).map_err(internal)?;
            let mut revision = meta
                .get(META_REVISION)
                .map_err(internal)?
                .map(|v| v.value())
                .unwrap_or(1);
            for (key, mutation) in writes {
                let key = key.as_str();
                let current: Option<KeyValue> = kv.get(key).map_err(internal)?.map(|g| {
                    let (create_revision, mod_revision, value) = g.value();
                    KeyValue {
                        key: key.to_string(),
                        value: value.to_vec(),
                        create_revision,
                        mod_revision,
                    }
                });
                let event = match plan(key, mutation, current, revision + 1) {
                    Ok(event) => event,
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                };
                revision += 1;
                // A storage error here leaves the transaction half-applied: the `?` drops it
                // uncommitted and fails the whole batch.
                let kind = match event.kind {
                    EventKind::Put => {
                        kv.insert(
                            key,
                            (
                                event.kv.create_revision,
                                revision,
                                event.kv.value.as_slice(),
                            ),
                        )
                        .map_err(internal)?;
                        KIND_PUT
                    }
                    EventKind::Delete => {
                        kv.remove(key).map_err(internal)?;
                        KIND_DELETE
                    }
                };
                history
                    .insert(
                        (key, revision),
                        (kind, event.kv.create_revision, event.kv.value.as_slice()),
                    )
                    .map_err(internal)?;
                log.insert(revision, key).map_err(internal)?;
                outcomes.push(Ok(event.kv.clone()));
                events.push(Arc::new(event));
            }
            if events.is_empty() {
                // Only failed writes: nothing to commit (dropping the transaction aborts it),
                // and no fsync to pay.
                return Ok((outcomes, events));
            }
            meta.insert(META_REVISION, revision).map_err(internal)?;
        }
        txn.commit().map_err(internal)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok((outcomes, events))
    }

    fn list_current(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListResult> {
        let txn = self.db.begin_read().map_err(internal)?;
        let revision = self.meta(&txn, META_REVISION)?;
        let kv = txn.open_table(KV).map_err(internal)?;
        let mut out = ListResult {
            revision,
            ..Default::default()
        };
        for entry in kv
            .range(range_start(prefix, start_after)..)
            .map_err(internal)?
        {
            let (k, v) = entry.map_err(internal)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if Some(key) == start_after {
                continue;
            }
            if limit > 0 && out.items.len() == limit {
                out.more = true;
                break;
            }
            let (create_revision, mod_revision, value) = v.value();
            out.items.push(KeyValue {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision,
            });
        }
        Ok(out)
    }

    /// A read at an older revision: for every key under the prefix, its latest history entry
    /// at or before `at`, if that entry is a put.
    fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: Revision,
    ) -> StoreResult<ListResult> {
        let txn = self.db.begin_read().map_err(internal)?;
        let current = self.meta(&txn, META_REVISION)?;
        let compacted = self.meta(&txn, META_COMPACTED)?;
        if at > current {
            return Err(StoreError::FutureRevision {
                requested: at,
                current,
            });
        }
        if at < compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted,
            });
        }
        let history = txn.open_table(HISTORY).map_err(internal)?;
        let mut out = ListResult {
            revision: at,
            ..Default::default()
        };
        let start = range_start(prefix, start_after);
        // The best candidate so far for the key being scanned.
        let mut pending: Option<KeyValue> = None;
        let flush = |pending: &mut Option<KeyValue>, out: &mut ListResult| -> bool {
            if let Some(kv) = pending.take() {
                if limit > 0 && out.items.len() == limit {
                    out.more = true;
                    return false;
                }
                out.items.push(kv);
            }
            true
        };
        let mut last_key: Option<String> = None;
        for entry in history.range((start, i64::MIN)..).map_err(internal)? {
            let (k, v) = entry.map_err(internal)?;
            let (key, rev) = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if Some(key) == start_after {
                continue;
            }
            if last_key.as_deref() != Some(key) {
                if !flush(&mut pending, &mut out) {
                    return Ok(out);
                }
                last_key = Some(key.to_string());
            }
            if rev > at {
                continue;
            }
            let (kind, create_revision, value) = v.value();
            pending = (kind == KIND_PUT).then(|| KeyValue {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: rev,
            });
        }
        flush(&mut pending, &mut out);
        Ok(out)
    }

    /// Events with a revision in `(after, upto]` for keys under `prefix`, in order.
    fn replay(
        &self,
        prefix: &str,
        after: Revision,
        upto: Revision,
    ) -> StoreResult<Vec<WatchEvent>> {
        let txn = self.db.begin_read().map_err(internal)?;
        let log = txn.open_table(LOG).map_err(internal)?;
        let history = txn.open_table(HISTORY).map_err(internal)?;
        let mut events = Vec::new();
        for entry in log.range(after + 1..=upto).map_err(internal)? {
            let (rev, key) = entry.map_err(internal)?;
            let (rev, key) = (rev.value(), key.value());
            if !key.starts_with(prefix) {
                continue;
            }
            let Some(change) = history.get((key, rev)).map_err(internal)? else {
                continue;
            };
            let (kind, create_revision, value) = change.value();
            let kv = KeyValue {
                key: key.to_string(),
                value: value.to_vec(),
                create_revision,
                mod_revision: rev,
            };
            let event = if kind == KIND_DELETE {
                WatchEvent {
                    kind: EventKind::Delete,
                    kv,
                    prev: None,
                }
            } else {
                // The previous value of this incarnation, if the put was a modification.
                let prev = if create_revision < rev {
                    let mut older = history
                        .range((key, create_revision)..(key, rev))
                        .map_err(internal)?;
                    match older.next_back() {
                        Some(e) => {
                            let (k, v) = e.map_err(internal)?;
                            let (_, prev_rev) = k.value();
                            let (_, prev_create, prev_value) = v.value();
                            Some(KeyValue {
                                key: key.to_string(),
                                value: prev_value.to_vec(),
                                create_revision: prev_create,
                                mod_revision: prev_rev,
                            })
                        }
                        None => None,
                    }
                } else {
                    None
                };
                WatchEvent {
                    kind: EventKind::Put,
                    kv,
                    prev,
                }
            };
            events.push(event);
        }
        Ok(events)
    }

    fn compact(&self, revision: Revision) -> StoreResult<()> {
        // Taken, like a batch, for the whole transaction: compaction never interleaves with one.
        let _guard = self.lock_writes()?;
        let txn = self.db.begin_write().map_err(internal)?;
        {
            let mut meta = txn.open_table(META).map_err(internal)?;
            let current = meta
                .get(META_REVISION)
                .map_err(internal)?
                .map(|v| v.value())
                .unwrap_or(1);
            let compacted = meta
                .get(META_COMPACTED)
                .map_err(internal)?
                .map(|v| v.value())
                .unwrap_or(0);
            if revision <= compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    compacted,
                });
            }
            if revision > current {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            let mut log = txn.open_table(LOG).map_err(internal)?;
            let mut history = txn.open_table(HISTORY).map_err(internal)?;
            let mut keys: Vec<String> = Vec::new();
            for entry in log.range(..revision).map_err(internal)? {
                let (_, key) = entry.map_err(internal)?;
                keys.push(key.value().to_string());
            }
            keys.sort();
            keys.dedup();
            for key in &keys {
                // Keep the newest change before `revision` if it is a put: reads at
                // `revision` still need it. Everything older goes.
                let mut doomed: Vec<i64> = Vec::new();
                let mut newest_put: Option<i64> = None;
                for entry in history
                    .range((key.as_str(), i64::MIN)..(key.as_str(), revision))
                    .map_err(internal)?
                {
                    let (k, v) = entry.map_err(internal)?;
                    let rev = k.value().1;
                    if let Some(prev) = newest_put.take() {
                        doomed.push(prev);
                    }
                    if v.value().0 == KIND_PUT {
                        newest_put = Some(rev);
                    } else {
                        doomed.push(rev);
                    }
                }
                for rev in doomed {
                    history.remove((key.as_str(), rev)).map_err(internal)?;
                }
            }
            log.retain_in(..revision, |_, _| false).map_err(internal)?;
            meta.insert(META_COMPACTED, revision).map_err(internal)?;
        }
        txn.commit().map_err(internal)?;
        Ok(())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(internal)?;
            let kv = txn.open_table(KV).map_err(internal)?;
            Ok(kv.get(key.as_str()).map_err(internal)?.map(|g| {
                let (create_revision, mod_revision, value) = g.value();
                KeyValue {
                    key: key.clone(),
                    value: value.to_vec(),
                    create_revision,
                    mod_revision,
                }
            }))
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> StoreResult<ListResult> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        // As with etcd, a revision <= 0 means "now".
        self.blocking(move |inner| match revision.filter(|r| *r > 0) {
            None => inner.list_current(&prefix, start_after.as_deref(), limit),
            Some(at) => inner.list_at(&prefix, start_after.as_deref(), limit, at),
        })
        .await
    }

    async fn count(&self, prefix: &str) -> StoreResult<usize> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(internal)?;
            let kv = txn.open_table(KV).map_err(internal)?;
            let mut n = 0;
            for entry in kv.range(prefix.as_str()..).map_err(internal)? {
                let (k, _) = entry.map_err(internal)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> StoreResult<KeyValue> {
        self.write(key, Mutation::Create(value)).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> StoreResult<KeyValue> {
        self.write(key, Mutation::Update(value, expected)).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> StoreResult<KeyValue> {
        self.write(key, Mutation::Delete(expected)).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> StoreResult<WatchStream> {
        let prefix = prefix.to_string();
        let (history, live, snapshot) = {
            let prefix = prefix.clone();
            self.blocking(move |inner| {
                // Subscribe and read the revision under the write lock: every event after
                // `snapshot` then arrives live, every one up to it comes from history.
                let (live, snapshot, compacted) = {
                    let _guard = inner.lock_writes()?;
                    let txn = inner.db.begin_read().map_err(internal)?;
                    (
                        inner.events.subscribe(),
                        inner.meta(&txn, META_REVISION)?,
                        inner.meta(&txn, META_COMPACTED)?,
                    )
                };
                if after + 1 < compacted {
                    return Err(StoreError::Compacted {
                        requested: after + 1,
                        compacted,
                    });
                }
                if after > snapshot {
                    return Err(StoreError::FutureRevision {
                        requested: after,
                        current: snapshot,
                    });
                }
                let history = inner.replay(&prefix, after, snapshot)?;
                Ok((history, live, snapshot))
            })
            .await?
        };
        let history = futures::stream::iter(history.into_iter().map(Ok));
        // Live events after the snapshot. The stream ends with an error when the watcher
        // lagged (the channel dropped events it had not read: it must re-list, as with etcd's
        // slow-watcher cancellation) or the store was closed.
        let live = futures::stream::unfold(Some((live, prefix)), move |state| async move {
            let (mut live, prefix) = state?;
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if event.kv.mod_revision > snapshot && event.kv.key.starts_with(&prefix) {
                            return Some((Ok((*event).clone()), Some((live, prefix))));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let err = StoreError::Unavailable(format!(
                            "watch ended: the watcher fell {n} events behind"
                        ));
                        return Some((Err(err), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let err = StoreError::Unavailable("watch ended: store closed".into());
                        return Some((Err(err), None));
                    }
                }
            }
        });
        Ok(Box::pin(history.chain(live)))
    }

    async fn current_revision(&self) -> StoreResult<Revision> {
        self.blocking(|inner| {
            let txn = inner.db.begin_read().map_err(internal)?;
            inner.meta(&txn, META_REVISION)
        })
        .await
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.blocking(move |inner| inner.compact(revision)).await
    }
}
