//! `cargo xtask setup`: make a Debian 12 machine ready to build and test skiff.
//!
//! Each piece is checked first and installed only when missing, with a line that says what is
//! installed and why. A piece that cannot be installed stops setup with an error naming it and
//! the manual fix. `--check` only reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{cargo, probe, run};
use crate::{Workspace, dist, sys};

/// Debian packages the build and the tests use, with the reason for each.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "etcd-server",
        "a real etcd for the etcd store backend and its tests",
    ),
    (
        "etcd-client",
        "etcdctl, to look into etcd from tests and by hand",
    ),
    (
        "protobuf-compiler",
        "protoc, needed to build the etcd-client crate",
    ),
    (
        "libprotobuf-dev",
        "the well-known .proto includes (google/protobuf/descriptor.proto) that etcd-client's \
         build script compiles against; not pulled in by protobuf-compiler without recommends",
    ),
    ("iptables", "the agent's iptables proxy mode and its tests"),
    (
        "nftables",
        "`nft`, so `cargo xtask down` can delete the iptables tables the agent created",
    ),
    (
        "iproute2",
        "`ip`, to inspect network namespaces, links and routes",
    ),
    ("bpftool", "inspect the agent's eBPF programs and maps"),
    (
        "busybox-static",
        "a static userland for test container images",
    ),
    (
        "conntrack",
        "inspect and flush connection tracking in service tests",
    ),
    ("iputils-ping", "ping between pods in network tests"),
    (
        "dnsmasq-base",
        "dnsmasq, the DNS `cargo xtask bench-dns` compares the agent's cluster DNS with",
    ),
    (
        "gcc",
        "the C compiler (Rust's linker; builds the test image's skiff-udp-echo)",
    ),
    (
        "libc6-dev",
        "the static libc the test image's skiff-udp-echo is linked with",
    ),
    (
        "libssl-dev",
        "the static OpenSSL the test image's skiff-https-get is linked with",
    ),
    (
        "musl-tools",
        "musl-gcc, which builds ring's C for the static release binaries (`cargo xtask dist`)",
    ),
    (
        "systemd",
        "systemd-analyze, which verifies the packages' units (`cargo xtask dist`)",
    ),
];

const RUSTUP_FIX: &str = "install rustup from https://rustup.rs \
     (`curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y`), \
     then `source ~/.cargo/env`";

pub fn setup(ws: &Workspace, check_only: bool) -> Result<()> {
    let mut setup = Setup {
        ws,
        check_only,
        missing: Vec::new(),
        apt_updated: false,
    };
    println!(
        "{} prerequisites:",
        if check_only { "checking" } else { "setting up" }
    );
    setup.rustup()?;
    setup.nightly_toolchain()?;
    setup.rust_src()?;
    setup.static_target()?;
    let llvm_major = nightly_llvm_major();
    let linker_missing = bpf_linker_version().is_none();
    setup.apt_packages(linker_missing.then_some(llvm_major).flatten())?;
    setup.kubectl_120()?;
    setup.bpf_linker(llvm_major)?;
    setup.bpffs()?;

    if !setup.missing.is_empty() {
        bail!(
            "{} piece(s) missing (see above); run `cargo xtask setup` as root to install",
            setup.missing.len()
        );
    }
    println!("all prerequisites are in place");
    Ok(())
}

struct Setup<'a> {
    ws: &'a Workspace,
    check_only: bool,
    /// Pieces found missing in `--check` mode.
    missing: Vec<String>,
    apt_updated: bool,
}

