//! Incremental proxy state, like kube-proxy's change trackers: the watch events say which
//! Services changed (a Service itself, or an EndpointSlice labelled with its name), and only
//! those Services' entries of the [`ProxyState`] are rebuilt. The slice → Service index
//! remembers each slice's Service, so a relabelled or deleted slice also updates the Service
//! it left; a relist of either watch rebuilds everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{self, ProxyState, ServiceKey, ServicePortName};

/// What a watch event says about the proxy's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A Service was added, modified or deleted.
    Service(ServiceKey),
    /// An EndpointSlice (namespace, name) was added or modified; `service` is its label now.
    SliceApplied {
        slice: (String, String),
        service: Option<ServiceKey>,
    },
    /// An EndpointSlice (namespace, name) was deleted.
    SliceDeleted((String, String)),
    /// A pod (namespace, name) of this node was added, modified or deleted: its hostPorts.
    Pod((String, String)),
    /// A watch listed everything again: the caches were replaced as a whole.
    Relisted,
    /// This node's zone label is now this (topology hints are read against it).
    NodeZone(Option<String>),
}

impl Change {
    pub fn service(svc: &Service) -> Change {
        Change::Service(key_of(&svc.metadata))
    }
    pub fn slice_applied(slice: &EndpointSlice) -> Change {
        Change::SliceApplied {
            slice: key_of(&slice.metadata),
            service: model::slice_service(slice),
        }
    }
    pub fn slice_deleted(slice: &EndpointSlice) -> Change {
        Change::SliceDeleted(key_of(&slice.metadata))
    }
    pub fn pod(pod: &Pod) -> Change {
        Change::Pod(key_of(&pod.metadata))
    }
    pub fn node(node: &k8s_openapi::api::core::v1::Node) -> Change {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(model::ZONE_LABEL))
            .cloned();
        Change::NodeZone(zone)
    }
}

fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Where the tracker reads the current objects (the reflector stores).
pub trait Objects {
    fn service(&self, key: &ServiceKey) -> Option<Arc<Service>>;
    fn slice(&self, key: &(String, String)) -> Option<Arc<EndpointSlice>>;
    fn all_services(&self) -> Vec<Arc<Service>>;
    fn all_slices(&self) -> Vec<Arc<EndpointSlice>>;
    /// A pod of this node (for its hostPorts). None by default: no pods are watched.
    fn pod(&self, _key: &(String, String)) -> Option<Arc<Pod>> {
        None
    }
    fn all_pods(&self) -> Vec<Arc<Pod>> {
        Vec::new()
    }
}

/// What [`Tracker::update`] did to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Rebuilt from all objects.
    Full,
    /// Only these service ports changed (added, modified or removed); may be empty.
    Ports(BTreeSet<ServicePortName>),
}

/// The proxy state, kept up to date from [`Change`]s.
#[derive(Debug)]
pub struct Tracker {
    node: model::ThisNode,
    state: ProxyState,
    /// slice (namespace, name) → the Service it is labelled with.
    slice_owner: HashMap<(String, String), ServiceKey>,
    /// Service → its slices' names (in the Service's namespace).
    slices_of: HashMap<ServiceKey, BTreeSet<String>>,
    pending: BTreeSet<ServiceKey>,
    /// Pods whose hostPort entries are to be rebuilt.
    pending_pods: BTreeSet<(String, String)>,
    relist: bool,
    /// This node's DNS server address, the only endpoint of `kube-system/kube-dns`.
    local_dns: Option<std::net::Ipv4Addr>,
}

impl Tracker {
    /// A tracker whose first [`Tracker::update`] builds everything.
    pub fn new(node: &str) -> Tracker {
        Tracker {
            node: model::ThisNode::named(node),
            state: ProxyState::new(),
            slice_owner: HashMap::new(),
            slices_of: HashMap::new(),
            pending: BTreeSet::new(),
            pending_pods: BTreeSet::new(),
            relist: true,
            local_dns: None,
        }
    }

    /// Send `kube-system/kube-dns` to this node's own DNS server at `server` (port 53).
    pub fn with_node_local_dns(mut self, server: Option<std::net::Ipv4Addr>) -> Tracker {
        self.local_dns = server;
        self
    }

    fn localize(&self, state: &mut ProxyState) {
        if let Some(server) = self.local_dns {
            model::localize_dns(state, server);
        }
    }

    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// Whether changes are waiting for [`Tracker::update`].
    pub fn has_pending(&self) -> bool {
        self.relist || !self.pending.is_empty() || !self.pending_pods.is_empty()
    }

