//! Object validation, as kube-apiserver's `ValidateXxx` / `ValidateXxxUpdate` functions do it:
//! the same rules, field paths and messages, so `kubectl` prints the errors users already know
//! and scripts matching on them keep working.
//!
//! Objects have been defaulted (see `defaults.rs`) and normalized through the k8s-openapi type,
//! but every accessor below still tolerates any JSON shape: `Value` indexing yields `null` for
//! missing keys or wrong types, and nothing here unwraps.
//!
//! Not here (the caller's job): `generateName` resolution, namespace mismatch between URL and
//! body, `metadata.uid` / `creationTimestamp` / `resourceVersion` handling, ClusterIP
//! allocation.

pub mod certificates;
pub mod policy;
pub mod rbac;

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::apiserver::resources::ResourceInfo;
use crate::apiserver::status::FieldCause;

type Causes = Vec<FieldCause>;

/// Validate an object for create (`old = None`) or update (`old = Some(previous)`).
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<FieldCause> {
    let mut out = Vec::new();
    meta(info, &obj["metadata"], &mut out);
    match info.plural {
        "pods" => pod(obj, old, &mut out),
        "services" => service(obj, old, &mut out),
        "deployments" | "replicasets" | "daemonsets" => workload(info.plural, obj, old, &mut out),
        "jobs" => job(obj, old, &mut out),
        "configmaps" => configmap(obj, old, &mut out),
        "secrets" => secret(obj, old, &mut out),
        "endpointslices" => endpointslice(obj, &mut out),
        "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings" => {
            rbac::validate(info.plural, obj, old, &mut out)
        }
        "certificatesigningrequests" => certificates::validate(obj, old, &mut out),
        "poddisruptionbudgets" => policy::validate(obj, old, &mut out),
        _ => {}
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Name formats (k8s.io/apimachinery/pkg/util/validation).

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";
const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without a length limit.
fn label_shape(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| lower_alnum(c) || c == '-')
        && s.starts_with(lower_alnum)
        && s.ends_with(lower_alnum)
}

pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && label_shape(s)
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(label_shape)
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// kube's `IsDNS1123Label` error list (length and shape are separate messages).
fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_string());
    }
    if !label_shape(s) {
        e.push(DNS1123_LABEL_MSG.to_string());
    }
    e
}

fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 253 {
        e.push("must be no more than 253 characters".to_string());
    }
    if !s.split('.').all(label_shape) {
        e.push(DNS1123_SUBDOMAIN_MSG.to_string());
    }
    e
}

fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_string());
    }
    if !(label_shape(s) && s.starts_with(|c: char| c.is_ascii_lowercase())) {
        e.push(DNS1035_LABEL_MSG.to_string());
    }
    e
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// kube's `IsQualifiedName`: `[prefix/]name`, prefix a DNS-1123 subdomain, name ≤ 63.
fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            e.push("prefix part must be non-empty".to_string());
        } else {
            e.extend(
                dns1123_subdomain_errors(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    if name.contains('/') {
        e.push("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".to_string());
        return e;
    }
    if name.is_empty() {
        e.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            e.push("name part must be no more than 63 characters".to_string());
        }
        if !qualified_name_part(name) {
            e.push(QUALIFIED_NAME_MSG.to_string());
        }
    }
    e
}

fn label_value_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 63 {
        e.push("must be no more than 63 characters".to_string());
    }
    if !s.is_empty() && !qualified_name_part(s) {
        e.push(LABEL_VALUE_MSG.to_string());
    }
    e
}

