//! Defaulting, as kube-apiserver does it on create and update: the `SetDefaults_*` functions of
//! the versioned API types plus what the default admission chain adds to pods
//! (`ServiceAccount`, `DefaultTolerationSeconds`, `Priority`).
//!
//! Objects arrive already normalized through the k8s-openapi struct, so field types are right,
//! but any field may still be missing or `null`. Every helper below tolerates wrong shapes by
//! doing nothing: defaulting must never be the thing that fails a request.
//!
//! Go's zero values count as "unset" where kube tests for them (`""` strings, `0` in non-pointer
//! ints such as probe thresholds); pointer fields are defaulted only when absent/null.

use serde_json::{Map, Value, json};

type Obj = Map<String, Value>;

/// Fill defaults in place. `plural` names the resource (`pods`, `services`, …).
pub fn apply_defaults(plural: &str, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match plural {
        "pods" => pod(root),
        "services" => service(root),
        "deployments" => deployment(root),
        "replicasets" => replicaset(root),
        "daemonsets" => daemonset(root),
        "jobs" => job(root),
        "namespaces" => namespace(root),
        "secrets" => secret(root),
        "endpointslices" => endpointslice(root),
        "endpoints" => endpoints(root),
        "rolebindings" | "clusterrolebindings" => super::validation::rbac::apply_defaults(root),
        _ => {}
    }
    // Fields the schema requires (Go fields without `omitempty`: `DaemonSetStatus`' counts,
    // `ReplicaSetStatus.replicas`, …) exist, as their zero value, as in kube-apiserver.
    super::wire::fill_required(obj);
}

// ---------------------------------------------------------------------------------------------
// Small helpers over serde_json maps.

fn is_unset(v: Option<&Value>) -> bool {
    matches!(v, None | Some(Value::Null))
}

/// Unset, or Go's zero value for a string / number.
fn is_zero(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// Set `key` when absent or null (pointer fields).
fn set(m: &mut Obj, key: &str, value: Value) {
    if is_unset(m.get(key)) {
        m.insert(key.to_string(), value);
    }
}

/// Set `key` when absent, null or the zero value (non-pointer fields).
fn set_zero(m: &mut Obj, key: &str, value: Value) {
    if is_zero(m.get(key)) {
        m.insert(key.to_string(), value);
    }
}

/// The object at `key`, created when absent/null; `None` if something else is there.
fn child<'a>(m: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    let v = m.entry(key.to_string()).or_insert(Value::Null);
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

/// The object at `key` if one is there; never creates.
fn existing<'a>(m: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    m.get_mut(key)?.as_object_mut()
}

/// Call `f` on every object element of the array at `key`.
fn each(m: &mut Obj, key: &str, mut f: impl FnMut(&mut Obj)) {
    if let Some(Value::Array(items)) = m.get_mut(key) {
        for item in items {
            if let Some(o) = item.as_object_mut() {
                f(o);
            }
        }
    }
}

