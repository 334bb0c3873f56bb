//! Container lifecycle on a one-node cluster, with the real kubectl: `postStart` runs after
//! the container starts, and on deletion `preStop` runs before the container gets SIGTERM
//! (the hooks and the container write to one hostPath file the test reads); what a container
//! writes to its termination-message file, or with `FallbackToLogsOnError` the tail of its
//! log, becomes `state.terminated.message`; a native sidecar runs beside the app.

use std::time::Duration;

use anyhow::Result;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::test_image::IMAGE;
use skiff_tests::wait_for;

/// A directory for the hostPath volume, removed when the test ends however it ends.
struct HostDir(std::path::PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hooks_messages_and_sidecars() -> Result<()> {
    if skip_unless_root("hooks_messages_and_sidecars") {
        return Ok(());
    }
    let dir = HostDir(std::env::temp_dir().join(format!("skiff-lifecycle-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    let log = dir.0.join("log");
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooks, namespace: default}}
spec:
  terminationGracePeriodSeconds: 20
  volumes:
  - name: data
    hostPath: {{path: {dir}, type: Directory}}
  containers:
  - name: main
    image: {IMAGE}
    command: ["sh", "-c", "trap 'echo term >> /data/log; exit 0' TERM; echo started >> /data/log; while true; do sleep 1; done"]
    volumeMounts: [{{name: data, mountPath: /data}}]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo poststart >> /data/log"]}}
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop >> /data/log; sleep 2"]}}
"#,
        dir = dir.0.display()
    ))?;
    wait_for("the postStart hook", Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.contains("poststart").then_some(()))
    })?;
    c.kubectl(&["delete", "pod", "hooks", "--wait=true", "--timeout=60s"])?;
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    let at = |what: &str| lines.iter().position(|l| *l == what);
    assert!(at("started").is_some(), "{lines:?}");
    let (prestop, term) = (at("prestop"), at("term"));
    assert!(
        prestop.is_some() && term.is_some() && prestop < term,
        "preStop must run before SIGTERM: {lines:?}"
    );
    termination_messages(&c)?;
    sidecar(&c)
}

/// A native sidecar (an init container with restartPolicy Always) runs beside the app:
/// `kubectl get pod` counts it (2/2 Running).
fn sidecar(c: &Cluster) -> Result<()> {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: with-sidecar, namespace: default}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - {{name: proxy, image: {IMAGE}, restartPolicy: Always, command: ["sleep", "3600"]}}
  containers:
  - {{name: app, image: {IMAGE}, command: ["sleep", "3600"]}}
"#
    ))?;
    wait_for(
        "the pod with a sidecar to be 2/2 Running",
        Duration::from_secs(60),
        || {
            let row = c.kubectl(&["get", "pod", "with-sidecar", "--no-headers"])?;
            let cells: Vec<&str> = row.split_whitespace().collect();
            Ok((cells.get(1..3) == Some(&["2/2", "Running"][..])).then_some(()))
        },
    )
}

fn termination_messages(c: &Cluster) -> Result<()> {
    let pod = |name: &str, extra: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {IMAGE}\n\
             \x20   command: [\"sh\", \"-c\", \"{script}\"]\n{extra}"
        )
    };
    c.apply(&pod(
        "msg-file",
        "",
        "echo bye > /dev/termination-log; exit 3",
    ))?;
    c.apply(&pod(
        "msg-path",
        "    terminationMessagePath: /tmp/why\n",
        "echo custom > /tmp/why",
    ))?;
    c.apply(&pod(
        "msg-logs",
        "    terminationMessagePolicy: FallbackToLogsOnError\n",
        "echo first; echo oops; exit 1",
    ))?;
    c.apply(&pod(
        "msg-none",
        "    terminationMessagePolicy: FallbackToLogsOnError\n",
        "echo fine",
    ))?;
    for (name, want) in [
        ("msg-file", Some("bye\n")),
        ("msg-path", Some("custom\n")),
        ("msg-logs", Some("first\noops\n")),
        // A success does not fall back to the log.
        ("msg-none", None),
    ] {
        let terminated: serde_json::Value = wait_for(
            &format!("{name} to terminate"),
            Duration::from_secs(60),
            || {
                let pod: serde_json::Value =
                    serde_json::from_str(&c.kubectl(&["get", "pod", name, "-o", "json"])?)?;
                let t = pod["status"]["containerStatuses"][0]["state"]["terminated"].clone();
                Ok((!t.is_null()).then_some(t))
            },
        )?;
        assert_eq!(terminated["message"].as_str(), want, "{name}: {terminated}");
    }
    Ok(())
}
