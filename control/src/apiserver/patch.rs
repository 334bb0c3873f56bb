//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), Kubernetes strategic merge
//! patch (what `kubectl apply` and `kubectl patch` send), and server-side apply (approximated).
//!
//! Strategic merge needs per-field metadata (`patchStrategy`/`patchMergeKey` from the Go types).
//! Rather than carrying the whole OpenAPI schema, the few list fields that merge are described
//! by their position in the object (see `list_strategy`); every other list is replaced, which is
//! what Kubernetes does for lists without a strategy.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::apiserver::status::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    /// From the request Content-Type (parameters like `; charset=utf-8` ignored):
    /// application/json-patch+json, application/merge-patch+json,
    /// application/strategic-merge-patch+json, application/apply-patch+yaml.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let essence = ct.split(';').next().unwrap_or_default().trim();
        // Media types are case-insensitive (RFC 2045).
        match essence.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Apply `body` to `original` (a full object as JSON, e.g. a Pod). `kind` is the object's Kind
/// ("Pod", "Deployment", "Service", ...), used to find strategic-merge keys.
pub fn apply_patch(
    kind: &str,
    original: &Value,
    patch_type: PatchType,
    body: &[u8],
) -> ApiResult<Value> {
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| rejected(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Merge => {
            let patch = parse_object(body, "merge patch")?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &Value::Object(patch));
            Ok(doc)
        }
        PatchType::StrategicMerge => {
            let patch = parse_object(body, "strategic merge patch")?;
            strategic_merge(kind, original, patch)
        }
        PatchType::Apply => {
            // Simplification: real server-side apply tracks field ownership (managedFields) and
            // removes fields the same manager applied before but no longer lists. Without that
            // bookkeeping the closest cheap behaviour is a JSON merge patch of the applied
            // configuration onto the live object: everything applied is set, nothing else is
            // touched, and lists given are taken whole.
            let applied = parse_apply_body(body)?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &Value::Object(applied));
            Ok(doc)
        }
    }
}

/// A patch that parsed but cannot be applied to this object: kube-apiserver answers 422 with
/// the reason in a cause (errors.NewGenericServerResponse). The detail is repeated in the
/// message because that is the line kubectl prints.
fn rejected(detail: impl Into<String>) -> ApiError {
    let detail = detail.into();
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!(
            "the server rejected our request due to an error in our request: {detail}"
        ),
        details: Some(json!({
            "causes": [{"reason": "UnexpectedServerResponse", "message": detail}]
        })),
    }
}

fn parse_object(body: &[u8], what: &str) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::bad_request(format!(
            "invalid {what}: expected a JSON object, got {}",
            type_name(&other)
        ))),
        Err(e) => Err(ApiError::bad_request(format!("invalid {what}: {e}"))),
    }
}

fn parse_apply_body(body: &[u8]) -> ApiResult<Map<String, Value>> {
    // JSON is the common case (client libraries) and is valid YAML; trying it first keeps
    // serde_json's clearer errors out of the YAML path.
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v,
        Err(e) if flow_depth_exceeds(body, MAX_YAML_FLOW_DEPTH) => {
            return Err(ApiError::bad_request(format!(
                "invalid apply patch: nested more than {MAX_YAML_FLOW_DEPTH} levels: {e}"
            )));
        }
        Err(_) => serde_norway::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!("invalid apply patch: not valid YAML or JSON: {e}"))
        })?,
    };
    match value {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(format!(
            "invalid apply patch: expected an object, got {}",
            type_name(&other)
        ))),
    }
}

/// libyaml takes quadratic time on deeply nested flow collections (`{a: {a: ...}}`): 100 KB
/// of them costs seconds. Real objects nest far less than this, and serde_json already
/// refuses more than 128 levels.
const MAX_YAML_FLOW_DEPTH: usize = 128;