fn str_of<'a>(m: &'a Obj, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A string field of the object's metadata, `""` when absent.
fn metadata_str(root: &Obj, key: &str) -> String {
    root.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates.

#[derive(Clone, Copy, PartialEq, Eq)]
enum PodKind {
    /// A Pod object: admission plugins add their fields too.
    Pod,
    /// A template in a Deployment / ReplicaSet / DaemonSet.
    Template,
    /// A Job's template: no restartPolicy default (validation wants OnFailure|Never).
    JobTemplate,
}

fn pod(root: &mut Obj) {
    if let Some(spec) = child(root, "spec") {
        pod_spec(spec, PodKind::Pod);
    }
}

/// `spec.template.spec` of a workload.
fn template(spec: &mut Obj, kind: PodKind) {
    if let Some(t) = existing(spec, "template")
        && let Some(ps) = child(t, "spec")
    {
        pod_spec(ps, kind);
    }
}

fn pod_spec(spec: &mut Obj, kind: PodKind) {
    if kind != PodKind::JobTemplate {
        set_zero(spec, "restartPolicy", json!("Always"));
    }
    set_zero(spec, "dnsPolicy", json!("ClusterFirst"));
    set_zero(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));

    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers"] {
        each(spec, key, |c| {
            container(c, host_network, kind == PodKind::Pod)
        });
    }
    each(spec, "ephemeralContainers", |c| {
        set_zero(c, "terminationMessagePath", json!("/dev/termination-log"));
        set_zero(c, "terminationMessagePolicy", json!("File"));
        image_pull_policy(c);
    });
    each(spec, "volumes", volume);

    if kind == PodKind::Pod {
        // SetDefaults_Pod (pods only, not templates).
        set(spec, "enableServiceLinks", json!(true));
        // ServiceAccount admission: the deprecated `serviceAccount` mirrors the real field.
        if is_zero(spec.get("serviceAccountName")) {
            let legacy = str_of(spec, "serviceAccount");
            let name = if legacy.is_empty() { "default" } else { legacy }.to_string();
            spec.insert("serviceAccountName".into(), json!(name));
        }
        let sa = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(Value::Null);
        spec.insert("serviceAccount".into(), sa);
        // Priority admission: no priority class → the global default (0), preempting.
        set(spec, "priority", json!(0));
        set_zero(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        default_tolerations(spec);
    }
}

fn container(c: &mut Obj, host_network: bool, is_pod: bool) {
    set_zero(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_zero(c, "terminationMessagePolicy", json!("File"));
    image_pull_policy(c);
    each(c, "ports", |p| {
        set_zero(p, "protocol", json!("TCP"));
        // Host-network pods use the container port on the host (SetDefaults_PodSpec).
        if host_network
            && is_zero(p.get("hostPort"))
            && let Some(cp) = p.get("containerPort").cloned()
        {
            p.insert("hostPort".into(), cp);
        }
    });
    if let Some(res) = child(c, "resources")
        && is_pod
    {
        // SetDefaults_Pod: requests default to limits for every resource with a limit only.
        if let Some(Value::Object(limits)) = res.get("limits").cloned()
            && !limits.is_empty()
            && let Some(req) = child(res, "requests")
        {
            for (k, v) in limits {
                req.entry(k).or_insert(v);
            }
        }
    }
    each(c, "env", |e| {
        if let Some(vf) = existing(e, "valueFrom")
            && let Some(fr) = existing(vf, "fieldRef")
        {
            set_zero(fr, "apiVersion", json!("v1"));
        }
    });
    for probe_key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, probe_key) {
            probe(p);
        }
    }
    if let Some(lc) = existing(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = existing(lc, hook)
                && let Some(g) = existing(h, "httpGet")
            {
                http_get(g);
            }
        }
    }
}

/// SetDefaults_Container: `Always` for `:latest` or no tag, `IfNotPresent` otherwise (a digest
/// counts as pinned).
fn image_pull_policy(c: &mut Obj) {
    if !is_zero(c.get("imagePullPolicy")) {
        return;
    }
    let image = str_of(c, "image");
    let policy = if image.is_empty() || image.contains('@') {
        "IfNotPresent"
    } else {
        // The tag is after the last ':' of the last path segment ("host:5000/x" has none).
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.rsplit_once(':') {
            Some((_, tag)) if tag != "latest" => "IfNotPresent",
            _ => "Always",
        }
    };
    c.insert("imagePullPolicy".into(), json!(policy));
}

fn probe(p: &mut Obj) {
    set_zero(p, "timeoutSeconds", json!(1));
    set_zero(p, "periodSeconds", json!(10));
    set_zero(p, "successThreshold", json!(1));
    set_zero(p, "failureThreshold", json!(3));
    if let Some(g) = existing(p, "httpGet") {
        http_get(g);
    }
}

/// SetDefaults_HTTPGetAction.
fn http_get(g: &mut Obj) {
    set_zero(g, "path", json!("/"));
    set_zero(g, "scheme", json!("HTTP"));
}

