//! Who the components are to the API server, as kube-controller-manager's `--kubeconfig` with
//! `--use-service-account-credentials` and kube-scheduler's `--kubeconfig`:
//!
//! - the controller manager's own identity (`system:kube-controller-manager`) runs the shared
//!   informers and leader election, and mints each controller's token;
//! - each controller calls the API as the ServiceAccount kube names it after (e.g.
//!   `kube-system/replicaset-controller`), bound to the `system:controller:<name>` ClusterRole;
//!   its token comes from the TokenRequest API and is renewed at 80 % of its life (client-go's
//!   `DynamicControllerClientBuilder`);
//! - the scheduler has its own identity (`system:kube-scheduler`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{self, HeaderValue};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::AuthInfo;
use kube::{Client, Config};
use tokio::task::JoinSet;

/// Where the controllers' ServiceAccounts live.
pub const NAMESPACE: &str = "kube-system";
/// How long a controller token is asked for (client-go's `defaultExpirationSeconds`).
const TOKEN_LIFETIME: i64 = 3600;
/// A failed token request is retried after this long.
const RETRY: Duration = Duration::from_secs(2);

/// The credentials the components start from.
#[derive(Clone)]
pub struct Identities {
    /// `system:kube-controller-manager`.
    pub controller_manager: Config,
    /// `system:kube-scheduler`.
    pub scheduler: Config,
}

impl Identities {
    /// From the two components' kubeconfigs (YAML).
    pub async fn from_kubeconfigs(controller_manager: &str, scheduler: &str) -> kube::Result<Self> {
        Ok(Identities {
            controller_manager: config_of(controller_manager).await?,
            scheduler: config_of(scheduler).await?,
        })
    }
}

async fn config_of(yaml: &str) -> kube::Result<Config> {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(yaml).map_err(kube::Error::InferKubeconfig)?;
    Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(kube::Error::InferKubeconfig)
}

/// Builds a client per controller that authenticates with its ServiceAccount's token.
pub struct ControllerClients {
    /// The controller manager's own client: creates the accounts and requests their tokens.
    root: Client,
    /// The cluster (URL, CA) without credentials, for the controllers' clients.
    anonymous: Config,
}

impl ControllerClients {
    pub fn new(identities: &Identities, root: Client) -> ControllerClients {
        let mut anonymous = identities.controller_manager.clone();
        anonymous.auth_info = AuthInfo::default();
        ControllerClients { root, anonymous }
    }

    /// A client for `kube-system/<account>`, with its first token in hand; the token is renewed
    /// by a task in `tasks`. Waits (retrying) until the API server issues one.
    pub async fn client_for(&self, account: &str, tasks: &mut JoinSet<()>) -> kube::Result<Client> {
        let (token, lifetime) = loop {
            match self.token(account).await {
                Ok(t) => break t,
                Err(e) => {
                    tracing::warn!(account, error = %e, "getting a controller token failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        let header = Arc::new(RwLock::new(bearer(&token)));
        tasks.spawn(renew(
            self.root.clone(),
            account.to_string(),
            header.clone(),
            lifetime,
        ));
        let layer = tower::util::MapRequestLayer::new(move |mut req: http::Request<_>| {
            let value = header.read().unwrap_or_else(|p| p.into_inner()).clone();
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
            req
        });
        Ok(
            kube::client::ClientBuilder::try_from(self.anonymous.clone())?
                .with_layer(&layer)
                .build(),
        )
    }

    /// A fresh token for `account` (created first if missing) and how long it lives.
    async fn token(&self, account: &str) -> kube::Result<(String, Duration)> {
        request_token(&self.root, account).await
    }
}

/// `kube-system/<account>` exists (the controller manager creates it, as kube's
/// `ensureServiceAccount` does), then a TokenRequest for it.
async fn request_token(root: &Client, account: &str) -> kube::Result<(String, Duration)> {
    let api: Api<ServiceAccount> = Api::namespaced(root.clone(), NAMESPACE);
    if api.get_opt(account).await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(account.to_string()),
                namespace: Some(NAMESPACE.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_LIFETIME),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let answer = api
        .create_token_request(account, &PostParams::default(), &request)
        .await?;
    let Some(status) = answer.status else {
        return Err(kube::Error::Service(
            "the TokenRequest came back without a token".into(),
        ));
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let left = status.expiration_timestamp.0.duration_since(now);
    let lifetime = Duration::try_from(left).unwrap_or(Duration::from_secs(60));
    Ok((status.token, lifetime))
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"))
}

/// Renew the token at 80 % of its life (retrying failures) for as long as the client lives.
async fn renew(
    root: Client,
    account: String,
    header: Arc<RwLock<HeaderValue>>,
    lifetime: Duration,
) {
    let mut wait = lifetime.mul_f64(0.8);
    loop {
        tokio::time::sleep(wait).await;
        match request_token(&root, &account).await {
            Ok((token, lifetime)) => {
                *header.write().unwrap_or_else(|p| p.into_inner()) = bearer(&token);
                wait = lifetime.mul_f64(0.8);
            }
            Err(e) => {
                tracing::warn!(account, error = %e, "renewing a controller token failed");
                wait = RETRY;
            }
        }
    }
}
