//! A container's command line and environment, as the kubelet builds them: image
//! Entrypoint/Cmd overridden by command/args, `$(VAR)` references expanded, and the
//! Docker-links-style variables of the Services that exist when the container starts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};

use crate::image::ImageConfig;

/// argv per Kubernetes' rules: `command` replaces the Entrypoint (and drops Cmd), `args`
/// replaces Cmd.
pub fn argv(container: &Container, image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let expand_all = |v: &Vec<String>| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let mut v = expand_all(cmd);
            if let Some(a) = args {
                v.extend(expand_all(a));
            }
            v
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut v = image.entrypoint.clone();
            v.extend(expand_all(args));
            v
        }
        _ => {
            let mut v = image.entrypoint.clone();
            v.extend(image.cmd.iter().cloned());
            v
        }
    }
}

/// Expand `$(NAME)` from `env`; `$$` escapes a dollar; unknown references stay as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The variables of every Service in `services` that has a cluster IP, as the kubelet
/// makes them (FOO_BAR_SERVICE_HOST, _SERVICE_PORT, _SERVICE_PORT_<NAME>, FOO_BAR_PORT,
/// FOO_BAR_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}).
pub fn service_env<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<(String, String)> {
    let mut by_name: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let name = svc.metadata.name.clone().unwrap_or_default();
        let prefix = name.to_uppercase().replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let mut vars = vec![
            (format!("{prefix}_SERVICE_HOST"), ip.to_string()),
            (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
        ];
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                vars.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        vars.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, pr.to_uppercase());
            vars.push((
                base.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            vars.push((format!("{base}_PROTO"), pr.to_lowercase()));
            vars.push((format!("{base}_PORT"), p.port.to_string()));
            vars.push((format!("{base}_ADDR"), ip.to_string()));
        }
        by_name.insert(name, vars);
    }
    by_name.into_values().flatten().collect()
}

/// Resolve a `fieldRef` of the downward API.
pub fn field_ref(pod: &Pod, path: &str, host_ip: &str, pod_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => meta.name.clone()?,
        "metadata.namespace" => meta.namespace.clone()?,
        "metadata.uid" => meta.uid.clone()?,
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone()?,
        "status.hostIP" => host_ip.to_string(),
        "status.podIP" => pod_ip.to_string(),
        p => {
            let key = p
                .strip_prefix("metadata.labels['")
                .map(|k| (k, true))
                .or_else(|| p.strip_prefix("metadata.annotations['").map(|k| (k, false)))?;
            let name = key.0.strip_suffix("']")?;
            let map = if key.1 {
                meta.labels.as_ref()
            } else {
                meta.annotations.as_ref()
            };
            map?.get(name)?.clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn expands_references() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("x$(A)-$(B)", &e), "x1-two");
        assert_eq!(expand("$$(A) $(C) $( $", &e), "$(A) $(C) $( $");
    }

    #[test]
    fn command_and_args_override_the_image() {
        let image = ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["default".into()],
            ..Default::default()
        };
        let mut c = Container::default();
        assert_eq!(argv(&c, &image, &[]), ["/ep", "default"]);
        c.args = Some(vec!["$(X)".into()]);
        assert_eq!(argv(&c, &image, &env(&[("X", "y")])), ["/ep", "y"]);
        c.command = Some(vec!["sh".into(), "-c".into()]);
        assert_eq!(argv(&c, &image, &env(&[("X", "y")])), ["sh", "-c", "y"]);
    }

    #[test]
    fn service_variables_like_the_kubelet() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("kubia-web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![
                    ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let headless = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let vars: BTreeMap<String, String> = service_env([&svc, &headless]).into_iter().collect();
        assert_eq!(vars["KUBIA_WEB_SERVICE_HOST"], "10.96.0.10");
        assert_eq!(vars["KUBIA_WEB_SERVICE_PORT"], "80");
        assert_eq!(vars["KUBIA_WEB_SERVICE_PORT_DNS"], "53");
        assert_eq!(vars["KUBIA_WEB_PORT"], "tcp://10.96.0.10:80");
        assert_eq!(vars["KUBIA_WEB_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(vars["KUBIA_WEB_PORT_80_TCP_ADDR"], "10.96.0.10");
        assert_eq!(vars.len(), 2 + 2 + 1 + 8);
    }
}
