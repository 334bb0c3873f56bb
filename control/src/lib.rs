//! skiff's control plane: a Kubernetes-compatible API server over a pluggable store, with
//! kube-controller-manager and kube-scheduler running in the same process as its clients.
//!
//! # Where to start
//!
//! The binary (`src/main.rs`) opens a [`store`] (the embedded redb one, or etcd with
//! `--etcd-servers`), starts the [`apiserver`] on it ([`apiserver::ApiServer::start`]), then
//! runs [`manager::run`] — every controller and the scheduler — as ordinary API clients, each
//! with an identity of its own ([`runtime::credentials`]), under leader election ([`runtime::leader`]) unless
//! `--leader-elect=false`.
//!
//! # Modules
//!
//! - [`store`]: the [`store::Store`] trait, etcd v3's data model (one cluster-wide revision,
//!   compare-and-swap on `mod_revision`, watches that replay from a revision), and its two
//!   backends, [`store::embedded`] and [`store::etcd`], held to one conformance suite
//!   (`control/tests/store.rs`);
//! - [`apiserver`]: HTTPS, bearer-token authentication and kube-apiserver's REST semantics
//!   over a store: routing ([`apiserver::request`]), the resource table
//!   ([`apiserver::resources`]), the registry, defaulting, admission, validation, patch, watch,
//!   server-side tables, discovery and OpenAPI, the `default/kubernetes` endpoints, and the
//!   `pods/log` proxy to node agents;
//! - [`api_resources`]: the table of the resources skiff serves, read by the apiserver and by
//!   the namespace and garbage collector controllers;
//! - [`csr`]: certificate signing requests as the certificates API and its signers judge them;
//! - [`runtime`]: what the controllers and the scheduler run on: the [`runtime::Context`] they
//!   share, shared informers, kube's rate-limited work queue with back-off, the event
//!   recorder, the settings ([`runtime::ControllerConfig`]) and leader election. An API client
//!   only, never the store;
//! - [`controllers`]: one module per controller — ReplicaSet, Deployment, DaemonSet, Job,
//!   Endpoints, EndpointSlice, Namespace, node IPAM, node lifecycle, garbage collector,
//!   ServiceAccount — on [`runtime`];
//! - [`scheduler`]: kube-scheduler's default profile: the scheduling queue, filter and score
//!   plugins, a node cache that counts assumed pods, binding through `pods/binding`; on
//!   [`runtime`] too, and independent of the controllers;
//! - [`token`]: `skiff-control token create`, bootstrap tokens for joining nodes;
//! - [`manager`]: starts the components `--controllers` enables (controllers and scheduler)
//!   and the shared informers.
//!
//! # How a request flows
//!
//! Every HTTP request enters [`apiserver::handlers::handle`]. [`apiserver::request::route`]
//! works out what it asks for (the resource is looked up in
//! [`apiserver::resources::RESOURCES`]), the bearer token is checked, and the handler calls the
//! [`apiserver::registry::Registry`], which gives the object its Kubernetes semantics over the
//! store. A create, for instance: the body is parsed (JSON, YAML, or Kubernetes protobuf through
//! [`apiserver::protobuf`]) and normalized through its k8s-openapi type; server-owned metadata
//! is set; the namespace must exist and not be terminating ([`apiserver::admission`]); then
//! admission, [`apiserver::defaults`] and [`apiserver::validation`] run, ClusterIPs and
//! NodePorts are allocated, and [`store::Store::create`] writes the object, whose
//! `mod_revision` becomes its `resourceVersion`. Updates and patches ([`apiserver::patch`]) are
//! compare-and-swaps on that revision. Reads come from the store, filtered by
//! [`apiserver::selectors`] and printed by [`apiserver::table`] for `kubectl get`; a watch is a
//! store watch turned into Kubernetes watch events by [`apiserver::watch`]. Responses go out in
//! kube-apiserver's field order ([`apiserver::wire`]); errors are `Status` objects
//! ([`apiserver::status`]). `GET pods/<name>/log` is forwarded to the node agent of the pod's
//! node ([`apiserver::nodeproxy`]).
//!
//! # How a pod gets to a node
//!
//! A Deployment created through the API is seen by [`controllers::deployment`] (through its
//! informer), which creates a ReplicaSet for the pod template; [`controllers::replicaset`]
//! creates the pods. The [`scheduler`] takes each pod without `spec.nodeName`, filters and
//! scores the nodes, and binds the pod to the winner (`pods/binding`, which sets
//! `spec.nodeName`). The node agent (`skiff-agent`) of that node watches the pods bound to it,
//! runs the pod and writes its status back. DaemonSet pods skip the scheduler:
//! [`controllers::daemonset`] sets `spec.nodeName` itself. Nodes get their pod CIDR from
//! [`controllers::nodeipam`]; [`controllers::nodelifecycle`] taints and evicts when their
//! heartbeat stops.
//!
//! # How a Service gets its endpoints
//!
//! Creating a Service allocates its ClusterIP (and NodePorts) in admission. For a Service with
//! a selector, [`controllers::endpointslice`] (and [`controllers::endpoints`], for the older
//! Endpoints object) lists the selected pods with their readiness; each node agent's service
//! proxy watches Services and EndpointSlices and programs its node's dataplane from them.
//! [`controllers::gc`] deletes what lost its owners.

pub mod api_resources;
pub mod apiserver;
pub mod controllers;
pub mod csr;
pub mod manager;
pub mod runtime;
pub mod scheduler;
pub mod store;
pub mod token;
