//! The HTTPS transport of the agent's client: a connection pool that can be replaced, over
//! connections balanced across the API servers ([`super::servers`]).
//!
//! kube-rs builds a client's TLS identity once; the node's certificate is renewed while every
//! watcher and worker holds clones of one [`kube::Client`]. So the client's innermost service
//! is a pool that can be swapped: after a renewal, requests go out over new connections
//! presenting the new certificate (kubelet closes its old connections for the same reason),
//! while a request already in flight, such as a long watch, finishes on its own. The pool is
//! swapped too when the API server in use changes, so no idle connection to a server that
//! stopped answering is reused.

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
use super::servers::{ApiServers, Balanced};

type Pool = HyperClient<Balanced<hyper_rustls::HttpsConnector<HttpConnector>>, Body>;

/// A connection pool per certificate and API server in use.
#[derive(Clone)]
pub struct RotatingTransport {
    /// The cluster (server, CA) and, without a node certificate, the kubeconfig's identity.
    base: kube::Config,
    servers: ApiServers,
    pool: Arc<RwLock<Current>>,
}

struct Current {
    pool: Pool,
    /// The node certificate presented (None: the identity of `base`).
    cert: Option<NodeCert>,
    /// [`ApiServers::epoch`] when the pool was built.
    epoch: u64,
}

impl RotatingTransport {
    pub fn new(
        base: kube::Config,
        cert: Option<&NodeCert>,
        servers: ApiServers,
    ) -> Result<RotatingTransport> {
        let epoch = servers.epoch();
        let pool = pool_for(&base, cert, &servers)?;
        Ok(RotatingTransport {
            base,
            servers,
            pool: Arc::new(RwLock::new(Current {
                pool,
                cert: cert.cloned(),
                epoch,
            })),
        })
    }

    /// Use `cert` for every connection opened from now on.
    pub fn present(&self, cert: &NodeCert) -> Result<()> {
        let pool = pool_for(&self.base, Some(cert), &self.servers)?;
        // A poisoned lock only means a panic elsewhere while holding it; the pool is whole.
        let mut current = self.pool.write().unwrap_or_else(|p| p.into_inner());
        current.pool = pool;
        current.cert = Some(cert.clone());
        Ok(())
    }

    /// A kube client over this transport.
    pub fn client(&self) -> Result<kube::Client> {
        let service = ServiceBuilder::new()
            .layer(self.base.base_uri_layer())
            .option_layer(
                self.base
                    .auth_layer()
                    .context("the kubeconfig's credentials")?,
            )
            .service(self.clone());
        Ok(kube::Client::new(
            service,
            self.base.default_namespace.clone(),
        ))
    }

    pub fn servers(&self) -> &ApiServers {
        &self.servers
    }

    fn current(&self) -> Pool {
        let epoch = self.servers.epoch();
        {
            let current = self.pool.read().unwrap_or_else(|p| p.into_inner());
            if current.epoch == epoch {
                return current.pool.clone();
            }
        }
        let mut current = self.pool.write().unwrap_or_else(|p| p.into_inner());
        if current.epoch != epoch {
            match pool_for(&self.base, current.cert.as_ref(), &self.servers) {
                Ok(pool) => current.pool = pool,
                // Cannot happen with a configuration that built a pool before; keep that one.
                Err(e) => tracing::error!("rebuilding the API connection pool: {e:#}"),
            }
            current.epoch = epoch;
        }
        current.pool.clone()
    }
}

/// A pool trusting the cluster CA of `base`, presenting `cert` (or `base`'s own identity),
/// whose connections go to the API server in use.
fn pool_for(base: &kube::Config, cert: Option<&NodeCert>, servers: &ApiServers) -> Result<Pool> {
    let mut config = base.clone();
    if let Some(cert) = cert {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        config.auth_info.client_certificate = None;
        config.auth_info.client_key = None;
        config.auth_info.client_certificate_data = Some(b64(&cert.cert_pem));
        config.auth_info.client_key_data = Some(b64(&cert.key_pem).into());
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    let https = config
        .rustls_https_connector_with_connector(http)
        .context("building TLS with the node certificate")?;
    let balanced = Balanced {
        inner: https,
        servers: servers.clone(),
    };
    Ok(HyperClient::builder(TokioExecutor::new()).build(balanced))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn boxed(e: hyper_util::client::legacy::Error) -> BoxError {
    Box::new(e)
}

impl tower::Service<hyper::http::Request<Body>> for RotatingTransport {
    type Response = hyper::http::Response<hyper::body::Incoming>;
    // Boxed, as the layers above (kube's token refresh) report theirs.
    type Error = BoxError;
    type Future = futures::future::MapErr<
        hyper_util::client::legacy::ResponseFuture,
        fn(hyper_util::client::legacy::Error) -> BoxError,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client queues internally; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::http::Request<Body>) -> Self::Future {
        use futures::TryFutureExt;
        self.current()
            .request(req)
            .map_err(boxed as fn(hyper_util::client::legacy::Error) -> BoxError)
    }
}
