//! A minimal OpenAPI v3 description, just enough for kubectl 1.29+ to use server-side field
//! validation instead of failing with "failed to download openapi".
//!
//! What kubectl reads (client-go `openapi`/`openapi3`, cli-runtime `queryParamVerifierV3`):
//! - `GET /openapi/v3` → `{"paths": {"<gv path>": {"serverRelativeURL": …}}}`;
//! - the group-version document, parsed as `spec3.OpenAPI`; for a GVK it looks for a `patch`
//!   operation whose own extensions carry `x-kubernetes-group-version-kind` equal to the GVK and
//!   whose own (not path-level) `parameters` include one named `fieldValidation`. It stops at the
//!   first patch operation with that GVK (map order), so every such operation carries it.
//! - `kubectl apply` checks whether the patch operation's request body accepts
//!   `application/strategic-merge-patch+json`; if so it builds the patch from these schemas. We
//!   ship no real schemas, so that media type is deliberately NOT listed: kubectl then falls back
//!   to its compiled-in types, which know the merge keys.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::apiserver::discovery::fnv1a64;
use crate::apiserver::resources::{RESOURCES, REVIEWS, ResourceInfo, ReviewResource, groups};

/// The OpenAPI path of a group version: `api/v1`, `apis/apps/v1`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The Go package segment kube uses in definition names: `core`, `apps`, `coordination`.
fn package(group: &str) -> &str {
    if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    }
}

fn schema_name(group: &str, version: &str, kind: &str) -> String {
    format!("io.k8s.api.{}.{version}.{kind}", package(group))
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": ty, "uniqueItems": true},
    })
}

fn path_param(name: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "description": format!("{name} of the resource"),
        "required": true,
        "schema": {"type": "string", "uniqueItems": true},
    })
}

/// The parameters of every write: kubectl looks for `fieldValidation` by name.
fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        query(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted.",
        ),
        query(
            "fieldManager",
            "string",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
        ),
        query(
            "fieldValidation",
            "string",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
        ),
    ];
    if patch {
        p.push(query(
            "force",
            "boolean",
            "Force is going to \"force\" Apply requests.",
        ));
    }
    p
}

fn json_body(schema: Value) -> Value {
    json!({"content": {"application/json": {"schema": schema}}, "required": true})
}

fn ok(schema: &str, code: &str) -> Value {
    json!({
        code: {"description": "OK", "content": {"application/json": {"schema": schema_ref(schema)}}},
        "401": {"description": "Unauthorized"},
    })
}

/// One operation. `action` is kube's `x-kubernetes-action`.
fn operation(
    id: String,
    action: &str,
    gvk_v: &Value,
    params: Vec<Value>,
    body: Option<Value>,
    responses: Value,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "parameters": params,
        "responses": responses,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk_v,
    });
    if let Some(b) = body {
        op["requestBody"] = b;
    }
    op
}

fn patch_body() -> Value {
    // No strategic-merge-patch+json here: see the module comment.
    let patch = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
    json!({
        "content": {
            "application/json-patch+json": {"schema": patch},
            "application/merge-patch+json": {"schema": patch},
            "application/apply-patch+yaml": {"schema": patch},
        },
        "required": true,
    })
}

/// `readCoreV1NamespacedPod`-style operation ids.
fn op_id(verb: &str, r: &ResourceInfo, suffix: &str) -> String {
    kind_op_id(verb, r.group, r.version, r.namespaced, r.kind, suffix)
}

fn kind_op_id(
    verb: &str,
    group: &str,
    version: &str,
    namespaced: bool,
    kind: &str,
    suffix: &str,
) -> String {
    let mut gv = String::new();
    for part in package(group).split('-').chain(std::iter::once(version)) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            gv.push(f.to_ascii_uppercase());
            gv.push_str(c.as_str());
        }
    }
    let ns = if namespaced { "Namespaced" } else { "" };
    format!("{verb}{gv}{ns}{kind}{suffix}")
}

