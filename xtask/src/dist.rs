//! `cargo xtask dist`: release packages for x86_64 Linux.
//!
//! One static (musl) release build of `skiff-control` and `skiff-agent`, then
//! - a Debian package per binary (`dpkg-deb`), with its systemd unit, its defaults file in
//!   `/etc/default` (a conffile) and maintainer scripts from `packaging/`;
//! - `skiff-<version>-linux-amd64.tar.gz` with the binaries, the units, the defaults files
//!   and docs/deploy.md, for machines without dpkg;
//! - `SHA256SUMS` over all of them.
//!
//! Before a package is written its unit is checked with `systemd-analyze verify` inside the
//! package's own tree (so `ExecStart` must name the binary the package installs), and any
//! complaint fails the build: systemd only warns about a misspelt setting and ignores it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::Workspace;
use crate::cmd::{cargo, phase, probe, run, show};

/// The target of the release binaries: musl links everything in, so one binary runs on any
/// x86_64 Linux whatever its libc.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAINTAINER: &str = "skiff developers <dev@skiff.invalid>";

/// `usr/share/doc/<package>/copyright` in Debian's machine-readable format.
const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: skiff

Files: *
Copyright: the skiff developers
License: Apache-2.0
 On Debian systems the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

#[derive(clap::Args, Default)]
pub struct DistArgs {
    /// Where the packages are written (default: <target>/dist).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One Debian package: one binary, its unit and its defaults file.
struct Package {
    name: &'static str,
    depends: &'static str,
    summary: &'static str,
    description: &'static str,
}

const PACKAGES: [Package; 2] = [
    Package {
        name: "skiff-control",
        depends: "",
        summary: "skiff control plane: Kubernetes-compatible API server, scheduler, controllers",
        description: "The API server real kubectl talks to, over an embedded store or etcd, \
                      with authentication, RBAC and admission, the scheduler and the \
                      controllers under leader election.",
    },
    Package {
        name: "skiff-agent",
        depends: "iptables",
        summary: "skiff node agent: pods, cluster DNS and the eBPF or iptables service proxy",
        description: "Joins a node to a skiff cluster with a bootstrap token, runs the pods \
                      bound to it, serves cluster DNS and load-balances Services with eBPF \
                      programs or kube-proxy-style iptables rules. The unit keeps pods \
                      running across agent restarts and upgrades.",
    },
];

pub fn dist(ws: &Workspace, args: &DistArgs) -> Result<()> {
    let out = args.out.clone().unwrap_or_else(|| ws.target.join("dist"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bins = phase("static release build", || build_static(ws))?;
    let mut artifacts = Vec::new();
    for pkg in &PACKAGES {
        let deb = phase(&format!("package {}", pkg.name), || {
            let root = stage_package(ws, pkg, &bins, &out.join("stage"))?;
            verify_unit(&root, pkg.name)?;
            let deb = build_deb(&root, &out)?;
            check_deb(&deb, pkg.name)?;
            Ok(deb)
        })?;
        artifacts.push(deb);
    }
    artifacts.push(phase("tarball", || build_tarball(ws, &bins, &out))?);
    write_checksums(&out, &artifacts)?;
    std::fs::remove_dir_all(out.join("stage")).ok();
    println!("\npackages in {}:", out.display());
    for a in &artifacts {
        let size = std::fs::metadata(a).map(|m| m.len()).unwrap_or(0);
        println!("  {:<40} {:>6} KiB", file_name(a), size / 1024);
    }
    Ok(())
}

/// The release binaries, built for [`STATIC_TARGET`] and checked to need no dynamic loader.
struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn build_static(ws: &Workspace) -> Result<Binaries> {
    run(cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "--locked",
        "--target",
        STATIC_TARGET,
        "-p",
        "skiff-control",
        "-p",
        "skiff-agent",
        "--bins",
    ]))
    .context(
        "the static release build failed; `cargo xtask setup` installs its prerequisites \
         (the x86_64-unknown-linux-musl target and musl-tools)",
    )?;
    let bins = Binaries {
        dir: ws.target.join(STATIC_TARGET).join("release"),
    };
    for pkg in &PACKAGES {
        let path = bins.path(pkg.name);
        let elf = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            !has_interpreter(&elf)?,
            "{} asks for a dynamic loader: it is not a static binary",
            path.display()
        );
    }
    Ok(bins)
}

