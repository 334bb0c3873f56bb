//! The controllers of kube-controller-manager, each a client of the API server (never of the
//! store) on the shared [`crate::runtime`]: shared informers, kube's `Controller` as the
//! rate-limited work queue with periodic resync, and an event recorder. Every controller is a
//! small reconcile function in its own module with a `spawn` that [`crate::manager`] calls;
//! [`owners`] and [`pod_state`] hold what several of them share.

pub mod bootstrapsigner;
pub mod csrapproving;
pub mod csrsigning;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod owners;
pub mod pod_state;
pub mod replicaset;
pub mod rootcacert;
pub mod serviceaccount;
pub mod servicelb;
pub mod tokencleaner;
