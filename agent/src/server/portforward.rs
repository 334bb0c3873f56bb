//! The kubelet's `/portforward/{namespace}/{pod}`: `kubectl port-forward`. The client speaks
//! SPDY/3.1 (`portforward.k8s.io`), either on the upgraded connection itself (kubectl 1.30 and
//! older) or tunnelled in WebSocket binary messages under the subprotocol
//! `SPDY/3.1+portforward.k8s.io` (kubectl 1.31 and newer, which falls back to plain SPDY).
//! Each forwarded connection is a pair of streams, `error` and `data`, sharing a `requestID`
//! and naming the pod's `port`: the agent connects to `localhost:<port>` inside the pod's
//! network namespace and copies both ways, and a failure is written on the error stream as
//! the kubelet words it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::spdy::{self, Stream};
use super::streaming::{PodNetwork, Streams};
use super::ws::{self, Message};
use super::{LogLookupError, text};

/// The SPDY stream protocol of port-forward (`X-Stream-Protocol-Version`).
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels SPDY (kube's PortForwardWebsockets).
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// kubelet's channel WebSocket port-forward (client libraries).
pub const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";

/// How long the second stream of a pair may keep the first waiting (kubelet's default
/// stream creation timeout).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The two ways a port-forward upgrade is spoken.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    Spdy,
    /// SPDY frames in WebSocket binary messages; the client's key.
    Tunnel(String),
    /// kubelet's WebSocket port-forward (`v4.channel.k8s.io`, the ports in the query): a data
    /// and an error channel per port; the client's key.
    Channels(String),
}

fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The transport of an upgrade request, or why it is refused (400).
fn handshake(headers: &HeaderMap) -> Result<Transport, String> {
    let supported = format!(
        "SPDY/3.1 with X-Stream-Protocol-Version {SPDY_PROTOCOL}, or a WebSocket with the subprotocol {TUNNEL_PROTOCOL} or {CHANNEL_PROTOCOL}"
    );
    let upgrade = header_values(headers, "upgrade");
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let versions = header_values(headers, "x-stream-protocol-version");
        // A client naming no version is a legacy one, served the only protocol (as kubelet).
        if versions.is_empty() || versions.iter().any(|v| v == SPDY_PROTOCOL) {
            return Ok(Transport::Spdy);
        }
        return Err(format!(
            "unable to upgrade: unable to negotiate protocol: client supports {versions:?}, server supports [\"{SPDY_PROTOCOL}\"]"
        ));
    }
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = header_values(headers, "sec-websocket-key")
            .into_iter()
            .next()
            .ok_or("unable to upgrade connection: missing Sec-WebSocket-Key")?;
        let offered = header_values(headers, "sec-websocket-protocol");
        if offered.iter().any(|p| p == TUNNEL_PROTOCOL) {
            return Ok(Transport::Tunnel(key));
        }
        if offered.iter().any(|p| p == CHANNEL_PROTOCOL) {
            return Ok(Transport::Channels(key));
        }
        return Err(format!(
            "unable to upgrade connection: none of the offered subprotocols is supported (supported: {supported})"
        ));
    }
    Err(format!(
        "unable to upgrade connection: an upgrade to {supported} is required"
    ))
}

fn switching(t: &Transport) -> Response {
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match t {
        Transport::Spdy => {
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(
                "x-stream-protocol-version",
                HeaderValue::from_static(SPDY_PROTOCOL),
            );
        }
        Transport::Tunnel(key) | Transport::Channels(key) => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&ws::accept_key(key)) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            let protocol = match t {
                Transport::Tunnel(_) => TUNNEL_PROTOCOL,
                _ => CHANNEL_PROTOCOL,
            };
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
    }
    resp
}