impl Setup<'_> {
    /// Reports a piece that is already there.
    fn present(&self, piece: &str) -> Result<()> {
        println!("  ok       {piece}");
        Ok(())
    }

    /// Reports a missing piece; returns whether to install it now (not in `--check` mode).
    fn missing(&mut self, piece: &str, why: &str) -> bool {
        if self.check_only {
            println!("  MISSING  {piece}: {why}");
            self.missing.push(piece.to_string());
            false
        } else {
            println!("  install  {piece}: {why}");
            true
        }
    }

    fn rustup(&mut self) -> Result<()> {
        match probe(Command::new("rustup").arg("--version")) {
            Some(_) => self.present("rustup"),
            None => bail!("rustup is missing: {RUSTUP_FIX}"),
        }
    }

    fn nightly_toolchain(&mut self) -> Result<()> {
        if nightly_llvm_major().is_some() {
            return self.present("rust nightly toolchain");
        }
        if !self.missing(
            "rust nightly toolchain",
            "the eBPF programs are built with nightly (-Z build-std=core)",
        ) {
            return Ok(());
        }
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "could not install the nightly toolchain; fix: `rustup toolchain install nightly`",
        )?;
        if nightly_llvm_major().is_none() {
            bail!("rustc nightly does not report its LLVM version (`rustc +nightly -vV`)");
        }
        Ok(())
    }

    fn rust_src(&mut self) -> Result<()> {
        let piece = "rust-src component of nightly";
        if has_nightly_rust_src() {
            return self.present(piece);
        }
        if !self.missing(
            piece,
            "needed to build `core` for the bpfel-unknown-none target",
        ) {
            return Ok(());
        }
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context(
            "could not add rust-src; fix: `rustup component add rust-src --toolchain nightly`",
        )?;
        if !has_nightly_rust_src() {
            bail!("rust-src is still not listed for nightly after `rustup component add`");
        }
        Ok(())
    }

    /// The standard library for the static release binaries of `cargo xtask dist`.
    fn static_target(&mut self) -> Result<()> {
        let piece = format!("rust target {}", dist::STATIC_TARGET);
        if has_static_target() {
            return self.present(&piece);
        }
        if !self.missing(
            &piece,
            "`cargo xtask dist` builds static (musl) release binaries",
        ) {
            return Ok(());
        }
        run(Command::new("rustup").args(["target", "add", dist::STATIC_TARGET])).with_context(
            || {
                format!(
                    "could not add the target; fix: `rustup target add {}`",
                    dist::STATIC_TARGET
                )
            },
        )?;
        ensure!(
            has_static_target(),
            "{} is still not installed after `rustup target add`",
            dist::STATIC_TARGET
        );
        Ok(())
    }

    /// The Debian packages, plus `llvm-<major>-dev` when bpf-linker has to be built.
    fn apt_packages(&mut self, llvm_for_linker: Option<u32>) -> Result<()> {
        let llvm_dev = llvm_for_linker.map(|major| format!("llvm-{major}-dev"));
        let llvm_why =
            "LLVM libraries that bpf-linker is built against (same major as rustc nightly)";
        let wanted = APT_PACKAGES
            .iter()
            .map(|&(pkg, why)| (pkg, why))
            .chain(llvm_dev.as_deref().map(|pkg| (pkg, llvm_why)));

        let mut to_install = Vec::new();
        for (pkg, why) in wanted {
            if dpkg_installed(pkg) {
                self.present(pkg)?;
            } else if self.missing(pkg, why) {
                to_install.push(pkg);
            }
        }
        if to_install.is_empty() {
            return Ok(());
        }
        self.apt_install(&to_install)?;
        let still_missing: Vec<_> = to_install
            .into_iter()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if !still_missing.is_empty() {
            bail!(
                "apt-get did not install {0}; fix: `apt-get install -y --no-install-recommends {0}`",
                still_missing.join(" ")
            );
        }
        Ok(())
    }

    fn apt_install(&mut self, pkgs: &[&str]) -> Result<()> {
        let list = pkgs.join(" ");
        let fix = format!(
            "fix: as root, `apt-get update && apt-get install -y --no-install-recommends {list}`"
        );
        if !sys::is_root() {
            bail!("missing {list}, and installing needs root; {fix}");
        }
        self.apt_update()?;
        run(apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(pkgs))
        .with_context(|| format!("could not install {list}; {fix}"))
    }

    /// `apt-get update`, at most once per setup.
    fn apt_update(&mut self) -> Result<()> {
        if !self.apt_updated {
            run(apt_get().arg("update"))
                .context("`apt-get update` failed: check /etc/apt/sources.list* and the network")?;
            self.apt_updated = true;
        }
        Ok(())
    }

    fn kubectl_120(&mut self) -> Result<()> {
        let piece = "kubectl 1.20 (Debian kubernetes-client, private copy in target/tools)";
        let kubectl = self.ws.kubectl_120();
        if kubectl_120_works(&kubectl) {
            return self.present(piece);
        }
        let why = "tests check that an old kubectl works too; \
                   not apt-installed because it would replace /usr/bin/kubectl";
        if !self.missing(piece, why) {
            return Ok(());
        }
        let tools = self.ws.tools();
        self.unpack_kubectl_120(&tools).with_context(|| {
            format!(
                "could not install kubectl 1.20 (Debian package kubernetes-client); fix: \
                 `cd $(mktemp -d) && apt-get download kubernetes-client && \
                 dpkg -x kubernetes-client_*.deb {0}/kubernetes-client && \
                 ln -sfn kubernetes-client/usr/bin/kubectl {0}/kubectl-1.20` \
                 (never `apt-get install kubernetes-client`)",
                tools.display()
            )
        })?;
        if !kubectl_120_works(&kubectl) {
            bail!(
                "{} was unpacked but `{} version --client` does not report v1.20",
                piece,
                kubectl.display()
            );
        }
        Ok(())
    }

    /// `apt-get download` + `dpkg -x` into `<tools>/kubernetes-client`, symlinked as kubectl-1.20.
    fn unpack_kubectl_120(&mut self, tools: &Path) -> Result<()> {
        if sys::is_root() {
            self.apt_update()?;
        }
        let download = tools.join("download");
        let _ = std::fs::remove_dir_all(&download);
        std::fs::create_dir_all(&download)
            .with_context(|| format!("could not create {}", download.display()))?;
        run(apt_get()
            .args(["download", "kubernetes-client"])
            .current_dir(&download))?;
        let deb = find_deb(&download, "kubernetes-client_")?;

        let unpacked = tools.join("kubernetes-client");
        let _ = std::fs::remove_dir_all(&unpacked);
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
        let _ = std::fs::remove_dir_all(&download);

        let link = tools.join("kubectl-1.20");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("kubernetes-client/usr/bin/kubectl", &link)
            .with_context(|| format!("could not create the symlink {}", link.display()))
    }

    /// bpffs at /sys/fs/bpf: the eBPF dataplane pins its maps there (`--bpffs`) and its root
    /// tests load programs against it. systemd mounts it at boot; a container or a minimal
    /// machine may not have it.
    fn bpffs(&mut self) -> Result<()> {
        let piece = "bpffs mounted at /sys/fs/bpf";
        if is_mounted_bpffs("/sys/fs/bpf") {
            return self.present(piece);
        }
        if !self.missing(piece, "the eBPF dataplane pins its maps there") {
            return Ok(());
        }
        if !sys::is_root() {
            bail!(
                "bpffs is not mounted and mounting it needs root; fix: `mount -t bpf bpf /sys/fs/bpf`"
            );
        }
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("could not mount bpffs; fix: `mount -t bpf bpf /sys/fs/bpf`")
    }

    fn bpf_linker(&mut self, llvm_major: Option<u32>) -> Result<()> {
        if let Some(version) = bpf_linker_version() {
            return self.present(&format!("bpf-linker ({version})"));
        }
        let installed = cargo_home().join("bin/bpf-linker");
        if installed.exists() {
            bail!(
                "bpf-linker is installed at {} but does not run from PATH; \
                 fix: `source ~/.cargo/env` (or add ~/.cargo/bin to PATH)",
                installed.display()
            );
        }
        let why = "links the eBPF programs; must use the same LLVM major as rustc nightly. \
                   Built from source: takes ~85 s or more on 2 cores";
        let Some(major) = llvm_major else {
            // Only reachable in --check mode with no nightly toolchain yet.
            self.missing("bpf-linker", why);
            return Ok(());
        };
        if !self.missing(&format!("bpf-linker (for LLVM {major})"), why) {
            return Ok(());
        }
        let start = Instant::now();
        let path = format!(
            "/usr/lib/llvm-{major}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let feature = format!("llvm-{major}");
        run(cargo().env("PATH", path).args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &feature,
        ]))
        .with_context(|| {
            format!(
                "could not build bpf-linker. Recipe (shared/TOOLCHAIN.md): \
                 `apt-get install -y llvm-{major}-dev && PATH=/usr/lib/llvm-{major}/bin:$PATH \
                 cargo install bpf-linker --no-default-features --features llvm-{major}`; \
                 plain `cargo install bpf-linker` does not work (it picks another LLVM)"
            )
        })?;
        println!("  bpf-linker built in {:.0?}", start.elapsed());
        if bpf_linker_version().is_none() {
            bail!(
                "bpf-linker was installed but `bpf-linker --version` fails; \
                 is ~/.cargo/bin on PATH? (`source ~/.cargo/env`)"
            );
        }
        Ok(())
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

