//! Requests the apiserver forwards to node agents, as kube-apiserver does to kubelets:
//! `GET pods/<name>/log` becomes `GET https://<node>:<port>/containerLogs/<ns>/<pod>/<container>`
//! on the agent of the pod's node, and the agent's answer is streamed back.
//!
//! The node's address is its `InternalIP` (else its `Hostname`), the port its
//! `status.daemonEndpoints.kubeletEndpoint.Port` (10250 when unset). The apiserver
//! authenticates with its kubelet client certificate ([`super::pki`]) and, like kube-apiserver
//! without `--kubelet-certificate-authority`, does not check the agent's self-signed one.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;

use super::registry::Registry;
use super::request::{Query, ResourceRequest};
use super::resources;
use super::status::{ApiError, ApiResult, FieldCause};

/// The kubelet's port when a node does not say (`--kubelet-port`'s default).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// How much of an agent's error answer becomes the Status message (kube reads 50000 bytes).
const MAX_ERROR_BODY: usize = 50_000;

/// Dials node agents over TLS with the apiserver's kubelet client certificate.
#[derive(Clone)]
pub struct NodeClient {
    tls: tokio_rustls::TlsConnector,
    /// TCP connect (Go's dialer in kube-apiserver: 30 s).
    pub connect_timeout: Duration,
    /// TLS handshake (Go's `TLSHandshakeTimeout`: 10 s).
    pub handshake_timeout: Duration,
}

impl NodeClient {
    pub fn new(config: Arc<rustls::ClientConfig>) -> NodeClient {
        NodeClient {
            tls: tokio_rustls::TlsConnector::from(config),
            connect_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// A TLS connection to the agent at `host:port`, and the `host:port` authority. Errors
    /// are worded like Go's `net/http` client, as kube-apiserver reports them
    /// (`dial tcp 10.0.0.1:10250: connect: connection refused`).
    pub async fn dial(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), String> {
        let authority = match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]:{port}"),
            Err(_) => format!("{host}:{port}"),
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&authority))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("dial tcp {authority}: {}", go_io_error(&e))),
            Err(_) => return Err(format!("dial tcp {authority}: i/o timeout")),
        };
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid node address {host:?}: {e}"))?;
        let tls =
            match tokio::time::timeout(self.handshake_timeout, self.tls.connect(server_name, tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("remote error: tls: {e}")),
                Err(_) => return Err("net/http: TLS handshake timeout".into()),
            };
        Ok((tls, authority))
    }

    /// `GET https://<host>:<port><path_and_query>` over a connection of its own. The response's
    /// body owns the connection: it stays open while the body is read and is closed when the
    /// body ends or is dropped.
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path_and_query: &str,
    ) -> Result<Response, String> {
        let (tls, authority) = self.dial(host, port).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection to node agent ended with an error");
            }
        });
        let guard = ConnectionGuard(conn_task.abort_handle());
        let req = Request::get(path_and_query)
            .header(header::HOST, &authority)
            .header(header::USER_AGENT, "skiff-apiserver")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, incoming) = resp.into_parts();
        // Tie the connection (and its sender) to the body: dropping the body, when the body
        // ends or our client goes away, closes the connection to the agent.
        let stream = Body::new(incoming).into_data_stream().map(move |chunk| {
            let _keep = (&guard, &sender);
            chunk
        });
        Ok(Response::from_parts(parts, Body::from_stream(stream)))
    }
}

/// Aborts the connection task when the response body that owns it is dropped.
struct ConnectionGuard(tokio::task::AbortHandle);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn go_io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        ErrorKind::TimedOut => "i/o timeout".into(),
        ErrorKind::HostUnreachable => "connect: no route to host".into(),
        ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        _ => e.to_string(),
    }
}

/// kube's `PodLogOptions`, from the query of `pods/<name>/log`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodLogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
    pub since_time: Option<jiff::Timestamp>,
    pub tail_lines: Option<i64>,
    pub limit_bytes: Option<i64>,
}

