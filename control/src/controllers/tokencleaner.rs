//! Token cleaner (kube-controller-manager's `tokencleaner`, which kubeadm turns on): deletes
//! bootstrap-token Secrets once their `expiration` has passed, so an expired token also loses
//! its signature in cluster-info.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Result};

const TOKEN_FIELD_SELECTOR: &str = "type=bootstrap.kubernetes.io/token";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), "kube-system");
    let controller = Controller::new(
        secrets,
        watcher::Config::default().fields(TOKEN_FIELD_SELECTOR),
    );
    runtime::drive("tokencleaner", controller, ctx, 1, reconcile, tasks);
}

/// When the Secret's token expires; `None` for a token without (or with a malformed)
/// expiration, which kube's cleaner leaves alone.
fn expiration(secret: &Secret) -> Option<jiff::Timestamp> {
    let raw = secret.data.as_ref()?.get("expiration")?;
    std::str::from_utf8(&raw.0).ok()?.parse().ok()
}

async fn reconcile(secret: Arc<Secret>, ctx: Arc<Context>) -> Result<Action> {
    let Some(at) = expiration(&secret) else {
        return Ok(Action::await_change());
    };
    let now = jiff::Timestamp::now();
    if at > now {
        let left = Duration::try_from(at.duration_since(now)).unwrap_or_default();
        return Ok(Action::requeue(left + Duration::from_secs(1)));
    }
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), "kube-system");
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => tracing::info!(secret = %name, "deleted an expired bootstrap token"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn reads_the_expiration() {
        let mut s = Secret::default();
        assert_eq!(expiration(&s), None);
        s.data = Some(
            [(
                "expiration".to_string(),
                ByteString(b"2026-01-01T00:00:00Z".to_vec()),
            )]
            .into(),
        );
        assert_eq!(
            expiration(&s),
            Some("2026-01-01T00:00:00Z".parse().unwrap())
        );
    }
}