    /// Take note of a change (cheap; the work happens in [`Tracker::update`]).
    pub fn record(&mut self, change: Change) {
        match change {
            Change::Service(key) => {
                self.pending.insert(key);
            }
            Change::SliceApplied { slice, service } => {
                // A slice moves between Services only by its label: both are touched.
                if let Some(old) = self.unindex(&slice) {
                    self.pending.insert(old);
                }
                if let Some(svc) = service {
                    self.slices_of
                        .entry(svc.clone())
                        .or_default()
                        .insert(slice.1.clone());
                    self.slice_owner.insert(slice, svc.clone());
                    self.pending.insert(svc);
                }
            }
            Change::SliceDeleted(slice) => {
                if let Some(old) = self.unindex(&slice) {
                    self.pending.insert(old);
                }
            }
            Change::Pod(key) => {
                self.pending_pods.insert(key);
            }
            Change::Relisted => self.relist = true,
            // Every Service's endpoints may change: rebuilt as after a relist.
            Change::NodeZone(zone) if zone != self.node.zone => {
                self.node.zone = zone;
                self.relist = true;
            }
            Change::NodeZone(_) => {}
        }
    }

    fn unindex(&mut self, slice: &(String, String)) -> Option<ServiceKey> {
        let old = self.slice_owner.remove(slice)?;
        if let Some(names) = self.slices_of.get_mut(&old) {
            names.remove(&slice.1);
            if names.is_empty() {
                self.slices_of.remove(&old);
            }
        }
        Some(old)
    }

    /// Bring the state up to date with the changes recorded since the last update, reading
    /// the changed Services and their slices from `objects`.
    pub fn update(&mut self, objects: &dyn Objects) -> Update {
        if self.relist {
            self.rebuild(objects);
            return Update::Full;
        }
        let mut changed = BTreeSet::new();
        for key in std::mem::take(&mut self.pending) {
            let mut new: Vec<model::ServicePort> = match objects.service(&key) {
                Some(svc) => {
                    let slices: Vec<Arc<EndpointSlice>> = self
                        .slices_of
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter_map(|name| objects.slice(&(key.0.clone(), name.clone())))
                        .collect();
                    let refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
                    model::build_service(&svc, &refs, &self.node)
                }
                None => Vec::new(),
            };
            if self.local_dns.is_some() && (key.0.as_str(), key.1.as_str()) == model::NODE_LOCAL_DNS
            {
                let mut one: ProxyState = new.drain(..).map(|p| (p.name.clone(), p)).collect();
                self.localize(&mut one);
                new = one.into_values().collect();
            }
            self.replace_entries(&key, new, &mut changed);
        }
        for (ns, name) in std::mem::take(&mut self.pending_pods) {
            let new = objects
                .pod(&(ns.clone(), name.clone()))
                .map(|p| model::host_ports(&p))
                .unwrap_or_default();
            let key = (ns, format!("{}{name}", model::HOST_PORT_PREFIX));
            self.replace_entries(&key, new, &mut changed);
        }
        Update::Ports(changed)
    }

    /// Make `key`'s entries of the state `new`, noting every port that changed.
    fn replace_entries(
        &mut self,
        key: &ServiceKey,
        new: Vec<model::ServicePort>,
        changed: &mut BTreeSet<ServicePortName>,
    ) {
        let old: Vec<ServicePortName> = model::service_entries(&self.state, key)
            .map(|(k, _)| k.clone())
            .collect();
        for name in old {
            if !new.iter().any(|p| p.name == name) {
                self.state.remove(&name);
                changed.insert(name);
            }
        }
        for port in new {
            if self.state.get(&port.name) != Some(&port) {
                changed.insert(port.name.clone());
                self.state.insert(port.name.clone(), port);
            }
        }
    }

