//! Endpoints controller: for every Service with a selector, an Endpoints object of the same
//! name listing the selected pods' IPs (ready ones in `addresses`, the others in
//! `notReadyAddresses`), with the service's ports resolved per pod and pods grouped into
//! subsets by their resolved ports, as kube-controller-manager's endpoint-controller keeps it.
//!
//! Also home of the helpers the EndpointSlice, DaemonSet and Job controllers share: service
//! port resolution, pod → service mapping, and the stream of deletions (the shared informers
//! only announce objects that still exist).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinSet;

use super::pod_state;
use crate::runtime::{self, Context, Result};

/// The label kube puts on the Endpoints (and slices) of headless services.
pub(super) const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Services synced at once (Endpoints and EndpointSlices alike). A sync is one cheap
/// computation and at most a write or two, so the time goes into waiting for the API; many
/// in flight is what lets one pod change reach a thousand services quickly (the store
/// commits concurrent writes together).
pub(super) const WORKERS: u16 = 32;

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    // The Endpoints we write, cached: to skip unchanged writes, to notice pods that left a
    // service, and to put back an Endpoints object somebody else changed or deleted.
    let (ep_store, ep_writer) = reflector::store::<Endpoints>();
    let ep_events = reflector::reflector(
        ep_writer,
        watcher(
            Api::<Endpoints>::all(ctx.client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let services = informers.services.store();
    let (pod_map, deleted_pod_map) = PodTracker::mappers(services.clone());
    let controller = Controller::for_shared_stream(informers.services.subscribe(), services)
        .watches_shared_stream(informers.pods.subscribe(), pod_map)
        .watches_stream(deletions(&informers.pods), deleted_pod_map)
        .watches_stream(ep_events, |ep: Endpoints| {
            let ns = ep.metadata.namespace.unwrap_or_default();
            ep.metadata
                .name
                .map(|name| ObjectRef::<Service>::new(&name).within(&ns))
        });
    spawn_cleanup(ctx.clone(), ep_store.clone(), tasks);
    let eps = ep_store;
    runtime::drive(
        "endpoints",
        controller,
        ctx,
        WORKERS,
        move |svc, ctx| reconcile(svc, ctx, eps.clone()),
        tasks,
    );
}

/// Endpoints go with their Service: deleted when it is (kube deletes them in the sync of a
/// missing service), and leftovers of services deleted while no controller ran are removed
/// once the caches are filled.
fn spawn_cleanup(ctx: Arc<Context>, eps: Store<Endpoints>, tasks: &mut JoinSet<()>) {
    let services = ctx.informers.services.store();
    let client = ctx.client.clone();
    let deleted = deletions(&ctx.informers.services);
    tasks.spawn(async move {
        let leftovers = async {
            if runtime::cache_ready(&services).await.is_err()
                || runtime::cache_ready(&eps).await.is_err()
            {
                return;
            }
            for ep in eps.state() {
                let Some((ns, name)) = namespaced_name(&ep.metadata) else {
                    continue;
                };
                if services.get(&ObjectRef::new(name).within(ns)).is_none() {
                    delete_endpoints(&client, ns, name).await;
                }
            }
        };
        let on_delete = deleted.for_each(|svc| {
            let (client, services) = (client.clone(), services.clone());
            async move {
                let Ok(svc) = svc else { return };
                let Some((ns, name)) = namespaced_name(&svc.metadata) else {
                    return;
                };
                // Recreated meanwhile: its own sync owns the Endpoints now.
                if services.get(&ObjectRef::new(name).within(ns)).is_none() {
                    delete_endpoints(&client, ns, name).await;
                }
            }
        });
        futures::join!(leftovers, on_delete);
    });
}

async fn delete_endpoints(client: &Client, ns: &str, name: &str) {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::debug!(
            namespace = ns,
            name,
            "deleted endpoints of a deleted service"
        ),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(namespace = ns, name, error = %e, "could not delete endpoints"),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>, eps: Store<Endpoints>) -> Result<Action> {
    // Services without a selector have user-managed Endpoints.
    let Some(service) = SelectedService::of(&svc) else {
        return Ok(runtime::done(svc.as_ref(), &ctx));
    };
    let subsets = subsets(&service, &ctx.informers.pods.store().state());
    let labels = service.labels();
    let (ns, name) = (service.ns, service.name);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let cached = eps.get(&ObjectRef::new(name).within(ns));
    let current = match cached {
        Some(ep) => Some(ep.as_ref().clone()),
        None => api.get_opt(name).await?,
    };
    match current {
        Some(current) => update_endpoints(&api, &service, current, labels, subsets).await?,
        None => create_endpoints(&api, &service, labels, subsets).await?,
    }
    Ok(runtime::done(svc.as_ref(), &ctx))
}

/// The subsets of the service's Endpoints: its pods' addresses grouped by their resolved
/// ports, ready and not-ready apart, as RepackSubsets leaves them. Terminating pods are left
/// out (EndpointSlices list them, as terminating).
fn subsets(service: &SelectedService<'_>, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    // Resolved ports → (ready, not ready) addresses.
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<PortKey>, Group> = BTreeMap::new();
    for (pod, ip, ports) in service.endpoint_pods(pods) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let address = EndpointAddress {
            ip: ip.to_string(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            hostname: pod_hostname(pod, service.name),
            target_ref: Some(pod_reference(pod)),
        };
        let group = groups.entry(ports).or_default();
        if service.publish_not_ready || pod_state::is_pod_ready(pod) {
            group.0.push(address);
        } else {
            group.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty())
                    .then(|| ports.into_iter().map(PortKey::into_endpoint_port).collect()),
            }
        })
        .collect()
}

