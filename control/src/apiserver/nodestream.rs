//! `pods/exec`, `pods/attach` and `pods/portforward`: kube-apiserver's connect subresources,
//! forwarded to the agent of the pod's node as an upgrade. The apiserver checks the request
//! (the pod, its node, the container), dials the agent with its kubelet client certificate
//! ([`super::nodeproxy::NodeClient`]) and sends the client's handshake on; when the agent
//! switches protocols, the client gets the agent's 101 and the two upgraded connections are
//! spliced, byte for byte: the stream protocol is spoken end to end, as kube-apiserver's
//! upgrade-aware proxy does.
//!
//! exec and attach are served over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`), exec
//! also over SPDY/3.1 (`v4.channel.k8s.io`, kubectl 1.29 and older); port-forward over SPDY/3.1
//! (`portforward.k8s.io`, kubectl 1.30 and older) and SPDY tunnelled in a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and newer). A SPDY attach is refused with a
//! 400 naming the protocols served, after the same checks, so a wrong container name still
//! reads as such.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::nodeproxy::{NodeClient, agent_error_for, pick_container, pod_node};
use super::registry::Registry;
use super::request::{Query, ResourceRequest};
use super::status::{ApiError, ApiResult};

/// The connect subresources of pods that are streamed to the node.
pub const SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// The port-forward protocols the agent serves.
pub const PORTFORWARD_PROTOCOLS: [&str; 3] = [
    "SPDY/3.1+portforward.k8s.io",
    "portforward.k8s.io",
    "v4.channel.k8s.io",
];

/// The header naming SPDY stream protocols.
const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

/// The WebSocket subprotocols the agent serves, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Whether a request asks to upgrade to a WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    upgrades_to(headers, "websocket")
}

fn upgrades_to(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(protocol))
}

/// kube's `PodExecOptions` / `PodAttachOptions`, from the query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    pub fn from_query(raw: Option<&str>) -> ApiResult<StreamOptions> {
        let query = Query::parse(raw)?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        Ok(StreamOptions {
            container: query.value("container").map(str::to_string),
            command: pairs
                .into_iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v)
                .collect(),
            stdin: query.flag("stdin")?,
            stdout: query.flag("stdout")?,
            stderr: query.flag("stderr")?,
            tty: query.flag("tty")?,
        })
    }

    /// The agent's query, as kube's `streamParams` encodes it (`1` for a set flag).
    pub fn agent_query(&self) -> String {
        let mut q: Vec<(&str, &str)> = Vec::new();
        for (key, on) in [
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("stderr", self.stderr),
            ("tty", self.tty),
        ] {
            if on {
                q.push((key, "1"));
            }
        }
        for c in &self.command {
            q.push(("command", c));
        }
        serde_urlencoded::to_string(&q).unwrap_or_default()
    }
}

/// `GET|POST /api/v1/namespaces/<ns>/pods/<name>/exec|attach`: checks, then the upgrade
/// forwarded to the agent and the connections spliced.
pub async fn connect(
    registry: &Registry,
    nodes: &NodeClient,
    r: &ResourceRequest,
    parts: &mut Parts,
) -> ApiResult<Response> {
    let sub = r.subresource.as_deref().unwrap_or_default();
    let name = r.name.as_deref().unwrap_or_default();
    let ns = r.namespace.as_deref().unwrap_or_default();
    if sub == "portforward" {
        return portforward(registry, nodes, r, parts).await;
    }
    let opts = StreamOptions::from_query(parts.uri.query())?;
    if sub == "exec" && opts.command.is_empty() {
        return Err(ApiError::bad_request("you must specify a command"));
    }
    if !(opts.stdin || opts.stdout || opts.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    let pod = registry.get(r.info, Some(ns), name).await?;
    let container = pick_container(&pod, name, opts.container.as_deref())?;
    let (host, port) = pod_node(registry, &pod, name).await?;
    let spdy_exec = sub == "exec" && upgrades_to(&parts.headers, "SPDY/3.1");
    if !is_websocket(&parts.headers) && !spdy_exec {
        return Err(refusal(&parts.headers));
    }
    let path = format!("/{sub}/{ns}/{name}/{container}?{}", opts.agent_query());
    tracing::debug!(pod = %format!("{ns}/{name}"), %container, %sub, "streaming to the node agent");
    upgrade_through(
        nodes,
        (&host, port),
        &path,
        &format!("pods/{sub}"),
        name,
        parts,
    )
    .await
}

/// `pods/portforward`: the ports are named by the client's streams (SPDY) or query
/// (WebSocket), so only the pod and its node are checked here.
async fn portforward(
    registry: &Registry,
    nodes: &NodeClient,
    r: &ResourceRequest,
    parts: &mut Parts,
) -> ApiResult<Response> {
    let name = r.name.as_deref().unwrap_or_default();
    let ns = r.namespace.as_deref().unwrap_or_default();
    let pod = registry.get(r.info, Some(ns), name).await?;
    let (host, port) = pod_node(registry, &pod, name).await?;
    if !is_websocket(&parts.headers) && !upgrades_to(&parts.headers, "SPDY/3.1") {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let mut path = format!("/portforward/{ns}/{name}");
    let query = kubelet_ports(parts.uri.query())?;
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    tracing::debug!(pod = %format!("{ns}/{name}"), "port-forward to the node agent");
    upgrade_through(nodes, (&host, port), &path, "pods/portforward", name, parts).await
}

/// kube's `PortForwardOptions` (`ports`, repeated) as the kubelet's query (`port`, repeated),
/// which the WebSocket channel protocol reads; SPDY clients name their ports in streams.
fn kubelet_ports(raw: Option<&str>) -> ApiResult<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let mut ports = Vec::new();
    for (_, v) in pairs.into_iter().filter(|(k, _)| k == "ports") {
        match v.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(("port", p.to_string())),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "ports: Invalid value: {v:?}: must be between 1 and 65535, inclusive"
                )));
            }
        }
    }
    Ok(serde_urlencoded::to_string(&ports).unwrap_or_default())
}

