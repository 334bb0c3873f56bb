//! The few libc calls xtask needs (signal handling, kill), declared here instead of pulling in
//! a crate. Linux signal numbers.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
const SIGINT: i32 = 2;

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
}

static RECEIVED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_signum: i32) {
    // Only an atomic increment: async-signal-safe.
    RECEIVED.fetch_add(1, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM no longer kill xtask; they are counted (see [`received`]).
pub fn catch_int_and_term() {
    for signum in [SIGINT, SIGTERM] {
        // SAFETY: the handler only touches an atomic.
        unsafe { signal(signum, on_signal) };
    }
}

/// How many SIGINT/SIGTERM arrived since [`catch_int_and_term`].
pub fn received() -> usize {
    RECEIVED.load(Ordering::SeqCst)
}

/// Sends `sig` to process `pid`.
pub fn send_signal(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { kill(pid as i32, sig) } != 0 {
        bail!(
            "kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Whether we run as root (effective uid 0), from /proc/self/status.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}
