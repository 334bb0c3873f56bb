//! kube-controller-manager's and kube-scheduler's `app`: runs every enabled controller and the
//! scheduler on one [`Context`]. The only module that names both, so neither names the other.

use std::sync::Arc;

use kube::Client;
use tokio::task::JoinSet;

use crate::controllers::{
    daemonset, deployment, endpoints, endpointslice, gc, job, namespace, nodeipam, nodelifecycle,
    replicaset, rootcacert, serviceaccount,
};
use crate::runtime::Context;
pub use crate::runtime::config::{COMPONENTS, ControllerConfig, Enabled};
use crate::scheduler;

/// Run every enabled controller (and the scheduler) until the returned future is dropped.
/// Call it only while holding leadership.
pub async fn run(client: Client, config: ControllerConfig) {
    let ctx = Arc::new(Context::new(client, config));
    let mut tasks = JoinSet::new();
    // Subscriptions happen inside each `spawn_*` before the informers start.
    let enabled = ctx.config.enabled.clone();
    for name in COMPONENTS {
        if !enabled.contains(name) {
            continue;
        }
        let ctx = ctx.clone();
        match *name {
            "scheduler" => scheduler::spawn(ctx, &mut tasks),
            "serviceaccount" => serviceaccount::spawn(ctx, &mut tasks),
            "root-ca-cert-publisher" => rootcacert::spawn(ctx, &mut tasks),
            "namespace" => namespace::spawn(ctx, &mut tasks),
            "nodeipam" => nodeipam::spawn(ctx, &mut tasks),
            "nodelifecycle" => nodelifecycle::spawn(ctx, &mut tasks),
            "replicaset" => replicaset::spawn(ctx, &mut tasks),
            "deployment" => deployment::spawn(ctx, &mut tasks),
            "daemonset" => daemonset::spawn(ctx, &mut tasks),
            "job" => job::spawn(ctx, &mut tasks),
            "endpoints" => endpoints::spawn(ctx, &mut tasks),
            "endpointslice" => endpointslice::spawn(ctx, &mut tasks),
            "garbagecollector" => gc::spawn(ctx, &mut tasks),
            other => tracing::warn!(controller = other, "no such controller"),
        }
        tracing::info!(controller = name, "started");
    }
    ctx.informers.start(&mut tasks);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            tracing::error!(error = %e, "a controller task panicked");
        }
    }
}
