//! Builds `skiff-udp-echo` (src/udp_echo.c), the UDP server and client of the test image, as a
//! static executable: the image holds nothing but busybox, so it cannot load a libc.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/udp_echo.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("skiff-udp-echo");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    // -s: no symbols or paths of this machine, so the binary (and the image) only depends on
    // the source, the compiler and the static libc.
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-s", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("running {cc} for {source}: {e} (install gcc and libc6-dev)"));
    if !status.success() {
        panic!(
            "{cc} -static {source} failed ({status}); it needs a C compiler and the static libc \
             (Debian: gcc, libc6-dev; `cargo xtask setup` installs them)"
        );
    }
}
