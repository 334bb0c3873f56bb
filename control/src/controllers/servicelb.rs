//! LoadBalancer IPAM on bare metal (what MetalLB's controller and Cilium's LB IPAM do): every
//! `type: LoadBalancer` Service of our class ([`CLASS`], or no `loadBalancerClass`) gets an
//! address from the `--service-lb-pool` ranges in `status.loadBalancer.ingress[0].ip`; the
//! nodes' agents then announce it (L2, one node per Service chosen through a Lease).
//!
//! What is taken is worked out from the Services themselves (a live list, with one allocation
//! at a time), so a restart or a lagging cache cannot hand an address out twice; an address is
//! free again once its Service is gone, changed type or got another address. A Service that
//! asks for `spec.loadBalancerIP` gets exactly that address or none (with an
//! `AllocationFailed` Event), as MetalLB does. The agents' announcement Leases of Services that
//! are gone are deleted here too.

use skiff_common::loadbalancer::ingress_ips;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use serde_json::json;
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Result};
use skiff_common::cidr::Ipv4Range;
use skiff_common::loadbalancer;

pub use skiff_common::loadbalancer::CLASS;

/// How soon a Service that got no address (pools full, requested address taken) tries again.
const RETRY: Duration = Duration::from_secs(5);
/// How often the announcement Leases of deleted Services are looked for.
const LEASE_SWEEP: Duration = Duration::from_secs(10);

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let controller =
        Controller::for_shared_stream(informers.services.subscribe(), informers.services.store());
    // One allocation at a time: each sees every earlier one in its live list.
    runtime::drive(
        "service-lb-controller",
        controller,
        ctx.clone(),
        1,
        reconcile,
        tasks,
    );
    tasks.spawn(sweep_leases(ctx));
}

/// Every so often, delete the announcement Leases of Services that are gone or no longer
/// ours (the agents only create and renew them; a Lease in kube-system cannot be owned by a
/// Service elsewhere, so the garbage collector cannot do it).
async fn sweep_leases(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(LEASE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = delete_orphaned_leases(&ctx).await {
            tracing::debug!(error = %e, "sweeping L2 announcement leases");
        }
    }
}

async fn delete_orphaned_leases(ctx: &Context) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), loadbalancer::LEASE_NAMESPACE);
    let list = leases
        .list(&ListParams::default().labels(loadbalancer::SERVICE_NAME_LABEL))
        .await?;
    for lease in list.items {
        let Some(name) = lease
            .metadata
            .name
            .as_deref()
            .filter(|n| n.starts_with(loadbalancer::LEASE_PREFIX))
        else {
            continue;
        };
        let label = |key: &str| lease.metadata.labels.as_ref().and_then(|l| l.get(key));
        let (Some(ns), Some(svc)) = (
            label(loadbalancer::SERVICE_NAMESPACE_LABEL),
            label(loadbalancer::SERVICE_NAME_LABEL),
        ) else {
            continue;
        };
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
        if services.get_opt(svc).await?.is_some_and(|s| is_ours(&s)) {
            continue;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match leases.delete(name, &params).await {
            Ok(_) => {
                tracing::info!(lease = name, service = %format!("{ns}/{svc}"), "deleted the announcement lease of a Service that is gone")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a Service is a LoadBalancer this controller serves.
pub fn is_ours(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| loadbalancer::serves(s.type_.as_deref(), s.load_balancer_class.as_deref()))
}

fn requested_ip(svc: &Service) -> Option<&str> {
    svc.spec
        .as_ref()?
        .load_balancer_ip
        .as_deref()
        .filter(|s| !s.is_empty())
}

/// Why a Service got no address: the text of MetalLB's `AllocationFailed` Event.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoPools,
    NotInPool(String),
    InUse(Ipv4Addr),
    Exhausted,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoPools => write!(f, "no address pools configured (--service-lb-pool)"),
            Refusal::NotInPool(ip) => write!(f, "{ip:?} is not allowed in config"),
            Refusal::InUse(ip) => write!(f, "{ip} is already in use by another Service"),
            Refusal::Exhausted => write!(f, "no available IPs"),
        }
    }
}

