//! The HTTPS edge shared by the API server and the node agent's log server: the accept loop
//! (TLS handshake with a timeout, HTTP/1.1 or HTTP/2, connections drained or dropped on
//! shutdown) and subject alternative names for serving certificates.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::SanType;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accept TLS connections on `listener` and serve each with `service` until `shutdown`
/// resolves; then stop accepting and drop open connections (long watches and log streams).
pub async fn serve<S, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: impl Future<Output = ()>,
    service: S,
) where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with_peer(listener, acceptor, shutdown, Duration::ZERO, move |_| {
        service.clone()
    })
    .await
}

/// The certificate chain a client presented in the handshake (leaf first), already verified
/// by the acceptor's client-certificate verifier; empty when it presented none.
pub type PeerCertificates = Vec<CertificateDer<'static>>;

/// Like [`serve`], with the service of each connection made by `make_service` from the
/// client certificate chain of that connection, so a handler can authenticate by it. On
/// `shutdown` the listener closes at once (new connections are refused, so clients turn to
/// another server) and every open connection is told to end gracefully: HTTP/1.1 connections
/// close after the response in flight, HTTP/2 ones get a GOAWAY and finish their open streams.
/// Connections still open after `drain` (long-running responses the handler did not end) are
/// dropped.
pub async fn serve_with_peer<M, S, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    make_service: M,
) where
    M: Fn(PeerCertificates) -> S + Clone + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    let (draining, drain_signal) = tokio::sync::watch::channel(false);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let make_service = make_service.clone();
        let mut drain_signal = drain_signal.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The service is made after the handshake, once the peer's certificates are known.
            let certs = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let service = make_service(certs);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            // The guard wait_for returns is not Send: dropped within.
            let drained = async move {
                let _ = drain_signal.wait_for(|d| *d).await;
            };
            let served = tokio::select! {
                r = connection.as_mut() => r,
                () = drained => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = draining.send(true);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "connections still open after the drain period: dropping them"
        );
    }
    connections.abort_all();
}

/// A certificate's subject alternative name from an IP or a DNS name.
pub fn san_entry(san: &str) -> Result<SanType> {
    Ok(match san.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            san.to_string()
                .try_into()
                .with_context(|| format!("{san:?} is not a DNS name or IP"))?,
        ),
    })
}

/// The user a client certificate names, as kube's x509 authenticator reads it: the subject's
/// common name, and each organization as a group; `None` when it is not a certificate or names
/// no user. (The API server and the agent's HTTPS API both authenticate this way.)
pub fn certificate_user(der: &[u8]) -> Option<(String, Vec<String>)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(String::from)
        .collect();
    Some((name, groups))
}