/// Whether `[`/`{` nest deeper than `limit`. Brackets inside quoted scalars count too:
/// tracking quotes would let a stray apostrophe in a plain scalar hide the nesting, and a
/// manifest with over a hundred unclosed brackets in its strings is not worth supporting.
fn flow_depth_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    for &b in body {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch
// ---------------------------------------------------------------------------------------------

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// How a list field merges, from `patchStrategy`/`patchMergeKey` of the Go types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListStrategy {
    /// No strategy: the patch list replaces the live one.
    Replace,
    /// `patchStrategy:"merge"` on a list of scalars: union, as a set.
    Set,
    /// `patchStrategy:"merge" patchMergeKey:"<key>"`: items with equal keys merge.
    Key(&'static str),
}

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// A PodSpec appears in a Pod and, as `template.spec`, in every workload and PodTemplate
/// (`spec.template.spec`, `spec.jobTemplate.spec.template.spec`, `template.spec`).
fn is_pod_spec(kind: &str, path: &[String]) -> bool {
    match path {
        [only] => kind == "Pod" && only == "spec",
        [.., t, s] => t == "template" && s == "spec",
        _ => false,
    }
}

/// The strategy of the list at `path` (field names from the object root; list items add no
/// segment). Context matters: `ports` merges by `containerPort` in a container, by `port` in a
/// Service spec, and is atomic in an EndpointSlice.
fn list_strategy(kind: &str, path: &[String]) -> ListStrategy {
    use ListStrategy::*;
    let Some((field, parent)) = path.split_last() else {
        return Replace;
    };
    let field = field.as_str();
    if parent.last().is_some_and(|p| p == "metadata") {
        return match field {
            "finalizers" => Set,
            "ownerReferences" => Key("uid"),
            _ => Replace,
        };
    }
    if is_pod_spec(kind, parent) {
        return match field {
            "containers" | "initContainers" | "ephemeralContainers" => Key("name"),
            "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => Key("name"),
            "hostAliases" => Key("ip"),
            "topologySpreadConstraints" => Key("topologyKey"),
            _ => Replace,
        };
    }
    if let Some((container_list, pod_spec)) = parent.split_last()
        && CONTAINER_LISTS.contains(&container_list.as_str())
        && is_pod_spec(kind, pod_spec)
    {
        return match field {
            "ports" => Key("containerPort"),
            "env" => Key("name"),
            "volumeMounts" => Key("mountPath"),
            "volumeDevices" => Key("devicePath"),
            _ => Replace,
        };
    }
    let at = |p: &[&str]| path.len() == p.len() && path.iter().zip(p).all(|(a, b)| a == b);
    if at(&["status", "conditions"]) {
        // Every built-in status with conditions keys them by type.
        return Key("type");
    }
    match kind {
        "Pod" if at(&["status", "podIPs"]) || at(&["status", "hostIPs"]) => Key("ip"),
        "Pod" if at(&["status", "resourceClaimStatuses"]) => Key("name"),
        "Node" if at(&["status", "addresses"]) => Key("type"),
        "Node" if at(&["spec", "podCIDRs"]) => Set,
        "Service" if at(&["spec", "ports"]) => Key("port"),
        "ServiceAccount" if at(&["secrets"]) => Key("name"),
        _ => Replace,
    }
}

fn strategic_merge(kind: &str, original: &Value, patch: Map<String, Value>) -> ApiResult<Value> {
    let original = match original {
        Value::Object(m) => Some(m.clone()),
        _ => None,
    };
    let mut path = Vec::new();
    let merged = merge_map(kind, &mut path, original, patch)?;
    // `$patch: delete` at the top leaves an empty object, as kube-apiserver does; validation
    // of the result rejects it.
    Ok(Value::Object(merged.unwrap_or_default()))
}

/// Merge `patch` into `original` (None: absent). Returns None when the patch deletes the map.
fn merge_map(
    kind: &str,
    path: &mut Vec<String>,
    original: Option<Map<String, Value>>,
    mut patch: Map<String, Value>,
) -> ApiResult<Option<Map<String, Value>>> {
    let mut original = match patch.remove(PATCH_DIRECTIVE) {
        None => original.unwrap_or_default(),
        Some(directive) => match directive.as_str() {
            // Still merged into an empty map so nested directives and nulls are resolved.
            Some("replace") => Map::new(),
            Some("delete") => return Ok(None),
            Some("merge") => original.unwrap_or_default(),
            _ => return Err(bad_patch_type(&directive, &patch)),
        },
    };

    if let Some(retain) = patch.remove(RETAIN_KEYS) {
        apply_retain_keys(&mut original, &patch, &retain)?;
    }

    // Directive keys name a sibling list field; collect them before merging that field.
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    let mut deletions: Vec<(String, Vec<Value>)> = Vec::new();
    let mut fields: Vec<(String, Value)> = Vec::new();
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) {
            let Value::Array(list) = v else {
                return Err(ApiError::bad_request(
                    "invalid patch format of setElementOrder list: it must be a list",
                ));
            };
            orders.push((field.to_string(), list));
        } else if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let Value::Array(list) = v else {
                return Err(ApiError::bad_request(
                    "invalid patch format of primitive list: it must be a list",
                ));
            };
            deletions.push((field.to_string(), list));
        } else {
            fields.push((k, v));
        }
    }

    // The live order, before merging, decides where server-only items go.
    let server_orders: Vec<Vec<Value>> = orders
        .iter()
        .map(|(field, _)| match original.get(field) {
            Some(Value::Array(list)) => list.clone(),
            _ => Vec::new(),
        })
        .collect();

    for (k, v) in fields {
        let current = original.remove(&k);
        path.push(k);
        let merged = merge_value(kind, path, current, v);
        let k = path.pop().unwrap_or_default();
        if let Some(value) = merged? {
            original.insert(k, value);
        }
    }

    for ((field, order), server) in orders.iter().zip(&server_orders) {
        path.push(field.clone());
        let key = match list_strategy(kind, path) {
            ListStrategy::Key(key) => Some(key),
            ListStrategy::Set => None,
            // Atomic lists keep the order the patch gave them.
            ListStrategy::Replace => {
                path.pop();
                continue;
            }
        };
        path.pop();
        if let Some(Value::Array(list)) = original.get_mut(field) {
            let order_ids = ids(order, key);
            let server_ids = ids(server, key);
            let merged = std::mem::take(list);
            *list = normalize_order(merged, &order_ids, &server_ids, key);
        }
    }

    for (field, remove) in deletions {
        if let Some(Value::Array(list)) = original.get_mut(&field) {
            let remove: HashSet<String> = remove.iter().map(Value::to_string).collect();
            list.retain(|v| !remove.contains(&v.to_string()));
        }
    }

    Ok(Some(original))
}

