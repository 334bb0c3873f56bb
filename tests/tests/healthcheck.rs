//! Health checks a load balancer asks of the nodes, on a 2-node cluster per proxy mode:
//! a LoadBalancer Service with `externalTrafficPolicy: Local` gets a `healthCheckNodePort`,
//! and every node answers on it (from the host, as a load balancer on the underlay would ask)
//! with its count of ready local endpoints: 200 on the node with the endpoint, 503 on the
//! other, 503 on the first too once its pod is terminating (kept so by a long grace period),
//! and nothing once the Service is gone. The proxy's own `/healthz` on port 10256 answers 200.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use skiff_tests::cluster::{Cluster, ClusterOptions, skip_unless_root};
use skiff_tests::wait_for;

/// An answer: status code, headers (names in lower case), body.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("JSON body: {:?}", self.body))
    }
}

/// `GET path` on `ip:port` from the host's network namespace.
fn get(ip: &str, port: &str, path: &str) -> Result<Answer> {
    let addr = format!("{ip}:{port}").parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())?;
    let mut all = String::new();
    s.read_to_string(&mut all)?;
    let (head, body) = all.split_once("\r\n\r\n").context("an HTTP answer")?;
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("a status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        code,
        headers,
        body: body.to_string(),
    })
}

/// Until `ip:port` answers `/` with `code` and `local` endpoints; that answer.
fn wait_health(ip: &str, port: &str, code: u16, local: u64) -> Result<Answer> {
    wait_for(
        &format!("{code} with {local} local endpoints at {ip}:{port}"),
        Duration::from_secs(30),
        || {
            let Ok(a) = get(ip, port, "/") else {
                return Ok(None);
            };
            let n = a.json()?["localEndpoints"].as_u64();
            Ok((a.code == code && n == Some(local)).then_some(a))
        },
    )
}

fn service_health_checks(mode: &str) -> Result<()> {
    let c = Cluster::start(ClusterOptions {
        nodes: 2,
        proxy_mode: mode.into(),
        ..Default::default()
    })?;
    c.assert_proxy_mode(mode)?;
    let nodes = c.nodes();
    let (with, without) = (c.node_ip(&nodes[0]), c.node_ip(&nodes[1]));
    // The container ignores SIGTERM (its shell and httpd, which inherits that): deleted, the
    // pod stays terminating for its grace period.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hc-web, labels: {{app: hc}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {}}}
  terminationGracePeriodSeconds: 120
  containers:
  - name: web
    image: skiff.test/busybox:1
    command: ["sh", "-c", "trap '' TERM; mkdir -p /www; hostname > /www/index.html; httpd -p 8080 -h /www; while true; do sleep 1; done"]
---
apiVersion: v1
kind: Service
metadata: {{name: hc}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {{app: hc}}
  ports: [{{port: 80, targetPort: 8080}}]
"#,
        nodes[0]
    ))?;
    c.wait_pod_running("default", "hc-web", Duration::from_secs(60))?;
    let port = c.jsonpath("svc", "hc", ".spec.healthCheckNodePort")?;
    ensure!(
        port.parse::<u16>().is_ok_and(|p| p >= 30000),
        "healthCheckNodePort {port:?}"
    );

    // The node with the endpoint: 200, kube-proxy's headers and body.
    let a = wait_health(&with, &port, 200, 1)?;
    ensure!(
        a.header("content-type") == Some("application/json"),
        "{:?}",
        a.headers
    );
    ensure!(a.header("x-content-type-options") == Some("nosniff"));
    ensure!(a.header("x-load-balancing-endpoint-weight") == Some("1"));
    let v = a.json()?;
    ensure!(
        v["service"]["namespace"] == "default"
            && v["service"]["name"] == "hc"
            && v["serviceProxyHealthy"] == true,
        "{v}"
    );
    // The other node: 503, none.
    let b = wait_health(&without, &port, 503, 0)?;
    ensure!(b.header("x-load-balancing-endpoint-weight") == Some("0"));

    // The proxy's own health, on every node.
    for ip in [&with, &without] {
        let h = get(ip, "10256", "/healthz")?;
        ensure!(h.code == 200, "healthz on {ip}: {} {}", h.code, h.body);
        let v = h.json()?;
        ensure!(
            v["nodeEligible"] == true && v["lastUpdated"].is_string(),
            "{v}"
        );
        ensure!(get(ip, "10256", "/livez")?.code == 200);
    }

    // The pod terminating (and still there): its node has no ready endpoint left.
    c.kubectl(&["delete", "pod", "hc-web", "--wait=false"])?;
    wait_health(&with, &port, 503, 0)?;
    ensure!(
        !c.jsonpath("pod", "hc-web", ".metadata.deletionTimestamp")?
            .is_empty(),
        "the pod should still be terminating"
    );

    // The Service gone: nobody listens on its port.
    c.kubectl(&["delete", "svc", "hc"])?;
    wait_for(
        &format!("{with}:{port} closed"),
        Duration::from_secs(30),
        || Ok(get(&with, &port, "/").is_err().then_some(())),
    )?;
    c.kubectl(&["delete", "pod", "hc-web", "--grace-period=0", "--force"])?;
    Ok(())
}

#[test]
fn health_check_node_port_ebpf() -> Result<()> {
    if skip_unless_root("health_check_node_port_ebpf") {
        return Ok(());
    }
    service_health_checks("ebpf")
}

#[test]
fn health_check_node_port_iptables() -> Result<()> {
    if skip_unless_root("health_check_node_port_iptables") {
        return Ok(());
    }
    service_health_checks("iptables")
}
