//! `cargo xtask fresh-check`: the README's setup and build on a Debian 12 root that never saw
//! the project, so a missing install step shows here and not on a newcomer's machine.
//!
//! A minimal Debian 12 root is made once with `debootstrap` and cached under
//! `<target>/fresh-check/base`. Each run lays a throw-away overlay on it, copies the working
//! tree in (tracked and untracked-but-not-ignored files, as they are now), bind-mounts the
//! host's rustup home and cargo registry (so nothing is downloaded twice), and runs, chrooted:
//! the linker bootstrap of `.ci/run`, `cargo xtask setup`, `cargo build --workspace
//! --all-targets`, the unit tests and `cargo xtask dist`; then, without a network, in a
//! network namespace and cgroup subtree of their own, the packages are installed as
//! docs/deploy.md says, run and purged. The cargo home inside is new apart
//! from the registry, so `bpf-linker` and everything apt brings are installed as on a fresh
//! machine; what setup had to install is printed at the end.
//!
//! All mounts live in a private mount namespace (`unshare --mount`), so they vanish with the
//! run even when it fails or is killed; the overlay's upper layer is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{probe, run, status};
use crate::{Workspace, sys};

/// The Debian release a fresh machine runs.
const SUITE: &str = "bookworm";

/// What a machine with rustup on it has besides a minimal Debian: the certificates rustup's
/// installer itself needed.
const BASE_PACKAGES: &str = "ca-certificates";

#[derive(clap::Args)]
pub struct FreshCheckArgs {
    /// Make the cached Debian root again (`debootstrap` takes a few minutes).
    #[arg(long)]
    rebuild_base: bool,
    /// Keep the run's root (`<target>/fresh-check/run`) for a look; remove it with the next run.
    #[arg(long)]
    keep: bool,
}

pub fn fresh_check(ws: &Workspace, args: &FreshCheckArgs) -> Result<()> {
    ensure!(
        sys::is_root(),
        "`cargo xtask fresh-check` needs root (debootstrap, chroot, mounts)"
    );
    let dir = ws.target.join("fresh-check");
    let base = dir.join("base");
    ensure_debootstrap()?;
    if args.rebuild_base || !base.join("etc/debian_version").exists() {
        make_base(&base)?;
    }
    let runroot = dir.join("run");
    remove_run_dir(&runroot)?;
    let result = check_in_overlay(ws, &base, &runroot);
    if !args.keep {
        remove_run_dir(&runroot)?;
    }
    result
}

fn ensure_debootstrap() -> Result<()> {
    if probe(Command::new("debootstrap").arg("--version")).is_some() {
        return Ok(());
    }
    println!("installing debootstrap (Debian package) to make the fresh root");
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends", "debootstrap"]))
    .context(
        "could not install debootstrap; fix: `apt-get update && apt-get install -y debootstrap`",
    )
}

/// `debootstrap --variant=minbase` into `base`, from the host's own Debian mirror, with the
/// host's apt sources (a fresh machine of this kind has the same).
fn make_base(base: &Path) -> Result<()> {
    let mirror = host_mirror()?;
    let partial = base.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(&partial)?;
    let start = Instant::now();
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={BASE_PACKAGES}"),
            SUITE,
        ])
        .arg(&partial)
        .arg(&mirror))
    .context("debootstrap failed")?;
    copy_apt_sources(&partial)?;
    std::fs::rename(&partial, base)?;
    println!("fresh Debian root made in {:.0?}", start.elapsed());
    Ok(())
}

/// The first `URIs:` (deb822) or `deb` line of the host's apt sources for Debian's main archive.
fn host_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    let uris = texts.iter().flat_map(|t| t.lines()).filter_map(|l| {
        let l = l.trim();
        l.strip_prefix("URIs:")
            .map(|u| u.split_whitespace().next().unwrap_or_default())
            .or_else(|| {
                l.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().next())
            })
    });
    uris.filter(|u| !u.contains("security"))
        .map(String::from)
        .next()
        .context("no Debian mirror in /etc/apt/sources.list{,.d}: cannot run debootstrap")
}

