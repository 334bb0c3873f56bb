//! `cargo xtask up` end to end, inside a private network namespace so the host is never
//! touched: the one-node cluster comes up, a Service answers from both pods, and SIGTERM (what
//! `cargo xtask down` sends) leaves the namespace's links, addresses, routes, rules, iptables
//! tables and forwarding and redirect sysctls exactly as they were, and no cgroup, bpffs pin or state file.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use skiff_tests::cluster::{cgroup2_mount, skip_unless_root};
use skiff_tests::{Kubectl, target_dir, wait_for, workspace_binary};

const NODE_IP: &str = "10.99.0.2";

/// The test's network namespace, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `cmd` will run in network namespace `ns` (only the network: cgroups and mounts stay the
/// host's, as `up` needs them).
fn in_netns(cmd: &mut Command, ns: &str) -> Result<()> {
    let file = File::open(Path::new("/run/netns").join(ns))
        .with_context(|| format!("opening netns {ns}"))?;
    // SAFETY: setns(2) is async-signal-safe; the descriptor was opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(())
        });
    }
    Ok(())
}

fn run_in(ns: &str, argv: &[&str]) -> Result<String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    in_netns(&mut cmd, ns)?;
    let out = cmd.output().with_context(|| format!("running {argv:?}"))?;
    ensure!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What `up` may change in the namespace (counters and comments of iptables-save dropped).
fn snapshot(ns: &str) -> Result<String> {
    let mut out = String::new();
    for argv in [
        &["ip", "-o", "link", "show"][..],
        &["ip", "-o", "addr", "show"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "rule"],
        &["iptables-save"],
        &["iptables-legacy-save"],
        &["cat", "/proc/sys/net/ipv4/ip_forward"],
        &["cat", "/proc/sys/net/ipv4/conf/all/send_redirects"],
    ] {
        out += &format!("== {}\n", argv.join(" "));
        for line in run_in(ns, argv)?.lines() {
            if line.starts_with('#') {
                continue;
            }
            // Interface indexes and veth peers of links that came and went differ; names and
            // flags must not.
            let line = line.split(" link/").next().unwrap_or(line);
            out += &line
                .split_whitespace()
                .filter(|w| !(w.starts_with('[') && w.ends_with(']')))
                .collect::<Vec<_>>()
                .join(" ");
            out.push('\n');
        }
    }
    Ok(out)
}

