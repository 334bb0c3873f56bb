//! Pieces shared by skiff's control plane (`skiff-control`) and node agent (`skiff-agent`):
//! where both must behave the same, the code lives here once.
//!
//! - [`bootstrap_token`]: kubeadm's bootstrap tokens and their Secret (node joins);
//! - [`cidr`]: [`cidr::Ipv4Cidr`], the Service ClusterIP range and the cluster pod network
//!   (the apiserver's allocator and the node IPAM controller);
//! - [`duration`]: durations in flags, Go's `time.ParseDuration` syntax or bare seconds
//!   ([`duration::seconds_or_duration`], a clap `value_parser` for both binaries);
//! - [`fs`]: files replaced whole ([`fs::write_atomic`], with the mode set before any byte is
//!   written), for state, specs and keys;
//! - [`events`]: [`events::EventRecorder`], core/v1 Events with count aggregation as
//!   client-go's recorder writes them (the controllers, the scheduler, the kubelet side of the
//!   agent and its service proxy);
//! - [`labels`]: label selectors as k8s.io/apimachinery parses and matches them, from the
//!   text of `-l`/`labelSelector=` or an object's `LabelSelector` (the apiserver's list and
//!   watch filters and the controllers' pod matching);
//! - [`loadbalancer`]: the `loadBalancerClass` and announcement Lease names the LoadBalancer
//!   IPAM controller, the agents and the node authorizer share;
//! - [`quantity`]: resource quantities (`500m`, `128Mi`) parsed exactly, so the scheduler and
//!   the agent never read a request or limit differently;
//! - [`selector`]: a `LabelSelector` as the text of a `labelSelector=` list option, refusing
//!   selectors kube cannot convert (the apiserver and the controllers);
//! - [`tls`]: the HTTPS accept loop and certificate SANs, shared by the API server and the
//!   agent's log server;
//! - [`privileged`]: for tests that need root, network namespaces, cgroups or BPF: skip with a
//!   reason on a developer's machine, fail under `SKIFF_REQUIRE_PRIVILEGED=1` (CI).
pub mod bootstrap_token;
pub mod cidr;
pub mod duration;
pub mod events;
pub mod fs;
pub mod labels;
pub mod loadbalancer;
pub mod privileged;
pub mod quantity;
pub mod selector;
pub mod tls;
