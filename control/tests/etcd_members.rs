//! The etcd store on a three-member etcd cluster (Debian's `/usr/bin/etcd` on free loopback
//! ports): after `kill -9` of the member the store uses, reads, writes and new watches go on
//! through the others at once; reads wait out the election of a new leader.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use skiff_control::store::etcd::EtcdStore;
use skiff_control::store::{EventKind, Store};

struct Member {
    child: Child,
    client_url: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cluster(dir: &std::path::Path) -> Vec<Member> {
    let ports = skiff_tests::free_ports::<6>();
    let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
    let initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", peer(i))).collect();
    let members: Vec<Member> = (0..3)
        .map(|i| {
            let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
            let child = Command::new(skiff_tests::ETCD_BIN)
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting etcd (`cargo xtask setup` installs Debian's etcd-server)");
            Member { child, client_url }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, _) in members.iter().enumerate() {
        while !skiff_tests::etcd_healthy(ports[2 * i]) {
            assert!(
                Instant::now() < deadline,
                "etcd member m{i} never became healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    members
}

#[tokio::test]
async fn a_dead_member_costs_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = start_cluster(dir.path());
    let endpoints: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let store = EtcdStore::connect(&endpoints).await.unwrap();
    let first = store
        .create("/registry/test/a", b"1".to_vec())
        .await
        .unwrap();

    // The store uses the first member: kill it as a crash would.
    let dead = members.remove(0);
    drop(dead);

    // Every kind of request goes on at once, through the others. (A read first: when the
    // dead member led the etcd cluster, a write until the others elected a leader fails with
    // etcd's "request timed out", whichever member it goes to, and may or may not have been
    // applied, so it is not repeated; a read is.)
    let got = store.get("/registry/test/a").await.unwrap().unwrap();
    assert_eq!(got.value, b"1");
    let updated = store
        .update("/registry/test/a", b"2".to_vec(), first.mod_revision)
        .await
        .unwrap();
    let mut watch = store
        .watch("/registry/test/", updated.mod_revision)
        .await
        .unwrap();
    store
        .create("/registry/test/b", b"3".to_vec())
        .await
        .unwrap();
    let listed = store.list("/registry/test/", None, 0, None).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch goes on")
        .expect("no watch error");
    assert_eq!(event.kind, EventKind::Put);
    assert_eq!(event.kv.key, "/registry/test/b");
    store.delete("/registry/test/b", None).await.unwrap();
    assert_eq!(store.count("/registry/test/").await.unwrap(), 1);
}

/// The member that leads the etcd cluster, asked of each member.
async fn leader_index(members: &[Member]) -> usize {
    let mut ids = Vec::new();
    let mut leader = 0;
    for m in members {
        let mut c = etcd_client::Client::connect([m.client_url.as_str()], None)
            .await
            .unwrap();
        let status = c.status().await.unwrap();
        let header = status.header().expect("a response header");
        ids.push(header.member_id());
        leader = status.leader();
    }
    ids.iter()
        .position(|id| *id == leader)
        .expect("one member leads")
}

#[tokio::test]
async fn reads_wait_out_a_leader_election() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = start_cluster(dir.path());
    let endpoints: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let store = EtcdStore::connect(&endpoints).await.unwrap();
    store
        .create("/registry/test/a", b"1".to_vec())
        .await
        .unwrap();

    // Without a leader the members answer "no leader" until they elected one; a read in
    // that time is answered once they have, not failed.
    let leader = leader_index(&members).await;
    drop(members.remove(leader));
    // Reads without pause from the kill until well past the election.
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let got = store.get("/registry/test/a").await;
        let got = got.unwrap_or_else(|e| panic!("read {reads} after {:?}: {e}", started.elapsed()));
        assert_eq!(got.expect("the key").value, b"1");
        reads += 1;
    }
}
