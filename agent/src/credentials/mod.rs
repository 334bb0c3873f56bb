//! The node's credentials: how the agent gets the client it talks to the API with.
//!
//! With `--kubeconfig` alone, the agent uses that kubeconfig as it is. With
//! `--bootstrap-kubeconfig` it does the kubelet's TLS bootstrap: if the certificate store
//! ([`certstore`], `--cert-dir`) holds no valid client certificate, it makes a key and asks the
//! cluster for a certificate with the bootstrap token ([`request`]; the controller manager
//! approves node client requests from `system:bootstrappers`), stores it, writes `--kubeconfig`
//! pointing at it (kubelet's layout, so `kubectl --kubeconfig` works with the node's identity)
//! and talks to the API as `system:node:<name>` in `system:nodes`. The client's transport
//! ([`transport`]) takes a renewed certificate without a new client; [`rotation`] renews it
//! before it expires. The bootstrap token is never used again once a certificate is stored.

pub mod certstore;
pub mod join;
pub mod request;
pub mod rotation;
pub mod servers;
pub mod transport;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use certstore::{CertStore, NodeCert};
use rotation::Rotator;
use servers::ApiServers;
use transport::RotatingTransport;

/// Where the agent's credentials come from (`skiff-agent run`'s flags).
#[derive(Clone, Debug)]
pub struct CredentialOptions {
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub cert_dir: PathBuf,
    pub node_name: String,
    pub rotate_certificates: bool,
    /// How long a certificate request may wait for approval and signing.
    pub request_timeout: Duration,
    /// API server URLs (`--server`); empty: the kubeconfig's server. Requests go to one that
    /// answers, and the others are learned from the `kubernetes` Endpoints.
    pub servers: Vec<String>,
}

/// The client the agent uses, the cluster CA (PEM) it trusts, the API servers it balances
/// over, and, for a bootstrapped node, the renewal of its certificate (run it with
/// [`NodeCredentials::rotation`]).
pub struct NodeCredentials {
    pub client: Client,
    pub ca_pem: String,
    pub servers: ApiServers,
    renewal: Option<(Rotator, NodeCert)>,
}

impl NodeCredentials {
    /// The certificate renewal loop, if this node renews its own certificate: it returns only
    /// when the certificate expired unrenewed.
    pub fn rotation(&mut self) -> Option<impl std::future::Future<Output = Result<()>> + use<>> {
        let (rotator, cert) = self.renewal.take()?;
        Some(rotator.run(cert))
    }
}

pub async fn load(opts: &CredentialOptions) -> Result<NodeCredentials> {
    let Some(bootstrap) = &opts.bootstrap_kubeconfig else {
        let mut cluster = Cluster::read(&opts.kubeconfig).await?;
        let servers = cluster.use_servers(&opts.servers)?;
        let transport = RotatingTransport::new(cluster.config, None, servers.clone())?;
        return Ok(NodeCredentials {
            client: transport.client()?,
            ca_pem: cluster.ca_pem,
            servers,
            renewal: None,
        });
    };
    let mut cluster = Cluster::read(bootstrap).await?;
    let servers = cluster.use_servers(&opts.servers)?;
    let store = CertStore::new(&opts.cert_dir);
    let cert = match store
        .current()
        .filter(|c| c.valid_at(jiff::Timestamp::now()))
    {
        Some(cert) => cert,
        None => bootstrap_certificate(&cluster, &store, opts).await?,
    };
    write_node_kubeconfig(&opts.kubeconfig, &cluster, &store.current_path())?;
    let mut base = cluster.config.clone();
    base.auth_info = Default::default();
    let transport = RotatingTransport::new(base, Some(&cert), servers.clone())?;
    let renewal = opts.rotate_certificates.then(|| {
        let rotator = Rotator {
            store,
            transport: transport.clone(),
            node_name: opts.node_name.clone(),
            wait: opts.request_timeout,
        };
        (rotator, cert)
    });
    Ok(NodeCredentials {
        client: transport.client()?,
        ca_pem: cluster.ca_pem,
        servers,
        renewal,
    })
}

async fn bootstrap_certificate(
    cluster: &Cluster,
    store: &CertStore,
    opts: &CredentialOptions,
) -> Result<NodeCert> {
    tracing::info!(
        bootstrap_kubeconfig = %opts.bootstrap_kubeconfig.as_deref().unwrap_or(Path::new("")).display(),
        "no valid node client certificate: bootstrapping"
    );
    let client = Client::try_from(cluster.config.clone()).context("the bootstrap client")?;
    let cert = request::request_node_certificate(
        &client,
        &opts.node_name,
        request::Naming::Digested,
        opts.request_timeout,
    )
    .await
    .context("TLS bootstrap")?;
    store.update(&cert)?;
    Ok(cert)
}

/// A kubeconfig's cluster: the loaded config, the server as written and the CA.
struct Cluster {
    config: kube::Config,
    server: String,
    ca_pem: String,
}

impl Cluster {
    async fn read(path: &Path) -> Result<Cluster> {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let ca_pem = cluster_ca(&kc)?;
        let server = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .context("the kubeconfig names no server")?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?;
        Ok(Cluster {
            config,
            server,
            ca_pem,
        })
    }

    /// The API servers to balance over: `urls`, or else the kubeconfig's server. Requests
    /// name the first.
    fn use_servers(&mut self, urls: &[String]) -> Result<ApiServers> {
        let Some(first) = urls.first() else {
            return ApiServers::new(std::slice::from_ref(&self.server));
        };
        self.config.cluster_url = first
            .parse()
            .with_context(|| format!("API server URL {first:?}"))?;
        self.server = first.clone();
        ApiServers::new(urls)
    }
}

/// A client from a kubeconfig file, and the cluster CA (PEM) it trusts.
pub async fn client_from_kubeconfig(path: &Path) -> Result<(Client, String)> {
    let cluster = Cluster::read(path).await?;
    Ok((Client::try_from(cluster.config)?, cluster.ca_pem))
}

/// The PEM of the first cluster's CA (`certificate-authority-data` or the file it names).
fn cluster_ca(kc: &Kubeconfig) -> Result<String> {
    let cluster = kc.clusters.first().and_then(|c| c.cluster.as_ref());
    let from_data = cluster
        .and_then(|c| c.certificate_authority_data.as_ref())
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .map(|b| String::from_utf8_lossy(&b).to_string());
    let from_file = || {
        cluster
            .and_then(|c| c.certificate_authority.as_ref())
            .and_then(|p| std::fs::read_to_string(p).ok())
    };
    from_data
        .or_else(from_file)
        .context("the kubeconfig names no cluster CA (certificate-authority-data)")
}

/// kubelet's kubeconfig after a bootstrap: the cluster of the bootstrap kubeconfig and the
/// user `default-auth` presenting the current certificate of the store.
fn write_node_kubeconfig(path: &Path, cluster: &Cluster, pair: &Path) -> Result<()> {
    let ca = base64::engine::general_purpose::STANDARD.encode(&cluster.ca_pem);
    let pair = pair.display();
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: default-cluster\n\
         contexts:\n\
         - context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n  name: default-context\n\
         current-context: default-context\n\
         preferences: {{}}\n\
         users:\n\
         - name: default-auth\n  user:\n    client-certificate: {pair}\n    client-key: {pair}\n",
        server = cluster.server,
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    skiff_common::fs::write_atomic(path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}
