//! `skiff-cluster`: bring a multi-node test cluster up and leave it running, look into it, and
//! tear it down (what `cargo xtask cluster …` runs). Needs root.
//!
//! ```text
//! skiff-cluster up --nodes 3 [--store embedded|etcd] [--proxy-mode ebpf|iptables] [--dir D]
//! skiff-cluster up --control-planes 3 --etcd-members 3 ...   # a highly available control plane
//! skiff-cluster status | kubeconfig | down [--dir D]
//! skiff-cluster kill [--dir D] NAME   # SIGKILL a control plane (`leader`), etcd member or agent
//! skiff-cluster restart [--dir D] NAME  # SIGTERM a control plane or etcd member, start it again
//! skiff-cluster exec [--dir D] NODE -- CMD...
//! skiff-cluster gc        # tear down clusters whose test process died
//! skiff-cluster test-image  # build the test image archive, print its path
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use skiff_tests::cluster::{self, Cluster, ClusterOptions, ClusterState, Store};

#[derive(Parser)]
#[command(
    name = "skiff-cluster",
    about = "multi-node skiff test clusters: nodes are network namespaces on a private underlay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct DirArg {
    /// The cluster directory (state in cluster.json) [default: <target dir>/cluster]
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| skiff_tests::target_dir().join("cluster"))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster, wait until every node is Ready, print its kubeconfig and leave it
    /// running.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value = "embedded")]
        store: Store,
        #[arg(long, default_value = "ebpf")]
        proxy_mode: String,
        /// Extra skiff-control argument (repeat for several).
        #[arg(long = "control-arg", allow_hyphen_values = true)]
        control_args: Vec<String>,
        /// Extra `skiff-agent run` argument (repeat for several).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Only the underlay, node namespaces and control plane; no agents.
        #[arg(long)]
        no_agents: bool,
        /// API servers (more than one needs --etcd-members); each, like each etcd member,
        /// then runs in a network namespace of its own.
        #[arg(long, default_value_t = 1)]
        control_planes: usize,
        /// Members of an etcd cluster for the control planes (0: --store alone).
        #[arg(long, default_value_t = 0)]
        etcd_members: usize,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Remove the cluster: agents, pods, cgroups, control plane, namespaces, links, files.
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print the path of the admin kubeconfig.
    Kubeconfig {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print every process of the cluster (control planes and which one leads, etcd members,
    /// agents) with its pid and address.
    Status {
        #[command(flatten)]
        dir: DirArg,
    },
    /// SIGKILL one process: a control plane, an etcd member, a node's agent, or `leader` (the
    /// control plane holding the controller-manager Lease).
    Kill {
        #[command(flatten)]
        dir: DirArg,
        name: String,
    },
    /// Restart a control plane (`leader` for the one leading) or an etcd member: SIGTERM, then
    /// the same command line again; returns once it serves.
    Restart {
        #[command(flatten)]
        dir: DirArg,
        name: String,
    },
    /// Run a command in a node's network namespace and cgroup; exits with its status.
    Exec {
        #[command(flatten)]
        dir: DirArg,
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Tear down every cluster whose owning test process is gone.
    Gc,
    /// Build the test image archive (`skiff.test/busybox:1`, a `docker save` tar) unless it is
    /// up to date, and print its path.
    TestImage,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("skiff-cluster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    // Building the test image needs no privileges; everything else does.
    if !matches!(cli.command, Cmd::TestImage) && !cluster::is_root() {
        bail!("skiff-cluster needs root (network namespaces, cgroups, bpffs)");
    }
    match cli.command {
        Cmd::Up {
            nodes,
            store,
            proxy_mode,
            control_args,
            agent_args,
            no_agents,
            control_planes,
            etcd_members,
            dir,
        } => {
            let dir = dir.dir();
            if dir.join("cluster.json").exists() {
                bail!(
                    "a cluster is already up in {} (`skiff-cluster down --dir {}` first)",
                    dir.display(),
                    dir.display()
                );
            }
            let c = Cluster::start(ClusterOptions {
                nodes,
                store,
                proxy_mode,
                control_args,
                agent_args,
                start_agents: !no_agents,
                dir: Some(dir),
                verbose: true,
                control_planes,
                etcd_members,
            })?;
            let kubeconfig = c.kubeconfig().to_path_buf();
            let summary = describe(c.state());
            let dir = c.detach()?;
            println!("{summary}");
            println!(
                "\nTry:\n  export KUBECONFIG={}\n  kubectl get nodes -o wide\n\
                 Stop it with `cargo xtask cluster down` (state: {}/cluster.json).",
                kubeconfig.display(),
                dir.display()
            );
            println!("{}", kubeconfig.display());
            Ok(0)
        }
        Cmd::Down { dir } => {
            let dir = dir.dir();
            if !dir.join("cluster.json").exists() {
                println!("no cluster in {}", dir.display());
                return Ok(0);
            }
            Cluster::down_from_state(&dir)?;
            println!("cluster in {} removed", dir.display());
            Ok(0)
        }
        Cmd::Kubeconfig { dir } => {
            let state = load(&dir.dir())?;
            println!("{}", state.kubeconfig.display());
            Ok(0)
        }
        Cmd::Status { dir } => {
            let state = load(&dir.dir())?;
            println!("{}", describe(&state));
            Ok(0)
        }
        Cmd::Kill { dir, name } => {
            let mut state = load(&dir.dir())?;
            let killed = state.kill(&name)?;
            println!("killed {killed}");
            Ok(0)
        }
        Cmd::Restart { dir, name } => restart(&dir.dir(), &name),
        Cmd::Exec { dir, node, command } => {
            let state = load(&dir.dir())?;
            let argv: Vec<&str> = command.iter().map(String::as_str).collect();
            let status = state
                .node_command(&node, &argv)?
                .status()
                .with_context(|| format!("running {argv:?} on {node}"))?;
            Ok(u8::try_from(cluster::exit_code(status)).unwrap_or(1))
        }
        Cmd::Gc => {
            for name in cluster::gc()? {
                println!("removed stale cluster {name}");
            }
            Ok(0)
        }
        Cmd::TestImage => {
            println!("{}", skiff_tests::test_image::archive()?.display());
            Ok(0)
        }
    }
}

fn load(dir: &Path) -> Result<ClusterState> {
    ClusterState::load(dir)
        .with_context(|| format!("no cluster in {} (`skiff-cluster up`?)", dir.display()))
}

fn describe(s: &ClusterState) -> String {
    format!(
        "cluster {} ({})\n  api server  {} (store {})\n  kubeconfig  {}\n  lb pool     {} (unless --control-arg --service-lb-pool=…)\n{}",
        s.name,
        s.dir.display(),
        s.api_url,
        if s.etcd_members.is_empty() {
            format!("{:?}", s.store)
        } else {
            format!("etcd {}", s.etcd_endpoints().join(","))
        },
        s.kubeconfig.display(),
        cluster::lb_pool(s.index),
        s.processes()
    )
}

/// `restart NAME`: the member stopped and started again; the new process outlives this
/// command (it is in a session of its own).
fn restart(dir: &Path, name: &str) -> Result<u8> {
    let mut state = load(dir)?;
    let name = match name {
        "leader" => state
            .leader()?
            .context("no control plane holds the controller-manager Lease")?,
        other => other.to_string(),
    };
    let child = state.restart(&name)?;
    println!("restarted {name} (pid {})", child.id());
    Ok(0)
}
