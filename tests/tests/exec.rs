//! `kubectl exec`, `kubectl cp` and `kubectl attach` through the API server to the node agent, over the
//! WebSocket channel protocol the newest kubectl speaks: output, exit codes, the pod's
//! environment, stdin, a terminal (kubectl on a pseudo-terminal the test opens), files copied
//! both ways byte for byte, kubectl 1.20's exec over SPDY/3.1 (with a terminal too; its
//! attach refused with a message naming the protocols served), and kube's 403 for a user who
//! may not exec.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};

const NS: &str = "exec-e2e";

/// kubectl `args` with `stdin` piped in: (exit code, stdout, stderr).
fn kubectl_piped(c: &Cluster, args: &[&str], stdin: &[u8]) -> Result<(i32, Vec<u8>, String)> {
    let mut child = c
        .kubectl_command()?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output()?;
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("stdin feeder panicked"))??;
    Ok((
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// kubectl `args` on a pseudo-terminal of 100x30 the test holds, typing `input`: (exit code,
/// everything the terminal showed).
fn kubectl_on_terminal(c: &Cluster, args: &[&str], input: &[u8]) -> Result<(i32, String)> {
    on_terminal(c.kubectl_command()?, args, input)
}

/// `kubectl` (a command against the cluster) with `args` on a pseudo-terminal, as
/// [`kubectl_on_terminal`].
fn on_terminal(mut kubectl: Command, args: &[&str], input: &[u8]) -> Result<(i32, String)> {
    let size = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None)?;
    let slave = |fd: &OwnedFd| -> Result<Stdio> { Ok(Stdio::from(fd.try_clone()?)) };
    let mut child = kubectl
        .args(args)
        .stdin(slave(&pty.slave)?)
        .stdout(slave(&pty.slave)?)
        .stderr(slave(&pty.slave)?)
        .spawn()?;
    // The command keeps its copies of the slave: only kubectl may hold the terminal, so that
    // reading the master ends when it is gone.
    drop(kubectl);
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone()?;
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once kubectl, the last holder of the terminal, is gone.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    // kubectl puts the terminal in raw mode once it is connected; typed earlier, the input
    // would be echoed and edited by the local line discipline first.
    std::thread::sleep(Duration::from_secs(3));
    master.write_all(input)?;
    let status = wait_child(&mut child, Duration::from_secs(60))?;
    drop(master);
    let shown = output
        .join()
        .map_err(|_| anyhow::anyhow!("terminal reader panicked"))?;
    Ok((status, String::from_utf8_lossy(&shown).into_owned()))
}

fn wait_child(child: &mut std::process::Child, limit: Duration) -> Result<i32> {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.code().unwrap_or(-1));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            anyhow::bail!("kubectl did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes that are not text and not a repeating pattern tar or a pipe could get away with.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn kubectl_exec_and_cp_through_the_api_server() -> Result<()> {
    if skip_unless_root("kubectl_exec_and_cp_through_the_api_server") {
        return Ok(());
    }
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    })?;
    c.kubectl(&["create", "namespace", NS])?;
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: shell, namespace: {NS}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.test/busybox:1
    command: ["sleep", "3600"]
