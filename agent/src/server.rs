//! The agent's HTTPS server, the kubelet's port 10250: what the apiserver calls for
//! `kubectl logs` (`GET /containerLogs/{namespace}/{pod}/{container}`), `kubectl exec` and
//! `attach` (`/exec/…`, `/attach/…`, WebSocket: [`streaming`]), `kubectl port-forward`
//! (`/portforward/…`, SPDY/3.1 plain or in a WebSocket: [`portforward`]), and `/healthz`.
//!
//! Serving certificate: self-signed, like a kubelet's without `--tls-cert-file` (the agent has
//! no CA key to get one signed), created once in `cert_dir` (`kubelet.crt`, `kubelet.key`) and
//! reused afterwards, so a restart keeps it. The apiserver does not verify it (as
//! kube-apiserver without `--kubelet-certificate-authority`).
//!
//! Authentication: the TLS handshake requires a client certificate (clientAuth) that chains to
//! `client_ca_pem`, the cluster CA, which signs the apiserver's `kube-apiserver-kubelet-client`
//! certificate. A client without one, or with one from another CA, fails the handshake and
//! never gets an HTTP answer (rather than a 401). The certificate's subject is the user.
//!
//! Authorization: every request, `/healthz` included, is put to the API server as a
//! `SubjectAccessReview` on `nodes/<subresource>` of this node, as the kubelet's webhook
//! mode does ([`auth`]): container logs need `nodes/proxy`.

pub mod auth;
pub mod exec;
pub mod exec_spdy;
pub mod portforward;
pub mod spdy;
pub mod streaming;
pub mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use self::auth::{Access, PeerUser};
pub use self::streaming::{ContainerProcesses, Streams};
use crate::logs::{ByteStream, LogOptions};

/// The serving certificate and key in `cert_dir`, named as the kubelet names them.
pub const SERVING_CERT: &str = "kubelet.crt";
pub const SERVING_KEY: &str = "kubelet.key";

/// Why a log request can't be served (maps to kubelet's HTTP answers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogLookupError {
    /// 404: no such pod on this node.
    PodNotFound(String),
    /// 400: unknown container, waiting container, no previous instance.
    BadRequest(String),
    /// 500.
    Internal(String),
}

impl std::fmt::Display for LogLookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogLookupError::PodNotFound(m)
            | LogLookupError::BadRequest(m)
            | LogLookupError::Internal(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LogLookupError {}

impl IntoResponse for LogLookupError {
    fn into_response(self) -> Response {
        let code = match &self {
            LogLookupError::PodNotFound(_) => StatusCode::NOT_FOUND,
            LogLookupError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LogLookupError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(code, self.to_string())
    }
}

/// Where container logs come from (the pod manager, in the agent).
#[async_trait::async_trait]
pub trait ContainerLogSource: Send + Sync + 'static {
    async fn container_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        opts: LogOptions,
    ) -> Result<ByteStream, LogLookupError>;
}

/// TLS settings of the server.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The CA client certificates must chain to (the cluster CA), PEM; may hold several.
    pub client_ca_pem: String,
    /// Where the self-signed serving certificate and key are kept.
    pub cert_dir: PathBuf,
    /// Subject alternative names of a new serving certificate: IPs or DNS names.
    pub sans: Vec<String>,
}

/// Serve until `shutdown` resolves. The serving cert/key are self-signed (rcgen), kept in
/// cert_dir (reuse if present, so restarts keep the same cert). When `shutdown` resolves the
/// listener is closed and open connections (a `-f` log stream, say) are dropped.
/// Each request is authorized by `access` before it is routed.
pub async fn serve(
    listener: TcpListener,
    tls: ServerTls,
    streams: Streams,
    access: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = server_config(&tls)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let app = router(streams, access);
    // The user of a connection's certificate is read once, after the handshake, and handed
    // to each of its requests.
    let make_service = move |certs: skiff_common::tls::PeerCertificates| {
        let peer = PeerUser::from_chain(&certs);
        let app = TowerToHyperService::new(app.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            hyper::service::Service::call(&app, req)
        })
    };
    // Exec, attach and log streams would hold a drain: they end with the agent.
    let drain = std::time::Duration::ZERO;
    skiff_common::tls::serve_with_peer(listener, acceptor, shutdown, drain, make_service).await;
    Ok(())
}