/// `GET|POST /portforward/{namespace}/{pod}`.
pub async fn portforward(
    State(streams): State<Streams>,
    UrlPath((namespace, pod)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let transport = match handshake(req.headers()) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let ports = match &transport {
        Transport::Channels(_) => match query_ports(query.as_deref()) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        },
        _ => Vec::new(),
    };
    let network = match streams.containers.pod_network(&namespace, &pod).await {
        Ok(n) => n,
        Err(e) => return LogLookupError::into_response(e),
    };
    tracing::info!(%namespace, %pod, ?transport, "port-forward");
    let resp = switching(&transport);
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let io = match upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return tracing::debug!(error = %e, "port-forward upgrade failed"),
        };
        match transport {
            Transport::Spdy => session(io, network).await,
            Transport::Tunnel(_) => {
                let (near, far) = tokio::io::duplex(1 << 16);
                tokio::select! {
                    () = untunnel(io, far) => {}
                    () = session(near, network) => {}
                }
            }
            Transport::Channels(_) => channel_session(io, ports, network).await,
        }
    });
    resp
}

/// Carry a SPDY byte stream in WebSocket binary messages: the client's messages' payloads in
/// order are written to `spdy`, and what `spdy` reads is sent back as binary messages.
async fn untunnel<S, T>(ws_io: S, spdy: T)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ws_rd, mut ws_wr) = tokio::io::split(ws_io);
    let (mut spdy_rd, mut spdy_wr) = tokio::io::split(spdy);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(4);
    let inbound = async move {
        let mut reader = ws::Reader::new(ws_rd);
        loop {
            match reader.next().await {
                Ok(Message::Binary(b)) => {
                    if spdy_wr.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Ok(Message::Ping(p)) => {
                    let _ = pong_tx.send(ws::encode(ws::OP_PONG, &p)).await;
                }
                Ok(Message::Text(_)) => {}
                Ok(Message::Close) | Err(_) => {
                    let _ = spdy_wr.shutdown().await;
                    return;
                }
            }
        }
    };
    let outbound = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let frame = tokio::select! {
                n = spdy_rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => ws::encode(ws::OP_BINARY, &buf[..n]),
                },
                Some(pong) = pong_rx.recv() => pong,
            };
            if ws_wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = ws_wr.write_all(&ws::close_frame(1000, "")).await;
        let _ = ws_wr.shutdown().await;
    };
    tokio::join!(inbound, outbound);
}

/// The kubelet's `port` query parameters (repeated), for the channel protocol.
fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| format!("invalid query string: {e}"))?;
    let ports = pairs
        .into_iter()
        .filter(|(k, _)| k == "port")
        .map(|(_, v)| match v.parse::<u16>() {
            Ok(0) => Err(format!("port {v:?} must be > 0")),
            Ok(p) => Ok(p),
            Err(e) => Err(format!("unable to parse {v:?} as a port: {e}")),
        })
        .collect::<Result<Vec<u16>, String>>()?;
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

/// kubelet's WebSocket port-forward: for the i-th port, channel 2i carries data and 2i+1
/// errors; each channel's first message from the server is the port (16 bits, little
/// endian). A connection is made to every port at once; the session ends when the client
/// leaves or every connection has ended.
async fn channel_session<S>(io: S, ports: Vec<u16>, network: PodNetwork)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(&ws::close_frame(1000, "")).await;
        let _ = wr.shutdown().await;
    });
    let mut inputs = Vec::new();
    let mut forwards = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = (channel_byte(2 * i), channel_byte(2 * i + 1));
        for ch in [data, error] {
            let _ = tx.send(channel_message(ch, &port.to_le_bytes())).await;
        }
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(32);
        inputs.push(in_tx);
        let (tx, network, port) = (tx.clone(), network.clone(), *port);
        forwards.push(async move {
            match connect(&network, port).await {
                Ok(conn) => channel_copy(conn, in_rx, &tx, data).await,
                Err(e) => {
                    let msg = format!(
                        "error forwarding port {port} to pod {}, uid : {e}",
                        network.uid
                    );
                    let _ = tx.send(channel_message(error, msg.as_bytes())).await;
                }
            }
        });
    }
    let input = channel_input(rd, inputs, tx.clone());
    drop(tx);
    let all = futures::future::join_all(forwards);
    tokio::select! {
        () = input => {}
        _ = all => {}
    }
    // Dropping the senders above lets the writer finish with a close frame.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