/// Whether an ELF64 little-endian file has a `PT_INTERP` program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.len() >= 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let phoff = elf
        .get(0x20..0x28)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .context("truncated ELF header")?;
    let (entsize, count) = (u16_at(0x36), u16_at(0x38));
    let (Some(entsize), Some(count)) = (entsize, count) else {
        bail!("truncated ELF header");
    };
    let phoff = usize::try_from(phoff).context("ELF program header offset")?;
    for i in 0..usize::from(count) {
        let at = phoff + i * usize::from(entsize);
        let kind = elf
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .context("truncated ELF program header")?;
        if kind == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The package's files under `<stage>/<name>`: the binary, the unit, the defaults file, the
/// deploy guide and `DEBIAN/` (control, conffiles, maintainer scripts).
fn stage_package(ws: &Workspace, pkg: &Package, bins: &Binaries, stage: &Path) -> Result<PathBuf> {
    let root = stage.join(pkg.name);
    let _ = std::fs::remove_dir_all(&root);
    let packaging = ws.root.join("packaging");
    let unit = format!("{}.service", pkg.name);
    let files = [
        (bins.path(pkg.name), format!("usr/bin/{}", pkg.name), 0o755),
        (
            packaging.join("systemd").join(&unit),
            format!("lib/systemd/system/{unit}"),
            0o644,
        ),
        (
            packaging.join("default").join(pkg.name),
            format!("etc/default/{}", pkg.name),
            0o644,
        ),
        (
            ws.root.join("docs/deploy.md"),
            format!("usr/share/doc/{}/deploy.md", pkg.name),
            0o644,
        ),
    ];
    for (from, to, mode) in &files {
        install_file(from, &root.join(to), *mode)?;
    }
    std::fs::write(
        root.join(format!("usr/share/doc/{}/copyright", pkg.name)),
        COPYRIGHT,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        let from = packaging.join("deb").join(pkg.name).join(script);
        install_file(&from, &root.join("DEBIAN").join(script), 0o755)?;
    }
    std::fs::write(
        root.join("DEBIAN/conffiles"),
        format!("/etc/default/{}\n", pkg.name),
    )?;
    let control = control_file(pkg, installed_size_kib(&root)?);
    std::fs::write(root.join("DEBIAN/control"), control)?;
    Ok(root)
}

fn install_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `DEBIAN/control` as Debian policy (§5.3) wants it.
fn control_file(pkg: &Package, installed_kib: u64) -> String {
    let mut text = format!(
        "Package: {}\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nSection: admin\nPriority: optional\n",
        pkg.name
    );
    if !pkg.depends.is_empty() {
        text.push_str(&format!("Depends: {}\n", pkg.depends));
    }
    text.push_str(&format!("Description: {}\n", pkg.summary));
    for line in wrap(pkg.description, 78) {
        text.push_str(&format!(" {line}\n"));
    }
    text
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Bytes of everything outside `DEBIAN/`, rounded up to KiB (dpkg's Installed-Size).
fn installed_size_kib(root: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total)?;
    Ok(total)
}

/// `systemd-analyze verify` of the unit inside a copy of the host's unit directory laid over
/// the package tree, so the unit's dependencies resolve and `ExecStart` is looked up in the
/// package. Anything it prints is an error.
fn verify_unit(pkg_root: &Path, name: &str) -> Result<()> {
    let host_units = Path::new("/usr/lib/systemd/system");
    ensure!(
        host_units.join("sysinit.target").exists(),
        "no systemd units in {}: install the `systemd` package (`cargo xtask setup` does)",
        host_units.display()
    );
    let root = pkg_root.with_extension("verify");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("usr/lib/systemd"))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(host_units)
        .arg(root.join("usr/lib/systemd")))?;
    for dir in ["usr/bin", "etc/default"] {
        run(Command::new("cp")
            .arg("-a")
            .arg(pkg_root.join(dir))
            .arg(root.join(dir).parent().context("a parent")?))?;
    }
    let unit = root.join(format!("usr/lib/systemd/system/{name}.service"));
    std::fs::copy(
        pkg_root.join(format!("lib/systemd/system/{name}.service")),
        &unit,
    )?;
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg(format!("--root={}", root.display()))
        .args(["verify", "--man=no"])
        .arg(&unit);
    println!("$ {}", show(&cmd));
    let output = cmd.output().context("running systemd-analyze")?;
    std::fs::remove_dir_all(&root).ok();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify {name}.service: {}", said.trim());
    }
    println!("  {name}.service verified");
    Ok(())
}