/// The routes, without TLS, behind the authorization of `access`.
pub fn router(streams: Streams, access: Access) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(streaming::exec).post(streaming::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(streaming::attach).post(streaming::attach),
        )
        .route(
            "/portforward/{namespace}/{pod}",
            get(portforward::portforward).post(portforward::portforward),
        )
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found".into()) })
        .with_state(streams)
        .layer(middleware::from_fn_with_state(access, auth::authorize))
}

async fn container_logs(
    State(streams): State<Streams>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let logs = &streams.logs;
    let opts = match parse_log_options(query.as_deref()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    tracing::debug!(%namespace, %pod, %container, ?opts, "container logs");
    match logs
        .container_logs(&namespace, &pod, &container, opts)
        .await
    {
        Ok(stream) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn text(code: StatusCode, message: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// The kubelet's `containerLogs` query as [`LogOptions`]: `follow`, `previous`, `timestamps`
/// (`true`/`false`, also `1`/`0`; empty is false), `tailLines`, `sinceSeconds`, `limitBytes`
/// (integers), `sinceTime` (RFC3339). Other parameters are ignored; a repeated one counts
/// once, first value first. Malformed or out-of-range values are an error message (400),
/// worded after kube's PodLogOptions validation.
pub fn parse_log_options(query: Option<&str>) -> Result<LogOptions, String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| format!("invalid query string: {e}"))?;
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in pairs {
        params.entry(k).or_insert(v);
    }
    let flag = |key: &str| -> Result<bool, String> {
        match params.get(key).map(String::as_str) {
            None | Some("") => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
            Some(v) => Err(format!(
                "invalid value {v:?} for {key}: expected true or false"
            )),
        }
    };
    let int = |key: &str| -> Result<Option<i64>, String> {
        match params.get(key).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| format!("invalid value {v:?} for {key}: expected an integer")),
        }
    };
    let since_time = match params.get("sinceTime").map(String::as_str) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<jiff::Timestamp>().map_err(|e| {
            format!("invalid value {v:?} for sinceTime: expected an RFC3339 time: {e}")
        })?),
    };
    let opts = LogOptions {
        follow: flag("follow")?,
        previous: flag("previous")?,
        timestamps: flag("timestamps")?,
        tail_lines: int("tailLines")?,
        since_seconds: int("sinceSeconds")?,
        since_time,
        limit_bytes: int("limitBytes")?,
    };
    if let Some(n) = opts.tail_lines
        && n < 0
    {
        return Err(format!(
            "tailLines: Invalid value: {n}: must be greater than or equal to 0"
        ));
    }
    if let Some(n) = opts.limit_bytes
        && n < 1
    {
        return Err(format!(
            "limitBytes: Invalid value: {n}: must be greater than 0"
        ));
    }
    if let Some(n) = opts.since_seconds
        && n < 1
    {
        return Err(format!(
            "sinceSeconds: Invalid value: {n}: must be greater than 0"
        ));
    }
    if opts.since_seconds.is_some() && opts.since_time.is_some() {
        return Err("at most one of `sinceTime` or `sinceSeconds` may be specified".into());
    }
    Ok(opts)
}

