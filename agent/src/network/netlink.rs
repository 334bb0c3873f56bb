//! [`NetworkEdge`] over rtnetlink (masquerade: [`super::masquerade`], with iptables).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{BRIDGE, Ipv4Net, NetworkEdge};

/// Routes the agent owns carry this protocol number, so they can be found and removed
/// without touching anyone else's.
pub const ROUTE_PROTOCOL: u8 = 0x5c;
/// The protocol number marking the service CIDR's route.
const SERVICE_ROUTE_PROTOCOL: u8 = ROUTE_PROTOCOL + 1;

pub struct NetlinkNetwork {
    handle: Handle,
}

impl NetlinkNetwork {
    /// Connect in the current network namespace (the node's).
    pub fn connect() -> Result<NetlinkNetwork> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(NetlinkNetwork { handle })
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        link_index(&self.handle, name).await
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -17)
}

/// The bridge's MAC: locally administered, unique per node because the gateway address is,
/// and the same after an agent restart.
fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0x5c, a, b, c, d]
}

async fn add_address(handle: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
    match handle
        .address()
        .add(index, ip.into(), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("adding address {ip}/{prefix}")),
    }
}

#[async_trait]
impl NetworkEdge for NetlinkNetwork {
    async fn ensure_bridge(&self, pod_cidr: Ipv4Net) -> Result<()> {
        let index = match self.link_index(BRIDGE).await? {
            Some(i) => i,
            None => {
                match self
                    .handle
                    .link()
                    .add(LinkBridge::new(BRIDGE).build())
                    .execute()
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_exists(&e) => {}
                    Err(e) => return Err(e).context("creating bridge skiff0"),
                }
                self.link_index(BRIDGE)
                    .await?
                    .ok_or_else(|| anyhow!("bridge skiff0 vanished"))?
            }
        };
        add_address(&self.handle, index, pod_cidr.gateway(), pod_cidr.prefix).await?;
        // A bridge whose address was never set takes the lowest MAC of its ports, so the
        // gateway's MAC changed whenever a pod's veth came or went. Pods keep the old one in
        // their neighbour cache; once that veth is gone their frames to the gateway (all
        // traffic to other nodes) are dropped until the entry is probed again, seconds later.
        // A fixed address, as Docker and the CNI bridge plugin set, never changes.
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(bridge_mac(pod_cidr.gateway()).to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .context("setting skiff0's address and bringing it up")?;
        // Pods on this node reach other nodes (and the node routes between pods) only
        // with forwarding on; the sysctl is per network namespace.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
        // Packets routed back out of skiff0 (a pod to a ClusterIP without endpoints, which
        // the service route sends onto skiff0; a pod to a same-node endpoint after DNAT)
        // would each draw an ICMP redirect to the pod. Pods cannot use them, and sending one
        // restarts the per-host ICMP rate limiter, so the port-unreachable of a REJECT
        // right after it is suppressed and the pod times out instead of being refused.
        // The kernel sends redirects if `all` OR the interface says so: `all` goes to 0, so
        // other interfaces keep their own setting (1 by default) and only skiff0 stops.
        for conf in ["all", BRIDGE] {
            let path = format!("/proc/sys/net/ipv4/conf/{conf}/send_redirects");
            std::fs::write(&path, "0").with_context(|| format!("writing 0 to {path}"))?;
        }
        Ok(())
    }

    async fn attach_pod(
        &self,
        netns: &Path,
        host_if: &str,
        ip: Ipv4Addr,
        pod_cidr: Ipv4Net,
    ) -> Result<()> {
        let bridge = self
            .link_index(BRIDGE)
            .await?
            .ok_or_else(|| anyhow!("bridge {BRIDGE} does not exist"))?;
        // A leftover of an earlier attempt would make the add fail.
        if let Some(old) = self.link_index(host_if).await? {
            let _ = self.handle.link().del(old).execute().await;
        }
        let peer = format!("skp{}", &host_if[3..]);
        self.handle
            .link()
            .add(LinkVeth::new(host_if, &peer).build())
            .execute()
            .await
            .with_context(|| format!("creating veth pair {host_if}/{peer}"))?;
        let ns =
            std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        {
            use std::os::fd::AsRawFd;
            let peer_index = self
                .link_index(&peer)
                .await?
                .ok_or_else(|| anyhow!("veth peer vanished"))?;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(peer_index)
                        .setns_by_fd(ns.as_fd().as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .context("moving the veth into the pod's network namespace")?;
        }
        let host_index = self
            .link_index(host_if)
            .await?
            .ok_or_else(|| anyhow!("veth {host_if} vanished"))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .context("attaching the veth to skiff0")?;
        // Hairpin: a pod reaching itself through a service address comes back on its own port.
        self.handle
            .link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .context("enabling hairpin on the bridge port")?;
        configure_inside(ns, peer, ip, pod_cidr).await
    }

    async fn detach_pod(&self, host_if: &str) -> Result<()> {
        if let Some(index) = self.link_index(host_if).await? {
            match self.handle.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {host_if}")),
            }
        }
        Ok(())
    }

