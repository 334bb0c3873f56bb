//! Store conformance suite: the same cases run against the embedded (redb) store and a real
//! etcd (Debian's `/usr/bin/etcd`, one fresh server per test on free loopback ports), plus
//! embedded-only persistence and crash-safety tests.
//!
//! Test names: `embedded::<case>` and `etcd::<case>` for the shared suite, `embedded_only::*`
//! for the rest.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff_control::store::embedded::EmbeddedStore;
use skiff_control::store::etcd::EtcdStore;
use skiff_control::store::{
    EventKind, KeyValue, Revision, Store, StoreError, WatchEvent, WatchStream,
};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// How long one watch event may take to arrive before the test fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A private etcd (from the e2e harness, killed on drop) and a store connected to it.
async fn start_etcd() -> (skiff_tests::Etcd, EtcdStore) {
    let etcd = tokio::task::spawn_blocking(skiff_tests::Etcd::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    (etcd, store)
}

/// Runs each listed case against both backends: `embedded::<case>` and `etcd::<case>`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = skiff_control::store::embedded::EmbeddedStore::open(dir.path())
                        .unwrap();
                    super::$case(&store).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_etcd, store) = super::start_etcd().await;
                    super::$case(&store).await;
                }
            )*
        }
    };
}

suite!(
    create_get,
    create_duplicate,
    update_cas,
    delete,
    revisions_monotonic,
    create_after_delete,
    list_paging,
    list_kubernetes_layout,
    list_snapshot_and_compaction,
    future_revision,
    count,
    watch_replay_then_live,
    watch_prefix_isolation,
    watch_compacted,
    watch_during_writes,
    concurrent_cas_increments,
);

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// Asserts the watch has nothing to deliver right now.
async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn expect_err<T>(result: Result<T, StoreError>) -> StoreError {
    match result {
        Ok(_) => panic!("expected an error, got success"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared cases
// ---------------------------------------------------------------------------------------------

async fn create_get(store: &dyn Store) {
    let before = store.current_revision().await.unwrap();
    assert_eq!(store.get("/registry/pods/default/a").await.unwrap(), None);

    let created = store
        .create("/registry/pods/default/a", v("one"))
        .await
        .unwrap();
    assert_eq!(created.key, "/registry/pods/default/a");
    assert_eq!(created.value, v("one"));
    assert!(created.mod_revision > before);
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(
        store.current_revision().await.unwrap(),
        created.mod_revision
    );

    let got = store.get("/registry/pods/default/a").await.unwrap();
    assert_eq!(got, Some(created));
    // Arbitrary bytes round-trip.
    let bytes: Vec<u8> = (0..=255u8).collect();
    let created = store.create("/bin", bytes.clone()).await.unwrap();
    assert_eq!(store.get("/bin").await.unwrap().unwrap().value, bytes);
    assert_eq!(created.value, bytes);
    // An empty value is still a key.
    store.create("/empty", Vec::new()).await.unwrap();
    assert_eq!(store.get("/empty").await.unwrap().unwrap().value, v(""));
}

async fn create_duplicate(store: &dyn Store) {
    let first = store.create("/k", v("1")).await.unwrap();
    let err = expect_err(store.create("/k", v("2")).await);
    assert_eq!(err, StoreError::AlreadyExists("/k".into()));
    // The failed create changed nothing.
    assert_eq!(store.get("/k").await.unwrap(), Some(first.clone()));
    assert_eq!(store.current_revision().await.unwrap(), first.mod_revision);
}

async fn update_cas(store: &dyn Store) {
    let created = store.create("/k", v("1")).await.unwrap();
    let updated = store
        .update("/k", v("2"), created.mod_revision)
        .await
        .unwrap();
    assert_eq!(updated.value, v("2"));
    assert_eq!(updated.create_revision, created.create_revision);
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(store.get("/k").await.unwrap(), Some(updated.clone()));

    // Stale revision: Conflict with the actual one, nothing written.
    let err = expect_err(store.update("/k", v("3"), created.mod_revision).await);
    assert_eq!(
        err,
        StoreError::Conflict {
            key: "/k".into(),
            expected: created.mod_revision,
            actual: updated.mod_revision,
        }
    );
    assert_eq!(store.get("/k").await.unwrap(), Some(updated.clone()));
    assert_eq!(
        store.current_revision().await.unwrap(),
        updated.mod_revision
    );

    // Missing key: NotFound, whatever the expected revision (0 must not create it).
    for expected in [0, 1, updated.mod_revision] {
        let err = expect_err(store.update("/missing", v("x"), expected).await);
        assert_eq!(err, StoreError::NotFound("/missing".into()));
    }
    assert_eq!(store.get("/missing").await.unwrap(), None);
    // Expected revision 0 on an existing key is a conflict.
    let err = expect_err(store.update("/k", v("x"), 0).await);
    assert!(
        matches!(err, StoreError::Conflict { actual, .. } if actual == updated.mod_revision),
        "{err:?}"
    );

    let again = store
        .update("/k", v("3"), updated.mod_revision)
        .await
        .unwrap();
    assert!(again.mod_revision > updated.mod_revision);
    assert_eq!(again.create_revision, created.create_revision);
}

async fn delete(store: &dyn Store) {
    // Unconditional.
    let a = store.create("/a", v("a1")).await.unwrap();
    let a = store.update("/a", v("a2"), a.mod_revision).await.unwrap();
    let deleted = store.delete("/a", None).await.unwrap();
    assert_eq!(deleted.key, "/a");
    assert_eq!(deleted.value, v("a2"));
    assert_eq!(deleted.create_revision, a.create_revision);
    assert!(deleted.mod_revision > a.mod_revision);
    assert_eq!(
        store.current_revision().await.unwrap(),
        deleted.mod_revision
    );
    assert_eq!(store.get("/a").await.unwrap(), None);
    let err = expect_err(store.delete("/a", None).await);
    assert_eq!(err, StoreError::NotFound("/a".into()));

    // Conditional: stale -> Conflict (key kept), right -> deleted.
    let b = store.create("/b", v("b1")).await.unwrap();
    let b2 = store.update("/b", v("b2"), b.mod_revision).await.unwrap();
    let err = expect_err(store.delete("/b", Some(b.mod_revision)).await);
    assert_eq!(
        err,
        StoreError::Conflict {
            key: "/b".into(),
            expected: b.mod_revision,
            actual: b2.mod_revision,
        }
    );
    assert_eq!(store.get("/b").await.unwrap(), Some(b2.clone()));
    let deleted = store.delete("/b", Some(b2.mod_revision)).await.unwrap();
    assert_eq!(deleted.value, v("b2"));
    assert_eq!(deleted.create_revision, b.create_revision);
    assert_eq!(
        deleted.mod_revision,
        store.current_revision().await.unwrap()
    );
    assert!(deleted.mod_revision > b2.mod_revision);
    assert_eq!(store.get("/b").await.unwrap(), None);
    for expected in [Some(0), Some(b2.mod_revision), None] {
        let err = expect_err(store.delete("/b", expected).await);
        assert_eq!(err, StoreError::NotFound("/b".into()));
    }
}

async fn revisions_monotonic(store: &dyn Store) {
    let mut last = store.current_revision().await.unwrap();
    for i in 0..20 {
        let key = format!("/r/{}", i % 7);
        let kv = match store.get(&key).await.unwrap() {
            None => store.create(&key, v("c")).await.unwrap(),
            Some(_) if i % 3 == 0 => store.delete(&key, None).await.unwrap(),
            Some(cur) => store.update(&key, v("u"), cur.mod_revision).await.unwrap(),
        };
        assert!(kv.mod_revision > last, "{} after {last}", kv.mod_revision);
        last = kv.mod_revision;
        assert_eq!(store.current_revision().await.unwrap(), last);
    }
    // Failed writes and reads do not bump the revision.
    let fixed = store.create("/r/fixed", v("x")).await.unwrap();
    last = fixed.mod_revision;
    expect_err(store.create("/r/fixed", v("x")).await);
    expect_err(
        store
            .update("/r/fixed", v("x"), fixed.mod_revision - 1)
            .await,
    );
    expect_err(store.delete("/r/fixed", Some(fixed.mod_revision - 1)).await);
    expect_err(store.update("/r/none", v("x"), 5).await);
    expect_err(store.delete("/r/none", None).await);
    store.get("/r/fixed").await.unwrap();
    store.list("/r/", None, 0, None).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), last);
}

async fn create_after_delete(store: &dyn Store) {
    let first = store.create("/k", v("1")).await.unwrap();
    let deleted = store.delete("/k", None).await.unwrap();
    let second = store.create("/k", v("2")).await.unwrap();
    assert!(second.create_revision > deleted.mod_revision);
    assert_eq!(second.create_revision, second.mod_revision);
    assert_ne!(second.create_revision, first.create_revision);
    assert_eq!(store.get("/k").await.unwrap(), Some(second.clone()));
    // The old incarnation's revision no longer matches.
    let err = expect_err(store.update("/k", v("3"), first.mod_revision).await);
    assert!(
        matches!(err, StoreError::Conflict { actual, .. } if actual == second.mod_revision),
        "{err:?}"
    );
    let updated = store
        .update("/k", v("3"), second.mod_revision)
        .await
        .unwrap();
    assert_eq!(updated.create_revision, second.create_revision);
}

async fn list_paging(store: &dyn Store) {
    for name in ["e", "a", "c", "b", "d"] {
        store
            .create(&format!("/registry/pods/ns/{name}"), v(name))
            .await
            .unwrap();
    }
    // Neighbours that must never show up.
    store.create("/registry/pods/n", v("x")).await.unwrap();
    store.create("/registry/pods/ns", v("x")).await.unwrap();
    store.create("/registry/pods/nt/a", v("x")).await.unwrap();
    let rev = store.current_revision().await.unwrap();
    let p = "/registry/pods/ns/";

    let all = store.list(p, None, 0, None).await.unwrap();
    assert_eq!(
        keys(&all.items),
        [
            "/registry/pods/ns/a",
            "/registry/pods/ns/b",
            "/registry/pods/ns/c",
            "/registry/pods/ns/d",
            "/registry/pods/ns/e"
        ]
    );
    assert!(!all.more);
    assert_eq!(all.revision, rev);
    assert_eq!(all.items[2].value, v("c"));

    let page = store.list(p, None, 2, None).await.unwrap();
    assert_eq!(
        keys(&page.items),
        ["/registry/pods/ns/a", "/registry/pods/ns/b"]
    );
    assert!(page.more);
    assert_eq!(page.revision, rev);
    let page = store
        .list(p, Some("/registry/pods/ns/b"), 2, None)
        .await
        .unwrap();
    assert_eq!(
        keys(&page.items),
        ["/registry/pods/ns/c", "/registry/pods/ns/d"]
    );
    assert!(page.more);
    let page = store
        .list(p, Some("/registry/pods/ns/d"), 2, None)
        .await
        .unwrap();
    assert_eq!(keys(&page.items), ["/registry/pods/ns/e"]);
    assert!(!page.more);
    // Exactly the remaining keys: no more.
    let page = store
        .list(p, Some("/registry/pods/ns/c"), 2, None)
        .await
        .unwrap();
    assert_eq!(
        keys(&page.items),
        ["/registry/pods/ns/d", "/registry/pods/ns/e"]
    );
    assert!(!page.more);
    // start_after need not exist.
    let page = store
        .list(p, Some("/registry/pods/ns/bb"), 0, None)
        .await
        .unwrap();
    assert_eq!(
        keys(&page.items),
        [
            "/registry/pods/ns/c",
            "/registry/pods/ns/d",
            "/registry/pods/ns/e"
        ]
    );
    // start_after before the prefix: everything under it; after it: nothing.
    let page = store.list(p, Some("/registry/a"), 0, None).await.unwrap();
    assert_eq!(page.items.len(), 5);
    let page = store
        .list(p, Some("/registry/pods/"), 1, None)
        .await
        .unwrap();
    assert_eq!(keys(&page.items), ["/registry/pods/ns/a"]);
    assert!(page.more);
    let page = store.list(p, Some("/registry/z"), 0, None).await.unwrap();
    assert!(page.items.is_empty());
    assert!(!page.more);
    assert_eq!(page.revision, rev);
    let page = store
        .list(p, Some("/registry/pods/ns/e"), 1, None)
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert!(!page.more);
    // Unknown prefix.
    let none = store
        .list("/registry/nothing/", None, 0, None)
        .await
        .unwrap();
    assert!(none.items.is_empty());
    assert!(!none.more);
    assert_eq!(none.revision, rev);
    // The empty prefix lists everything.
    let everything = store.list("", None, 0, None).await.unwrap();
    assert_eq!(everything.items.len(), 8);
}

async fn list_kubernetes_layout(store: &dyn Store) {
    store
        .create("/registry/pods/default/x", v("pod"))
        .await
        .unwrap();
    store
        .create("/registry/pods/kube-system/y", v("pod"))
        .await
        .unwrap();
    store
        .create("/registry/podsx/default/x", v("other"))
        .await
        .unwrap();
    store
        .create("/registry/podtemplates/default/t", v("other"))
        .await
        .unwrap();
    store.create("/registry/pods", v("other")).await.unwrap();

    let pods = store.list("/registry/pods/", None, 0, None).await.unwrap();
    assert_eq!(
        keys(&pods.items),
        ["/registry/pods/default/x", "/registry/pods/kube-system/y"]
    );
    let ns = store
        .list("/registry/pods/default/", None, 0, None)
        .await
        .unwrap();
    assert_eq!(keys(&ns.items), ["/registry/pods/default/x"]);
    assert_eq!(store.count("/registry/pods/").await.unwrap(), 2);
    assert_eq!(store.count("/registry/podsx/").await.unwrap(), 1);
    assert_eq!(store.count("/registry/pods").await.unwrap(), 4);
    let got = store
        .get("/registry/pods/default/x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, v("pod"));
}

async fn list_snapshot_and_compaction(store: &dyn Store) {
    let p = "/registry/cm/";
    let a = store.create("/registry/cm/a", v("a1")).await.unwrap();
    let b = store.create("/registry/cm/b", v("b1")).await.unwrap();
    let c = store.create("/registry/cm/c", v("c1")).await.unwrap();
    let snapshot = store.current_revision().await.unwrap();
    let a2 = store
        .update("/registry/cm/a", v("a2"), a.mod_revision)
        .await
        .unwrap();
    store.delete("/registry/cm/b", None).await.unwrap();
    let d = store.create("/registry/cm/d", v("d1")).await.unwrap();
    store.delete("/registry/cm/c", None).await.unwrap();
    let c2 = store.create("/registry/cm/c", v("c2")).await.unwrap();
    store.create("/registry/other", v("x")).await.unwrap();

    // Now.
    let now = store.list(p, None, 0, None).await.unwrap();
    assert_eq!(now.items, vec![a2.clone(), c2.clone(), d.clone()]);
    // At the snapshot: the old values, with their old revisions.
    let old = store.list(p, None, 0, Some(snapshot)).await.unwrap();
    assert_eq!(old.revision, snapshot);
    assert_eq!(old.items, vec![a.clone(), b.clone(), c.clone()]);
    // Paging through a snapshot.
    let page = store.list(p, None, 2, Some(snapshot)).await.unwrap();
    assert_eq!(page.items, vec![a.clone(), b.clone()]);
    assert!(page.more);
    let page = store
        .list(p, Some("/registry/cm/b"), 2, Some(snapshot))
        .await
        .unwrap();
    assert_eq!(page.items, vec![c.clone()]);
    assert!(!page.more);
    // Between the two: only a, b existed one revision after a's creation.
    let early = store.list(p, None, 0, Some(b.mod_revision)).await.unwrap();
    assert_eq!(early.items, vec![a.clone(), b.clone()]);
    // The deleted-then-recreated key at each point.
    let mid = store.list(p, None, 0, Some(d.mod_revision)).await.unwrap();
    assert_eq!(mid.items, vec![a2.clone(), c.clone(), d.clone()]);
    let gap = store
        .list(p, None, 0, Some(c2.mod_revision - 1))
        .await
        .unwrap();
    assert_eq!(gap.items, vec![a2.clone(), d.clone()]);
    // Reading at the current revision explicitly equals reading now.
    let current = store.current_revision().await.unwrap();
    let explicit = store.list(p, None, 0, Some(current)).await.unwrap();
    assert_eq!(explicit.items, now.items);
    assert_eq!(explicit.revision, current);

    // Compact at d's revision: reads there still work, older ones are Compacted.
    let at = d.mod_revision;
    store.compact(at).await.unwrap();
    let err = expect_err(store.list(p, None, 0, Some(snapshot)).await);
    assert_eq!(
        err,
        StoreError::Compacted {
            requested: snapshot,
            compacted: at
        }
    );
    let err = expect_err(store.list(p, None, 0, Some(at - 1)).await);
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    let kept = store.list(p, None, 0, Some(at)).await.unwrap();
    assert_eq!(kept.items, vec![a2.clone(), c.clone(), d.clone()]);
    let gap = store
        .list(p, None, 0, Some(c2.mod_revision - 1))
        .await
        .unwrap();
    assert_eq!(gap.items, vec![a2.clone(), d.clone()]);
    // Current data is untouched; revision 0 means "now", as in etcd.
    let after = store.list(p, None, 0, None).await.unwrap();
    assert_eq!(after.items, now.items);
    let zero = store.list(p, None, 0, Some(0)).await.unwrap();
    assert_eq!(zero.items, now.items);
    assert_eq!(zero.revision, current);
    assert_eq!(store.get("/registry/cm/a").await.unwrap(), Some(a2.clone()));

    // Compacting again at or below the compaction revision is Compacted.
    let err = expect_err(store.compact(at).await);
    assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
    // Compacting to the current revision, then writing, keeps everything consistent.
    store.compact(current).await.unwrap();
    let latest = store.list(p, None, 0, Some(current)).await.unwrap();
    assert_eq!(latest.items, now.items);
    let a3 = store
        .update("/registry/cm/a", v("a3"), a2.mod_revision)
        .await
        .unwrap();
    let latest = store.list(p, None, 0, Some(current)).await.unwrap();
    assert_eq!(latest.items, now.items);
    assert_eq!(
        store.list(p, None, 0, None).await.unwrap().items,
        vec![a3, c2, d]
    );
}

async fn future_revision(store: &dyn Store) {
    store.create("/f/a", v("1")).await.unwrap();
    let current = store.current_revision().await.unwrap();
    for requested in [current + 1, current + 1000] {
        let err = expect_err(store.list("/f/", None, 0, Some(requested)).await);
        assert_eq!(
            err,
            StoreError::FutureRevision { requested, current },
            "list at {requested}"
        );
        let err = expect_err(store.watch("/f/", requested).await);
        assert_eq!(
            err,
            StoreError::FutureRevision { requested, current },
            "watch after {requested}"
        );
        let err = expect_err(store.compact(requested).await);
        assert!(
            matches!(err, StoreError::FutureRevision { .. }),
            "compact at {requested}: {err:?}"
        );
    }
    // Watching from the current revision is fine (nothing to replay).
    let mut watch = store.watch("/f/", current).await.unwrap();
    let b = store.create("/f/b", v("2")).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event.kv, b);
}

async fn count(store: &dyn Store) {
    assert_eq!(store.count("/c/").await.unwrap(), 0);
    for i in 0..10 {
        store.create(&format!("/c/{i}"), v("x")).await.unwrap();
    }
    store.create("/cx/0", v("x")).await.unwrap();
    store.create("/c", v("x")).await.unwrap();
    assert_eq!(store.count("/c/").await.unwrap(), 10);
    assert_eq!(store.count("/c/1").await.unwrap(), 1);
    assert_eq!(store.count("/cx/").await.unwrap(), 1);
    assert_eq!(store.count("/nothing/").await.unwrap(), 0);
    assert_eq!(store.count("").await.unwrap(), 12);
    store.delete("/c/3", None).await.unwrap();
    assert_eq!(store.count("/c/").await.unwrap(), 9);
}

async fn watch_replay_then_live(store: &dyn Store) {
    let p = "/registry/pods/default/";
    let base = store.current_revision().await.unwrap();
    let x1 = store
        .create("/registry/pods/default/x", v("x1"))
        .await
        .unwrap();
    let x2 = store
        .update("/registry/pods/default/x", v("x2"), x1.mod_revision)
        .await
        .unwrap();
    let y1 = store
        .create("/registry/pods/default/y", v("y1"))
        .await
        .unwrap();
    let y_gone = store
        .delete("/registry/pods/default/y", None)
        .await
        .unwrap();

    let mut watch = store.watch(p, base).await.unwrap();
    // History.
    let e = next_event(&mut watch).await;
    assert_eq!(e.kind, EventKind::Put);
    assert_eq!(e.kv, x1);
    assert_eq!(e.prev, None);
    let e = next_event(&mut watch).await;
    assert_eq!(e.kind, EventKind::Put);
    assert_eq!(e.kv, x2);
    assert_eq!(e.prev, Some(x1.clone()));
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, &e.kv, &e.prev), (EventKind::Put, &y1, &None));
    let e = next_event(&mut watch).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv, y_gone);
    assert_eq!(e.kv.value, v("y1"));
    assert_eq!(e.kv.create_revision, y1.create_revision);
    assert!(e.kv.mod_revision > y1.mod_revision);
    assert_quiet(&mut watch).await;

    // Live.
    let x3 = store
        .update("/registry/pods/default/x", v("x3"), x2.mod_revision)
        .await
        .unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, &e.kv), (EventKind::Put, &x3));
    assert_eq!(e.prev, Some(x2.clone()));
    let x_gone = store
        .delete("/registry/pods/default/x", Some(x3.mod_revision))
        .await
        .unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv, x_gone);
    assert_eq!(e.kv.value, v("x3"));
    assert_eq!(e.kv.create_revision, x1.create_revision);
    let x_new = store
        .create("/registry/pods/default/x", v("new"))
        .await
        .unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, &e.kv, &e.prev), (EventKind::Put, &x_new, &None));
    assert_quiet(&mut watch).await;

    // A watch from the middle of history starts right after the given revision.
    let mut mid = store.watch(p, x2.mod_revision).await.unwrap();
    let e = next_event(&mut mid).await;
    assert_eq!(e.kv, y1);
    let mut revs = vec![e.kv.mod_revision];
    for _ in 0..4 {
        revs.push(next_event(&mut mid).await.kv.mod_revision);
    }
    assert_eq!(
        revs,
        [
            y1.mod_revision,
            y_gone.mod_revision,
            x3.mod_revision,
            x_gone.mod_revision,
            x_new.mod_revision
        ]
    );
    assert_quiet(&mut mid).await;

    // Many live events arrive complete and in order.
    let mut watch = store.watch(p, x_new.mod_revision).await.unwrap();
    let mut expected = Vec::new();
    let mut cur = x_new;
    for i in 0..50 {
        cur = store
            .update(
                "/registry/pods/default/x",
                v(&format!("v{i}")),
                cur.mod_revision,
            )
            .await
            .unwrap();
        expected.push(cur.mod_revision);
    }
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(next_event(&mut watch).await.kv.mod_revision);
    }
    assert_eq!(seen, expected);
}

