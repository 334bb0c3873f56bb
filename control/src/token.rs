//! `skiff-control token create|list|delete`: bootstrap tokens for joining nodes, as
//! `kubeadm token` manages them: Secrets `bootstrap-token-<id>` in kube-system written
//! through the API with an administrator's kubeconfig. `create --print-join-command` prints
//! the command a new node runs: the API server, the token and the hash of the cluster CA's
//! public key (kubeadm's `--discovery-token-ca-cert-hash`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Secret;
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

/// `skiff-agent join --server … --token … --ca-cert-hash sha256:…`.
pub fn join_command(server: &str, ca_pem: &str, token: &BootstrapToken) -> Result<String> {
    Ok(format!(
        "skiff-agent join --server {server} --token {} --ca-cert-hash {}",
        token.token(),
        ca_public_key_hash(ca_pem)?
    ))
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
