//! Builds the test image's own programs as static executables (the image holds nothing but
//! busybox, so they cannot load a libc): `skiff-udp-echo` (src/udp_echo.c) and
//! `skiff-https-get` (src/https_get.c, with the static OpenSSL of Debian's libssl-dev and
//! glibc's resolver library).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    build("src/udp_echo.c", "skiff-udp-echo", &[], "gcc, libc6-dev");
    build(
        "src/https_get.c",
        "skiff-https-get",
        &["-lssl", "-lcrypto", "-lresolv"],
        "gcc, libc6-dev, libssl-dev",
    );
    println!("cargo:rerun-if-env-changed=CC");
}

fn build(source: &str, name: &str, libs: &[&str], packages: &str) {
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join(name);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    // -s: no symbols or paths of this machine, so the binary (and the image) only depends on
    // the source, the compiler and the static libraries.
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-s", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(source)
        .args(libs)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} for {source}: {e} (install {packages})"));
    if !status.success() {
        panic!(
            "{cc} -static {source} failed ({status}); it needs a C compiler and the static \
             libraries (Debian: {packages}; `cargo xtask setup` installs them)"
        );
    }
}
