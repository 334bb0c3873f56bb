//! The pod network of one node, as a CNI bridge plugin would build it: bridge `skiff0`
//! holding the podCIDR's gateway, one veth pair per pod (pod end `eth0`), routes to the
//! other nodes' podCIDRs via their InternalIPs, and masquerade for traffic leaving the
//! cluster. Links and routes go through netlink (`rtnetlink`), masquerade through
//! `iptables-restore`; all of it behind [`NetworkEdge`], whose `fake::FakeNetwork` (tests
//! only) records the calls, so the pod logic is tested without root.

pub mod cidr;
#[cfg(test)]
pub mod fake;
pub mod ipam;
pub mod masquerade;
pub mod netlink;

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use async_trait::async_trait;

pub use cidr::Ipv4Net;

pub const BRIDGE: &str = "skiff0";

/// The node-side network operations the agent needs.
#[async_trait]
pub trait NetworkEdge: Send + Sync + 'static {
    /// Create (or keep) the bridge with the gateway address, up; enable forwarding.
    async fn ensure_bridge(&self, pod_cidr: Ipv4Net) -> Result<()>;
    /// Give the network namespace at `netns` an `eth0` with `ip`, a default route via the
    /// gateway, `lo` up, and its host end `host_if` on the bridge.
    async fn attach_pod(
        &self,
        netns: &Path,
        host_if: &str,
        ip: Ipv4Addr,
        pod_cidr: Ipv4Net,
    ) -> Result<()>;
    /// Remove the pod's veth pair (both ends go with the host end).
    async fn detach_pod(&self, host_if: &str) -> Result<()>;
    /// Make the routes to other nodes' podCIDRs exactly `routes` (destination, via).
    async fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<()>;
    /// Remove the bridge and every route this agent added.
    async fn teardown(&self) -> Result<()>;
    /// Masquerade traffic from `pod_cidr` to anywhere outside `cluster_cidr`.
    fn ensure_masquerade(&self, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<()>;
    /// Remove the masquerade rules.
    fn remove_masquerade(&self) -> Result<()>;
}

/// The host-side name of a pod's veth: stable per pod, within IFNAMSIZ.
pub fn host_veth_name(pod_uid: &str) -> String {
    let hex: String = pod_uid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(11)
        .collect();
    format!("skv{hex}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn veth_names_fit_ifnamsiz() {
        let n = super::host_veth_name("0f8e2a6c-1d3b-4e5f-9a7b-123456789abc");
        assert_eq!(n, "skv0f8e2a6c1d3");
        assert!(n.len() <= 15);
    }
}
