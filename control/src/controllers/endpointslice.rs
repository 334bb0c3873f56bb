//! EndpointSlice controller: for every Service with a selector, IPv4 EndpointSlices named
//! `<service>-<random>` (labelled with the service name and this controller, owned by the
//! Service) holding one endpoint per selected pod with an IP: conditions ready / serving /
//! terminating (terminating pods stay listed, for graceful connection draining), node, zone
//! and pod reference. Pods are grouped by their resolved ports (one set of slices per port
//! set), at most 100 endpoints a slice; endpoints stay in the slice they are in, slices are
//! updated in place and emptied ones deleted, as kube's endpointslice-controller does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinSet;

use super::endpoints::{
    PodTracker, PortKey, SelectedService, WORKERS, deletions, namespaced_name, normalized,
    pod_hostname, pod_reference,
};
use super::{owners, pod_state};
use crate::runtime::{self, Context, Result};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// How long a slice we created (deleted) may be missing from (still be in) the cache before we
/// stop waiting for the cache and act anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Slices we created or deleted that the cache has not caught up with, per service
/// (`namespace/name`): acting on a stale cache would create duplicates.
#[derive(Default)]
struct Expectations {
    pending: Mutex<HashMap<String, Vec<Expected>>>,
}

/// A slice name, whether we created (or deleted) it, and when.
type Expected = (String, bool, Instant);

/// A slice to write: the existing one to update (or none to create), ports, endpoints.
type SliceWrite = (Option<Arc<EndpointSlice>>, Vec<PortKey>, Vec<Endpoint>);

impl Expectations {
    fn expect(&self, svc: &str, slice: &str, created: bool) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(svc.to_string())
            .or_default()
            .push((slice.to_string(), created, Instant::now()));
    }

    /// Whether the cache shows everything we did for `svc`.
    fn satisfied(&self, svc: &str, cache: &Store<EndpointSlice>, ns: &str) -> bool {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(svc) else {
            return true;
        };
        list.retain(|(name, created, at)| {
            let cached = cache.get(&ObjectRef::new(name).within(ns)).is_some();
            cached != *created && at.elapsed() < EXPECTATION_TIMEOUT
        });
        let ok = list.is_empty();
        if ok {
            map.remove(svc);
        }
        ok
    }
}

/// Our slices' names per service (`namespace/name`), kept from the slice events and our own
/// creations, so a sync looks up its service's few slices instead of scanning every slice in
/// the cache (which made syncing every service O(services × slices): the bulk of the work when
/// one pod change reaches a thousand services). Only a hint: each name is checked against the
/// cache, and a service with none recorded is looked up by a full scan.
#[derive(Default)]
struct SliceIndex {
    by_service: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl SliceIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.by_service.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, service: &str, slice: &str) {
        self.lock()
            .entry(service.to_string())
            .or_default()
            .insert(slice.to_string());
    }

    fn remove(&self, service: &str, slice: &str) {
        let mut map = self.lock();
        if let Some(names) = map.get_mut(service) {
            names.remove(slice);
            if names.is_empty() {
                map.remove(service);
            }
        }
    }

    fn slices(&self, service: &str) -> Vec<String> {
        self.lock()
            .get(service)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The service's IPv4 slices in the cache, sorted by name: looked up by the names
    /// recorded (forgetting those the cache no longer has), or found by a full scan, whose
    /// result is recorded, when none are.
    fn cached_slices(
        &self,
        cache: &Store<EndpointSlice>,
        key: &str,
        ns: &str,
        name: &str,
    ) -> Vec<Arc<EndpointSlice>> {
        let known = self.slices(key);
        let candidates: Vec<Arc<EndpointSlice>> = if known.is_empty() {
            cache.state()
        } else {
            known
                .iter()
                .filter_map(|n| {
                    let slice = cache.get(&ObjectRef::new(n).within(ns));
                    if slice.is_none() {
                        self.remove(key, n);
                    }
                    slice
                })
                .collect()
        };
        let mut v: Vec<_> = candidates
            .into_iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && managed(&s.metadata) == Some(name)
                    && s.address_type == "IPv4"
            })
            .collect();
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        if known.is_empty() {
            for slice in &v {
                if let Some(n) = slice.metadata.name.as_deref() {
                    self.add(key, n);
                }
            }
        }
        v
    }

    /// Record a slice event; the service it belongs to.
    fn observe(&self, meta: &ObjectMeta, deleted: bool) -> Option<ObjectRef<Service>> {
        let svc = service_of_slice(meta)?;
        if let Some(name) = meta.name.as_deref() {
            let key = format!("{}/{}", svc.namespace.as_deref().unwrap_or(""), svc.name);
            if deleted {
                self.remove(&key, name);
            } else {
                self.add(&key, name);
            }
        }
        Some(svc)
    }
}

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let services = informers.services.store();
    let (pod_map, deleted_pod_map) = PodTracker::mappers(services.clone());
    let index = Arc::new(SliceIndex::default());
    let controller = Controller::for_shared_stream(informers.services.subscribe(), services)
        .watches_shared_stream(informers.pods.subscribe(), pod_map)
        .watches_stream(deletions(&informers.pods), deleted_pod_map)
        .watches_shared_stream(informers.endpoint_slices.subscribe(), {
            let index = index.clone();
            move |slice: Arc<EndpointSlice>| index.observe(&slice.metadata, false)
        })
        .watches_stream(deletions(&informers.endpoint_slices), {
            let index = index.clone();
            move |slice: PartialObjectMeta<EndpointSlice>| index.observe(&slice.metadata, true)
        });
    spawn_cleanup(ctx.clone(), tasks);
    let expectations = Arc::new(Expectations::default());
    runtime::drive(
        "endpointslice",
        controller,
        ctx,
        WORKERS,
        move |svc, ctx| reconcile(svc, ctx, expectations.clone(), index.clone()),
        tasks,
    );
}

