//! The etcd v3 backend: the store trait mapped one-to-one onto etcd's KV, txn and watch APIs.
//!
//! Keys are used exactly as given (the apiserver passes `/registry/<resource>/<ns>/<name>`),
//! values are opaque bytes, and every conditional write is a single etcd transaction comparing
//! `create_revision` (create) or `mod_revision` (update, delete), so the semantics are etcd's
//! own. Nothing the server sends can make this module panic: unexpected or malformed
//! responses become `StoreError::Internal`, transport trouble becomes `Unavailable`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};

use super::{
    EventKind, KeyValue, ListResult, Revision, Store, StoreError, StoreResult, WatchEvent,
    WatchStream,
};

/// Upper bound for one unary request (a hung etcd must not hang the apiserver).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Physical compaction of a large database can take a while.
const COMPACT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `connect` waits for the cluster to answer its first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for etcd to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long we wait for etcd to tell us its compaction revision (see `compacted_revision`).
const COMPACT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

// gRPC status codes we care about (`tonic::Code` is not a direct dependency of this crate).
const GRPC_CANCELLED: i32 = 1;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

// etcd's error strings (server/etcdserver/api/v3rpc/rpctypes).
const ERR_COMPACTED: &str = "required revision has been compacted";
const ERR_FUTURE_REV: &str = "required revision is a future revision";

/// A store backed by an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
}

/// One client per member, and the member in use. etcd-client balances one channel over all
/// endpoints, but a member that refuses connections fails every request the balancer routes
/// to it (etcdv3/etcd-client#12, #39); etcd's own Go client instead sticks to one member and
/// moves to the next when that one is unreachable, which is what this does.
struct Members {
    clients: Vec<(String, Client)>,
    current: AtomicUsize,
}

impl Members {
    fn current(&self) -> (usize, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].1.clone())
    }

    /// Moves on from member `failed`, unless another request already did.
    fn failed(&self, failed: usize) {
        let next = (failed + 1) % self.clients.len();
        if self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.clients.len() > 1
        {
            tracing::warn!(
                failed = %self.clients[failed].0,
                next = %self.clients[next].0,
                "etcd member unreachable; using the next one"
            );
        }
    }
}

/// Whether a request failed for want of a connection: it never reached a member, so it can
/// go to another one even when it writes. That is a refused or failed connect, and a write to
/// a connection the member had already reset (a broken pipe: the member's process is gone, it
/// cannot have read the request).
fn never_sent(err: &etcd_client::Error) -> bool {
    // The debug form carries the source chain (tonic's status keeps the transport error there).
    let text = format!("{err:?}");
    [
        "tcp connect error",
        "error trying to connect",
        "Connection refused",
        "ConnectionRefused",
        "Service was not ready",
        "BrokenPipe",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Whether the connection to the member broke under a request.
fn connection_lost(err: &etcd_client::Error) -> bool {
    let text = err.to_string();
    [
        "transport error",
        "h2 protocol error",
        "connection reset",
        "Connection reset",
        "broken pipe",
        "Broken pipe",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Whether the member that answered `err` should no longer be used.
fn member_broken(err: &etcd_client::Error) -> bool {
    never_sent(err)
        || connection_lost(err)
        || matches!(
            classify_ref(err),
            Some(GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED)
        )
        || matches!(
            err,
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)
        )
}

/// etcd's answers while its members elect a leader: nothing was done, and soon will be.
fn leaderless(err: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = err else {
        return false;
    };
    status.code() as i32 == GRPC_UNAVAILABLE
        && ["etcdserver: no leader", "etcdserver: leader changed"]
            .iter()
            .any(|m| status.message().contains(m))
}

fn classify_ref(err: &etcd_client::Error) -> Option<i32> {
    match err {
        etcd_client::Error::GRpcStatus(status) => Some(status.code() as i32),
        _ => None,
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

/// What an etcd error means for us, before the caller adds the revisions it knows about.
enum Failure {
    Compacted,
    FutureRevision,
    Other(StoreError),
}

fn classify(err: etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains(ERR_COMPACTED) {
                return Failure::Compacted;
            }
            if message.contains(ERR_FUTURE_REV) {
                return Failure::FutureRevision;
            }
            let code = status.code() as i32;
            let text = format!("etcd: {message} (grpc code {code})");
            if matches!(
                code,
                GRPC_UNAVAILABLE | GRPC_DEADLINE_EXCEEDED | GRPC_CANCELLED
            ) || message.contains("transport error")
                || message.contains("connect")
            {
                Failure::Other(StoreError::Unavailable(text))
            } else {
                Failure::Other(StoreError::Internal(text))
            }
        }
        E::TransportError(e) => Failure::Other(StoreError::Unavailable(format!("etcd: {e}"))),
        E::IoError(e) => Failure::Other(StoreError::Unavailable(format!("etcd: {e}"))),
        E::EndpointError(e) => Failure::Other(StoreError::Unavailable(format!("etcd: {e}"))),
        other => Failure::Other(StoreError::Internal(format!("etcd: {other}"))),
    }
}

/// For calls where a revision error cannot happen (or would be a bug).
fn map_err(err: etcd_client::Error) -> StoreError {
    match classify(err) {
        Failure::Compacted => StoreError::Internal(format!("etcd: {ERR_COMPACTED}")),
        Failure::FutureRevision => StoreError::Internal(format!("etcd: {ERR_FUTURE_REV}")),
        Failure::Other(e) => e,
    }
}

/// Runs one etcd request with a deadline.
async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("request timed out after {limit:?}"),
        ))),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> StoreResult<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Internal("etcd response without header".into()))
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// `TxnResponse::op_responses` unwraps a protobuf oneof; a server sending an empty or unknown
/// response op would make it panic. Contain that.
fn op_responses(resp: &TxnResponse) -> StoreResult<Vec<TxnOpResponse>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| resp.op_responses()))
        .map_err(|_| StoreError::Internal("malformed etcd txn response".into()))
}