impl PodLogOptions {
    /// Decode the query (a malformed value is a 400, as kube's parameter codec answers).
    /// `insecureSkipTLSVerifyBackend` is accepted and ignored: agents are never verified.
    pub fn from_query(query: &Query) -> ApiResult<PodLogOptions> {
        let since_time = match query.value("sinceTime") {
            None => None,
            Some(v) => Some(v.parse::<jiff::Timestamp>().map_err(|e| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for sinceTime: expected an RFC3339 time: {e}"
                ))
            })?),
        };
        query.flag("insecureSkipTLSVerifyBackend")?;
        Ok(PodLogOptions {
            container: query.value("container").map(str::to_string),
            follow: query.flag("follow")?,
            previous: query.flag("previous")?,
            timestamps: query.flag("timestamps")?,
            since_seconds: query.int("sinceSeconds")?,
            since_time,
            tail_lines: query.int("tailLines")?,
            limit_bytes: query.int("limitBytes")?,
        })
    }

    /// kube's `ValidatePodLogOptions`: a 422 naming `PodLogOptions`.
    pub fn validate(&self, pod: &str) -> ApiResult<()> {
        let mut causes = Vec::new();
        if let Some(n) = self.tail_lines
            && n < 0
        {
            causes.push(FieldCause::invalid(
                "tailLines",
                &Value::from(n),
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = self.limit_bytes
            && n < 1
        {
            causes.push(FieldCause::invalid(
                "limitBytes",
                &Value::from(n),
                "must be greater than 0",
            ));
        }
        if let Some(n) = self.since_seconds {
            if n < 1 {
                causes.push(FieldCause::invalid(
                    "sinceSeconds",
                    &Value::from(n),
                    "must be greater than 0",
                ));
            }
            if self.since_time.is_some() {
                causes.push(FieldCause::forbidden(
                    "",
                    "at most one of `sinceTime` or `sinceSeconds` may be specified",
                ));
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid("", "PodLogOptions", pod, causes))
        }
    }

    /// The agent's query, encoded as kube-apiserver's `LogLocation` does (what kubectl sends
    /// arrives unchanged: `follow=true`, `tailLines=10`, …; the container is in the path).
    pub fn agent_query(&self) -> String {
        let mut q: Vec<(&str, String)> = Vec::new();
        if self.follow {
            q.push(("follow", "true".into()));
        }
        if self.previous {
            q.push(("previous", "true".into()));
        }
        if self.timestamps {
            q.push(("timestamps", "true".into()));
        }
        if let Some(n) = self.since_seconds {
            q.push(("sinceSeconds", n.to_string()));
        }
        if let Some(t) = self.since_time {
            q.push(("sinceTime", t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
        }
        if let Some(n) = self.tail_lines {
            q.push(("tailLines", n.to_string()));
        }
        if let Some(n) = self.limit_bytes {
            q.push(("limitBytes", n.to_string()));
        }
        serde_urlencoded::to_string(&q).unwrap_or_default()
    }
}

/// The container a log request is for, as kube's `validateContainer` picks it: the named one,
/// which must exist (regular, init or ephemeral), or the only container of the pod.
pub fn pick_container(pod: &Value, name: &str, requested: Option<&str>) -> ApiResult<String> {
    let names_of = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names_of("containers");
    // kube's VisitContainers order: init containers, containers, ephemeral containers.
    let all: Vec<String> = names_of("initContainers")
        .into_iter()
        .chain(containers.iter().cloned())
        .chain(names_of("ephemeralContainers"))
        .collect();
    match requested {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if containers.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}"
        ))),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            all.join(" ")
        ))),
    }
}

/// Where a node's agent listens: its InternalIP (else Hostname) and kubelet endpoint port.
pub fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let find = |kind: &str| {
        addresses
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|a| a.get("address").and_then(Value::as_str))
            .filter(|a| !a.is_empty())
    };
    let host = find("InternalIP").or_else(|| find("Hostname"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_string(), port))
}

/// An agent's non-2xx answer about pod `pod`'s log as the `Status` kube-apiserver's
/// `GenericHttpResponseChecker` makes of it: 500 and 400 carry the agent's text; any other
/// code is `NewGenericServerResponse` for `pods/log` (kube's fixed message for the code, or
/// the agent's text for 403 (who may not do what), 406 and 415, then ` ( pods/log <pod>)`),
/// so an agent refusing the API server reads `Forbidden (user=kube-apiserver-kubelet-client,
/// verb=get, resource=nodes, subresource=proxy) ( pods/log <pod>)`, as in kube.
pub fn agent_error(code: u16, body: &str, pod: &str) -> ApiError {
    agent_error_for("pods/log", code, body, pod)
}

