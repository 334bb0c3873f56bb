//! Root-CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every active
//! namespace has the ConfigMap `kube-root-ca.crt` holding the cluster CA as `ca.crt`, which
//! the service-account volume of every pod projects. Deleted, it is recreated; edited, it is
//! put back.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Result};

pub const NAME: &str = "kube-root-ca.crt";
pub const CA_KEY: &str = "ca.crt";
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other \
usage is guaranteed across distributions of Kubernetes clusters.";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    if ctx.config.root_ca.is_empty() {
        tracing::warn!("no root CA given: the kube-root-ca.crt ConfigMaps are not published");
        return;
    }
    let informers = &ctx.informers;
    let controller = Controller::for_shared_stream(
        informers.namespaces.subscribe(),
        informers.namespaces.store(),
    )
    // An edited ConfigMap brings its namespace back to the queue.
    .watches_shared_stream(informers.config_maps.subscribe(), |cm: Arc<ConfigMap>| {
        namespace_of_ours(&cm)
    })
    // A deleted one must come back at once, not at the next resync.
    .reconcile_on(
        informers
            .config_maps
            .deletions()
            .filter_map(|cm| futures::future::ready(namespace_of_ours(&cm))),
    );
    runtime::drive(
        "root-ca-cert-publisher",
        controller,
        ctx,
        4,
        reconcile,
        tasks,
    );
}

fn namespace_of_ours(cm: &ConfigMap) -> Option<ObjectRef<Namespace>> {
    (cm.metadata.name.as_deref() == Some(NAME))
        .then(|| cm.metadata.namespace.as_deref().map(ObjectRef::new))
        .flatten()
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(ns.as_ref(), &ctx));
    }
    let cached = ctx
        .informers
        .config_maps
        .store()
        .get(&ObjectRef::new(NAME).within(&name));
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let result = match cached {
        None => api
            .create(&PostParams::default(), &desired(&name, &ctx.config.root_ca))
            .await
            .map(|_| tracing::debug!(namespace = %name, "published the root CA")),
        Some(cm) if is_current(&cm, &ctx.config.root_ca) => Ok(()),
        Some(cm) => {
            let mut fixed = (*cm).clone();
            fixed.data = desired(&name, &ctx.config.root_ca).data;
            fixed
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
            // The cached resourceVersion guards the write: a newer edit is a conflict, retried.
            api.replace(NAME, &PostParams::default(), &fixed)
                .await
                .map(|_| tracing::debug!(namespace = %name, "restored the root CA"))
        }
    };
    match result {
        Ok(()) => {}
        // The cache lags behind the API; someone (or we, earlier) made it already.
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
        // The namespace is going away.
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(runtime::done(ns.as_ref(), &ctx))
}

/// The data is exactly the CA and the description is there (as kube checks it).
fn is_current(cm: &ConfigMap, ca: &str) -> bool {
    let data_ok = cm
        .data
        .as_ref()
        .is_some_and(|d| d.len() == 1 && d.get(CA_KEY).map(String::as_str) == Some(ca));
    let described = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
        .is_some_and(|d| !d.is_empty());
    data_ok && described && cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty)
}

fn desired(ns: &str, ca: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(ns.into()),
            annotations: Some(BTreeMap::from([(
                DESCRIPTION_ANNOTATION.to_string(),
                DESCRIPTION.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CA_KEY.to_string(), ca.to_string())])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_ca_with_its_description_is_current() {
        let good = desired("foo", "PEM");
        assert!(is_current(&good, "PEM"));
        assert!(!is_current(&good, "OTHER"));
        let mut extra = good.clone();
        extra.data.as_mut().unwrap().insert("x".into(), "y".into());
        assert!(!is_current(&extra, "PEM"));
        let mut bare = good.clone();
        bare.metadata.annotations = None;
        assert!(!is_current(&bare, "PEM"));
    }
}