/// The first key after every key starting with `prefix` (etcd's "range_end = prefix + 1").
/// `"\0"` means "to the end of the key space".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    for i in (0..prefix.len()).rev() {
        if prefix[i] < 0xff {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            return end;
        }
    }
    vec![0]
}

/// Is `key` at or beyond `range_end` (with `"\0"` meaning no end)?
fn past_end(key: &[u8], range_end: &[u8]) -> bool {
    range_end != [0] && key >= range_end
}

fn revision_or_now(revision: Option<Revision>) -> Option<Revision> {
    revision.filter(|r| *r > 0)
}

impl EtcdStore {
    /// Connects to an etcd cluster (`http://host:port` endpoints) and checks it answers.
    pub async fn connect(endpoints: &[String]) -> StoreResult<EtcdStore> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints given".into()));
        }
        // require_leader: a member cut off from the quorum fails requests (and cancels
        // watches) instead of serving stale data, so the store moves to another member.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let mut clients = Vec::new();
        for endpoint in endpoints {
            let client = timed(
                CONNECT_TIMEOUT,
                Client::connect([endpoint], Some(options.clone())),
            )
            .await
            .map_err(|e| match classify(e) {
                Failure::Other(StoreError::Internal(m)) => StoreError::Unavailable(m),
                Failure::Other(e) => e,
                _ => StoreError::Unavailable("cannot connect to etcd".into()),
            })?;
            clients.push((endpoint.clone(), client));
        }
        let store = EtcdStore {
            members: Arc::new(Members {
                clients,
                current: AtomicUsize::new(0),
            }),
        };
        // The channels connect lazily; make sure somebody is there.
        store
            .on_member(CONNECT_TIMEOUT, |c| async move {
                c.kv_client()
                    .get("/", Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await
            .map_err(|e| match map_err(e) {
                StoreError::Internal(m) => {
                    StoreError::Unavailable(format!("etcd at {endpoints:?} not answering: {m}"))
                }
                e => e,
            })?;
        Ok(store)
    }

    /// The client of the member in use (for callers that need etcd-specific features).
    pub fn client(&self) -> Client {
        self.members.current().1
    }

    /// Runs the read `op` on the member in use, within `limit`; when the member is gone, on
    /// the next one (each is tried once), and later requests use that one.
    ///
    /// While the cluster elects a leader (every member says "no leader"), the read is tried
    /// again for up to [`LEADER_WAIT`], as etcd's Go client retries its repeatable calls: an
    /// election takes about a second, and a read must not fail because one happened.
    async fn on_member<T, F, Fut>(&self, limit: Duration, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            match self.on_members(limit, &op, member_broken).await {
                Err(e) if leaderless(&e) && started.elapsed() + pause < LEADER_WAIT => {
                    tracing::debug!("etcd has no leader; reading again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(400));
                }
                other => return other,
            }
        }
    }

    /// Runs the write `op` as [`EtcdStore::on_member`] does a read, but sends it to the next
    /// member only when it never reached the first: a write that may have been applied is not
    /// repeated (etcd's Go client does the same), its caller sees `Unavailable`.
    async fn on_member_write<T, F, Fut>(
        &self,
        limit: Duration,
        op: F,
    ) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.on_members(limit, &op, never_sent).await
    }

    async fn on_members<T, F, Fut>(
        &self,
        limit: Duration,
        op: &F,
        retry: fn(&etcd_client::Error) -> bool,
    ) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempts = self.members.clients.len();
        loop {
            let (index, client) = self.members.current();
            match timed(limit, op(client)).await {
                Err(e) if member_broken(&e) => {
                    self.members.failed(index);
                    attempts -= 1;
                    if attempts == 0 || !retry(&e) {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.on_member_write(REQUEST_TIMEOUT, |c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })
        .await
    }

    /// etcd does not report its compaction revision in any unary response (3.4's Status has
    /// no such field), but a watch from revision 1 is cancelled with `compact_revision` set to
    /// it. Used only on error paths, after etcd said "compacted".
    async fn compacted_revision(&self) -> Option<Revision> {
        let probe = async {
            let mut watch = self.client().watch_client();
            let mut stream = watch
                .watch("/", Some(WatchOptions::new().with_start_revision(1)))
                .await
                .ok()?;
            loop {
                let resp = stream.message().await.ok()??;
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.canceled() {
                    return None;
                }
            }
        };
        tokio::time::timeout(COMPACT_PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }

    /// Turns an etcd error for a request at `requested` into the store's error.
    async fn revision_error(&self, err: etcd_client::Error, requested: Revision) -> StoreError {
        match classify(err) {
            Failure::Compacted => StoreError::Compacted {
                requested,
                compacted: self
                    .compacted_revision()
                    .await
                    .unwrap_or(requested.saturating_add(1)),
            },
            Failure::FutureRevision => StoreError::FutureRevision {
                requested,
                current: self
                    .current_revision()
                    .await
                    .unwrap_or(requested.saturating_sub(1)),
            },
            Failure::Other(e) => e,
        }
    }

    /// Reads `key` inside a failed txn's `or_else` branch result.
    fn else_get(resp: &TxnResponse) -> StoreResult<Option<KeyValue>> {
        for op in op_responses(resp)? {
            if let TxnOpResponse::Get(get) = op {
                return Ok(get.kvs().first().map(to_kv));
            }
        }
        Err(StoreError::Internal(
            "etcd txn response lacks the range result".into(),
        ))
    }

    /// Why a compare on `key`'s `mod_revision == expected` failed.
    fn cas_failure(key: &str, expected: Revision, current: Option<KeyValue>) -> StoreError {
        match current {
            None => StoreError::NotFound(key.to_string()),
            Some(kv) => StoreError::Conflict {
                key: key.to_string(),
                expected,
                actual: kv.mod_revision,
            },
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let resp = self
            .on_member(REQUEST_TIMEOUT, |c| async move {
                c.kv_client().get(key, None).await
            })
            .await
            .map_err(map_err)?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> StoreResult<ListResult> {
        let revision = revision_or_now(revision);
        let range_end = prefix_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        if let Some(after) = start_after {
            let mut next = after.as_bytes().to_vec();
            next.push(0);
            if next > start {
                start = next;
            }
        }
        if start.is_empty() {
            start = vec![0];
        }
        if past_end(&start, &range_end) {
            // Nothing can follow; still validate the revision like a real read would.
            let revision = match revision {
                Some(r) => {
                    self.count_at(prefix, Some(r)).await?;
                    r
                }
                None => self.current_revision().await?,
            };
            return Ok(ListResult {
                items: Vec::new(),
                revision,
                more: false,
            });
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut options = GetOptions::new().with_range(range_end).with_limit(limit);
        if let Some(r) = revision {
            options = options.with_revision(r);
        }
        let get = |c: Client| {
            let (start, options) = (start.clone(), options.clone());
            async move { c.kv_client().get(start, Some(options)).await }
        };
        let resp = match self.on_member(REQUEST_TIMEOUT, get).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.revision_error(e, revision.unwrap_or(0)).await),
        };
        let items: Vec<KeyValue> = resp.kvs().iter().map(to_kv).collect();
        let more = resp.more() || (limit > 0 && resp.count() > items.len() as i64);
        let revision = match revision {
            Some(r) => r,
            None => header_revision(resp.header())?,
        };
        Ok(ListResult {
            items,
            revision,
            more,
        })
    }

    async fn count(&self, prefix: &str) -> StoreResult<usize> {
        self.count_at(prefix, None).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> StoreResult<KeyValue> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, value.clone(), None)]);
        let resp = self.txn(txn).await.map_err(map_err)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        let revision = header_revision(resp.header())?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> StoreResult<KeyValue> {
        if expected <= 0 {
            // etcd compares a missing key's mod_revision as 0: `== 0` would create the key.
            let current = self.get(key).await?;
            return Err(Self::cas_failure(key, expected, current));
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then(vec![TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.txn(txn).await.map_err(map_err)?;
        if !resp.succeeded() {
            let current = Self::else_get(&resp)?;
            return Err(Self::cas_failure(key, expected, current));
        }
        let revision = header_revision(resp.header())?;
        let mut create_revision = None;
        for op in op_responses(&resp)? {
            if let TxnOpResponse::Put(put) = op {
                create_revision = put.prev_key().map(|p| p.create_revision());
            }
        }
        let create_revision = create_revision.ok_or_else(|| {
            StoreError::Internal("etcd put response lacks the previous value".into())
        })?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> StoreResult<KeyValue> {
        let (revision, prev) = match expected {
            None => {
                let resp = self
                    .on_member_write(REQUEST_TIMEOUT, |c| async move {
                        let options = DeleteOptions::new().with_prev_key();
                        c.kv_client().delete(key, Some(options)).await
                    })
                    .await
                    .map_err(map_err)?;
                if resp.deleted() == 0 {
                    return Err(StoreError::NotFound(key.to_string()));
                }
                (
                    header_revision(resp.header())?,
                    resp.prev_kvs().first().map(to_kv),
                )
            }
            Some(expected) if expected <= 0 => {
                let current = self.get(key).await?;
                return Err(Self::cas_failure(key, expected, current));
            }
            Some(expected) => {
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(key, CompareOp::Equal, expected)])
                    .and_then(vec![TxnOp::delete(
                        key,
                        Some(DeleteOptions::new().with_prev_key()),
                    )])
                    .or_else(vec![TxnOp::get(key, None)]);
                let resp = self.txn(txn).await.map_err(map_err)?;
                if !resp.succeeded() {
                    let current = Self::else_get(&resp)?;
                    return Err(Self::cas_failure(key, expected, current));
                }
                let mut prev = None;
                for op in op_responses(&resp)? {
                    if let TxnOpResponse::Delete(del) = op {
                        prev = del.prev_kvs().first().map(to_kv);
                    }
                }
                (header_revision(resp.header())?, prev)
            }
        };
        let mut prev = prev.ok_or_else(|| {
            StoreError::Internal("etcd delete response lacks the previous value".into())
        })?;
        prev.mod_revision = revision;
        Ok(prev)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> StoreResult<WatchStream> {
        let start = after.saturating_add(1).max(1);
        self.check_watch_start(prefix, after, start).await?;

        let mut options = WatchOptions::new()
            .with_start_revision(start)
            .with_prev_key();
        options = if prefix.is_empty() {
            options.with_all_keys()
        } else {
            options.with_range(prefix_end(prefix.as_bytes()))
        };
        let watch = |c: Client| {
            let options = options.clone();
            async move {
                c.watch_client()
                    .watch(prefix_key(prefix), Some(options))
                    .await
            }
        };
        let stream =
            self.on_member(REQUEST_TIMEOUT, watch)
                .await
                .map_err(|e| match classify(e) {
                    Failure::Compacted => StoreError::Compacted {
                        requested: start,
                        compacted: start.saturating_add(1),
                    },
                    Failure::FutureRevision => {
                        StoreError::Internal(format!("etcd: {ERR_FUTURE_REV}"))
                    }
                    Failure::Other(e) => e,
                })?;

        let state = WatchState {
            stream: Some(stream),
            pending: VecDeque::new(),
            after,
        };
        // The stream owns etcd's watch stream: dropping it drops the gRPC call, which makes
        // etcd cancel the watcher. No task is spawned, so nothing can leak.
        let events = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    return Some((item, st));
                }
                let stream = st.stream.as_mut()?;
                match stream.message().await {
                    Ok(Some(resp)) => st.absorb(&resp),
                    Ok(None) => st.fail(StoreError::Unavailable(
                        "etcd closed the watch stream".into(),
                    )),
                    Err(e) => st.fail(map_err(e)),
                }
            }
        });
        Ok(Box::pin(events))
    }

    async fn current_revision(&self) -> StoreResult<Revision> {
        let resp = self
            .on_member(REQUEST_TIMEOUT, |c| async move {
                c.kv_client()
                    .get("/", Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await
            .map_err(map_err)?;
        header_revision(resp.header())
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let compact = |c: Client| async move {
            let options = CompactionOptions::new().with_physical();
            c.kv_client().compact(revision, Some(options)).await
        };
        match self.on_member_write(COMPACT_TIMEOUT, compact).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.revision_error(e, revision).await),
        }
    }
}

impl EtcdStore {
    /// etcd accepts a watch on a compacted revision and cancels it a moment later (its
    /// unsynced-watcher loop runs every 100ms), and silently waits on a future one. Answer
    /// both up front like a read would: one cheap count-only read at `after` (`FutureRevision`
    /// iff `after` > current), and only if that says "compacted", a second one at `start`
    /// (etcd keeps the compaction revision itself, so `after` = compacted - 1 still works).
    async fn check_watch_start(
        &self,
        prefix: &str,
        after: Revision,
        start: Revision,
    ) -> StoreResult<()> {
        let probe = |rev: Revision| {
            self.on_member(REQUEST_TIMEOUT, move |c| async move {
                let options = GetOptions::new()
                    .with_count_only()
                    .with_limit(1)
                    .with_revision(rev);
                c.kv_client().get(prefix_key(prefix), Some(options)).await
            })
        };
        if after > 0 {
            match probe(after).await.map_err(classify) {
                Ok(_) => return Ok(()),
                Err(Failure::FutureRevision) => {
                    return Err(StoreError::FutureRevision {
                        requested: after,
                        current: self
                            .current_revision()
                            .await
                            .unwrap_or(after.saturating_sub(1)),
                    });
                }
                Err(Failure::Compacted) => {}
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        match probe(start).await.map_err(classify) {
            Ok(_) | Err(Failure::FutureRevision) => Ok(()),
            Err(Failure::Compacted) => Err(StoreError::Compacted {
                requested: start,
                compacted: self
                    .compacted_revision()
                    .await
                    .unwrap_or(start.saturating_add(1)),
            }),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn count_at(&self, prefix: &str, revision: Option<Revision>) -> StoreResult<usize> {
        let mut options = GetOptions::new().with_count_only();
        options = if prefix.is_empty() {
            options.with_all_keys()
        } else {
            options.with_range(prefix_end(prefix.as_bytes()))
        };
        if let Some(r) = revision {
            options = options.with_revision(r);
        }
        let get = |c: Client| {
            let options = options.clone();
            async move { c.kv_client().get(prefix_key(prefix), Some(options)).await }
        };
        let resp = match self.on_member(REQUEST_TIMEOUT, get).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.revision_error(e, revision.unwrap_or(0)).await),
        };
        Ok(usize::try_from(resp.count()).unwrap_or(0))
    }
}

/// etcd rejects empty keys; the empty prefix means "from the first key".
fn prefix_key(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

struct WatchState {
    /// `None` once the watch has ended (after its last item is queued).
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<StoreResult<WatchEvent>>,
    after: Revision,
}

impl WatchState {
    fn fail(&mut self, err: StoreError) {
        self.pending.push_back(Err(err));
        self.stream = None;
    }

    fn absorb(&mut self, resp: &etcd_client::WatchResponse) {
        if resp.compact_revision() > 0 {
            return self.fail(StoreError::Compacted {
                requested: self.after.saturating_add(1),
                compacted: resp.compact_revision(),
            });
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else {
                return self.fail(StoreError::Internal("etcd watch event without kv".into()));
            };
            // A deletion's kv is a tombstone with version 0; every put has version >= 1.
            // (`Event::event_type` would panic on an unknown type, so it is not used.)
            let converted = if kv.version() == 0 {
                match event.prev_kv() {
                    Some(prev) => {
                        let mut last = to_kv(prev);
                        last.mod_revision = kv.mod_revision();
                        WatchEvent {
                            kind: EventKind::Delete,
                            kv: last,
                            prev: None,
                        }
                    }
                    None => {
                        // The previous value is no longer in etcd's history (the delete is
                        // at the compaction revision): we cannot report what was deleted.
                        return self.fail(StoreError::Compacted {
                            requested: self.after.saturating_add(1),
                            compacted: kv.mod_revision(),
                        });
                    }
                }
            } else {
                WatchEvent {
                    kind: EventKind::Put,
                    kv: to_kv(kv),
                    prev: if kv.version() > 1 {
                        event.prev_kv().map(to_kv)
                    } else {
                        None
                    },
                }
            };
            self.after = kv.mod_revision();
            self.pending.push_back(Ok(converted));
        }
        if resp.canceled() {
            let reason = resp.cancel_reason();
            self.fail(StoreError::Unavailable(if reason.is_empty() {
                "etcd cancelled the watch".to_string()
            } else {
                format!("etcd cancelled the watch: {reason}")
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn past_end_respects_open_range() {
        assert!(past_end(b"b", b"b"));
        assert!(!past_end(b"a", b"b"));
        assert!(!past_end(b"zzz", &[0]));
    }
}
