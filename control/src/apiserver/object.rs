//! Small helpers on objects held as JSON: metadata access, timestamps, names.

use serde_json::{Map, Value, json};

use crate::store::{KeyValue, Revision};

use super::status::{ApiError, ApiResult};

/// `metadata` of an object, created if missing or not a map.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let map = obj.as_object_mut().expect("made an object above");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object above")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// Now, as Kubernetes writes `metav1.Time` (RFC 3339, whole seconds, UTC).
pub fn now() -> String {
    format_time(jiff::Timestamp::now())
}

pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The random suffix kube-apiserver appends to `generateName` (5 characters from an alphabet
/// without vowels and look-alike digits, so no words and no confusion).
pub fn name_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Decode a stored value and stamp the revision it was read at as its `resourceVersion`.
pub fn decode(kv: &KeyValue) -> ApiResult<Value> {
    decode_at(&kv.value, kv.mod_revision)
}

pub fn decode_at(bytes: &[u8], revision: Revision) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::internal(format!(
            "stored object is not valid JSON ({e}); key left untouched"
        ))
    })?;
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
    Ok(obj)
}

/// The bytes to store: everything but `resourceVersion`, which is the store's revision.
pub fn encode(obj: &Value) -> ApiResult<Vec<u8>> {
    let mut obj = obj.clone();
    let meta = meta_mut(&mut obj);
    meta.remove("resourceVersion");
    meta.remove("selfLink");
    serde_json::to_vec(&obj).map_err(|e| ApiError::internal(format!("encoding object: {e}")))
}

/// A `resourceVersion` from a client: empty means none.
pub fn parse_resource_version(rv: Option<&str>) -> ApiResult<Option<Revision>> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<Revision>().map(Some).map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {s:?}: not a number"))
        }),
    }
}

/// A JSON or YAML request body as a JSON value.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> ApiResult<Value> {
    let media = content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let value: Value = match media.as_str() {
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            serde_norway::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))?
        }
        // kubectl 1.32+ sends typed objects (create namespace|deployment|configmap…) this way.
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("the body is not valid Kubernetes protobuf: {e}"))
        })?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the body must be a JSON object (an API object)",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_drops_resource_version_and_decode_restores_it() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}, "spec": {}});
        let bytes = encode(&obj).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let back = decode_at(&bytes, 12).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "12");
    }

    #[test]
    fn bodies_in_json_and_yaml() {
        assert_eq!(
            parse_body(
                Some("application/yaml"),
                b"kind: Pod\nmetadata:\n  name: x\n"
            )
            .unwrap()["metadata"]["name"],
            "x"
        );
        assert_eq!(parse_body(None, b"{\"a\":1").unwrap_err().code, 400);
        assert_eq!(parse_body(None, b"[1]").unwrap_err().code, 400);
        assert_eq!(
            parse_body(Some("application/xml"), b"<a/>")
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn generated_names_use_kube_alphabet() {
        let s = name_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn times_are_whole_seconds_utc() {
        let t = now();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
        assert!(parse_time(&t).is_some());
    }
}
