//! Liveness, readiness and startup probes: httpGet, tcpSocket and exec, as the kubelet runs
//! them (HTTP 200–399 passes, a TCP connect passes, exec exit 0 passes; each bounded by
//! timeoutSeconds).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// Kubernetes' defaults for a probe's timing fields.
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// Ok(()) on success, Err(message) on failure (the message goes into the Unhealthy event).
pub async fn run(
    probe: &Probe,
    container: &Container,
    pod_ip: &str,
    container_pid: i32,
    agent_exe: &Path,
) -> Result<(), String> {
    let t = timing(probe);
    let attempt = async {
        if let Some(h) = &probe.http_get {
            http_get(h, container, pod_ip).await
        } else if let Some(tcp) = &probe.tcp_socket {
            tcp_socket(tcp, container, pod_ip).await
        } else if let Some(exec) = &probe.exec {
            exec_in(exec, container_pid, agent_exe).await
        } else {
            Err("the probe has no handler skiff supports (httpGet, tcpSocket, exec)".into())
        }
    };
    match tokio::time::timeout(t.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {}s", t.timeout.as_secs())),
    }
}

/// An HTTP GET: any status from 200 to 399 passes.
async fn http_get(h: &HTTPGetAction, container: &Container, pod_ip: &str) -> Result<(), String> {
    let code = http_status(h, container, pod_ip, "kube-probe/1.33").await?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// The status code of an HTTP GET as `h` describes it, sent as `user_agent`.
pub(crate) async fn http_status(
    h: &HTTPGetAction,
    container: &Container,
    pod_ip: &str,
    user_agent: &str,
) -> Result<u16, String> {
    let port = resolve_port(&h.port, container)?;
    let host = h
        .host
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    if h.scheme
        .as_deref()
        .unwrap_or("HTTP")
        .eq_ignore_ascii_case("HTTPS")
    {
        return Err("HTTPS probes are not supported by skiff yet".to_string());
    }
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for hdr in h.http_headers.clone().unwrap_or_default() {
        req.push_str(&format!("{}: {}\r\n", hdr.name, hdr.value));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("Get \"http://{host}:{port}{path}\": {e}"))?;
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let r = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
        if r == 0 || buf[..n + r].windows(2).any(|w| w == b"\r\n") {
            n += r;
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response from {host}:{port}"))?;
    Ok(code)
}

/// A TCP connect: accepted passes.
async fn tcp_socket(
    tcp: &TCPSocketAction,
    container: &Container,
    pod_ip: &str,
) -> Result<(), String> {
    let port = resolve_port(&tcp.port, container)?;
    let host = tcp
        .host
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    TcpStream::connect((host.as_str(), port))
        .await
        .map(|_| ())
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
}

/// A command run in the container's namespaces (by `skiff-agent exec-in`): exit 0 passes.
pub(crate) async fn exec_in(
    exec: &ExecAction,
    container_pid: i32,
    agent_exe: &Path,
) -> Result<(), String> {
    let cmd = exec.command.clone().unwrap_or_default();
    if cmd.is_empty() {
        return Err("exec probe without a command".into());
    }
    let out = tokio::process::Command::new(agent_exe)
        .arg("exec-in")
        .arg("--pid")
        .arg(container_pid.to_string())
        .arg("--")
        .args(&cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running the exec probe: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut msg = String::from_utf8_lossy(&out.stdout).to_string();
        msg.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(format!(
            "command {:?} exited with {}: {}",
            cmd.join(" "),
            out.status.code().unwrap_or(-1),
            msg.trim()
        ))
    }
}

fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("port {name:?} is not a named port of container {}", c.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    #[tokio::test]
    async fn http_and_tcp_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let code = if n == 0 { 200 } else { 503 };
                n += 1;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let c = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: port as i32,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let exe = Path::new("/nonexistent");
        assert_eq!(run(&http, &c, "127.0.0.1", 0, exe).await, Ok(()));
        assert!(
            run(&http, &c, "127.0.0.1", 0, exe)
                .await
                .unwrap_err()
                .contains("503")
        );
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(run(&tcp, &c, "127.0.0.1", 0, exe).await, Ok(()));
        let closed = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(run(&closed, &c, "127.0.0.1", 0, exe).await.is_err());
        let unnamed = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            run(&unnamed, &c, "127.0.0.1", 0, exe)
                .await
                .unwrap_err()
                .contains("named port")
        );
    }
}
