//! Namespace controller: a Terminating namespace (deletionTimestamp set, `kubernetes` still in
//! `spec.finalizers`) is emptied — every namespaced resource the server has is deleted by
//! collection — and once nothing is left its `kubernetes` finalizer is handed back through the
//! `finalize` subresource, after which the API server removes it. Progress shows in the
//! namespace's status conditions, as kube's namespaced-resources deleter reports it.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, NamespaceCondition, Pod, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Error, Result};

/// The finalizer this controller owns.
const FINALIZER: &str = "kubernetes";
/// Pods still there this long after the namespace was deleted are removed with grace 0
/// (their kubelet is gone or will not confirm).
const FORCE_PODS_AFTER: Duration = Duration::from_secs(30);
/// How often a namespace whose contents are still going is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let controller = Controller::for_shared_stream(
        informers.namespaces.subscribe(),
        informers.namespaces.store(),
    );
    runtime::drive("namespace", controller, ctx, 4, reconcile, tasks);
}

/// What is left of one resource in the namespace.
struct Remaining {
    resource: &'static str,
    count: usize,
    /// Finalizers holding some of them back.
    finalizers: Vec<String>,
}

/// Delete every object of `K` in `ns` and report what is still there.
async fn purge<K>(
    client: &Client,
    ns: &str,
    resource: &'static str,
    dp: &DeleteParams,
) -> Result<Remaining>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default();
    let left = api.list(&lp).await?.items;
    if left.is_empty() {
        return Ok(Remaining {
            resource,
            count: 0,
            finalizers: Vec::new(),
        });
    }
    if left.iter().any(|o| o.meta().deletion_timestamp.is_none())
        || dp.grace_period_seconds == Some(0)
    {
        match api.delete_collection(dp, &lp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let left = api.list(&lp).await?.items;
    let mut finalizers: Vec<String> = left
        .iter()
        .flat_map(|o| o.meta().finalizers.iter().flatten().cloned())
        .collect();
    finalizers.sort();
    finalizers.dedup();
    Ok(Remaining {
        resource,
        count: left.len(),
        finalizers,
    })
}

/// Delete everything in the namespace; what remains, per resource.
async fn delete_contents(ctx: &Context, ns: &str, force_pods: bool) -> Result<Vec<Remaining>> {
    let c = &ctx.client;
    let dp = DeleteParams::background();
    let pods_dp = if force_pods {
        DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        }
    } else {
        dp.clone()
    };
    // Owners first, so their controllers stop making what is deleted next.
    let out = vec![
        purge::<Deployment>(c, ns, "deployments.apps", &dp).await?,
        purge::<DaemonSet>(c, ns, "daemonsets.apps", &dp).await?,
        purge::<Job>(c, ns, "jobs.batch", &dp).await?,
        purge::<ReplicaSet>(c, ns, "replicasets.apps", &dp).await?,
        purge::<Pod>(c, ns, "pods", &pods_dp).await?,
        purge::<Service>(c, ns, "services", &dp).await?,
        purge::<Endpoints>(c, ns, "endpoints", &dp).await?,
        purge::<EndpointSlice>(c, ns, "endpointslices.discovery.k8s.io", &dp).await?,
        purge::<PodDisruptionBudget>(c, ns, "poddisruptionbudgets.policy", &dp).await?,
        purge::<ConfigMap>(c, ns, "configmaps", &dp).await?,
        purge::<Secret>(c, ns, "secrets", &dp).await?,
        purge::<ServiceAccount>(c, ns, "serviceaccounts", &dp).await?,
        purge::<Lease>(c, ns, "leases.coordination.k8s.io", &dp).await?,
        purge::<RoleBinding>(c, ns, "rolebindings.rbac.authorization.k8s.io", &dp).await?,
        purge::<Role>(c, ns, "roles.rbac.authorization.k8s.io", &dp).await?,
        purge::<Event>(c, ns, "events", &dp).await?,
    ];
    Ok(out.into_iter().filter(|r| r.count > 0).collect())
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(runtime::now()),
    }
}

