//! Harness for skiff's end-to-end tests: real processes, really started — a private etcd, the
//! `skiff-control` binary, and real `kubectl` binaries — each cleaned up when dropped, even
//! when the test fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod apiload;
pub mod cluster;
pub mod ha_scenario;
pub mod nodewatch;
pub mod port_forward;
pub mod streams;
pub mod test_image;

/// The cargo target directory the binaries were built into (`cargo xtask test` sets
/// `SKIFF_TARGET_DIR`; otherwise the workspace's `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("SKIFF_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// A binary of this workspace, built by `cargo build --bins` (which `cargo xtask test` runs).
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build --bins`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

/// Free loopback ports (all listeners are held until every port is chosen, so they differ).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    let mut out = [0u16; N];
    for (slot, l) in out.iter_mut().zip(&listeners) {
        *slot = l.local_addr().expect("listener address").port();
    }
    out
}

/// A child process that is killed and reaped when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Process {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fail if the process has exited, with its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// A private single-member etcd on free loopback ports with its data in a temporary directory.
pub struct Etcd {
    pub endpoint: String,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Start etcd and wait until it reports itself healthy.
    pub fn start() -> Result<Etcd> {
        if !Path::new(ETCD_BIN).exists() {
            bail!(
                "{ETCD_BIN} not found: the etcd tests need a real etcd \
                 (`cargo xtask setup` installs Debian's etcd-server)"
            );
        }
        // A port picked by binding :0 can be taken before etcd binds it; retry then.
        let mut last = None;
        for _ in 0..5 {
            match Self::try_start() {
                Ok(e) => return Ok(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_start() -> Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let [client, peer] = free_ports::<2>();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.path().join("etcd.log");
        let child = Self::command(&dir.path().join("data"), &client_url, &peer_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {ETCD_BIN}"))?;
        let mut etcd = Etcd {
            endpoint: client_url,
            process: Process {
                child,
                name: "etcd".into(),
                log,
            },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            etcd.process.check_alive()?;
            if etcd_healthy(client) {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd at {} never became healthy:\n{}",
                    etcd.endpoint,
                    etcd.process.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The etcd command line of a private single member (`--name skiff-test`) keeping its data
    /// in `data_dir` and serving clients and peers on the given loopback URLs.
    pub fn command(data_dir: &Path, client_url: &str, peer_url: &str) -> Command {
        let mut cmd = Command::new(ETCD_BIN);
        cmd.args(["--name", "skiff-test", "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", client_url])
            .args(["--advertise-client-urls", client_url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", &format!("skiff-test={peer_url}")])
            .args(["--logger", "zap", "--log-level", "error"]);
        cmd
    }

    /// `etcdctl` pointed at this etcd.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint);
        cmd
    }
}

/// Resident memory of a process in KiB (`VmRSS` from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Prints a benchmark's Markdown report, and writes it to `out` if given.
pub fn print_report(md: &str, out: Option<&Path>) -> std::io::Result<()> {
    println!("{md}");
    if let Some(path) = out {
        std::fs::write(path, md)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Prints a benchmark's Markdown report, and puts it into the document `out` (if given) as
/// the section between `<!-- key -->` and `<!-- /key -->`: the section is replaced when the
/// document has it, appended otherwise, and the rest of the document is kept.
pub fn print_report_section(md: &str, out: Option<&Path>, key: &str) -> std::io::Result<()> {
    println!("{md}");
    let Some(path) = out else {
        return Ok(());
    };
    let doc = match std::fs::read_to_string(path) {
        Ok(doc) => doc,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    std::fs::write(path, replace_section(&doc, key, md))?;
    eprintln!("wrote the {key} section of {}", path.display());
    Ok(())
}

/// `md` followed by every `<!-- key -->…<!-- /key -->` section of `doc`: for a report that
/// rewrites a document other benchmarks put their sections into.
pub fn with_marked_sections_of(md: &str, doc: &str) -> String {
    let mut out = md.trim_end().to_string();
    let mut rest = doc;
    while let Some(start) = rest.find("<!-- ") {
        let after = &rest[start + 5..];
        let Some(key) = after.split_once(" -->").map(|(k, _)| k) else {
            break;
        };
        let close = format!("<!-- /{key} -->");
        match (key.starts_with('/'), rest[start..].find(&close)) {
            (false, Some(end)) => {
                let section = &rest[start..start + end + close.len()];
                out.push_str("\n\n");
                out.push_str(section);
                rest = &rest[start + end + close.len()..];
            }
            _ => rest = after,
        }
    }
    out.push('\n');
    out
}

fn replace_section(doc: &str, key: &str, md: &str) -> String {
    let (open, close) = (format!("<!-- {key} -->"), format!("<!-- /{key} -->"));
    let section = format!("{open}\n{}\n{close}", md.trim_end());
    match (doc.find(&open), doc.find(&close)) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{section}{}", &doc[..start], &doc[end + close.len()..])
        }
        _ if doc.trim().is_empty() => format!("{section}\n"),
        _ => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}

/// `Commit: <sha>; machine: N CPUs, kernel K` for benchmark reports.
pub fn provenance() -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "Commit: `{commit}`; machine: {cpus} CPUs, kernel {}",
        kernel.trim()
    )
}

/// A benchmark report's head: its title, the command that produced it, [`provenance`] and
/// how long the run took.
pub fn report_head(title: &str, command: &str, took: std::time::Duration) -> String {
    format!(
        "# {title}\n\nCommand: `{command}`  \n{}  \nThe run took {:.0} s.\n\n",
        provenance(),
        took.as_secs_f64()
    )
}

/// Whether the etcd serving clients on loopback `port` reports itself healthy.
pub fn etcd_healthy(port: u16) -> bool {
    http_get_plain(port, "/health").is_ok_and(|b| b.contains("\"health\":\"true\""))
}

/// A plain-HTTP GET on loopback (etcd's health endpoint), without pulling in an HTTP client.
fn http_get_plain(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Which store a control plane runs on.
pub enum StoreBackend<'a> {
    Embedded,
    Etcd(&'a Etcd),
}

/// A `skiff-control` process on a free port with its own data directory.
pub struct ControlPlane {
    pub url: String,
    pub kubeconfig: PathBuf,
    pub data_dir: PathBuf,
    process: Process,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    pub fn start(store: StoreBackend<'_>) -> Result<ControlPlane> {
        Self::start_with(store, &[])
    }

    pub fn start_with(store: StoreBackend<'_>, extra_args: &[&str]) -> Result<ControlPlane> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("control");
        let [port] = free_ports::<1>();
        let log = dir.path().join("skiff-control.log");
        // Benchmarks point this at a release build.
        let binary = std::env::var_os("SKIFF_CONTROL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_binary("skiff-control"));
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(["--secure-port", &port.to_string()])
            .args(extra_args)
            .env("RUST_LOG", "info,skiff_control=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if let StoreBackend::Etcd(etcd) = store {
            cmd.args(["--etcd-servers", &etcd.endpoint]);
        }
        let child = cmd.spawn().context("starting skiff-control")?;
        let mut cp = ControlPlane {
            url: format!("https://127.0.0.1:{port}"),
            kubeconfig: data_dir.join("admin.kubeconfig"),
            data_dir,
            process: Process {
                child,
                name: "skiff-control".into(),
                log,
            },
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            cp.process.check_alive()?;
            if cp.kubeconfig.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(cp);
            }
            if Instant::now() > deadline {
                bail!("skiff-control did not come up:\n{}", cp.process.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.process.log_text()
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Stop the process with SIGKILL (as a crash would) and wait for it.
    pub fn kill(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }
}

/// A real kubectl binary.
#[derive(Clone, Debug)]
pub struct Kubectl {
    pub path: PathBuf,
    /// Minor version, e.g. 33.
    pub minor: u32,
}

/// Where this machine keeps versioned kubectls beside its dispatcher.
const KUBECTL_DIRS: &[&str] = &["/usr/lib/google-cloud-sdk/bin"];

impl Kubectl {
    /// Every kubectl on this machine the tests should use: the versioned ones (1.27–1.33 where
    /// present) and Debian's 1.20 that `cargo xtask setup` unpacks (`SKIFF_KUBECTL_120`).
    pub fn all() -> Result<Vec<Kubectl>> {
        let mut out = Self::current()?;
        out.push(Self::debian_120()?);
        Ok(out)
    }

    /// The current kubectls: the versioned ones (1.27–1.33 where present), else `kubectl` on
    /// PATH.
    fn current() -> Result<Vec<Kubectl>> {
        let mut out = Vec::new();
        for dir in KUBECTL_DIRS {
            for minor in 27..=33 {
                let path = Path::new(dir).join(format!("kubectl.1.{minor}"));
                if path.exists() {
                    out.push(Kubectl { path, minor });
                }
            }
        }
        if out.is_empty() {
            // Fall back to whatever `kubectl` is on PATH.
            let path = PathBuf::from("kubectl");
            let minor = Self::probe_minor(&path)
                .context("no versioned kubectl found and `kubectl` on PATH does not run")?;
            out.push(Kubectl { path, minor });
        }
        Ok(out)
    }

    /// Debian's kubectl 1.20.
    pub fn debian_120() -> Result<Kubectl> {
        let path = match std::env::var_os("SKIFF_KUBECTL_120") {
            Some(p) => PathBuf::from(p),
            None => target_dir().join("tools/kubectl-1.20"),
        };
        if !path.exists() {
            bail!(
                "{} not found: `cargo xtask setup` unpacks Debian's kubectl 1.20 there",
                path.display()
            );
        }
        Ok(Kubectl { path, minor: 20 })
    }

    /// The newest kubectl available.
    pub fn newest() -> Result<Kubectl> {
        Self::current()?
            .into_iter()
            .max_by_key(|k| k.minor)
            .context("no kubectl found")
    }

    fn probe_minor(path: &Path) -> Result<u32> {
        let out = Command::new(path)
            .args(["version", "--client", "-o", "json"])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let minor = v["clientVersion"]["minor"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('+');
        Ok(minor.parse()?)
    }

    /// Whether this kubectl validates against /openapi/v3 (1.29+); older ones need
    /// `--validate=false` because skiff serves no protobuf /openapi/v2.
    pub fn validates_with_openapi_v3(&self) -> bool {
        self.minor >= 29
    }

    pub fn command(&self, cp: &ControlPlane) -> Command {
        self.command_with(&cp.kubeconfig, &cp.data_dir)
    }

    /// kubectl with `kubeconfig`, its discovery cache in a per-version directory of `cache_base`.
    pub fn command_with(&self, kubeconfig: &Path, cache_base: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env("KUBECONFIG", kubeconfig)
            // A private discovery cache per run, so versions do not share stale caches.
            .arg("--cache-dir")
            .arg(cache_base.join(format!("kubectl-cache-{}", self.minor)))
            .arg("--request-timeout=20s")
            .stdin(Stdio::null());
        cmd
    }

    /// Run kubectl with `args`; Ok(stdout) on success, Err with stderr otherwise.
    pub fn run(&self, cp: &ControlPlane, args: &[&str]) -> Result<String> {
        let out = self.command(cp).args(args).output()?;
        result(&format!("kubectl 1.{} {}", self.minor, args.join(" ")), out)
    }

    /// Run kubectl with `stdin` as its standard input.
    pub fn run_stdin(&self, cp: &ControlPlane, args: &[&str], stdin: &str) -> Result<String> {
        let out = output_with_stdin(self.command(cp).args(args), stdin)?;
        result(&format!("kubectl 1.{} {}", self.minor, args.join(" ")), out)
    }
}

/// Runs kubectl `cmd` with `stdin` as its standard input, collecting its output.
fn output_with_stdin(cmd: &mut Command, stdin: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// The stdout of `out`, or an error naming `what` with its stderr when it failed.
pub fn result(what: &str, out: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        bail!(
            "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Poll `f` (every 200 ms) until it returns `Some`, or fail after `timeout` naming `what` and
/// the last error `f` returned.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last})");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod report_tests {
    use super::replace_section;

    #[test]
    fn a_section_is_appended_once_then_replaced_in_place() {
        let doc = "# Other\n\ntext\n";
        let once = replace_section(doc, "k", "## Mine\n\nv1\n");
        assert_eq!(
            once,
            "# Other\n\ntext\n\n<!-- k -->\n## Mine\n\nv1\n<!-- /k -->\n"
        );
        let twice = replace_section(&format!("{once}\n## After\n"), "k", "## Mine\n\nv2");
        assert_eq!(
            twice,
            "# Other\n\ntext\n\n<!-- k -->\n## Mine\n\nv2\n<!-- /k -->\n\n## After\n"
        );
        assert_eq!(
            replace_section("", "k", "x"),
            "<!-- k -->\nx\n<!-- /k -->\n"
        );
    }

    #[test]
    fn a_rewritten_document_keeps_the_marked_sections() {
        let doc = "# Old\n\n<!-- a -->\nA\n<!-- /a -->\n\nstale\n<!-- b -->\nB\n<!-- /b -->\n";
        assert_eq!(
            super::with_marked_sections_of("# New\n", doc),
            "# New\n\n<!-- a -->\nA\n<!-- /a -->\n\n<!-- b -->\nB\n<!-- /b -->\n"
        );
        assert_eq!(
            super::with_marked_sections_of("# New", "# Old\n"),
            "# New\n"
        );
    }
}