fn copy_apt_sources(root: &Path) -> Result<()> {
    let host = Path::new("/etc/apt/sources.list.d/debian.sources");
    if host.exists() {
        std::fs::copy(host, root.join("etc/apt/sources.list.d/debian.sources"))?;
        std::fs::write(root.join("etc/apt/sources.list"), "")?;
    }
    Ok(())
}

/// Mounts an overlay over `base` at `<run>/root`, copies the tree in and runs the check there,
/// all inside a private mount namespace.
fn check_in_overlay(ws: &Workspace, base: &Path, run_dir: &Path) -> Result<()> {
    for sub in ["upper", "work", "root"] {
        std::fs::create_dir_all(run_dir.join(sub))?;
    }
    let rustup_home = home_dir("RUSTUP_HOME", ".rustup");
    let cargo_home = home_dir("CARGO_HOME", ".cargo");
    ensure!(
        rustup_home.join("toolchains").is_dir(),
        "no rustup toolchains at {}: install rustup first",
        rustup_home.display()
    );
    let tree = run_dir.join("tree.tar");
    pack_working_tree(&ws.root, &tree)?;
    let script = outer_script(base, run_dir, &rustup_home, &cargo_home, &tree);
    let start = Instant::now();
    let st = status(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "bash", "-euc"])
            .arg(&script)
            .stdin(Stdio::null()),
    )?;
    println!("fresh-check took {:.0?}", start.elapsed());
    if !st.success() {
        bail!(
            "fresh-check FAILED ({st}): the README's setup or build does not work on a fresh Debian 12"
        );
    }
    println!("fresh-check passed: setup, build and unit tests work on a fresh Debian 12 root");
    Ok(())
}

fn home_dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(default)
    })
}

/// The working tree as it is (tracked plus untracked, not ignored), into a tar file.
fn pack_working_tree(root: &Path, tar: &Path) -> Result<()> {
    let list = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .context("git ls-files")?;
    ensure!(
        list.status.success(),
        "git ls-files failed in {}",
        root.display()
    );
    // Files deleted in the working tree are still listed as cached: leave them out.
    let files: Vec<u8> = list
        .stdout
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .filter(|f| root.join(String::from_utf8_lossy(f).as_ref()).exists())
        .flat_map(|f| f.iter().copied().chain([0]))
        .collect();
    let mut child = Command::new("tar")
        .args(["--null", "-T", "-", "-cf"])
        .arg(tar)
        .current_dir(root)
        .stdin(Stdio::piped())
        .spawn()
        .context("tar")?;
    use std::io::Write;
    child.stdin.take().context("tar stdin")?.write_all(&files)?;
    ensure!(child.wait()?.success(), "tar of the working tree failed");
    Ok(())
}

