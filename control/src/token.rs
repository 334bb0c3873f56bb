//! `skiff-control token create|list|delete`: bootstrap tokens for joining nodes, as
//! `kubeadm token` manages them: Secrets `bootstrap-token-<id>` in kube-system written
//! through the API with an administrator's kubeconfig. `create --print-join-command` prints
//! the command a new node runs: the API server, the token and the hash of the cluster CA's
//! public key (kubeadm's `--discovery-token-ca-cert-hash`). With several API servers (a highly
//! available control plane, all in the `kubernetes` Endpoints) it names every one, the
//! kubeconfig's first: the node tries them in order and balances over all of them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Endpoints, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use skiff_common::bootstrap_token::{self, BootstrapToken};

/// What the token is for, and for how long.
pub struct TokenRequest<'a> {
    /// `None`: it never expires (kubeadm's `--ttl 0`).
    pub ttl: Option<Duration>,
    pub description: &'a str,
    pub groups: &'a [String],
}

/// A client for `kubeconfig`, and its first cluster's server and CA (PEM).
pub async fn admin_client(kubeconfig: &Path) -> Result<(kube::Client, String, String)> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig names no cluster")?;
    let server = cluster.server.clone().unwrap_or_default();
    let ca = cluster
        .certificate_authority_data
        .as_deref()
        .and_then(|d| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(d).ok()
        })
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    Ok((kube::Client::try_from(config)?, server, ca))
}

fn secrets(client: &kube::Client) -> Api<Secret> {
    Api::namespaced(client.clone(), bootstrap_token::NAMESPACE)
}

/// Create a new token's Secret.
pub async fn create(client: &kube::Client, request: &TokenRequest<'_>) -> Result<BootstrapToken> {
    let token = BootstrapToken::generate();
    let groups: Vec<&str> = request.groups.iter().map(String::as_str).collect();
    let secret = token.secret(
        request.ttl,
        jiff::Timestamp::now(),
        request.description,
        &groups,
    );
    secrets(client)
        .create(&PostParams::default(), &secret)
        .await
        .context("creating the bootstrap token's Secret")?;
    Ok(token)
}

/// `skiff-agent join --server … --token … --ca-cert-hash sha256:…`, with the `servers`
/// comma-separated.
pub fn join_command(servers: &[String], ca_pem: &str, token: &BootstrapToken) -> Result<String> {
    Ok(format!(
        "skiff-agent join --server {} --token {} --ca-cert-hash {}",
        servers.join(","),
        token.token(),
        ca_public_key_hash(ca_pem)?
    ))
}

/// The API servers a join command names: when `server` (the admin kubeconfig's) is one of the
/// API servers of the `kubernetes` Endpoints, every one of them, `server` first; otherwise
/// (a load balancer or a name in front of them, or Endpoints that cannot be read) `server`
/// alone.
pub async fn join_servers(client: &kube::Client, server: &str) -> Vec<String> {
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await;
    match endpoints {
        Ok(e) => servers_with(server, &endpoint_urls(&e)),
        Err(_) => vec![server.to_string()],
    }
}

/// `https://ADDRESS:PORT` of every address and `https` port of the `kubernetes` Endpoints.
fn endpoint_urls(e: &Endpoints) -> Vec<String> {
    let mut urls = Vec::new();
    for subset in e.subsets.iter().flatten() {
        let ports = subset.ports.iter().flatten();
        let https: Vec<i32> = ports
            .filter(|p| p.name.as_deref().is_none_or(|n| n == "https"))
            .map(|p| p.port)
            .collect();
        for a in subset.addresses.iter().flatten() {
            for port in &https {
                let host = match a.ip.contains(':') {
                    true => format!("[{}]", a.ip),
                    false => a.ip.clone(),
                };
                urls.push(format!("https://{host}:{port}"));
            }
        }
    }
    urls
}

fn servers_with(server: &str, published: &[String]) -> Vec<String> {
    let server = server.trim_end_matches('/');
    if !published.iter().any(|u| u == server) {
        return vec![server.to_string()];
    }
    std::iter::once(server.to_string())
        .chain(published.iter().filter(|u| *u != server).cloned())
        .collect()
}

