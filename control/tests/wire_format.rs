//! What the apiserver's JSON looks like on the wire, compared with kube-apiserver:
//! - every object it returns carries the fields its OpenAPI schema requires (schema-validating
//!   clients refuse an object without them), after create, update and status writes;
//! - keys come in the Go type's field order, not sorted (clients compare error text).
//!
//! The schema knowledge is k8s-openapi's: its source holds each type's OpenAPI schema (the
//! `schemars` impls, compiled only with that feature, read here as text), with `required`
//! lists and the type of every property. The served resources come from discovery, so a new
//! resource without a fixture below fails the test.

#![allow(
    clippy::too_many_lines,
    reason = "a test is one scenario, read top to bottom"
)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kube::client::Body;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

mod common;

/// The shared harness (an API server on the embedded store), with no controllers: what is
/// checked is the server's own output.
type Cluster = common::TestCluster;

async fn start() -> Cluster {
    Cluster::start("").await
}

impl common::TestCluster {
    /// Status code and the body's bytes.
    async fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Body::from(body))
            .unwrap();
        let resp = self.client.send(req).await.unwrap();
        let code = resp.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (code, bytes.to_vec())
    }

    /// The object under `key` as stored.
    async fn stored(&self, key: &str) -> Value {
        let kv = self.store.get(key).await.unwrap().expect("stored object");
        serde_json::from_slice(&kv.value).unwrap()
    }

    /// A request that must succeed: its JSON body.
    async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> (Value, Vec<u8>) {
        let (code, bytes) = self.raw(method, path, body).await;
        assert!(
            (200..300).contains(&code),
            "{method} {path}: {code} {}",
            String::from_utf8_lossy(&bytes)
        );
        (serde_json::from_slice(&bytes).unwrap(), bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// k8s-openapi's schemas, read from its source.

#[derive(Clone, Copy, Debug)]
enum Shape {
    One,
    Array,
    Map,
}

#[derive(Debug, Default)]
struct Schema {
    required: Vec<String>,
    /// Property → (shape, Rust path of its type, `api::core::v1::PodSpec`).
    refs: BTreeMap<String, (Shape, String)>,
}

/// The directory of the k8s-openapi version the workspace locks, and its enabled API version.
fn k8s_openapi_src() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"k8s-openapi\""))
        .and_then(|p| p.split("version = \"").nth(1))
        .and_then(|v| v.split('"').next())
        .expect("k8s-openapi in Cargo.lock")
        .to_string();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let feature = manifest
        .lines()
        .find(|l| l.starts_with("k8s-openapi"))
        .and_then(|l| l.split("\"v1_").nth(1))
        .and_then(|v| v.split('"').next())
        .map(|v| format!("v1_{v}"))
        .expect("k8s-openapi's v1_* feature in the workspace Cargo.toml");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    for index in std::fs::read_dir(home.join("registry/src")).unwrap() {
        let dir = index
            .unwrap()
            .path()
            .join(format!("k8s-openapi-{version}/src/{feature}"));
        if dir.is_dir() {
            return dir;
        }
    }
    panic!("k8s-openapi-{version} sources not found under {home:?}/registry/src");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Rust path (`api::apps::v1::DaemonSetStatus`) → schema.
