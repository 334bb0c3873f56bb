//! Tests that need root, network namespaces, cgroups or BPF never pass by doing nothing.
//!
//! Such a test calls [`cannot_run`] when it finds the machine lacking. Under
//! `SKIFF_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test`, hence in CI) that fails the test
//! with its reason; elsewhere (a developer's unprivileged `cargo test`) it prints the reason
//! and the test returns early.

/// The variable that turns a privileged test's skip into a failure.
pub const REQUIRE_PRIVILEGED_ENV: &str = "SKIFF_REQUIRE_PRIVILEGED";

/// Whether privileged tests must run (`SKIFF_REQUIRE_PRIVILEGED` set to anything but `0` or
/// the empty string).
pub fn required() -> bool {
    std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `test` cannot run here because of `reason`: panics when privileged tests are required,
/// otherwise says so on stderr. The caller returns right after.
#[track_caller]
pub fn cannot_run(test: &str, reason: &str) {
    if required() {
        panic!("{test} cannot run: {reason} ({REQUIRE_PRIVILEGED_ENV} is set, so this fails)");
    }
    eprintln!("skipping {test}: {reason} (set {REQUIRE_PRIVILEGED_ENV}=1 to make this a failure)");
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For tests that need root: true, after [`cannot_run`], when not root.
#[track_caller]
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    cannot_run(test, "it needs root (network namespaces, cgroups, BPF)");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cannot_run_fails_only_when_required() {
        // One test touches the variable, so no other test of this crate races on it.
        // SAFETY: no other thread of this test binary reads or writes the environment.
        unsafe { std::env::remove_var(REQUIRE_PRIVILEGED_ENV) };
        cannot_run("t", "no reason");
        // SAFETY: as above.
        unsafe { std::env::set_var(REQUIRE_PRIVILEGED_ENV, "1") };
        let failed = std::panic::catch_unwind(|| cannot_run("t", "no bpffs")).unwrap_err();
        let msg = failed.downcast_ref::<String>().unwrap();
        assert!(msg.contains("t cannot run: no bpffs"), "{msg}");
        // SAFETY: as above.
        unsafe { std::env::set_var(REQUIRE_PRIVILEGED_ENV, "0") };
        assert!(!required());
        // SAFETY: as above.
        unsafe { std::env::remove_var(REQUIRE_PRIVILEGED_ENV) };
    }
}
