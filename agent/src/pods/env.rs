//! A container's command line and environment, as the kubelet builds them: image
//! Entrypoint/Cmd overridden by command/args, `$(VAR)` references expanded, and the
//! Docker-links-style variables of the Services that exist when the container starts, and
//! the Downward API's values (`fieldRef`, `resourceFieldRef`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_common::quantity;

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

/// Where the pod is reached: the node's addresses and the pod's, first the primary one (the
/// values of `status.hostIP(s)` and `status.podIP(s)`).
#[derive(Clone, Debug, Default)]
pub struct Addresses {
    pub host_ips: Vec<String>,
    pub pod_ips: Vec<String>,
}

/// Resolve a `fieldRef` of the downward API as the kubelet does; `None` for a path it does not
/// offer. A label or annotation that is not there reads as empty, as a Go map index does;
/// `metadata.labels` and `metadata.annotations` (volumes only) are the whole map, formatted
/// by [`format_map`].
pub fn field_ref(pod: &Pod, path: &str, at: &Addresses) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    Some(match path {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.map(|s| text(&s.node_name)).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .map(|s| text(&s.service_account_name))
            .unwrap_or_default(),
        "status.hostIP" => at.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => at.host_ips.join(","),
        "status.podIP" => at.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => at.pod_ips.join(","),
        p => {
            let (key, labels) = p
                .strip_prefix("metadata.labels['")
                .map(|k| (k, true))
                .or_else(|| p.strip_prefix("metadata.annotations['").map(|k| (k, false)))?;
            let name = key.strip_suffix("']")?;
            let map = if labels {
                meta.labels.as_ref()
            } else {
                meta.annotations.as_ref()
            };
            map.and_then(|m| m.get(name)).cloned().unwrap_or_default()
        }
    })
}

/// Labels or annotations as the kubelet writes them (`fieldpath.FormatMap`): `key="value"`
/// lines sorted by key, the value quoted as Go's `%q` does, no newline after the last.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`: printable characters as they are, the rest escaped.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `name` may be an environment variable of a container: kube's `IsEnvVarName`
/// (`[-._a-zA-Z][-._a-zA-Z0-9]*`, and not `.`, `..` or `..`-prefixed). envFrom keys that are
/// not are skipped.
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let ok = |c: char| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_');
    ok(first)
        && chars.all(|c| ok(c) || c.is_ascii_digit())
        && name != "."
        && !name.starts_with("..")
}

/// The value of a `resourceFieldRef`, as kube's `ExtractContainerResourceValue` computes it:
/// the container's limit (the node's allocatable when it has none, as the kubelet defaults
/// it) or request, divided by `divisor` (1 when zero or absent) and rounded up; CPU in
/// millicores before the division, the others in whole units.
pub fn resource_value(
    resource: &str,
    divisor: Option<&Quantity>,
    c: &Container,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {resource}"))?;
    let res = c.resources.as_ref();
    let q = match kind {
        "limits" => res
            .and_then(|r| r.limits.as_ref())
            .and_then(|m| m.get(name))
            .filter(|q| quantity::milli_value(q) != 0)
            .or_else(|| {
                matches!(name, "cpu" | "memory" | "ephemeral-storage")
                    .then(|| allocatable.get(name))
                    .flatten()
            }),
        "requests" => res
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(name)),
        _ => return Err(format!("unsupported container resource : {resource}")),
    };
    let zero = Quantity("0".into());
    let q = q.unwrap_or(&zero);
    let divisor = divisor
        .filter(|d| quantity::milli_value(d) != 0)
        .cloned()
        .unwrap_or_else(|| Quantity("1".into()));
    let ratio = match name {
        "cpu" => quantity::milli_value(q) as f64 / quantity::milli_value(&divisor) as f64,
        "memory" | "ephemeral-storage" => {
            quantity::value(q) as f64 / quantity::value(&divisor) as f64
        }
        n if n.starts_with("hugepages-") => {
            quantity::value(q) as f64 / quantity::value(&divisor) as f64
        }
        _ => return Err(format!("unsupported container resource : {resource}")),
    };
    Ok((ratio.ceil() as i64).to_string())
}