    async fn sync_routes(&self, routes: &[(Ipv4Net, Ipv4Addr)]) -> Result<()> {
        let ours = owned_routes(&self.handle).await?;
        for (msg, dst, via) in &ours {
            if !routes.iter().any(|(d, v)| d == dst && v == via) {
                self.handle
                    .route()
                    .del(msg.clone())
                    .execute()
                    .await
                    .with_context(|| format!("deleting route {dst} via {via}"))?;
            }
        }
        for (dst, via) in routes {
            if ours.iter().any(|(_, d, v)| d == dst && v == via) {
                continue;
            }
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.addr, dst.prefix)
                .gateway(*via)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build();
            self.handle
                .route()
                .add(msg)
                .replace()
                .execute()
                .await
                .with_context(|| format!("adding route {dst} via {via}"))?;
        }
        Ok(())
    }

    async fn teardown(&self) -> Result<()> {
        self.sync_routes(&[]).await?;
        remove_service_routes(&self.handle).await?;
        if let Some(index) = self.link_index(BRIDGE).await? {
            self.handle
                .link()
                .del(index)
                .execute()
                .await
                .context("deleting skiff0")?;
        }
        Ok(())
    }

    fn ensure_masquerade(&self, pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<()> {
        super::masquerade::ensure(pod_cidr, cluster_cidr)
    }

    fn remove_masquerade(&self) -> Result<()> {
        super::masquerade::remove()
    }
}

async fn owned_routes(handle: &Handle) -> Result<Vec<(RouteMessage, Ipv4Net, Ipv4Addr)>> {
    let mut out = Vec::new();
    let mut stream = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(msg) = stream.try_next().await? {
        if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
            || msg.header.address_family != AddressFamily::Inet
        {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                _ => {}
            }
        }
        if let (Some(d), Some(g)) = (dst, via) {
            out.push((
                msg.clone(),
                Ipv4Net::new(d, msg.header.destination_prefix_length),
                g,
            ));
        }
    }
    Ok(out)
}

/// Configure the pod's end from inside its namespace: a netlink socket belongs to the
/// namespace it was opened in, so a dedicated thread enters the namespace, opens one, and
/// does the work with its own small runtime (the agent's threads never change namespace).
async fn configure_inside(
    ns: std::fs::File,
    peer: String,
    ip: Ipv4Addr,
    pod_cidr: Ipv4Net,
) -> Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| -> Result<()> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the pod's network namespace")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection()?;
                tokio::spawn(conn);
                let lo = link_index(&handle, "lo")
                    .await?
                    .ok_or_else(|| anyhow!("no lo"))?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await?;
                let idx = link_index(&handle, &peer)
                    .await?
                    .ok_or_else(|| anyhow!("veth {peer} not in the pod namespace"))?;
                handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(idx)
                            .name("eth0".to_string())
                            .build(),
                    )
                    .execute()
                    .await
                    .context("renaming the pod's veth to eth0")?;
                add_address(&handle, idx, ip, pod_cidr.prefix).await?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(idx).up().build())
                    .execute()
                    .await?;
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(pod_cidr.gateway())
                    .output_interface(idx)
                    .build();
                match handle.route().add(route).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if is_exists(&e) => Ok(()),
                    Err(e) => Err(e).context("adding the pod's default route"),
                }
            })
        })();
        let _ = tx.send(result);
    });
    rx.await
        .map_err(|_| anyhow!("the pod network thread died"))?
}

/// The name of the interface that holds `ip` in the current network namespace.
pub async fn interface_with(ip: Ipv4Addr) -> Result<Option<String>> {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::LinkAttribute;
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let mut addrs = handle.address().get().execute();
    let mut index = None;
    while let Some(msg) = addrs.try_next().await? {
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(std::net::IpAddr::V4(a)) if *a == ip))
        {
            index = Some(msg.header.index);
            break;
        }
    }
    let Some(index) = index else { return Ok(None) };
    let mut links = handle.link().get().match_index(index).execute();
    while let Some(msg) = links.try_next().await? {
        for a in msg.attributes {
            if let LinkAttribute::IfName(name) = a {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// How a node routes its service CIDR (`--service-cluster-ip-range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceRoute {
    /// Onto the bridge, so node-local clients reach service addresses on a node without a
    /// default route (iptables mode rewrites them in OUTPUT, after the route lookup; what no
    /// rule translates is then REJECTed in the filter table).
    ViaBridge,
    /// Unreachable: the eBPF socket programs translate before any route lookup, so what
    /// still heads for a service address matches no Service and must fail on the node, not
    /// leave it by the default route.
    Unreachable,
}

/// Install the service CIDR's route (replacing the other kind, left by the other mode).
pub async fn ensure_service_route(dst: Ipv4Net, kind: ServiceRoute) -> Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr, dst.prefix)
        .protocol(RouteProtocol::Other(SERVICE_ROUTE_PROTOCOL));
    let msg = match kind {
        ServiceRoute::ViaBridge => {
            let bridge = link_index(&handle, BRIDGE)
                .await?
                .ok_or_else(|| anyhow!("bridge {BRIDGE} does not exist"))?;
            builder.output_interface(bridge).build()
        }
        ServiceRoute::Unreachable => builder.kind(RouteType::Unreachable).build(),
    };
    match handle.route().add(msg).replace().execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("adding the {kind:?} route to {dst}")),
    }
}

/// Delete the service CIDR routes [`ensure_service_route`] installed.
async fn remove_service_routes(handle: &Handle) -> Result<()> {
    let mut stream = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut ours = Vec::new();
    while let Some(msg) = stream.try_next().await? {
        if msg.header.protocol == RouteProtocol::Other(SERVICE_ROUTE_PROTOCOL) {
            ours.push(msg);
        }
    }
    for msg in ours {
        handle
            .route()
            .del(msg)
            .execute()
            .await
            .context("deleting the service CIDR route")?;
    }
    Ok(())
}