/// Channel numbers past 255 cannot be addressed; such ports get none (a client asking for
/// over 127 ports at once is not served them).
fn channel_byte(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

fn channel_message(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    ws::encode(ws::OP_BINARY, &payload)
}

/// The client's messages, each to its port's connection by the data channel it names.
async fn channel_input<R: AsyncRead + Unpin>(
    rd: R,
    inputs: Vec<mpsc::Sender<Vec<u8>>>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let mut reader = ws::Reader::new(rd);
    loop {
        match reader.next().await {
            Ok(Message::Binary(b)) => {
                let Some((&ch, data)) = b.split_first() else {
                    continue;
                };
                let port = usize::from(ch) / 2;
                if ch % 2 == 0
                    && let Some(input) = inputs.get(port)
                {
                    let _ = input.send(data.to_vec()).await;
                }
            }
            Ok(Message::Ping(p)) => {
                let _ = tx.send(ws::encode(ws::OP_PONG, &p)).await;
            }
            Ok(Message::Text(_)) => {}
            Ok(Message::Close) | Err(_) => return,
        }
    }
}

async fn channel_copy(
    conn: TcpStream,
    mut input: mpsc::Receiver<Vec<u8>>,
    tx: &mpsc::Sender<Vec<u8>>,
    channel: u8,
) {
    let (mut rd, mut wr) = conn.into_split();
    let to_pod = async {
        while let Some(chunk) = input.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(channel_message(channel, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = to_pod => {}
        () = from_pod => {}
    }
}

/// One port-forward session: streams paired by request id, each pair forwarded.
async fn session<S>(io: S, network: PodNetwork)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Stream>(8);
    let serve = spdy::serve(io, tx);
    let pair = async {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => accept(&mut pending, s, &network).await,
                    None => return,
                },
                _ = tick.tick() => expire(&mut pending).await,
            }
        }
    };
    tokio::select! {
        () = serve => {}
        () = pair => {}
    }
}

/// The streams of one request, until both arrived.
#[derive(Default)]
struct Pending {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<Instant>,
}

/// Why a new stream is refused, as kubelet words it (the stream is reset).
fn check(s: &Stream) -> Result<(String, &'static str), String> {
    let kind = match s.headers.get("streamtype") {
        Some("error") => "error",
        Some("data") => "data",
        Some(other) => return Err(format!("invalid stream type {other:?}")),
        None => return Err("\"streamType\" header is required".into()),
    };
    let port = s
        .headers
        .get("port")
        .ok_or_else(|| "\"port\" header is required".to_string())?;
    let n: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if n == 0 {
        return Err(format!("port {port:?} must be > 0"));
    }
    // Clients older than kube 1.4 sent no request id: the pair is then the data stream and
    // the error stream opened just before it.
    let request = match s.headers.get("requestid") {
        Some(r) => r.to_string(),
        None if kind == "data" => s.id.saturating_sub(2).to_string(),
        None => s.id.to_string(),
    };
    Ok((request, kind))
}

async fn accept(pending: &mut HashMap<String, Pending>, s: Stream, network: &PodNetwork) {
    let (request, kind) = match check(&s) {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "port-forward: stream refused");
            s.out.reset().await;
            return;
        }
    };
    let entry = pending.entry(request.clone()).or_default();
    entry.since.get_or_insert_with(Instant::now);
    let slot = if kind == "error" {
        &mut entry.error
    } else {
        &mut entry.data
    };
    if slot.is_some() {
        tracing::debug!(%request, kind, "port-forward: duplicate stream");
        s.out.reset().await;
        return;
    }
    *slot = Some(s);
    if entry.error.is_some() && entry.data.is_some() {
        let Some(Pending {
            error: Some(error),
            data: Some(data),
            ..
        }) = pending.remove(&request)
        else {
            return;
        };
        tokio::spawn(forward(error, data, network.clone()));
    }
}