/// IANA_SVC_NAME (RFC 6335), kube's `IsValidPortName`.
fn port_name_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.is_empty() || s.len() > 15 {
        e.push("must be no more than 15 characters".to_string());
    }
    if !s.chars().all(|c| lower_alnum(c) || c == '-') {
        e.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if s.contains("--") {
        e.push("must not contain consecutive hyphens".to_string());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        e.push("must contain at least one letter (a-z)".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        e.push("must not begin or end with a hyphen".to_string());
    }
    e
}

fn config_key_errors(s: &str) -> Vec<String> {
    let mut e = Vec::new();
    if s.len() > 253 {
        e.push("must be no more than 253 characters".to_string());
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        e.push(CONFIG_KEY_MSG.to_string());
    }
    if s == "." {
        e.push("must not be '.'".to_string());
    } else if s == ".." {
        e.push("must not be '..'".to_string());
    } else if s.starts_with("..") {
        e.push("must not start with '..'".to_string());
    }
    e
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn str_at(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn int_at(v: &Value) -> Option<i64> {
    v.as_i64()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn obj(v: &Value) -> Option<&Map<String, Value>> {
    v.as_object()
}

fn not_found(field: impl Into<String>, value: &Value) -> FieldCause {
    FieldCause {
        reason: "FieldValueNotFound",
        field: field.into(),
        message: format!("Not found: {value}"),
    }
}

fn too_long(field: impl Into<String>, limit: usize) -> FieldCause {
    FieldCause {
        reason: "FieldValueTooLong",
        field: field.into(),
        message: format!("Too long: must have at most {limit} bytes"),
    }
}

pub(crate) fn required_msg(field: impl Into<String>, detail: &str) -> FieldCause {
    FieldCause {
        reason: "FieldValueRequired",
        field: field.into(),
        message: format!("Required value: {detail}"),
    }
}

/// `>= 0` for optional integers (kube's `ValidateNonnegativeField`).
fn non_negative(v: &Value, field: &str, out: &mut Causes) {
    if let Some(n) = int_at(v)
        && n < 0
    {
        out.push(FieldCause::invalid(
            field,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

fn port_in_range(v: &Value, field: &str, out: &mut Causes) {
    match int_at(v) {
        Some(n) if (1..=65535).contains(&n) => {}
        _ => out.push(FieldCause::invalid(field, v, PORT_RANGE_MSG)),
    }
}

fn protocol(v: &Value, field: &str, out: &mut Causes) {
    match str_at(v) {
        "TCP" | "UDP" | "SCTP" => {}
        "" if v.is_null() => {}
        _ => out.push(FieldCause::not_supported(field, v, &["SCTP", "TCP", "UDP"])),
    }
}

fn one_of(v: &Value, field: &str, allowed: &[&str], out: &mut Causes) {
    if !allowed.contains(&str_at(v)) {
        // An absent field is Go's zero value "" in kube's message.
        let shown = if v.is_null() { json!("") } else { v.clone() };
        out.push(FieldCause::not_supported(field, &shown, allowed));
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata (ValidateObjectMeta).

fn meta(info: &ResourceInfo, m: &Value, out: &mut Causes) {
    let name = &m["name"];
    match name.as_str() {
        None | Some("") => out.push(required_msg(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(n) => {
            let errors = match info.plural {
                "namespaces" => dns1123_label_errors(n),
                "services" => dns1035_label_errors(n),
                // kube: "We don't care what you call your certificate requests" — kubelet
                // names them `node-csr-<base64url>`; only what a URL path cannot carry.
                "roles"
                | "clusterroles"
                | "rolebindings"
                | "clusterrolebindings"
                | "certificatesigningrequests" => rbac::path_segment_name_errors(n),
                _ => dns1123_subdomain_errors(n),
            };
            for e in errors {
                out.push(FieldCause::invalid("metadata.name", name, e));
            }
        }
    }
    labels(&m["labels"], "metadata.labels", out);
    annotations(&m["annotations"], "metadata.annotations", out);
}

fn labels(v: &Value, field: &str, out: &mut Causes) {
    let Some(map) = obj(v) else {
        return;
    };
    for (k, val) in map {
        for e in qualified_name_errors(k) {
            out.push(FieldCause::invalid(field, &json!(k), e));
        }
        match val {
            Value::String(s) => {
                // kube reports value errors on the map itself, not on the key.
                for e in label_value_errors(s) {
                    out.push(FieldCause::invalid(field, val, e));
                }
            }
            Value::Null => {}
            other => out.push(FieldCause::invalid(field, other, "must be a string")),
        }
    }
}

fn annotations(v: &Value, field: &str, out: &mut Causes) {
    let Some(map) = obj(v) else {
        return;
    };
    let mut total = 0usize;
    for (k, val) in map {
        // kube checks keys case-insensitively (annotations keep historical mixed-case keys).
        for e in qualified_name_errors(&k.to_ascii_lowercase()) {
            out.push(FieldCause::invalid(field, &json!(k), e));
        }
        total += k.len() + val.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE {
        out.push(too_long(field, TOTAL_ANNOTATION_SIZE));
    }
}

// ---------------------------------------------------------------------------------------------
// Pods.

/// Which restart policies a pod spec may use where it appears.
#[derive(Clone, Copy)]
enum Context {
    Pod,
    /// Deployment / ReplicaSet / DaemonSet template: only Always.
    Workload,
    /// Job template: OnFailure or Never.
    Job,
}

fn pod(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    pod_spec(&obj["spec"], "spec", Context::Pod, out);
    if let Some(old) = old {
        pod_update(&obj["spec"], &old["spec"], out);
    }
}

fn pod_spec(spec: &Value, path: &str, ctx: Context, out: &mut Causes) {
    // Volumes first: container mounts are checked against their names.
    let mut volume_names = BTreeSet::new();
    for (i, v) in arr(&spec["volumes"]).iter().enumerate() {
        let f = format!("{path}.volumes[{i}].name");
        match v["name"].as_str() {
            None | Some("") => out.push(FieldCause::required(f)),
            Some(n) => {
                for e in dns1123_label_errors(n) {
                    out.push(FieldCause::invalid(&f, &v["name"], e));
                }
                if !volume_names.insert(n.to_string()) {
                    out.push(FieldCause::duplicate(f, &v["name"]));
                }
            }
        }
    }

    let mut names = BTreeSet::new();
    for (i, c) in arr(&spec["initContainers"]).iter().enumerate() {
        container(
            c,
            &format!("{path}.initContainers[{i}]"),
            &mut names,
            &volume_names,
            out,
        );
    }
    let containers = arr(&spec["containers"]);
    if containers.is_empty() {
        out.push(FieldCause::required(format!("{path}.containers")));
    }
    for (i, c) in containers.iter().enumerate() {
        container(
            c,
            &format!("{path}.containers[{i}]"),
            &mut names,
            &volume_names,
            out,
        );
    }

    let rp = &spec["restartPolicy"];
    let rp_field = format!("{path}.restartPolicy");
    match ctx {
        Context::Pod => one_of(rp, &rp_field, &["Always", "OnFailure", "Never"], out),
        Context::Workload => one_of(rp, &rp_field, &["Always"], out),
        Context::Job => one_of(rp, &rp_field, &["OnFailure", "Never"], out),
    }
    if !spec["dnsPolicy"].is_null() {
        one_of(
            &spec["dnsPolicy"],
            &format!("{path}.dnsPolicy"),
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
            out,
        );
    }
    non_negative(
        &spec["terminationGracePeriodSeconds"],
        &format!("{path}.terminationGracePeriodSeconds"),
        out,
    );
    if let Some(n) = int_at(&spec["activeDeadlineSeconds"])
        && n < 1
    {
        out.push(FieldCause::invalid(
            format!("{path}.activeDeadlineSeconds"),
            &spec["activeDeadlineSeconds"],
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    let sa = str_at(&spec["serviceAccountName"]);
    if !sa.is_empty() {
        for e in dns1123_subdomain_errors(sa) {
            out.push(FieldCause::invalid(
                format!("{path}.serviceAccountName"),
                &spec["serviceAccountName"],
                e,
            ));
        }
    }
    labels(&spec["nodeSelector"], &format!("{path}.nodeSelector"), out);
}

fn container(
    c: &Value,
    path: &str,
    names: &mut BTreeSet<String>,
    volumes: &BTreeSet<String>,
    out: &mut Causes,
) {
    let name = &c["name"];
    match name.as_str() {
        None | Some("") => out.push(FieldCause::required(format!("{path}.name"))),
        Some(n) => {
            for e in dns1123_label_errors(n) {
                out.push(FieldCause::invalid(format!("{path}.name"), name, e));
            }
            if !names.insert(n.to_string()) {
                out.push(FieldCause::duplicate(format!("{path}.name"), name));
            }
        }
    }
    if str_at(&c["image"]).trim().is_empty() {
        out.push(FieldCause::required(format!("{path}.image")));
    }
    if !c["imagePullPolicy"].is_null() {
        one_of(
            &c["imagePullPolicy"],
            &format!("{path}.imagePullPolicy"),
            &["Always", "IfNotPresent", "Never"],
            out,
        );
    }

    let mut port_names = BTreeSet::new();
    for (i, p) in arr(&c["ports"]).iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        if let Some(n) = p["name"].as_str()
            && !n.is_empty()
        {
            // Names are unique per container (kube's validateContainerPorts); an invalid name
            // is reported once, not also as a duplicate.
            let errors = port_name_errors(n);
            if !errors.is_empty() {
                for e in errors {
                    out.push(FieldCause::invalid(format!("{pp}.name"), &p["name"], e));
                }
            } else if !port_names.insert(n.to_string()) {
                out.push(FieldCause::duplicate(format!("{pp}.name"), &p["name"]));
            }
        }
        if int_at(&p["containerPort"]) == Some(0) || p["containerPort"].is_null() {
            out.push(FieldCause::required(format!("{pp}.containerPort")));
        } else {
            port_in_range(&p["containerPort"], &format!("{pp}.containerPort"), out);
        }
        if int_at(&p["hostPort"]).is_some_and(|n| n != 0) {
            port_in_range(&p["hostPort"], &format!("{pp}.hostPort"), out);
        }
        protocol(&p["protocol"], &format!("{pp}.protocol"), out);
    }

    for (i, e) in arr(&c["env"]).iter().enumerate() {
        if str_at(&e["name"]).is_empty() {
            out.push(FieldCause::required(format!("{path}.env[{i}].name")));
        }
    }
    for (i, m) in arr(&c["volumeMounts"]).iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        match m["name"].as_str() {
            None | Some("") => out.push(FieldCause::required(format!("{mp}.name"))),
            Some(n) if !volumes.contains(n) => {
                out.push(not_found(format!("{mp}.name"), &m["name"]))
            }
            Some(_) => {}
        }
        if str_at(&m["mountPath"]).is_empty() {
            out.push(FieldCause::required(format!("{mp}.mountPath")));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &c[probe];
        if p.is_null() {
            continue;
        }
        for key in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            non_negative(&p[key], &format!("{path}.{probe}.{key}"), out);
        }
    }
}

/// ValidatePodUpdate: the spec is immutable except for a handful of fields.
fn pod_update(new: &Value, old: &Value, out: &mut Causes) {
    let (Some(new_spec), Some(old_spec)) = (obj(new), obj(old)) else {
        return;
    };
    // Copy the mutable fields from old into a copy of new: whatever still differs is forbidden.
    let mut masked = new_spec.clone();
    for key in ["containers", "initContainers"] {
        if let (Some(Value::Array(nc)), Some(Value::Array(oc))) =
            (masked.get_mut(key), old_spec.get(key))
            && nc.len() == oc.len()
        {
            for (n, o) in nc.iter_mut().zip(oc) {
                if let Some(n) = n.as_object_mut() {
                    match o.get("image") {
                        Some(img) => n.insert("image".into(), img.clone()),
                        None => n.remove("image"),
                    };
                }
            }
        }
    }
    for key in [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
    ] {
        match old_spec.get(key) {
            Some(v) => masked.insert(key.into(), v.clone()),
            None => masked.remove(key),
        };
    }
    if masked != *old_spec {
        out.push(FieldCause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }

    // Tolerations: every existing one must still be there (additions only).
    let new_tols = arr(&new_spec.get("tolerations").cloned().unwrap_or(Value::Null)).to_vec();
    for t in arr(old_spec.get("tolerations").unwrap_or(&Value::Null)) {
        if !new_tols.contains(t) {
            out.push(FieldCause::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }
    // activeDeadlineSeconds: may be set or lowered, never removed or raised.
    let old_ads = old_spec
        .get("activeDeadlineSeconds")
        .and_then(Value::as_i64);
    let new_v = new_spec
        .get("activeDeadlineSeconds")
        .unwrap_or(&Value::Null);
    if let Some(o) = old_ads {
        match new_v.as_i64() {
            None => out.push(FieldCause::invalid(
                "spec.activeDeadlineSeconds",
                new_v,
                "must not update from a positive integer to nil value",
            )),
            Some(n) if n > o => out.push(FieldCause::invalid(
                "spec.activeDeadlineSeconds",
                new_v,
                "must be less than or equal to previous value",
            )),
            Some(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Services.

fn service(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = &obj["spec"];
    let ty = str_at(&spec["type"]);
    one_of(
        &spec["type"],
        "spec.type",
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        out,
    );
    let headless = str_at(&spec["clusterIP"]) == "None";
    let ports = arr(&spec["ports"]);
    if ports.is_empty() && !headless && ty != "ExternalName" {
        out.push(FieldCause::required("spec.ports"));
    }
    if ty == "ExternalName" {
        external_name(&spec["externalName"], out);
    }
    service_ports(ports, ty, out);
    session_affinity(spec, out);
    for key in ["externalTrafficPolicy", "internalTrafficPolicy"] {
        if !spec[key].is_null() {
            one_of(
                &spec[key],
                &format!("spec.{key}"),
                &["Cluster", "Local"],
                out,
            );
        }
    }
    labels(&spec["selector"], "spec.selector", out);
    load_balancer_fields(spec, old.map(|o| &o["spec"]), out);
    health_check_node_port(obj, old, out);
    if let Some(old) = old {
        cluster_ip_update(spec, &old["spec"], out);
    }
}

/// `spec.healthCheckNodePort` (kube's `validateServiceExternalTrafficPolicy` and
/// `validateServiceExternalTrafficFieldsUpdate`): only where a health check is needed, and
/// fixed for as long as it is.
fn health_check_node_port(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    use super::admission::needs_health_check_node_port as needs;
    let port = &obj["spec"]["healthCheckNodePort"];
    let set = port.as_i64().is_some_and(|p| p != 0);
    if !needs(obj) {
        if set {
            out.push(FieldCause::invalid(
                "spec.healthCheckNodePort",
                port,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
        return;
    }
    if let Some(old) = old
        && needs(old)
        && old["spec"]["healthCheckNodePort"] != *port
    {
        out.push(FieldCause::forbidden(
            "spec.healthCheckNodePort",
            "field is immutable",
        ));
    }
}

/// The LoadBalancer-only fields: only on LoadBalancers, and the class fixed once set.
fn load_balancer_fields(spec: &Value, old_spec: Option<&Value>, out: &mut Causes) {
    let ty = str_at(&spec["type"]);
    if ty != "LoadBalancer" {
        for field in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if !spec[field].is_null() {
                out.push(FieldCause::forbidden(
                    format!("spec.{field}"),
                    "may only be used when `type` is 'LoadBalancer'",
                ));
            }
        }
        return;
    }
    let ip = &spec["loadBalancerIP"];
    if let Some(s) = ip.as_str()
        && !s.is_empty()
        && s.parse::<std::net::IpAddr>().is_err()
    {
        out.push(FieldCause::invalid(
            "spec.loadBalancerIP",
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    if let Some(old) = old_spec
        && str_at(&old["type"]) == "LoadBalancer"
        && old["loadBalancerClass"] != spec["loadBalancerClass"]
    {
        out.push(FieldCause::invalid(
            "spec.loadBalancerClass",
            &spec["loadBalancerClass"],
            "may not change once set",
        ));
    }
}

fn external_name(en: &Value, out: &mut Causes) {
    match en.as_str() {
        None | Some("") => out.push(FieldCause::required("spec.externalName")),
        Some(s) => {
            let s = s.strip_suffix('.').unwrap_or(s);
            for e in dns1123_subdomain_errors(s) {
                out.push(FieldCause::invalid("spec.externalName", en, e));
            }
        }
    }
}

/// Port names (required and unique when there are several), numbers, protocols, target
/// ports, and node ports only for the types that have them.
fn service_ports(ports: &[Value], ty: &str, out: &mut Causes) {
    let mut names = BTreeSet::new();
    let node_ports_ok = ty == "NodePort" || ty == "LoadBalancer";
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        match p["name"].as_str() {
            None | Some("") => {
                if ports.len() > 1 {
                    out.push(FieldCause::required(format!("{pp}.name")));
                }
            }
            Some(n) => {
                for e in dns1123_label_errors(n) {
                    out.push(FieldCause::invalid(format!("{pp}.name"), &p["name"], e));
                }
                if !names.insert(n.to_string()) {
                    out.push(FieldCause::duplicate(format!("{pp}.name"), &p["name"]));
                }
            }
        }
        port_in_range(&p["port"], &format!("{pp}.port"), out);
        protocol(&p["protocol"], &format!("{pp}.protocol"), out);
        match &p["targetPort"] {
            Value::Null => {}
            Value::String(s) => {
                for e in port_name_errors(s) {
                    out.push(FieldCause::invalid(
                        format!("{pp}.targetPort"),
                        &p["targetPort"],
                        e,
                    ));
                }
            }
            v => port_in_range(v, &format!("{pp}.targetPort"), out),
        }
        if int_at(&p["nodePort"]).is_some_and(|n| n != 0) {
            if node_ports_ok {
                port_in_range(&p["nodePort"], &format!("{pp}.nodePort"), out);
            } else {
                out.push(FieldCause::forbidden(
                    format!("{pp}.nodePort"),
                    format!("may not be used when `type` is '{ty}'"),
                ));
            }
        }
    }
}

/// A ClientIP timeout within a day; no ClientIP config without ClientIP affinity.
fn session_affinity(spec: &Value, out: &mut Causes) {
    one_of(
        &spec["sessionAffinity"],
        "spec.sessionAffinity",
        &["ClientIP", "None"],
        out,
    );
    let timeout = &spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"];
    if str_at(&spec["sessionAffinity"]) == "ClientIP" {
        if let Some(t) = int_at(timeout)
            && !(1..=86400).contains(&t)
        {
            out.push(FieldCause::invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                timeout,
                "must be greater than 0 and less than 86400",
            ));
        }
    } else if !spec["sessionAffinityConfig"]["clientIP"].is_null() {
        out.push(FieldCause::invalid(
            "spec.sessionAffinityConfig",
            &spec["sessionAffinityConfig"],
            "must not be set when session affinity is None",
        ));
    }
}

/// Filling an unallocated ClusterIP is allowed; changing an allocated one is not, except when
/// the type moves to/from ExternalName (which has no ClusterIP).
fn cluster_ip_update(spec: &Value, old_spec: &Value, out: &mut Causes) {
    let (o, n) = (str_at(&old_spec["clusterIP"]), str_at(&spec["clusterIP"]));
    let external =
        str_at(&spec["type"]) == "ExternalName" || str_at(&old_spec["type"]) == "ExternalName";
    if !o.is_empty() && !n.is_empty() && o != n && !external {
        out.push(FieldCause::invalid(
            "spec.clusterIP",
            &spec["clusterIP"],
            "field is immutable",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors.

/// ValidateLabelSelector: label syntax plus operator/values consistency.
fn selector(sel: &Value, field: &str, out: &mut Causes) {
    labels(&sel["matchLabels"], &format!("{field}.matchLabels"), out);
    for (i, e) in arr(&sel["matchExpressions"]).iter().enumerate() {
        let ep = format!("{field}.matchExpressions[{i}]");
        let values = arr(&e["values"]);
        match str_at(&e["operator"]) {
            "In" | "NotIn" => {
                if values.is_empty() {
                    out.push(required_msg(
                        format!("{ep}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    out.push(FieldCause::forbidden(
                        format!("{ep}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            _ => out.push(FieldCause::invalid(
                format!("{ep}.operator"),
                &e["operator"],
                "not a valid selector operator",
            )),
        }
        for err in qualified_name_errors(str_at(&e["key"])) {
            out.push(FieldCause::invalid(format!("{ep}.key"), &e["key"], err));
        }
    }
}

fn selector_is_empty(sel: &Value) -> bool {
    obj(&sel["matchLabels"]).is_none_or(Map::is_empty) && arr(&sel["matchExpressions"]).is_empty()
}

/// Whether `sel` selects an object with `labels` (LabelSelectorAsSelector + Matches).
pub(crate) fn selector_matches(sel: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(ml) = obj(&sel["matchLabels"]) {
        for (k, v) in ml {
            if get(k) != v.as_str() {
                return false;
            }
        }
    }
    for e in arr(&sel["matchExpressions"]) {
        let key = str_at(&e["key"]);
        let values: Vec<&str> = arr(&e["values"]).iter().filter_map(Value::as_str).collect();
        let ok = match (str_at(&e["operator"]), get(key)) {
            ("In", Some(v)) => values.contains(&v),
            ("In", None) => false,
            ("NotIn", Some(v)) => !values.contains(&v),
            ("NotIn", None) => true,
            ("Exists", v) => v.is_some(),
            ("DoesNotExist", v) => v.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `spec.selector` + `spec.template` of a controller: required, non-empty, matching.
fn selector_and_template(kind: &str, spec: &Value, ctx: Context, out: &mut Causes) {
    let sel = &spec["selector"];
    if sel.is_null() {
        out.push(FieldCause::required("spec.selector"));
    } else {
        selector(sel, "spec.selector", out);
        if selector_is_empty(sel) {
            out.push(FieldCause::invalid(
                "spec.selector",
                sel,
                format!("empty selector is invalid for {kind}"),
            ));
        }
    }
    let tmpl = &spec["template"];
    let tlabels = &tmpl["metadata"]["labels"];
    labels(tlabels, "spec.template.metadata.labels", out);
    annotations(
        &tmpl["metadata"]["annotations"],
        "spec.template.metadata.annotations",
        out,
    );
    if !sel.is_null() && !selector_is_empty(sel) && !selector_matches(sel, tlabels) {
        out.push(FieldCause::invalid(
            "spec.template.metadata.labels",
            tlabels,
            "`selector` does not match template `labels`",
        ));
    }
    if tmpl.is_null() {
        out.push(FieldCause::required("spec.template"));
    } else {
        pod_spec(&tmpl["spec"], "spec.template.spec", ctx, out);
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads.

/// IntOrString ≥ 0 or a percentage; returns the value as an int (percent → its number).
fn int_or_percent(v: &Value, field: &str, out: &mut Causes) -> Option<i64> {
    match v {
        Value::Null => None,
        Value::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(n) if n >= 0 => {
                if n > 100 {
                    out.push(FieldCause::invalid(
                        field,
                        v,
                        "must not be greater than 100%",
                    ));
                }
                Some(n)
            }
            _ => {
                out.push(FieldCause::invalid(
                    field,
                    v,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
                None
            }
        },
        _ => match int_at(v) {
            Some(n) if n >= 0 => Some(n),
            _ => {
                out.push(FieldCause::invalid(
                    field,
                    v,
                    "must be greater than or equal to 0",
                ));
                None
            }
        },
    }
}

fn workload(plural: &str, obj: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = &obj["spec"];
    let kind = match plural {
        "deployments" => "deployment",
        "replicasets" => "replicaset",
        _ => "daemonset",
    };
    if plural != "daemonsets" {
        non_negative(&spec["replicas"], "spec.replicas", out);
    }
    non_negative(&spec["minReadySeconds"], "spec.minReadySeconds", out);
    non_negative(
        &spec["revisionHistoryLimit"],
        "spec.revisionHistoryLimit",
        out,
    );
    selector_and_template(kind, spec, Context::Workload, out);

    if plural == "deployments" {
        let strategy = &spec["strategy"];
        one_of(
            &strategy["type"],
            "spec.strategy.type",
            &["Recreate", "RollingUpdate"],
            out,
        );
        let ru = &strategy["rollingUpdate"];
        if str_at(&strategy["type"]) == "Recreate" && !ru.is_null() {
            out.push(FieldCause::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        if !ru.is_null() {
            rolling_update(ru, "spec.strategy.rollingUpdate", out);
        }
        if let (Some(p), m) = (
            int_at(&spec["progressDeadlineSeconds"]),
            int_at(&spec["minReadySeconds"]).unwrap_or(0),
        ) && p <= m
        {
            out.push(FieldCause::invalid(
                "spec.progressDeadlineSeconds",
                &spec["progressDeadlineSeconds"],
                "must be greater than minReadySeconds",
            ));
        }
    }
    if plural == "daemonsets" {
        let strategy = &spec["updateStrategy"];
        one_of(
            &strategy["type"],
            "spec.updateStrategy.type",
            &["OnDelete", "RollingUpdate"],
            out,
        );
        if !strategy["rollingUpdate"].is_null() {
            rolling_update(
                &strategy["rollingUpdate"],
                "spec.updateStrategy.rollingUpdate",
                out,
            );
        }
    }

    if let Some(old) = old {
        // apps/v1 selectors are immutable: changing one would orphan the existing pods.
        let old_sel = &old["spec"]["selector"];
        if !old_sel.is_null() && *old_sel != spec["selector"] {
            out.push(FieldCause::invalid(
                "spec.selector",
                &spec["selector"],
                "field is immutable",
            ));
        }
    }
}

fn rolling_update(ru: &Value, path: &str, out: &mut Causes) {
    let unavailable = int_or_percent(
        &ru["maxUnavailable"],
        &format!("{path}.maxUnavailable"),
        out,
    );
    let surge = int_or_percent(&ru["maxSurge"], &format!("{path}.maxSurge"), out);
    if unavailable == Some(0) && surge.unwrap_or(0) == 0 {
        out.push(FieldCause::invalid(
            format!("{path}.maxUnavailable"),
            &ru["maxUnavailable"],
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

fn job(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = &obj["spec"];
    for key in [
        "parallelism",
        "completions",
        "backoffLimit",
        "backoffLimitPerIndex",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(&spec[key], &format!("spec.{key}"), out);
    }
    if let Some(n) = int_at(&spec["activeDeadlineSeconds"])
        && n <= 0
    {
        out.push(FieldCause::invalid(
            "spec.activeDeadlineSeconds",
            &spec["activeDeadlineSeconds"],
            "must be greater than or equal to 1",
        ));
    }
    if !spec["completionMode"].is_null() {
        one_of(
            &spec["completionMode"],
            "spec.completionMode",
            &["NonIndexed", "Indexed"],
            out,
        );
    }
    if str_at(&spec["completionMode"]) == "Indexed" && spec["completions"].is_null() {
        out.push(required_msg(
            "spec.completions",
            "when completion mode is Indexed",
        ));
    }
    selector_and_template("job", spec, Context::Job, out);

    if let Some(old) = old {
        let old_spec = &old["spec"];
        for key in ["selector", "template", "completionMode"] {
            if !old_spec[key].is_null() && old_spec[key] != spec[key] {
                out.push(FieldCause::invalid(
                    format!("spec.{key}"),
                    &spec[key],
                    "field is immutable",
                ));
            }
        }
        if old_spec["completions"] != spec["completions"] {
            out.push(FieldCause::invalid(
                "spec.completions",
                &spec["completions"],
                "field is immutable",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ConfigMaps and Secrets.

fn data_keys(v: &Value, field: &str, out: &mut Causes) {
    if let Some(m) = obj(v) {
        for k in m.keys() {
            for e in config_key_errors(k) {
                out.push(FieldCause::invalid(format!("{field}[{k}]"), &json!(k), e));
            }
        }
    }
}

/// `immutable: true` freezes the payload and itself.
fn immutable_payload(obj: &Value, old: &Value, keys: &[&str], out: &mut Causes) {
    if old["immutable"].as_bool() != Some(true) {
        return;
    }
    const WHY: &str = "field is immutable when `immutable` is set";
    for key in keys {
        let norm = |v: &Value| {
            if obj_is_empty(v) {
                Value::Null
            } else {
                v.clone()
            }
        };
        if norm(&obj[*key]) != norm(&old[*key]) {
            out.push(FieldCause::forbidden(*key, WHY));
        }
    }
    if obj["immutable"].as_bool() != Some(true) {
        out.push(FieldCause::forbidden("immutable", WHY));
    }
}

fn obj_is_empty(v: &Value) -> bool {
    v.is_null() || obj(v).is_some_and(Map::is_empty)
}

fn configmap(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    data_keys(&obj["data"], "data", out);
    data_keys(&obj["binaryData"], "binaryData", out);
    if let (Some(d), Some(b)) = (self::obj(&obj["data"]), self::obj(&obj["binaryData"])) {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            out.push(FieldCause::invalid(
                format!("data[{k}]"),
                &json!(k),
                "duplicate of key present in binaryData",
            ));
        }
    }
    let size: usize = [&obj["data"], &obj["binaryData"]]
        .iter()
        .filter_map(|v| self::obj(v))
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > 1024 * 1024 {
        out.push(too_long("", 1024 * 1024));
    }
    if let Some(old) = old {
        immutable_payload(obj, old, &["data", "binaryData"], out);
    }
}

fn secret(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    let data = &obj["data"];
    data_keys(data, "data", out);
    // `data` values are base64 on the wire; the 1 MiB limit is on the decoded bytes.
    let size: usize = self::obj(data)
        .map(|m| {
            m.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, |s| s.len() / 4 * 3))
                .sum()
        })
        .unwrap_or(0);
    if size > 1024 * 1024 {
        out.push(too_long("data", 1024 * 1024));
    }
    let ty = str_at(&obj["type"]);
    let required: &[&str] = match ty {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        _ => &[],
    };
    for key in required {
        if data.get(*key).is_none_or(Value::is_null) {
            out.push(FieldCause::required(format!("data[{key}]")));
        }
    }
    if ty == "kubernetes.io/service-account-token"
        && str_at(&obj["metadata"]["annotations"]["kubernetes.io/service-account.name"]).is_empty()
    {
        out.push(FieldCause::required(
            "metadata.annotations[kubernetes.io/service-account.name]",
        ));
    }
    if let Some(old) = old {
        if old["type"] != obj["type"] {
            out.push(FieldCause::invalid(
                "type",
                &obj["type"],
                "field is immutable",
            ));
        }
        immutable_payload(obj, old, &["data"], out);
    }
}

// ---------------------------------------------------------------------------------------------
// EndpointSlices.

fn endpointslice(obj: &Value, out: &mut Causes) {
    let at = &obj["addressType"];
    if at.is_null() || str_at(at).is_empty() {
        out.push(FieldCause::required("addressType"));
    } else {
        one_of(at, "addressType", &["IPv4", "IPv6", "FQDN"], out);
    }
    for (i, e) in arr(&obj["endpoints"]).iter().enumerate() {
        let addrs = arr(&e["addresses"]);
        if addrs.is_empty() {
            out.push(required_msg(
                format!("endpoints[{i}].addresses"),
                "must contain at least 1 address",
            ));
        }
    }
    for (i, p) in arr(&obj["ports"]).iter().enumerate() {
        if let Some(n) = int_at(&p["port"])
            && !(0..=65535).contains(&n)
        {
            out.push(FieldCause::invalid(
                format!("ports[{i}].port"),
                &p["port"],
                "must be between 0 and 65535, inclusive",
            ));
        }
        protocol(&p["protocol"], &format!("ports[{i}].protocol"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::defaults::apply_defaults;
    use crate::apiserver::resources::{RESOURCES, lookup};

    fn info(group: &str, plural: &str) -> &'static ResourceInfo {
        lookup(group, "v1", plural).unwrap()
    }

    /// Default then validate, as the create path does.
    fn check(group: &str, plural: &str, mut obj: Value) -> Vec<FieldCause> {
        apply_defaults(plural, &mut obj);
        validate(info(group, plural), &obj, None)
    }

    fn fields(c: &[FieldCause]) -> Vec<&str> {
        c.iter().map(|c| c.field.as_str()).collect()
    }

    fn nginx_pod() -> Value {
        json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default","labels":{"app":"web"}},
            "spec":{"containers":[{"name":"nginx","image":"nginx:1.27","ports":[{"name":"http","containerPort":80}],
                "volumeMounts":[{"name":"data","mountPath":"/data"}]}],
                "volumes":[{"name":"data","emptyDir":{}}]}})
    }

    fn deployment() -> Value {
        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
            "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
                "template":{"metadata":{"labels":{"app":"web","tier":"fe"}},
                    "spec":{"containers":[{"name":"nginx","image":"nginx"}]}}}})
    }

    #[test]
    fn csr_names_are_any_path_segment() {
        let csr = |name: &str| {
            json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name}, "spec": {}})
        };
        let named = |name: &str| {
            let causes = check(
                "certificates.k8s.io",
                "certificatesigningrequests",
                csr(name),
            );
            fields(&causes).contains(&"metadata.name")
        };
        assert!(!named(
            "node-csr-JQX2eo-qNgtejob7r07Adyh7c28topZDUkWK_5AW0u_"
        ));
        assert!(named("a/b"));
        assert!(named(".."));
    }

    #[test]
    fn name_formats() {
        assert!(is_dns1123_label("my-name"));
        assert!(is_dns1123_label("123-abc"));
        assert!(!is_dns1123_label("My-name"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a-"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_label(&"a".repeat(63)));
        assert!(is_dns1123_subdomain("example.com"));
        assert!(!is_dns1123_subdomain("example..com"));
        assert!(!is_dns1123_subdomain(".a"));
        assert!(!is_dns1123_subdomain("a_b"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_dns1035_label("abc-123"));
        assert!(!is_dns1035_label("123-abc"));
        assert!(!is_dns1035_label(""));
    }

    #[test]
    fn valid_objects_pass() {
        assert_eq!(check("", "pods", nginx_pod()), vec![]);
        assert_eq!(check("apps", "deployments", deployment()), vec![]);
        let svc = json!({"metadata":{"name":"web"},"spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}});
        assert_eq!(check("", "services", svc), vec![]);
        let job = json!({"metadata":{"name":"pi","uid":"1234"},"spec":{"template":{"spec":{"restartPolicy":"Never",
            "containers":[{"name":"pi","image":"perl"}]}}}});
        assert_eq!(check("batch", "jobs", job), vec![]);
        let ns = json!({"metadata":{"name":"dev"}});
        assert_eq!(check("", "namespaces", ns), vec![]);
        let cm = json!({"metadata":{"name":"cfg"},"data":{"app.conf":"x","KEY_1":"y"}});
        assert_eq!(check("", "configmaps", cm), vec![]);
        let ds = json!({"metadata":{"name":"agent"},"spec":{"selector":{"matchExpressions":[{"key":"app","operator":"In","values":["agent"]}]},
            "template":{"metadata":{"labels":{"app":"agent"}},"spec":{"containers":[{"name":"a","image":"agent:1"}]}}}});
        assert_eq!(check("apps", "daemonsets", ds), vec![]);
        let es = json!({"metadata":{"name":"web-abc"},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]}],"ports":[{"port":80}]});
        assert_eq!(check("discovery.k8s.io", "endpointslices", es), vec![]);
        let lease = json!({"metadata":{"name":"kube-scheduler"}});
        assert_eq!(
            validate(
                lookup("coordination.k8s.io", "v1", "leases").unwrap(),
                &lease,
                None
            ),
            vec![]
        );
        let node = json!({"metadata":{"name":"node-1.example.com"}});
        assert_eq!(check("", "nodes", node), vec![]);
    }

    #[test]
    fn metadata_rules() {
        let c = check("", "configmaps", json!({"metadata":{}}));
        assert_eq!(c[0].field, "metadata.name");
        assert_eq!(c[0].reason, "FieldValueRequired");
        assert_eq!(
            c[0].message,
            "Required value: name or generateName is required"
        );

        let c = check(
            "",
            "pods",
            json!({"metadata":{"name":"Web_1"},"spec":{"containers":[{"name":"a","image":"b"}]}}),
        );
        assert_eq!(fields(&c), ["metadata.name"]);
        assert!(
            c[0].message
                .starts_with("Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain")
        );

        let c = check("", "namespaces", json!({"metadata":{"name":"a.b"}}));
        assert!(c[0].message.contains("RFC 1123 label"));
        let c = check(
            "",
            "services",
            json!({"metadata":{"name":"1web"},"spec":{"ports":[{"port":1}]}}),
        );
        assert!(c[0].message.contains("DNS-1035"));
        let c = check("", "secrets", json!({"metadata":{"name":"x".repeat(254)}}));
        assert_eq!(
            c[0].message.split(": ").last().unwrap(),
            "must be no more than 253 characters"
        );

        let c = check(
            "",
            "configmaps",
            json!({"metadata":{"name":"ok","labels":{"bad key":"v","ok":"bad value!","example.com/fine":"x","-x/y":"z"}}}),
        );
        assert_eq!(
            fields(&c),
            ["metadata.labels", "metadata.labels", "metadata.labels"]
        );
        assert!(c.iter().any(|c| c.message.contains("prefix part")));

        let big = "x".repeat(TOTAL_ANNOTATION_SIZE);
        let c = check(
            "",
            "configmaps",
            json!({"metadata":{"name":"ok","annotations":{"a":big,"Kubectl.Kubernetes.io/Mixed":"ok"}}}),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason, "FieldValueTooLong");
        assert_eq!(c[0].field, "metadata.annotations");
    }

    #[test]
    fn pod_rules() {
        let c = check("", "pods", json!({"metadata":{"name":"p"},"spec":{}}));
        assert_eq!(fields(&c), ["spec.containers"]);

        let c = check(
            "",
            "pods",
            json!({"metadata":{"name":"p"},"spec":{"restartPolicy":"Sometimes",
                "initContainers":[{"name":"main","image":"i"}],
                "containers":[{"name":"main","image":""},{"name":"Bad","image":"x",
                    "ports":[{"containerPort":0},{"name":"http","containerPort":70000,"protocol":"ICMP"},{"name":"http","containerPort":80},{"name":"--x","containerPort":81}],
                    "volumeMounts":[{"name":"missing","mountPath":"/m"}]}]}}),
        );
        let f = fields(&c);
        assert!(f.contains(&"spec.containers[0].name"), "{f:?}");
        assert!(f.contains(&"spec.containers[0].image"));
        assert!(f.contains(&"spec.containers[1].name"));
        assert!(f.contains(&"spec.containers[1].ports[0].containerPort"));
        assert!(f.contains(&"spec.containers[1].ports[1].containerPort"));
        assert!(f.contains(&"spec.containers[1].ports[1].protocol"));
        assert!(f.contains(&"spec.containers[1].ports[2].name"));
        assert!(f.contains(&"spec.containers[1].ports[3].name"));
        assert!(f.contains(&"spec.containers[1].volumeMounts[0].name"));
        assert!(f.contains(&"spec.restartPolicy"));
        let dup = c
            .iter()
            .find(|c| c.field == "spec.containers[0].name")
            .unwrap();
        assert_eq!(dup.message, "Duplicate value: \"main\"");
        let rp = c.iter().find(|c| c.field == "spec.restartPolicy").unwrap();
        assert_eq!(
            rp.message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        let port = c
            .iter()
            .find(|c| c.field == "spec.containers[1].ports[0].containerPort")
            .unwrap();
        assert_eq!(port.message, "Required value");
        let port = c
            .iter()
            .find(|c| c.field == "spec.containers[1].ports[1].containerPort")
            .unwrap();
        assert_eq!(
            port.message,
            "Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn pod_update_rules() {
        let pods = info("", "pods");
        let mut old = nginx_pod();
        apply_defaults("pods", &mut old);

        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        new["spec"]["activeDeadlineSeconds"] = json!(100);
        new["spec"]["terminationGracePeriodSeconds"] = json!(5);
        new["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key":"k","operator":"Exists"}));
        new["metadata"]["labels"]["extra"] = json!("yes");
        assert_eq!(validate(pods, &new, Some(&old)), vec![]);

        let mut bad = old.clone();
        bad["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
        let c = validate(pods, &bad, Some(&old));
        assert_eq!(fields(&c), ["spec"]);
        assert_eq!(c[0].reason, "FieldValueForbidden");
        assert!(
            c[0].message
                .contains("pod updates may not change fields other than")
        );

        let mut removed = old.clone();
        removed["spec"]["tolerations"] = json!([]);
        assert_eq!(
            fields(&validate(pods, &removed, Some(&old))),
            ["spec.tolerations"]
        );

        let mut raised = new.clone();
        raised["spec"]["activeDeadlineSeconds"] = json!(200);
        assert_eq!(
            fields(&validate(pods, &raised, Some(&new))),
            ["spec.activeDeadlineSeconds"]
        );
    }

    #[test]
    fn service_rules() {
        let c = check("", "services", json!({"metadata":{"name":"web"},"spec":{}}));
        assert_eq!(fields(&c), ["spec.ports"]);
        assert_eq!(
            check(
                "",
                "services",
                json!({"metadata":{"name":"web"},"spec":{"clusterIP":"None"}})
            ),
            vec![]
        );
        assert_eq!(
            check(
                "",
                "services",
                json!({"metadata":{"name":"web"},"spec":{"type":"ExternalName","externalName":"db.example.com."}})
            ),
            vec![]
        );
        let c = check(
            "",
            "services",
            json!({"metadata":{"name":"web"},"spec":{"type":"ExternalName"}}),
        );
        assert_eq!(fields(&c), ["spec.externalName"]);

        let c = check(
            "",
            "services",
            json!({"metadata":{"name":"web"},"spec":{"type":"Magic","sessionAffinity":"Sticky",
                "ports":[{"port":80,"nodePort":30000},{"name":"a","port":0,"protocol":"ICMP"},{"name":"a","port":81,"targetPort":70000}]}}),
        );
        let f = fields(&c);
        for want in [
            "spec.type",
            "spec.ports[0].name",
            "spec.ports[1].port",
            "spec.ports[1].protocol",
            "spec.ports[2].name",
            "spec.ports[2].targetPort",
            "spec.sessionAffinity",
        ] {
            assert!(f.contains(&want), "{want} missing from {f:?}");
        }

        let c = check(
            "",
            "services",
            json!({"metadata":{"name":"web"},"spec":{"ports":[{"port":80,"nodePort":30000}]}}),
        );
        assert_eq!(fields(&c), ["spec.ports[0].nodePort"]);
        assert_eq!(
            c[0].message,
            "Forbidden: may not be used when `type` is 'ClusterIP'"
        );
        let np = json!({"metadata":{"name":"web"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30000}]}});
        assert_eq!(check("", "services", np), vec![]);
    }

    #[test]
    fn service_cluster_ip_is_immutable() {
        let svc = info("", "services");
        let mut old = json!({"metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}});
        apply_defaults("services", &mut old);
        let mut filled = old.clone();
        filled["spec"]["clusterIP"] = json!("10.96.0.10");
        assert_eq!(validate(svc, &filled, Some(&old)), vec![]);
        let mut changed = filled.clone();
        changed["spec"]["clusterIP"] = json!("10.96.0.11");
        assert_eq!(
            fields(&validate(svc, &changed, Some(&filled))),
            ["spec.clusterIP"]
        );
    }

    #[test]
    fn health_check_node_port_only_where_needed_and_fixed() {
        let svc = info("", "services");
        let c = check(
            "",
            "services",
            json!({"metadata":{"name":"web"},"spec":{"type":"NodePort","healthCheckNodePort":30100,
                "ports":[{"port":80}]}}),
        );
        assert_eq!(fields(&c), ["spec.healthCheckNodePort"]);
        assert!(c[0].message.ends_with(
            "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        ));
        let mut old = json!({"metadata":{"name":"web"},"spec":{"type":"LoadBalancer",
            "externalTrafficPolicy":"Local","healthCheckNodePort":30100,"ports":[{"port":80}]}});
        apply_defaults("services", &mut old);
        assert_eq!(validate(svc, &old, None), vec![]);
        assert_eq!(validate(svc, &old, Some(&old)), vec![]);
        let mut moved = old.clone();
        moved["spec"]["healthCheckNodePort"] = json!(30101);
        let c = validate(svc, &moved, Some(&old));
        assert_eq!(fields(&c), ["spec.healthCheckNodePort"]);
        assert_eq!(c[0].message, "Forbidden: field is immutable");
    }

    #[test]
    fn workload_rules() {
        let mut d = deployment();
        d["spec"]["selector"] = json!({"matchLabels":{"app":"other"}});
        d["spec"]["replicas"] = json!(-1);
        let c = check("apps", "deployments", d);
        assert_eq!(
            fields(&c),
            ["spec.replicas", "spec.template.metadata.labels"]
        );
        assert!(
            c[1].message
                .ends_with("`selector` does not match template `labels`")
        );

        let mut d = deployment();
        d["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(fields(&check("apps", "deployments", d)), ["spec.selector"]);

        let mut d = deployment();
        d["spec"]["selector"] = json!({});
        let c = check("apps", "deployments", d);
        assert_eq!(fields(&c), ["spec.selector"]);
        assert!(
            c[0].message
                .contains("empty selector is invalid for deployment")
        );

        let mut d = deployment();
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["strategy"] =
            json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":0,"maxSurge":"0%"}});
        let c = check("apps", "deployments", d);
        assert_eq!(
            fields(&c),
            [
                "spec.template.spec.restartPolicy",
                "spec.strategy.rollingUpdate.maxUnavailable"
            ]
        );

        let mut d = deployment();
        d["spec"]["selector"] = json!({"matchExpressions":[{"key":"app","operator":"Exists","values":["x"]},{"key":"tier","operator":"Maybe"}]});
        let c = check("apps", "deployments", d);
        assert!(fields(&c).contains(&"spec.selector.matchExpressions[0].values"));
        assert!(fields(&c).contains(&"spec.selector.matchExpressions[1].operator"));

        let rs = json!({"metadata":{"name":"web-1"},"spec":{"selector":{"matchLabels":{"app":"web"}},
            "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"a","image":"b"}]}}}});
        assert_eq!(check("apps", "replicasets", rs), vec![]);
    }

    #[test]
    fn selector_matching() {
        let l = json!({"app":"web","tier":"fe"});
        assert!(selector_matches(&json!({"matchLabels":{"app":"web"}}), &l));
        assert!(!selector_matches(&json!({"matchLabels":{"app":"db"}}), &l));
        assert!(selector_matches(
            &json!({"matchExpressions":[{"key":"tier","operator":"In","values":["fe","be"]}]}),
            &l
        ));
        assert!(selector_matches(
            &json!({"matchExpressions":[{"key":"x","operator":"NotIn","values":["a"]}]}),
            &l
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions":[{"key":"app","operator":"DoesNotExist"}]}),
            &l
        ));
        assert!(selector_matches(
            &json!({"matchExpressions":[{"key":"app","operator":"Exists"}]}),
            &l
        ));
        assert!(!selector_matches(
            &json!({"matchLabels":{"app":"web"}}),
            &Value::Null
        ));
    }

    #[test]
    fn workload_selector_is_immutable() {
        let deploy = info("apps", "deployments");
        let mut old = deployment();
        apply_defaults("deployments", &mut old);
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(5);
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_eq!(validate(deploy, &scaled, Some(&old)), vec![]);
        let mut moved = old.clone();
        moved["spec"]["selector"] = json!({"matchLabels":{"app":"web","tier":"fe"}});
        let c = validate(deploy, &moved, Some(&old));
        assert_eq!(fields(&c), ["spec.selector"]);
        assert!(c[0].message.ends_with("field is immutable"));
    }

    #[test]
    fn job_rules() {
        let c = check(
            "batch",
            "jobs",
            json!({"metadata":{"name":"pi","uid":"u"},"spec":{"parallelism":-1,"backoffLimit":-2,
                "template":{"spec":{"containers":[{"name":"pi","image":"perl"}]}}}}),
        );
        assert_eq!(
            fields(&c),
            [
                "spec.parallelism",
                "spec.backoffLimit",
                "spec.template.spec.restartPolicy"
            ]
        );
        assert_eq!(
            c[2].message,
            "Unsupported value: \"\": supported values: \"OnFailure\", \"Never\""
        );

        let jobs = info("batch", "jobs");
        let mut old = json!({"metadata":{"name":"pi","uid":"u"},"spec":{"template":{"spec":{"restartPolicy":"OnFailure",
            "containers":[{"name":"pi","image":"perl"}]}}}});
        apply_defaults("jobs", &mut old);
        assert_eq!(validate(jobs, &old, None), vec![]);
        let mut new = old.clone();
        new["spec"]["suspend"] = json!(true);
        new["spec"]["backoffLimit"] = json!(2);
        assert_eq!(validate(jobs, &new, Some(&old)), vec![]);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("perl:2");
        assert_eq!(fields(&validate(jobs, &new, Some(&old))), ["spec.template"]);
    }

    #[test]
    fn configmap_and_secret_rules() {
        let c = check(
            "",
            "configmaps",
            json!({"metadata":{"name":"c"},"data":{"bad/key":"x","..x":"y","ok":"z"},"binaryData":{"ok":"AA=="}}),
        );
        assert_eq!(fields(&c), ["data[..x]", "data[bad/key]", "data[ok]"]);
        assert!(c[1].message.contains("a valid config key"));

        let cms = info("", "configmaps");
        let old = json!({"metadata":{"name":"c"},"data":{"a":"1"},"immutable":true});
        let mut new = old.clone();
        assert_eq!(validate(cms, &new, Some(&old)), vec![]);
        new["data"]["a"] = json!("2");
        new["immutable"] = json!(false);
        let c = validate(cms, &new, Some(&old));
        assert_eq!(fields(&c), ["data", "immutable"]);
        assert_eq!(
            c[0].message,
            "Forbidden: field is immutable when `immutable` is set"
        );
        // Mutable configmaps change freely.
        let free = json!({"metadata":{"name":"c"},"data":{"a":"1"}});
        assert_eq!(
            validate(
                cms,
                &json!({"metadata":{"name":"c"},"data":{"a":"2"}}),
                Some(&free)
            ),
            vec![]
        );

        let c = check(
            "",
            "secrets",
            json!({"metadata":{"name":"tls"},"type":"kubernetes.io/tls","data":{"tls.crt":"eA=="}}),
        );
        assert_eq!(fields(&c), ["data[tls.key]"]);
        let secrets = info("", "secrets");
        let old = json!({"metadata":{"name":"s"},"type":"Opaque","data":{"a":"eA=="}});
        let new = json!({"metadata":{"name":"s"},"type":"kubernetes.io/tls","data":{"tls.crt":"eA==","tls.key":"eA=="}});
        assert_eq!(fields(&validate(secrets, &new, Some(&old))), ["type"]);
    }

    #[test]
    fn endpointslice_rules() {
        let c = check(
            "discovery.k8s.io",
            "endpointslices",
            json!({"metadata":{"name":"e"}}),
        );
        assert_eq!(fields(&c), ["addressType"]);
        assert_eq!(c[0].reason, "FieldValueRequired");
        let c = check(
            "discovery.k8s.io",
            "endpointslices",
            json!({"metadata":{"name":"e"},"addressType":"IPv5","endpoints":[{}]}),
        );
        assert_eq!(fields(&c), ["addressType", "endpoints[0].addresses"]);
        assert_eq!(c[0].reason, "FieldValueNotSupported");
    }

    /// No JSON shape makes validation (or defaulting) panic, for any resource, create or update.
    #[test]
    fn never_panics_on_odd_shapes() {
        let odd = vec![
            json!(null),
            json!({}),
            json!([]),
            json!(0),
            json!(-5),
            json!(1e300),
            json!("x"),
            json!(""),
            json!(true),
            json!([null, 1, "a", {}, []]),
            json!({"a": null, "b": [1], "c": {"d": "e"}}),
        ];
        for r in RESOURCES {
            for v in &odd {
                let shapes = vec![
                    v.clone(),
                    json!({"metadata": v, "spec": v, "data": v, "type": v, "immutable": v, "addressType": v, "endpoints": v, "ports": v}),
                    json!({"metadata": {"name": v, "labels": v, "annotations": {"a": v}}, "spec": {
                        "containers": [v, {"name": v, "image": v, "ports": [v, {"containerPort": v, "name": v, "protocol": v, "hostPort": v}], "env": [v], "volumeMounts": [v, {"name": v}], "livenessProbe": v}],
                        "initContainers": v, "volumes": [v, {"name": v}], "restartPolicy": v, "tolerations": [v],
                        "selector": {"matchLabels": v, "matchExpressions": [v, {"key": v, "operator": v, "values": v}]},
                        "template": {"metadata": {"labels": v}, "spec": v},
                        "strategy": {"type": v, "rollingUpdate": {"maxUnavailable": v, "maxSurge": v}},
                        "updateStrategy": {"rollingUpdate": v},
                        "ports": [v, {"port": v, "targetPort": v, "nodePort": v, "name": v}],
                        "type": v, "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": v}},
                        "clusterIP": v, "externalName": v, "activeDeadlineSeconds": v, "completionMode": v}}),
                ];
                for s in &shapes {
                    let mut d = s.clone();
                    apply_defaults(r.plural, &mut d);
                    let _ = validate(r, s, None);
                    let _ = validate(r, &d, None);
                    for o in &shapes {
                        let _ = validate(r, s, Some(o));
                        let _ = validate(r, &d, Some(o));
                    }
                }
            }
        }
    }
}