fn schemas() -> HashMap<String, Schema> {
    let src = k8s_openapi_src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out = HashMap::new();
    for file in files {
        let module: Vec<String> = file
            .parent()
            .unwrap()
            .strip_prefix(&src)
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let Some(name) = line
                .strip_prefix("impl crate::schemars::JsonSchema for ")
                .map(|n| n.trim_end_matches(" {"))
            else {
                continue;
            };
            let mut schema = Schema::default();
            let mut property: Option<String> = None;
            let mut in_required = false;
            for line in lines.by_ref() {
                if line == "}" {
                    break;
                }
                // Properties sit at 16 spaces, their insides deeper; `required` at 12.
                let indent = line.len() - line.trim_start().len();
                let t = line.trim();
                if in_required {
                    match t.strip_prefix('"').and_then(|k| k.strip_suffix("\",")) {
                        Some(k) => schema.required.push(k.to_string()),
                        None => in_required = false,
                    }
                    continue;
                }
                if indent == 12 && t == "\"required\": [" {
                    in_required = true;
                    continue;
                }
                if indent == 16 && t.starts_with('"') {
                    property = t[1..].split('"').next().map(str::to_string);
                }
                if indent < 16 {
                    property = None;
                }
                let (Some(p), Some(ty)) = (
                    &property,
                    t.split("subschema_for::<crate::")
                        .nth(1)
                        .and_then(|r| r.split(">()").next()),
                ) else {
                    continue;
                };
                let shape = if t.starts_with("\"items\":") {
                    Shape::Array
                } else if t.starts_with("\"additionalProperties\":") {
                    Shape::Map
                } else {
                    Shape::One
                };
                schema.refs.insert(p.clone(), (shape, ty.to_string()));
            }
            out.insert(format!("{}::{name}", module.join("::")), schema);
        }
    }
    assert!(
        out.get("api::apps::v1::DaemonSetStatus")
            .is_some_and(|s| s.required.contains(&"numberReady".to_string())),
        "the k8s-openapi schema reader found no required fields: has the source changed shape?"
    );
    out
}

/// Paths of the required fields missing from `v`, an object of type `ty`.
fn missing(
    schemas: &HashMap<String, Schema>,
    ty: &str,
    v: &Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let (Some(schema), Value::Object(o)) = (schemas.get(ty), v) else {
        return;
    };
    for r in &schema.required {
        if !o.contains_key(r) {
            out.push(format!("{path}.{r}"));
        }
    }
    for (key, (shape, child)) in &schema.refs {
        let Some(v) = o.get(key) else { continue };
        let here = format!("{path}.{key}");
        match (shape, v) {
            (Shape::One, _) => missing(schemas, child, v, &here, out),
            (Shape::Array, Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    missing(schemas, child, item, &format!("{here}[{i}]"), out);
                }
            }
            (Shape::Map, Value::Object(m)) => {
                for (k, item) in m {
                    missing(schemas, child, item, &format!("{here}[{k}]"), out);
                }
            }
            _ => {}
        }
    }
}

/// The k8s-openapi type of a top-level object.
fn type_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("core", api_version));
    let package = group.split('.').next().unwrap_or(group);
    format!(
        "api::{package}::{version}::{}",
        obj["kind"].as_str().unwrap_or("")
    )
}

// ---------------------------------------------------------------------------------------------
// Fixtures: one valid object per served kind, in namespace `wire` (or cluster-scoped).

fn pod_template(labels: &Value) -> Value {
    json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "main", "image": "kubia:v1"}]},
    })
}