/// Reset the streams of requests whose pair did not complete in time.
async fn expire(pending: &mut HashMap<String, Pending>) {
    let late: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since.is_some_and(|t| t.elapsed() > PAIR_TIMEOUT))
        .map(|(k, _)| k.clone())
        .collect();
    for request in late {
        if let Some(p) = pending.remove(&request) {
            tracing::debug!(%request, "port-forward: timed out waiting for the stream pair");
            for s in [p.error, p.data].into_iter().flatten() {
                s.out.reset().await;
            }
        }
    }
}

/// Connect to the data stream's port in the pod and copy both ways; a failure is written on
/// the error stream. Both streams are closed at the end.
async fn forward(error: Stream, data: Stream, network: PodNetwork) {
    let port: u16 = data
        .headers
        .get("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or_default();
    match connect(&network, port).await {
        Ok(conn) => copy(conn, data).await,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}, uid : {e}",
                network.uid
            );
            tracing::debug!(%msg, "port-forward");
            let _ = error.out.write(msg.as_bytes()).await;
            data.out.close().await;
        }
    }
    error.out.close().await;
}

async fn copy(conn: TcpStream, mut data: Stream) {
    let (mut rd, mut wr) = conn.into_split();
    let out = data.out.clone();
    let to_pod = async {
        while let Some(chunk) = data.incoming.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::select! {
                n = rd.read(&mut buf) => n,
                () = out.ended() => return,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        out.close().await;
    };
    // The pod's side ending ends the forward (as kubelet's copy does); the client's side
    // ending only half-closes the pod connection.
    let to_pod = async {
        to_pod.await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = to_pod => {}
        () = from_pod => {}
    }
}

/// A TCP connection to `localhost:port` in the pod's network namespace: IPv4 first, then
/// IPv6, as the container runtimes do; the error names both attempts.
async fn connect(network: &PodNetwork, port: u16) -> Result<TcpStream, String> {
    let netns = network.netns.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it enters the pod's network namespace and is then discarded, so
    // no thread of the runtime's pools is left in a pod's namespace.
    let spawned = std::thread::Builder::new()
        .name("portforward-dial".into())
        .spawn(move || {
            let _ = tx.send(dial_in(netns, port));
        });
    if let Err(e) = spawned {
        return Err(format!("starting a dialer: {e}"));
    }
    let stream = rx.await.map_err(|_| "the dialer ended".to_string())??;
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    TcpStream::from_std(stream).map_err(|e| format!("socket: {e}"))
}

fn dial_in(netns: Option<PathBuf>, port: u16) -> Result<std::net::TcpStream, String> {
    if let Some(path) = &netns {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("opening network namespace {}: {e}", path.display()))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            format!(
                "failed to enter network namespace {:?}: {}",
                path.display(),
                e.desc()
            )
        })?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let e4 = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let e6 = match std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let ns = netns.map_or_else(|| "host".to_string(), |p| p.display().to_string());
    Err(format!(
        "failed to connect to localhost:{port} inside namespace {ns:?}, IPv4: dial tcp4 {v4}: connect: {} IPv6 dial tcp6 {v6}: connect: {} ",
        go_error(&e4),
        go_error(&e6)
    ))
}

