//! L2 announcement of LoadBalancer addresses, as Cilium's L2 announcements and MetalLB's
//! layer2 mode do it: for every `type: LoadBalancer` Service of skiff's class (see
//! [`skiff_common::loadbalancer`]) with an address in `status.loadBalancer.ingress`, the nodes
//! compete for the Lease `kube-system/skiff-l2announce-<namespace>-<name>` ([`election`]); the
//! holder answers ARP for the Service's addresses on its underlay link ([`arp`]) and sends
//! gratuitous ARP when it takes an address over. When the holder dies its Lease runs out and
//! another node takes over (the lease duration plus at most one retry period).
//!
//! Nothing is put in the kernel: the answers come from a packet socket that closes with the
//! process, so `skiff-agent cleanup` has nothing to remove. A Lease is labelled with its
//! Service, and the control plane deletes it once the Service is gone; one the node no longer
//! wants is released (no holder) at once.

pub mod arp;
pub mod election;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use skiff_common::events::EventRecorder;
use skiff_common::loadbalancer;

pub use self::arp::ArpEdge;
pub use self::election::{Candidate, Election, LeaseApi, Timing};

/// Whether `node` has a ready endpoint of Service `namespace/name` among `slices`.
pub fn has_local_endpoint(
    slices: &[Arc<EndpointSlice>],
    node: &str,
    namespace: &str,
    name: &str,
) -> bool {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.labels()
                    .get("kubernetes.io/service-name")
                    .map(String::as_str)
                    == Some(name)
        })
        .flat_map(|s| s.endpoints.iter())
        .any(|e| {
            e.node_name.as_deref() == Some(node)
                && e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
        })
}

/// The Services this node competes to announce: Lease name → the Service and its addresses.
/// With `externalTrafficPolicy: Local` only nodes with a ready local endpoint compete (as
/// Cilium does), since the others drop the Service's external traffic.
pub fn wanted(
    services: &[Arc<Service>],
    local: impl Fn(&str, &str) -> bool,
) -> BTreeMap<String, (Candidate, Vec<Ipv4Addr>)> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if !loadbalancer::serves(spec.type_.as_deref(), spec.load_balancer_class.as_deref())
            || svc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if spec.external_traffic_policy.as_deref() == Some("Local")
            && !local(&svc.namespace().unwrap_or_default(), &svc.name_any())
        {
            continue;
        }
        let ips = skiff_common::loadbalancer::ingress_ips(svc);
        if ips.is_empty() {
            continue;
        }
        let candidate = Candidate {
            namespace: svc.namespace().unwrap_or_default(),
            name: svc.name_any(),
            uid: svc.uid().unwrap_or_default(),
        };
        let lease = loadbalancer::lease_name(&candidate.namespace, &candidate.name);
        out.insert(lease, (candidate, ips));
    }
    out
}

/// One node's announcer: the election and the link.
pub struct Announcer {
    pub node_name: String,
    pub election: Election,
    pub edge: Arc<dyn ArpEdge>,
    announced: BTreeSet<Ipv4Addr>,
}

/// What a round changed, for Events.
#[derive(Debug, Default)]
pub struct Changes {
    /// Services this node took over: (namespace, name).
    pub acquired: Vec<(String, String)>,
}

impl Announcer {
    pub fn new(node_name: &str, timing: Timing, edge: Arc<dyn ArpEdge>) -> Announcer {
        Announcer {
            node_name: node_name.to_string(),
            election: Election::new(node_name, timing),
            edge,
            announced: BTreeSet::new(),
        }
    }

    /// One round: compete for the wanted Services' Leases, answer ARP for the addresses of
    /// those held, and announce the newly held addresses with gratuitous ARP.
    pub async fn round(
        &mut self,
        api: &dyn LeaseApi,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        now: Instant,
    ) -> Changes {
        let node = self.node_name.clone();
        let wanted = wanted(services, |ns, name| {
            has_local_endpoint(slices, &node, ns, name)
        });
        let candidates: BTreeMap<String, Candidate> = wanted
            .iter()
            .map(|(lease, (c, _))| (lease.clone(), c.clone()))
            .collect();
        let round = self.election.round(api, &candidates, now).await;
        for lease in &round.lost {
            tracing::info!(lease = %lease, "no longer announcing");
        }
        let addresses: BTreeSet<Ipv4Addr> = wanted
            .iter()
            .filter(|(lease, _)| self.election.holds(lease))
            .flat_map(|(_, (_, ips))| ips.iter().copied())
            .collect();
        let new: Vec<Ipv4Addr> = addresses.difference(&self.announced).copied().collect();
        if addresses != self.announced {
            self.edge.set_addresses(addresses.clone());
            self.announced = addresses;
        }
        for ip in new {
            if let Err(e) = self.edge.gratuitous(ip) {
                tracing::warn!(%ip, "gratuitous ARP: {e:#}");
            }
        }
        let acquired = round
            .acquired
            .iter()
            .filter_map(|lease| wanted.get(lease))
            .map(|(c, ips)| {
                tracing::info!(service = %format!("{}/{}", c.namespace, c.name), ?ips, "announcing");
                (c.namespace.clone(), c.name.clone())
            })
            .collect();
        Changes { acquired }
    }
}

/// A cache of the EndpointSlices (for `externalTrafficPolicy: Local`).
fn watch_slices(client: &Client) -> Store<EndpointSlice> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store::<EndpointSlice>();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(stream);
    store
}

/// The real Lease API: Leases in kube-system, with the node's client.
pub struct KubeLeases(pub Api<Lease>);

#[async_trait::async_trait]
impl LeaseApi for KubeLeases {
    async fn get(&self, name: &str) -> Result<Option<Lease>> {
        Ok(self.0.get_opt(name).await?)
    }

