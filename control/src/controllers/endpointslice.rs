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

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::task::JoinSet;

use super::endpoints::{
    HEADLESS_LABEL, PodTracker, PortKey, WORKERS, deletions, is_pod_terminal, labels_match,
    normalized, pod_hostname, pod_ip, pod_reference, resolved_ports, service_selector,
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
                    let (Some(ns), Some(name)) = (
                        svc.metadata.namespace.as_deref(),
                        svc.metadata.name.as_deref(),
                    ) else {
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
    let existing: Vec<Arc<EndpointSlice>> = {
        let known = index.slices(&key);
        let candidates: Vec<Arc<EndpointSlice>> = if known.is_empty() {
            cache.state()
        } else {
            known
                .iter()
                .filter_map(|n| {
                    let slice = cache.get(&ObjectRef::new(n).within(&ns));
                    if slice.is_none() {
                        index.remove(&key, n);
                    }
                    slice
                })
                .collect()
        };
        let mut v: Vec<_> = candidates
            .into_iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns.as_str())
                    && managed(&s.metadata) == Some(name.as_str())
                    && s.address_type == "IPv4"
            })
            .collect();
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        if known.is_empty() {
            for slice in &v {
                if let Some(n) = slice.metadata.name.as_deref() {
                    index.add(&key, n);
                }
            }
        }
        v
    };
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);

    let Some(selector) = service_selector(&svc) else {
        // No selector (any more): slices are somebody else's business, ours go.
        for slice in &existing {
            delete_slice(&api, slice, &key, &expectations).await?;
        }
        return Ok(runtime::done(svc.as_ref(), &ctx));
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(svc.as_ref(), &ctx));
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let svc_ports = spec.ports.clone().unwrap_or_default();
    let nodes = ctx.informers.nodes.store();

    // Port set → pod uid → endpoint.
    let mut desired: BTreeMap<Vec<PortKey>, BTreeMap<String, Endpoint>> = BTreeMap::new();
    for pod in ctx.informers.pods.store().state() {
        if pod.metadata.namespace.as_deref() != Some(ns.as_str())
            || !labels_match(selector, pod.metadata.labels.as_ref())
            || is_pod_terminal(&pod)
        {
            continue;
        }
        let Some(ip) = pod_ip(&pod) else { continue };
        let Some(ports) = resolved_ports(&pod, &svc_ports, headless) else {
            continue;
        };
        let serving = pod_state::is_pod_ready(&pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let zone = node_name
            .as_deref()
            .and_then(|n| nodes.get(&ObjectRef::<Node>::new(n)))
            .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: pod_hostname(&pod, &name),
            node_name,
            target_ref: Some(pod_reference(&pod)),
            zone,
            ..Default::default()
        };
        let uid = pod.metadata.uid.clone().unwrap_or_else(|| ip.to_string());
        desired.entry(ports).or_default().insert(uid, endpoint);
    }

    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if headless {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels.insert(SERVICE_NAME_LABEL.to_string(), name.clone());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());

    // Existing slices by their port set.
    let mut by_ports: BTreeMap<Vec<PortKey>, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in &existing {
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
    for (ports, mut want) in desired {
        let mut kept: Vec<(Arc<EndpointSlice>, Vec<Endpoint>)> = Vec::new();
        for slice in by_ports.remove(&ports).unwrap_or_default() {
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
            let keep_as_placeholder = placeholder && !placeholder_kept;
            if eps.is_empty() && !keep_as_placeholder {
                to_delete.push(slice);
                continue;
            }
            let ports = if placeholder {
                Vec::new()
            } else {
                ports.clone()
            };
            placeholder_kept = true;
            to_write.push((Some(slice), ports, eps));
        }
        for chunk in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
            to_write.push((None, ports.clone(), chunk.to_vec()));
        }
        if placeholder && !placeholder_kept {
            to_write.push((None, Vec::new(), Vec::new()));
        }
    }
    to_delete.extend(by_ports.into_values().flatten());

    for (current, ports, endpoints) in to_write {
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|p| EndpointPort {
                name: (!p.name.is_empty()).then_some(p.name),
                port: Some(p.port),
                protocol: Some(p.protocol),
                app_protocol: p.app_protocol,
            })
            .collect();
        let owner = owners::controller_ref(svc.as_ref());
        match current {
            Some(current) => {
                let owned = current
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == owner.uid);
                let unchanged = owned
                    && current.metadata.labels.as_ref() == Some(&labels)
                    && normalized(&current.endpoints) == normalized(&endpoints)
                    && normalized(&current.ports) == normalized(&ports);
                if unchanged {
                    continue;
                }
                let mut updated = current.as_ref().clone();
                updated.metadata.labels = Some(labels.clone());
                updated.metadata.owner_references = Some(vec![owner]);
                updated.endpoints = endpoints;
                updated.ports = Some(ports);
                let slice_name = updated.metadata.name.clone().unwrap_or_default();
                api.replace(&slice_name, &PostParams::default(), &updated)
                    .await?;
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{}-", truncate(&name, 57))),
                        namespace: Some(ns.clone()),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    address_type: "IPv4".to_string(),
                    endpoints,
                    ports: Some(ports),
                };
                let created = api.create(&PostParams::default(), &slice).await?;
                if let Some(n) = created.metadata.name.as_deref() {
                    expectations.expect(&key, n, true);
                    index.add(&key, n);
                }
            }
        }
    }
    for slice in &to_delete {
        delete_slice(&api, slice, &key, &expectations).await?;
    }
    Ok(runtime::done(svc.as_ref(), &ctx))
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