/// The merged value of one field; None removes the field.
fn merge_value(
    kind: &str,
    path: &mut Vec<String>,
    current: Option<Value>,
    patch: Value,
) -> ApiResult<Option<Value>> {
    Ok(match (current, patch) {
        // null deletes; for an absent field it is dropped rather than stored.
        (_, Value::Null) => None,
        (Some(Value::Object(o)), Value::Object(p)) => {
            merge_map(kind, path, Some(o), p)?.map(Value::Object)
        }
        (_, Value::Object(p)) => merge_map(kind, path, None, p)?.map(Value::Object),
        (Some(Value::Array(o)), Value::Array(p)) => {
            Some(Value::Array(merge_list(kind, path, o, p)?))
        }
        (_, Value::Array(p)) => Some(Value::Array(merge_list(kind, path, Vec::new(), p)?)),
        (_, scalar) => Some(scalar),
    })
}

fn merge_list(
    kind: &str,
    path: &mut Vec<String>,
    original: Vec<Value>,
    patch: Vec<Value>,
) -> ApiResult<Vec<Value>> {
    match list_strategy(kind, path) {
        ListStrategy::Replace => adopt_items(kind, path, patch),
        ListStrategy::Set => {
            let mut seen = HashSet::new();
            let merged: Vec<Value> = original
                .iter()
                .chain(&patch)
                .filter(|v| seen.insert(v.to_string()))
                .cloned()
                .collect();
            let order = ids(&patch, None);
            let server = ids(&original, None);
            Ok(normalize_order(merged, &order, &server, None))
        }
        ListStrategy::Key(key) => merge_keyed_list(kind, path, original, patch, key),
    }
}