"#
    ))?;
    c.wait_pod_running(NS, "shell", Duration::from_secs(90))?;

    // Output, and the exit code as kubectl's own.
    assert_eq!(
        c.kubectl(&["exec", "-n", NS, "shell", "--", "echo", "hi"])?,
        "hi\n"
    );
    let (code, out, err) = kubectl_piped(
        &c,
        &[
            "exec",
            "-n",
            NS,
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    )?;
    assert_eq!(
        (code, String::from_utf8_lossy(&out).as_ref(), err.as_str()),
        (3, "out\n", "err\ncommand terminated with exit code 3\n")
    );
    // The container's environment, service variables included.
    let env = c.kubectl(&["exec", "-n", NS, "shell", "--", "env"])?;
    assert!(
        env.lines()
            .any(|l| l.starts_with("KUBERNETES_SERVICE_HOST=")),
        "{env}"
    );
    // A command runs in the container's root and network, not the host's.
    let hostname = c.kubectl(&["exec", "-n", NS, "shell", "--", "hostname"])?;
    assert_eq!(hostname.trim(), "shell");
    // SIGPIPE is at its default, as in any container: `yes` ends when `head` has read enough
    // (`timeout` turns a hang into exit 124).
    let piped = c.kubectl(&[
        "exec",
        "-n",
        NS,
        "shell",
        "--",
        "timeout",
        "20",
        "sh",
        "-c",
        "yes | head -c 6",
    ])?;
    assert_eq!(piped, "y\ny\ny\n");

    // stdin, to its end: a megabyte comes through whole.
    let data = payload(1 << 20);
    let (code, out, err) = kubectl_piped(
        &c,
        &[
            "exec",
            "-i",
            "-n",
            NS,
            "shell",
            "--",
            "sh",
            "-c",
            "cat > /tmp/in.bin; wc -c < /tmp/in.bin; md5sum /tmp/in.bin",
        ],
        &data,
    )?;
    assert_eq!(code, 0, "{err}");
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(out.lines().next().map(str::trim), Some("1048576"), "{out}");
    let (code, echoed, _) = kubectl_piped(
        &c,
        &["exec", "-i", "-n", NS, "shell", "--", "cat"],
        b"line one\nline two\n",
    )?;
    assert_eq!((code, echoed.as_slice()), (0, &b"line one\nline two\n"[..]));

    // A terminal: the shell sees one, of the size of kubectl's, and its exit code comes back.
    let (code, shown) = kubectl_on_terminal(
        &c,
        &["exec", "-it", "-n", NS, "shell", "--", "sh"],
        b"echo term=$(test -t 0 && echo yes); stty size; echo sum=$((6*7)); exit 5\n",
    )?;
    // (What was typed is echoed by the remote terminal too: the checks look for output only.)
    assert_eq!(code, 5, "{shown}");
    assert!(shown.contains("term=yes"), "{shown}");
    assert!(shown.contains("30 100"), "{shown}");
    assert!(shown.contains("sum=42"), "{shown}");

    // kubectl cp both ways (tar through exec), byte for byte.
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("up.bin");
    let upload = payload(300_000);
    std::fs::write(&local, &upload)?;
    c.kubectl(&[
        "cp",
        local.to_str().context("path")?,
        &format!("{NS}/shell:/tmp/up.bin"),
    ])?;
    let size = c.kubectl(&["exec", "-n", NS, "shell", "--", "wc", "-c", "/tmp/up.bin"])?;
    assert_eq!(size.split_whitespace().next(), Some("300000"), "{size}");
    c.kubectl(&[
        "exec",
        "-n",
        NS,
        "shell",
        "--",
        "sh",
        "-c",
        "head -c 5000 /tmp/up.bin > /tmp/down.bin; cat /tmp/up.bin >> /tmp/down.bin",
    ])?;
    let back = dir.path().join("down.bin");
    c.kubectl(&[
        "cp",
        &format!("{NS}/shell:/tmp/down.bin"),
        back.to_str().context("path")?,
    ])?;
    let mut want = upload[..5000].to_vec();
    want.extend_from_slice(&upload);
    assert!(
        std::fs::read(&back)? == want,
        "the file copied back differs"
    );

    // kubectl attach: the container's output from now on (counted lines it printed later).
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: ticker, namespace: {NS}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: tick
    image: skiff.test/busybox:1
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.5; done"]
"#
    ))?;
    c.wait_pod_running(NS, "ticker", Duration::from_secs(90))?;
    std::thread::sleep(Duration::from_secs(2));
    let mut attach = c
        .kubectl_command()?
        .args(["attach", "-n", NS, "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(4));
    attach.kill()?;
    let attached = attach.wait_with_output()?;
    let seen = String::from_utf8_lossy(&attached.stdout).into_owned();
    let ticks: Vec<u32> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("tick-")?.parse().ok())
        .collect();
    assert!(
        ticks.len() >= 3,
        "{seen}{}",
        String::from_utf8_lossy(&attached.stderr)
    );
    // Not the log from the start: the first ticks were printed before attaching.
    assert!(ticks[0] > 2, "{seen}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{seen}");

    // Debian's kubectl 1.20 speaks SPDY/3.1 only: exec works over it (output, stdin, the
    // exit code); attach is refused, naming what is served.
    let old = skiff_tests::Kubectl::debian_120()?;
    let run_old = |args: &[&str], stdin: &[u8]| -> Result<(i32, String, String)> {
        let mut child = old
            .command_with(c.kubeconfig(), c.dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || input.write_all(&data));
        let out = child.wait_with_output()?;
        let _ = feeder.join();
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, out, err) = run_old(
        &[
            "exec",
            "-n",
            NS,
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    )?;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "out\n", "err\ncommand terminated with exit code 3\n")
    );
    let (code, out, err) = run_old(
        &["exec", "-i", "-n", NS, "shell", "--", "wc", "-c"],
        &[7u8; 5000],
    )?;
    assert_eq!((code, out.trim()), (0, "5000"), "{err}");
    // With a terminal: its size comes on the resize stream.
    let (code, shown) = on_terminal(
        old.command_with(c.kubeconfig(), c.dir()),
        &["exec", "-it", "-n", NS, "shell", "--", "sh"],
        b"echo term=$(test -t 0 && echo yes); stty size; echo sum=$((6*7)); exit 5\n",
    )?;
    assert_eq!(code, 5, "{shown}");
    assert!(
        shown.contains("term=yes") && shown.contains("30 100") && shown.contains("sum=42"),
        "{shown}"
    );
    let (code, _, err) = run_old(&["attach", "-n", NS, "shell"], b"")?;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("SPDY/3.1 is not supported")
            && err.contains("v5.channel.k8s.io, v4.channel.k8s.io"),
        "{err}"
    );

    // A user who may read pods but not exec gets kube's 403.
    c.grant_pod_reader(NS, "exec-viewer")?;
    let kubeconfig = c.user_kubeconfig("exec-viewer")?;
    let denied = c
        .kubectl_command()?
        .env("KUBECONFIG", &kubeconfig)
        .args(["exec", "-n", NS, "shell", "--", "echo", "hi"])
        .output()?;
    let err = String::from_utf8_lossy(&denied.stderr).into_owned();
    assert!(!denied.status.success(), "{err}");
    assert!(
        err.contains("pods \"shell\" is forbidden: User \"exec-viewer\" cannot")
            && err
                .contains("resource \"pods/exec\" in API group \"\" in the namespace \"exec-e2e\""),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&denied.stdout).contains("hi"));

    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