/// kubeadm's CA hash: SHA-256 of the certificate's SubjectPublicKeyInfo.
pub fn ca_public_key_hash(ca_pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("parsing the CA")?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the CA certificate: {e}"))?;
    Ok(bootstrap_token::ca_cert_hash(
        cert.tbs_certificate.subject_pki.raw,
    ))
}

/// `kubeadm token list`'s table: TOKEN TTL EXPIRES USAGES DESCRIPTION EXTRA GROUPS.
pub async fn list(client: &kube::Client) -> Result<String> {
    let lp = ListParams::default().fields(&format!("type={}", bootstrap_token::SECRET_TYPE));
    let items = secrets(client).list(&lp).await?.items;
    let now = jiff::Timestamp::now();
    let mut out = String::from(
        "TOKEN                     TTL         EXPIRES                USAGES                   DESCRIPTION                                                EXTRA GROUPS\n",
    );
    for s in &items {
        let field = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).to_string())
                .unwrap_or_default()
        };
        let expires = field("expiration");
        let ttl = match expires.parse::<jiff::Timestamp>() {
            Ok(at) if at > now => format!("{}h", at.duration_since(now).as_secs() / 3600),
            Ok(_) => "<invalid>".to_string(),
            Err(_) => "<forever>".to_string(),
        };
        let usages: Vec<&str> = ["authentication", "signing"]
            .into_iter()
            .filter(|u| field(&format!("usage-bootstrap-{u}")) == "true")
            .collect();
        out.push_str(&format!(
            "{:<25} {:<11} {:<22} {:<24} {:<58} {}\n",
            format!("{}.{}", field("token-id"), field("token-secret")),
            ttl,
            if expires.is_empty() {
                "<never>"
            } else {
                &expires
            },
            usages.join(","),
            or_none(&field("description")),
            or_none(&field("auth-extra-groups")),
        ));
    }
    Ok(out)
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "<none>" } else { s }
}

/// Delete a token given by id or whole; kubeadm's message.
pub async fn delete(client: &kube::Client, token: &str) -> Result<String> {
    let id = match bootstrap_token::parse(token) {
        Some(t) => t.id,
        None if token.len() == 6
            && token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            token.to_string()
        }
        None => bail!(
            "given token didn't match pattern \"^([a-z0-9]{{6}})$\" or \"^([a-z0-9]{{6}})\\.([a-z0-9]{{16}})$\""
        ),
    };
    let name = format!("{}{id}", bootstrap_token::SECRET_PREFIX);
    secrets(client)
        .delete(&name, &DeleteParams::default())
        .await
        .with_context(|| format!("failed to delete bootstrap token {id:?}"))?;
    Ok(format!("bootstrap token {id:?} deleted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(ips: &[&str], port: i32) -> Endpoints {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{
                "addresses": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }],
        }))
        .unwrap()
    }

    #[test]
    fn the_join_command_names_every_published_api_server_the_kubeconfigs_first() {
        let e = endpoints(&["10.0.0.2", "10.0.0.3", "10.0.0.4"], 6443);
        let published = endpoint_urls(&e);
        assert_eq!(
            servers_with("https://10.0.0.3:6443", &published),
            [
                "https://10.0.0.3:6443",
                "https://10.0.0.2:6443",
                "https://10.0.0.4:6443"
            ]
        );
        // A load balancer (or a name) in front of the API servers: that alone.
        assert_eq!(
            servers_with("https://api.example:6443", &published),
            ["https://api.example:6443"]
        );
        let token = bootstrap_token::parse("abcdef.0123456789abcdef").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let servers = servers_with("https://10.0.0.2:6443", &published);
        let command = join_command(&servers, &ca.pem(), &token).unwrap();
        assert!(
            command.starts_with(
                "skiff-agent join --server https://10.0.0.2:6443,https://10.0.0.3:6443,https://10.0.0.4:6443 --token abcdef.0123456789abcdef --ca-cert-hash sha256:"
            ),
            "{command}"
        );
    }
}