/// Take patch items as they are, resolving directives and nulls inside them.
fn adopt_items(kind: &str, path: &mut Vec<String>, items: Vec<Value>) -> ApiResult<Vec<Value>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Object(m) => {
                if let Some(m) = merge_map(kind, path, None, m)? {
                    out.push(Value::Object(m));
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn merge_keyed_list(
    kind: &str,
    path: &mut Vec<String>,
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> ApiResult<Vec<Value>> {
    let mut items = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Value::Object(m) = item else {
            return Err(rejected(format!(
                "{}: list items must be objects, merged by {key:?}; got {item}",
                path.join(".")
            )));
        };
        let Some(directive) = m.get(PATCH_DIRECTIVE) else {
            items.push(m);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(wanted) = m.get(key) else {
                    return Err(no_merge_key(&m, key));
                };
                original.retain(|o| o.get(key) != Some(wanted));
            }
            // Other `$patch` items are still dropped, so keep scanning.
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(ApiError::bad_request(
                    "merging lists cannot yet be specified in the patch",
                ));
            }
            _ => return Err(bad_patch_type(directive, &m)),
        }
    }
    if replace {
        return adopt_items(kind, path, items.into_iter().map(Value::Object).collect());
    }

    let mut order = Vec::with_capacity(items.len());
    for m in &items {
        match m.get(key) {
            Some(k) => order.push(k.to_string()),
            None => return Err(no_merge_key(m, key)),
        }
    }
    let server = ids(&original, Some(key));

    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, id) in server.iter().enumerate() {
        index.entry(id.clone()).or_insert(i);
    }
    let mut merged: Vec<Option<Value>> = original.into_iter().map(Some).collect();
    for (m, id) in items.into_iter().zip(&order) {
        match index.get(id) {
            Some(&i) => {
                let live = match merged[i].take() {
                    Some(Value::Object(o)) => Some(o),
                    _ => None,
                };
                merged[i] = merge_map(kind, path, live, m)?.map(Value::Object);
            }
            None => {
                if let Some(m) = merge_map(kind, path, None, m)? {
                    index.insert(id.clone(), merged.len());
                    merged.push(Some(Value::Object(m)));
                }
            }
        }
    }
    let merged: Vec<Value> = merged.into_iter().flatten().collect();
    Ok(normalize_order(merged, &order, &server, Some(key)))
}

fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
) -> ApiResult<()> {
    let bad = || ApiError::bad_request("invalid patch format of retainKeys");
    let Value::Array(list) = retain else {
        return Err(bad());
    };
    let keep: HashSet<&str> = list.iter().filter_map(Value::as_str).collect();
    // A field set by the patch but not retained contradicts the directive.
    let contradicts = patch.iter().any(|(k, v)| {
        !v.is_null()
            && !k.starts_with(SET_ELEMENT_ORDER)
            && !k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            && !keep.contains(k.as_str())
    });
    if contradicts {
        return Err(bad());
    }
    original.retain(|k, _| keep.contains(k.as_str()));
    Ok(())
}

fn bad_patch_type(directive: &Value, map: &Map<String, Value>) -> ApiError {
    ApiError::bad_request(format!(
        "Unknown patch type: {directive} in map: {}",
        Value::Object(map.clone())
    ))
}

fn no_merge_key(map: &Map<String, Value>, key: &str) -> ApiError {
    rejected(format!(
        "map: {} does not contain declared merge key: {key}",
        Value::Object(map.clone())
    ))
}

/// Identity of list items: the merge key's value, or the whole value for scalars. Items
/// without the key have no identity and never match.
fn ids(list: &[Value], key: Option<&str>) -> Vec<String> {
    list.iter().filter_map(|v| id_of(v, key)).collect()
}

fn id_of(v: &Value, key: Option<&str>) -> Option<String> {
    match key {
        Some(k) => v.get(k).map(Value::to_string),
        None => Some(v.to_string()),
    }
}

