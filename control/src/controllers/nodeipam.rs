//! Node IPAM (kube's range allocator): every Node without `spec.podCIDR` gets the lowest free
//! `/node_cidr_mask_size` block of the cluster CIDR, written to `spec.podCIDR` and
//! `spec.podCIDRs`. What is free is worked out from the nodes themselves (a live list, so a
//! restart or a lagging cache cannot hand out a block twice); a deleted node's block is free
//! again as soon as the node is gone.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use serde_json::json;
use tokio::task::JoinSet;

use crate::runtime::{self, Context, Result};
use skiff_common::cidr::Ipv4Cidr;

/// How soon a node that found the range full tries again.
const FULL_RETRY: Duration = Duration::from_secs(10);

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informers = &ctx.informers;
    let controller =
        Controller::for_shared_stream(informers.nodes.subscribe(), informers.nodes.store());
    // One allocation at a time: each sees every earlier one in its live list.
    runtime::drive("nodeipam", controller, ctx, 1, reconcile, tasks);
}

/// The blocks of `cluster` (of `/mask`) a node CIDR overlaps, as block indices.
fn overlapped_blocks(cluster: &Ipv4Cidr, mask: u8, used: &Ipv4Cidr) -> std::ops::Range<u64> {
    let block = 1u64 << (32 - u32::from(mask));
    let blocks = cluster.size() / block;
    let start = u64::from(used.base);
    let end = start + used.size();
    let first = u64::from(cluster.base);
    let last = first + cluster.size();
    if end <= first || start >= last {
        return 0..0;
    }
    let lo = start.saturating_sub(first) / block;
    let hi = (end.min(last) - first).div_ceil(block);
    lo.min(blocks)..hi.min(blocks)
}

/// The lowest block of `cluster` not in `used`, as a CIDR string.
pub fn next_free(cluster: &Ipv4Cidr, mask: u8, used: &[Ipv4Cidr]) -> Option<String> {
    if mask < cluster.prefix || mask > 32 {
        return None;
    }
    let block = 1u64 << (32 - u32::from(mask));
    let blocks = cluster.size() / block;
    let taken: HashSet<u64> = used
        .iter()
        .flat_map(|c| overlapped_blocks(cluster, mask, c))
        .collect();
    let free = (0..blocks).find(|i| !taken.contains(i))?;
    let addr: Ipv4Addr = cluster.nth(free * block);
    Some(format!("{addr}/{mask}"))
}

fn pod_cidrs(node: &Node) -> Vec<Ipv4Cidr> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Cidr> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| Ipv4Cidr::parse(c).ok())
        .collect();
    out.dedup_by_key(|c| (c.base, c.prefix));
    out
}

fn has_pod_cidr(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    if has_pod_cidr(&node) || node.metadata.deletion_timestamp.is_some() {
        return Ok(runtime::done(node.as_ref(), &ctx));
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = api.list(&ListParams::default()).await?.items;
    let Some(live) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
    else {
        // Gone already.
        return Ok(runtime::done(node.as_ref(), &ctx));
    };
    if has_pod_cidr(live) || live.metadata.uid != node.metadata.uid {
        return Ok(runtime::done(node.as_ref(), &ctx));
    }
    let used: Vec<Ipv4Cidr> = nodes.iter().flat_map(pod_cidrs).collect();
    let cluster = &ctx.config.cluster_cidr;
    let mask = ctx.config.node_cidr_mask_size;
    let Some(cidr) = next_free(cluster, mask, &used) else {
        ctx.recorder
            .warning(
                live,
                "CIDRAssignmentFailed",
                format!(
                    "Node {name} status is now: CIDRNotAvailable (no free /{mask} left in {cluster})"
                ),
            )
            .await;
        tracing::warn!(node = %name, %cluster, mask, "no pod CIDR left for node");
        ctx.backoff.succeeded(&runtime::key_of(node.as_ref()));
        return Ok(Action::requeue(FULL_RETRY));
    };
    // The resourceVersion makes this a compare-and-swap: a concurrent writer means retry.
    let patch = json!({
        "metadata": {"resourceVersion": live.metadata.resource_version},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, %cidr, "allocated pod CIDR");
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(runtime::done(node.as_ref(), &ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_block_first() {
        let cluster = Ipv4Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(
            next_free(&cluster, 24, &[]).as_deref(),
            Some("10.244.0.0/24")
        );
        let used = [
            Ipv4Cidr::parse("10.244.0.0/24").unwrap(),
            Ipv4Cidr::parse("10.244.2.0/24").unwrap(),
            // Outside the cluster range: ignored.
            Ipv4Cidr::parse("10.1.1.0/24").unwrap(),
        ];
        assert_eq!(
            next_free(&cluster, 24, &used).as_deref(),
            Some("10.244.1.0/24")
        );
        // A bigger block covers several.
        let used = [Ipv4Cidr::parse("10.244.0.0/23").unwrap()];
        assert_eq!(
            next_free(&cluster, 24, &used).as_deref(),
            Some("10.244.2.0/24")
        );
        // Full.
        let small = Ipv4Cidr::parse("10.0.0.0/23").unwrap();
        let used = [
            Ipv4Cidr::parse("10.0.0.0/24").unwrap(),
            Ipv4Cidr::parse("10.0.1.0/24").unwrap(),
        ];
        assert_eq!(next_free(&small, 24, &used), None);
        // A mask wider than the cluster range has no blocks.
        assert_eq!(next_free(&small, 22, &[]), None);
    }
}