/// SetDefaults_Volume and the per-source defaults: a volume with no source is an emptyDir;
/// projected files are world-readable (0644 = 420) unless told otherwise.
fn volume(v: &mut Obj) {
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    if SOURCES.iter().all(|s| is_unset(v.get(*s))) {
        v.insert("emptyDir".into(), json!({}));
    }
    for src in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = existing(v, src) {
            set(s, "defaultMode", json!(420));
        }
    }
    if let Some(d) = existing(v, "downwardAPI") {
        each(d, "items", downward_item);
    }
    if let Some(p) = existing(v, "projected") {
        each(p, "sources", |s| {
            if let Some(d) = existing(s, "downwardAPI") {
                each(d, "items", downward_item);
            }
        });
    }
    if let Some(h) = existing(v, "hostPath") {
        set(h, "type", json!(""));
    }
}

fn downward_item(item: &mut Obj) {
    if let Some(fr) = existing(item, "fieldRef") {
        set_zero(fr, "apiVersion", json!("v1"));
    }
}

/// DefaultTolerationSeconds admission: pods tolerate not-ready / unreachable nodes for 300s
/// before eviction, unless they already say something about those taints.
fn default_tolerations(spec: &mut Obj) {
    const TAINTS: [&str; 2] = [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ];
    let existing_tols: Vec<Value> = match spec.get("tolerations") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        // Wrong shape: leave it for validation to reject.
        Some(_) => return,
    };
    let mut added = Vec::new();
    for taint in TAINTS {
        let tolerated = existing_tols.iter().any(|t| {
            let key = t.get("key").and_then(Value::as_str).unwrap_or("");
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("");
            // Same test as the plugin: a toleration for this key with effect NoExecute or any
            // effect, or a wildcard `operator: Exists` without key.
            (key == taint || (key.is_empty() && op == "Exists"))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            added.push(json!({
                "key": taint,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }));
        }
    }
    if !added.is_empty() {
        let mut all = existing_tols;
        all.extend(added);
        spec.insert("tolerations".into(), Value::Array(all));
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads.

fn deployment(root: &mut Obj) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set(spec, "replicas", json!(1));
    if let Some(strategy) = child(spec, "strategy") {
        set_zero(strategy, "type", json!("RollingUpdate"));
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(ru) = child(strategy, "rollingUpdate")
        {
            set(ru, "maxUnavailable", json!("25%"));
            set(ru, "maxSurge", json!("25%"));
        }
    }
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    template(spec, PodKind::Template);
}

fn replicaset(root: &mut Obj) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set(spec, "replicas", json!(1));
    template(spec, PodKind::Template);
}

fn daemonset(root: &mut Obj) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    if let Some(strategy) = child(spec, "updateStrategy") {
        set_zero(strategy, "type", json!("RollingUpdate"));
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(ru) = child(strategy, "rollingUpdate")
        {
            set(ru, "maxUnavailable", json!(1));
            set(ru, "maxSurge", json!(0));
        }
    }
    set(spec, "revisionHistoryLimit", json!(10));
    template(spec, PodKind::Template);
}