    async fn create(&self, lease: &Lease) -> Result<bool> {
        match self.0.create(&PostParams::default(), lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn replace(&self, lease: &Lease) -> Result<bool> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        match self.0.replace(&name, &PostParams::default(), lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Run the announcer for the life of the agent: a round every retry period over the
/// agent's Service cache, with MetalLB's `nodeAssigned` Event on every takeover.
pub async fn run(
    client: Client,
    services: Store<Service>,
    mut announcer: Announcer,
    timing: Timing,
) {
    let api = KubeLeases(Api::namespaced(
        client.clone(),
        loadbalancer::LEASE_NAMESPACE,
    ));
    let recorder =
        EventRecorder::new(client.clone(), "skiff-l2-announcer").with_host(&announcer.node_name);
    let slices = watch_slices(&client);
    let mut tick = tokio::time::interval(timing.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = services.state();
        let changes = announcer
            .round(&api, &state, &slices.state(), Instant::now())
            .await;
        for (ns, name) in changes.acquired {
            let Some(svc) = state
                .iter()
                .find(|s| s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == name)
            else {
                continue;
            };
            let message = format!(
                "announcing from node \"{}\" with protocol \"layer2\"",
                announcer.node_name
            );
            recorder.normal(svc.as_ref(), "nodeAssigned", message).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::arp::fake::FakeArp;
    use super::election::fake::FakeLeases;
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    const TIMING: Timing = Timing {
        lease_duration: Duration::from_secs(6),
        retry_period: Duration::from_secs(1),
    };

    fn lb(name: &str, class: Option<&str>, ip: Option<&str>) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": class},
                "status": {"loadBalancer": {"ingress": ip.map(|i| vec![json!({"ip": i})])}},
            }))
            .unwrap(),
        )
    }

    fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_our_load_balancers_with_an_address() {
        let services = [
            lb("web", None, Some("10.7.0.200")),
            lb("classed", Some("skiff.io/l2"), Some("10.7.0.201")),
            lb("other", Some("example.com/bgp"), Some("10.7.0.202")),
            lb("pending", None, None),
        ];
        let w = wanted(&services, |_, _| false);
        assert_eq!(
            w.keys().collect::<Vec<_>>(),
            [
                "skiff-l2announce-default-classed",
                "skiff-l2announce-default-web"
            ]
        );
    }

    #[tokio::test]
    async fn the_holder_answers_and_the_survivor_takes_over_with_gratuitous_arp() {
        let api = FakeLeases::default();
        let (arp_a, arp_b) = (Arc::new(FakeArp::default()), Arc::new(FakeArp::default()));
        let mut a = Announcer::new("a", TIMING, arp_a.clone());
        let mut b = Announcer::new("b", TIMING, arp_b.clone());
        let services = vec![lb("web", None, Some("10.7.0.200"))];
        let t0 = Instant::now();
        let changes = a.round(&api, &services, &[], t0).await;
        assert_eq!(
            changes.acquired,
            [("default".to_string(), "web".to_string())]
        );
        b.round(&api, &services, &[], t0).await;
        assert_eq!(*arp_a.addresses.lock().unwrap(), ips(&["10.7.0.200"]));
        assert_eq!(
            *arp_a.gratuitous.lock().unwrap(),
            [ips(&["10.7.0.200"]).pop_first().unwrap()]
        );
        assert!(arp_b.addresses.lock().unwrap().is_empty());
        // a stops (its agent died); b answers within the lease duration and one retry.
        let mut took = None;
        for s in 1..=10 {
            b.round(&api, &services, &[], t0 + Duration::from_secs(s))
                .await;
            if !arp_b.addresses.lock().unwrap().is_empty() {
                took = Some(s);
                break;
            }
        }
        assert!(took.is_some_and(|s| s <= 7), "{took:?}");
        assert_eq!(arp_b.gratuitous.lock().unwrap().len(), 1);
        // The Service goes away: b stops answering and lets the Lease go.
        b.round(&api, &[], &[], t0 + Duration::from_secs(20)).await;
        assert!(arp_b.addresses.lock().unwrap().is_empty());
        assert_eq!(api.holder("skiff-l2announce-default-web"), None);
    }

    #[tokio::test]
    async fn a_new_address_of_a_held_service_is_announced_too() {
        let api = FakeLeases::default();
        let arp = Arc::new(FakeArp::default());
        let mut a = Announcer::new("a", TIMING, arp.clone());
        let t0 = Instant::now();
        a.round(&api, &[lb("web", None, Some("10.7.0.200"))], &[], t0)
            .await;
        a.round(
            &api,
            &[lb("web", None, Some("10.7.0.205"))],
            &[],
            t0 + TIMING.retry_period,
        )
        .await;
        assert_eq!(*arp.addresses.lock().unwrap(), ips(&["10.7.0.205"]));
        assert_eq!(arp.gratuitous.lock().unwrap().len(), 2);
    }

    #[test]
    fn local_traffic_policy_only_on_nodes_with_a_ready_endpoint() {
        let mut local = (*lb("web", None, Some("10.7.0.200"))).clone();
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let services = [Arc::new(local)];
        let slice = |node: &str, ready: bool| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("web-{node}"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": node,
                        "conditions": {"ready": ready}}],
                }))
                .unwrap(),
            )
        };
        let slices = [slice("a", true), slice("b", false)];
        let on = |node: &str| {
            wanted(&services, |ns, name| {
                has_local_endpoint(&slices, node, ns, name)
            })
            .len()
        };
        assert_eq!((on("a"), on("b"), on("c")), (1, 0, 0));
    }
}
