//! `pods/<name>/log` through the apiserver to a node agent: a fake agent here serves
//! `/containerLogs/...` over TLS with a self-signed certificate and requires a client
//! certificate from the cluster CA, as skiff's agent (and a kubelet) does.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::{AsyncBufReadExt, AsyncReadExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{LogParams, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use common::TestCluster;
use skiff_control::apiserver::pki::Pki;

/// A node agent stand-in: records every request's path and query, and answers by container:
/// `app` (and any other) with one line naming what was asked, or in follow mode with
/// `first`, then `second` once [`FakeAgent::release`] is notified; `forever` with a line
/// every 50 ms until the client goes away; `waiting` with 400; `broken` with 500.
struct FakeAgent {
    port: u16,
    cert: CertificateDer<'static>,
    seen: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
    dropped: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets its flag when dropped (the endless log stream went away).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl FakeAgent {
    async fn start(client_ca_pem: &str) -> FakeAgent {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(client_ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let dropped = Arc::new(AtomicBool::new(false));
        let task = {
            let (seen, release, dropped) = (seen.clone(), release.clone(), dropped.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let (seen, release, dropped) = (seen.clone(), release.clone(), dropped.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        assert!(tls.get_ref().1.peer_certificates().is_some());
                        let service = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let (seen, release, dropped) =
                                    (seen.clone(), release.clone(), dropped.clone());
                                async move {
                                    Ok::<_, std::convert::Infallible>(answer(
                                        req, &seen, release, dropped,
                                    ))
                                }
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            })
        };
        FakeAgent {
            port,
            cert,
            seen,
            release,
            dropped,
            task,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> String {
        self.seen().last().cloned().unwrap_or_default()
    }
}

fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    seen: &Mutex<Vec<String>>,
    release: Arc<tokio::sync::Notify>,
    dropped: Arc<AtomicBool>,
) -> hyper::Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    seen.lock().unwrap().push(format!("{path}?{query}"));
    let text = |code: u16, body: String| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", "text/plain")
            .body(Body::from(body))
            .unwrap()
    };
    if path == "/healthz" {
        return text(200, "ok".into());
    }
    let Some(rest) = path.strip_prefix("/containerLogs/") else {
        return text(404, "404 page not found".into());
    };
    let container = rest.rsplit('/').next().unwrap_or("").to_string();
    let follow = query.split('&').any(|p| p == "follow=true");
    match container.as_str() {
        "waiting" => text(
            400,
            "container \"waiting\" in pod \"multi\" is waiting to start: ContainerCreating\n"
                .into(),
        ),
        "broken" => text(500, "the log file is unreadable\n".into()),
        "forever" => {
            let flag = DropFlag(dropped);
            let stream = futures::stream::unfold((0u32, flag), |(i, flag)| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(format!("tick {i}\n"))),
                    (i + 1, flag),
                ))
            });
            hyper::Response::new(Body::from_stream(stream))
        }
        _ if follow => {
            let stream = futures::stream::unfold(0u32, move |step| {
                let release = release.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from("first\n")), 1)),
                        1 => {
                            release.notified().await;
                            Some((Ok(Bytes::from("second\n")), 2))
                        }
                        _ => None,
                    }
                }
            });
            hyper::Response::new(Body::from_stream(stream))
        }
        _ => text(200, format!("hello from {rest}\nbye\n")),
    }
}