/// SetDefaults_Job, plus the selector the job registry generates from the object's uid when
/// the user did not ask for a manual selector (it needs `metadata.uid`, so it only happens once
/// the caller has assigned one).
fn job(root: &mut Obj) {
    let uid = metadata_str(root, "uid");
    let name = metadata_str(root, "name");
    let Some(spec) = child(root, "spec") else {
        return;
    };
    if is_unset(spec.get("completions")) && is_unset(spec.get("parallelism")) {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    // With a per-index backoff limit the global one is effectively unlimited.
    let backoff = if is_unset(spec.get("backoffLimitPerIndex")) {
        6
    } else {
        i32::MAX
    };
    set(spec, "backoffLimit", json!(backoff));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    let replacement = if is_unset(spec.get("podFailurePolicy")) {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set(spec, "podReplacementPolicy", json!(replacement));
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if !manual && !uid.is_empty() && is_unset(spec.get("selector")) {
        generate_job_selector(spec, &uid, &name);
    }
    template(spec, PodKind::JobTemplate);
    // Job labels default to the template's (SetDefaults_Job).
    let tmpl_labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.as_object().is_some_and(|o| !o.is_empty()))
        .cloned();
    if let Some(labels) = tmpl_labels
        && let Some(meta) = child(root, "metadata")
        && meta
            .get("labels")
            .is_none_or(|l| l.as_object().is_none_or(Map::is_empty))
    {
        meta.insert("labels".into(), labels);
    }
}

/// The job registry's generateSelector: template labels carry the controller uid and job name,
/// and the selector matches the uid.
fn generate_job_selector(spec: &mut Obj, uid: &str, name: &str) {
    let Some(t) = child(spec, "template") else {
        return;
    };
    let Some(meta) = child(t, "metadata") else {
        return;
    };
    let Some(labels) = child(meta, "labels") else {
        return;
    };
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("controller-uid", uid),
        ("batch.kubernetes.io/job-name", name),
        ("job-name", name),
    ] {
        labels.entry(k.to_string()).or_insert(json!(v));
    }
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
}

// ---------------------------------------------------------------------------------------------
// Core objects.