/// [`agent_error`] for the subresource `kind` (`pods/exec`, `pods/attach`, …).
pub fn agent_error_for(kind: &str, code: u16, body: &str, pod: &str) -> ApiError {
    let text = body.trim();
    match code {
        500 => return ApiError::internal(format!("Internal error occurred: {text}")),
        400 => return ApiError::bad_request(text.to_string()),
        _ => {}
    }
    let (reason, message) = match code {
        409 => ("Conflict", "the server reported a conflict".to_string()),
        404 => (
            "NotFound",
            "the server could not find the requested resource".to_string(),
        ),
        401 => (
            "Unauthorized",
            "the server has asked for the client to provide credentials".to_string(),
        ),
        403 => ("Forbidden", text.to_string()),
        406 => ("NotAcceptable", text.to_string()),
        415 => ("UnsupportedMediaType", text.to_string()),
        405 => (
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".to_string(),
        ),
        422 => (
            "Invalid",
            "the server rejected our request due to an error in our request".to_string(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_string(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request".to_string(),
        ),
        429 => (
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later"
                .to_string(),
        ),
        c if c >= 500 => (
            "InternalError",
            format!("an error on the server ({text:?}) has prevented the request from succeeding"),
        ),
        _ => (
            "",
            format!(
                "the server responded with the status code {code} but did not return more information"
            ),
        ),
    };
    ApiError {
        code,
        reason,
        message: format!("{message} ( {kind} {pod})"),
        details: Some(serde_json::json!({"kind": kind, "name": pod})),
    }
}

/// The pod's agent: (host, port) of its node.
pub async fn pod_node(registry: &Registry, pod: &Value, name: &str) -> ApiResult<(String, u16)> {
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node_info = resources::lookup("", "v1", "nodes").expect("nodes are served");
    let node = registry.get(node_info, None, node_name).await?;
    node_endpoint(&node).ok_or_else(|| {
        ApiError::internal(format!(
            "node {node_name:?} has no InternalIP or Hostname address"
        ))
    })
}

/// `GET /api/v1/namespaces/<ns>/pods/<name>/log`.
pub async fn pod_log(
    registry: &Registry,
    nodes: &NodeClient,
    r: &ResourceRequest,
    raw_query: Option<&str>,
) -> ApiResult<Response> {
    let name = r.name.as_deref().unwrap_or_default();
    let ns = r.namespace.as_deref().unwrap_or_default();
    let opts = PodLogOptions::from_query(&Query::parse(raw_query)?)?;
    opts.validate(name)?;
    let pod = registry.get(r.info, Some(ns), name).await?;
    let container = pick_container(&pod, name, opts.container.as_deref())?;
    let (host, port) = pod_node(registry, &pod, name).await?;

    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let query = opts.agent_query();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    let url = match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("https://[{host}]:{port}{path}"),
        Err(_) => format!("https://{host}:{port}{path}"),
    };
    let resp = nodes
        .get(&host, port, &path)
        .await
        .map_err(|e| ApiError::internal(format!("Get {url:?}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = read_error_body(resp.into_body()).await;
        return Err(agent_error(status.as_u16(), &body, name));
    }
    tracing::debug!(pod = %format!("{ns}/{name}"), %container, node = %host, follow = opts.follow, "streaming logs from the node agent");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        resp.into_body(),
    )
        .into_response())
}

/// Up to [`MAX_ERROR_BODY`] bytes of an error answer, waiting at most 10 s for them.
async fn read_error_body(body: Body) -> String {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.extend_from_slice(&chunk);
            if out.len() >= MAX_ERROR_BODY {
                out.truncate(MAX_ERROR_BODY);
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(q: &str) -> ApiResult<PodLogOptions> {
        PodLogOptions::from_query(&Query::parse(Some(q)).unwrap())
    }

    #[test]
    fn log_options_round_trip_to_the_agent_query() {
        let o = opts("container=app&follow=true&previous=true&timestamps=true&tailLines=10&limitBytes=500&sinceSeconds=60&insecureSkipTLSVerifyBackend=true").unwrap();
        assert_eq!(o.container.as_deref(), Some("app"));
        assert_eq!(
            o.agent_query(),
            "follow=true&previous=true&timestamps=true&sinceSeconds=60&tailLines=10&limitBytes=500"
        );
        let o = opts("sinceTime=2025-01-02T03:04:05Z&follow=false").unwrap();
        assert_eq!(o.agent_query(), "sinceTime=2025-01-02T03%3A04%3A05Z");
        assert_eq!(opts("").unwrap().agent_query(), "");
    }

    #[test]
    fn malformed_and_invalid_log_options() {
        assert_eq!(opts("tailLines=ten").unwrap_err().code, 400);
        assert_eq!(opts("follow=yes").unwrap_err().code, 400);
        assert_eq!(opts("sinceTime=yesterday").unwrap_err().code, 400);
        let e = opts("tailLines=-1").unwrap().validate("p").unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(e.message.contains("tailLines"), "{}", e.message);
        let e = opts("sinceSeconds=5&sinceTime=2025-01-02T03:04:05Z")
            .unwrap()
            .validate("p")
            .unwrap_err();
        assert!(e.message.contains("at most one of"), "{}", e.message);
        assert_eq!(
            opts("limitBytes=0")
                .unwrap()
                .validate("p")
                .unwrap_err()
                .code,
            422
        );
        opts("tailLines=0&sinceSeconds=1")
            .unwrap()
            .validate("p")
            .unwrap();
    }

    #[test]
    fn picks_containers_like_kube() {
        let one = json!({"spec": {"containers": [{"name": "app"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "app");
        assert_eq!(pick_container(&one, "p", Some("app")).unwrap(), "app");
        let e = pick_container(&one, "p", Some("nope")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container nope is not valid for pod p")
        );
        let many = json!({"spec": {"initContainers": [{"name": "init"}],
            "containers": [{"name": "app"}, {"name": "side"}]}});
        let e = pick_container(&many, "p", None).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [init app side]"
        );
        assert_eq!(pick_container(&many, "p", Some("init")).unwrap(), "init");
        // One regular container and an init container: the regular one is the default.
        let with_init = json!({"spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "app"}]}});
        assert_eq!(pick_container(&with_init, "p", None).unwrap(), "app");
    }

    #[test]
    fn node_endpoints() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10350}}}});
        assert_eq!(node_endpoint(&node), Some(("10.0.0.5".into(), 10350)));
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(node_endpoint(&node), Some(("n1".into(), 10250)));
        assert_eq!(node_endpoint(&json!({"status": {}})), None);
    }

    #[test]
    fn agent_errors_become_statuses() {
        let e = agent_error(
            400,
            "container \"app\" in pod \"p\" is waiting to start\n",
            "p",
        );
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (
                400,
                "BadRequest",
                "container \"app\" in pod \"p\" is waiting to start"
            )
        );
        let e = agent_error(500, "boom", "p");
        assert_eq!(e.message, "Internal error occurred: boom");
        let e = agent_error(
            403,
            "Forbidden (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource=proxy)",
            "web",
        );
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (
                403,
                "Forbidden",
                "Forbidden (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource=proxy) ( pods/log web)"
            )
        );
        assert_eq!(
            e.details,
            Some(serde_json::json!({"kind": "pods/log", "name": "web"}))
        );
        let e = agent_error(404, "pod \"default/web\" does not exist", "web");
        assert_eq!(
            (e.reason, e.message.as_str()),
            (
                "NotFound",
                "the server could not find the requested resource ( pods/log web)"
            )
        );
        let e = agent_error(502, "bad gateway", "web");
        assert_eq!(
            (e.reason, e.message.as_str()),
            (
                "InternalError",
                "an error on the server (\"bad gateway\") has prevented the request from succeeding ( pods/log web)"
            )
        );
        assert_eq!(agent_error(418, "", "web").reason, "");
    }
}