/// Send the client's upgrade to the agent at `path`; on its 101, splice the connections.
async fn upgrade_through(
    nodes: &NodeClient,
    (host, port): (&str, u16),
    path: &str,
    kind: &str,
    name: &str,
    parts: &mut Parts,
) -> ApiResult<Response> {
    let client_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::internal("the connection cannot be upgraded"))?;
    let (resp, agent_upgrade) = forward(nodes, host, port, path, &parts.headers)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    let Some(agent_upgrade) = agent_upgrade else {
        let code = resp.status().as_u16();
        let body = read_body(resp.into_body()).await;
        return Err(agent_error_for(kind, code, &body, name));
    };
    tokio::spawn(splice(client_upgrade, agent_upgrade));
    Ok(resp)
}

/// Why a request that is not a WebSocket upgrade is refused: SPDY is named, anything else is
/// kube's `Upgrade request required`.
fn refusal(headers: &HeaderMap) -> ApiError {
    let spdy = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy"));
    if spdy {
        ApiError::bad_request(format!(
            "SPDY/3.1 is not supported by this server for attach: use a client that speaks WebSocket with one of the subprotocols {} (kubectl 1.30 or newer); exec is also served over SPDY/3.1 (v4.channel.k8s.io), port-forward over {}",
            PROTOCOLS.join(", "),
            PORTFORWARD_PROTOCOLS.join(", ")
        ))
    } else {
        ApiError::bad_request("Upgrade request required")
    }
}

/// The client's handshake sent to the agent: its answer (with the agent's upgraded
/// connection when it switched protocols).
async fn forward(
    nodes: &NodeClient,
    host: &str,
    port: u16,
    path: &str,
    client: &HeaderMap,
) -> Result<(Response, Option<hyper::upgrade::Upgraded>), String> {
    let (tls, authority) = nodes.dial(host, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming connection to node agent ended");
        }
    });
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, &authority)
        .header(header::USER_AGENT, "skiff-apiserver")
        .header(header::CONNECTION, "Upgrade");
    for name in [
        header::UPGRADE,
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderName::from_static(STREAM_PROTOCOL),
    ] {
        for v in client.get_all(&name) {
            req = req.header(name.clone(), v.clone());
        }
    }
    let req = req.body(Body::empty()).map_err(|e| e.to_string())?;
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, incoming) = resp.into_parts();
        return Ok((Response::from_parts(parts, Body::new(incoming)), None));
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| format!("upgrading the agent connection: {e}"))?;
    let mut answer = StatusCode::SWITCHING_PROTOCOLS.into_response();
    for name in [
        header::UPGRADE,
        header::CONNECTION,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderName::from_static(STREAM_PROTOCOL),
    ] {
        if let Some(v) = resp.headers().get(&name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    if !answer.headers().contains_key(header::CONNECTION) {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    Ok((answer, Some(upgraded)))
}

/// Copy both ways between the client's and the agent's upgraded connections until both
/// directions are done (or one fails).
async fn splice(client: hyper::upgrade::OnUpgrade, agent: hyper::upgrade::Upgraded) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "the client's upgrade failed");
            return;
        }
    };
    let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
        tracing::debug!(error = %e, "stream between client and node agent ended");
    }
}

/// An agent's error answer, at most 50000 bytes of it (as kube reads).
async fn read_body(body: Body) -> String {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.extend_from_slice(&chunk);
            if out.len() >= 50_000 {
                out.truncate(50_000);
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_to_the_agent_query() {
        let o = StreamOptions::from_query(Some(
            "command=sh&command=-c&command=echo+a%26b&container=app&stdin=true&stdout=true&tty=true",
        ))
        .unwrap();
        assert_eq!(o.container.as_deref(), Some("app"));
        assert_eq!(o.command, ["sh", "-c", "echo a&b"]);
        assert_eq!(
            o.agent_query(),
            "stdin=1&stdout=1&tty=1&command=sh&command=-c&command=echo+a%26b"
        );
        assert_eq!(
            StreamOptions::from_query(Some("stdin=maybe"))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn port_forward_ports_to_the_kubelet_query() {
        assert_eq!(
            kubelet_ports(Some("ports=8080&ports=9090")).unwrap(),
            "port=8080&port=9090"
        );
        assert_eq!(kubelet_ports(None).unwrap(), "");
        assert_eq!(kubelet_ports(Some("ports=0")).unwrap_err().code, 400);
        assert_eq!(kubelet_ports(Some("ports=http")).unwrap_err().code, 400);
    }

    #[test]
    fn refuses_spdy_naming_the_protocols() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        let e = refusal(&h);
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("SPDY/3.1 is not supported")
                && e.message.contains("v5.channel.k8s.io, v4.channel.k8s.io")
                && e.message.contains("SPDY/3.1+portforward.k8s.io"),
            "{}",
            e.message
        );
        assert_eq!(
            refusal(&HeaderMap::new()).message,
            "Upgrade request required"
        );
        assert!(!is_websocket(&h));
        assert!(upgrades_to(&h, "spdy/3.1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket(&h));
    }
}