async fn add_node(cluster: &TestCluster, name: &str, port: u16) {
    let nodes: Api<Node> = cluster.cluster_api();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn add_pod(cluster: &TestCluster, name: &str, node: Option<&str>, containers: &[&str]) {
    let pods: Api<Pod> = cluster.api("default");
    let mut spec = json!({
        "containers": containers.iter().map(|c| json!({"name": c, "image": "busybox"})).collect::<Vec<_>>(),
    });
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    if name == "multi" {
        spec["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
    }
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn container(c: &str) -> LogParams {
    LogParams {
        container: Some(c.into()),
        ..LogParams::default()
    }
}

/// A cluster with one node served by a fake agent and pods `solo` (one container, `app`) and
/// `multi` (init container `init`; `app`, `waiting`, `broken`, `forever`) bound to it.
async fn setup() -> (TestCluster, FakeAgent, Api<Pod>) {
    let cluster = TestCluster::start("").await;
    let agent = FakeAgent::start(&cluster.server.as_ref().unwrap().ca_pem).await;
    add_node(&cluster, "node-a", agent.port).await;
    add_pod(&cluster, "solo", Some("node-a"), &["app"]).await;
    add_pod(
        &cluster,
        "multi",
        Some("node-a"),
        &["app", "waiting", "broken", "forever"],
    )
    .await;
    let pods: Api<Pod> = cluster.api("default");
    (cluster, agent, pods)
}

#[tokio::test]
async fn logs_are_proxied_to_the_node_agent() {
    let (cluster, agent, pods) = setup().await;

    // The only container is the default.
    let text = pods.logs("solo", &LogParams::default()).await.unwrap();
    assert_eq!(text, "hello from default/solo/app\nbye\n");
    assert_eq!(agent.last(), "/containerLogs/default/solo/app?");

    // kubectl's options reach the agent as kubectl sent them; the container goes in the path.
    let lp = LogParams {
        container: Some("app".into()),
        previous: true,
        timestamps: true,
        tail_lines: Some(20),
        since_seconds: Some(300),
        limit_bytes: Some(4096),
        ..LogParams::default()
    };
    let text = pods.logs("multi", &lp).await.unwrap();
    assert_eq!(text, "hello from default/multi/app\nbye\n");
    assert_eq!(
        agent.last(),
        "/containerLogs/default/multi/app?previous=true&timestamps=true&sinceSeconds=300&tailLines=20&limitBytes=4096"
    );
    let lp = LogParams {
        container: Some("init".into()),
        since_time: Some("2025-03-04T05:06:07Z".parse().unwrap()),
        ..LogParams::default()
    };
    pods.logs("multi", &lp).await.unwrap();
    assert_eq!(
        agent.last(),
        "/containerLogs/default/multi/init?sinceTime=2025-03-04T05%3A06%3A07Z"
    );

    // The body is text/plain.
    let req = http::Request::get("/api/v1/namespaces/default/pods/solo/log?tailLines=1")
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let resp = cluster.client.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"hello from default/solo/app\nbye\n");
    assert_eq!(agent.last(), "/containerLogs/default/solo/app?tailLines=1");

    // The agent's errors come back as Statuses with its code and words.
    let (code, reason, message) =
        api_error(pods.logs("multi", &container("waiting")).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        message,
        "container \"waiting\" in pod \"multi\" is waiting to start: ContainerCreating"
    );
    let (code, _, message) = api_error(pods.logs("multi", &container("broken")).await.unwrap_err());
    assert_eq!(code, 500);
    assert_eq!(
        message,
        "Internal error occurred: the log file is unreadable"
    );
}

#[tokio::test]
async fn follow_streams_until_the_agent_ends_or_the_client_leaves() {
    let (_cluster, agent, pods) = setup().await;

    let lp = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = pods.log_stream("solo", &lp).await.unwrap().lines();
    // The first chunk arrives while the agent's body is still open...
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("the first chunk is streamed before the body ends")
        .unwrap()
        .unwrap();
    assert_eq!(first, "first");
    assert_eq!(agent.last(), "/containerLogs/default/solo/app?follow=true");
    // ...and the response ends when the agent's body does.
    agent.release.notify_one();
    let rest: Vec<String> =
        tokio::time::timeout(Duration::from_secs(10), lines.map(|l| l.unwrap()).collect())
            .await
            .expect("the stream ends with the agent's body");
    assert_eq!(rest, ["second"]);

    // A client that goes away closes the connection to the agent.
    let lp = LogParams {
        follow: true,
        container: Some("forever".into()),
        ..LogParams::default()
    };
    let mut stream = pods.log_stream("multi", &lp).await.unwrap();
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"tick 0\n");
    assert!(!agent.dropped.load(Ordering::SeqCst));
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.dropped.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's stream was not dropped after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn log_request_errors() {
    let (cluster, agent, pods) = setup().await;

    let (code, reason, message) =
        api_error(pods.logs("multi", &LogParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        message,
        "a container name must be specified for pod multi, choose one of: [init app waiting broken forever]"
    );
    let (code, _, message) = api_error(pods.logs("solo", &container("nope")).await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (400, "container nope is not valid for pod solo")
    );

    add_pod(&cluster, "pending", None, &["app"]).await;
    let (code, _, message) = api_error(
        pods.logs("pending", &LogParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (400, "pod pending does not have a host assigned")
    );

    let (code, reason, message) =
        api_error(pods.logs("ghost", &LogParams::default()).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "pods \"ghost\" not found")
    );

    let lp = LogParams {
        tail_lines: Some(-1),
        ..LogParams::default()
    };
    let (code, reason, _) = api_error(pods.logs("solo", &lp).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // A node whose agent is down: the dial error, as kube words it.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    add_node(&cluster, "node-down", closed).await;
    add_pod(&cluster, "stranded", Some("node-down"), &["app"]).await;
    let (code, _, message) = api_error(
        pods.logs("stranded", &LogParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500);
    assert_eq!(
        message,
        format!(
            "Get \"https://127.0.0.1:{closed}/containerLogs/default/stranded/app\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
        )
    );

    // Nothing that failed before reaching an agent reached it.
    assert!(agent.seen().is_empty(), "{:?}", agent.seen());
}

/// GET /healthz on a fake agent with `config`; the body, or why it failed.
async fn probe(port: u16, config: rustls::ClientConfig) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("unexpected answer {out:?}")),
    }
}

/// Trusts exactly the fake agent's certificate.
fn client_config_for(
    agent: &FakeAgent,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(agent.cert.clone()).unwrap();
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
}

#[tokio::test]
async fn the_agent_only_serves_clients_with_a_cluster_certificate() {
    let cluster = TestCluster::start("").await;
    let agent = FakeAgent::start(&cluster.server.as_ref().unwrap().ca_pem).await;

    // Without a client certificate, the agent refuses.
    let no_cert = client_config_for(&agent).with_no_client_auth();
    let err = probe(agent.port, no_cert).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // With the kubelet client certificate of another control plane (another CA): refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::load_or_create(other_dir.path(), &["localhost".into()]).unwrap();
    let other_config = (*other.kubelet_client_config).clone();
    let err = probe(agent.port, other_config.clone()).await.unwrap_err();
    assert!(!err.is_empty());

    // The same kind of configuration against an agent of its own CA is served: the
    // apiserver's client certificate is a proper clientAuth certificate of its CA.
    let other_agent = FakeAgent::start(&other.ca_pem).await;
    assert_eq!(probe(other_agent.port, other_config).await.unwrap(), "ok");

    // And the apiserver of this cluster gets logs from its agent, so it presents one.
    add_node(&cluster, "node-a", agent.port).await;
    add_pod(&cluster, "solo", Some("node-a"), &["app"]).await;
    let pods: Api<Pod> = cluster.api("default");
    assert_eq!(
        pods.logs("solo", &LogParams::default()).await.unwrap(),
        "hello from default/solo/app\nbye\n"
    );
}