/// Replace `current` when its labels or subsets differ from what they should be.
async fn update_endpoints(
    api: &Api<Endpoints>,
    service: &SelectedService<'_>,
    current: Endpoints,
    labels: BTreeMap<String, String>,
    subsets: Vec<EndpointSubset>,
) -> Result<()> {
    let same_labels = current.metadata.labels.clone().unwrap_or_default() == labels;
    if same_labels && normalized(&current.subsets) == normalized(&Some(subsets.clone())) {
        return Ok(());
    }
    let mut updated = current;
    updated.metadata.labels = Some(labels);
    updated.subsets = Some(subsets);
    // Optimistic concurrency: a stale cache ends in a 409 and a quick retry.
    api.replace(service.name, &PostParams::default(), &updated)
        .await?;
    tracing::debug!(namespace = %service.ns, service = %service.name, "updated endpoints");
    Ok(())
}

async fn create_endpoints(
    api: &Api<Endpoints>,
    service: &SelectedService<'_>,
    labels: BTreeMap<String, String>,
    subsets: Vec<EndpointSubset>,
) -> Result<()> {
    let ep = Endpoints {
        metadata: ObjectMeta {
            name: Some(service.name.to_string()),
            namespace: Some(service.ns.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        subsets: Some(subsets),
    };
    match api.create(&PostParams::default(), &ep).await {
        Ok(_) => {
            tracing::debug!(namespace = %service.ns, service = %service.name, "created endpoints");
            Ok(())
        }
        // Made meanwhile (the cache lags): the watch brings us back to update it.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Err(runtime::Error::other("endpoints appeared meanwhile"))
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (endpoints, endpoint slices, workload controllers).

/// A Service with a selector as the endpoint controllers read it.
pub(super) struct SelectedService<'a> {
    pub svc: &'a Service,
    pub ns: &'a str,
    pub name: &'a str,
    pub selector: &'a BTreeMap<String, String>,
    /// `clusterIP: None`: endpoints carry the headless label, and port-less services count.
    pub headless: bool,
    /// `publishNotReadyAddresses`: every endpoint counts as ready.
    pub publish_not_ready: bool,
    pub ports: &'a [ServicePort],
}

impl<'a> SelectedService<'a> {
    /// `None` for a service without a (non-empty) selector, whose endpoints are not ours.
    pub fn of(svc: &'a Service) -> Option<SelectedService<'a>> {
        let selector = service_selector(svc)?;
        let spec = svc.spec.as_ref();
        Some(SelectedService {
            svc,
            ns: svc.metadata.namespace.as_deref().unwrap_or_default(),
            name: svc.metadata.name.as_deref().unwrap_or_default(),
            selector,
            headless: spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
            publish_not_ready: spec.and_then(|s| s.publish_not_ready_addresses) == Some(true),
            ports: spec.and_then(|s| s.ports.as_deref()).unwrap_or_default(),
        })
    }

    /// The pods this service selects that can be endpoints (not finished, with an IPv4
    /// address, serving its ports), with that address and their resolved ports.
    pub fn endpoint_pods<'p>(
        &'p self,
        pods: &'p [Arc<Pod>],
    ) -> impl Iterator<Item = (&'p Pod, &'p str, Vec<PortKey>)> + 'p {
        pods.iter()
            .map(Arc::as_ref)
            .filter(|pod| {
                pod.metadata.namespace.as_deref() == Some(self.ns)
                    && labels_match(self.selector, pod.metadata.labels.as_ref())
                    && !is_pod_terminal(pod)
            })
            .filter_map(|pod| {
                let ip = pod_ip(pod)?;
                let ports = resolved_ports(pod, self.ports, self.headless)?;
                Some((pod, ip, ports))
            })
    }

    /// The labels of the endpoints: the service's own, with the headless label when it is.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.svc.metadata.labels.clone().unwrap_or_default();
        if self.headless {
            labels.insert(HEADLESS_LABEL.to_string(), String::new());
        } else {
            labels.remove(HEADLESS_LABEL);
        }
        labels
    }
}

/// The namespace and name of an object, when it has both.
pub(super) fn namespaced_name(meta: &ObjectMeta) -> Option<(&str, &str)> {
    Some((meta.namespace.as_deref()?, meta.name.as_deref()?))
}

/// A resolved service port, sortable so pods can be grouped by their port sets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PortKey {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl PortKey {
    pub fn new(sp: &ServicePort, port: i32) -> PortKey {
        PortKey {
            name: sp.name.clone().unwrap_or_default(),
            port,
            protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
            app_protocol: sp.app_protocol.clone(),
        }
    }

    fn into_endpoint_port(self) -> EndpointPort {
        EndpointPort {
            name: (!self.name.is_empty()).then_some(self.name),
            port: self.port,
            protocol: Some(self.protocol),
            app_protocol: self.app_protocol,
        }
    }
}

