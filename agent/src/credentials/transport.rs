//! The HTTPS transport of a client whose certificate changes under it. kube-rs builds a
//! client's TLS identity once; the node's certificate is renewed while every watcher and
//! worker holds clones of one [`kube::Client`]. So the client's innermost service is a
//! connection pool that can be replaced: after a renewal, requests go out over new
//! connections presenting the new certificate (kubelet closes its old connections for the
//! same reason), while a request already in flight, such as a long watch, finishes on its own.

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::Engine;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ConfigExt};
use tower::ServiceBuilder;

use super::certstore::NodeCert;

type Pool = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A connection pool per certificate; [`RotatingTransport::present`] swaps in a new one.
#[derive(Clone)]
pub struct RotatingTransport {
    /// The cluster (server, CA) without a client identity.
    base: kube::Config,
    pool: Arc<RwLock<Pool>>,
}

impl RotatingTransport {
    pub fn new(base: kube::Config, cert: &NodeCert) -> Result<RotatingTransport> {
        let pool = pool_for(&base, cert)?;
        Ok(RotatingTransport {
            base,
            pool: Arc::new(RwLock::new(pool)),
        })
    }

    /// Use `cert` for every connection opened from now on.
    pub fn present(&self, cert: &NodeCert) -> Result<()> {
        let pool = pool_for(&self.base, cert)?;
        // A poisoned lock only means a panic elsewhere while holding it; the pool is whole.
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = pool;
        Ok(())
    }

    /// A kube client over this transport.
    pub fn client(&self) -> kube::Client {
        let service = ServiceBuilder::new()
            .layer(self.base.base_uri_layer())
            .service(self.clone());
        kube::Client::new(service, self.base.default_namespace.clone())
    }

    fn current(&self) -> Pool {
        self.pool.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A pool whose TLS presents `cert`, trusting the cluster CA of `base`.
fn pool_for(base: &kube::Config, cert: &NodeCert) -> Result<Pool> {
    let mut config = base.clone();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    config.auth_info.client_certificate = None;
    config.auth_info.client_key = None;
    config.auth_info.client_certificate_data = Some(b64(&cert.cert_pem));
    config.auth_info.client_key_data = Some(b64(&cert.key_pem).into());
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    let https = config
        .rustls_https_connector_with_connector(http)
        .context("building TLS with the node certificate")?;
    Ok(HyperClient::builder(TokioExecutor::new()).build(https))
}

impl tower::Service<hyper::http::Request<Body>> for RotatingTransport {
    type Response = hyper::http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client queues internally; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::http::Request<Body>) -> Self::Future {
        self.current().request(req)
    }
}