fn service(root: &mut Obj) {
    let Some(spec) = child(root, "spec") else {
        return;
    };
    set_zero(spec, "type", json!("ClusterIP"));
    set_zero(spec, "sessionAffinity", json!("None"));
    // As kube's SetDefaults_Service: without affinity there is no affinity config, so
    // switching a ClientIP Service to None just works (validation would refuse the config).
    if str_of(spec, "sessionAffinity") == "None" {
        spec.remove("sessionAffinityConfig");
    }
    if str_of(spec, "sessionAffinity") == "ClientIP"
        && let Some(cfg) = child(spec, "sessionAffinityConfig")
        && let Some(cip) = child(cfg, "clientIP")
    {
        set(cip, "timeoutSeconds", json!(10800));
    }
    each(spec, "ports", |p| {
        set_zero(p, "protocol", json!("TCP"));
        if is_zero(p.get("targetPort"))
            && let Some(port) = p.get("port").cloned()
        {
            p.insert("targetPort".into(), port);
        }
    });
    let ty = str_of(spec, "type").to_string();
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_zero(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if ty != "ExternalName" {
        set_zero(spec, "internalTrafficPolicy", json!("Cluster"));
        // Single-stack IPv4 cluster: what the service registry fills in.
        set(spec, "ipFamilyPolicy", json!("SingleStack"));
        if spec
            .get("ipFamilies")
            .is_none_or(|f| f.as_array().is_none_or(Vec::is_empty))
        {
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
        }
    }
}

fn namespace(root: &mut Obj) {
    let name = metadata_str(root, "name");
    if !name.is_empty()
        && let Some(meta) = child(root, "metadata")
        && let Some(labels) = child(meta, "labels")
    {
        // SetDefaults_Namespace: the immutable name label (selectable by namespaceSelector).
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    if let Some(spec) = child(root, "spec")
        && spec
            .get("finalizers")
            .is_none_or(|f| f.as_array().is_none_or(Vec::is_empty))
    {
        spec.insert("finalizers".into(), json!(["kubernetes"]));
    }
    if let Some(status) = child(root, "status") {
        set_zero(status, "phase", json!("Active"));
    }
}

/// `type: Opaque`; `stringData` is write-only convenience: merged into `data` (winning on
/// conflicts, as in kube) and dropped.
fn secret(root: &mut Obj) {
    use base64::Engine as _;
    set_zero(root, "type", json!("Opaque"));
    let Some(string_data) = root.remove("stringData") else {
        return;
    };
    let Value::Object(sd) = string_data else {
        return;
    };
    if sd.is_empty() {
        return;
    }
    if let Some(data) = child(root, "data") {
        for (k, v) in sd {
            if let Value::String(s) = v {
                let enc = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
                data.insert(k, json!(enc));
            }
        }
    }
}

fn endpointslice(root: &mut Obj) {
    each(root, "ports", |p| set_zero(p, "protocol", json!("TCP")));
}

fn endpoints(root: &mut Obj) {
    each(root, "subsets", |s| {
        each(s, "ports", |p| set_zero(p, "protocol", json!("TCP")));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::RESOURCES;

    fn defaulted(plural: &str, mut v: Value) -> Value {
        apply_defaults(plural, &mut v);
        v
    }

    #[test]
    fn pod_defaults_match_kube() {
        let p = defaulted(
            "pods",
            json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"},
                "spec":{"containers":[{"name":"nginx","image":"nginx:1.27",
                    "ports":[{"containerPort":80}],
                    "env":[{"name":"NODE","valueFrom":{"fieldRef":{"fieldPath":"spec.nodeName"}}}],
                    "resources":{"limits":{"cpu":"1"}},
                    "livenessProbe":{"httpGet":{"port":80}}}],
                  "initContainers":[{"name":"init","image":"busybox"}],
                  "volumes":[{"name":"s","secret":{"secretName":"x"}},{"name":"c","configMap":{"name":"y"}},{"name":"e"}]}}),
        );
        let s = &p["spec"];
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["schedulerName"], "default-scheduler");
        assert_eq!(s["securityContext"], json!({}));
        assert_eq!(s["serviceAccountName"], "default");
        assert_eq!(s["serviceAccount"], "default");
        assert_eq!(s["enableServiceLinks"], true);
        assert_eq!(s["priority"], 0);
        assert_eq!(s["preemptionPolicy"], "PreemptLowerPriority");
        let tols = s["tolerations"].as_array().unwrap();
        assert_eq!(tols.len(), 2);
        assert_eq!(tols[0]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(tols[1]["tolerationSeconds"], 300);
        let c = &s["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        let lp = &c["livenessProbe"];
        assert_eq!(lp["timeoutSeconds"], 1);
        assert_eq!(lp["periodSeconds"], 10);
        assert_eq!(lp["successThreshold"], 1);
        assert_eq!(lp["failureThreshold"], 3);
        assert_eq!(lp["httpGet"]["scheme"], "HTTP");
        assert_eq!(lp["httpGet"]["path"], "/");
        let ic = &s["initContainers"][0];
        assert_eq!(ic["imagePullPolicy"], "Always");
        assert_eq!(ic["resources"], json!({}));
        assert_eq!(s["volumes"][0]["secret"]["defaultMode"], 420);
        assert_eq!(s["volumes"][1]["configMap"]["defaultMode"], 420);
        assert_eq!(s["volumes"][2]["emptyDir"], json!({}));
    }

    #[test]
    fn explicit_values_are_kept() {
        let p = defaulted(
            "pods",
            json!({"spec":{"restartPolicy":"Never","terminationGracePeriodSeconds":0,
                "serviceAccountName":"builder","priority":5,
                "tolerations":[{"operator":"Exists"}],
                "containers":[{"name":"a","image":"a","imagePullPolicy":"Never",
                    "resources":{"limits":{"cpu":"1"},"requests":{"cpu":"500m"}}}]}}),
        );
        let s = &p["spec"];
        assert_eq!(s["restartPolicy"], "Never");
        assert_eq!(s["terminationGracePeriodSeconds"], 0);
        assert_eq!(s["serviceAccountName"], "builder");
        assert_eq!(s["serviceAccount"], "builder");
        assert_eq!(s["priority"], 5);
        // A wildcard toleration already covers both taints.
        assert_eq!(s["tolerations"].as_array().unwrap().len(), 1);
        assert_eq!(s["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(s["containers"][0]["resources"]["requests"]["cpu"], "500m");
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("localhost:5000/app", "Always"),
            ("localhost:5000/app:v2", "IfNotPresent"),
            ("repo/app@sha256:abcd", "IfNotPresent"),
            ("", "IfNotPresent"),
        ] {
            let mut c = Map::new();
            c.insert("image".into(), json!(image));
            image_pull_policy(&mut c);
            assert_eq!(c["imagePullPolicy"], want, "{image}");
        }
    }

    #[test]
    fn service_defaults() {
        let s = defaulted(
            "services",
            json!({"metadata":{"name":"web"},"spec":{"selector":{"app":"web"},
                "ports":[{"port":80},{"port":443,"targetPort":"https","protocol":"UDP"}]}}),
        );
        let spec = &s["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["targetPort"], "https");
        assert_eq!(spec["ports"][1]["protocol"], "UDP");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert!(spec.get("externalTrafficPolicy").is_none());
        assert!(spec.get("clusterIP").is_none());

        let np = defaulted(
            "services",
            json!({"spec":{"type":"NodePort","sessionAffinity":"ClientIP","ports":[{"port":80}]}}),
        );
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(
            np["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        // `kubectl patch svc -p '{"spec":{"sessionAffinity":"None"}}'` on that Service.
        let mut off = np.clone();
        off["spec"]["sessionAffinity"] = json!("None");
        let off = defaulted("services", off);
        assert!(off["spec"].get("sessionAffinityConfig").is_none(), "{off}");

        let en = defaulted(
            "services",
            json!({"spec":{"type":"ExternalName","externalName":"x.example.com"}}),
        );
        assert!(en["spec"].get("ipFamilies").is_none());
        assert!(en["spec"].get("internalTrafficPolicy").is_none());
    }

    #[test]
    fn deployment_defaults() {
        let d = defaulted(
            "deployments",
            json!({"metadata":{"name":"web"},"spec":{"selector":{"matchLabels":{"app":"web"}},
                "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"a","image":"nginx"}]}}}}),
        );
        let s = &d["spec"];
        assert_eq!(s["replicas"], 1);
        assert_eq!(
            s["strategy"],
            json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":"25%","maxSurge":"25%"}})
        );
        assert_eq!(s["revisionHistoryLimit"], 10);
        assert_eq!(s["progressDeadlineSeconds"], 600);
        assert!(s.get("minReadySeconds").is_none());
        let ps = &s["template"]["spec"];
        assert_eq!(ps["restartPolicy"], "Always");
        assert_eq!(ps["containers"][0]["imagePullPolicy"], "Always");
        // Admission-only fields stay off templates.
        assert!(ps.get("serviceAccountName").is_none());
        assert!(ps.get("tolerations").is_none());
        assert!(ps.get("enableServiceLinks").is_none());

        let recreate = defaulted(
            "deployments",
            json!({"spec":{"strategy":{"type":"Recreate"}}}),
        );
        assert!(recreate["spec"]["strategy"].get("rollingUpdate").is_none());
        let zero = defaulted("deployments", json!({"spec":{"replicas":0}}));
        assert_eq!(zero["spec"]["replicas"], 0);
    }

    #[test]
    fn replicaset_and_daemonset_defaults() {
        let rs = defaulted(
            "replicasets",
            json!({"spec":{"template":{"spec":{"containers":[]}}}}),
        );
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        let ds = defaulted("daemonsets", json!({"spec":{}}));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":1,"maxSurge":0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
    }

    #[test]
    fn job_defaults() {
        let j = defaulted(
            "jobs",
            json!({"metadata":{"name":"pi","uid":"u-1"},"spec":{"template":{"spec":{"containers":[{"name":"pi","image":"perl:5.34"}]}}}}),
        );
        let s = &j["spec"];
        assert_eq!(s["parallelism"], 1);
        assert_eq!(s["completions"], 1);
        assert_eq!(s["backoffLimit"], 6);
        assert_eq!(s["completionMode"], "NonIndexed");
        assert_eq!(s["suspend"], false);
        assert_eq!(s["podReplacementPolicy"], "TerminatingOrFailed");
        assert!(s.get("manualSelector").is_none());
        assert!(s["template"]["spec"].get("restartPolicy").is_none());
        assert_eq!(
            s["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        assert_eq!(s["template"]["metadata"]["labels"]["job-name"], "pi");
        assert_eq!(
            j["metadata"]["labels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );

        // Only parallelism set: completions stays unset (work-queue job).
        let wq = defaulted("jobs", json!({"spec":{"parallelism":3}}));
        assert_eq!(wq["spec"]["parallelism"], 3);
        assert!(wq["spec"].get("completions").is_none());
        // Only completions set: parallelism defaults to 1.
        let c = defaulted("jobs", json!({"spec":{"completions":5}}));
        assert_eq!(c["spec"]["parallelism"], 1);
        // No uid yet: no generated selector.
        assert!(c["spec"].get("selector").is_none());
    }

    #[test]
    fn namespace_secret_and_slice_defaults() {
        let ns = defaulted("namespaces", json!({"metadata":{"name":"dev"}}));
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "dev"
        );

        let sec = defaulted(
            "secrets",
            json!({"metadata":{"name":"s"},"data":{"a":"eA==","b":"eA=="},"stringData":{"b":"hello","c":"x"}}),
        );
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(sec["data"]["a"], "eA==");
        assert_eq!(sec["data"]["b"], "aGVsbG8=");
        assert_eq!(sec["data"]["c"], "eA==");
        assert!(sec.get("stringData").is_none());
        let tls = defaulted("secrets", json!({"type":"kubernetes.io/tls"}));
        assert_eq!(tls["type"], "kubernetes.io/tls");

        let es = defaulted(
            "endpointslices",
            json!({"addressType":"IPv4","ports":[{"port":80}]}),
        );
        assert_eq!(es["ports"][0]["protocol"], "TCP");
        let ep = defaulted("endpoints", json!({"subsets":[{"ports":[{"port":80}]}]}));
        assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn nodes_events_untouched() {
        for plural in ["nodes", "events", "configmaps", "leases", "serviceaccounts"] {
            let v = json!({"metadata":{"name":"x"}});
            assert_eq!(defaulted(plural, v.clone()), v);
        }
    }

    #[test]
    fn defaults_are_idempotent() {
        let pod = json!({"spec":{"containers":[{"name":"a","image":"a"}]}});
        let once = defaulted("pods", pod);
        assert_eq!(defaulted("pods", once.clone()), once);
    }

    /// Any JSON shape at all: no panics.
    #[test]
    fn never_panics_on_odd_shapes() {
        let shapes = weird_values();
        for r in RESOURCES {
            for v in &shapes {
                let _ = defaulted(r.plural, v.clone());
                for key in [
                    "spec",
                    "metadata",
                    "status",
                    "data",
                    "stringData",
                    "ports",
                    "subsets",
                    "type",
                ] {
                    let _ = defaulted(r.plural, json!({ key: v }));
                    let _ = defaulted(
                        r.plural,
                        json!({"metadata":{"name":"x","uid":v}, "spec": { "template": v, "containers": v, "ports": v, "volumes": v, "tolerations": v, "strategy": v, "updateStrategy": v, "selector": v}}),
                    );
                    let _ = defaulted(
                        r.plural,
                        json!({"spec": {"template": {"spec": {"containers": [v, {"ports": v, "env": [v, {"valueFrom": v}], "livenessProbe": v, "resources": v, "lifecycle": {"preStop": v}}], "volumes": [v, {"secret": v, "downwardAPI": v, "projected": {"sources": [v]}}]}, "metadata": v}}}),
                    );
                    let _ = defaulted(
                        r.plural,
                        json!({"spec": {"containers": [{"resources": {"limits": v, "requests": v}}], "tolerations": [v], "sessionAffinity": "ClientIP", "sessionAffinityConfig": v, "type": "NodePort", "ports": [v]}}),
                    );
                }
            }
        }
    }

    pub(crate) fn weird_values() -> Vec<Value> {
        vec![
            json!(null),
            json!({}),
            json!([]),
            json!(1),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!(""),
            json!(true),
            json!([null, 1, "a", {}, []]),
            json!({"a": null, "b": [1], "c": {"d": "e"}}),
        ]
    }
}