/// The container a `resourceFieldRef` names (`containerName`), or `own` when it names none.
pub fn resource_container<'a>(
    pod: &'a Pod,
    name: Option<&str>,
    own: Option<&'a Container>,
) -> Result<&'a Container, String> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return own.ok_or_else(|| "a resourceFieldRef in a volume needs containerName".into());
    };
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == name)
        .ok_or_else(|| format!("container {name} not found"))
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

    fn downward_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1",
                "labels": {"tier": "front", "app": "web"},
                "annotations": {"note": "a\"b\\c\nd\u{7}\u{85}é"}},
            "spec": {"nodeName": "node-2", "serviceAccountName": "builder", "containers": [
                {"name": "app", "resources": {"limits": {"cpu": "500m", "memory": "100M"},
                    "requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "side"}],
                "initContainers": [{"name": "setup", "resources": {"limits": {"cpu": "3"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn every_field_ref_kube_offers() {
        let pod = downward_pod();
        let at = Addresses {
            host_ips: vec!["10.0.0.2".into(), "fd00::2".into()],
            pod_ips: vec!["10.244.1.5".into(), "fd00:1::5".into()],
        };
        let get = |p: &str| field_ref(&pod, p, &at);
        let want = [
            ("metadata.name", "web"),
            ("metadata.namespace", "prod"),
            ("metadata.uid", "u-1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['note']", "a\"b\\c\nd\u{7}\u{85}é"),
            ("spec.nodeName", "node-2"),
            ("spec.serviceAccountName", "builder"),
            ("status.hostIP", "10.0.0.2"),
            ("status.hostIPs", "10.0.0.2,fd00::2"),
            ("status.podIP", "10.244.1.5"),
            ("status.podIPs", "10.244.1.5,fd00:1::5"),
            ("metadata.labels", "app=\"web\"\ntier=\"front\""),
            // Go's %q: escapes for quote, backslash, newline, BEL and a C1 control.
            (
                "metadata.annotations",
                "note=\"a\\\"b\\\\c\\nd\\a\\u0085é\"",
            ),
        ];
        for (path, value) in want {
            assert_eq!(get(path).as_deref(), Some(value), "{path}");
        }
        for unsupported in ["spec.hostname", "metadata.labels['x'", "status.phase"] {
            assert_eq!(get(unsupported), None, "{unsupported}");
        }
        let empty = Addresses::default();
        assert_eq!(
            field_ref(&Pod::default(), "status.podIPs", &empty).as_deref(),
            Some("")
        );
        assert_eq!(
            field_ref(&Pod::default(), "spec.nodeName", &empty).as_deref(),
            Some("")
        );
        assert_eq!(format_map(None), "");
    }

    #[test]
    fn env_var_names_as_kube_validates_them() {
        for ok in [
            "A",
            "my.env-name",
            "MY_ENV.NAME",
            "MyEnvName1",
            "_x",
            "-a",
            ".a",
        ] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "a b", "a=b", ".", "..", "..a", "é"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }

    #[test]
    fn resource_values_round_up_like_kube() {
        let pod = downward_pod();
        let app = &pod.spec.as_ref().unwrap().containers[0];
        let side = &pod.spec.as_ref().unwrap().containers[1];
        let allocatable = BTreeMap::from([
            ("cpu".to_string(), Quantity("2".into())),
            ("memory".to_string(), Quantity("4Gi".into())),
            ("ephemeral-storage".to_string(), Quantity("10Gi".into())),
        ]);
        let q = |s: &str| Quantity(s.into());
        let value = |c: &Container, r: &str, d: Option<&str>| {
            resource_value(r, d.map(q).as_ref(), c, &allocatable)
        };
        let want = [
            (app, "limits.cpu", None, "1"),
            (app, "limits.cpu", Some("1m"), "500"),
            (app, "limits.cpu", Some("0"), "1"),
            (app, "requests.cpu", Some("1m"), "250"),
            (app, "limits.memory", None, "100000000"),
            (app, "limits.memory", Some("1Mi"), "96"),
            (app, "limits.memory", Some("1M"), "100"),
            (app, "requests.memory", Some("1Mi"), "64"),
            (app, "limits.ephemeral-storage", Some("1Gi"), "10"),
            (app, "requests.ephemeral-storage", None, "0"),
            // No limits: the node's allocatable; no requests: zero.
            (side, "limits.cpu", Some("1m"), "2000"),
            (side, "limits.memory", Some("1Gi"), "4"),
            (side, "requests.cpu", None, "0"),
            (side, "limits.hugepages-2Mi", None, "0"),
        ];
        for (c, r, d, v) in want {
            assert_eq!(value(c, r, d).as_deref(), Ok(v), "{} {r} {d:?}", c.name);
        }
        for bad in ["limits.gpu", "cpu", "status.cpu"] {
            assert_eq!(
                value(app, bad, None),
                Err(format!("unsupported container resource : {bad}"))
            );
        }
        // containerName picks another container of the pod, init containers included.
        let setup = resource_container(&pod, Some("setup"), Some(app)).unwrap();
        assert_eq!(value(setup, "limits.cpu", None).as_deref(), Ok("3"));
        assert_eq!(
            resource_container(&pod, None, Some(app)).unwrap().name,
            "app"
        );
        assert_eq!(
            resource_container(&pod, Some("nope"), Some(app)).unwrap_err(),
            "container nope not found"
        );
    }
}
