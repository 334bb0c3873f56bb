//! Bootstrap signer (kube-controller-manager's `bootstrapsigner`, which kubeadm turns on):
//! keeps `kube-public/cluster-info` signed for every bootstrap token that may sign
//! (`usage-bootstrap-signing: "true"`, not expired): the key `jws-kubeconfig-<token-id>` holds a
//! detached JWS of the `kubeconfig` key made with that token. A joining node that knows a token
//! checks with it that the cluster-info it read anonymously is the cluster's. Signatures of
//! tokens gone or expired are removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use tokio::task::JoinSet;

use crate::apiserver::cluster_info::{KUBECONFIG_KEY, NAME, NAMESPACE};
use crate::runtime::{self, Context, Result};
use skiff_common::bootstrap_token::{self, BootstrapToken};

const SIGNATURE_PREFIX: &str = "jws-kubeconfig-";
const TOKEN_FIELD_SELECTOR: &str = "type=bootstrap.kubernetes.io/token";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informer = &ctx.informers.config_maps;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), "kube-system");
    let cluster_info = || ObjectRef::<ConfigMap>::new(NAME).within(NAMESPACE);
    let controller = Controller::for_shared_stream(
        informer
            .subscribe()
            .filter(|cm| futures::future::ready(is_cluster_info(cm))),
        informer.store(),
    )
    // Any token's change may change the signatures.
    .watches(
        secrets,
        watcher::Config::default().fields(TOKEN_FIELD_SELECTOR),
        move |_| Some(cluster_info()),
    );
    runtime::drive("bootstrapsigner", controller, ctx, 1, reconcile, tasks);
}

fn is_cluster_info(cm: &ConfigMap) -> bool {
    cm.metadata.name.as_deref() == Some(NAME) && cm.metadata.namespace.as_deref() == Some(NAMESPACE)
}

async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Context>) -> Result<Action> {
    if !is_cluster_info(&cm) {
        return Ok(Action::await_change());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), "kube-system");
    let tokens = secrets
        .list(&ListParams::default().fields(TOKEN_FIELD_SELECTOR))
        .await?;
    let now = jiff::Timestamp::now();
    let signers: Vec<Signer> = tokens.items.iter().filter_map(|s| signer(s, now)).collect();
    let data = cm.data.clone().unwrap_or_default();
    let content = data.get(KUBECONFIG_KEY).cloned().unwrap_or_default();
    let wanted = signatures(&data, &content, &signers);
    if wanted != data {
        let mut updated = (*cm).clone();
        updated.data = Some(wanted);
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NAMESPACE);
        match api.replace(NAME, &PostParams::default(), &updated).await {
            Ok(_) => tracing::info!(tokens = signers.len(), "signed cluster-info"),
            // A newer cluster-info comes back through the watch.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Look again when the first token expires.
    let next = signers
        .iter()
        .filter_map(|s| s.expires)
        .min()
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or_default());
    Ok(next.map_or_else(Action::await_change, |d| {
        Action::requeue(d + Duration::from_secs(1))
    }))
}

/// A token that may sign, and when it stops.
struct Signer {
    token: BootstrapToken,
    expires: Option<jiff::Timestamp>,
}

/// The token of a bootstrap-token Secret if it may sign at `now` (kube's
/// `getSecretString`/`validateSecretForSigning`: id matching the name, signing usage, not
/// expired).
fn signer(secret: &Secret, now: jiff::Timestamp) -> Option<Signer> {
    let data = secret.data.as_ref()?;
    let field = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let token = bootstrap_token::parse(&format!(
        "{}.{}",
        field("token-id")?,
        field("token-secret")?
    ))?;
    let name = secret.metadata.name.as_deref()?;
    if name != format!("{}{}", bootstrap_token::SECRET_PREFIX, token.id)
        || field("usage-bootstrap-signing").as_deref() != Some("true")
    {
        return None;
    }
    let expires = match field("expiration") {
        Some(text) => Some(text.parse::<jiff::Timestamp>().ok()?),
        None => None,
    };
    if expires.is_some_and(|at| at <= now) {
        return None;
    }
    Some(Signer { token, expires })
}

/// `data` with exactly the signatures of `signers` over `content` (others' keys untouched).
fn signatures(
    data: &BTreeMap<String, String>,
    content: &str,
    signers: &[Signer],
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = data
        .iter()
        .filter(|(k, _)| !k.starts_with(SIGNATURE_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for s in signers {
        out.insert(
            bootstrap_token::jws_key(&s.token.id),
            bootstrap_token::detached_signature(content, &s.token),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(id: &str, fields: &[(&str, &str)]) -> Secret {
        let mut data: BTreeMap<String, ByteString> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        data.insert("token-id".into(), ByteString(id.as_bytes().to_vec()));
        data.insert(
            "token-secret".into(),
            ByteString(b"0123456789abcdef".to_vec()),
        );
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("bootstrap-token-{id}")),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn only_unexpired_signing_tokens_sign() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let signing = [("usage-bootstrap-signing", "true")];
        assert!(signer(&secret("aaaaaa", &signing), now).is_some());
        assert!(signer(&secret("bbbbbb", &[]), now).is_none());
        let expired = [
            ("usage-bootstrap-signing", "true"),
            ("expiration", "2025-12-31T23:59:59Z"),
        ];
        assert!(signer(&secret("cccccc", &expired), now).is_none());
        let later = [
            ("usage-bootstrap-signing", "true"),
            ("expiration", "2026-01-02T00:00:00Z"),
        ];
        let s = signer(&secret("dddddd", &later), now).unwrap();
        assert_eq!(s.expires, Some("2026-01-02T00:00:00Z".parse().unwrap()));
        let mut renamed = secret("eeeeee", &signing);
        renamed.metadata.name = Some("bootstrap-token-ffffff".into());
        assert!(signer(&renamed, now).is_none());
    }

    #[test]
    fn signatures_replace_stale_ones_and_keep_other_keys() {
        let data = BTreeMap::from([
            (KUBECONFIG_KEY.to_string(), "kc".to_string()),
            ("jws-kubeconfig-gone00".to_string(), "old".to_string()),
        ]);
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = signer(
            &secret("aaaaaa", &[("usage-bootstrap-signing", "true")]),
            now,
        )
        .unwrap();
        let out = signatures(&data, "kc", &[s]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[KUBECONFIG_KEY], "kc");
        let token = bootstrap_token::parse("aaaaaa.0123456789abcdef").unwrap();
        assert!(bootstrap_token::verify_detached_signature(
            "kc",
            &out["jws-kubeconfig-aaaaaa"],
            &token
        ));
    }
}
