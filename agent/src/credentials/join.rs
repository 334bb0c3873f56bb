//! `skiff-agent join`: kubeadm's bootstrap-token discovery, then the TLS bootstrap. The node
//! knows the API server's address, a bootstrap token and the hash of the cluster CA's public
//! key. It reads `kube-public/cluster-info` anonymously without trusting the server yet, and
//! trusts what it read only if the `jws-kubeconfig-<token-id>` signature in it verifies with
//! the token and the CA in it has the pinned hash; it then reads it again over TLS verified
//! with that CA, writes its bootstrap kubeconfig and asks for its client certificate. Each
//! failure is one sentence, and nothing is left written by a join that failed.
//!
//! With several API servers (a highly available control plane) discovery tries them in the
//! order given until one passes, and the certificate request balances over all of them as
//! `skiff-agent run --server` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use skiff_common::bootstrap_token::{self, BootstrapToken};

use super::CredentialOptions;

const NAMESPACE: &str = "kube-public";
const NAME: &str = "cluster-info";
const KUBECONFIG_KEY: &str = "kubeconfig";
/// How long one read of cluster-info may take (an unreachable server fails within it).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// What `skiff-agent join` is given.
pub struct JoinOptions {
    /// The API servers, tried in this order for discovery.
    pub servers: Vec<String>,
    pub token: String,
    pub ca_cert_hash: String,
    /// Where the bootstrap kubeconfig goes; the rest as `skiff-agent run` takes it.
    pub credentials: CredentialOptions,
}

/// The cluster as cluster-info describes it, once trusted.
#[derive(Debug, PartialEq)]
pub struct Discovered {
    pub server: String,
    pub ca_pem: String,
}

pub async fn join(opts: &JoinOptions) -> Result<()> {
    let token = bootstrap_token::parse(&opts.token).with_context(|| {
        format!(
            "the token {:?} is not a bootstrap token: it must be six and then sixteen characters of [a-z0-9], separated by a dot",
            opts.token
        )
    })?;
    let discovered = discover_any(&opts.servers, &token, &opts.ca_cert_hash).await?;
    let bootstrap = opts
        .credentials
        .bootstrap_kubeconfig
        .clone()
        .context("no bootstrap kubeconfig path")?;
    write_bootstrap_kubeconfig(&bootstrap, &discovered, &token)?;
    let creds = super::load(&opts.credentials).await;
    if let Err(e) = creds {
        let _ = std::fs::remove_file(&bootstrap);
        return Err(e);
    }
    Ok(())
}

/// [`discover`] on each of `servers` in turn, until one passes. When every one fails, its
/// failure is the error (each one's, for several servers).
pub async fn discover_any(
    servers: &[String],
    token: &BootstrapToken,
    pinned: &str,
) -> Result<Discovered> {
    let mut failures = Vec::new();
    for server in servers {
        match discover(server, token, pinned).await {
            Ok(d) => return Ok(d),
            Err(e) if servers.len() == 1 => return Err(e),
            Err(e) => {
                tracing::warn!(%server, error = %e, "discovery failed; trying the next API server");
                failures.push(format!("{e:#}"));
            }
        }
    }
    match failures.as_slice() {
        [] => bail!("no API server given: pass --server https://ADDRESS:6443"),
        _ => bail!(
            "discovery failed on every API server: {}",
            failures.join("; ")
        ),
    }
}

/// Read and verify cluster-info: the signature for `token`, the CA's pinned hash, and the
/// same content again over TLS verified with that CA.
pub async fn discover(server: &str, token: &BootstrapToken, pinned: &str) -> Result<Discovered> {
    let insecure = read_cluster_info(server, None).await?;
    let content = trusted_content(&insecure, token)?;
    let discovered = parse_discovery_kubeconfig(&content)?;
    let hash = ca_hash(&discovered.ca_pem)?;
    if !hash.eq_ignore_ascii_case(pinned) {
        bail!(
            "the cluster CA found in cluster-info has the public key hash {hash}, not the pinned {pinned}: this is not the cluster you meant to join"
        );
    }
    let verified = read_cluster_info(server, Some(&discovered.ca_pem)).await?;
    let again = verified
        .data
        .as_ref()
        .and_then(|d| d.get(KUBECONFIG_KEY))
        .cloned()
        .unwrap_or_default();
    if again != content {
        bail!("cluster-info changed between the unverified and the verified read: try again");
    }
    Ok(discovered)
}

