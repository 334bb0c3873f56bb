//! kube-controller-manager's and kube-scheduler's `app`: runs every enabled controller and the
//! scheduler, each with its own identity ([`credentials`]). The only module that names both,
//! so neither names the other.

use std::sync::Arc;

use kube::Client;
use tokio::task::JoinSet;

use crate::controllers::{
    bootstrapsigner, csrapproving, csrsigning, daemonset, deployment, disruption, endpoints,
    endpointslice, gc, job, namespace, nodeipam, nodelifecycle, replicaset, rootcacert,
    serviceaccount, servicelb, tokencleaner,
};
pub use crate::runtime::config::{COMPONENTS, ControllerConfig, Enabled};
pub use crate::runtime::credentials::{self, ControllerClients, Identities};
use crate::runtime::{Context, Informers};
use crate::scheduler;

/// The ServiceAccount (in kube-system) each controller calls the API as: kube's names, bound
/// to `system:controller:<account>`.
pub fn service_account(controller: &str) -> Option<&'static str> {
    Some(match controller {
        "serviceaccount" => "service-account-controller",
        "root-ca-cert-publisher" => "root-ca-cert-publisher",
        "namespace" => "namespace-controller",
        // kube's node IPAM and node lifecycle controllers share the node-controller account.
        "nodeipam" | "nodelifecycle" => "node-controller",
        "replicaset" => "replicaset-controller",
        "deployment" => "deployment-controller",
        "daemonset" => "daemon-set-controller",
        "job" => "job-controller",
        "disruption" => "disruption-controller",
        "endpoints" => "endpoint-controller",
        "endpointslice" => "endpointslice-controller",
        "garbagecollector" => "generic-garbage-collector",
        // kube runs its CSR approver and signer as the same account.
        "csrsigning" | "csrapproving" => "certificate-controller",
        "bootstrapsigner" => crate::apiserver::cluster_info::SIGNER_ACCOUNT,
        "tokencleaner" => crate::apiserver::cluster_info::CLEANER_ACCOUNT,
        // kube's cloud service controller, which fills in LoadBalancer addresses.
        "service-lb-controller" => "service-controller",
        _ => return None,
    })
}

/// Run every enabled controller (and the scheduler) until the returned future is dropped.
/// Call it only while holding leadership.
pub async fn run(identities: Identities, config: ControllerConfig) {
    let mut tasks = JoinSet::new();
    let root = match Client::try_from(identities.controller_manager.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "building the controller manager's client failed");
            return;
        }
    };
    let informers = Arc::new(Informers::new(&root));
    let clients = ControllerClients::new(&identities, root);
    for name in COMPONENTS {
        if !config.enabled.contains(name) {
            continue;
        }
        if *name == "scheduler" {
            if let Err(e) = start_scheduler(&identities, &config, &mut tasks) {
                tracing::error!(error = %e, "starting the scheduler failed");
            }
            continue;
        }
        let Some(account) = service_account(name) else {
            tracing::warn!(controller = name, "no such controller");
            continue;
        };
        let client = match clients.client_for(account, &mut tasks).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(controller = name, error = %e, "building the controller's client failed");
                continue;
            }
        };
        let ctx = Arc::new(Context::new(client, informers.clone(), config.clone()));
        spawn_controller(name, ctx, &mut tasks);
        tracing::info!(controller = name, account, "started");
    }
    // Subscriptions happen inside each `spawn_*` before the informers start.
    informers.start(&mut tasks);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            tracing::error!(error = %e, "a controller task panicked");
        }
    }
}

fn spawn_controller(name: &str, ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    match name {
        "serviceaccount" => serviceaccount::spawn(ctx, tasks),
        "root-ca-cert-publisher" => rootcacert::spawn(ctx, tasks),
        "namespace" => namespace::spawn(ctx, tasks),
        "nodeipam" => nodeipam::spawn(ctx, tasks),
        "nodelifecycle" => nodelifecycle::spawn(ctx, tasks),
        "replicaset" => replicaset::spawn(ctx, tasks),
        "deployment" => deployment::spawn(ctx, tasks),
        "daemonset" => daemonset::spawn(ctx, tasks),
        "job" => job::spawn(ctx, tasks),
        "disruption" => disruption::spawn(ctx, tasks),
        "endpoints" => endpoints::spawn(ctx, tasks),
        "endpointslice" => endpointslice::spawn(ctx, tasks),
        "garbagecollector" => gc::spawn(ctx, tasks),
        "csrsigning" => csrsigning::spawn(ctx, tasks),
        "csrapproving" => csrapproving::spawn(ctx, tasks),
        "bootstrapsigner" => bootstrapsigner::spawn(ctx, tasks),
        "tokencleaner" => tokencleaner::spawn(ctx, tasks),
        "service-lb-controller" => servicelb::spawn(ctx, tasks),
        other => tracing::warn!(controller = other, "no such controller"),
    }
}

/// The scheduler as `system:kube-scheduler`, with informers of its own (kube-scheduler is a
/// process of its own; its role lets it watch only what it schedules with).
fn start_scheduler(
    identities: &Identities,
    config: &ControllerConfig,
    tasks: &mut JoinSet<()>,
) -> kube::Result<()> {
    let client = Client::try_from(identities.scheduler.clone())?;
    let informers = Arc::new(Informers::new(&client));
    let ctx = Arc::new(Context::new(client, informers.clone(), config.clone()));
    scheduler::spawn(ctx, tasks);
    informers.pods.start(tasks);
    informers.nodes.start(tasks);
    tracing::info!(controller = "scheduler", "started");
    Ok(())
}
