//! A pod's /etc/resolv.conf as kubelet writes it: its `dnsPolicy` picks the base (the
//! cluster DNS with the namespace's search path, or the node's own resolv.conf, or nothing)
//! and its `dnsConfig` adds nameservers, searches and options on top.

use k8s_openapi::api::core::v1::Pod;

/// kubelet's limits: glibc reads three nameservers; 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The parts of a resolv.conf kubelet keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    /// `name` or `name:value`.
    pub options: Vec<String>,
}

impl DnsConf {
    /// Parse a resolv.conf (`domain` counts as a search, as for the resolver).
    pub fn parse(text: &str) -> DnsConf {
        let mut conf = DnsConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.nameservers.extend(words.next().map(str::to_string)),
                Some("search" | "domain") => {
                    conf.searches = words.map(str::to_string).collect();
                }
                Some("options") => conf.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        conf
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// What the node provides: its resolv.conf, and the cluster DNS when configured.
pub struct NodeDns<'a> {
    pub host: DnsConf,
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    pub cluster_domain: &'a str,
}

/// The pod's resolv.conf contents.
pub fn pod_resolv_conf(node: &NodeDns<'_>, pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    // ClusterFirst on the host network is Default (kubelet); without a cluster DNS both
    // cluster policies fall back to the node's resolvers.
    let mut conf = match (policy, node.cluster_dns) {
        ("None", _) => DnsConf::default(),
        ("ClusterFirstWithHostNet", Some(dns)) => cluster(node, dns, ns),
        ("ClusterFirst", Some(dns)) if !host_network => cluster(node, dns, ns),
        _ => node.host.clone(),
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        conf.nameservers
            .extend(extra.nameservers.iter().flatten().cloned());
        conf.searches
            .extend(extra.searches.iter().flatten().cloned());
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            // A pod's option replaces the base's option of the same name.
            conf.options
                .retain(|existing| existing.split(':').next() != Some(name));
            conf.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    omit_duplicates(&mut conf.nameservers);
    conf.nameservers.truncate(MAX_NAMESERVERS);
    omit_duplicates(&mut conf.searches);
    conf.searches.truncate(MAX_SEARCHES);
    conf.render()
}

fn omit_duplicates(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|s| seen.insert(s.clone()));
}

/// ClusterFirst: the cluster DNS, the namespace's search path before the node's, ndots:5.
fn cluster(node: &NodeDns<'_>, dns: std::net::Ipv4Addr, ns: &str) -> DnsConf {
    let d = node.cluster_domain;
    let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
    searches.extend(node.host.searches.iter().filter(|s| *s != ".").cloned());
    DnsConf {
        nameservers: vec![dns.to_string()],
        searches,
        options: vec!["ndots:5".into()],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(cluster_dns: Option<&str>) -> NodeDns<'static> {
        NodeDns {
            host: DnsConf::parse(
                "# host\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch corp.example\noptions edns0\n",
            ),
            cluster_dns: cluster_dns.map(|s| s.parse().unwrap()),
            cluster_domain: "cluster.local",
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "apps"},
            "spec": spec
        }))
        .unwrap()
    }

    const CLUSTER: &str = "search apps.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.96.0.10\noptions ndots:5\n";
    const HOST: &str =
        "search corp.example\nnameserver 192.0.2.1\nnameserver 192.0.2.2\noptions edns0\n";

    #[test]
    fn cluster_first_is_the_default() {
        let n = node(Some("10.96.0.10"));
        assert_eq!(
            pod_resolv_conf(&n, &pod(json!({"containers": []}))),
            CLUSTER
        );
        let explicit = pod(json!({"containers": [], "dnsPolicy": "ClusterFirst"}));
        assert_eq!(pod_resolv_conf(&n, &explicit), CLUSTER);
    }

    #[test]
    fn cluster_first_on_the_host_network_is_default_unless_with_host_net() {
        let n = node(Some("10.96.0.10"));
        let host = pod(json!({"containers": [], "hostNetwork": true}));
        assert_eq!(pod_resolv_conf(&n, &host), HOST);
        let with = pod(json!({"containers": [], "hostNetwork": true,
            "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert_eq!(pod_resolv_conf(&n, &with), CLUSTER);
    }

    #[test]
    fn default_is_the_nodes_and_none_is_only_dns_config() {
        let n = node(Some("10.96.0.10"));
        let default = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(pod_resolv_conf(&n, &default), HOST);
        let none = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["ns1.svc.cluster-domain.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            pod_resolv_conf(&n, &none),
            "search ns1.svc.cluster-domain.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_adds_to_the_policy_and_overrides_options() {
        let n = node(Some("10.96.0.10"));
        let p = pod(json!({"containers": [], "dnsConfig": {
            "nameservers": ["192.0.2.9", "192.0.2.10", "192.0.2.11"],
            "searches": ["svc.cluster.local", "extra.example"],
            "options": [{"name": "ndots", "value": "1"}, {"name": "single-request"}]}}));
        assert_eq!(
            pod_resolv_conf(&n, &p),
            "search apps.svc.cluster.local svc.cluster.local cluster.local corp.example extra.example\n\
             nameserver 10.96.0.10\nnameserver 192.0.2.9\nnameserver 192.0.2.10\n\
             options ndots:1 single-request\n"
        );
    }

    #[test]
    fn without_a_cluster_dns_cluster_first_falls_back_to_the_node() {
        let n = node(None);
        assert_eq!(pod_resolv_conf(&n, &pod(json!({"containers": []}))), HOST);
    }
}
