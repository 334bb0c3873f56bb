//! The names the control plane's LoadBalancer IPAM and the agents' L2 announcement agree on:
//! the `loadBalancerClass` they serve and the Leases that pick the announcing node.

/// The `spec.loadBalancerClass` skiff serves; a LoadBalancer Service without a class is
/// skiff's too, one of any other class is left to its own controller.
pub const CLASS: &str = "skiff.io/l2";

/// Where the announcement Leases live.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// Every announcement Lease's name starts so (as Cilium's `cilium-l2announce-`); nodes may
/// touch no other Lease in [`LEASE_NAMESPACE`].
pub const LEASE_PREFIX: &str = "skiff-l2announce-";

/// Labels on every announcement Lease naming its Service (a Lease in kube-system cannot be
/// owned by a Service in another namespace), by which the control plane deletes the Leases
/// of Services that are gone.
pub const SERVICE_NAMESPACE_LABEL: &str = "skiff.io/service-namespace";
pub const SERVICE_NAME_LABEL: &str = "skiff.io/service-name";

/// The Lease that picks the node announcing Service `namespace/name`.
pub fn lease_name(namespace: &str, name: &str) -> String {
    format!("{LEASE_PREFIX}{namespace}-{name}")
}

/// Whether a Service of this type and class is one skiff gives an address and announces.
pub fn serves(type_: Option<&str>, class: Option<&str>) -> bool {
    type_ == Some("LoadBalancer") && class.is_none_or(|c| c == CLASS)
}

/// The IPv4 addresses in a Service's `status.loadBalancer.ingress`.
pub fn ingress_ips(svc: &k8s_openapi::api::core::v1::Service) -> Vec<std::net::Ipv4Addr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes() {
        assert_eq!(lease_name("default", "web"), "skiff-l2announce-default-web");
        assert!(serves(Some("LoadBalancer"), None));
        assert!(serves(Some("LoadBalancer"), Some("skiff.io/l2")));
        assert!(!serves(Some("LoadBalancer"), Some("metallb.io/other")));
        assert!(!serves(Some("NodePort"), None));
    }
}