/// The address a Service should get: the requested one if it is in a pool and free, else
/// (without a request) the lowest free address of the first pool that has one.
pub fn choose(
    pools: &[Ipv4Range],
    requested: Option<&str>,
    used: &HashSet<Ipv4Addr>,
) -> Result<Ipv4Addr, Refusal> {
    if pools.is_empty() {
        return Err(Refusal::NoPools);
    }
    if let Some(req) = requested {
        let ip: Ipv4Addr = req
            .parse()
            .map_err(|_| Refusal::NotInPool(req.to_string()))?;
        if !pools.iter().any(|p| p.contains(ip)) {
            return Err(Refusal::NotInPool(req.to_string()));
        }
        if used.contains(&ip) {
            return Err(Refusal::InUse(ip));
        }
        return Ok(ip);
    }
    pools
        .iter()
        .flat_map(Ipv4Range::addresses)
        .find(|ip| !used.contains(ip))
        .ok_or(Refusal::Exhausted)
}

/// Whether the address a Service holds still fits: in a pool, and the one it asks for.
fn holds_valid(svc: &Service, pools: &[Ipv4Range]) -> bool {
    let ips = ingress_ips(svc);
    let [ip] = ips.as_slice() else {
        return false;
    };
    pools.iter().any(|p| p.contains(*ip)) && requested_ip(svc).is_none_or(|r| r == ip.to_string())
}

/// Whether a Service's status holds an address out of our pools (which it keeps only while
/// it is one of ours).
fn holds_pool_address(svc: &Service, pools: &[Ipv4Range]) -> bool {
    ingress_ips(svc)
        .iter()
        .any(|ip| pools.iter().any(|p| p.contains(*ip)))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let pools = &ctx.config.lb_pools;
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(svc.as_ref(), &ctx));
    }
    if !is_ours(&svc) {
        // A class that is not ours is someone else's to fill in; a Service that stopped being
        // a LoadBalancer gives our address back.
        let not_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer");
        if not_lb && holds_pool_address(&svc, pools) {
            release(&svc, &ctx).await?;
        }
        return Ok(runtime::done(svc.as_ref(), &ctx));
    }
    if holds_valid(&svc, pools) {
        return Ok(runtime::done(svc.as_ref(), &ctx));
    }
    allocate(&svc, &ctx).await
}

/// The live Service (None when it is gone or was recreated) and every address any other
/// Service holds.
async fn live_and_used(
    svc: &Service,
    api: &Api<Service>,
) -> Result<Option<(Service, HashSet<Ipv4Addr>)>> {
    let all = Api::<Service>::all(api.clone().into_client());
    let services = all.list(&ListParams::default()).await?.items;
    let key = (&svc.metadata.namespace, &svc.metadata.name);
    let mut live = None;
    let mut used = HashSet::new();
    for s in services {
        if (&s.metadata.namespace, &s.metadata.name) == key {
            live = Some(s);
        } else {
            used.extend(ingress_ips(&s));
        }
    }
    Ok(live
        .filter(|l| l.metadata.uid == svc.metadata.uid)
        .map(|l| (l, used)))
}

async fn allocate(svc: &Service, ctx: &Context) -> Result<Action> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some((live, used)) = live_and_used(svc, &api).await? else {
        return Ok(runtime::done(svc, ctx));
    };
    if !is_ours(&live) || holds_valid(&live, &ctx.config.lb_pools) {
        return Ok(runtime::done(svc, ctx));
    }
    let ip = match choose(&ctx.config.lb_pools, requested_ip(&live), &used) {
        Ok(ip) => ip,
        Err(why) => {
            let message = format!("Failed to allocate IP for \"{ns}/{name}\": {why}");
            tracing::warn!(service = %format!("{ns}/{name}"), %why, "no LoadBalancer address");
            ctx.recorder
                .warning(&live, "AllocationFailed", message)
                .await;
            // Drop an address that no longer fits (a pool or the request changed).
            if holds_pool_address(&live, &ctx.config.lb_pools) {
                release(&live, ctx).await?;
            }
            ctx.backoff.succeeded(&runtime::key_of(svc));
            return Ok(Action::requeue(RETRY));
        }
    };
    // The resourceVersion makes this a compare-and-swap: a concurrent writer means retry.
    let patch = json!({
        "metadata": {"resourceVersion": live.metadata.resource_version},
        "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}},
    });
    if let Some(written) = runtime::merge_status(&api, &name, &patch).await? {
        tracing::info!(service = %format!("{ns}/{name}"), %ip, "allocated LoadBalancer address");
        ctx.recorder
            .normal(&written, "IPAllocated", format!("Assigned IP [\"{ip}\"]"))
            .await;
    }
    Ok(runtime::done(svc, ctx))
}