/// Runs in the private mount namespace: the overlay, the binds, then the chrooted check.
fn outer_script(
    base: &Path,
    run_dir: &Path,
    rustup_home: &Path,
    cargo_home: &Path,
    tree: &Path,
) -> String {
    let (base, run_dir, rustup, registry, tree) = (
        base.display(),
        run_dir.display(),
        rustup_home.display(),
        cargo_home.join("registry").display().to_string(),
        tree.display(),
    );
    format!(
        r#"
r={run_dir}/root
mount -t overlay overlay -o lowerdir={base},upperdir={run_dir}/upper,workdir={run_dir}/work "$r"
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/tmp"
cp /etc/resolv.conf "$r/etc/resolv.conf"
# The machine's own trust (a site CA for the registries, if it has one) is not the project's to
# install: a fresh machine of the same kind carries it too.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/"
    chroot "$r" update-ca-certificates >/dev/null
fi
mkdir -p "$r/root/.rustup" "$r/root/.cargo/bin" "$r/root/.cargo/registry" "$r/src"
mount --bind {rustup} "$r/root/.rustup"
mkdir -p {registry}
mount --bind {registry} "$r/root/.cargo/registry"
# rustup's proxies only: a fresh machine has no bpf-linker or other cargo-installed tools.
cp "$(command -v rustup)" "$r/root/.cargo/bin/rustup"
for tool in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
    ln -sf rustup "$r/root/.cargo/bin/$tool"
done
tar -xf {tree} -C "$r/src"
cat > "$r/fresh-check.sh" <<'FRESH_CHECK_EOF'
{INNER}
FRESH_CHECK_EOF
cat > "$r/packages-check.sh" <<'FRESH_CHECK_EOF'
{PACKAGES}
FRESH_CHECK_EOF
dpkg-query -W -f='${{Package}}\n' --admindir="$r/var/lib/dpkg" | sort > {run_dir}/before.txt
set +e
env -i HOME=/root RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$r" bash -eu /fresh-check.sh
rc=$?
if [ $rc -eq 0 ]; then
    # The packages' maintainer scripts run the agent's cleanup: give them a network namespace
    # and a cgroup subtree of their own, so it cannot touch this machine's.
    cg=$(awk '$3 == "cgroup2" {{print $2; exit}}' /proc/mounts)/skiff-fresh-check-packages
    mkdir -p "$cg"
    env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        sh -c 'echo $$ > "$1/cgroup.procs" && exec unshare --cgroup --net sh -euc "mount -t cgroup2 none \"\$0/sys/fs/cgroup\" && exec chroot \"\$0\" bash -eu /packages-check.sh" "$2"' \
        sh "$cg" "$r"
    rc=$?
    rmdir "$cg"
fi
set -e
dpkg-query -W -f='${{Package}}\n' --admindir="$r/var/lib/dpkg" | sort > {run_dir}/after.txt
echo "fresh-check: Debian packages the setup installed:"
comm -13 {run_dir}/before.txt {run_dir}/after.txt | tr '\n' ' '
echo
exit $rc
"#
    )
}

/// Runs chrooted in the fresh root: what `.ci/run` and the README ask of a new machine.
const INNER: &str = r#"
cd /src
echo "fresh-check: $(cat /etc/debian_version), $(rustup --version 2>/dev/null | head -1)"
# .ci/run's bootstrap: cargo needs a C linker to build xtask itself.
if ! command -v cc >/dev/null; then
    echo "fresh-check: no C compiler: apt-get install gcc (as .ci/run does)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
fi
cargo xtask setup
cargo build --workspace --all-targets
SKIFF_TARGET_DIR=/src/target cargo test --workspace --lib --bins
# The release packages: the static (musl) build and the units' verification.
cargo xtask dist
"#;

/// Runs chrooted in the fresh root after [`INNER`], without a network: the packages `cargo
/// xtask dist` built, installed as docs/deploy.md says, run, then purged (the agent's prerm
/// runs `skiff-agent cleanup`, which must succeed), leaving nothing behind.
const PACKAGES: &str = r#"
cd /src
apt-get install -y -qq ./target/dist/skiff-control_*.deb ./target/dist/skiff-agent_*.deb
skiff-control --version
skiff-agent --version
for f in /lib/systemd/system/skiff-control.service /lib/systemd/system/skiff-agent.service \
         /etc/default/skiff-control /etc/default/skiff-agent; do
    test -f "$f" || { echo "fresh-check: $f not installed"; exit 1; }
done
mkdir -p /var/lib/skiff/agent /var/lib/skiff/control
touch /var/lib/skiff/agent/state /var/lib/skiff/control/state
out=$(apt-get purge -y skiff-agent skiff-control 2>&1)
echo "$out" | tail -4
if echo "$out" | grep -q "cleanup failed"; then
    echo "fresh-check: the agent's cleanup failed when its package was removed"
    exit 1
fi
for f in /usr/bin/skiff-agent /usr/bin/skiff-control /etc/default/skiff-agent /var/lib/skiff; do
    if [ -e "$f" ]; then echo "fresh-check: $f is left after purge"; exit 1; fi
done
echo "fresh-check: the packages installed, ran and were purged cleanly"
"#;

fn remove_run_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // The mounts were private to the check's namespace; nothing is mounted here any more.
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
