//! skiff's node agent: the kubelet + CNI half of a node.
//!
//! - [`node`]: the Node object, its Lease and the routes to other nodes;
//! - [`pods`]: one worker per pod (sandbox, containers, probes, status);
//! - [`runtime`]: pause, shim and init processes, cgroups, on-disk state;
//! - [`network`]: bridge, veth pairs, IPAM and masquerade over netlink;
//! - [`image`] and [`logs`]: the node-local image store and container log files;
//! - [`server`]: the HTTPS endpoint the apiserver proxies `kubectl logs` to.
pub mod agent;
pub mod bpf_cli;
pub mod config;
pub mod image;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod static_pods;