async fn watch_prefix_isolation(store: &dyn Store) {
    let base = store.current_revision().await.unwrap();
    store
        .create("/registry/podsx/default/x", v("no"))
        .await
        .unwrap();
    store.create("/registry/pods", v("no")).await.unwrap();
    let x = store
        .create("/registry/pods/default/x", v("yes"))
        .await
        .unwrap();
    let mut watch = store.watch("/registry/pods/", base).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, x);

    // Live: other prefixes are skipped, ours is delivered.
    store
        .create("/registry/podsx/default/y", v("no"))
        .await
        .unwrap();
    store
        .delete("/registry/podsx/default/x", None)
        .await
        .unwrap();
    store.create("/registry/pod/y", v("no")).await.unwrap();
    let y = store
        .create("/registry/pods/kube-system/y", v("yes"))
        .await
        .unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, y);
    assert_quiet(&mut watch).await;

    // A namespace-scoped watch sees only its namespace.
    let mut ns = store.watch("/registry/pods/default/", base).await.unwrap();
    let e = next_event(&mut ns).await;
    assert_eq!(e.kv, x);
    assert_quiet(&mut ns).await;
}

async fn watch_compacted(store: &dyn Store) {
    let p = "/w/";
    let a = store.create("/w/a", v("1")).await.unwrap();
    let a2 = store.update("/w/a", v("2"), a.mod_revision).await.unwrap();
    let b = store.create("/w/b", v("1")).await.unwrap();
    let c = store.create("/w/c", v("1")).await.unwrap();
    store.compact(b.mod_revision).await.unwrap();

    for after in [0, a.mod_revision - 1, a.mod_revision, a2.mod_revision - 1] {
        let err = expect_err(store.watch(p, after).await);
        assert!(
            matches!(err, StoreError::Compacted { compacted, .. } if compacted == b.mod_revision),
            "watch after {after}: {err:?}"
        );
    }
    // Right before the compaction revision is still in history.
    let mut watch = store.watch(p, a2.mod_revision).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, &e.kv, &e.prev), (EventKind::Put, &b, &None));
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, c);
    let b2 = store.update("/w/b", v("2"), b.mod_revision).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, b2);
    assert_eq!(e.prev, Some(b.clone()));
    // Modifying a key whose previous value sits before the compaction revision still
    // reports that value as prev.
    let a3 = store.update("/w/a", v("3"), a2.mod_revision).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!(e.kv, a3);
    assert_eq!(e.prev, Some(a2.clone()));
    let gone = store.delete("/w/a", None).await.unwrap();
    let e = next_event(&mut watch).await;
    assert_eq!((e.kind, &e.kv), (EventKind::Delete, &gone));
}

