//! The settings of the controllers and the scheduler (`skiff-control`'s flags), and which of
//! them run. A leaf: every controller reads it through [`super::Context`], and the manager
//! picks the components to start from it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use skiff_common::cidr::{Ipv4Cidr, Ipv4Range};

/// Every component `--controllers` can name, in start order.
pub const COMPONENTS: &[&str] = &[
    "scheduler",
    "serviceaccount",
    "root-ca-cert-publisher",
    "namespace",
    "nodeipam",
    "nodelifecycle",
    "replicaset",
    "deployment",
    "daemonset",
    "job",
    "disruption",
    "endpoints",
    "endpointslice",
    "garbagecollector",
    "csrsigning",
    "csrapproving",
    "bootstrapsigner",
    "tokencleaner",
    "service-lb-controller",
];

/// Which components run: `*` for all, `name` to add one, `-name` to drop one
/// (kube-controller-manager's `--controllers` syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enabled(BTreeSet<&'static str>);

impl Enabled {
    pub fn parse(spec: &str) -> Result<Enabled, String> {
        let mut set = BTreeSet::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (remove, name) = match item.strip_prefix('-') {
                Some(n) => (true, n),
                None => (false, item),
            };
            let names: Vec<&'static str> = if name == "*" {
                COMPONENTS.to_vec()
            } else {
                vec![*COMPONENTS.iter().find(|c| **c == name).ok_or_else(|| {
                    format!(
                        "unknown controller {name:?}; known: {}",
                        COMPONENTS.join(", ")
                    )
                })?]
            };
            for n in names {
                if remove {
                    set.remove(n);
                } else {
                    set.insert(n);
                }
            }
        }
        Ok(Enabled(set))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Settings shared by the controllers (flags of `skiff-control`).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub enabled: Enabled,
    /// Pod network; node IPAM gives each node a `/node_cidr_mask_size` of it.
    pub cluster_cidr: Ipv4Cidr,
    pub node_cidr_mask_size: u8,
    /// A node whose Lease is not renewed for this long becomes Ready=Unknown.
    pub node_monitor_grace_period: Duration,
    /// Pods on a NotReady/Unknown node are evicted after this long.
    pub pod_eviction_timeout: Duration,
    /// Every object is reconciled at least this often, even without changes.
    pub resync_period: Duration,
    /// The cluster CA (PEM) published in every namespace (kube's `--root-ca-file`); empty
    /// publishes nothing.
    pub root_ca: String,
    /// Where the cluster CA (`ca.crt`, `ca.key`) the CSR signers sign with lives (kube's
    /// `--cluster-signing-cert-file`/`--cluster-signing-key-file`); no signing without it.
    pub cluster_signing_dir: Option<PathBuf>,
    /// The longest certificate the signers issue (kube's `--cluster-signing-duration`).
    pub cluster_signing_duration: Duration,
    /// Where `type: LoadBalancer` Services get their addresses (`--service-lb-pool`); none
    /// leaves them pending, as a cluster without a cloud provider does.
    pub lb_pools: Vec<Ipv4Range>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            enabled: Enabled::parse("*").expect("valid"),
            cluster_cidr: Ipv4Cidr::parse("10.244.0.0/16").expect("valid"),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            resync_period: Duration::from_secs(300),
            root_ca: String::new(),
            cluster_signing_dir: None,
            cluster_signing_duration: Duration::from_secs(365 * 24 * 3600),
            lb_pools: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_flag_like_kube_controller_manager() {
        let all = Enabled::parse("*").unwrap();
        assert!(all.contains("job") && all.contains("scheduler"));
        let no_job = Enabled::parse("*,-job").unwrap();
        assert!(!no_job.contains("job") && no_job.contains("replicaset"));
        let some = Enabled::parse("replicaset,deployment").unwrap();
        assert!(some.contains("deployment") && !some.contains("scheduler"));
        assert!(Enabled::parse("").unwrap().is_empty());
        assert!(Enabled::parse("*,-bogus").is_err());
    }
}
