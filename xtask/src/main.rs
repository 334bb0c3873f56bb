//! `cargo xtask …`: the project's own tasks — prepare a machine, test, lint, run a cluster.
//!
//! Every task is plain Rust that shells out to the real tools (apt, rustup, cargo) and prints
//! each command before it runs it, so a failure can be reproduced by hand.

mod bench;
mod bench_latency;
mod cluster;
mod cmd;
mod dist;
mod fresh_check;
mod gen_protobuf_schema;
mod lint;
mod modcycles;
mod setup;
mod sys;
mod test;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "skiff's project tasks: prepare a machine, test, lint, bring a cluster up"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing skiff needs on a Debian 12 machine (run as root).
    ///
    /// Checks each piece and installs only what is missing: apt packages (etcd, protoc,
    /// iptables, bpftool, busybox-static, …), a private Debian kubectl 1.20 under
    /// target/tools/, the nightly `rust-src` component and a `bpf-linker` built against the
    /// LLVM of rustc nightly. A piece that cannot be installed stops setup with a message that
    /// names it and the manual fix.
    Setup {
        /// Only report what is missing; exit 1 if anything is.
        #[arg(long)]
        check: bool,
    },
    /// Prove the README's setup on a Debian 12 root that never saw the project (run as root).
    ///
    /// Makes a minimal Debian 12 root with debootstrap (cached in target/fresh-check/base),
    /// lays a throw-away overlay on it, copies the working tree in, bind-mounts the host's
    /// rustup home and cargo registry, then runs chrooted: `cargo xtask setup`, `cargo build
    /// --workspace --all-targets`, the unit tests and `cargo xtask dist`, and prints the
    /// packages setup installed.
    /// Run it whenever setup, a build.rs, .ci/run or a dependency with a build script changes.
    FreshCheck(fresh_check::FreshCheckArgs),
    /// Run the whole test suite as CI does: setup, build all binaries, `cargo test --workspace`.
    ///
    /// Tests get SKIFF_KUBECTL_120 (path of the private kubectl 1.20) and SKIFF_TARGET_DIR.
    /// Some tests need root (namespaces, BPF, iptables). Exits with cargo test's exit code.
    /// Arguments after `--` go to `cargo test`, e.g. `cargo xtask test -- -p skiff-control`.
    Test {
        /// Skip `setup` (for quick reruns on a machine that is already set up).
        #[arg(long)]
        no_setup: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// A one-node cluster on this host, in the foreground until Ctrl-C or `cargo xtask down`
    /// (run as root).
    ///
    /// Builds and starts skiff-control (embedded store, API on 127.0.0.1:6443) and one
    /// skiff-agent in the host's network namespace (`--proxy-mode auto`) with the test image
    /// skiff.test/busybox:1 imported, waits until the node is Ready, prints the kubeconfig and
    /// commands to try. Stopping removes the pods and everything the agent put into the
    /// kernel (bridge, routes, iptables rules, eBPF programs and pins, cgroups) and sets
    /// net.ipv4.ip_forward back; the control plane's store is kept.
    Up(up::UpArgs),
    /// Build the release packages for x86_64 Linux into target/dist.
    ///
    /// A static (musl) release build of skiff-control and skiff-agent; a Debian package of
    /// each with its systemd unit (checked with `systemd-analyze verify`), defaults file and
    /// maintainer scripts from packaging/; a tarball of the binaries and units; SHA256SUMS.
    Dist(dist::DistArgs),
    /// Stop `cargo xtask up` (it cleans up as on Ctrl-C), or clean up after one that was killed.
    Down {
        /// The data directory given to `up`.
        #[arg(long, default_value = up::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// A multi-node cluster on this machine, left running: `up`, `down`, `kubeconfig`,
    /// `status`, `exec NODE -- CMD…` (run as root).
    ///
    /// Nodes are network namespaces on a private underlay 10.<k>.0.0/24 (the host is
    /// 10.<k>.0.1, where skiff-control listens); each runs its own skiff-agent. `up` builds the
    /// binaries, returns once every node is Ready and prints the kubeconfig; `down` removes
    /// everything. State, logs and node roots live in target/cluster/ unless `--dir`.
    Cluster(cluster::ClusterArgs),
    /// Benchmark the control-plane API (create/get/list latency, throughput, memory) on the
    /// embedded store and on etcd, with release builds; writes docs/benchmarks-api.md.
    /// Arguments after `--` go to the benchmark, e.g. `-- --objects 2000 --stores embedded`.
    BenchApi {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark what authorization costs on the API's hot path: create/get/list as the admin
    /// (system:masters) against a client-certificate user and a service-account token
    /// authorized by RBAC under 200 roles and 500 bindings, in alternating rounds on one
    /// control plane; writes docs/benchmarks-authz.md. Arguments after `--` go to the
    /// benchmark, e.g. `-- --quick` or `-- --objects 2000 --identities admin,user`.
    BenchAuthz {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark the controllers and scheduler: a 1,000-replica Deployment until every pod is
    /// bound, and scheduler throughput with 100 nodes; writes docs/benchmarks-control.md.
    /// Arguments after `--` go to the benchmark, e.g. `-- --replicas 200 --nodes 10`.
    BenchControl {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark the node agent on a one-node cluster (run as root): pod start latency
    /// (POST → Running) for 100 pods and the agent's memory; writes docs/benchmarks-agent.md.
    /// Arguments after `--` go to the benchmark, e.g. `-- --pods 20`.
    BenchAgent {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark a highly available control plane (run as root): memory of each of 3 API
    /// servers over 3 etcd members, and the API failover an agent sees when its server is
    /// killed; writes docs/benchmarks-ha.md. Arguments after `--`, e.g. `-- --rounds 1`.
    BenchHa {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark the service proxy (run as root): full sync of 10,000 services × 2 endpoints
    /// from the API into the eBPF maps and into iptables (legacy and nft), and endpoint change →
    /// dataplane latency, in a network namespace of its own; writes docs/benchmarks-proxy.md.
    /// Arguments after `--` go to the benchmark, e.g. `-- --services 1000 --changes 50
    /// --modes ebpf,iptables-nft`.
    BenchProxy {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark cluster DNS (run as root): queries/s and p50/p99 latency of a Service name
    /// and a forwarded name, the agent against dnsmasq answering the same names; writes its
    /// section of docs/benchmarks.md. Arguments after `--`, e.g. `-- --queries 5000`.
    BenchDns {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark exec round trips (run as root): p50/p99 of `kubectl exec pod -- true` and of
    /// a WebSocket exec through the API; writes its section of docs/benchmarks.md.
    /// Arguments after `--`, e.g. `-- --execs 50`.
    BenchExec {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark `kubectl port-forward` throughput (run as root): MiB/s through the newest
    /// kubectl and kubectl 1.20 against a direct connection to the pod; writes its section of
    /// docs/benchmarks.md. Arguments after `--`, e.g. `-- --mib 16 --rounds 3`.
    BenchPortforward {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark service latency (run as root): a request through a Service's ClusterIP vs
    /// straight to the backend's pod IP, new connection and keep-alive, per proxy mode (ebpf,
    /// iptables) and number of Services; sync time and client CPU too, with release builds.
    /// Writes docs/benchmarks.md and docs/benchmarks-latency.svg. A quick run:
    /// `cargo xtask bench --services 1,100 --requests 2000`.
    Bench(bench_latency::BenchArgs),
    /// Check formatting (`cargo fmt --check`), lints (`cargo clippy -D warnings`) of the
    /// workspace and of the eBPF crate (nightly clippy for bpfel-unknown-none), and that no
    /// modules of a crate depend on each other in a cycle.
    Lint,
    /// Regenerate control/src/apiserver/protobuf_schema.rs from the k8s-pb and k8s-openapi
    /// sources in the cargo registry (the table the protobuf request decoder walks).
    GenProtobufSchema(gen_protobuf_schema::Args),
}

/// Where the workspace and its target directory are.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
}

impl Workspace {
    fn locate() -> Workspace {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives inside the workspace")
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| root.join("target")),
            None => root.join("target"),
        };
        Workspace { root, target }
    }

    /// Tools that setup installs privately, next to the build output.
    pub fn tools(&self) -> PathBuf {
        self.target.join("tools")
    }

    /// Debian's kubectl 1.20, for tests against an old client.
    pub fn kubectl_120(&self) -> PathBuf {
        self.tools().join("kubectl-1.20")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ws = Workspace::locate();
    let result = match cli.task {
        Task::Setup { check } => setup::setup(&ws, check).map(|()| 0),
        Task::Test {
            no_setup,
            cargo_test_args,
        } => test::test(&ws, no_setup, &cargo_test_args),
        Task::Up(args) => up::up(&ws, &args).map(|()| 0),
        Task::Down { data_dir } => up::down(&data_dir).map(|()| 0),
        Task::Cluster(args) => cluster::cluster(&ws, &args),
        Task::Dist(args) => dist::dist(&ws, &args).map(|()| 0),
        Task::Lint => lint::lint(&ws).map(|()| 0),
        Task::FreshCheck(args) => fresh_check::fresh_check(&ws, &args).map(|()| 0),
        Task::GenProtobufSchema(args) => gen_protobuf_schema::run(&ws, &args).map(|()| 0),
        Task::BenchApi { args } => bench::bench_api(&ws, &args).map(|()| 0),
        Task::BenchAuthz { args } => bench::bench_authz(&ws, &args).map(|()| 0),
        Task::BenchControl { args } => bench::bench_control(&ws, &args).map(|()| 0),
        Task::BenchAgent { args } => bench::bench_agent(&ws, &args).map(|()| 0),
        Task::BenchHa { args } => bench::bench_ha(&ws, &args).map(|()| 0),
        Task::BenchProxy { args } => bench::bench_proxy(&ws, &args).map(|()| 0),
        Task::BenchDns { args } => bench::bench_dns(&ws, &args).map(|()| 0),
        Task::BenchExec { args } => bench::bench_exec(&ws, &args).map(|()| 0),
        Task::BenchPortforward { args } => bench::bench_portforward(&ws, &args).map(|()| 0),
        Task::Bench(args) => bench_latency::bench_latency(&ws, &args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("\nxtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
