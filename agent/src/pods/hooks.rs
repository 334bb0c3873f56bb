//! Container lifecycle hooks (`postStart`, `preStop`) as the kubelet's handler runner runs
//! them: `exec` in the container's namespaces (exit 0 succeeds), `httpGet` (any response
//! succeeds; only a failed request fails, as kube's runner does not judge the status code),
//! and `sleep`. `tcpSocket` is accepted by the API only for compatibility and is refused here
//! as kube refuses it.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};

use super::probe;

/// Which hook runs: its name in events (`PostStartHook`, `PreStopHook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    pub fn of(self, c: &Container) -> Option<&LifecycleHandler> {
        let lifecycle = c.lifecycle.as_ref()?;
        match self {
            Hook::PostStart => lifecycle.post_start.as_ref(),
            Hook::PreStop => lifecycle.pre_stop.as_ref(),
        }
    }

    /// The reason of the Warning event a failure records.
    pub fn failed_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }
}

/// Where the hook runs: the container, its process and the pod's address.
pub struct Target<'a> {
    pub container: &'a Container,
    /// `<name>_<namespace>(<uid>)`, as kube names a pod in hook messages.
    pub pod: &'a str,
    pub pod_ip: &'a str,
    pub container_pid: i32,
    pub agent_exe: &'a Path,
}

/// Run `handler`; Err is the message of the failure event, in kube's words.
pub async fn run(handler: &LifecycleHandler, target: &Target<'_>) -> Result<(), String> {
    let c = &target.container.name;
    let pod = target.pod;
    if let Some(exec) = &handler.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return probe::exec_in(exec, target.container_pid, target.agent_exe)
            .await
            .map_err(|e| {
                format!(
                    "Exec lifecycle hook ({cmd:?}) for Container {c:?} in Pod {pod:?} failed - error: {e}"
                )
            });
    }
    if let Some(h) = &handler.http_get {
        let path = h.path.clone().unwrap_or_default();
        return probe::http_status(h, target.container, target.pod_ip, "kube-lifecycle/1.33")
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "HTTP lifecycle hook ({path}) for Container {c:?} in Pod {pod:?} failed - error: {e}"
                )
            });
    }
    if let Some(sleep) = &handler.sleep {
        let seconds = u64::try_from(sleep.seconds).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        return Ok(());
    }
    Err(format!(
        "Cannot run handler: invalid handler for Container {c:?} in Pod {pod:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, Lifecycle, SleepAction, TCPSocketAction};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn target(c: &Container) -> Target<'_> {
        Target {
            container: c,
            pod: "web_default(u1)",
            pod_ip: "127.0.0.1",
            container_pid: 0,
            agent_exe: Path::new("/nonexistent"),
        }
    }

    #[test]
    fn picks_the_hook() {
        let c = Container {
            name: "c".into(),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(SleepAction { seconds: 1 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(Hook::PreStop.of(&c).is_some());
        assert!(Hook::PostStart.of(&c).is_none());
        assert_eq!(Hook::PreStop.failed_reason(), "FailedPreStopHook");
    }

    /// Any HTTP status is a success (kube's runner only fails on a failed request).
    #[tokio::test]
    async fn http_hooks_accept_any_status_and_fail_on_no_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let handler = |port: i32| LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some("/quit".into()),
                port: IntOrString::Int(port),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        run(&handler(i32::from(port)), &target(&c)).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /quit HTTP/1.1"), "{request}");
        assert!(
            request.contains("User-Agent: kube-lifecycle/1.33"),
            "{request}"
        );
        // Nothing listens on port 1.
        let err = run(&handler(1), &target(&c)).await.unwrap_err();
        assert!(
            err.starts_with(r#"HTTP lifecycle hook (/quit) for Container "c" in Pod "web_default(u1)" failed - error: "#),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_hooks_sleep_and_tcp_hooks_are_refused() {
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let sleep = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 5 }),
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        run(&sleep, &target(&c)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let tcp = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = run(&tcp, &target(&c)).await.unwrap_err();
        assert!(err.contains("invalid handler"), "{err}");
    }
}