/// The `cargo xtask up` process; SIGKILLed (then cleaned up by `xtask down`) if the test
/// fails before it stopped.
struct Up {
    child: Option<Child>,
    xtask: PathBuf,
    data_dir: PathBuf,
    ns: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.data_dir.join("up.json").exists() {
            let mut down = Command::new(&self.xtask);
            down.arg("down")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .env("CARGO_TARGET_DIR", target_dir());
            if in_netns(&mut down, &self.ns).is_ok() {
                let _ = down.status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[test]
fn xtask_up_and_down_in_a_netns() -> Result<()> {
    if skip_unless_root("xtask_up_and_down_in_a_netns") {
        return Ok(());
    }
    let xtask = workspace_binary("xtask");
    let pid = std::process::id();
    let node = format!("xtask-up-test-{pid}");
    let ns = Netns(format!("skup-{pid}"));
    let status = Command::new("ip").args(["netns", "add", &ns.0]).status()?;
    ensure!(status.success(), "ip netns add {}", ns.0);
    run_in(&ns.0, &["ip", "link", "set", "lo", "up"])?;
    // No IPv6 on the test links: their addresses finishing DAD would differ between the
    // snapshots for reasons of their own.
    run_in(
        &ns.0,
        &[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
        ],
    )?;
    // The node's "uplink": a veth pair inside the namespace (this kernel has no dummy links).
    let addr = format!("{NODE_IP}/24");
    for argv in [
        &[
            "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ][..],
        &["ip", "addr", "add", &addr, "dev", "uplink0"],
        &["ip", "link", "set", "uplink0", "up"],
        &["ip", "link", "set", "uplink1", "up"],
        // A default route toward a gateway that never answers: what leaves by it is lost.
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.99.0.1",
            "dev",
            "uplink0",
        ],
    ] {
        run_in(&ns.0, argv)?;
    }
    let before = snapshot(&ns.0)?;

    let data_dir = target_dir().join(format!("xtask-up-test-{pid}"));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let output = data_dir.join("xtask-up.out");
    let mut cmd = Command::new(&xtask);
    cmd.args([
        "up",
        "--no-setup",
        "--no-build",
        "--debug",
        "--node-ip",
        NODE_IP,
    ])
    .args(["--node-name", &node])
    .arg("--data-dir")
    .arg(&data_dir)
    .env("CARGO_TARGET_DIR", target_dir())
    .stdin(Stdio::null())
    .stdout(File::create(&output)?)
    .stderr(File::create(data_dir.join("xtask-up.err"))?);
    in_netns(&mut cmd, &ns.0)?;
    let mut up = Up {
        child: Some(cmd.spawn().context("starting xtask up")?),
        xtask: xtask.clone(),
        data_dir: data_dir.clone(),
        ns: ns.0.clone(),
    };
    let printed = |up: &mut Up| -> Result<String> {
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        if let Some(child) = up.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!(
                "xtask up exited ({status}):\n{text}\n{}",
                std::fs::read_to_string(data_dir.join("xtask-up.err")).unwrap_or_default()
            );
        }
        Ok(text)
    };
    wait_for("xtask up to be up", Duration::from_secs(120), || {
        Ok(printed(&mut up)?.contains("skiff is up").then_some(()))
    })?;
    let text = printed(&mut up)?;
    let kubeconfig = std::fs::canonicalize(&data_dir)?.join("control/admin.kubeconfig");
    ensure!(
        text.contains(&format!("kubeconfig  {}", kubeconfig.display())),
        "no kubeconfig in:\n{text}"
    );

    let kubectl = Kubectl::newest()?;
    let kc = |args: &[&str]| -> Result<String> {
        let mut cmd = kubectl.command_with(&kubeconfig, &data_dir);
        cmd.args(args);
        in_netns(&mut cmd, &ns.0)?;
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    kc(&[
        "create",
        "deployment",
        "web",
        "--image=skiff.test/busybox:1",
        "--replicas=2",
        "--",
        "sh",
        "-c",
        "hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
    ])?;
    kc(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ])?;
    kc(&["rollout", "status", "deployment/web", "--timeout=90s"])?;
    let pods: BTreeSet<String> = kc(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
    ])?
    .lines()
    .map(String::from)
    .collect();
    ensure!(pods.len() == 2, "pods: {pods:?}");
    let vip = kc(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    // As on any node, every host process reaches Services: a plain shell, in no cgroup of
    // the cluster's.
    let script =
        format!("for i in $(seq 30); do timeout 3 wget -q -O - http://{vip}/ || echo FAIL; done");
    wait_for(
        "both pods behind the service",
        Duration::from_secs(30),
        || {
            let seen: BTreeSet<String> = run_in(&ns.0, &["sh", "-c", &script])?
                .lines()
                .map(String::from)
                .collect();
            if seen == pods {
                return Ok(Some(()));
            }
            bail!("the service answered {seen:?}")
        },
    )?;
    ensure!(run_in(&ns.0, &["cat", "/proc/sys/net/ipv4/ip_forward"])?.trim() == "1");
    untranslated_service_address_fails_on_the_node(&ns.0)?;

    // What `cargo xtask down` does to a running `up`.
    let child = up.child.as_mut().context("xtask up")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = wait_for("xtask up to stop", Duration::from_secs(90), || {
        Ok(child.try_wait()?)
    })?;
    up.child = None;
    let text = std::fs::read_to_string(&output)?;
    ensure!(status.success(), "xtask up ended with {status}:\n{text}");
    ensure!(text.contains("the host is as it was"), "{text}");

    let after = snapshot(&ns.0)?;
    ensure!(
        before == after,
        "the namespace changed:\n--- before\n{before}\n--- after\n{after}"
    );
    ensure!(!data_dir.join("up.json").exists(), "up.json left behind");
    let cgroup = cgroup2_mount()?.join("skiff").join(format!("up-{node}"));
    ensure!(!cgroup.exists(), "{} left behind", cgroup.display());
    let pins = Path::new("/sys/fs/bpf/skiff").join(format!("up-{node}"));
    ensure!(!pins.exists(), "{} left behind", pins.display());
    Ok(())
}

/// A service address no Service holds is refused on the node at once, never routed out by
/// the namespace's default route (which leads to a peer that would swallow it).
fn untranslated_service_address_fails_on_the_node(ns: &str) -> Result<()> {
    let started = std::time::Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "timeout",
            "5",
            "wget",
            "-O",
            "/dev/null",
            "-t",
            "1",
        ])
        .arg("http://10.111.222.233/")
        .stdin(Stdio::null())
        .output()?;
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    ensure!(!out.status.success(), "10.111.222.233 answered");
    ensure!(
        out.status.code() != Some(124),
        "a connection to an unused service address hung instead of failing on the node"
    );
    ensure!(
        ["refused", "unreachable", "no route"]
            .iter()
            .any(|w| said.contains(w)),
        "unexpected failure after {took:?}: {said}"
    );
    Ok(())
}