/// Clear `status.loadBalancer` (the address is free for others from then on).
async fn release(svc: &Service, ctx: &Context) -> Result<()> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "metadata": {"resourceVersion": svc.metadata.resource_version},
        "status": {"loadBalancer": {"ingress": null}},
    });
    if runtime::merge_status(&api, &name, &patch).await?.is_some() {
        tracing::info!(service = %format!("{ns}/{name}"), ips = ?ingress_ips(svc), "released LoadBalancer address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(specs: &[&str]) -> Vec<Ipv4Range> {
        specs.iter().map(|s| Ipv4Range::parse(s).unwrap()).collect()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_address_across_pools() {
        let p = pools(&["10.0.0.200-10.0.0.201", "192.0.2.0/30"]);
        let mut used = HashSet::new();
        assert_eq!(choose(&p, None, &used), Ok(ip("10.0.0.200")));
        used.insert(ip("10.0.0.200"));
        assert_eq!(choose(&p, None, &used), Ok(ip("10.0.0.201")));
        used.insert(ip("10.0.0.201"));
        // The /30's network address is left out.
        assert_eq!(choose(&p, None, &used), Ok(ip("192.0.2.1")));
        used.extend([ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(choose(&p, None, &used), Err(Refusal::Exhausted));
        assert_eq!(choose(&[], None, &used), Err(Refusal::NoPools));
    }

    #[test]
    fn requested_address_only_when_in_a_pool_and_free() {
        let p = pools(&["10.0.0.200-10.0.0.210"]);
        let used = HashSet::from([ip("10.0.0.205")]);
        assert_eq!(choose(&p, Some("10.0.0.207"), &used), Ok(ip("10.0.0.207")));
        assert_eq!(
            choose(&p, Some("10.0.0.205"), &used),
            Err(Refusal::InUse(ip("10.0.0.205")))
        );
        let refused = choose(&p, Some("10.0.0.9"), &used).unwrap_err();
        assert_eq!(refused.to_string(), "\"10.0.0.9\" is not allowed in config");
        assert!(matches!(
            choose(&p, Some("bogus"), &used),
            Err(Refusal::NotInPool(_))
        ));
    }

    fn service(ty: &str, class: Option<&str>, status_ip: Option<&str>) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"type": ty, "loadBalancerClass": class},
            "status": {"loadBalancer": {"ingress": status_ip.map(|i| vec![json!({"ip": i})])}},
        }))
        .unwrap()
    }

    #[test]
    fn our_class_or_none_only_load_balancers() {
        assert!(is_ours(&service("LoadBalancer", None, None)));
        assert!(is_ours(&service("LoadBalancer", Some(CLASS), None)));
        assert!(!is_ours(&service(
            "LoadBalancer",
            Some("example.com/other"),
            None
        )));
        assert!(!is_ours(&service("NodePort", None, None)));
    }

    #[test]
    fn a_held_address_stays_while_it_fits() {
        let p = pools(&["10.0.0.200-10.0.0.210"]);
        assert!(holds_valid(
            &service("LoadBalancer", None, Some("10.0.0.201")),
            &p
        ));
        // Out of every pool (the pools changed): allocated anew.
        assert!(!holds_valid(
            &service("LoadBalancer", None, Some("10.0.1.1")),
            &p
        ));
        assert!(!holds_valid(&service("LoadBalancer", None, None), &p));
        let mut asks_other = service("LoadBalancer", None, Some("10.0.0.201"));
        asks_other.spec.as_mut().unwrap().load_balancer_ip = Some("10.0.0.202".into());
        assert!(!holds_valid(&asks_other, &p));
        assert!(holds_pool_address(
            &service("ClusterIP", None, Some("10.0.0.201")),
            &p
        ));
        assert!(!holds_pool_address(
            &service("ClusterIP", None, Some("10.9.0.1")),
            &p
        ));
    }
}
