//! What kube's Service strategy does to an update besides validating it: the fields that
//! belonged to the old type are dropped when the type changes and the client left them as they
//! were (`dropTypeDependentFields` in `pkg/registry/core/service/strategy.go`). So
//! `kubectl patch svc web -p '{"spec":{"type":"ClusterIP"}}'` on a NodePort Service just works
//! and gives its node ports back, and a ClusterIP Service turned ExternalName gives back its
//! address; a client that set those fields itself still gets validation's error.

use serde_json::Value;

/// Drop from `new` what its type no longer uses, where it equals what `old` had.
pub fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let same = |path: &str, new: &Value| old.pointer(path) == new.pointer(path);
    let mut drop = Vec::new();
    if needs_cluster_ip(old)
        && !needs_cluster_ip(new)
        && same("/spec/clusterIP", new)
        && same("/spec/clusterIPs", new)
    {
        drop.extend(["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"]);
    }
    if needs_health_check_node_port(old)
        && !needs_health_check_node_port(new)
        && same("/spec/healthCheckNodePort", new)
    {
        drop.push("healthCheckNodePort");
    }
    if is_load_balancer(old) && !is_load_balancer(new) {
        for field in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if same(&format!("/spec/{field}"), new) {
                drop.push(field);
            }
        }
    }
    if externally_accessible(old)
        && !externally_accessible(new)
        && same("/spec/externalTrafficPolicy", new)
    {
        drop.push("externalTrafficPolicy");
    }
    let drop_node_ports =
        needs_node_ports(old) && !needs_node_ports(new) && node_ports(old) == node_ports(new);
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for field in drop {
        spec.remove(field);
    }
    if drop_node_ports && let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.remove("nodePort");
        }
    }
}

/// kube's `patchAllocatedValues` for the health check port: an update of a Service that
/// needs one before and after keeps the port it holds when the client left the field out (as
/// `kubectl apply` of a manifest without it does); validation then refuses a changed one.
pub fn keep_health_check_node_port(old: &Value, new: &mut Value) {
    let unset = new
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_i64)
        .is_none_or(|p| p == 0);
    if !(unset && needs_health_check_node_port(old) && needs_health_check_node_port(new)) {
        return;
    }
    if let Some(port) = old.pointer("/spec/healthCheckNodePort").cloned()
        && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("healthCheckNodePort".into(), port);
    }
}

fn service_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn needs_cluster_ip(svc: &Value) -> bool {
    service_type(svc) != "ExternalName"
}

fn is_load_balancer(svc: &Value) -> bool {
    service_type(svc) == "LoadBalancer"
}

fn needs_node_ports(svc: &Value) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => {
            svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&Value::Bool(false))
        }
        _ => false,
    }
}

fn needs_health_check_node_port(svc: &Value) -> bool {
    is_load_balancer(svc)
        && svc
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

/// kube's `ExternallyAccessible`: what an external traffic policy applies to.
fn externally_accessible(svc: &Value) -> bool {
    matches!(service_type(svc), "NodePort" | "LoadBalancer")
        || (service_type(svc) == "ClusterIP"
            && svc
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|ips| !ips.is_empty()))
}

/// The node ports of every port, as a sorted set.
fn node_ports(svc: &Value) -> Vec<u64> {
    let mut ports: Vec<u64> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dropped(old: Value, mut new: Value) -> Value {
        drop_type_dependent_fields(&old, &mut new);
        new
    }

    #[test]
    fn node_ports_and_the_traffic_policy_go_when_a_node_port_service_becomes_cluster_ip() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.9",
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut new = old.clone();
        new["spec"]["type"] = json!("ClusterIP");
        assert_eq!(
            dropped(old.clone(), new.clone()),
            json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9", "ports": [{"port": 80}]}})
        );
        // A node port the client changed in the same request is its own: kept (validation
        // then refuses it).
        new["spec"]["ports"][0]["nodePort"] = json!(30081);
        assert_eq!(dropped(old, new)["spec"]["ports"][0]["nodePort"], 30081);
    }

    #[test]
    fn the_address_goes_when_a_service_becomes_external_name() {
        let old = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.9",
            "clusterIPs": ["10.96.0.9"], "ports": [{"port": 80}]}});
        let new = json!({"spec": {"type": "ExternalName", "externalName": "example.test",
            "clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "ports": [{"port": 80}]}});
        let out = dropped(old, new);
        assert!(out["spec"].get("clusterIP").is_none(), "{out}");
        assert!(out["spec"].get("clusterIPs").is_none(), "{out}");
    }

    #[test]
    fn load_balancer_fields_go_with_the_type() {
        let old = json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
            "allocateLoadBalancerNodePorts": true, "loadBalancerClass": "x/y",
            "ports": [{"port": 80, "nodePort": 30080}]}});
        let mut new = old.clone();
        new["spec"]["type"] = json!("NodePort");
        let out = dropped(old, new);
        assert_eq!(
            out,
            json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.9",
                "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]}})
        );
    }

    #[test]
    fn an_update_without_the_health_check_port_keeps_it() {
        let old = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 31000, "ports": [{"port": 80}]}});
        let mut new = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}});
        keep_health_check_node_port(&old, &mut new);
        assert_eq!(new["spec"]["healthCheckNodePort"], 31000);
        // One the client names is its own (validation refuses a change) ...
        new["spec"]["healthCheckNodePort"] = json!(31001);
        keep_health_check_node_port(&old, &mut new);
        assert_eq!(new["spec"]["healthCheckNodePort"], 31001);
        // ... and a Service that stops needing one does not get it back.
        let mut cluster = json!({"spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Cluster", "ports": [{"port": 80}]}});
        keep_health_check_node_port(&old, &mut cluster);
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
    }
}