/// Order a merged list as Kubernetes does (strategicpatch normalizeElementOrder): items named
/// by `order` (the patch list or `$setElementOrder`) follow that order, the others keep the
/// live order, and the two are interleaved by their live positions, so new items go after
/// the server-only items that precede them.
fn normalize_order(
    merged: Vec<Value>,
    order: &[String],
    server: &[String],
    key: Option<&str>,
) -> Vec<Value> {
    let position = |ids: &[String]| {
        let mut map: HashMap<String, usize> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            map.entry(id.clone()).or_insert(i);
        }
        map
    };
    let order_pos = position(order);
    let server_pos = position(server);
    let pos_in = |map: &HashMap<String, usize>, v: &Value| {
        id_of(v, key).and_then(|id| map.get(&id).copied())
    };

    let (mut patched, mut server_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|v| pos_in(&order_pos, v).is_some());
    patched.sort_by_key(|v| pos_in(&order_pos, v));
    server_only.sort_by_key(|v| pos_in(&server_pos, v).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let mut left = patched.into_iter().peekable();
    let mut right = server_only.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => matches!(
                (pos_in(&server_pos, l), pos_in(&server_pos, r)),
                (Some(li), Some(ri)) if li < ri
            ),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::test_rng::Rng;

    fn smp(kind: &str, original: Value, patch: Value) -> ApiResult<Value> {
        apply_patch(
            kind,
            &original,
            PatchType::StrategicMerge,
            patch.to_string().as_bytes(),
        )
    }

    /// The status code of a strategic merge patch of [`deployment`] that must fail.
    fn deployment_patch_error(patch: Value) -> u16 {
        smp("Deployment", deployment(), patch).unwrap_err().code
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "a": "1"},
                         "finalizers": ["x.io/one"]},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "nginx:1.25",
                             "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}],
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                            {"name": "sidecar", "image": "busybox", "args": ["sleep", "1000"]}
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}]
                    }
                }
            }
        })
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type(" Application/Strategic-Merge-Patch+JSON "),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        assert_eq!(PatchType::from_content_type(""), None);
    }

    #[test]
    fn json_patch_applies_and_fails_with_422() {
        let orig = deployment();
        let body = br#"[{"op":"replace","path":"/spec/replicas","value":5},
                        {"op":"add","path":"/metadata/labels/b","value":"2"}]"#;
        let out = apply_patch("Deployment", &orig, PatchType::Json, body).unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["metadata"]["labels"]["b"], "2");

        let failing = br#"[{"op":"test","path":"/spec/replicas","value":7}]"#;
        let err = apply_patch("Deployment", &orig, PatchType::Json, failing).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let missing = br#"[{"op":"remove","path":"/spec/nope"}]"#;
        assert_eq!(
            apply_patch("Deployment", &orig, PatchType::Json, missing)
                .unwrap_err()
                .code,
            422
        );

        for bad in [
            &b"{}"[..],
            b"[{\"op\":\"frob\",\"path\":\"/a\"}]",
            b"not json",
            b"",
        ] {
            let err = apply_patch("Deployment", &orig, PatchType::Json, bad).unwrap_err();
            assert_eq!(err.code, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn merge_patch() {
        let orig = deployment();
        let body = br#"{"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"replicas":2}}"#;
        let out = apply_patch("Deployment", &orig, PatchType::Merge, body).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "c": "3"}));
        assert_eq!(out["spec"]["replicas"], 2);
        // RFC 7386 replaces lists whole.
        let body = br#"{"spec":{"template":{"spec":{"containers":[{"name":"only"}]}}}}"#;
        let out = apply_patch("Deployment", &orig, PatchType::Merge, body).unwrap();
        assert_eq!(containers(&out), &vec![json!({"name": "only"})]);
        for bad in [&b"[1]"[..], b"null", b"\"x\"", b"{"] {
            let err = apply_patch("Deployment", &orig, PatchType::Merge, bad).unwrap_err();
            assert_eq!(err.code, 400);
        }
    }

    #[test]
    fn apply_accepts_yaml_and_json() {
        let orig = deployment();
        let yaml = b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 4\n";
        let out = apply_patch("Deployment", &orig, PatchType::Apply, yaml).unwrap();
        assert_eq!(out["spec"]["replicas"], 4);
        assert_eq!(out["metadata"]["labels"]["app"], "web");
        let out = apply_patch(
            "Deployment",
            &orig,
            PatchType::Apply,
            br#"{"spec":{"replicas":6}}"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 6);
        for bad in [&b"- a\n- b\n"[..], b"key: [unclosed", b"42"] {
            let err = apply_patch("Deployment", &orig, PatchType::Apply, bad).unwrap_err();
            assert_eq!(err.code, 400);
        }
    }

    #[test]
    fn smp_scale_and_label_removal() {
        let out = smp("Deployment", deployment(), json!({"spec": {"replicas": 3}})).unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        assert_eq!(containers(&out).len(), 2);

        let out = smp(
            "Deployment",
            deployment(),
            json!({"metadata": {"labels": {"a": null, "missing": null}}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    }

    #[test]
    fn smp_kubectl_apply_image_change_with_element_order() {
        // What `kubectl apply` sends after editing the image of the first container.
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{"name": "app", "image": "nginx:1.27"}]
        }}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        let cs = containers(&out);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["name"], "app");
        assert_eq!(cs[0]["image"], "nginx:1.27");
        // Untouched fields of the merged item survive.
        assert_eq!(cs[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(cs[1]["name"], "sidecar");
        assert!(out.to_string().find('$').is_none());
    }

    #[test]
    fn smp_element_order_reorders_and_new_items_follow() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}, {"name": "new"}],
            "containers": [{"name": "new", "image": "redis"}]
        }}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        let names: Vec<&str> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sidecar", "app", "new"]);

        // Without an order directive a new item is appended after the live ones.
        let patch = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "new", "image": "redis"}]
        }}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        let names: Vec<&str> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["app", "sidecar", "new"]);
    }

    #[test]
    fn smp_env_add_and_remove() {
        let add = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "A"}, {"name": "B"}, {"name": "C"}],
                "env": [{"name": "C", "value": "3"}],
                "name": "app"
            }]
        }}}});
        let out = smp("Deployment", deployment(), add).unwrap();
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}])
        );

        let remove = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "B"}],
                "env": [{"$patch": "delete", "name": "A"}],
                "name": "app"
            }]
        }}}});
        let out = smp("Deployment", deployment(), remove).unwrap();
        assert_eq!(
            containers(&out)[0]["env"],
            json!([{"name": "B", "value": "2"}])
        );
        assert!(!out.to_string().contains("$patch"));
    }

    #[test]
    fn smp_container_port_delete_keyed_by_container_port() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "app",
            "ports": [{"$patch": "delete", "containerPort": 443}]
        }]}}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(
            containers(&out)[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
        // A changed field of one port merges into that port.
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "app",
            "ports": [{"containerPort": 80, "name": "http"}]
        }]}}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(
            containers(&out)[0]["ports"],
            json!([{"containerPort": 80, "protocol": "TCP", "name": "http"},
                   {"containerPort": 443, "protocol": "TCP"}])
        );
    }

    #[test]
    fn smp_retain_keys_for_strategy() {
        let patch = json!({"spec": {"strategy": {
            "$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null
        }}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

        // A retained-keys list that omits a field the patch sets is malformed.
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        assert_eq!(deployment_patch_error(patch), 400);
        let patch = json!({"spec": {"strategy": {"$retainKeys": "type"}}});
        assert_eq!(deployment_patch_error(patch), 400);
    }

    #[test]
    fn smp_service_ports_keyed_by_port() {
        let svc = json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                      {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]
        }});
        let patch = json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}]}});
        let out = smp("Service", svc.clone(), patch).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                   {"name": "https", "port": 443, "targetPort": 9443, "protocol": "TCP"}])
        );
        // The same field name in an EndpointSlice is atomic.
        let slice = json!({"kind": "EndpointSlice", "ports": [{"port": 80}, {"port": 81}],
                           "endpoints": [{"addresses": ["10.0.0.1"]}]});
        let out = smp(
            "EndpointSlice",
            slice,
            json!({"ports": [{"port": 81, "name": "x"}]}),
        )
        .unwrap();
        assert_eq!(out["ports"], json!([{"port": 81, "name": "x"}]));
    }

    #[test]
    fn smp_unkeyed_lists_replace_and_primitive_sets_merge() {
        let mut orig = deployment();
        orig["spec"]["template"]["spec"]["tolerations"] =
            json!([{"key": "a", "operator": "Exists"}]);
        let patch = json!({
            "metadata": {"finalizers": ["x.io/two", "x.io/one"]},
            "spec": {"template": {"spec": {
                "tolerations": [{"key": "b", "operator": "Exists"}],
                "containers": [{"name": "sidecar", "args": ["sleep", "5"]}]
            }}}
        });
        let out = smp("Deployment", orig, patch).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
        assert_eq!(containers(&out)[1]["args"], json!(["sleep", "5"]));
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["x.io/two", "x.io/one"])
        );

        let patch = json!({"metadata": {
            "$deleteFromPrimitiveList/finalizers": ["x.io/one"],
            "finalizers": ["x.io/three"]
        }});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["x.io/three"]));
    }

    #[test]
    fn smp_replace_and_delete_directives() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"},
            {"name": "solo", "image": "alpine"}
        ]}}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(
            containers(&out),
            &vec![json!({"name": "solo", "image": "alpine"})]
        );

        let patch =
            json!({"spec": {"selector": {"$patch": "replace", "matchLabels": {"tier": "x"}}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(
            out["spec"]["selector"],
            json!({"matchLabels": {"tier": "x"}})
        );

        let patch = json!({"spec": {"strategy": {"$patch": "delete"}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert!(out["spec"].get("strategy").is_none());

        let patch = json!({"spec": {"strategy": {"$patch": "merge", "type": "Recreate"}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        assert_eq!(out["spec"]["strategy"]["type"], "Recreate");
        assert!(out["spec"]["strategy"].get("rollingUpdate").is_some());

        let patch = json!({"spec": {"strategy": {"$patch": "frobnicate"}}});
        assert_eq!(deployment_patch_error(patch), 400);
    }

    #[test]
    fn smp_missing_merge_key_is_422() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = smp("Deployment", deployment(), patch).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let patch = json!({"spec": {"template": {"spec": {"containers": ["x"]}}}});
        assert_eq!(deployment_patch_error(patch), 422);
    }

    #[test]
    fn smp_new_fields_lose_directives_and_nulls() {
        let patch = json!({"spec": {"template": {"spec": {
            "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["a"]}],
            "$setElementOrder/hostAliases": [{"ip": "1.2.3.4"}],
            "securityContext": {"$patch": "merge", "runAsUser": 1000, "fsGroup": null}
        }}}});
        let out = smp("Deployment", deployment(), patch).unwrap();
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(
            spec["hostAliases"],
            json!([{"ip": "1.2.3.4", "hostnames": ["a"]}])
        );
        assert_eq!(spec["securityContext"], json!({"runAsUser": 1000}));
    }

    #[test]
    fn smp_pod_and_status_keys() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "ownerReferences": [
                {"uid": "u1", "name": "rs", "kind": "ReplicaSet"}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "PodScheduled", "status": "True"}]}});
        let patch = json!({
            "metadata": {"ownerReferences": [{"uid": "u1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "j"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let out = smp("Pod", pod, patch).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "j"}])
        );
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "u1", "name": "rs", "kind": "ReplicaSet", "controller": true}])
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}])
        );

        let node = json!({"kind": "Node", "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n"}]}});
        let out = smp(
            "Node",
            node,
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
        )
        .unwrap();
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n"}])
        );
    }

    #[test]
    fn smp_cronjob_template_is_a_pod_spec() {
        let cj = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "b", "image": "3"}]}}}}}});
        let out = smp("CronJob", cj, patch).unwrap();
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "3"}])
        );
    }

    #[test]
    fn smp_rejects_non_objects() {
        for bad in ["[]", "null", "3", "\"s\"", "{"] {
            let err = apply_patch("Pod", &json!({}), PatchType::StrategicMerge, bad.as_bytes())
                .unwrap_err();
            assert_eq!(err.code, 400, "{bad}");
        }
        let bad_dirs = [
            json!({"metadata": {"$setElementOrder/finalizers": "x"}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": 1}}),
            json!({"spec": {"template": {"spec": {"containers": [{"$patch": "merge", "name": "a"}]}}}}),
        ];
        for patch in bad_dirs {
            assert_eq!(deployment_patch_error(patch), 400);
        }
    }

    fn random_value(rng: &mut Rng, depth: usize) -> Value {
        const KEYS: [&str; 14] = [
            "$patch",
            "$retainKeys",
            "$setElementOrder/containers",
            "$deleteFromPrimitiveList/finalizers",
            "containers",
            "name",
            "image",
            "env",
            "ports",
            "containerPort",
            "spec",
            "template",
            "finalizers",
            "metadata",
        ];
        const STRINGS: [&str; 6] = ["replace", "delete", "merge", "app", "x", "name"];
        match if depth > 4 {
            rng.below(4)
        } else {
            rng.below(7)
        } {
            0 => Value::Null,
            1 => json!(rng.below(3) == 0),
            2 => json!(rng.below(500)),
            3 => json!(STRINGS[rng.below(STRINGS.len())]),
            4 | 5 => {
                let mut m = Map::new();
                for _ in 0..rng.below(5) {
                    m.insert(
                        KEYS[rng.below(KEYS.len())].to_string(),
                        random_value(rng, depth + 1),
                    );
                }
                Value::Object(m)
            }
            _ => Value::Array(
                (0..rng.below(4))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
        }
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let kinds = ["Pod", "Deployment", "Service", "Node", "EndpointSlice"];
        let types = [
            PatchType::Json,
            PatchType::Merge,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ];
        for i in 0..3000 {
            let kind = kinds[rng.below(kinds.len())];
            let original = if i % 3 == 0 {
                deployment()
            } else {
                random_value(&mut rng, 0)
            };
            let body = match i % 4 {
                0 => (0..rng.below(40)).map(|_| rng.next() as u8).collect::<Vec<u8>>(),
                1 => {
                    let ops = ["add", "remove", "replace", "move", "copy", "test"];
                    let paths = ["/spec", "/spec/replicas", "/metadata/labels/a", "/x/0", "", "/-"];
                    json!([{"op": ops[rng.below(ops.len())], "path": paths[rng.below(paths.len())],
                            "from": paths[rng.below(paths.len())], "value": random_value(&mut rng, 2)}])
                    .to_string()
                    .into_bytes()
                }
                _ => json!({"metadata": random_value(&mut rng, 1), "spec": random_value(&mut rng, 0)})
                    .to_string()
                    .into_bytes(),
            };
            for t in types {
                let _ = apply_patch(kind, &original, t, &body);
            }
        }
    }

    #[test]
    fn hostile_yaml_is_rejected_quickly() {
        let started = std::time::Instant::now();
        let flow = format!("{}1{}", "{a: ".repeat(50_000), "}".repeat(50_000));
        let err = apply_patch("Pod", &json!({}), PatchType::Apply, flow.as_bytes()).unwrap_err();
        assert_eq!(err.code, 400);
        let laughs = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
        let _ = apply_patch("Pod", &json!({}), PatchType::Apply, laughs.as_bytes());
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        // Ordinary flow style still parses.
        let out = apply_patch(
            "Pod",
            &json!({}),
            PatchType::Apply,
            b"{metadata: {labels: {app: web}}, spec: {containers: [{name: c}]}}",
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let body = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        for t in [
            PatchType::Merge,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ] {
            assert_eq!(
                apply_patch("Pod", &json!({}), t, body.as_bytes())
                    .unwrap_err()
                    .code,
                400
            );
        }
    }
}
