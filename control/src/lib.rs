//! skiff's control plane: a Kubernetes-compatible apiserver over a pluggable store.

pub mod apiserver;
pub mod controllers;
pub mod scheduler;
pub mod store;