fn fixture(kind: &str) -> Option<Value> {
    let app = json!({"app": "wire"});
    let workload = json!({"selector": {"matchLabels": app}, "template": pod_template(&app)});
    Some(match kind {
        "Namespace" => json!({"metadata": {"name": "wire-other"}}),
        "Pod" => json!({"metadata": {"name": "p"}, "spec": pod_template(&app)["spec"]}),
        "Service" => {
            json!({"metadata": {"name": "s"}, "spec": {"selector": app, "ports": [{"port": 80}]}})
        }
        "Endpoints" => {
            json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.1.0.1"}], "ports": [{"port": 80}]}]})
        }
        "Node" => json!({"metadata": {"name": "n"}}),
        "Event" => {
            json!({"metadata": {"name": "ev"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "wire"}, "reason": "Test", "message": "m", "type": "Normal"})
        }
        "ConfigMap" => json!({"metadata": {"name": "cm"}, "data": {"k": "v"}}),
        "Secret" => json!({"metadata": {"name": "sec"}, "stringData": {"k": "v"}}),
        "ServiceAccount" => json!({"metadata": {"name": "sa"}}),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            json!({"metadata": {"name": kind.to_lowercase()}, "spec": workload})
        }
        "Job" => {
            let mut template = pod_template(&json!({}));
            template["spec"]["restartPolicy"] = json!("Never");
            json!({"metadata": {"name": "j"}, "spec": {"template": template}})
        }
        // Binds the pod `p` (bindings are written last).
        "Binding" => json!({"metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n"}}),
        "Lease" => json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "h"}}),
        "PodDisruptionBudget" => {
            json!({"metadata": {"name": "pdb"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": app}}})
        }
        // A review: answered, never stored.
        "SelfSubjectReview" => json!({"metadata": {"name": "ssr"}}),
        // Access reviews: their metadata must be empty (but for a local review's namespace).
        "SubjectAccessReview" | "LocalSubjectAccessReview" => json!({"metadata": {},
            "spec": {"user": "u", "resourceAttributes": {"namespace": "wire", "verb": "get", "resource": "pods"}}}),
        "SelfSubjectAccessReview" => json!({"metadata": {},
            "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}}),
        "SelfSubjectRulesReview" => json!({"metadata": {}, "spec": {"namespace": "wire"}}),
        "EndpointSlice" => {
            json!({"metadata": {"name": "es"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.0.1"]}], "ports": [{"port": 80}]})
        }
        "Role" | "ClusterRole" => {
            json!({"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            json!({"metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "u"}]})
        }
        "CertificateSigningRequest" => {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            let csr = params.serialize_request(&key).unwrap().pem().unwrap();
            use base64::Engine;
            json!({"metadata": {"name": "csr"}, "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(csr),
                "signerName": "example.com/wire", "usages": ["client auth"]}})
        }
        _ => return None,
    })
}

/// A served resource, from discovery.
struct Served {
    /// `api/v1`, `apis/apps/v1`.
    gv: String,
    plural: String,
    kind: String,
    namespaced: bool,
    subresources: Vec<String>,
    verbs: Vec<String>,
}

/// Every served resource.
async fn served(c: &Cluster) -> Vec<Served> {
    let mut gvs = vec!["api/v1".to_string()];
    let (groups, _) = c.ok("GET", "/apis", None).await;
    for g in groups["groups"].as_array().unwrap() {
        gvs.push(format!(
            "apis/{}",
            g["preferredVersion"]["groupVersion"].as_str().unwrap()
        ));
    }
    let mut out = Vec::new();
    for gv in gvs {
        let (list, _) = c.ok("GET", &format!("/{gv}"), None).await;
        let resources = list["resources"].as_array().unwrap();
        for r in resources {
            let name = r["name"].as_str().unwrap();
            if name.contains('/') {
                continue;
            }
            let subs = resources
                .iter()
                .filter_map(|s| s["name"].as_str()?.strip_prefix(&format!("{name}/")))
                .map(str::to_string)
                .collect();
            out.push(Served {
                gv: gv.clone(),
                plural: name.to_string(),
                kind: r["kind"].as_str().unwrap().to_string(),
                namespaced: r["namespaced"].as_bool().unwrap(),
                subresources: subs,
                verbs: serde_json::from_value(r["verbs"].clone()).unwrap(),
            });
        }
    }
    out
}

#[tokio::test]
async fn every_returned_object_has_its_required_fields() {
    let schemas = schemas();
    let c = start().await;
    c.ok(
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"metadata": {"name": "wire"}})),
    )
    .await;
    let mut problems = Vec::new();
    let mut check = |what: String, obj: &Value| {
        let mut out = Vec::new();
        missing(&schemas, &type_of(obj), obj, "", &mut out);
        if !out.is_empty() {
            problems.push(format!("{what}: missing {}", out.join(", ")));
        }
    };
    let mut resources = served(&c).await;
    // A binding needs its pod.
    resources.sort_by_key(|r| r.kind == "Binding");
    assert!(resources.len() >= 15, "discovery lists too few resources");
    for Served {
        gv,
        plural,
        kind,
        namespaced,
        subresources: subs,
        verbs,
    } in resources
    {
        let body = fixture(&kind).unwrap_or_else(|| {
            panic!("no fixture for the served kind {kind}: add one to `fixture`")
        });
        let base = if namespaced {
            format!("/{gv}/namespaces/wire/{plural}")
        } else {
            format!("/{gv}/{plural}")
        };
        let mut body = body;
        body["apiVersion"] = json!(gv.trim_start_matches("api/").trim_start_matches("apis/"));
        body["kind"] = json!(kind);
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let item = format!("{base}/{name}");

        let (created, _) = c.ok("POST", &base, Some(&body)).await;
        check(format!("create {kind}"), &created);
        // Stored with them too, as controllers and patches see the object.
        let key = match namespaced {
            true => format!("/registry/{plural}/wire/{name}"),
            false => format!("/registry/{plural}/{name}"),
        };
        let answered_only = kind == "Binding" || kind.ends_with("Review");
        if !answered_only {
            check(format!("stored {kind} after create"), &c.stored(&key).await);
        }
        if !verbs.iter().any(|v| v == "update") {
            continue; // bindings: create only
        }

        let mut changed = created.clone();
        changed["metadata"]["labels"]["updated"] = json!("yes");
        let (updated, _) = c.ok("PUT", &item, Some(&changed)).await;
        check(format!("update {kind}"), &updated);

        if subs.iter().any(|s| s == "status") {
            // A status write that sets nothing, as a controller's first write may.
            let mut write = updated.clone();
            write["status"] = json!({});
            let (written, _) = c.ok("PUT", &format!("{item}/status"), Some(&write)).await;
            check(format!("status write {kind}"), &written);
        }
        if subs.iter().any(|s| s == "scale") {
            let (scale, _) = c.ok("GET", &format!("{item}/scale"), None).await;
            check(format!("get {kind} scale"), &scale);
        }

        let (got, _) = c.ok("GET", &item, None).await;
        check(format!("get {kind}"), &got);
        check(format!("stored {kind}"), &c.stored(&key).await);
        let (list, _) = c.ok("GET", &base, None).await;
        for obj in list["items"].as_array().unwrap() {
            let mut obj = obj.clone();
            obj["kind"] = json!(kind);
            obj["apiVersion"] = got["apiVersion"].clone();
            check(format!("list {kind}"), &obj);
        }
    }
    assert!(
        problems.is_empty(),
        "objects without required fields:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Field order.

/// JSON with its object keys in document order (serde_json's `Value` sorts them).
#[derive(Debug)]
enum Doc {
    Obj(Vec<(String, Doc)>),
    Arr(Vec<Doc>),
    Scalar,
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Doc, E> {
                Ok(Doc::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Doc, E> {
                Ok(Doc::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Doc, E> {
                Ok(Doc::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Doc, E> {
                Ok(Doc::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Doc, E> {
                Ok(Doc::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Doc, E> {
                Ok(Doc::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
                let mut out = Vec::new();
                while let Some(d) = a.next_element()? {
                    out.push(d);
                }
                Ok(Doc::Arr(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Doc>()? {
                    out.push((k, v));
                }
                Ok(Doc::Obj(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Doc {
    fn parse(bytes: &[u8]) -> Doc {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The value at a path of keys (`"0"` indexes arrays).
    fn at(&self, path: &[&str]) -> &Doc {
        path.iter().fold(self, |d, p| match d {
            Doc::Obj(o) => {
                &o.iter()
                    .find(|(k, _)| k == p)
                    .unwrap_or_else(|| panic!("no {p}"))
                    .1
            }
            Doc::Arr(a) => &a[p.parse::<usize>().unwrap()],
            Doc::Scalar => panic!("{p} under a scalar"),
        })
    }

    fn keys(&self, path: &[&str]) -> Vec<&str> {
        match self.at(path) {
            Doc::Obj(o) => o.iter().map(|(k, _)| k.as_str()).collect(),
            other => panic!("{path:?} is {other:?}"),
        }
    }
}

/// `got` is in kube-apiserver's order: equal to `order` with the absent keys left out (and
/// no key `order` does not know).
fn assert_order(doc: &Doc, path: &[&str], order: &[&str]) {
    let got = doc.keys(path);
    let unknown: Vec<&&str> = got.iter().filter(|k| !order.contains(k)).collect();
    assert!(
        unknown.is_empty(),
        "{path:?}: keys {unknown:?} not in {order:?}"
    );
    let want: Vec<&str> = order.iter().copied().filter(|k| got.contains(k)).collect();
    assert_eq!(got, want, "key order of {path:?}");
}

const OBJECT: &[&str] = &["kind", "apiVersion", "metadata", "spec", "status"];
const OBJECT_META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];
/// `metav1.Status`, as kube-apiserver writes an error.
const STATUS: &[&str] = &[
    "kind",
    "apiVersion",
    "metadata",
    "status",
    "message",
    "reason",
    "details",
    "code",
];
const STATUS_DETAILS: &[&str] = &[
    "name",
    "group",
    "kind",
    "uid",
    "causes",
    "retryAfterSeconds",
];
const POD_SPEC: &[&str] = &[
    "volumes",
    "initContainers",
    "containers",
    "ephemeralContainers",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeName",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    "tolerations",
    "hostAliases",
    "priorityClassName",
    "priority",
    "dnsConfig",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
    "topologySpreadConstraints",
    "setHostnameAsFQDN",
    "os",
    "hostUsers",
    "schedulingGates",
    "resourceClaims",
    "resources",
];
const CONTAINER: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "ports",
    "envFrom",
    "env",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "volumeMounts",
    "volumeDevices",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
];
const PROBE: &[&str] = &[
    "exec",
    "httpGet",
    "tcpSocket",
    "grpc",
    "initialDelaySeconds",
    "timeoutSeconds",
    "periodSeconds",
    "successThreshold",
    "failureThreshold",
    "terminationGracePeriodSeconds",
];
const POD_STATUS: &[&str] = &[
    "observedGeneration",
    "phase",
    "conditions",
    "message",
    "reason",
    "nominatedNodeName",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "initContainerStatuses",
    "containerStatuses",
    "qosClass",
    "ephemeralContainerStatuses",
    "resize",
    "resourceClaimStatuses",
];
const DEPLOYMENT_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "template",
    "strategy",
    "minReadySeconds",
    "revisionHistoryLimit",
    "paused",
    "progressDeadlineSeconds",
];
const DAEMON_SET_STATUS: &[&str] = &[
    "currentNumberScheduled",
    "numberMisscheduled",
    "desiredNumberScheduled",
    "numberReady",
    "observedGeneration",
    "updatedNumberScheduled",
    "numberAvailable",
    "numberUnavailable",
    "collisionCount",
    "conditions",
];

#[tokio::test]
async fn responses_keep_kube_apiservers_field_order() {
    let c = start().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}});
    let (created, _) = c.ok("POST", cms, Some(&cm)).await;

    // 409 AlreadyExists, as kube-apiserver writes it.
    let (code, bytes) = c.raw("POST", cms, Some(&cm)).await;
    assert_eq!(code, 409);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert_eq!(
        text,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"cm\" already exists","reason":"AlreadyExists","details":{"name":"cm","kind":"configmaps"},"code":409}"#
    );
    // 409 Conflict on a stale resourceVersion.
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, bytes) = c.raw("PUT", &format!("{cms}/cm"), Some(&stale)).await;
    assert_eq!(code, 409);
    let doc = Doc::parse(&bytes);
    assert_eq!(doc.keys(&[]), STATUS);
    assert_order(&doc, &["details"], STATUS_DETAILS);
    // 404 and a 422 with causes.
    let (code, bytes) = c.raw("GET", &format!("{cms}/nope"), None).await;
    assert_eq!(code, 404);
    assert_eq!(Doc::parse(&bytes).keys(&[]), STATUS);
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad"}, "spec": {"containers": []}});
    let (code, bytes) = c
        .raw("POST", "/api/v1/namespaces/default/pods", Some(&bad))
        .await;
    assert_eq!(code, 422);
    let doc = Doc::parse(&bytes);
    assert_eq!(doc.keys(&[]), STATUS);
    assert_order(&doc, &["details"], STATUS_DETAILS);
    assert_eq!(
        doc.keys(&["details", "causes", "0"]),
        ["reason", "message", "field"]
    );

    // A created Pod.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": {
            "containers": [{
                "name": "main", "image": "kubia:v1",
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }],
            "nodeSelector": {"disk": "ssd"},
        },
    });
    let (_, bytes) = c
        .ok("POST", "/api/v1/namespaces/default/pods", Some(&pod))
        .await;
    let doc = Doc::parse(&bytes);
    assert_eq!(doc.keys(&[]), OBJECT);
    assert_order(&doc, &["metadata"], OBJECT_META);
    assert_order(&doc, &["spec"], POD_SPEC);
    assert_order(&doc, &["spec", "containers", "0"], CONTAINER);
    assert_order(&doc, &["spec", "containers", "0", "readinessProbe"], PROBE);
    assert_order(
        &doc,
        &["spec", "containers", "0", "readinessProbe", "httpGet"],
        &["path", "port", "host", "scheme", "httpHeaders"],
    );
    assert_order(
        &doc,
        &["spec", "containers", "0", "ports", "0"],
        &["name", "hostPort", "containerPort", "protocol", "hostIP"],
    );
    assert_order(&doc, &["status"], POD_STATUS);

    // A created Deployment, its list, a watch event.
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "kubia:v1"}]},
        }},
    });
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let (_, bytes) = c.ok("POST", deployments, Some(&deploy)).await;
    let doc = Doc::parse(&bytes);
    assert_eq!(doc.keys(&[]), OBJECT);
    assert_order(&doc, &["metadata"], OBJECT_META);
    assert_order(&doc, &["spec"], DEPLOYMENT_SPEC);
    assert_order(&doc, &["spec", "strategy"], &["type", "rollingUpdate"]);
    assert_order(
        &doc,
        &["spec", "strategy", "rollingUpdate"],
        &["maxUnavailable", "maxSurge"],
    );
    assert_order(&doc, &["spec", "template"], &["metadata", "spec"]);
    assert_order(&doc, &["spec", "template", "spec"], POD_SPEC);

    let (_, bytes) = c.ok("GET", deployments, None).await;
    let doc = Doc::parse(&bytes);
    assert_eq!(doc.keys(&[]), ["kind", "apiVersion", "metadata", "items"]);
    assert_order(&doc, &["items", "0"], OBJECT);
    assert_order(&doc, &["items", "0", "spec"], DEPLOYMENT_SPEC);

    let (code, bytes) = c
        .raw(
            "GET",
            &format!("{deployments}?watch=true&timeoutSeconds=1"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let first = bytes.split(|b| *b == b'\n').next().unwrap();
    let doc = Doc::parse(first);
    assert_eq!(doc.keys(&[]), ["type", "object"]);
    assert_eq!(doc.keys(&["object"]), OBJECT);

    // A DaemonSet's status: required counts first, in Go's order.
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "main", "image": "agent:v1"}]},
        }},
    });
    let (_, bytes) = c
        .ok(
            "POST",
            "/apis/apps/v1/namespaces/default/daemonsets",
            Some(&ds),
        )
        .await;
    let doc = Doc::parse(&bytes);
    assert_eq!(doc.keys(&[]), OBJECT);
    assert_order(&doc, &["status"], DAEMON_SET_STATUS);
}
