//! The kubelet's streaming endpoints, `/exec/{ns}/{pod}/{container}` and
//! `/attach/{ns}/{pod}/{container}`: the WebSocket handshake (a channel protocol from the
//! client's `Sec-WebSocket-Protocol`), then a [`exec::session`] or an attach session on the
//! upgraded connection. An exec may also come as SPDY/3.1 (`v4.channel.k8s.io`, kubectl 1.29
//! and older: [`exec_spdy`]); an attach asking for SPDY/3.1 is refused with a message naming
//! the protocols served.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::exec::{self, ExecOptions, Protocol, Target};
use super::exec_spdy;
use super::ws::{self, Message};
use super::{ContainerLogSource, LogLookupError, text};
use crate::logs::{ByteStream, LogOptions};

/// Where the containers' main processes are (the pod manager, in the agent).
#[async_trait::async_trait]
pub trait ContainerProcesses: Send + Sync + 'static {
    /// The pid of the running container `container` of pod `namespace/pod`.
    async fn container_pid(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<i32, LogLookupError>;

    /// The agent binary, which runs commands in containers (`exec-in`).
    fn agent_exe(&self) -> std::path::PathBuf;

    /// Where the ports of the running pod `namespace/pod` are (port-forward).
    async fn pod_network(&self, namespace: &str, pod: &str) -> Result<PodNetwork, LogLookupError>;
}

/// Where a pod's ports are: its uid and its network namespace (none for host network).
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub uid: String,
    pub netns: Option<std::path::PathBuf>,
}

/// What the streaming handlers need.
#[derive(Clone)]
pub struct Streams {
    pub logs: Arc<dyn ContainerLogSource>,
    pub containers: Arc<dyn ContainerProcesses>,
}

/// The handshake's answer: the client's key, and the protocol both sides speak.
struct Handshake {
    key: String,
    protocol: Protocol,
}

/// Why an upgrade is refused (400, kubelet's `unable to upgrade` wording).
fn handshake(headers: &HeaderMap) -> Result<Handshake, String> {
    let get = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let supported = exec::PROTOCOLS.join(", ");
    let upgrade = get("upgrade").join(",");
    if upgrade.to_ascii_lowercase().contains("spdy") {
        return Err(format!(
            "unable to upgrade connection: SPDY/3.1 is not supported; use a WebSocket with one of the subprotocols {supported} (kubectl 1.30 or newer)"
        ));
    }
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(format!(
            "unable to upgrade connection: a WebSocket upgrade with one of the subprotocols {supported} is required"
        ));
    }
    let key = get("sec-websocket-key")
        .first()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .ok_or("unable to upgrade connection: missing Sec-WebSocket-Key")?;
    let protocol = exec::negotiate(get("sec-websocket-protocol")).ok_or_else(|| {
        format!("unable to upgrade connection: none of the offered subprotocols is supported (supported: {supported})")
    })?;
    Ok(Handshake { key, protocol })
}

/// The 101 answer to `h`.
fn switching(h: &Handshake) -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&ws::accept_key(&h.key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(h.protocol.name()),
    );
    resp
}

fn lookup_error(e: LogLookupError) -> Response {
    e.into_response()
}

/// `GET|POST /exec/{namespace}/{pod}/{container}`.
pub async fn exec(
    State(streams): State<Streams>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let opts = match ExecOptions::from_query(query.as_deref()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if opts.command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "no command specified".into());
    }
    if is_spdy(req.headers()) {
        return exec_spdy(streams, (namespace, pod, container), opts, req).await;
    }
    let h = match handshake(req.headers()) {
        Ok(h) => h,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let target = match exec_target(&streams, (&namespace, &pod, &container)).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    tracing::info!(%namespace, %pod, %container, command = ?opts.command, tty = opts.tty, "exec");
    let protocol = h.protocol;
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => exec::session(TokioIo::new(upgraded), protocol, opts, target).await,
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    switching(&h)
}