/// kube's deletion conditions for what is left.
fn conditions(remaining: &[Remaining], failure: Option<&str>) -> Vec<NamespaceCondition> {
    let content = remaining
        .iter()
        .map(|r| format!("{} has {} resource instances", r.resource, r.count))
        .collect::<Vec<_>>()
        .join(", ");
    let mut finalizers: Vec<String> = remaining
        .iter()
        .flat_map(|r| {
            r.finalizers
                .iter()
                .map(|f| format!("{f} in {}", r.resource))
        })
        .collect();
    finalizers.dedup();
    vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        match failure {
            Some(msg) => condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                msg.to_string(),
            ),
            None => condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            ),
        },
        if remaining.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {content}"),
            )
        },
        if finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    finalizers.join(", ")
                ),
            )
        },
    ]
}

/// Write the conditions if they say something new (transition times of unchanged ones kept).
async fn update_conditions(
    ctx: &Context,
    ns: &Namespace,
    mut wanted: Vec<NamespaceCondition>,
) -> Result<()> {
    let current = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = current.len() != wanted.len();
    for w in &mut wanted {
        match current.iter().find(|c| c.type_ == w.type_) {
            Some(c) if c.status == w.status && c.reason == w.reason && c.message == w.message => {
                w.last_transition_time = c.last_transition_time.clone();
            }
            Some(c) if c.status == w.status => {
                w.last_transition_time = c.last_transition_time.clone();
                changed = true;
            }
            _ => changed = true,
        }
    }
    if !changed {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let patch = json!({"status": {"phase": "Terminating", "conditions": wanted}});
    runtime::merge_status(&api, name, &patch).await?;
    Ok(())
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let Some(deleted_at) = ns.metadata.deletion_timestamp.as_ref() else {
        return Ok(runtime::done(ns.as_ref(), &ctx));
    };
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(runtime::done(ns.as_ref(), &ctx));
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    // The cache may still hold a namespace that is gone and was made anew under the same
    // name: only ever empty the one the API has now, and only while it is terminating.
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(&name).await? {
        Some(live)
            if live.metadata.uid == ns.metadata.uid
                && live.metadata.deletion_timestamp.is_some() => {}
        _ => return Ok(runtime::done(ns.as_ref(), &ctx)),
    }
    let age = runtime::now().0.duration_since(deleted_at.0);
    let force_pods = age.as_secs() >= FORCE_PODS_AFTER.as_secs() as i64;
    let remaining = match delete_contents(&ctx, &name, force_pods).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("Failed to delete all resource types, 1 remaining: {e}");
            update_conditions(&ctx, &ns, conditions(&[], Some(&msg))).await?;
            return Err(e);
        }
    };
    update_conditions(&ctx, &ns, conditions(&remaining, None)).await?;
    if !remaining.is_empty() {
        tracing::debug!(namespace = %name, left = remaining.len(), "namespace content remains");
        return Ok(Action::requeue(RECHECK));
    }
    // Empty: hand back our finalizer; the API server removes the namespace.
    let mut finalized = (*ns).clone();
    finalized
        .spec
        .get_or_insert_with(Default::default)
        .finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => tracing::info!(namespace = %name, "namespace emptied and finalized"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(Error::from(e)),
    }
    Ok(runtime::done(ns.as_ref(), &ctx))
}

#[cfg(test)]
mod tests {
    /// Every namespaced resource the server serves is emptied by `delete_contents`.
    #[test]
    fn covers_every_namespaced_resource() {
        let src = include_str!("namespace.rs");
        for r in crate::api_resources::RESOURCES
            .iter()
            .filter(|r| r.namespaced)
        {
            let name = if r.group.is_empty() {
                r.plural.to_string()
            } else {
                format!("{}.{}", r.plural, r.group)
            };
            assert!(
                src.contains(&format!("\"{name}\", &")),
                "namespace controller does not delete {name}"
            );
        }
    }
}