/// Whether `path` is itself a bpffs mount point (/proc/self/mounts: device, path, type, ...).
fn is_mounted_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            (f.nth(1), f.next()) == (Some(path), Some("bpf"))
        })
    })
}

fn dpkg_installed(pkg: &str) -> bool {
    probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// The LLVM major version of rustc nightly ("LLVM version: 22.1.4" → 22), if nightly is there.
fn nightly_llvm_major() -> Option<u32> {
    let info = probe(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let version = info.lines().find_map(|l| l.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

fn has_static_target() -> bool {
    probe(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|out| out.lines().any(|l| l.trim() == dist::STATIC_TARGET))
}

fn has_nightly_rust_src() -> bool {
    probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|list| list.lines().any(|l| l.trim().starts_with("rust-src")))
}

fn bpf_linker_version() -> Option<String> {
    let out = probe(Command::new("bpf-linker").arg("--version"))?;
    Some(out.lines().next().unwrap_or("").trim().to_string())
}

fn kubectl_120_works(kubectl: &Path) -> bool {
    probe(Command::new(kubectl).args(["version", "--client"]))
        .is_some_and(|out| out.contains("v1.20"))
}

fn find_deb(dir: &Path, prefix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "no {prefix}*.deb in {} after apt-get download",
                dir.display()
            )
        })
}

fn cargo_home() -> PathBuf {
    match std::env::var_os("CARGO_HOME") {
        Some(home) => home.into(),
        None => {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        }
    }
}
