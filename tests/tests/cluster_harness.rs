//! The multi-node cluster harness itself: the underlay and node namespaces, the control plane
//! reachable from inside a node, the test image archive, detaching and teardown. With a
//! skiff-agent built that has `run`, `image import` and `cleanup`, also a cluster of agents
//! becoming Ready and an agent surviving `kill -9` and a restart.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use skiff_tests::cluster::{self, Cluster, ClusterOptions, ClusterState, Store};
use skiff_tests::test_image;

fn no_agents(nodes: usize) -> ClusterOptions {
    ClusterOptions {
        nodes,
        start_agents: false,
        ..Default::default()
    }
}

/// Everything a cluster made on the machine, to check it is gone after teardown.
struct Footprint {
    netns: Vec<PathBuf>,
    host_link: PathBuf,
    cgroup: PathBuf,
    bpffs: Vec<PathBuf>,
    dir: PathBuf,
    registry: PathBuf,
    control: cluster::ProcRecord,
}

impl Footprint {
    fn of(c: &Cluster) -> Footprint {
        let s = c.state();
        let mut netns: Vec<PathBuf> = s.nodes.iter().map(|n| n.netns_path()).collect();
        netns.push(Path::new("/run/netns").join(&s.underlay_netns));
        Footprint {
            netns,
            host_link: Path::new("/sys/class/net").join(&s.host_link),
            cgroup: s.cgroup.clone().expect("cluster cgroup"),
            bpffs: s.nodes.iter().map(|n| n.bpffs.clone()).collect(),
            dir: s.dir.clone(),
            registry: Path::new("/run/skiff-clusters").join(format!("{}.json", s.name)),
            control: s.control.expect("control plane runs"),
        }
    }

