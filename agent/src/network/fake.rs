//! A recording stand-in for the node's network, for unit tests of pod logic without root.
//! Its calls go to a [`Recorder`], shared with the runtime's fake so one log shows the
//! order across both, and fail when a test injected a failure.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;

use super::{Ipv4Net, NetworkEdge};
use crate::runtime::edge::fake::Recorder;

pub struct FakeNetwork {
    pub rec: Arc<Recorder>,
}

#[async_trait]
impl NetworkEdge for FakeNetwork {
    async fn ensure_bridge(&self, pod_cidr: Ipv4Net) -> Result<()> {
        self.rec.call(format!("ensure_bridge {pod_cidr}"))
    }
    async fn attach_pod(
        &self,
        _netns: &Path,
        host_if: &str,
        ip: Ipv4Addr,
        _pod_cidr: Ipv4Net,
    ) -> Result<()> {
        self.rec.call(format!("attach_pod {host_if} {ip}"))
    }
    async fn detach_pod(&self, host_if: &str) -> Result<()> {
        self.rec.call(format!("detach_pod {host_if}"))
    }
    async fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<()> {
        self.rec.call(format!("sync_routes {routes:?}"))
    }
    async fn teardown(&self) -> Result<()> {
        self.rec.call("teardown".into())
    }
    fn ensure_masquerade(&self, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<()> {
        self.rec
            .call(format!("ensure_masquerade {pod_cidr} {cluster_cidr}"))
    }
    fn remove_masquerade(&self) -> Result<()> {
        self.rec.call("remove_masquerade".into())
    }
}