fn build_deb(root: &Path, out: &Path) -> Result<PathBuf> {
    let name = file_name(root);
    let deb = out.join(format!("{name}_{VERSION}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(root)
        .arg(&deb))?;
    Ok(deb)
}

/// Reads the package back as dpkg will: its control fields and that every file is root's,
/// with the mode it needs.
fn check_deb(deb: &Path, name: &str) -> Result<()> {
    let field = |f: &str| {
        probe(Command::new("dpkg-deb").arg("--field").arg(deb).arg(f))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("`dpkg-deb --field {} {f}` failed", deb.display()))
    };
    ensure!(
        field("Package")? == name,
        "{} names another package",
        deb.display()
    );
    ensure!(
        field("Version")? == VERSION,
        "{} has another version",
        deb.display()
    );
    let listing = probe(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .with_context(|| format!("`dpkg-deb --contents {}` failed", deb.display()))?;
    let wanted = [
        ("-rwxr-xr-x", format!("./usr/bin/{name}")),
        ("-rw-r--r--", format!("./lib/systemd/system/{name}.service")),
        ("-rw-r--r--", format!("./etc/default/{name}")),
        ("-rw-r--r--", format!("./usr/share/doc/{name}/copyright")),
    ];
    for (mode, path) in &wanted {
        let found = listing.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(mode)
                && cols.get(1) == Some(&"root/root")
                && cols.last() == Some(&path.as_str())
        });
        ensure!(
            found,
            "{} lacks {mode} root/root {path}:\n{listing}",
            deb.display()
        );
    }
    Ok(())
}

/// `skiff-<version>-linux-amd64.tar.gz`: `bin/`, `systemd/`, `default/`, `deploy.md`.
fn build_tarball(ws: &Workspace, bins: &Binaries, out: &Path) -> Result<PathBuf> {
    let top = format!("skiff-{VERSION}-linux-amd64");
    let tree = out.join("stage").join(&top);
    let _ = std::fs::remove_dir_all(&tree);
    let packaging = ws.root.join("packaging");
    for pkg in &PACKAGES {
        let unit = format!("{}.service", pkg.name);
        install_file(
            &bins.path(pkg.name),
            &tree.join("bin").join(pkg.name),
            0o755,
        )?;
        install_file(
            &packaging.join("systemd").join(&unit),
            &tree.join("systemd").join(&unit),
            0o644,
        )?;
        install_file(
            &packaging.join("default").join(pkg.name),
            &tree.join("default").join(pkg.name),
            0o644,
        )?;
    }
    install_file(
        &ws.root.join("docs/deploy.md"),
        &tree.join("deploy.md"),
        0o644,
    )?;
    std::fs::write(tree.join("COPYRIGHT"), COPYRIGHT)?;
    let tarball = out.join(format!("{top}.tar.gz"));
    run(Command::new("tar")
        .args([
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--sort=name",
            "-czf",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(tree.parent().context("a parent")?)
        .arg(&top))?;
    Ok(tarball)
}

fn write_checksums(out: &Path, artifacts: &[PathBuf]) -> Result<()> {
    let mut cmd = Command::new("sha256sum");
    cmd.current_dir(out)
        .args(artifacts.iter().map(|a| file_name(a)));
    let output = cmd.output().context("running sha256sum")?;
    ensure!(output.status.success(), "`{}` failed", show(&cmd));
    std::fs::write(out.join("SHA256SUMS"), output.stdout)?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_an_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap(), "xtask's tests are dynamic");
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        let mut truncated = b"\x7fELF\x02\x01".to_vec();
        truncated.resize(64, 0);
        truncated[0x20] = 0xff;
        truncated[0x38] = 1;
        assert!(has_interpreter(&truncated).is_err());
    }

    #[test]
    fn control_file_follows_policy() {
        let text = control_file(&PACKAGES[1], 12345);
        assert!(
            text.starts_with("Package: skiff-agent\nVersion: "),
            "{text}"
        );
        assert!(text.contains("\nDepends: iptables\n"), "{text}");
        assert!(text.contains("\nInstalled-Size: 12345\n"), "{text}");
        let description: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Description:"))
            .skip(1)
            .collect();
        assert!(description.len() > 1);
        assert!(
            description
                .iter()
                .all(|l| l.starts_with(' ') && l.len() <= 80)
        );
        assert!(!control_file(&PACKAGES[0], 1).contains("Depends:"));
    }
}