/// The one path of a review resource: create only (kubectl validates a review it creates
/// from a file against this).
fn review_paths(
    r: &ReviewResource,
    paths: &mut Map<String, Value>,
    schemas: &mut BTreeMap<String, Value>,
) {
    let base = format!("/{}", gv_path(r.group, r.version));
    let (path, params) = if r.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", r.plural),
            vec![path_param("namespace")],
        )
    } else {
        (format!("{base}/{}", r.plural), vec![])
    };
    let kind_schema = schema_name(r.group, r.version, r.kind);
    let g = gvk(r.group, r.version, r.kind);
    schemas.insert(kind_schema.clone(), object_schema(Some(g.clone())));
    let id = kind_op_id("create", r.group, r.version, r.namespaced, r.kind, "");
    paths.insert(
        path,
        json!({
            "parameters": params,
            "post": operation(id, "post", &g, write_params(false),
                Some(json_body(schema_ref(&kind_schema))), ok(&kind_schema, "201")),
        }),
    );
}

/// The paths of one resource (collection, object, subresources) into `paths`.
fn resource_paths(
    r: &ResourceInfo,
    paths: &mut Map<String, Value>,
    schemas: &mut BTreeMap<String, Value>,
) {
    let base = format!("/{}", gv_path(r.group, r.version));
    let scope = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let kind_schema = schema_name(r.group, r.version, r.kind);
    schemas.insert(
        kind_schema.clone(),
        object_schema(Some(gvk(r.group, r.version, r.kind))),
    );
    let list_schema = format!("{kind_schema}List");
    schemas.insert(
        list_schema.clone(),
        object_schema(Some(gvk(r.group, r.version, &format!("{}List", r.kind)))),
    );
    let g = gvk(r.group, r.version, r.kind);
    let mut scope_params = Vec::new();
    if r.namespaced {
        scope_params.push(path_param("namespace"));
    }

    paths.insert(
        scope.clone(),
        json!({
            "parameters": scope_params,
            "get": operation(op_id("list", r, ""), "list", &g, vec![], None, ok(&list_schema, "200")),
            "post": operation(op_id("create", r, ""), "post", &g, write_params(false),
                Some(json_body(schema_ref(&kind_schema))), ok(&kind_schema, "201")),
        }),
    );

    let mut item_params = scope_params.clone();
    item_params.insert(0, path_param("name"));
    let item = format!("{scope}/{{name}}");
    paths.insert(
        item.clone(),
        json!({
            "parameters": item_params,
            "get": operation(op_id("read", r, ""), "get", &g, vec![], None, ok(&kind_schema, "200")),
            "put": operation(op_id("replace", r, ""), "put", &g, write_params(false),
                Some(json_body(schema_ref(&kind_schema))), ok(&kind_schema, "200")),
            "patch": operation(op_id("patch", r, ""), "patch", &g, write_params(true),
                Some(patch_body()), ok(&kind_schema, "200")),
            "delete": operation(op_id("delete", r, ""), "delete", &g, vec![], None,
                ok("io.k8s.apimachinery.pkg.apis.meta.v1.Status", "200")),
        }),
    );

    for sub in r.subresources {
        if let Some(entry) = subresource_path(r, sub, &item_params, &g, &kind_schema, schemas) {
            paths.insert(format!("{item}/{sub}"), entry);
        }
    }
}

