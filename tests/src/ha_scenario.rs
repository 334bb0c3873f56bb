//! What the HA scenarios (`ha.rs`, `ha_rolling.rs`) share: the control planes' short leader
//! election, the agents' heartbeat, the web pods' command and a child process that cannot
//! outlive a failed test.

use std::process::Child;
use std::time::Duration;

/// Every agent renews its Lease this often; a gap of two intervals is a missed beat.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// Short leader election, so the surviving control plane takes over within seconds.
pub const CONTROL_ARGS: &[&str] = &[
    "--leader-elect-lease-duration",
    "4",
    "--leader-elect-renew-deadline",
    "3",
    "--leader-elect-retry-period",
    "1",
    "--node-monitor-grace-period",
    "12",
];
/// Serves its hostname on 8080; on SIGTERM keeps serving 3 s (see walkthrough.rs).
pub const WEB: &str = "mkdir -p /var/www; hostname > /var/www/index.html; \
                   trap 'sleep 3; exit 0' TERM; httpd -f -p 8080 -h /var/www & wait";

/// A child process killed when dropped, even if the test fails.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