/// GET cluster-info anonymously; with `ca`, the server must prove it holds that CA's
/// certificate, without, anything answers (what it says is checked afterwards).
async fn read_cluster_info(server: &str, ca: Option<&str>) -> Result<ConfigMap> {
    let url: hyper::http::Uri = server
        .parse()
        .with_context(|| format!("{server:?} is not a URL"))?;
    let mut config = kube::Config::new(url);
    config.connect_timeout = Some(DISCOVERY_TIMEOUT);
    config.read_timeout = Some(DISCOVERY_TIMEOUT);
    match ca {
        Some(pem) => {
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("parsing the CA")?;
            config.root_cert = Some(vec![der.as_ref().to_vec()]);
        }
        None => config.accept_invalid_certs = true,
    }
    let client = kube::Client::try_from(config).context("building the discovery client")?;
    let api: Api<ConfigMap> = Api::namespaced(client, NAMESPACE);
    let read = tokio::time::timeout(DISCOVERY_TIMEOUT, api.get(NAME)).await;
    match read {
        Err(_) => bail!(
            "the API server at {server} did not answer within {}s",
            DISCOVERY_TIMEOUT.as_secs()
        ),
        Ok(Err(kube::Error::Api(s))) => bail!(
            "the API server at {server} refused to show {NAMESPACE}/{NAME}: {} ({})",
            s.message,
            s.code
        ),
        Ok(Err(e)) => bail!("cannot reach the API server at {server}: {e}"),
        Ok(Ok(cm)) => Ok(cm),
    }
}

/// The kubeconfig of cluster-info, if the signature made with `token` verifies.
fn trusted_content(cm: &ConfigMap, token: &BootstrapToken) -> Result<String> {
    let data = cm.data.clone().unwrap_or_default();
    let content = data
        .get(KUBECONFIG_KEY)
        .with_context(|| format!("{NAMESPACE}/{NAME} holds no kubeconfig"))?;
    let Some(signature) = data.get(&bootstrap_token::jws_key(&token.id)) else {
        bail!(
            "token id {:?} is invalid for this cluster or it has expired: create a new one with `skiff-control token create` on the control plane",
            token.id
        );
    };
    if !bootstrap_token::verify_detached_signature(content, signature, token) {
        bail!(
            "the signature of cluster-info does not verify with this token: the API server cannot be trusted"
        );
    }
    Ok(content.clone())
}

/// The server and CA of the discovery kubeconfig.
pub fn parse_discovery_kubeconfig(content: &str) -> Result<Discovered> {
    let kc = kube::config::Kubeconfig::from_yaml(content).context("cluster-info's kubeconfig")?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("cluster-info's kubeconfig names no cluster")?;
    let ca = cluster
        .certificate_authority_data
        .and_then(|d| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(d).ok()
        })
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .context("cluster-info's kubeconfig holds no CA")?;
    Ok(Discovered {
        server: cluster
            .server
            .context("cluster-info's kubeconfig names no server")?,
        ca_pem: ca,
    })
}

fn ca_hash(ca_pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("parsing the CA")?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the CA certificate: {e}"))?;
    Ok(bootstrap_token::ca_cert_hash(
        cert.tbs_certificate.subject_pki.raw,
    ))
}