    /// Rebuild the index and the state from all objects; returns whether the state changed.
    pub fn rebuild(&mut self, objects: &dyn Objects) -> bool {
        let services = objects.all_services();
        let slices = objects.all_slices();
        self.slice_owner.clear();
        self.slices_of.clear();
        for s in &slices {
            if let Some(svc) = model::slice_service(s) {
                let key = key_of(&s.metadata);
                self.slices_of
                    .entry(svc.clone())
                    .or_default()
                    .insert(key.1.clone());
                self.slice_owner.insert(key, svc);
            }
        }
        let mut state = model::build(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
            &self.node,
        );
        self.localize(&mut state);
        for pod in objects.all_pods() {
            state.extend(
                model::host_ports(&pod)
                    .into_iter()
                    .map(|p| (p.name.clone(), p)),
            );
        }
        self.pending.clear();
        self.pending_pods.clear();
        self.relist = false;
        let changed = state != self.state;
        self.state = state;
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Store {
        services: BTreeMap<ServiceKey, Arc<Service>>,
        slices: BTreeMap<(String, String), Arc<EndpointSlice>>,
        /// Lookups of single objects, to show an update reads only what changed.
        reads: std::cell::Cell<usize>,
    }

    impl Objects for Store {
        fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
            self.reads.set(self.reads.get() + 1);
            self.services.get(key).cloned()
        }
        fn slice(&self, key: &(String, String)) -> Option<Arc<EndpointSlice>> {
            self.reads.set(self.reads.get() + 1);
            self.slices.get(key).cloned()
        }
        fn all_services(&self) -> Vec<Arc<Service>> {
            self.services.values().cloned().collect()
        }
        fn all_slices(&self) -> Vec<Arc<EndpointSlice>> {
            self.slices.values().cloned().collect()
        }
    }

