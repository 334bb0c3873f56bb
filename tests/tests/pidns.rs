//! PID namespaces on a one-node cluster, seen through the real kubectl: with
//! `shareProcessNamespace: true` every container of the pod sees the others' processes and
//! PID 1 is the pause process; otherwise a container sees only itself, its command as PID 1.
//! `kubectl exec` runs in the container's PID namespace, so `ps` and /proc show its view.

use std::time::Duration;

use anyhow::Result;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::test_image::IMAGE;

const NS: &str = "pidns-test";

/// A pod of two sleeping containers, `a` and `b`, told apart by how long they sleep.
fn two_containers(name: &str, share: bool) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}}}
spec:
  shareProcessNamespace: {share}
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: a, image: {IMAGE}, command: ["sleep", "3601"]}}
  - {{name: b, image: {IMAGE}, command: ["sleep", "3602"]}}
"#
    )
}

/// `/proc/1/cmdline` as container `container` of `pod` sees it, NULs as spaces.
fn pid1(c: &Cluster, pod: &str, container: &str) -> Result<String> {
    let raw = c.kubectl(&[
        "exec",
        "-n",
        NS,
        pod,
        "-c",
        container,
        "--",
        "cat",
        "/proc/1/cmdline",
    ])?;
    Ok(raw.replace('\0', " ").trim().to_string())
}

/// The command lines `ps` lists in container `container` of `pod` (the `ps` itself left out).
fn processes(c: &Cluster, pod: &str, container: &str) -> Result<Vec<String>> {
    let out = c.kubectl(&[
        "exec", "-n", NS, pod, "-c", container, "--", "ps", "-o", "pid,args",
    ])?;
    Ok(out
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.ends_with("ps -o pid,args"))
        .collect())
}

#[test]
fn pid_namespaces_per_container_or_shared_by_the_pod() -> Result<()> {
    if skip_unless_root("pid_namespaces_per_container_or_shared_by_the_pod") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    c.kubectl(&["create", "namespace", NS])?;
    c.apply(&two_containers("shared", true))?;
    c.apply(&two_containers("solo", false))?;
    c.wait_pod_running(NS, "shared", Duration::from_secs(90))?;
    c.wait_pod_running(NS, "solo", Duration::from_secs(90))?;

    // Shared: the pause process is PID 1 and each container sees both sleeps.
    for container in ["a", "b"] {
        let init = pid1(&c, "shared", container)?;
        assert!(
            init.contains("skiff-agent") && init.contains(" pause "),
            "PID 1 in {container}: {init:?}"
        );
        let ps = processes(&c, "shared", container)?;
        for other in ["sleep 3601", "sleep 3602"] {
            assert!(
                ps.iter().any(|p| p.ends_with(other)),
                "{container} does not see {other:?}: {ps:#?}"
            );
        }
        assert!(ps[0].starts_with("1 "), "{ps:#?}");
    }

    // Not shared: each container's own command is PID 1, the other container is invisible,
    // and nothing else of the node shows either.
    for (container, own, other) in [
        ("a", "sleep 3601", "sleep 3602"),
        ("b", "sleep 3602", "sleep 3601"),
    ] {
        assert_eq!(pid1(&c, "solo", container)?, own);
        let ps = processes(&c, "solo", container)?;
        assert_eq!(
            ps,
            [format!("1 {own}")],
            "{container} sees more than itself"
        );
        assert!(!ps.iter().any(|p| p.ends_with(other)));
    }

    // What exec starts is in that namespace too: a background process of one exec is seen
    // by the next, under a small pid.
    c.kubectl(&[
        "exec",
        "-n",
        NS,
        "solo",
        "-c",
        "a",
        "--",
        "sh",
        "-c",
        "sleep 3603 >/dev/null 2>&1 &",
    ])?;
    let ps = processes(&c, "solo", "a")?;
    assert!(ps.iter().any(|p| p.ends_with("sleep 3603")), "{ps:#?}");
    assert!(
        !processes(&c, "solo", "b")?
            .iter()
            .any(|p| p.ends_with("sleep 3603")),
        "b sees a's exec"
    );

    // Deleting the pods ends every process of their namespaces: the pause processes (PID 1
    // of the shared namespace, which takes its members along), the containers and what exec
    // left behind.
    c.kubectl(&[
        "delete",
        "pod",
        "shared",
        "solo",
        "-n",
        NS,
        "--wait=true",
        "--timeout=60s",
    ])?;
    let left = host_processes_with(&["sleep 3601", "sleep 3602", "sleep 3603"]);
    assert!(left.is_empty(), "left running: {left:#?}");
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

/// Command lines of the node's processes that are one of `commands`.
fn host_processes_with(commands: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .filter(|cmd| commands.contains(&cmd.as_str()))
        .collect()
}