/// The bootstrap kubeconfig kubeadm writes: the discovered cluster and the token.
fn write_bootstrap_kubeconfig(path: &Path, d: &Discovered, token: &BootstrapToken) -> Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&d.ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: skiff\ncontexts:\n- context:\n    cluster: skiff\n    user: tls-bootstrap-token-user\n  name: tls-bootstrap-token-user@skiff\ncurrent-context: tls-bootstrap-token-user@skiff\npreferences: {{}}\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: {token}\n",
        server = d.server,
        token = token.token(),
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    skiff_common::fs::write_atomic(path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// The default place of the bootstrap kubeconfig under the agent's root dir.
pub fn default_bootstrap_kubeconfig(root_dir: &Path) -> PathBuf {
    root_dir.join("bootstrap.kubeconfig")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cluster_info(content: &str, signatures: &[(&str, String)]) -> ConfigMap {
        let mut data = BTreeMap::from([(KUBECONFIG_KEY.to_string(), content.to_string())]);
        for (k, v) in signatures {
            data.insert(k.to_string(), v.clone());
        }
        ConfigMap {
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_signature_of_this_token_is_trusted() {
        let token = bootstrap_token::parse("abcdef.0123456789abcdef").unwrap();
        let other = bootstrap_token::parse("abcdef.0123456789abcdee").unwrap();
        let good = bootstrap_token::detached_signature("kc", &token);
        let cm = cluster_info("kc", &[("jws-kubeconfig-abcdef", good.clone())]);
        assert_eq!(trusted_content(&cm, &token).unwrap(), "kc");
        let err = trusted_content(&cm, &other).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        let tampered = cluster_info("kc2", &[("jws-kubeconfig-abcdef", good)]);
        assert!(trusted_content(&tampered, &token).is_err());
        let unsigned = cluster_info("kc", &[]);
        let err = trusted_content(&unsigned, &token).unwrap_err().to_string();
        assert!(
            err.contains("invalid for this cluster or it has expired"),
            "{err}"
        );
    }

    #[test]
    fn the_bootstrap_kubeconfig_carries_the_discovered_cluster_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b/bootstrap.kubeconfig");
        let d = Discovered {
            server: "https://10.0.0.1:6443".into(),
            ca_pem: "PEM".into(),
        };
        let token = bootstrap_token::parse("abcdef.0123456789abcdef").unwrap();
        write_bootstrap_kubeconfig(&path, &d, &token).unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cluster = kc.clusters[0].cluster.clone().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(kc.auth_infos[0].name, "tls-bootstrap-token-user");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("token: abcdef.0123456789abcdef"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// An HTTPS server on 127.0.0.1 answering every request with `cluster-info` made for
    /// itself and signed with `token`; its URL and the CA's PEM.
    async fn cluster_info_server(token: &BootstrapToken) -> (String, String) {
        use base64::Engine;
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &*ca)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let ca_data = base64::engine::general_purpose::STANDARD.encode(ca.pem());
        let content = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca_data}\n    server: {url}\n  name: \"\"\n"
        );
        let mut data = serde_json::Map::new();
        data.insert(KUBECONFIG_KEY.into(), content.clone().into());
        data.insert(
            bootstrap_token::jws_key(&token.id),
            bootstrap_token::detached_signature(&content, token).into(),
        );
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "data": data,
        })
        .to_string();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let service = hyper::service::service_fn(move |_req| {
            let body = body.clone();
            async move {
                Ok::<_, std::convert::Infallible>(
                    hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(body))
                        .unwrap(),
                )
            }
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
        tokio::spawn(skiff_common::tls::serve(
            listener,
            acceptor,
            std::future::pending(),
            service,
        ));
        (url, ca.pem())
    }

    #[tokio::test]
    async fn discovery_tries_the_servers_in_the_order_given() {
        let token = bootstrap_token::parse("abcdef.0123456789abcdef").unwrap();
        let (live, ca_pem) = cluster_info_server(&token).await;
        let pinned = ca_hash(&ca_pem).unwrap();
        // Nothing listens on port 1: refused at once.
        let dead = "https://127.0.0.1:1".to_string();
        let found = discover_any(&[dead.clone(), live.clone()], &token, &pinned)
            .await
            .unwrap();
        assert_eq!(found.server, live);
        assert_eq!(found.ca_pem, ca_pem);

        let err = discover_any(
            &[dead.clone(), "https://127.0.0.2:1".into()],
            &token,
            &pinned,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("discovery failed on every API server: cannot reach the API server at https://127.0.0.1:1")
                && err.contains("cannot reach the API server at https://127.0.0.2:1"),
            "{err}"
        );
        // One server: its own sentence, as before.
        let err = discover_any(std::slice::from_ref(&dead), &token, &pinned)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot reach the API server at https://127.0.0.1:1"),
            "{err}"
        );
        // A server that is not the pinned cluster's: refused with the sentence of that.
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = discover_any(std::slice::from_ref(&live), &token, &wrong)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("this is not the cluster you meant to join"),
            "{err}"
        );
    }
}