/// The service's selector, if it has a non-empty one (services without one are left alone).
/// The service ports as this pod serves them (named target ports looked up in its
/// containers), sorted and deduplicated; `None` when the pod serves none of them. Only a
/// headless service may have no ports at all, and its pods still count.
pub(super) fn resolved_ports(
    pod: &Pod,
    svc_ports: &[ServicePort],
    headless: bool,
) -> Option<Vec<PortKey>> {
    if svc_ports.is_empty() {
        return headless.then(Vec::new);
    }
    let mut ports: Vec<PortKey> = svc_ports
        .iter()
        .filter_map(|sp| find_port(pod, sp).map(|port| PortKey::new(sp, port)))
        .collect();
    if ports.is_empty() {
        return None;
    }
    ports.sort();
    ports.dedup();
    Some(ports)
}

pub(super) fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Whether every `selector` pair is among `labels`.
pub(super) fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(labels) = labels else {
        return selector.is_empty();
    };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Succeeded or Failed: never an endpoint again.
pub(super) fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod's IPv4 address, if it has one.
pub(super) fn pod_ip(pod: &Pod) -> Option<&str> {
    let status = pod.status.as_ref()?;
    let primary = status.pod_ip.as_deref().filter(|ip| !ip.is_empty());
    primary
        .into_iter()
        .chain(
            status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .filter(|ip| !ip.is_empty()),
        )
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
}

/// The hostname a headless service publishes for a pod (`spec.hostname` when the pod's
/// `spec.subdomain` names the service).
pub(super) fn pod_hostname(pod: &Pod, service: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(service)).then(|| hostname.to_string())
}

pub(super) fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The pod port a service port reaches (kube's `podutil.FindPort`): a number as is, a name
/// looked up among the containers' (and sidecars') ports of the same protocol.
pub(super) fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(0)) => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = sp.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// Maps pod events to the services they matter to, as kube's endpoint controllers do with
/// the old and new pod of an update: the services whose selector matches the pod's labels now
/// or its labels at its previous event (it changed labels, or it went away) — and none at all
/// when nothing an endpoint shows of the pod changed (most pod updates are container
/// statuses), so a pod behind a thousand services does not cost a thousand syncs per status
/// write. Services are found by matching selectors at event time (a service created since the
/// pod's last event counts too), never by scanning the endpoints written for every service.
#[derive(Default)]
pub(super) struct PodTracker {
    /// `namespace/name` → what endpoints show of the pod and its labels, at its last event.
    last: Mutex<HashMap<String, LastSeen>>,
}

/// A hash of what endpoints show of a pod, and its labels.
type LastSeen = (u64, Option<BTreeMap<String, String>>);

type PodMapper<P> = Box<dyn Fn(P) -> Vec<ObjectRef<Service>> + Send + Sync>;

