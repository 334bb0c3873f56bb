//! Leader election across processes: two `skiff-control`s on one etcd; one leads, the other
//! waits; kill -9 the leader and the other takes over within the lease duration, and the
//! work (a Deployment's pods) is not done twice.

use std::time::{Duration, Instant};

use skiff_tests::{ControlPlane, Etcd, Kubectl, StoreBackend};

const ELECTION: &[&str] = &[
    "--leader-elect-lease-duration",
    "4",
    "--leader-elect-renew-deadline",
    "3",
    "--leader-elect-retry-period",
    "1",
];

fn leads(cp: &ControlPlane) -> bool {
    cp.log().contains("became leader")
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_leader_at_a_time_and_failover_after_kill_9() {
    let etcd = Etcd::start().expect("starting etcd");
    let mut a = ControlPlane::start_with(StoreBackend::Etcd(&etcd), ELECTION).unwrap();
    wait("the first process to lead", Duration::from_secs(30), || {
        leads(&a)
    });
    let b = ControlPlane::start_with(StoreBackend::Etcd(&etcd), ELECTION).unwrap();
    let k = Kubectl::newest().unwrap();

    // Work for the leader: a Deployment of 3 (pods stay unbound: there are no nodes).
    k.run(
        &a,
        &[
            "create",
            "deployment",
            "web",
            "--image=kubia:v1",
            "--replicas=3",
        ],
    )
    .unwrap();
    let pod_names = |cp: &ControlPlane| -> Vec<String> {
        k.run(cp, &["get", "pods", "-l", "app=web", "-o", "name"])
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    wait("3 pods", Duration::from_secs(30), || {
        pod_names(&a).len() == 3
    });
    // Several retry periods later the second process still only waits.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!leads(&b), "two leaders at once:\n{}", b.log());
    let holder = k
        .run(
            &b,
            &[
                "get",
                "lease",
                "kube-controller-manager",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        )
        .unwrap();
    assert!(
        a.log().contains(holder.trim()),
        "lease holder {holder} is not the first process"
    );

    let before = pod_names(&b);
    a.kill();
    let killed = Instant::now();
    wait(
        "the second process to take over",
        Duration::from_secs(30),
        || leads(&b),
    );
    let took = killed.elapsed();
    // The follower must wait one lease duration (4 s) after it last saw a renewal; allow
    // retry periods and a loaded machine on top, but not a second lease term wasted.
    assert!(took < Duration::from_secs(12), "takeover took {took:?}");
    // The new leader's controllers resync: still exactly the same 3 pods, none created twice.
    std::thread::sleep(Duration::from_secs(3));
    let after = pod_names(&b);
    assert_eq!(before, after, "work was redone after failover");
    let lease = k
        .run(
            &b,
            &[
                "get",
                "lease",
                "kube-controller-manager",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.spec.leaseTransitions}",
            ],
        )
        .unwrap();
    assert_eq!(lease.trim(), "1", "lease transitions");
}