/// The path entry of one subresource (its kind's schema into `schemas`); `None` for one the
/// document does not describe.
fn subresource_path(
    r: &ResourceInfo,
    sub: &str,
    item_params: &[Value],
    g: &Value,
    kind_schema: &str,
    schemas: &mut BTreeMap<String, Value>,
) -> Option<Value> {
    let suffix: String = {
        let mut c = sub.chars();
        c.next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default()
    };
    let entry = match sub {
        "status" => json!({
            "parameters": item_params,
            "get": operation(op_id("read", r, &suffix), "get", g, vec![], None, ok(kind_schema, "200")),
            "put": operation(op_id("replace", r, &suffix), "put", g, write_params(false),
                Some(json_body(schema_ref(kind_schema))), ok(kind_schema, "200")),
            "patch": operation(op_id("patch", r, &suffix), "patch", g, write_params(true),
                Some(patch_body()), ok(kind_schema, "200")),
        }),
        "scale" => {
            let sg = gvk("autoscaling", "v1", "Scale");
            let s = schema_name("autoscaling", "v1", "Scale");
            schemas.insert(s.clone(), object_schema(Some(sg.clone())));
            json!({
                "parameters": item_params,
                "get": operation(op_id("read", r, &suffix), "get", &sg, vec![], None, ok(&s, "200")),
                "put": operation(op_id("replace", r, &suffix), "put", &sg, write_params(false),
                    Some(json_body(schema_ref(&s))), ok(&s, "200")),
                "patch": operation(op_id("patch", r, &suffix), "patch", &sg, write_params(true),
                    Some(patch_body()), ok(&s, "200")),
            })
        }
        "binding" => {
            let bg = gvk("", "v1", "Binding");
            let s = schema_name("", "v1", "Binding");
            schemas.insert(s.clone(), object_schema(Some(bg.clone())));
            json!({
                "parameters": item_params,
                "post": operation(op_id("create", r, &suffix), "post", &bg, write_params(false),
                    Some(json_body(schema_ref(&s))), ok(&s, "201")),
            })
        }
        "finalize" => json!({
            "parameters": item_params,
            "put": operation(op_id("replace", r, &suffix), "put", g, write_params(false),
                Some(json_body(schema_ref(kind_schema))), ok(kind_schema, "200")),
        }),
        "log" => json!({
            "parameters": item_params,
            "get": {
                "operationId": op_id("read", r, &suffix),
                "parameters": [query("container", "string", "The container for which to stream logs.")],
                "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                "x-kubernetes-action": "get",
                "x-kubernetes-group-version-kind": g,
            },
        }),
        _ => return None,
    };
    Some(entry)
}

/// A schema we do not describe: any object is accepted (the server validates).
fn object_schema(gvk: Option<Value>) -> Value {
    let mut s = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    if let Some(g) = gvk {
        s["x-kubernetes-group-version-kind"] = json!([g]);
    }
    s
}

fn build_group_version(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = BTreeMap::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resource_paths(r, &mut paths, &mut schemas);
    }
    for r in REVIEWS
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        review_paths(r, &mut paths, &mut schemas);
    }
    if paths.is_empty() {
        return None;
    }
    for name in ["Patch", "Status", "DeleteOptions"] {
        schemas.insert(
            format!("io.k8s.apimachinery.pkg.apis.meta.v1.{name}"),
            object_schema(None),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0-skiff",
            crate::apiserver::discovery::SERVER_MAJOR, crate::apiserver::discovery::SERVER_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Every group-version document with its hash, computed once: the documents depend only on the
/// static resource table, so the hash is stable for a build (clients cache by it).
fn documents() -> &'static BTreeMap<String, (Value, String)> {
    static DOCS: OnceLock<BTreeMap<String, (Value, String)>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut out = BTreeMap::new();
        for (g, v) in groups() {
            if let Some(doc) = build_group_version(g, v) {
                let bytes = serde_json::to_vec(&doc).unwrap_or_default();
                // Two FNV passes (plain and salted) give a 128-bit hex digest, shaped like kube's.
                let mut salted = b"skiff".to_vec();
                salted.extend_from_slice(&bytes);
                let hash = format!("{:016X}{:016X}", fnv1a64(&bytes), fnv1a64(&salted));
                out.insert(gv_path(g, v), (doc, hash));
            }
        }
        out
    })
}