    impl Store {
        fn put_service(&mut self, name: &str, ip: &str) -> Change {
            let s: Service = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}))
            .unwrap();
            self.services
                .insert(("default".into(), name.into()), Arc::new(s.clone()));
            Change::service(&s)
        }
        fn put_slice(&mut self, name: &str, service: &str, ips: &[&str]) -> Change {
            let eps: Vec<_> = ips
                .iter()
                .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
                .collect();
            let s: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default",
                    "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps}))
            .unwrap();
            self.slices
                .insert(("default".into(), name.into()), Arc::new(s.clone()));
            Change::slice_applied(&s)
        }
        fn delete_slice(&mut self, name: &str) -> Change {
            let s = self
                .slices
                .remove(&("default".into(), name.into()))
                .unwrap();
            Change::slice_deleted(&s)
        }
        fn delete_service(&mut self, name: &str) -> Change {
            let s = self
                .services
                .remove(&("default".into(), name.into()))
                .unwrap();
            Change::service(&s)
        }
    }

    fn port(name: &str) -> ServicePortName {
        ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port: "http".into(),
            protocol: model::Protocol::Tcp,
        }
    }

    fn ips(t: &Tracker, name: &str) -> Vec<String> {
        t.state()[&port(name)]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect()
    }

    /// A store of `n` services `s0..`, each with one slice of one endpoint, and a tracker
    /// that has built it.
    fn setup(n: usize) -> (Store, Tracker) {
        let mut store = Store::default();
        for i in 0..n {
            store.put_service(&format!("s{i}"), &format!("10.96.0.{}", i + 1));
            store.put_slice(
                &format!("s{i}-a"),
                &format!("s{i}"),
                &[&format!("10.244.0.{}", i + 1)],
            );
        }
        let mut t = Tracker::new("n1");
        assert_eq!(t.update(&store), Update::Full);
        assert_eq!(t.state().len(), n);
        (store, t)
    }

    /// The incremental state equals a full build from the same objects.
    fn assert_consistent(store: &Store, t: &Tracker) {
        let full = model::build(
            store.services.values().map(|s| s.as_ref()),
            store.slices.values().map(|s| s.as_ref()),
            &model::ThisNode::named("n1"),
        );
        assert_eq!(t.state(), &full);
    }

    #[test]
    fn a_slice_change_recomputes_only_its_service() {
        let (mut store, mut t) = setup(50);
        t.record(store.put_slice("s7-a", "s7", &["10.244.9.1", "10.244.9.2"]));
        store.reads.set(0);
        assert_eq!(t.update(&store), Update::Ports([port("s7")].into()));
        // The Service and its one slice, nothing of the other 49.
        assert_eq!(store.reads.get(), 2);
        assert_eq!(ips(&t, "s7"), ["10.244.9.1", "10.244.9.2"]);
        assert_consistent(&store, &t);
        // A second slice of the same Service adds to it.
        t.record(store.put_slice("s7-b", "s7", &["10.244.9.3"]));
        assert_eq!(t.update(&store), Update::Ports([port("s7")].into()));
        assert_eq!(ips(&t, "s7"), ["10.244.9.1", "10.244.9.2", "10.244.9.3"]);
        // An update that changes nothing for the proxy changes no port.
        t.record(store.put_slice("s7-b", "s7", &["10.244.9.3"]));
        assert_eq!(t.update(&store), Update::Ports(BTreeSet::new()));
        assert!(!t.has_pending());
        assert_consistent(&store, &t);
    }

    #[test]
    fn a_relabelled_slice_moves_its_endpoints() {
        let (mut store, mut t) = setup(3);
        t.record(store.put_slice("s1-a", "s2", &["10.244.0.2"]));
        assert_eq!(
            t.update(&store),
            Update::Ports([port("s1"), port("s2")].into())
        );
        assert!(ips(&t, "s1").is_empty());
        assert_eq!(ips(&t, "s2"), ["10.244.0.2", "10.244.0.3"]);
        assert_consistent(&store, &t);
        // Losing the label: the slice belongs to no Service any more.
        let mut unlabelled = (*store.slices[&("default".into(), "s2-a".into())]).clone();
        unlabelled.metadata.labels = None;
        store.slices.insert(
            ("default".into(), "s2-a".into()),
            Arc::new(unlabelled.clone()),
        );
        t.record(Change::slice_applied(&unlabelled));
        assert_eq!(t.update(&store), Update::Ports([port("s2")].into()));
        assert_eq!(ips(&t, "s2"), ["10.244.0.2"]);
        assert_consistent(&store, &t);
    }

    #[test]
    fn deletes_remove_entries() {
        let (mut store, mut t) = setup(3);
        t.record(store.delete_slice("s0-a"));
        assert_eq!(t.update(&store), Update::Ports([port("s0")].into()));
        assert!(ips(&t, "s0").is_empty());
        t.record(store.delete_service("s1"));
        assert_eq!(t.update(&store), Update::Ports([port("s1")].into()));
        assert!(!t.state().contains_key(&port("s1")));
        assert_consistent(&store, &t);
        // Its slice, deleted later, touches a Service that is gone: nothing changes.
        t.record(store.delete_slice("s1-a"));
        assert_eq!(t.update(&store), Update::Ports(BTreeSet::new()));
        // A Service created after its slice picks the slice up.
        t.record(store.put_slice("new-a", "new", &["10.244.5.5"]));
        assert_eq!(t.update(&store), Update::Ports(BTreeSet::new()));
        t.record(store.put_service("new", "10.96.1.1"));
        assert_eq!(t.update(&store), Update::Ports([port("new")].into()));
        assert_eq!(ips(&t, "new"), ["10.244.5.5"]);
        assert_consistent(&store, &t);
    }

    #[test]
    fn a_relist_rebuilds_everything() {
        let (mut store, mut t) = setup(3);
        // Changes the tracker never heard of (a watch that missed them), then a relist.
        store.put_slice("s0-a", "s0", &["10.244.7.7"]);
        store.delete_service("s2");
        t.record(Change::Relisted);
        assert!(t.has_pending());
        assert_eq!(t.update(&store), Update::Full);
        assert_eq!(ips(&t, "s0"), ["10.244.7.7"]);
        assert_consistent(&store, &t);
        // The rebuilt index serves later changes.
        t.record(store.delete_slice("s0-a"));
        assert_eq!(t.update(&store), Update::Ports([port("s0")].into()));
        assert_consistent(&store, &t);
    }

    #[test]
    fn kube_dns_goes_to_the_nodes_own_dns_server() {
        let mut store = Store::default();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153, "protocol": "TCP"}]}}))
        .unwrap();
        let key = ("kube-system".to_string(), "kube-dns".to_string());
        store.services.insert(key.clone(), Arc::new(svc.clone()));
        let gateway = std::net::Ipv4Addr::new(10, 244, 3, 1);
        let mut t = Tracker::new("n1").with_node_local_dns(Some(gateway));
        assert_eq!(t.update(&store), Update::Full);
        let dns_port = |t: &Tracker, port: &str, protocol| {
            t.state()[&ServicePortName {
                namespace: key.0.clone(),
                name: key.1.clone(),
                port: port.into(),
                protocol,
            }]
                .endpoints
                .iter()
                .map(|e| (e.ip, e.port, e.ready, e.local))
                .collect::<Vec<_>>()
        };
        let local = vec![(gateway, 53, true, true)];
        assert_eq!(dns_port(&t, "dns", model::Protocol::Udp), local);
        assert_eq!(dns_port(&t, "dns-tcp", model::Protocol::Tcp), local);
        // Other ports of the Service keep their (here: no) endpoints.
        assert!(dns_port(&t, "metrics", model::Protocol::Tcp).is_empty());
        // An incremental update of the Service keeps it local.
        t.record(Change::service(&svc));
        assert_eq!(t.update(&store), Update::Ports(BTreeSet::new()));
        assert_eq!(dns_port(&t, "dns", model::Protocol::Udp), local);
        // Without a node-local server the Service is an ordinary one.
        let mut plain = Tracker::new("n1");
        plain.update(&store);
        assert!(dns_port(&plain, "dns", model::Protocol::Udp).is_empty());
    }
}
