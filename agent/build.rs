//! Builds the eBPF programs (`../ebpf/skiff-ebpf`) for `bpfel-unknown-none` the way aya-build
//! does (nightly, `-Z build-std=core`, bpf-linker, BTF) into `OUT_DIR/skiff-ebpf`, which
//! `src/proxy/ebpf/loader.rs` embeds with `include_bytes_aligned!`.
//!
//! The kernel crate is its own cargo workspace (excluded from the root one), so the nested
//! cargo runs from its directory with its own `Cargo.lock` and a target dir under `OUT_DIR`.
//!
//! `SKIFF_EBPF_SKIP=1` (or `AYA_BUILD_SKIP=1`, aya-build's name for it) skips the kernel build and embeds an
//! empty object: the agent then compiles without nightly/bpf-linker (for linting on a machine
//! without them) and `EbpfDataplane::open` reports that the programs are missing.
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

const SETUP_HINT: &str =
    "`cargo xtask setup` installs the eBPF toolchain (nightly + rust-src + bpf-linker)";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let ebpf_dir = manifest_dir.join("../ebpf/skiff-ebpf");
    let common_dir = manifest_dir.join("../ebpf/skiff-ebpf-common");
    let ebpf_dir = ebpf_dir.canonicalize().unwrap_or_else(|e| {
        fail(&format!(
            "the eBPF crate is missing at {}: {e}",
            ebpf_dir.display()
        ))
    });
    println!("cargo:rerun-if-changed=build.rs");
    for f in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", common_dir.join(f).display());
    }
    for var in ["SKIFF_EBPF_SKIP", "AYA_BUILD_SKIP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let skip = ["SKIFF_EBPF_SKIP", "AYA_BUILD_SKIP"]
        .iter()
        .any(|v| env::var(v).is_ok_and(|s| s == "1" || s.eq_ignore_ascii_case("true")));
    let object = out_dir.join("skiff-ebpf");
    if skip {
        println!(
            "cargo:warning=SKIFF_EBPF_SKIP: the eBPF programs are not built; the agent's ebpf proxy mode will not load"
        );
        std::fs::write(&object, b"").expect("write empty eBPF object");
        return;
    }

    check_toolchain();

    build_ebpf(&ebpf_dir, &out_dir, &object);
}

/// What aya-build's `build_ebpf` does, minus its echo of the nested cargo's output as
/// `cargo:warning` lines (cargo replays those on every build of the agent): nightly cargo
/// builds the kernel crate's bins for bpfel-unknown-none with `-Z build-std=core`, BTF on; the
/// output is shown only when it fails. The environment cargo gives build scripts is scrubbed so
/// the nested build's fingerprints stay stable (an unchanged kernel crate rebuilds in ~1 s);
/// the jobserver (`CARGO_MAKEFLAGS`) is kept so both builds share the cores.
fn build_ebpf(ebpf_dir: &Path, out_dir: &Path, object: &Path) {
    for f in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(f).display());
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(ebpf_dir)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            "skiff-ebpf",
            "--bins",
        ])
        .args([
            "--release",
            "--target",
            target,
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        let scrub = (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_MAKEFLAGS")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTDOC")
            || matches!(
                &*k,
                "RUSTFLAGS"
                    | "RUSTUP_TOOLCHAIN"
                    | "DEBUG"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "NUM_JOBS"
            );
        if scrub {
            cmd.env_remove(&*k);
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    );
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run `rustup run nightly cargo`: {e}")));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        fail(&format!(
            "building the eBPF programs ({}) failed: see the compiler output above; it needs the \
             nightly toolchain with rust-src and bpf-linker — {SETUP_HINT}",
            ebpf_dir.display()
        ));
    }
    let built = target_dir.join(target).join("release/skiff-ebpf");
    std::fs::copy(&built, object).unwrap_or_else(|e| {
        fail(&format!(
            "copy {} to {}: {e}",
            built.display(),
            object.display()
        ))
    });
}

fn fail(msg: &str) -> ! {
    eprintln!("error: skiff-agent build.rs: {msg}");
    exit(1)
}

/// Fail early, with the fix, when a piece of the eBPF toolchain is missing.
fn check_toolchain() {
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin"));
    // bpf-linker: rustc finds it on PATH.
    let path = env::var_os("PATH").unwrap_or_default();
    let on_path = env::split_paths(&path).any(|d| d.join("bpf-linker").is_file());
    if !on_path {
        match cargo_bin
            .as_ref()
            .filter(|d| d.join("bpf-linker").is_file())
        {
            Some(dir) => {
                // Installed by `cargo install` but ~/.cargo/bin is not on PATH: add it for the
                // nested cargo.
                let mut dirs = vec![dir.clone()];
                dirs.extend(env::split_paths(&path));
                let joined = env::join_paths(dirs).expect("join PATH");
                // SAFETY: build scripts are single-threaded here.
                unsafe { env::set_var("PATH", joined) };
            }
            None => fail(&format!(
                "bpf-linker is not installed (needed to link the eBPF programs). Fix: {SETUP_HINT}, or \
                 `cargo install bpf-linker --no-default-features --features llvm-<N>` against the LLVM \
                 major that `rustc +nightly -vV` reports"
            )),
        }
    }
    // rustup + nightly + rust-src (the build is `rustup run nightly cargo … -Z build-std=core`).
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output();
    let sysroot = match sysroot {
        Err(e) => fail(&format!(
            "cannot run rustup ({e}); the eBPF programs are built with `rustup run nightly`. Fix: install rustup, then {SETUP_HINT}"
        )),
        Ok(o) if !o.status.success() => fail(&format!(
            "the nightly toolchain is missing (`rustup run nightly rustc` failed: {}). Fix: \
             `rustup toolchain install nightly --component rust-src` ({SETUP_HINT})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(o) => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
    };
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        fail(&format!(
            "the nightly toolchain has no rust-src component ({} is missing; needed for -Z build-std=core). \
             Fix: `rustup component add rust-src --toolchain nightly` ({SETUP_HINT})",
            core_src.display()
        ));
    }
}