fn managed(meta: &ObjectMeta) -> Option<&str> {
    let labels = meta.labels.as_ref()?;
    (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .then(|| labels.get(SERVICE_NAME_LABEL).map(String::as_str))
        .flatten()
}

fn service_of_slice(meta: &ObjectMeta) -> Option<ObjectRef<Service>> {
    let svc = managed(meta)?;
    Some(ObjectRef::new(svc).within(meta.namespace.as_deref()?))
}

/// Slices are owned by their Service (the garbage collector would remove them); deleting them
/// with the Service keeps a cluster without the garbage collector clean too.
fn spawn_cleanup(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let deleted = deletions(&ctx.informers.services);
    tasks.spawn(async move {
        use futures::StreamExt;
        deleted
            .for_each(|svc| {
                let ctx = ctx.clone();
                async move {
                    let Ok(svc) = svc else { return };
                    let Some((ns, name)) = namespaced_name(&svc.metadata) else {
                        return;
                    };
                    let uid = svc.metadata.uid.as_deref();
                    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
                    for slice in ctx.informers.endpoint_slices.store().state() {
                        let owned = slice
                            .metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|r| r.kind == "Service" && Some(r.uid.as_str()) == uid);
                        if slice.metadata.namespace.as_deref() != Some(ns)
                            || managed(&slice.metadata) != Some(name)
                            || !owned
                        {
                            continue;
                        }
                        let Some(slice_name) = slice.metadata.name.as_deref() else {
                            continue;
                        };
                        match api.delete(slice_name, &DeleteParams::default()).await {
                            Ok(_) | Err(kube::Error::Api(_)) => {}
                            Err(e) => tracing::debug!(error = %e, "could not delete slice"),
                        }
                    }
                }
            })
            .await;
    });
}