/// The rustls configuration of the server: the serving certificate from `tls.cert_dir`
/// (created if missing) and client certificates required to chain to `tls.client_ca_pem`.
pub fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes()) {
        roots
            .add(cert.context("parsing the client CA")?)
            .context("adding the client CA")?;
    }
    if roots.is_empty() {
        bail!("the client CA PEM holds no certificate");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("building the client certificate verifier")?;
    let (chain, key) = load_or_create_serving_cert(&tls.cert_dir, &tls.sans)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("using the serving certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The serving certificate and key kept in `dir`, or a new self-signed pair for `sans`
/// written there (key mode 0600) when either file is missing or unreadable.
pub fn load_or_create_serving_cert(
    dir: &Path,
    sans: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let (cert_path, key_path) = (dir.join(SERVING_CERT), dir.join(SERVING_KEY));
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) {
        let chain: Result<Vec<_>, _> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect();
        match (chain, PrivateKeyDer::from_pem_slice(key_pem.as_bytes())) {
            (Ok(chain), Ok(key)) if !chain.is_empty() => return Ok((chain, key)),
            _ => tracing::warn!(
                dir = %dir.display(),
                "the serving certificate or key is unreadable; making a new one"
            ),
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_pem, key_pem) = self_signed(sans)?;
    write_file(&key_path, &key_pem, 0o600)?;
    write_file(&cert_path, &cert_pem, 0o644)?;
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    Ok((chain, key))
}

/// A self-signed serving certificate, as the kubelet makes one: CN `<host>@<unix time>`,
/// serverAuth, valid for a year.
fn self_signed(sans: &[String]) -> Result<(String, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let now = jiff::Timestamp::now();
    let host = sans.first().map(String::as_str).unwrap_or("skiff-agent");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{host}@{}", now.as_second()));
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let start = now - jiff::SignedDuration::from_hours(1);
    let end = now + jiff::SignedDuration::from_hours(24 * 365);
    params.not_before = rcgen::date_time_ymd(year(start), 1, 1);
    params.not_after = rcgen::date_time_ymd(year(end) + 1, 1, 1);
    for san in sans {
        let entry = skiff_common::tls::san_entry(san)?;
        if !params.subject_alt_names.contains(&entry) {
            params.subject_alt_names.push(entry);
        }
    }
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn year(t: jiff::Timestamp) -> i32 {
    i32::from(t.to_zoned(jiff::tz::TimeZone::UTC).year())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    skiff_common::fs::write_atomic(path, contents.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::time::Duration;

    use hyper_util::rt::TokioIo;

    use bytes::Bytes;
    use futures::StreamExt;
    use rcgen::{BasicConstraints, CertifiedIssuer, IsCa, Issuer};
    use rustls::pki_types::ServerName;
    use tokio::sync::mpsc;

    /// What the fake source was asked.
    type Call = (String, String, String, LogOptions);

    /// Answers by container: `app` with two chunks, `live` with what the test sends on its
    /// channel (until the test drops the sender), `waiting` with BadRequest, `broken` with
    /// Internal; pods other than `web` are not found.
    struct FakeSource {
        calls: Mutex<Vec<Call>>,
        live: Mutex<Option<mpsc::Receiver<Bytes>>>,
    }

    #[async_trait::async_trait]
    impl ContainerLogSource for FakeSource {
        async fn container_logs(
            &self,
            namespace: &str,
            pod: &str,
            container: &str,
            opts: LogOptions,
        ) -> Result<ByteStream, LogLookupError> {
            self.calls
                .lock()
                .unwrap()
                .push((namespace.into(), pod.into(), container.into(), opts));
            if pod != "web" {
                return Err(LogLookupError::PodNotFound(format!(
                    "pod \"{namespace}/{pod}\" does not exist"
                )));
            }
            match container {
                "app" => Ok(Box::pin(futures::stream::iter([
                    Ok(Bytes::from("line 1\n")),
                    Ok(Bytes::from("line 2\n")),
                ]))),
                "live" => {
                    let rx = self.live.lock().unwrap().take().expect("one live stream");
                    Ok(Box::pin(receiver_stream(rx).map(Ok::<_, std::io::Error>)))
                }
                "waiting" => Err(LogLookupError::BadRequest(format!(
                    "container \"waiting\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                ))),
                "broken" => Err(LogLookupError::Internal("log file unreadable".into())),
                other => Err(LogLookupError::BadRequest(format!(
                    "container {other} is not valid for pod {pod}"
                ))),
            }
        }
    }

    /// No container runs: the log tests never exec.
    struct NoContainers;

    #[async_trait::async_trait]
    impl ContainerProcesses for NoContainers {
        async fn container_pid(
            &self,
            namespace: &str,
            pod: &str,
            _container: &str,
        ) -> Result<i32, LogLookupError> {
            Err(LogLookupError::PodNotFound(format!(
                "pod \"{namespace}/{pod}\" does not exist"
            )))
        }

        fn agent_exe(&self) -> std::path::PathBuf {
            "/nonexistent".into()
        }

        async fn pod_network(
            &self,
            namespace: &str,
            pod: &str,
        ) -> Result<streaming::PodNetwork, LogLookupError> {
            Err(LogLookupError::PodNotFound(format!(
                "pod \"{namespace}/{pod}\" does not exist"
            )))
        }
    }

    fn receiver_stream(rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> {
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
    }

    /// A CA and a client certificate it signed, as PEM.
    #[derive(Clone)]
    struct Pki {
        ca_pem: String,
        client_cert_pem: String,
        client_key_pem: String,
    }

    /// A new CA and one certificate signed by it for each of `ekus`.
    fn pki(ekus: &[ExtendedKeyUsagePurpose]) -> Vec<Pki> {
        pki_for(ekus, "kube-apiserver-kubelet-client")
    }

    /// Like [`pki`], with `cn` as the certificates' common name (none when empty).
    fn pki_for(ekus: &[ExtendedKeyUsagePurpose], cn: &str) -> Vec<Pki> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let issuer: &Issuer<'_, KeyPair> = &ca;
        ekus.iter()
            .map(|eku| {
                let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
                // rcgen's default subject has a common name of its own.
                client.distinguished_name = DistinguishedName::new();
                if !cn.is_empty() {
                    client.distinguished_name.push(DnType::CommonName, cn);
                }
                client
                    .distinguished_name
                    .push(DnType::OrganizationName, "system:masters");
                client.extended_key_usages = vec![eku.clone()];
                let key = KeyPair::generate().unwrap();
                let cert = client.signed_by(&key, issuer).unwrap();
                Pki {
                    ca_pem: ca.pem(),
                    client_cert_pem: cert.pem(),
                    client_key_pem: key.serialize_pem(),
                }
            })
            .collect()
    }

    fn client_pki() -> Pki {
        pki(&[ExtendedKeyUsagePurpose::ClientAuth]).remove(0)
    }

    /// What the fake authorizer answers.
    #[derive(Clone, Copy)]
    enum Decision {
        Allow,
        Deny,
        Fail,
    }

    /// Answers every request with its decision and records what it was asked.
    struct FakeAuthorizer {
        decision: Decision,
        seen: Mutex<Vec<auth::Attributes>>,
    }

    #[async_trait::async_trait]
    impl auth::NodeAuthorizer for FakeAuthorizer {
        async fn authorize(&self, attrs: &auth::Attributes) -> Result<bool, String> {
            self.seen.lock().unwrap().push(attrs.clone());
            match self.decision {
                Decision::Allow => Ok(true),
                Decision::Deny => Ok(false),
                Decision::Fail => Err("the API server is unreachable".into()),
            }
        }
    }

    struct Running {
        addr: std::net::SocketAddr,
        cert_dir: tempfile::TempDir,
        source: Arc<FakeSource>,
        authorizer: Arc<FakeAuthorizer>,
        live: mpsc::Sender<Bytes>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<()>>,
    }

    async fn start(client_ca_pem: &str) -> Running {
        start_deciding(client_ca_pem, Decision::Allow).await
    }

    async fn start_deciding(client_ca_pem: &str, decision: Decision) -> Running {
        let authorizer = Arc::new(FakeAuthorizer {
            decision,
            seen: Mutex::new(Vec::new()),
        });
        let access = Access {
            node_name: "node-a".into(),
            authorizer: authorizer.clone(),
        };
        let cert_dir = tempfile::tempdir().unwrap();
        let (live, rx) = mpsc::channel(4);
        let source = Arc::new(FakeSource {
            calls: Mutex::new(Vec::new()),
            live: Mutex::new(Some(rx)),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTls {
            client_ca_pem: client_ca_pem.to_string(),
            cert_dir: cert_dir.path().to_path_buf(),
            sans: vec!["127.0.0.1".into(), "node-a".into()],
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let streams = Streams {
            logs: source.clone(),
            containers: Arc::new(NoContainers),
        };
        let task = tokio::spawn(serve(listener, tls, streams, access, async move {
            let _ = stopped.await;
        }));
        // The serving certificate is written before the first accept.
        for _ in 0..200 {
            if cert_dir.path().join(SERVING_CERT).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Running {
            addr,
            cert_dir,
            source,
            authorizer,
            live,
            stop: Some(stop),
            task,
        }
    }

    /// A client trusting the server's (self-signed) certificate, with `identity` if given.
    fn client(server: &Running, identity: Option<&Pki>) -> rustls::ClientConfig {
        let pem = std::fs::read(server.cert_dir.path().join(SERVING_CERT)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&pem).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(p) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(p.client_cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(p.client_key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }

    type BodyChunks = futures::stream::BoxStream<'static, Result<Bytes, axum::Error>>;

    /// GET `path` over a fresh connection: status and the body as a stream of chunks.
    async fn get(
        server: &Running,
        config: rustls::ClientConfig,
        path: &str,
    ) -> Result<(u16, String, BodyChunks), String> {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(header::HOST, "127.0.0.1")
            .body(Body::empty())
            .unwrap();
        let resp = send.send_request(req).await.map_err(|e| format!("{e:?}"))?;
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let code = resp.status().as_u16();
        // The sender lives as long as the body is read.
        let stream = Body::new(resp.into_body())
            .into_data_stream()
            .map(move |chunk| {
                let _keep = &send;
                chunk
            })
            .boxed();
        Ok((code, ct, stream))
    }

    async fn get_text(server: &Running, config: rustls::ClientConfig, path: &str) -> (u16, String) {
        let (code, _, stream) = get(server, config, path).await.unwrap();
        let chunks: Vec<_> = stream.map(|c| c.unwrap()).collect().await;
        (code, String::from_utf8(chunks.concat()).unwrap())
    }

    #[tokio::test]
    async fn serves_logs_to_a_client_of_the_ca() {
        let ca = client_pki();
        let server = start(&ca.ca_pem).await;
        assert_eq!(
            get_text(&server, client(&server, Some(&ca)), "/healthz").await,
            (200, "ok".to_string())
        );
        let (code, ct, stream) = get(
            &server,
            client(&server, Some(&ca)),
            "/containerLogs/default/web/app?follow=true&previous=true&timestamps=true&tailLines=10&limitBytes=100&sinceTime=2025-03-04T05%3A06%3A07Z",
        )
        .await
        .unwrap();
        assert_eq!((code, ct.as_str()), (200, "text/plain"));
        let body: Vec<_> = stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(body.concat(), b"line 1\nline 2\n");
        let calls = server.source.calls.lock().unwrap().clone();
        let (ns, pod, container, opts) = &calls[0];
        assert_eq!(
            (ns.as_str(), pod.as_str(), container.as_str()),
            ("default", "web", "app")
        );
        assert!(opts.follow && opts.previous && opts.timestamps);
        assert_eq!(opts.tail_lines, Some(10));
        assert_eq!(opts.limit_bytes, Some(100));
        assert_eq!(opts.since_seconds, None);
        assert_eq!(
            opts.since_time,
            Some("2025-03-04T05:06:07Z".parse().unwrap())
        );
        let (code, _) = get_text(&server, client(&server, Some(&ca)), "/nope").await;
        assert_eq!(code, 404);
    }

    #[tokio::test]
    async fn requests_are_authorized_as_the_certificates_user_on_nodes_proxy() {
        let ca = client_pki();
        let server = start(&ca.ca_pem).await;
        let path = "/containerLogs/default/web/app";
        assert_eq!(
            get_text(&server, client(&server, Some(&ca)), path).await,
            (200, "line 1\nline 2\n".to_string())
        );
        let seen = server.authorizer.seen.lock().unwrap().clone();
        let want = auth::Attributes {
            user: auth::User {
                name: "kube-apiserver-kubelet-client".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
            },
            verb: "get".into(),
            resource: "nodes".into(),
            subresource: "proxy".into(),
            name: "node-a".into(),
        };
        assert_eq!(seen, vec![want]);
    }

    #[tokio::test]
    async fn denied_requests_get_the_kubelets_403() {
        let ca = client_pki();
        let server = start_deciding(&ca.ca_pem, Decision::Deny).await;
        for path in ["/containerLogs/default/web/app", "/healthz", "/nope"] {
            let (code, ct, body) = get(&server, client(&server, Some(&ca)), path)
                .await
                .unwrap();
            let body: Vec<_> = body.map(|c| c.unwrap()).collect().await;
            assert_eq!(
                (code, ct.as_str(), String::from_utf8(body.concat()).unwrap()),
                (
                    403,
                    "text/plain; charset=utf-8",
                    "Forbidden (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource=proxy)".to_string()
                ),
                "{path}"
            );
        }
        assert!(server.source.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_decision_is_a_500() {
        let ca = client_pki();
        let server = start_deciding(&ca.ca_pem, Decision::Fail).await;
        assert_eq!(
            get_text(&server, client(&server, Some(&ca)), "/containerLogs/default/web/app").await,
            (
                500,
                "Authorization error (user=kube-apiserver-kubelet-client, verb=get, resource=nodes, subresource=proxy)".to_string()
            )
        );
        assert!(server.source.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_certificate_naming_no_user_is_unauthorized() {
        let nameless = pki_for(&[ExtendedKeyUsagePurpose::ClientAuth], "").remove(0);
        let server = start(&nameless.ca_pem).await;
        assert_eq!(
            get_text(&server, client(&server, Some(&nameless)), "/healthz").await,
            (401, "Unauthorized".to_string())
        );
        assert!(server.authorizer.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn streams_chunks_as_they_come() {
        let ca = client_pki();
        let mut server = start(&ca.ca_pem).await;
        let (code, _, mut stream) = get(
            &server,
            client(&server, Some(&ca)),
            "/containerLogs/default/web/live?follow=true",
        )
        .await
        .unwrap();
        assert_eq!(code, 200);
        server.live.send(Bytes::from("first\n")).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a chunk before the stream ends")
            .unwrap()
            .unwrap();
        assert_eq!(&first[..], b"first\n");
        server.live.send(Bytes::from("second\n")).await.unwrap();
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(&second[..], b"second\n");
        // The source ends: so does the body.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut server.live, closed));
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the body ends with the source");
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn errors_and_bad_parameters() {
        let ca = client_pki();
        let server = start(&ca.ca_pem).await;
        let cases = [
            (
                "/containerLogs/default/gone/app",
                404,
                "pod \"default/gone\" does not exist",
            ),
            (
                "/containerLogs/default/web/waiting",
                400,
                "container \"waiting\" in pod \"web\" is waiting to start: ContainerCreating",
            ),
            (
                "/containerLogs/default/web/broken",
                500,
                "log file unreadable",
            ),
            (
                "/containerLogs/default/web/app?tailLines=ten",
                400,
                "invalid value \"ten\" for tailLines: expected an integer",
            ),
            (
                "/containerLogs/default/web/app?follow=maybe",
                400,
                "invalid value \"maybe\" for follow: expected true or false",
            ),
            (
                "/containerLogs/default/web/app?tailLines=-1",
                400,
                "tailLines: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                "/containerLogs/default/web/app?sinceSeconds=5&sinceTime=2025-03-04T05:06:07Z",
                400,
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ),
        ];
        for (path, want_code, want_body) in cases {
            let (code, body) = get_text(&server, client(&server, Some(&ca)), path).await;
            assert_eq!((code, body.as_str()), (want_code, want_body), "{path}");
        }
        let (code, body) = get_text(
            &server,
            client(&server, Some(&ca)),
            "/containerLogs/default/web/app?sinceTime=yesterday",
        )
        .await;
        assert_eq!(code, 400);
        assert!(
            body.starts_with("invalid value \"yesterday\" for sinceTime"),
            "{body}"
        );
        // Bad parameters never reach the source.
        assert_eq!(server.source.calls.lock().unwrap().len(), 3);
    }

    #[test]
    fn parses_log_options() {
        let o = parse_log_options(None).unwrap();
        assert!(!o.follow && o.tail_lines.is_none() && o.since_time.is_none());
        let o = parse_log_options(Some("follow=1&previous=FALSE&sinceSeconds=30&x=y&follow=0"))
            .unwrap();
        assert!(o.follow && !o.previous);
        assert_eq!(o.since_seconds, Some(30));
        assert!(parse_log_options(Some("limitBytes=0")).is_err());
        assert!(parse_log_options(Some("sinceSeconds=0")).is_err());
        assert!(parse_log_options(Some("tailLines=0")).is_ok());
    }

    #[tokio::test]
    async fn certificates_not_meant_for_clients_are_refused() {
        let both = pki(&[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]);
        let server = start(&both[0].ca_pem).await;
        let path = "/containerLogs/default/web/app";
        let err = get(&server, client(&server, Some(&both[0])), path)
            .await
            .err();
        assert!(err.is_some(), "served a serverAuth-only certificate");
        assert_eq!(
            get_text(&server, client(&server, Some(&both[1])), path)
                .await
                .0,
            200
        );
    }

    #[tokio::test]
    async fn clients_without_a_certificate_of_the_ca_are_refused() {
        let ca = client_pki();
        let server = start(&ca.ca_pem).await;
        let path = "/containerLogs/default/web/app";

        let err = get(&server, client(&server, None), path).await.err();
        assert!(err.is_some(), "served a client without a certificate");
        let other = client_pki();
        let err = get(&server, client(&server, Some(&other)), path)
            .await
            .err();
        assert!(err.is_some(), "served a client of another CA");
        assert!(server.source.calls.lock().unwrap().is_empty());
        // And the right one is served.
        assert_eq!(
            get_text(&server, client(&server, Some(&ca)), path).await.0,
            200
        );
    }

    #[tokio::test]
    async fn keeps_its_serving_certificate_and_stops_on_shutdown() {
        let ca = client_pki();
        let mut server = start(&ca.ca_pem).await;
        let dir = server.cert_dir.path();
        let cert = std::fs::read_to_string(dir.join(SERVING_CERT)).unwrap();
        let (chain, _) = load_or_create_serving_cert(dir, &["10.0.0.9".into()]).unwrap();
        assert_eq!(
            chain[0],
            CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(SERVING_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A follow stream is open when the server is told to stop: serve returns anyway.
        let (code, _, _stream) = get(
            &server,
            client(&server, Some(&ca)),
            "/containerLogs/default/web/live?follow=true",
        )
        .await
        .unwrap();
        assert_eq!(code, 200);
        server.stop.take().unwrap().send(()).unwrap();
        let task = std::mem::replace(&mut server.task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    }

    #[test]
    fn a_bad_client_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ServerTls {
            client_ca_pem: "not a pem".into(),
            cert_dir: dir.path().into(),
            sans: vec![],
        };
        assert!(server_config(&tls).is_err());
    }
}
