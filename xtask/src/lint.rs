//! `cargo xtask lint`: formatting and clippy over the whole workspace and the eBPF crate.
//!
//! The lints themselves are `[workspace.lints]` in the root Cargo.toml (every member has
//! `[lints] workspace = true`); `ebpf/skiff-ebpf` is its own workspace, so its Cargo.toml
//! mirrors that table in `[lints]`. Five phases run, all of them even if one fails:
//!
//! 1. `cargo fmt --all --check` — the workspace (which includes `ebpf/skiff-ebpf-common`);
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`;
//! 3. `cargo fmt --check` in `ebpf/skiff-ebpf`;
//! 4. clippy on the eBPF programs, built the way `agent/build.rs` builds them:
//!    `rustup run nightly cargo clippy --target bpfel-unknown-none -Z build-std=core
//!    --target-dir target/ebpf-clippy -- -D warnings`, run in `ebpf/skiff-ebpf` (its own
//!    `Cargo.lock`). It needs the nightly toolchain with `rust-src` and `clippy` (`cargo xtask
//!    setup` installs the first two; `rustup component add clippy --toolchain nightly` the
//!    third), but no bpf-linker: clippy stops before linking. The first run builds `core` for
//!    the BPF target (about 30 s); later runs take about a second. As in build.rs, the
//!    environment cargo gives xtask (`RUSTC`, `RUSTFLAGS`, `RUSTUP_TOOLCHAIN`, …) is removed
//!    so the nightly cargo uses nightly's own rustc and clippy.
//!
//! 5. no module cycle in any crate of the workspace ([`crate::modcycles`]).
//!
//! With `SKIFF_EBPF_SKIP=1` (the agent's build.rs switch for machines without the eBPF
//! toolchain) the eBPF clippy phase is skipped with a note; the workspace clippy then also
//! compiles the agent without the eBPF object.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::Workspace;
use crate::cmd::{cargo, phase, status};
use crate::modcycles;

pub fn lint(ws: &Workspace) -> Result<()> {
    let ebpf_dir = ws.root.join("ebpf/skiff-ebpf");
    let fmt = phase("fmt", || {
        status(
            cargo()
                .current_dir(&ws.root)
                .args(["fmt", "--all", "--check"]),
        )
    })?;
    let clippy = phase("clippy", || {
        status(cargo().current_dir(&ws.root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    let ebpf_fmt = phase("fmt (eBPF crate)", || {
        status(cargo().current_dir(&ebpf_dir).args(["fmt", "--check"]))
    })?;
    let ebpf_clippy = if ebpf_skipped() {
        println!("\nSKIFF_EBPF_SKIP is set: the eBPF crate is not linted");
        true
    } else {
        phase("clippy (eBPF crate)", || {
            status(&mut ebpf_clippy(&ebpf_dir, &ws.target.join("ebpf-clippy")))
        })?
        .success()
    };
    let acyclic = phase("module cycles", || module_cycles(ws))?;
    let mut problems = Vec::new();
    if !acyclic {
        problems.push("modules depend on each other in a cycle (see above)");
    }
    if !fmt.success() {
        problems.push("formatting differs: run `cargo fmt --all`");
    }
    if !ebpf_fmt.success() {
        problems.push("the eBPF crate's formatting differs: run `cargo fmt` in ebpf/skiff-ebpf");
    }
    if !clippy.success() {
        problems.push("clippy found problems in the workspace (see above)");
    }
    if !ebpf_clippy {
        problems.push(
            "clippy found problems in the eBPF crate, or could not run: it needs \
             `rustup component add rust-src clippy --toolchain nightly` (see above)",
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}

/// The crates whose modules must not form cycles.
pub const CYCLE_CHECKED_CRATES: [&str; 5] = ["common", "control", "agent", "tests", "xtask"];

/// Prints every module cycle; true when there is none.
fn module_cycles(ws: &Workspace) -> Result<bool> {
    let mut clean = true;
    for krate in CYCLE_CHECKED_CRATES {
        for cycle in modcycles::cycles(&ws.root.join(krate).join("src"))? {
            clean = false;
            println!("{krate}: cycle among {}", cycle.modules.join(", "));
            for edge in &cycle.edges {
                println!("    {edge}");
            }
        }
    }
    if clean {
        println!("no module cycle in {}", CYCLE_CHECKED_CRATES.join(", "));
    }
    Ok(clean)
}

/// `SKIFF_EBPF_SKIP=1` (or `true`), read as agent/build.rs reads it.
fn ebpf_skipped() -> bool {
    std::env::var("SKIFF_EBPF_SKIP").is_ok_and(|s| s == "1" || s.eq_ignore_ascii_case("true"))
}

/// Nightly clippy over the eBPF programs for `bpfel-unknown-none`, as agent/build.rs builds them.
fn ebpf_clippy(ebpf_dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(ebpf_dir)
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "skiff-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--", "-D", "warnings"]);
    for var in [
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}