async fn reconcile(
    svc: Arc<Service>,
    ctx: Arc<Context>,
    expectations: Arc<Expectations>,
    index: Arc<SliceIndex>,
) -> Result<Action> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let cache = ctx.informers.endpoint_slices.store();
    if !expectations.satisfied(&key, &cache, &ns) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let existing = index.cached_slices(&cache, &key, &ns, &name);
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);

    let Some(service) = SelectedService::of(&svc) else {
        // No selector (any more): slices are somebody else's business, ours go.
        for slice in &existing {
            delete_slice(&api, slice, &key, &expectations).await?;
        }
        return Ok(runtime::done(svc.as_ref(), &ctx));
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(svc.as_ref(), &ctx));
    }
    let desired = desired_endpoints(
        &service,
        &ctx.informers.pods.store().state(),
        &ctx.informers.nodes.store(),
    );
    let (to_write, to_delete) = plan_slices(desired, &existing);
    let writer = SliceWriter {
        api: &api,
        service: &service,
        labels: slice_labels(&service),
        key: &key,
        expectations: &expectations,
        index: &index,
    };
    for (current, ports, endpoints) in to_write {
        writer.write(current, ports, endpoints).await?;
    }
    for slice in &to_delete {
        delete_slice(&api, slice, &key, &expectations).await?;
    }
    Ok(runtime::done(svc.as_ref(), &ctx))
}

/// Port set → pod uid → endpoint.
type Desired = BTreeMap<Vec<PortKey>, BTreeMap<String, Endpoint>>;

/// The endpoints the service's slices should hold, by port set and pod.
fn desired_endpoints(
    service: &SelectedService<'_>,
    pods: &[Arc<Pod>],
    nodes: &Store<Node>,
) -> Desired {
    let mut desired = Desired::new();
    for (pod, ip, ports) in service.endpoint_pods(pods) {
        let endpoint = pod_endpoint(service, pod, ip, nodes);
        let uid = pod.metadata.uid.clone().unwrap_or_else(|| ip.to_string());
        desired.entry(ports).or_default().insert(uid, endpoint);
    }
    if prefers_close(service.svc) {
        hint_own_zones(&mut desired);
    }
    desired
}

/// `trafficDistribution: PreferClose` (and its newer name `PreferSameZone`).
fn prefers_close(svc: &Service) -> bool {
    let distribution = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref());
    matches!(distribution, Some("PreferClose" | "PreferSameZone"))
}

/// The PreferClose heuristic of kube-controller-manager's EndpointSlice controller: every
/// endpoint is hinted for its own zone, or, when one of them has no zone, none is hinted
/// (a proxy then ignores topology for the Service).
fn hint_own_zones(desired: &mut Desired) {
    let endpoints = || desired.values().flat_map(|eps| eps.values());
    if endpoints().any(|e| e.zone.is_none()) {
        return;
    }
    for e in desired.values_mut().flat_map(|eps| eps.values_mut()) {
        e.hints = e.zone.clone().map(|zone| EndpointHints {
            for_zones: Some(vec![ForZone { name: zone }]),
            ..Default::default()
        });
    }
}

/// A pod as an endpoint: a terminating pod stays listed (for connection draining) but is not
/// ready, unless the service publishes not-ready addresses.
fn pod_endpoint(
    service: &SelectedService<'_>,
    pod: &Pod,
    ip: &str,
    nodes: &Store<Node>,
) -> Endpoint {
    let serving = pod_state::is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let zone = node_name
        .as_deref()
        .and_then(|n| nodes.get(&ObjectRef::<Node>::new(n)))
        .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(service.publish_not_ready || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: pod_hostname(pod, service.name),
        node_name,
        target_ref: Some(pod_reference(pod)),
        zone,
        ..Default::default()
    }
}

/// The service's labels (headless or not), the service name and this controller.
fn slice_labels(service: &SelectedService<'_>) -> BTreeMap<String, String> {
    let mut labels = service.labels();
    labels.insert(SERVICE_NAME_LABEL.to_string(), service.name.to_string());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels
}

