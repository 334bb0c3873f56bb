//! Pieces shared by skiff's control plane and node agent.
pub mod duration;
pub mod events;
pub mod privileged;
pub mod quantity;
pub mod selector;
pub mod tls;