/// The container process an exec runs beside, or the answer saying why there is none.
async fn exec_target(
    streams: &Streams,
    (namespace, pod, container): (&str, &str, &str),
) -> Result<Target, Response> {
    let pid = streams
        .containers
        .container_pid(namespace, pod, container)
        .await
        .map_err(lookup_error)?;
    Ok(Target {
        agent_exe: streams.containers.agent_exe(),
        pid,
    })
}

fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"))
}

/// An exec over SPDY/3.1 ([`exec_spdy`]): the stream protocol negotiated, the container
/// found, then the session on the upgraded connection.
async fn exec_spdy(
    streams: Streams,
    (namespace, pod, container): (String, String, String),
    opts: ExecOptions,
    req: Request,
) -> Response {
    let offered: Vec<String> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .collect();
    let protocol = match exec_spdy::negotiate(&offered) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::FORBIDDEN, e),
    };
    let target = match exec_target(&streams, (&namespace, &pod, &container)).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    tracing::info!(%namespace, %pod, %container, command = ?opts.command, tty = opts.tty, "exec (spdy)");
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => exec_spdy::session(TokioIo::new(upgraded), opts, target).await,
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(protocol),
    );
    resp
}

/// `GET|POST /attach/{namespace}/{pod}/{container}`: the container's output from now on,
/// until it ends. The runtime gives containers no stdin, so attach streams output only.
pub async fn attach(
    State(streams): State<Streams>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let opts = match ExecOptions::from_query(query.as_deref()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let h = match handshake(req.headers()) {
        Ok(h) => h,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = streams
        .containers
        .container_pid(&namespace, &pod, &container)
        .await
    {
        return lookup_error(e);
    }
    let follow = LogOptions {
        follow: true,
        tail_lines: Some(0),
        ..LogOptions::default()
    };
    let output = match streams
        .logs
        .container_logs(&namespace, &pod, &container, follow)
        .await
    {
        Ok(s) => s,
        Err(e) => return lookup_error(e),
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            attach_session(TokioIo::new(upgraded), opts.stdout, output).await;
        }
    });
    switching(&h)
}

/// Send `output` on stdout (when asked for) until it ends, then a Success status; stop early
/// when the client leaves.
async fn attach_session<S>(io: S, stdout: bool, mut output: ByteStream)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut reader = ws::Reader::new(rd);
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let input = async {
        loop {
            match reader.next().await {
                Ok(Message::Ping(p)) => {
                    let _ = pong_tx.send(ws::encode(ws::OP_PONG, &p)).await;
                }
                Ok(Message::Close) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let forward = async {
        loop {
            let frame = tokio::select! {
                chunk = output.next() => match chunk {
                    Some(Ok(bytes)) if stdout => exec::channel_frame(exec::STDOUT, &bytes),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => break,
                },
                Some(pong) = pong_rx.recv() => pong,
            };
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let status = serde_json::to_vec(&exec::exit_status(&[], 0)).unwrap_or_default();
        let _ = wr
            .write_all(&exec::channel_frame(exec::ERROR, &status))
            .await;
        let _ = wr.write_all(&ws::close_frame(1000, "")).await;
        let _ = wr.shutdown().await;
    };
    tokio::select! {
        () = input => {}
        () = forward => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn handshakes() {
        let ok = handshake(&headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "v4.channel.k8s.io"),
            ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
        ]))
        .unwrap();
        assert_eq!(ok.protocol, Protocol::V5);
        let resp = switching(&ok);
        assert_eq!(resp.status(), 101);
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "v5.channel.k8s.io"
        );
        let spdy = handshake(&headers(&[
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ]))
        .err()
        .unwrap();
        assert!(
            spdy.contains("SPDY/3.1 is not supported") && spdy.contains("v5.channel.k8s.io"),
            "{spdy}"
        );
        let old = handshake(&headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "k"),
            ("Sec-WebSocket-Protocol", "channel.k8s.io"),
        ]))
        .err()
        .unwrap();
        assert!(old.contains("none of the offered subprotocols"), "{old}");
        assert!(handshake(&headers(&[])).is_err());
    }
}