/// An I/O error worded as Go's syscall errors are (`connection refused`).
fn go_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code)
            .desc()
            .to_ascii_lowercase(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::spdy::frame::{self, FLAG_FIN, Frame};
    use crate::server::spdy::headers::{Compressor, Decompressor, Headers};

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
        assert_eq!(
            handshake(&headers(&[
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "portforward.k8s.io")
            ])),
            Ok(Transport::Spdy)
        );
        let t = handshake(&headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "SPDY/3.1+portforward.k8s.io"),
        ]))
        .unwrap();
        let resp = switching(&t);
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "SPDY/3.1+portforward.k8s.io"
        );
        assert_eq!(
            resp.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let channels = handshake(&headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "k"),
            ("Sec-WebSocket-Protocol", "v4.channel.k8s.io"),
        ]))
        .unwrap();
        assert_eq!(channels, Transport::Channels("k".into()));
        assert_eq!(
            switching(&channels).headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "v4.channel.k8s.io"
        );
        let other = handshake(&headers(&[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "k"),
            ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
        ]))
        .unwrap_err();
        assert!(
            other.contains(TUNNEL_PROTOCOL) && other.contains(CHANNEL_PROTOCOL),
            "{other}"
        );
        let version = handshake(&headers(&[
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ]))
        .unwrap_err();
        assert!(
            version.contains("unable to negotiate protocol"),
            "{version}"
        );
        assert!(handshake(&HeaderMap::new()).is_err());
    }

    /// A kubectl-like client on a session served by [`session`] in the host's namespace.
    struct Client {
        io: tokio::io::DuplexStream,
        z: Compressor,
        unz: Decompressor,
    }

    impl Client {
        fn start() -> Client {
            let (a, b) = tokio::io::duplex(1 << 16);
            let network = PodNetwork {
                uid: "u-1".into(),
                netns: None,
            };
            tokio::spawn(session(b, network));
            Client {
                io: a,
                z: Compressor::new(),
                unz: Decompressor::new(),
            }
        }

        async fn send(&mut self, f: Frame) {
            self.io.write_all(&f.encode().unwrap()).await.unwrap();
        }

        async fn open(&mut self, id: u32, kind: &str, port: u16, request: &str) {
            let h = Headers(vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), request.into()),
            ]);
            let block = self.z.compress(&h).unwrap();
            self.send(Frame::SynStream {
                stream_id: id,
                associated: 0,
                priority: 0,
                flags: 0,
                block,
            })
            .await;
        }

        /// Frames until stream `id` has finished; its data.
        async fn read_until_fin(&mut self, id: u32) -> Vec<u8> {
            let mut out = Vec::new();
            loop {
                match frame::read(&mut self.io).await.unwrap().unwrap() {
                    Frame::SynReply { block, .. } => {
                        self.unz.decompress(&block).unwrap();
                    }
                    Frame::Data {
                        stream_id,
                        flags,
                        data,
                    } if stream_id == id => {
                        out.extend(data);
                        if flags & FLAG_FIN != 0 {
                            return out;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    #[tokio::test]
    async fn forwards_a_pair_to_a_listening_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 5];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(b"echo:").await.unwrap();
            s.write_all(&req).await.unwrap();
        });
        let mut c = Client::start();
        c.open(1, "error", port, "0").await;
        c.open(3, "data", port, "0").await;
        c.send(Frame::Data {
            stream_id: 3,
            flags: 0,
            data: b"hello".to_vec(),
        })
        .await;
        assert_eq!(c.read_until_fin(3).await, b"echo:hello");
        assert_eq!(c.read_until_fin(1).await, b"");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_on_the_error_stream() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut c = Client::start();
        c.open(1, "error", port, "7").await;
        c.open(3, "data", port, "7").await;
        let msg = String::from_utf8(c.read_until_fin(1).await).unwrap();
        assert!(
            msg.starts_with(&format!("error forwarding port {port} to pod u-1, uid : "))
                && msg.contains("connection refused"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn the_websocket_tunnel_carries_the_session() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hi from the pod").await.unwrap();
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        let (near, far) = tokio::io::duplex(1 << 16);
        tokio::spawn(untunnel(server, far));
        tokio::spawn(session(
            near,
            PodNetwork {
                uid: "u".into(),
                netns: None,
            },
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut z = Compressor::new();
        for (id, kind) in [(1u32, "error"), (3, "data")] {
            let h = Headers(vec![
                ("streamtype".into(), kind.into()),
                ("port".into(), port.to_string()),
                ("requestid".into(), "0".into()),
            ]);
            let f = Frame::SynStream {
                stream_id: id,
                associated: 0,
                priority: 0,
                flags: 0,
                block: z.compress(&h).unwrap(),
            };
            wr.write_all(&masked(&f.encode().unwrap())).await.unwrap();
        }
        // The server's binary messages, unwrapped, are SPDY frames.
        let mut spdy = Vec::new();
        let mut got = Vec::new();
        while !got.ends_with(b"hi from the pod") {
            let mut head = [0u8; 2];
            rd.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x82);
            let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
            rd.read_exact(&mut payload).await.unwrap();
            spdy.extend(payload);
            let mut r = &spdy[..];
            got.clear();
            while let Ok(Some(f)) = frame::read(&mut r).await {
                if let Frame::Data {
                    stream_id: 3, data, ..
                } = f
                {
                    got.extend(data);
                }
            }
        }
    }

    /// The server's next WebSocket message (unmasked, short): its payload.
    async fn server_message<R: AsyncRead + Unpin>(rd: &mut R) -> Vec<u8> {
        let mut head = [0u8; 2];
        rd.read_exact(&mut head).await.unwrap();
        let len = match head[1] {
            126 => usize::from(rd.read_u16().await.unwrap()),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await.unwrap();
        payload
    }

    #[tokio::test]
    async fn the_channel_protocol_announces_ports_and_carries_data_and_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 5];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(b"echo:").await.unwrap();
            s.write_all(&req).await.unwrap();
        });
        let (client, server) = tokio::io::duplex(1 << 16);
        let network = PodNetwork {
            uid: "u-2".into(),
            netns: None,
        };
        let session = tokio::spawn(channel_session(server, vec![open, closed], network));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut announced = Vec::new();
        for _ in 0..4 {
            announced.push(server_message(&mut rd).await);
        }
        let le = |p: u16| p.to_le_bytes();
        assert_eq!(
            announced,
            [
                [&[0u8][..], &le(open)].concat(),
                [&[1u8][..], &le(open)].concat(),
                [&[2u8][..], &le(closed)].concat(),
                [&[3u8][..], &le(closed)].concat(),
            ]
        );
        let mut hello = vec![0u8];
        hello.extend_from_slice(b"hello");
        wr.write_all(&masked(&hello)).await.unwrap();
        let mut data = Vec::new();
        let mut error = String::new();
        while !(data.ends_with(b"echo:hello") && error.contains("connection refused")) {
            let m = server_message(&mut rd).await;
            match m.split_first() {
                Some((0, rest)) => data.extend_from_slice(rest),
                Some((3, rest)) => error.push_str(&String::from_utf8_lossy(rest)),
                other => panic!("unexpected message {other:?}"),
            }
        }
        assert!(
            error.starts_with(&format!(
                "error forwarding port {closed} to pod u-2, uid : "
            )),
            "{error}"
        );
        // Both forwards are over: the session closes the WebSocket.
        assert_eq!(server_message(&mut rd).await, [0x03, 0xe8]);
        session.await.unwrap();
    }

    #[test]
    fn ports_from_the_query() {
        assert_eq!(query_ports(Some("port=80&port=8080")), Ok(vec![80, 8080]));
        assert!(query_ports(None).unwrap_err().contains("is required"));
        assert!(
            query_ports(Some("port=0"))
                .unwrap_err()
                .contains("must be > 0")
        );
        assert!(
            query_ports(Some("port=x"))
                .unwrap_err()
                .contains("unable to parse")
        );
    }

    /// A client's WebSocket binary message carrying `payload`.
    fn masked(payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![0x82];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }
}