    fn present(&self) -> Vec<String> {
        let mut paths: Vec<&PathBuf> = self.netns.iter().chain(&self.bpffs).collect();
        paths.extend([&self.host_link, &self.cgroup, &self.dir, &self.registry]);
        let mut left: Vec<String> = paths
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if self.control.alive() {
            left.push(format!("skiff-control (pid {})", self.control.pid));
        }
        left
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TCP connect from inside `node` to `ip:port` (bash's /dev/tcp, 5 s at most).
fn connects_from(c: &Cluster, node: &str, ip: &str, port: u16) -> Result<bool> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let out = c.exec(node, &["timeout", "5", "bash", "-c", &script])?;
    Ok(out.status.success())
}

#[test]
fn test_image_archive_is_valid() -> Result<()> {
    if !Path::new(test_image::BUSYBOX).exists() {
        cluster::cannot_run(
            "test_image_archive_is_valid",
            &format!("{} missing (busybox-static)", test_image::BUSYBOX),
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("busybox.tar");
    test_image::build(&archive)?;
    let info = test_image::inspect(&archive)?;
    assert_eq!(info.repo_tags, vec![test_image::IMAGE.to_string()]);
    assert_eq!(info.config["architecture"], "amd64");
    assert_eq!(info.config["os"], "linux");
    assert_eq!(info.config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(info.config["config"]["WorkingDir"], "/");
    assert!(
        info.config["config"]["Env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH=")
    );
    assert_eq!(info.layer_digests.len(), 1);

    let entry = |path: &str| {
        info.layer_entries
            .iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("{path} missing from the layer"))
    };
    let busybox = entry("bin/busybox");
    assert_eq!(busybox.kind, tar::EntryType::Regular);
    assert_eq!(busybox.mode & 0o777, 0o755);
    assert_eq!(
        busybox.size,
        std::fs::metadata(test_image::BUSYBOX)?.len(),
        "bin/busybox is /bin/busybox"
    );
    let udp_echo = entry(test_image::UDP_ECHO_PATH.trim_start_matches('/'));
    assert_eq!(udp_echo.kind, tar::EntryType::Regular);
    assert_eq!(udp_echo.mode & 0o777, 0o755);
    assert_eq!(udp_echo.size, test_image::UDP_ECHO.len() as u64);
    let applets = test_image::applets()?;
    for applet in ["sh", "ls", "cat", "sleep", "wget", "nc", "httpd"] {
        if !applets.iter().any(|a| a == applet) {
            continue; // not every busybox build has every applet
        }
        let e = entry(&format!("bin/{applet}"));
        assert_eq!(e.kind, tar::EntryType::Symlink, "bin/{applet}");
        assert_eq!(e.link.as_deref(), Some("busybox"), "bin/{applet}");
    }
    let links = info
        .layer_entries
        .iter()
        .filter(|e| e.kind == tar::EntryType::Symlink)
        .count();
    assert_eq!(links, applets.len(), "one symlink per applet");
    for d in ["etc", "var/www", "proc", "dev", "sys", "root"] {
        assert_eq!(entry(d).kind, tar::EntryType::Directory, "{d}");
    }
    assert_eq!(entry("tmp").mode & 0o7777, 0o1777);

    // Deterministic: the same busybox gives the same digests.
    let again = dir.path().join("again.tar");
    test_image::build(&again)?;
    assert_eq!(std::fs::read(&archive)?, std::fs::read(&again)?);

    // The cached archive is built once and reused.
    let cached = test_image::archive()?;
    let mtime = std::fs::metadata(&cached)?.modified()?;
    assert_eq!(test_image::archive()?, cached);
    assert_eq!(std::fs::metadata(&cached)?.modified()?, mtime);
    // A cached archive with other content (here: not an archive at all) is rebuilt.
    let stale = dir.path().join("stale.tar");
    std::fs::write(&stale, b"an older image")?;
    test_image::ensure_current(&stale)?;
    assert_eq!(std::fs::read(&stale)?, std::fs::read(&archive)?);

    // As root: the unpacked layer is a working root filesystem.
    if cluster::is_root() {
        let rootfs = dir.path().join("rootfs");
        unpack_layer(&archive, &rootfs)?;
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args([
                "/bin/sh",
                "-c",
                "cd /tmp && echo hi > f && cat f && ls /bin | wc -l",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "sh in the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("hi"));
        let count: usize = lines.next().unwrap_or("0").trim().parse()?;
        // busybox, its applets, skiff-udp-echo and skiff-https-get.
        assert_eq!(count, applets.len() + 3);
        // skiff-udp-echo runs in the busybox-only root (static) and answers itself.
        let mut server = Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/skiff-udp-echo", "serve", "47999"])
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args([
                "/bin/skiff-udp-echo",
                "ask",
                "-p",
                "47998",
                "127.0.0.1",
                "47999",
            ])
            .output();
        let _ = server.kill();
        let _ = server.wait();
        let out = out?;
        ensure!(
            out.status.success(),
            "skiff-udp-echo in the image: {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        let reply = stdout(&out);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
        let host = host.trim();
        ensure!(
            reply.trim().ends_with(&format!(" {host} 127.0.0.1:47998")),
            "skiff-udp-echo answered {reply:?}"
        );
    } else {
        cluster::cannot_run(
            "test_image_archive_is_valid (rootfs part)",
            "chroot into the unpacked image needs root",
        );
    }
    Ok(())
}

fn unpack_layer(archive: &Path, into: &Path) -> Result<()> {
    let mut a = tar::Archive::new(std::fs::File::open(archive)?);
    for e in a.entries()? {
        let mut e = e?;
        if e.path()?.to_string_lossy().ends_with("/layer.tar") {
            let mut layer = Vec::new();
            e.read_to_end(&mut layer)?;
            let mut la = tar::Archive::new(&layer[..]);
            la.set_preserve_permissions(true);
            la.unpack(into)?;
            return Ok(());
        }
    }
    anyhow::bail!("no layer in {}", archive.display())
}

#[test]
fn nodes_reach_the_control_plane_over_the_underlay() -> Result<()> {
    if cluster::skip_unless_root("nodes_reach_the_control_plane_over_the_underlay") {
        return Ok(());
    }
    let c = Cluster::start(no_agents(2))?;
    let footprint = Footprint::of(&c);
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 2);
    let s = c.state();
    assert_eq!(s.host_ip, format!("10.{}.0.1", s.index));
    assert_eq!(c.node_ip(&nodes[0]), format!("10.{}.0.11", s.index));
    assert_eq!(c.node_ip(&nodes[1]), format!("10.{}.0.12", s.index));
    for p in &footprint.netns {
        assert!(p.exists(), "{} exists", p.display());
    }
    assert!(s.host_link.len() <= 15 && s.bridge.len() <= 15);

    // Each node: eth0 with its address, lo up, and no route out of the machine.
    for node in &nodes {
        let addr = c.exec_ok(node, &["ip", "-4", "-o", "addr", "show"])?;
        let eth0 = addr.lines().find(|l| l.contains(" eth0 ")).unwrap_or("");
        assert!(
            eth0.contains(&format!("inet {}/24", c.node_ip(node))),
            "{node}: {addr}"
        );
        assert!(addr.contains("inet 127.0.0.1/8"), "{node}: {addr}");
        let routes = c.exec_ok(node, &["ip", "route"])?;
        assert!(
            !routes.contains("default"),
            "{node} has a default route:\n{routes}"
        );
        let out = c.exec(node, &["ip", "route", "get", "192.0.2.1"])?;
        assert!(!out.status.success(), "{node} routes out: {}", stdout(&out));
        // In the node's cgroup.
        let cg = c.exec_ok(node, &["cat", "/proc/self/cgroup"])?;
        assert!(
            cg.contains(&format!("::/skiff/{}/{node}/exec", c.name())),
            "{node}: {cg}"
        );
    }

    // The API server answers on the underlay, from inside a node: TCP, and TLS with the
    // cluster's address in the certificate (kubectl verifies it).
    assert!(connects_from(&c, &nodes[0], c.host_ip(), c.api_port())?);
    let kubectl = skiff_tests::Kubectl::newest()?;
    let kubeconfig = c
        .state()
        .bootstrap_kubeconfig
        .to_string_lossy()
        .into_owned();
    let readyz = c.exec_ok(
        &nodes[1],
        &[
            &kubectl.path.to_string_lossy(),
            "--kubeconfig",
            &kubeconfig,
            "get",
            "--raw",
            "/readyz",
        ],
    )?;
    assert_eq!(readyz.trim(), "ok");
    // Node to node over the bridge.
    let ping = c.exec(
        &nodes[0],
        &["ping", "-c", "1", "-W", "2", &c.node_ip(&nodes[1])],
    )?;
    assert!(ping.status.success(), "ping: {}", stdout(&ping));
    // The underlay keeps the host's iptables out of bridged traffic.
    let nf = Command::new("ip")
        .args(["netns", "exec", &s.underlay_netns, "sh", "-c"])
        .arg("cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0")
        .output()?;
    assert_eq!(stdout(&nf).trim(), "0");

    // The host uses the admin kubeconfig.
    let ns = c.kubectl(&["get", "namespaces", "-o", "name"])?;
    assert!(ns.contains("namespace/default"), "{ns}");
    let server = std::fs::read_to_string(c.kubeconfig())?;
    assert!(server.contains(c.api_url()), "{server}");
    let names = tokio::runtime::Runtime::new()?.block_on(async {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(c.client().await?);
        let list = api.list(&Default::default()).await?;
        anyhow::Ok(
            list.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect::<Vec<_>>(),
        )
    })?;
    assert!(names.iter().any(|n| n == "default"), "{names:?}");

    drop(c);
    let left = footprint.present();
    assert!(left.is_empty(), "left behind after teardown: {left:?}");
    Ok(())
}

#[test]
fn parallel_clusters_get_separate_underlays() -> Result<()> {
    if cluster::skip_unless_root("parallel_clusters_get_separate_underlays") {
        return Ok(());
    }
    let etcd = std::thread::spawn(|| {
        Cluster::start(ClusterOptions {
            store: Store::Etcd,
            ..no_agents(1)
        })
    });
    let embedded = Cluster::start(no_agents(1))?;
    let etcd = etcd.join().expect("thread")?;
    assert_ne!(embedded.name(), etcd.name());
    assert_ne!(embedded.host_ip(), etcd.host_ip());
    for c in [&embedded, &etcd] {
        let node = &c.nodes()[0];
        assert!(node.starts_with(c.name()), "{node}");
        assert!(connects_from(c, node, c.host_ip(), c.api_port())?);
        c.kubectl(&["get", "namespaces"])?;
    }
    // The clusters' underlays are separate: a node of one cannot reach the other's API.
    let node = &embedded.nodes()[0];
    assert!(!connects_from(
        &embedded,
        node,
        etcd.host_ip(),
        etcd.api_port()
    )?);
    let footprints = [Footprint::of(&embedded), Footprint::of(&etcd)];
    drop(embedded);
    drop(etcd);
    for f in &footprints {
        let left = f.present();
        assert!(left.is_empty(), "left behind after teardown: {left:?}");
    }
    Ok(())
}

#[test]
fn detached_cluster_is_torn_down_from_its_state() -> Result<()> {
    if cluster::skip_unless_root("detached_cluster_is_torn_down_from_its_state") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let c = Cluster::start(ClusterOptions {
        dir: Some(dir.clone()),
        ..no_agents(1)
    })?;
    let footprint = Footprint::of(&c);
    let kubeconfig = c.kubeconfig().to_path_buf();
    let detached = c.detach()?;
    assert_eq!(detached, std::fs::canonicalize(&dir)?);

    // Still running after the Cluster is gone.
    let state = ClusterState::load(&detached)?;
    assert!(state.control.expect("control plane record").alive());
    let out = Command::new(skiff_tests::Kubectl::newest()?.path)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = &state.nodes[0].name;
    let status = state
        .node_command(node, &["ip", "route"])?
        .output()
        .context("exec from state")?;
    assert!(status.status.success());

    Cluster::down_from_state(&detached)?;
    let left = footprint.present();
    assert!(left.is_empty(), "left behind after teardown: {left:?}");
    Ok(())
}

#[test]
fn skiff_cluster_binary_up_exec_down() -> Result<()> {
    if cluster::skip_unless_root("skiff_cluster_binary_up_exec_down") {
        return Ok(());
    }
    let bin = env!("CARGO_BIN_EXE_skiff-cluster");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let dir_s = dir.to_string_lossy().into_owned();
    let up = Command::new(bin)
        .args(["up", "--nodes", "1", "--no-agents", "--dir", &dir_s])
        .output()?;
    let result = (|| -> Result<()> {
        ensure!(
            up.status.success(),
            "up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let printed = stdout(&up);
        let kubeconfig = printed.lines().last().unwrap_or_default().to_string();
        assert!(
            kubeconfig.ends_with("admin.kubeconfig"),
            "up printed: {printed}"
        );
        let state = ClusterState::load(&dir)?;
        let kc = Command::new(bin)
            .args(["kubeconfig", "--dir", &dir_s])
            .output()?;
        assert_eq!(stdout(&kc).trim(), kubeconfig);
        let node = state.nodes[0].name.clone();
        let exec = Command::new(bin)
            .args(["exec", "--dir", &dir_s, &node, "--", "sh", "-c", "exit 7"])
            .status()?;
        assert_eq!(exec.code(), Some(7));
        let exec = Command::new(bin)
            .args(["exec", "--dir", &dir_s, &node, "--", "ip", "route"])
            .output()?;
        assert!(!stdout(&exec).contains("default"));
        Ok(())
    })();
    let down = Command::new(bin).args(["down", "--dir", &dir_s]).output()?;
    result?;
    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!dir.exists());
    Ok(())
}

#[test]
fn agents_become_ready_and_survive_kill_9() -> Result<()> {
    if cluster::skip_unless_root("agents_become_ready_and_survive_kill_9") {
        return Ok(());
    }
    if !cluster::agent_available() {
        cluster::cannot_run(
            "agents_become_ready_and_survive_kill_9",
            &format!(
                "{} has no run/image import/cleanup (build it: cargo build -p skiff-agent)",
                cluster::agent_binary_path().display()
            ),
        );
        return Ok(());
    }
    let mut c = Cluster::start(ClusterOptions {
        nodes: 2,
        ..Default::default()
    })?;
    let out = c.kubectl(&["get", "nodes", "-o", "name"])?;
    for node in c.nodes() {
        assert!(out.contains(&format!("node/{node}")), "{out}");
    }
    let node_csrs = nodes_joined_with_bootstrap_tokens(&c)?;
    let node = c.nodes()[0].clone();
    let before = c.agent_pid(&node);
    c.kill_agent(&node);
    c.start_agent(&node)?;
    assert_ne!(c.agent_pid(&node), before);
    c.wait_ready(Duration::from_secs(60))?;
    assert!(c.agent_log(&node).contains("starting the agent"));
    // The restarted agent kept its certificate: no new request.
    assert_eq!(node_csrs_of(&c)?, node_csrs);
    a_node_joins_with_the_printed_command(&c)
}

/// `skiff-control token create --print-join-command`, then `skiff-agent join` with it from a
/// node: discovery refuses a wrong CA hash, an unknown token and an unreachable server, each in
/// one sentence and leaving nothing written; with the right command the node gets its
/// certificate. `token list` shows the token, `token delete` removes it.
fn a_node_joins_with_the_printed_command(c: &Cluster) -> Result<()> {
    let control = std::env::var("SKIFF_CONTROL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| skiff_tests::target_dir().join("debug/skiff-control"));
    let token_cmd = |args: &[&str]| -> Result<String> {
        let out = Command::new(&control)
            .arg("token")
            .args(args)
            .arg("--kubeconfig")
            .arg(c.kubeconfig())
            .output()?;
        ensure!(
            out.status.success(),
            "token {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout(&out))
    };
    let command = token_cmd(&["create", "--print-join-command", "--ttl", "10m"])?;
    let words: Vec<&str> = command.split_whitespace().collect();
    ensure!(
        words[..3] == ["skiff-agent", "join", "--server"],
        "{command}"
    );
    let (server, token, hash) = (words[3], words[5], words[7]);
    ensure!(hash.starts_with("sha256:") && hash.len() == 71, "{command}");
    assert!(token_cmd(&["list"])?.contains(token));

    let node = c.nodes()[0].clone();
    let agent = c.state().node(&node)?.agent_command[0].clone();
    let root = c.dir().join("joiner");
    let root_arg = root.to_string_lossy().into_owned();
    let join = |server: &str, token: &str, hash: &str| -> Result<(bool, String)> {
        let out = c.exec(
            &node,
            &[
                &agent,
                "join",
                "--server",
                server,
                "--token",
                token,
                "--ca-cert-hash",
                hash,
                "--node-name",
                "joiner",
                "--root-dir",
                &root_arg,
            ],
        )?;
        let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    };
    let wrong_hash = format!("sha256:{}", "0".repeat(64));
    let unknown = "zzzzzz.0123456789abcdef";
    let unreachable = format!("https://{}:1", c.host_ip());
    for (args, says) in [
        (
            (server, token, wrong_hash.as_str()),
            "this is not the cluster you meant to join",
        ),
        (
            (server, unknown, hash),
            "is invalid for this cluster or it has expired",
        ),
        (
            (unreachable.as_str(), token, hash),
            "cannot reach the API server",
        ),
    ] {
        let (ok, text) = join(args.0, args.1, args.2)?;
        assert!(!ok && text.contains(says), "join {args:?}: {text}");
        assert!(
            !root.join("bootstrap.kubeconfig").exists(),
            "{args:?} left a bootstrap kubeconfig"
        );
        assert!(!root.join("pki").exists(), "{args:?} left a certificate");
    }
    let (ok, text) = join(server, token, hash)?;
    assert!(ok, "{text}");
    let kubectl = skiff_tests::Kubectl::newest()?;
    let out = kubectl
        .command_with(&root.join("kubelet.kubeconfig"), c.dir())
        .args([
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .output()?;
    assert_eq!(stdout(&out), "system:node:joiner");
    let id = token.split('.').next().unwrap_or_default();
    assert_eq!(
        token_cmd(&["delete", id])?.trim(),
        format!("bootstrap token \"{id}\" deleted")
    );
    assert!(!token_cmd(&["list"])?.contains(token));
    Ok(())
}

/// Every node asked for its certificate with the bootstrap token (`node-csr-…`, approved by
/// the controller manager) and talks to the API as `system:node:<name>`, with no more rights
/// than a node has; the bootstrap token itself can do nothing but ask. The names of the
/// requests.
fn nodes_joined_with_bootstrap_tokens(c: &Cluster) -> Result<Vec<String>> {
    let kubectl = skiff_tests::Kubectl::newest()?;
    let run = |kubeconfig: &Path, args: &[&str]| -> Result<String> {
        let out = kubectl
            .command_with(kubeconfig, c.dir())
            .args(args)
            .output()?;
        Ok(format!(
            "{}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    for node in c.nodes() {
        let own = c.node_kubeconfig(&node);
        let whoami = run(
            &own,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo}"],
        )?;
        assert!(
            whoami.contains(&format!("\"username\":\"system:node:{node}\""))
                && whoami.contains("system:nodes"),
            "{node}: {whoami}"
        );
        assert!(!std::fs::read_to_string(&own)?.contains("token:"), "{node}");
        for (verb, resource) in [("list", "secrets"), ("create", "clusterrolebindings")] {
            let can = run(&own, &["auth", "can-i", verb, resource, "-A"])?;
            // `no`, or `no - <the authorizer's reason>`.
            assert!(can.starts_with("no"), "{node} can {verb} {resource}: {can}");
        }
    }
    another_nodes_objects_are_out_of_reach(c, &run)?;
    let bootstrap = &c.state().bootstrap_kubeconfig;
    let can = run(bootstrap, &["auth", "can-i", "get", "pods"])?;
    assert!(
        can.starts_with("no"),
        "the bootstrap token can get pods: {can}"
    );
    let csrs = node_csrs_of(c)?;
    assert_eq!(csrs.len(), c.nodes().len(), "{csrs:?}");
    Ok(csrs)
}

/// With its own certificate, the first node may neither patch the second's Node nor read the
/// Secret of a pod bound to the second (which the second may).
fn another_nodes_objects_are_out_of_reach(
    c: &Cluster,
    run: &dyn Fn(&Path, &[&str]) -> Result<String>,
) -> Result<()> {
    let nodes = c.nodes();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    c.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: n2-secret, namespace: default}}\n\
         stringData: {{k: v}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: uses-n2-secret, namespace: default}}\n\
         spec:\n  nodeName: {n2}\n\
         \x20 containers:\n  - {{name: c, image: skiff.test/busybox:1, command: [sleep, '3600']}}\n\
         \x20 volumes:\n  - {{name: s, secret: {{secretName: n2-secret}}}}\n"
    ))?;
    let get_secret = ["get", "secret", "n2-secret", "-n", "default", "-o", "name"];
    // The Node authorizer's graph follows pods by a watch.
    skiff_tests::wait_for(
        "node 2 to read its pod's Secret",
        Duration::from_secs(20),
        || {
            Ok(run(&c.node_kubeconfig(n2), &get_secret)?
                .contains("secret/n2-secret")
                .then_some(()))
        },
    )?;
    let out = run(&c.node_kubeconfig(n1), &get_secret)?;
    assert!(
        out.contains(&format!(
            r#"secrets "n2-secret" is forbidden: User "system:node:{n1}" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node '{n1}' and this object"#
        )),
        "{out}"
    );
    let label = r#"{"metadata":{"labels":{"example.com/rack":"r1"}}}"#;
    let out = run(&c.node_kubeconfig(n1), &["patch", "node", n2, "-p", label])?;
    assert!(
        out.contains(&format!(
            r#"nodes "{n2}" is forbidden: node "{n1}" is not allowed to modify node "{n2}""#
        )),
        "{out}"
    );
    c.kubectl(&["delete", "pod", "uses-n2-secret", "--wait=false"])?;
    Ok(())
}

/// The approved, issued `node-csr-…` requests for `system:node:` users, by name.
fn node_csrs_of(c: &Cluster) -> Result<Vec<String>> {
    let list: serde_json::Value = serde_json::from_str(&c.kubectl(&["get", "csr", "-o", "json"])?)?;
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|csr| {
            let approved = csr["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Approved" && c["reason"] == "AutoApproved")
            });
            let by_bootstrapper = csr["spec"]["username"]
                .as_str()
                .is_some_and(|u| u.starts_with("system:bootstrap:"));
            approved && by_bootstrapper && csr["status"]["certificate"].is_string()
        })
        .filter_map(|csr| csr["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("node-csr-"))
        .collect();
    names.sort();
    Ok(names)
}

/// With a short `--cluster-signing-duration` the node renews its client certificate on its own:
/// a CSR from `system:node:<name>`, auto-approved as `selfnodeclient`, the store's current pair
/// switched, and the agent (not restarted) keeps talking to the API with it.
#[test]
fn nodes_renew_their_client_certificate() -> Result<()> {
    if cluster::skip_unless_root("nodes_renew_their_client_certificate") {
        return Ok(());
    }
    // Signed for 2 min plus kube's 5 min backdate: renewal comes at 70–90 % of 7 min after
    // the backdated start, i.e. within about 80 s of issue.
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        control_args: vec!["--cluster-signing-duration=2m".into()],
        ..Default::default()
    })?;
    let node = c.nodes()[0].clone();
    let pid = c.agent_pid(&node);
    let current = c
        .state()
        .node(&node)?
        .root_dir
        .join("pki/kubelet-client-current.pem");
    let first = std::fs::read_link(&current)?;
    let user = format!("system:node:{node}");
    let renewal = skiff_tests::wait_for("a renewal CSR", Duration::from_secs(180), || {
        let list: serde_json::Value =
            serde_json::from_str(&c.kubectl(&["get", "csr", "-o", "json"])?)?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|csr| {
                csr["spec"]["username"] == user.as_str() && csr["status"]["certificate"].is_string()
            })
            .cloned())
    })?;
    let approved = &renewal["status"]["conditions"][0];
    assert_eq!(approved["reason"], "AutoApproved", "{renewal}");
    assert_eq!(
        approved["message"],
        "Auto approving self kubelet client certificate after SubjectAccessReview."
    );
    assert!(
        renewal["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("csr-")),
        "{renewal}"
    );
    skiff_tests::wait_for(
        "the current pair to switch",
        Duration::from_secs(30),
        || Ok((std::fs::read_link(&current)? != first).then_some(())),
    )?;
    assert!(
        c.agent_log(&node)
            .contains("node client certificate renewed")
    );
    assert_eq!(c.agent_pid(&node), pid, "the agent restarted");
    let kubectl = skiff_tests::Kubectl::newest()?;
    let out = kubectl
        .command_with(&c.node_kubeconfig(&node), c.dir())
        .args(["get", "node", &node, "-o", "name"])
        .output()?;
    assert_eq!(stdout(&out).trim(), format!("node/{node}"));
    Ok(())
}
