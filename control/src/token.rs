//! `skiff-control token create`: a bootstrap token for joining nodes, as `kubeadm token
//! create` makes one: its Secret written through the API with an administrator's kubeconfig,
//! the token printed. A node's agent uses it only to ask for its own client certificate.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use skiff_common::bootstrap_token::{self, BootstrapToken};

/// What the token is for, and for how long.
pub struct TokenRequest<'a> {
    /// `None`: it never expires (kubeadm's `--ttl 0`).
    pub ttl: Option<Duration>,
    pub description: &'a str,
    pub groups: &'a [String],
}

/// Create a new token's Secret through the API at `kubeconfig`'s server.
pub async fn create(kubeconfig: &Path, request: &TokenRequest<'_>) -> Result<BootstrapToken> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    let client = kube::Client::try_from(config)?;
    let api: Api<Secret> = Api::namespaced(client, bootstrap_token::NAMESPACE);
    let token = BootstrapToken::generate();
    let groups: Vec<&str> = request.groups.iter().map(String::as_str).collect();
    let secret = token.secret(
        request.ttl,
        jiff::Timestamp::now(),
        request.description,
        &groups,
    );
    api.create(&PostParams::default(), &secret)
        .await
        .context("creating the bootstrap token's Secret")?;
    Ok(token)
}