/// Which slices to write and which to delete so that the service's slices hold `desired`:
/// per port set, endpoints stay in the slice they are in, new ones fill the room left, then
/// new slices of at most 100; slices left empty go, except that a service without endpoints
/// keeps one empty placeholder slice.
fn plan_slices(
    mut desired: Desired,
    existing: &[Arc<EndpointSlice>],
) -> (Vec<SliceWrite>, Vec<Arc<EndpointSlice>>) {
    // Existing slices by their port set.
    let mut by_ports: BTreeMap<Vec<PortKey>, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in existing {
        by_ports
            .entry(slice_port_keys(slice))
            .or_default()
            .push(slice.clone());
    }
    // No endpoints at all: one empty placeholder slice (reusing one if there is any).
    if desired.is_empty() {
        let placeholder_ports = existing
            .first()
            .map(|s| slice_port_keys(s))
            .unwrap_or_default();
        desired.insert(placeholder_ports, BTreeMap::new());
    }

    let mut to_write: Vec<SliceWrite> = Vec::new();
    let mut to_delete: Vec<Arc<EndpointSlice>> = Vec::new();
    let placeholder = desired.values().all(BTreeMap::is_empty);
    for (ports, want) in desired {
        let slices = by_ports.remove(&ports).unwrap_or_default();
        let port_set = PortSetPlan { ports, placeholder };
        port_set.plan(want, slices, &mut to_write, &mut to_delete);
    }
    to_delete.extend(by_ports.into_values().flatten());
    (to_write, to_delete)
}

/// Planning the slices of one port set.
struct PortSetPlan {
    ports: Vec<PortKey>,
    /// The service has no endpoints at all, and keeps one empty slice.
    placeholder: bool,
}

impl PortSetPlan {
    /// Put the endpoints `want` into `slices` (this port set's existing slices) and new ones.
    fn plan(
        &self,
        mut want: BTreeMap<String, Endpoint>,
        slices: Vec<Arc<EndpointSlice>>,
        to_write: &mut Vec<SliceWrite>,
        to_delete: &mut Vec<Arc<EndpointSlice>>,
    ) {
        let mut kept = keep_in_place(slices, &mut want);
        let mut rest = want.into_values();
        for (_, eps) in kept.iter_mut() {
            while eps.len() < MAX_ENDPOINTS_PER_SLICE {
                match rest.next() {
                    Some(ep) => eps.push(ep),
                    None => break,
                }
            }
        }
        let rest: Vec<Endpoint> = rest.collect();
        let mut placeholder_kept = false;
        for (slice, eps) in kept {
            // An empty slice goes, unless it is the one placeholder a service without
            // endpoints keeps.
            let keep_as_placeholder = self.placeholder && !placeholder_kept;
            if eps.is_empty() && !keep_as_placeholder {
                to_delete.push(slice);
                continue;
            }
            let ports = if self.placeholder {
                Vec::new()
            } else {
                self.ports.clone()
            };
            placeholder_kept = true;
            to_write.push((Some(slice), ports, eps));
        }
        for chunk in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
            to_write.push((None, self.ports.clone(), chunk.to_vec()));
        }
        if self.placeholder && !placeholder_kept {
            to_write.push((None, Vec::new(), Vec::new()));
        }
    }
}

/// The existing slices with the wanted endpoints they already hold (updated), taken out of
/// `want`; at most 100 a slice.
fn keep_in_place(
    slices: Vec<Arc<EndpointSlice>>,
    want: &mut BTreeMap<String, Endpoint>,
) -> Vec<(Arc<EndpointSlice>, Vec<Endpoint>)> {
    let mut kept = Vec::new();
    for slice in slices {
        let mut eps = Vec::new();
        for ep in &slice.endpoints {
            let uid = ep
                .target_ref
                .as_ref()
                .and_then(|r| r.uid.clone())
                .or_else(|| ep.addresses.first().cloned())
                .unwrap_or_default();
            if eps.len() < MAX_ENDPOINTS_PER_SLICE
                && let Some(new) = want.remove(&uid)
            {
                eps.push(new);
            }
        }
        kept.push((slice, eps));
    }
    kept
}

/// Writes the planned slices of one service.
struct SliceWriter<'a> {
    api: &'a Api<EndpointSlice>,
    service: &'a SelectedService<'a>,
    labels: BTreeMap<String, String>,
    /// The service's `namespace/name`.
    key: &'a str,
    expectations: &'a Expectations,
    index: &'a SliceIndex,
}