/// Watches started while writes are in flight see every later revision exactly once, in
/// order (the history/live hand-over loses and duplicates nothing).
async fn watch_during_writes(store: &dyn Store) {
    const WRITES: i64 = 60;
    let base = store.current_revision().await.unwrap();
    let last = base + WRITES;
    let writer = async {
        for i in 0..WRITES {
            store.create(&format!("/cw/{i:03}"), v("x")).await.unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
    };
    let watcher = |delay_ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let after = store.current_revision().await.unwrap();
        let mut watch = store.watch("/cw/", after).await.unwrap();
        let mut seen = Vec::new();
        let mut rev = after;
        while rev < last {
            rev = next_event(&mut watch).await.kv.mod_revision;
            seen.push(rev);
        }
        let expected: Vec<Revision> = (after + 1..=last).collect();
        assert_eq!(seen, expected, "watch after {after}");
    };
    futures::join!(
        writer,
        watcher(0),
        watcher(5),
        watcher(20),
        watcher(50),
        watcher(100)
    );
}

async fn concurrent_cas_increments(store: &dyn Store) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 5;
    store.create("/counter", v("0")).await.unwrap();
    let worker = || async {
        let mut conflicts = 0usize;
        for _ in 0..PER_TASK {
            loop {
                let cur = store.get("/counter").await.unwrap().unwrap();
                let n: usize = String::from_utf8(cur.value).unwrap().parse().unwrap();
                match store
                    .update("/counter", v(&(n + 1).to_string()), cur.mod_revision)
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::Conflict { actual, .. }) => {
                        assert!(actual > cur.mod_revision);
                        conflicts += 1;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }
        conflicts
    };
    let results = futures::future::join_all((0..TASKS).map(|_| worker())).await;
    let total = TASKS * PER_TASK;
    let last = store.get("/counter").await.unwrap().unwrap();
    assert_eq!(last.value, v(&total.to_string()), "conflicts: {results:?}");
    // Every successful increment is exactly one revision.
    assert_eq!(
        last.mod_revision - last.create_revision,
        Revision::try_from(total).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Embedded only: persistence and crash safety
// ---------------------------------------------------------------------------------------------

mod embedded_only {
    use super::*;

    #[tokio::test]
    async fn reopen_keeps_data_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b_gone, rev, old) = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let a = store.create("/a", v("1")).await.unwrap();
            let old = store.current_revision().await.unwrap();
            let a = store.update("/a", v("2"), a.mod_revision).await.unwrap();
            store.create("/b", v("1")).await.unwrap();
            let b_gone = store.delete("/b", None).await.unwrap();
            (a, b_gone, store.current_revision().await.unwrap(), old)
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.current_revision().await.unwrap(), rev);
        assert_eq!(rev, b_gone.mod_revision);
        assert_eq!(store.get("/a").await.unwrap(), Some(a.clone()));
        assert_eq!(store.get("/b").await.unwrap(), None);
        // History survives too.
        let past = store.list("/", None, 0, Some(old)).await.unwrap();
        assert_eq!(past.items.len(), 1);
        assert_eq!(past.items[0].value, v("1"));
        let mut watch = store.watch("/", 0).await.unwrap();
        for _ in 0..4 {
            next_event(&mut watch).await;
        }
        // New writes continue the revision sequence.
        let c = store.create("/c", v("1")).await.unwrap();
        assert_eq!(c.mod_revision, rev + 1);
        let e = next_event(&mut watch).await;
        assert_eq!(e.kv, c);

        // Compaction state survives as well.
        store.compact(c.mod_revision).await.unwrap();
        drop(watch);
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let err = expect_err(store.list("/", None, 0, Some(old)).await);
        assert!(matches!(err, StoreError::Compacted { .. }), "{err:?}");
        assert_eq!(store.current_revision().await.unwrap(), c.mod_revision);
    }

    #[tokio::test]
    async fn watch_ends_with_error_when_store_closes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let a = store.create("/a", v("1")).await.unwrap();
        let mut watch = store.watch("/", 0).await.unwrap();
        assert_eq!(next_event(&mut watch).await.kv, a);
        drop(store);
        match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
            Ok(Some(Err(StoreError::Unavailable(_)))) => {}
            other => panic!("expected the watch to fail, got {other:?}"),
        }
        assert!(watch.next().await.is_none());
        // The file is free again.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.get("/a").await.unwrap(), Some(a));
    }

    /// Group commit: writers racing each other are all acknowledged, with distinct and
    /// consecutive revisions, in fewer commits than writes, and watchers see every write once,
    /// in revision order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits() {
        const WRITERS: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let start = store.current_revision().await.unwrap();
        let mut watch = store.watch("/c/", start).await.unwrap();
        let commits_before = store.commit_count();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.create(&format!("/c/{i:03}"), v("x")).await })
            })
            .collect();
        let mut acked = Vec::new();
        for task in tasks {
            let kv = task.await.unwrap().unwrap();
            assert_eq!(kv.create_revision, kv.mod_revision);
            acked.push(kv);
        }
        let mut revisions: Vec<Revision> = acked.iter().map(|kv| kv.mod_revision).collect();
        revisions.sort();
        let expected: Vec<Revision> = (start + 1..=start + WRITERS as Revision).collect();
        assert_eq!(revisions, expected);
        assert_eq!(
            store.current_revision().await.unwrap(),
            start + WRITERS as Revision
        );
        let commits = store.commit_count() - commits_before;
        assert!(
            commits < WRITERS as u64,
            "{WRITERS} concurrent writes took {commits} commits"
        );
        for kv in &acked {
            assert_eq!(store.get(&kv.key).await.unwrap().as_ref(), Some(kv));
        }
        acked.sort_by_key(|kv| kv.mod_revision);
        for kv in &acked {
            let event = next_event(&mut watch).await;
            assert_eq!(event.kind, EventKind::Put);
            assert_eq!(&event.kv, kv);
        }
        assert_quiet(&mut watch).await;
    }

    /// Writes that fail logically (lost CAS, duplicate create, missing key) in the middle of a
    /// batch change nothing and take no revision; the writes around them commit, each seeing
    /// the ones before it.
    #[tokio::test]
    async fn failing_writes_leave_their_batch_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let r = store.create("/k", v("0")).await.unwrap().mod_revision;
        let mut watch = store.watch("/", r).await.unwrap();
        let commits_before = store.commit_count();
        let writes: Vec<futures::future::BoxFuture<'_, _>> = vec![
            // Committed first (maybe alone): the rest queue up behind its fsync.
            store.create("/filler", v("x")),
            store.update("/k", v("1"), r),
            store.update("/k", v("stale"), r),
            store.create("/n", v("1")),
            store.create("/n", v("dup")),
            store.delete("/missing", None),
            store.update("/k", v("2"), r + 2),
            store.delete("/n", Some(r + 3)),
        ];
        // Poll each write once, in order, before waiting for any: a write is queued for the
        // writer on its first poll, so they apply in exactly this order.
        let mut writes: Vec<_> = writes
            .into_iter()
            .map(futures::future::maybe_done)
            .collect();
        for write in &mut writes {
            let _ = futures::poll!(&mut *write);
        }
        futures::future::join_all(writes.iter_mut()).await;
        let outcomes: Vec<_> = writes
            .iter_mut()
            .map(|w| std::pin::Pin::new(w).take_output().unwrap())
            .collect();

        let ok = |i: usize| outcomes[i].clone().unwrap();
        assert_eq!(ok(0).mod_revision, r + 1);
        assert_eq!((ok(1).value, ok(1).mod_revision), (v("1"), r + 2));
        assert_eq!(
            outcomes[2],
            Err(StoreError::Conflict {
                key: "/k".into(),
                expected: r,
                actual: r + 2
            })
        );
        assert_eq!((ok(3).create_revision, ok(3).mod_revision), (r + 3, r + 3));
        assert_eq!(outcomes[4], Err(StoreError::AlreadyExists("/n".into())));
        assert_eq!(outcomes[5], Err(StoreError::NotFound("/missing".into())));
        assert_eq!((ok(6).value, ok(6).mod_revision), (v("2"), r + 4));
        assert_eq!((ok(7).value, ok(7).mod_revision), (v("1"), r + 5));
        // Five writes succeeded; queued behind the first, they shared commits.
        let commits = store.commit_count() - commits_before;
        assert!(commits < 5, "5 writes took {commits} commits");

        assert_eq!(store.current_revision().await.unwrap(), r + 5);
        let k = store.get("/k").await.unwrap().unwrap();
        assert_eq!(
            (k.value, k.create_revision, k.mod_revision),
            (v("2"), r, r + 4)
        );
        assert_eq!(store.get("/n").await.unwrap(), None);
        let seen: Vec<(EventKind, String, Revision)> = {
            let mut seen = Vec::new();
            for _ in 0..5 {
                let e = next_event(&mut watch).await;
                seen.push((e.kind, e.kv.key, e.kv.mod_revision));
            }
            seen
        };
        assert_eq!(
            seen,
            vec![
                (EventKind::Put, "/filler".to_string(), r + 1),
                (EventKind::Put, "/k".to_string(), r + 2),
                (EventKind::Put, "/n".to_string(), r + 3),
                (EventKind::Put, "/k".to_string(), r + 4),
                (EventKind::Delete, "/n".to_string(), r + 5),
            ]
        );
        assert_quiet(&mut watch).await;
        // The history at each revision reads back as the batch left it.
        let at = store.list("/", None, 0, Some(r + 3)).await.unwrap();
        assert_eq!(keys(&at.items), vec!["/filler", "/k", "/n"]);
    }

    const CRASH_DIR_ENV: &str = "SKIFF_STORE_CRASH_CHILD_DIR";
    const CHILD_TEST: &str = "embedded_only::crash_child_writer";

    /// Not a test on its own: the writer process of `acknowledged_writes_survive_kill_9`.
    #[tokio::test]
    #[ignore = "a helper process, not a test: acknowledged_writes_survive_kill_9 runs it"]
    async fn crash_child_writer() {
        let dir = std::env::var_os(CRASH_DIR_ENV)
            .expect("crash_child_writer is started by acknowledged_writes_survive_kill_9");
        let store = EmbeddedStore::open(Path::new(&dir)).unwrap();
        let mut counter = store.create("/crash/counter", v("0")).await.unwrap();
        println!("ACK /crash/counter {}", counter.mod_revision);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0u64;
        while Instant::now() < deadline {
            let key = format!("/crash/key/{i:08}");
            let kv = store.create(&key, v(&i.to_string())).await.unwrap();
            // println! on stdout is line-buffered: each ack leaves the process at once.
            println!("ACK {key} {}", kv.mod_revision);
            counter = store
                .update("/crash/counter", v(&i.to_string()), counter.mod_revision)
                .await
                .unwrap();
            println!("ACK /crash/counter {}", counter.mod_revision);
            i += 1;
        }
        panic!("crash child was not killed within 60s");
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let data: PathBuf = dir.path().join("store");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, &data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());

        // Every acknowledged write: key -> revision (the counter keeps its latest).
        let mut acked: Vec<(String, Revision)> = Vec::new();
        let parse = |line: &str, acked: &mut Vec<(String, Revision)>| {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (key, rev) = rest.trim_end().rsplit_once(' ').unwrap();
                acked.push((key.to_string(), rev.parse().unwrap()));
            }
        };
        let mut line = String::new();
        while acked.len() < 300 {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("crash child exited early after {} acks: {err}", acked.len());
            }
            parse(&line, &mut acked);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acks already written to the pipe before the kill count too.
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        // A torn last line (no newline) was never fully acknowledged.
        for line in rest.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            parse(line, &mut acked);
        }

        let store = EmbeddedStore::open(&data).unwrap();
        let max = acked.iter().map(|(_, r)| *r).max().unwrap();
        eprintln!(
            "crash test: {} acknowledged writes, last acknowledged revision {max}",
            acked.len()
        );
        let current = store.current_revision().await.unwrap();
        assert!(current >= max, "current {current} < acknowledged {max}");
        let mut last_counter = 0;
        for (key, rev) in &acked {
            if key == "/crash/counter" {
                last_counter = last_counter.max(*rev);
                continue;
            }
            let kv = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} at {rev} is lost"));
            assert_eq!(kv.mod_revision, *rev, "{key}");
        }
        let counter = store.get("/crash/counter").await.unwrap().unwrap();
        assert!(counter.mod_revision >= last_counter);
        // The store is consistent and writable after the crash.
        let keys = store.count("/crash/key/").await.unwrap();
        let acked_keys = acked.iter().filter(|(k, _)| k != "/crash/counter").count();
        assert!(keys >= acked_keys, "{keys} keys, {acked_keys} acknowledged");
        let listed = store.list("/crash/key/", None, 0, None).await.unwrap();
        assert_eq!(listed.items.len(), keys);
        let next = store.create("/after", v("x")).await.unwrap();
        assert_eq!(next.mod_revision, current + 1);
        // History from before the crash replays.
        let mut watch = store.watch("/crash/key/", 0).await.unwrap();
        let first = next_event(&mut watch).await;
        assert_eq!(first.kv.key, "/crash/key/00000000");
    }
}
