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

/// Namespace `ns` with a Deployment `web` (2 replicas of [`WEB`], ready when it answers), its
/// Service `web` and a pod `client` to call it from; returns once the client runs.
pub fn deploy_web_and_client(c: &crate::cluster::Cluster, ns: &str) -> anyhow::Result<()> {
    let image = crate::test_image::IMAGE;
    c.kubectl(&["create", "namespace", ns])?;
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: {image}
        command: ["sh", "-c", "{WEB}"]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: {image}
    command: ["sleep", "100000"]
"#
    ))?;
    c.wait_pod_running(ns, "client", Duration::from_secs(60))
}

/// The `client` pod of [`deploy_web_and_client`] calling the `web` Service without pause:
/// one line per request in a file, `ok <pod>` or `FAIL <time> exit <code>: <output>`, and
/// `done` when stopped.
pub struct ServiceLoad {
    child: Background,
    pub path: std::path::PathBuf,
}

impl ServiceLoad {
    /// Start calling `ns`'s `web` Service; the lines go to `file` in the cluster's directory.
    pub fn start(c: &crate::cluster::Cluster, ns: &str, file: &str) -> anyhow::Result<ServiceLoad> {
        let vip = c.kubectl(&[
            "-n",
            ns,
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let url = format!("http://{}/", vip.trim());
        let script = format!(
            "while [ ! -e /tmp/stop-load ]; do \
               if out=$(timeout 3 wget -q -O - {url} 2>&1); then echo \"ok $out\"; \
               else echo \"FAIL $(date +%T) exit $?: $out\"; fi; sleep 0.05; \
             done; echo done"
        );
        let path = c.dir().join(file);
        let child = c
            .pod_command_in(ns, "client", &["sh", "-c", &script])?
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&path)?)
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(ServiceLoad {
            child: Background(child),
            path,
        })
    }

    /// Stop the loop and return every line it wrote.
    pub fn stop(mut self, c: &crate::cluster::Cluster, ns: &str) -> anyhow::Result<String> {
        c.pod_command_in(ns, "client", &["touch", "/tmp/stop-load"])?
            .output()?;
        crate::wait_for("the request loop to stop", Duration::from_secs(10), || {
            Ok(self.child.0.try_wait()?.map(drop))
        })?;
        Ok(std::fs::read_to_string(&self.path)?)
    }
}