impl SliceWriter<'_> {
    /// Update `current` (if it differs) or create a slice.
    async fn write(
        &self,
        current: Option<Arc<EndpointSlice>>,
        ports: Vec<PortKey>,
        endpoints: Vec<Endpoint>,
    ) -> Result<()> {
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|p| EndpointPort {
                name: (!p.name.is_empty()).then_some(p.name),
                port: Some(p.port),
                protocol: Some(p.protocol),
                app_protocol: p.app_protocol,
            })
            .collect();
        let owner = owners::controller_ref(self.service.svc);
        match current {
            Some(current) => self.update(&current, owner, ports, endpoints).await,
            None => self.create(owner, ports, endpoints).await,
        }
    }

    async fn update(
        &self,
        current: &EndpointSlice,
        owner: OwnerReference,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> Result<()> {
        let owned = current
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner.uid);
        let unchanged = owned
            && current.metadata.labels.as_ref() == Some(&self.labels)
            && normalized(&current.endpoints) == normalized(&endpoints)
            && normalized(&current.ports) == normalized(&ports);
        if unchanged {
            return Ok(());
        }
        let mut updated = current.clone();
        updated.metadata.labels = Some(self.labels.clone());
        updated.metadata.owner_references = Some(vec![owner]);
        updated.endpoints = endpoints;
        updated.ports = Some(ports);
        let slice_name = updated.metadata.name.clone().unwrap_or_default();
        self.api
            .replace(&slice_name, &PostParams::default(), &updated)
            .await?;
        Ok(())
    }

    async fn create(
        &self,
        owner: OwnerReference,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> Result<()> {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", truncate(self.service.name, 57))),
                namespace: Some(self.service.ns.to_string()),
                labels: Some(self.labels.clone()),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            address_type: "IPv4".to_string(),
            endpoints,
            ports: Some(ports),
        };
        let created = self.api.create(&PostParams::default(), &slice).await?;
        if let Some(n) = created.metadata.name.as_deref() {
            self.expectations.expect(self.key, n, true);
            self.index.add(self.key, n);
        }
        Ok(())
    }
}

async fn delete_slice(
    api: &Api<EndpointSlice>,
    slice: &EndpointSlice,
    key: &str,
    expectations: &Expectations,
) -> Result<()> {
    let Some(name) = slice.metadata.name.as_deref() else {
        return Ok(());
    };
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => expectations.expect(key, name, false),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn slice_port_keys(slice: &EndpointSlice) -> Vec<PortKey> {
    let mut keys: Vec<PortKey> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| PortKey {
            name: p.name.clone().unwrap_or_default(),
            port: p.port.unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    keys.sort();
    keys
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(ip: &str, zone: Option<&str>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            zone: zone.map(Into::into),
            ..Default::default()
        }
    }

    fn hints(desired: &Desired) -> Vec<Option<Vec<String>>> {
        desired
            .values()
            .flat_map(|eps| eps.values())
            .map(|e| {
                let zones = e.hints.as_ref()?.for_zones.as_ref()?;
                Some(zones.iter().map(|z| z.name.clone()).collect())
            })
            .collect()
    }

    #[test]
    fn prefer_close_hints_every_endpoint_for_its_zone_or_none() {
        let mut desired = Desired::new();
        let eps = desired.entry(Vec::new()).or_default();
        eps.insert("a".into(), endpoint("10.0.0.1", Some("z1")));
        eps.insert("b".into(), endpoint("10.0.0.2", Some("z2")));
        hint_own_zones(&mut desired);
        assert_eq!(
            hints(&desired),
            [Some(vec!["z1".to_string()]), Some(vec!["z2".to_string()])]
        );

        let mut desired = Desired::new();
        let eps = desired.entry(Vec::new()).or_default();
        eps.insert("a".into(), endpoint("10.0.0.1", Some("z1")));
        eps.insert("b".into(), endpoint("10.0.0.2", None));
        hint_own_zones(&mut desired);
        assert_eq!(hints(&desired), [None, None]);
    }

    #[test]
    fn prefer_close_is_read_from_the_service() {
        let svc = |d: Option<&str>| Service {
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                traffic_distribution: d.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(prefers_close(&svc(Some("PreferClose"))));
        assert!(prefers_close(&svc(Some("PreferSameZone"))));
        assert!(!prefers_close(&svc(None)));
        assert!(!prefers_close(&svc(Some("Other"))));
    }
}
