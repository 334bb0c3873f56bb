//! `cargo xtask cluster up|down|kubeconfig|status|kill|restart|exec`: a multi-node skiff cluster on this
//! machine (nodes are network namespaces on a private underlay, each running `skiff-agent`),
//! left running in the background. The work is done by the `skiff-cluster` binary of the
//! skiff-tests crate, which keeps the cluster's state in `<dir>/cluster.json`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::cmd::{cargo, run, status};
use crate::{Workspace, sys};

#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCmd,
}

#[derive(clap::Args)]
struct Dir {
    /// The cluster directory (logs, node roots, kubeconfigs, cluster.json)
    /// [default: <target dir>/cluster]
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum ClusterCmd {
    /// Build skiff-control, skiff-agent and skiff-cluster, start a cluster, wait until every
    /// node is Ready and print its kubeconfig. The cluster keeps running after this returns.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// embedded or etcd (a private etcd in the cluster directory).
        #[arg(long, default_value = "embedded")]
        store: String,
        /// The agents' service proxy: ebpf or iptables.
        #[arg(long, default_value = "ebpf")]
        proxy_mode: String,
        /// Extra skiff-control argument (repeat for several).
        #[arg(long = "control-arg", allow_hyphen_values = true)]
        control_args: Vec<String>,
        /// Extra `skiff-agent run` argument (repeat for several).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Skip `cargo xtask setup` (on a machine that is already set up).
        #[arg(long)]
        no_setup: bool,
        /// API servers; more than one needs --etcd-members, and each runs (as each etcd
        /// member does) in a network namespace of its own.
        #[arg(long, default_value_t = 1)]
        control_planes: usize,
        /// Members of an etcd cluster the control planes share (0: --store alone).
        #[arg(long, default_value_t = 0)]
        etcd_members: usize,
        #[command(flatten)]
        dir: Dir,
    },
    /// Remove the cluster: agents, pods, cgroups, control plane, namespaces, links, files.
    Down {
        #[command(flatten)]
        dir: Dir,
    },
    /// Print the path of the cluster's admin kubeconfig.
    Kubeconfig {
        #[command(flatten)]
        dir: Dir,
    },
    /// Print every process of the cluster (control planes and which one leads, etcd members,
    /// agents) with its pid and address.
    Status {
        #[command(flatten)]
        dir: Dir,
    },
    /// SIGKILL one process of the cluster: a control plane, an etcd member, a node's agent, or
    /// `leader` (the control plane holding the controller-manager Lease).
    Kill {
        #[command(flatten)]
        dir: Dir,
        name: String,
    },
    /// Restart one control plane (`leader` for the leading one) or etcd member as a rolling
    /// upgrade does: SIGTERM (an API server leaves the `kubernetes` endpoints, closes its
    /// listener and finishes its requests), then the same command line; returns once it serves.
    Restart {
        #[command(flatten)]
        dir: Dir,
        name: String,
    },
    /// Run a command in a node's network namespace and cgroup, e.g.
    /// `cargo xtask cluster exec sk150-node-1 -- ip addr`; exits with its status.
    Exec {
        #[command(flatten)]
        dir: Dir,
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Runs the task; the exit code to leave with.
pub fn cluster(ws: &Workspace, args: &ClusterArgs) -> Result<u8> {
    if !sys::is_root() {
        bail!("a cluster needs root (network namespaces, cgroups, bpffs); run as root");
    }
    match &args.command {
        ClusterCmd::Up {
            nodes,
            store,
            proxy_mode,
            control_args,
            agent_args,
            no_setup,
            control_planes,
            etcd_members,
            dir,
        } => {
            if !no_setup {
                crate::setup::setup(ws, false)?;
            }
            run(cargo().current_dir(&ws.root).args([
                "build",
                "-p",
                "skiff-control",
                "-p",
                "skiff-agent",
                "-p",
                "skiff-tests",
                "--bins",
            ]))?;
            let mut cmd = skiff_cluster(ws);
            cmd.args(["up", "--nodes", &nodes.to_string()]).args([
                "--store",
                store,
                "--proxy-mode",
                proxy_mode,
            ]);
            cmd.arg(format!("--control-planes={control_planes}"))
                .arg(format!("--etcd-members={etcd_members}"));
            for a in control_args {
                cmd.arg(format!("--control-arg={a}"));
            }
            for a in agent_args {
                cmd.arg(format!("--agent-arg={a}"));
            }
            with_dir(&mut cmd, dir);
            finish(&mut cmd)
        }
        ClusterCmd::Down { dir } => simple(ws, "down", dir),
        ClusterCmd::Kubeconfig { dir } => simple(ws, "kubeconfig", dir),
        ClusterCmd::Status { dir } => simple(ws, "status", dir),
        ClusterCmd::Kill { dir, name } => named(ws, "kill", dir, name),
        ClusterCmd::Restart { dir, name } => named(ws, "restart", dir, name),
        ClusterCmd::Exec { dir, node, command } => {
            ensure_built(ws)?;
            let mut cmd = skiff_cluster(ws);
            cmd.arg("exec");
            with_dir(&mut cmd, dir);
            cmd.arg(node)
                .arg("--")
                .args(command)
                .stdin(std::process::Stdio::inherit());
            // The command's own exit status, not a failure of xtask.
            Ok(status(&mut cmd)?.code().map_or(1, |c| c as u8))
        }
    }
}

/// `skiff-cluster <sub> [--dir D] NAME`.
fn named(ws: &Workspace, sub: &str, dir: &Dir, name: &str) -> Result<u8> {
    ensure_built(ws)?;
    let mut cmd = skiff_cluster(ws);
    cmd.arg(sub);
    with_dir(&mut cmd, dir);
    cmd.arg(name);
    finish(&mut cmd)
}

fn simple(ws: &Workspace, sub: &str, dir: &Dir) -> Result<u8> {
    ensure_built(ws)?;
    let mut cmd = skiff_cluster(ws);
    cmd.arg(sub);
    with_dir(&mut cmd, dir);
    finish(&mut cmd)
}

fn finish(cmd: &mut Command) -> Result<u8> {
    run(cmd)?;
    Ok(0)
}

fn with_dir(cmd: &mut Command, dir: &Dir) {
    if let Some(d) = &dir.dir {
        cmd.arg("--dir")
            .arg(std::path::absolute(d).unwrap_or_else(|_| d.clone()));
    }
}

/// `down`, `kubeconfig`, `status`, `kill`, `restart` and `exec` only need skiff-cluster itself.
fn ensure_built(ws: &Workspace) -> Result<()> {
    if ws.target.join("debug/skiff-cluster").exists() {
        return Ok(());
    }
    run(cargo().current_dir(&ws.root).args([
        "build",
        "-p",
        "skiff-tests",
        "--bin",
        "skiff-cluster",
    ]))
}

fn skiff_cluster(ws: &Workspace) -> Command {
    let mut cmd = Command::new(ws.target.join("debug/skiff-cluster"));
    // Where the binaries and the default cluster directory are.
    cmd.env("SKIFF_TARGET_DIR", &ws.target)
        .stdin(std::process::Stdio::null());
    cmd
}
