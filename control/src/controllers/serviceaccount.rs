//! ServiceAccount controller: every namespace has a `default` ServiceAccount (recreated if
//! deleted), as kube-controller-manager's serviceaccount-controller keeps it.

use std::sync::Arc;

use futures::StreamExt;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Result};

const DEFAULT: &str = "default";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let controller = Controller::for_shared_stream(
        informers.namespaces.subscribe(),
        informers.namespaces.store(),
    )
    // A changed `default` account brings its namespace back to the queue.
    .watches_shared_stream(
        informers.service_accounts.subscribe(),
        |sa: Arc<ServiceAccount>| {
            (sa.metadata.name.as_deref() == Some(DEFAULT))
                .then(|| sa.metadata.namespace.clone())
                .flatten()
                .map(|ns| ObjectRef::new(&ns))
        },
    )
    // A deleted `default` account must come back at once, not at the next resync.
    .reconcile_on(informers.service_accounts.deletions().filter_map(|sa| {
        let ns = (sa.metadata.name.as_deref() == Some(DEFAULT))
            .then(|| sa.metadata.namespace.clone())
            .flatten();
        futures::future::ready(ns.map(|ns| ObjectRef::new(&ns)))
    }));
    runtime::drive("serviceaccount", controller, ctx, 4, reconcile, tasks);
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(ns.as_ref(), &ctx));
    }
    let cached = ctx
        .informers
        .service_accounts
        .store()
        .get(&ObjectRef::new(DEFAULT).within(&name));
    if cached.is_none() {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(DEFAULT.to_string()),
                namespace: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::debug!(namespace = %name, "created the default service account"),
            // The cache lags behind the API; someone (or we, earlier) made it already.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // The namespace is going away.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(runtime::done(ns.as_ref(), &ctx))
}