/// `GET /openapi/v3`: the index of group-version documents.
pub fn v3_root() -> Value {
    let paths: Map<String, Value> = documents()
        .iter()
        .map(|(path, (_, hash))| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// `GET /openapi/v3/<path>` for `path` like `api/v1` or `apis/apps/v1` (a leading `/` or a
/// `?hash=` query are tolerated).
pub fn v3_group_version(path: &str) -> Option<Value> {
    let path = path.split('?').next().unwrap_or(path);
    let path = path
        .trim_start_matches('/')
        .trim_start_matches("openapi/v3/")
        .trim_end_matches('/');
    documents().get(path).map(|(doc, _)| doc.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check kubectl's `queryParamVerifierV3.HasSupport` does, transcribed: the first patch
    /// operation carrying the GVK decides.
    fn supports_field_validation(doc: &Value, group: &str, version: &str, kind: &str) -> bool {
        for (_, item) in doc["paths"].as_object().unwrap() {
            let Some(op) = item.get("patch") else {
                continue;
            };
            let g = &op["x-kubernetes-group-version-kind"];
            if g["group"] != group || g["version"] != version || g["kind"] != kind {
                continue;
            }
            return op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation");
        }
        false
    }

    #[test]
    fn root_lists_every_group_version_with_a_hash() {
        let root = v3_root();
        let paths = root["paths"].as_object().unwrap();
        for key in [
            "api/v1",
            "apis/apps/v1",
            "apis/batch/v1",
            "apis/coordination.k8s.io/v1",
            "apis/discovery.k8s.io/v1",
        ] {
            let url = paths[key]["serverRelativeURL"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("/openapi/v3/{key}?hash=")),
                "{url}"
            );
            assert!(url.len() > format!("/openapi/v3/{key}?hash=").len() + 16);
        }
        assert_eq!(v3_root(), root, "hash stable");
    }

    #[test]
    fn every_kind_supports_field_validation_on_patch() {
        for r in RESOURCES {
            let doc = v3_group_version(&gv_path(r.group, r.version)).unwrap();
            assert!(
                supports_field_validation(&doc, r.group, r.version, r.kind),
                "{}",
                r.kind
            );
        }
        let apps = v3_group_version("apis/apps/v1").unwrap();
        assert!(supports_field_validation(
            &apps,
            "autoscaling",
            "v1",
            "Scale"
        ));
    }

    #[test]
    fn no_strategic_merge_patch_anywhere() {
        for (doc, _) in documents().values() {
            let text = serde_json::to_string(doc).unwrap();
            assert!(!text.contains("strategic-merge-patch"));
        }
    }

    #[test]
    fn document_shape() {
        let doc = v3_group_version("/api/v1?hash=abc").unwrap();
        assert_eq!(doc["openapi"], "3.0.0");
        assert!(doc["info"]["title"].is_string());
        let pod = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"];
        assert_eq!(
            pod["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        let ct = pod["patch"]["requestBody"]["content"].as_object().unwrap();
        let mut types: Vec<&str> = ct.keys().map(|k| k.as_str()).collect();
        types.sort();
        assert_eq!(
            types,
            [
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json"
            ]
        );
        assert!(
            pod["put"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let coll = &doc["paths"]["/api/v1/namespaces/{namespace}/pods"];
        assert!(
            coll["post"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert_eq!(
            doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"]["type"],
            "object"
        );
        assert!(doc["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
        let apps = v3_group_version("apis/apps/v1").unwrap();
        assert!(apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"].is_object());
        let lease = v3_group_version("apis/coordination.k8s.io/v1").unwrap();
        assert!(lease["components"]["schemas"]["io.k8s.api.coordination.v1.Lease"].is_object());
        // Every $ref resolves.
        for (doc, _) in documents().values() {
            check_refs(doc, doc);
        }
    }

    fn check_refs(doc: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let name = r.trim_start_matches("#/components/schemas/");
                    assert!(
                        doc["components"]["schemas"].get(name).is_some(),
                        "dangling {r}"
                    );
                }
                m.values().for_each(|c| check_refs(doc, c));
            }
            Value::Array(a) => a.iter().for_each(|c| check_refs(doc, c)),
            _ => {}
        }
    }

    #[test]
    fn unknown_paths_are_none() {
        assert!(v3_group_version("apis/autoscaling/v1").is_none());
        assert!(v3_group_version("").is_none());
        assert!(v3_group_version("api").is_none());
    }

    #[test]
    fn operation_ids_look_like_kubes() {
        let doc = v3_group_version("apis/apps/v1").unwrap();
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(
            p["patch"]["operationId"],
            "patchAppsV1NamespacedDeploymentScale"
        );
        let core = v3_group_version("api/v1").unwrap();
        assert_eq!(
            core["paths"]["/api/v1/namespaces/{name}"]["get"]["operationId"],
            "readCoreV1Namespace"
        );
    }
}