impl PodTracker {
    /// The mappers for applied and for deleted pods, sharing one tracker.
    pub(super) fn mappers(
        services: Store<Service>,
    ) -> (PodMapper<Arc<Pod>>, PodMapper<PartialObjectMeta<Pod>>) {
        let tracker = Arc::new(PodTracker::default());
        let applied = {
            let (tracker, services) = (tracker.clone(), services.clone());
            Box::new(move |pod: Arc<Pod>| tracker.applied(&services, &pod)) as PodMapper<_>
        };
        let deleted =
            Box::new(move |pod: PartialObjectMeta<Pod>| tracker.deleted(&services, &pod.metadata))
                as PodMapper<_>;
        (applied, deleted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LastSeen>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn applied(&self, services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let key = format!("{ns}/{}", pod.metadata.name.as_deref().unwrap_or(""));
        let shown = endpoint_fingerprint(pod);
        let labels = pod.metadata.labels.clone();
        let previous = self.lock().insert(key, (shown, labels));
        let mut names = selecting_services(services, ns, pod.metadata.labels.as_ref());
        match previous {
            Some((before, _)) if before == shown => return Vec::new(),
            Some((_, old_labels)) if old_labels.as_ref() != pod.metadata.labels.as_ref() => {
                names.extend(selecting_services(services, ns, old_labels.as_ref()));
            }
            _ => {}
        }
        refs(ns, names)
    }

    fn deleted(&self, services: &Store<Service>, pod: &ObjectMeta) -> Vec<ObjectRef<Service>> {
        let ns = pod.namespace.as_deref().unwrap_or("");
        let key = format!("{ns}/{}", pod.name.as_deref().unwrap_or(""));
        let mut names = selecting_services(services, ns, pod.labels.as_ref());
        if let Some((_, old_labels)) = self.lock().remove(&key) {
            names.extend(selecting_services(services, ns, old_labels.as_ref()));
        }
        refs(ns, names)
    }
}

fn refs(ns: &str, names: BTreeSet<String>) -> Vec<ObjectRef<Service>> {
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(ns))
        .collect()
}

/// A hash of everything of a pod that Endpoints or EndpointSlices show: identity, labels,
/// addresses, readiness, termination, placement, hostname and container ports.
fn endpoint_fingerprint(pod: &Pod) -> u64 {
    use std::hash::{Hash, Hasher};
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let ports: Vec<_> = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .map(|c| (c.restart_policy.as_deref(), &c.ports))
        .collect();
    let shown = serde_json::to_vec(&(
        &pod.metadata.uid,
        &pod.metadata.labels,
        pod.metadata.deletion_timestamp.is_some(),
        status.and_then(|s| s.phase.as_deref()),
        status.map(|s| (&s.pod_ip, &s.pod_ips)),
        pod_state::is_pod_ready(pod),
        spec.map(|s| (&s.node_name, &s.hostname, &s.subdomain)),
        ports,
    ))
    .unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    shown.hash(&mut hasher);
    hasher.finish()
}

/// Names of the services in `ns` whose selector matches `labels`.
pub(super) fn selecting_services(
    services: &Store<Service>,
    ns: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> BTreeSet<String> {
    services
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
        .filter(|s| service_selector(s).is_some_and(|sel| labels_match(sel, labels)))
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}

/// Deletions of `K` (metadata only) from its shared informer, in the shape the controllers'
/// `watches_stream` mappers take. They arrive after the informer's cache has dropped the
/// object, so a reconcile they trigger does not see it still there.
pub(super) fn deletions<K>(
    informer: &crate::runtime::Informer<K>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    use kube::core::PartialObjectMetaExt;
    informer
        .deletions()
        .map(|obj| Ok(obj.meta().clone().into_request_partial::<K>()))
}

/// A value as JSON without nulls and empty arrays/objects, so what we computed compares equal
/// to what the API server stored (which drops or keeps empty lists as it likes).
pub(super) fn normalized<T: Serialize>(value: &T) -> Value {
    fn strip(v: Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Array(a) => {
                let a: Vec<Value> = a.into_iter().filter_map(strip).collect();
                (!a.is_empty()).then_some(Value::Array(a))
            }
            Value::Object(o) => {
                let o: serde_json::Map<String, Value> = o
                    .into_iter()
                    .filter_map(|(k, v)| strip(v).map(|v| (k, v)))
                    .collect();
                (!o.is_empty()).then_some(Value::Object(o))
            }
            other => Some(other),
        }
    }
    serde_json::to_value(value)
        .ok()
        .and_then(strip)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ports: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": ports}]}}))
        .unwrap()
    }

    #[test]
    fn ports_resolve_by_number_and_name() {
        let p = pod(json!([{"name": "http", "containerPort": 8080}]));
        let sp = |v: Value| -> ServicePort {
            serde_json::from_value(json!({"port": 80, "targetPort": v})).unwrap()
        };
        assert_eq!(find_port(&p, &sp(json!(9000))), Some(9000));
        assert_eq!(find_port(&p, &sp(json!("http"))), Some(8080));
        assert_eq!(find_port(&p, &sp(json!("grpc"))), None);
        let udp: ServicePort =
            serde_json::from_value(json!({"port": 80, "targetPort": "http", "protocol": "UDP"}))
                .unwrap();
        assert_eq!(find_port(&p, &udp), None);
    }

    #[test]
    fn normalization_ignores_empty_lists() {
        assert_eq!(
            normalized(&json!({"a": [], "b": null, "c": [{"d": []}], "e": 1})),
            json!({"e": 1})
        );
    }
}
