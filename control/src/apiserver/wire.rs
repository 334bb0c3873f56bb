//! Objects as kube-apiserver writes them: keys in the Go type's field order, and every field the
//! OpenAPI schema requires present.
//!
//! Objects are `serde_json::Value`s, whose maps are sorted by key. kube-apiserver writes a
//! struct's fields in declaration order (`{"kind":"Status","apiVersion":"v1","metadata":{},
//! "status":"Failure",…,"code":409}`, `metadata` before `spec` before `status`) and, for fields
//! without `omitempty`, writes them even when zero (`DaemonSetStatus.numberReady: 0`). Clients
//! compare error text, and schema-validating clients refuse objects without required fields.
//!
//! Both come from the generated table in `protobuf_schema.rs` (`cargo xtask gen-protobuf-schema`):
//! fields in prost's declaration order (the `.proto` files follow the Go structs) and the
//! `required` lists of k8s-openapi's schemas. [`to_vec`] serializes a `Value` walking that
//! schema (no reordered copy is built); [`fill_required`] adds missing required fields to an
//! object before it is stored. Keys the schema does not know follow the known ones, sorted.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::protobuf::schema::{KINDS, META_V1_LIST_META, META_V1_VERBS};
use super::protobuf::{Card, Field, Message, Ty};

/// `"apiVersion/kind"` → message of every top-level kind the table knows.
fn kinds() -> &'static HashMap<&'static str, &'static Message> {
    static KINDS_BY_NAME: OnceLock<HashMap<&'static str, &'static Message>> = OnceLock::new();
    KINDS_BY_NAME.get_or_init(|| KINDS.iter().map(|(k, m)| (*k, *m)).collect())
}

fn kind_message(api_version: &str, kind: &str) -> Option<&'static Message> {
    let key = format!("{api_version}/{kind}");
    kinds().get(key.as_str()).copied()
}

/// The object's JSON, in kube-apiserver's field order, with required fields filled.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(&mut out, value);
    out
}

/// Append the object's JSON (as [`to_vec`]) to `out`.
pub fn write(out: &mut Vec<u8>, value: &Value) {
    // Writing a `Value` into memory cannot fail (keys are strings, numbers are finite).
    let _ = serde_json::to_writer(
        &mut *out,
        &Ordered {
            v: value,
            hint: Hint::Any,
        },
    );
}

/// Add the required fields `obj` lacks, as their Go zero values, recursively (objects of a
/// kind the table does not know are left alone).
pub fn fill_required(obj: &mut Value) {
    let Some(m) = top_level(obj) else {
        return;
    };
    if let Value::Object(o) = obj {
        fill_msg(o, m, m);
    }
}

fn top_level(obj: &Value) -> Option<&'static Message> {
    let o = obj.as_object()?;
    let kind = o.get("kind")?.as_str()?;
    let api_version = o.get("apiVersion")?.as_str()?;
    kind_message(api_version, kind)
}

fn is_required(f: &Field, m: &Message, outer: &Message) -> bool {
    m.required.contains(&f.name) || outer.required.contains(&f.name)
}

fn fill_msg(o: &mut Map<String, Value>, m: &'static Message, outer: &'static Message) {
    for f in m.fields {
        if let (Card::Inline, Ty::Msg(sub)) = (f.card, f.ty) {
            // An inlined message's fields are the parent's; its required list is the parent's.
            fill_msg(o, sub, outer);
            continue;
        }
        if !o.contains_key(f.name) && is_required(f, m, outer) {
            o.insert(f.name.to_string(), zero(f));
        }
        let Some(v) = o.get_mut(f.name) else {
            continue;
        };
        match (f.card, f.ty, v) {
            (Card::One, Ty::Msg(sub), Value::Object(child)) => fill_msg(child, sub, sub),
            (Card::Repeated, Ty::Msg(sub), Value::Array(items)) => {
                for item in items {
                    if let Value::Object(child) = item {
                        fill_msg(child, sub, sub);
                    }
                }
            }
            (Card::Map(_), Ty::Msg(sub), Value::Object(entries)) => {
                for item in entries.values_mut() {
                    if let Value::Object(child) = item {
                        fill_msg(child, sub, sub);
                    }
                }
            }
            (_, Ty::RawJson, v) => fill_required(v),
            _ => {}
        }
    }
}

/// Go's zero value of a field, as its JSON encoder writes it (a nil slice or map is written
/// empty rather than `null`, which typed clients read more easily and mean the same).
fn zero(f: &Field) -> Value {
    match f.card {
        Card::Repeated => return Value::Array(Vec::new()),
        Card::Map(_) => return Value::Object(Map::new()),
        Card::One | Card::Inline => {}
    }
    match f.ty {
        Ty::Str | Ty::Bytes => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        Ty::I32 | Ty::I64 | Ty::IntOrString => Value::from(0),
        Ty::F64 => Value::from(0.0),
        Ty::Quantity => Value::String("0".into()),
        Ty::Duration => Value::String("0s".into()),
        // `metav1.Verbs` is a `[]string` in Go: a message only in proto.
        Ty::Msg(sub) if std::ptr::eq(sub, &META_V1_VERBS) => Value::Array(Vec::new()),
        Ty::Msg(sub) => {
            let mut o = Map::new();
            fill_msg(&mut o, sub, sub);
            Value::Object(o)
        }
        // A zero `metav1.Time` marshals as `null`, and so does an empty RawExtension.
        Ty::Time | Ty::MicroTime | Ty::RawJson => Value::Null,
        Ty::StringList => Value::Array(Vec::new()),
    }
}

/// How to write a value.
#[derive(Clone, Copy)]
enum Hint {
    /// Unknown: find out from its `kind` and `apiVersion` (a top-level object, a list, a
    /// Table, an object embedded in a RawExtension) or write it as is.
    Any,
    /// An object of this message.
    Msg(&'static Message),
    /// An array whose items are objects of this message.
    Items(&'static Message),
    /// An object whose values are objects of this message.
    Values(&'static Message),
    /// An array whose items are [`Hint::Any`].
    AnyItems,
    /// A Table row: `cells`, `conditions`, `object`.
    TableRow,
    /// An array of Table rows.
    Rows,
    /// As it is.
    Plain,
}

struct Ordered<'a> {
    v: &'a Value,
    hint: Hint,
}

/// The `Hint` of a field's value.
fn field_hint(f: &Field) -> Hint {
    match (f.card, f.ty) {
        (Card::One | Card::Inline, Ty::Msg(m)) => Hint::Msg(m),
        (Card::Repeated, Ty::Msg(m)) => Hint::Items(m),
        (Card::Map(_), Ty::Msg(m)) => Hint::Values(m),
        (Card::One, Ty::RawJson) => Hint::Any,
        (Card::Repeated, Ty::RawJson) => Hint::AnyItems,
        _ => Hint::Plain,
    }
}

/// A field absent from the object but required: written as its zero value.
struct Zero<'a>(&'a Field);

impl Serialize for Zero<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        match (f.card, f.ty) {
            (Card::One, Ty::Msg(m)) if !std::ptr::eq(m, &META_V1_VERBS) => {
                let empty = Map::new();
                write_msg(s, &empty, m)
            }
            _ => zero(f).serialize(s),
        }
    }
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.hint, self.v) {
            (Hint::Msg(m), Value::Object(o)) => write_msg(s, o, m),
            (Hint::Items(m), Value::Array(items)) => write_seq(s, items, Hint::Msg(m)),
            (Hint::AnyItems, Value::Array(items)) => write_seq(s, items, Hint::Any),
            (Hint::Rows, Value::Array(items)) => write_seq(s, items, Hint::TableRow),
            (Hint::Values(m), Value::Object(o)) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    map.serialize_entry(
                        k,
                        &Ordered {
                            v,
                            hint: Hint::Msg(m),
                        },
                    )?;
                }
                map.end()
            }
            (Hint::TableRow, Value::Object(o)) => {
                write_keys(s, o, &["cells", "conditions", "object"], |k| {
                    if k == "object" {
                        Hint::Any
                    } else {
                        Hint::Plain
                    }
                })
            }
            (Hint::Any, Value::Object(o)) => write_any(s, o),
            (_, v) => v.serialize(s),
        }
    }
}

fn write_seq<S: Serializer>(s: S, items: &[Value], hint: Hint) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for v in items {
        seq.serialize_element(&Ordered { v, hint })?;
    }
    seq.end()
}

/// An object known only by its `kind`/`apiVersion`, if it has them.
fn write_any<S: Serializer>(s: S, o: &Map<String, Value>) -> Result<S::Ok, S::Error> {
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() || api_version.is_empty() {
        return o.serialize(s);
    }
    if let Some(m) = kind_message(api_version, kind) {
        return write_msg(s, o, m);
    }
    if kind == "Table" && api_version == "meta.k8s.io/v1" {
        // metav1.Table: TypeMeta, ListMeta, ColumnDefinitions, Rows.
        return write_keys(
            s,
            o,
            &[
                "kind",
                "apiVersion",
                "metadata",
                "columnDefinitions",
                "rows",
            ],
            |k| match k {
                "metadata" => Hint::Msg(&META_V1_LIST_META),
                "rows" => Hint::Rows,
                // TableColumnDefinition: name, type, format, description, priority.
                "columnDefinitions" => Hint::Items(&TABLE_COLUMN),
                _ => Hint::Plain,
            },
        );
    }
    if let Some(item_kind) = kind.strip_suffix("List")
        && o.contains_key("items")
    {
        // A list: TypeMeta, ListMeta, Items.
        let items = match kind_message(api_version, item_kind) {
            Some(m) => Hint::Items(m),
            None => Hint::AnyItems,
        };
        return write_keys(
            s,
            o,
            &["kind", "apiVersion", "metadata", "items"],
            |k| match k {
                "metadata" => Hint::Msg(&META_V1_LIST_META),
                "items" => items,
                _ => Hint::Plain,
            },
        );
    }
    o.serialize(s)
}

/// `metav1.TableColumnDefinition`: the Table types are no protobuf messages, so they are not in
/// the generated table.
static TABLE_COLUMN: Message = Message {
    name: "meta.v1.TableColumnDefinition",
    fields: &[
        Field::new(1, "name", Card::One, Ty::Str),
        Field::new(2, "type", Card::One, Ty::Str),
        Field::new(3, "format", Card::One, Ty::Str),
        Field::new(4, "description", Card::One, Ty::Str),
        Field::new(5, "priority", Card::One, Ty::I32),
    ],
    required: &["name", "type", "format", "description", "priority"],
};

/// An object with a fixed key order and a hint per key; other keys follow, sorted.
fn write_keys<S: Serializer>(
    s: S,
    o: &Map<String, Value>,
    order: &[&str],
    hint: impl Fn(&str) -> Hint,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(o.len()))?;
    let mut written = 0;
    for key in order {
        if let Some(v) = o.get(*key) {
            map.serialize_entry(key, &Ordered { v, hint: hint(key) })?;
            written += 1;
        }
    }
    if written < o.len() {
        for (k, v) in o {
            if !order.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
    }
    map.end()
}

/// Whether `key` is a field of `m` (or of a message it inlines).
fn has_field(m: &Message, key: &str) -> bool {
    m.fields.iter().any(|f| match (f.card, f.ty) {
        (Card::Inline, Ty::Msg(sub)) => has_field(sub, key),
        _ => f.name == key,
    })
}

/// Whether `key` is Go's inlined TypeMeta of an object of `m` (top-level objects, list items)
/// rather than a field of `m` (`OwnerReference.kind`).
fn is_type_meta(m: &Message, key: &str) -> bool {
    (key == "kind" || key == "apiVersion") && !has_field(m, key)
}

/// An object of message `m`: `kind` and `apiVersion` first (Go's inlined TypeMeta), then the
/// fields in declaration order (required ones written as zero when absent), then keys the
/// schema does not know, sorted.
fn write_msg<S: Serializer>(
    s: S,
    o: &Map<String, Value>,
    m: &'static Message,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    let mut present = 0;
    for key in ["kind", "apiVersion"] {
        if let Some(v) = o.get(key)
            && is_type_meta(m, key)
        {
            map.serialize_entry(key, v)?;
            present += 1;
        }
    }
    present += write_fields(&mut map, o, m, m)?;
    if present < o.len() {
        for (k, v) in o {
            if !is_type_meta(m, k) && !has_field(m, k) {
                map.serialize_entry(k, v)?;
            }
        }
    }
    map.end()
}

/// The fields of `m` present in `o` (or required), in order; returns how many of `o`'s keys
/// were written.
fn write_fields<M: SerializeMap>(
    map: &mut M,
    o: &Map<String, Value>,
    m: &'static Message,
    outer: &'static Message,
) -> Result<usize, M::Error> {
    let mut present = 0;
    for f in m.fields {
        if let (Card::Inline, Ty::Msg(sub)) = (f.card, f.ty) {
            present += write_fields(map, o, sub, outer)?;
            continue;
        }
        match o.get(f.name) {
            Some(v) => {
                map.serialize_entry(
                    f.name,
                    &Ordered {
                        v,
                        hint: field_hint(f),
                    },
                )?;
                present += 1;
            }
            None if is_required(f, m, outer) => map.serialize_entry(f.name, &Zero(f))?,
            None => {}
        }
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: &Value) -> String {
        String::from_utf8(to_vec(v)).unwrap()
    }

    #[test]
    fn status_is_written_in_go_order() {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "m", "reason": "Conflict",
            "details": {"name": "x", "group": "apps", "kind": "deployments"}, "code": 409,
        });
        assert_eq!(
            text(&status),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"m","reason":"Conflict","details":{"name":"x","group":"apps","kind":"deployments"},"code":409}"#
        );
    }

    #[test]
    fn fields_follow_declaration_order_and_unknown_keys_come_last() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod", "zzz": 1, "aaa": 2,
            "metadata": {"name": "p", "labels": {"b": "1", "a": "2"}, "annotations": {}, "namespace": "d"},
            "spec": {"containers": [{"name": "c", "image": "i", "readinessProbe": {
                "periodSeconds": 1, "httpGet": {"port": 80, "path": "/"}}}], "volumes": []},
        });
        assert_eq!(
            text(&pod),
            concat!(
                r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"d","#,
                r#""labels":{"a":"2","b":"1"},"annotations":{}},"spec":{"volumes":[],"#,
                r#""containers":[{"name":"c","image":"i","readinessProbe":{"httpGet":{"path":"/","port":80},"#,
                r#""periodSeconds":1}}]},"aaa":2,"zzz":1}"#
            )
        );
    }

    #[test]
    fn required_fields_are_written_and_filled() {
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"}, "status": {}});
        let back: Value = serde_json::from_slice(&to_vec(&ds)).unwrap();
        for f in [
            "currentNumberScheduled",
            "numberMisscheduled",
            "desiredNumberScheduled",
            "numberReady",
        ] {
            assert_eq!(back["status"][f], 0, "{f}");
        }
        assert!(back["status"].get("numberAvailable").is_none());

        let mut slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s"}, "addressType": "IPv4", "ports": [{"port": 80}]});
        fill_required(&mut slice);
        assert_eq!(slice["endpoints"], json!([]));
        let mut rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "r"},
            "status": {"conditions": [{"type": "ReplicaFailure"}]}});
        fill_required(&mut rs);
        assert_eq!(rs["status"]["replicas"], 0);
        assert_eq!(rs["status"]["conditions"][0]["status"], "");
        // Kinds the table does not know are left alone.
        let mut other = json!({"apiVersion": "v1", "kind": "Unknown", "status": {}});
        fill_required(&mut other);
        assert_eq!(
            other,
            json!({"apiVersion": "v1", "kind": "Unknown", "status": {}})
        );
    }

    #[test]
    fn lists_tables_and_embedded_objects() {
        let list = json!({"kind": "ConfigMapList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "5", "continue": "c"},
            "items": [{"metadata": {"name": "a"}, "data": {"k": "v"}, "kind": "ConfigMap", "apiVersion": "v1"}]});
        assert_eq!(
            text(&list),
            r#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"5","continue":"c"},"items":[{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"a"},"data":{"k":"v"}}]}"#
        );
        let table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "5"},
            "columnDefinitions": [{"name": "Name", "type": "string", "format": "name", "description": "d", "priority": 0}],
            "rows": [{"object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"uid": "u", "name": "a"}}, "cells": ["a"]}]});
        assert_eq!(
            text(&table),
            concat!(
                r#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"5"},"#,
                r#""columnDefinitions":[{"name":"Name","type":"string","format":"name","description":"d","priority":0}],"#,
                r#""rows":[{"cells":["a"],"object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","#,
                r#""metadata":{"name":"a","uid":"u"}}}]}"#
            )
        );
        let resources = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
            "resources": [{"name": "pods", "namespaced": true, "kind": "Pod", "singularName": "pod", "verbs": ["get"]}]});
        assert_eq!(
            text(&resources),
            concat!(
                r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"v1","resources":[{"name":"pods","#,
                r#""singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get"]}]}"#
            )
        );
        let no_verbs = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [{}]});
        let back: Value = serde_json::from_slice(&to_vec(&no_verbs)).unwrap();
        assert_eq!(back["resources"][0]["verbs"], json!([]));
        // Not objects of a known kind: as they are.
        let plain = json!({"b": 1, "a": [{"d": 1, "c": 2}]});
        assert_eq!(text(&plain), serde_json::to_string(&plain).unwrap());
    }

    /// Rough cost against plain serialization (run with `--ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_of_ordering() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "0b5e", "resourceVersion": "12",
                "creationTimestamp": "2024-01-01T00:00:00Z", "labels": {"app": "web", "pod-template-hash": "abc"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "main", "image": "kubia:v1", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent", "readinessProbe": {"httpGet": {"path": "/", "port": 8080, "scheme": "HTTP"},
                "periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}}],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "serviceAccount": "default", "nodeName": "n1", "securityContext": {},
                "schedulerName": "default-scheduler", "tolerations": [{"key": "node.kubernetes.io/not-ready",
                "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}], "priority": 0,
                "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2024-01-01T00:00:00Z"}], "hostIP": "10.0.0.1", "podIP": "10.1.0.2",
                "startTime": "2024-01-01T00:00:00Z", "qosClass": "BestEffort"},
        });
        let items: Vec<Value> = (0..1000).map(|_| pod.clone()).collect();
        let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
        let t = std::time::Instant::now();
        let plain = serde_json::to_vec(&list).unwrap();
        let plain_time = t.elapsed();
        let t = std::time::Instant::now();
        let ordered = to_vec(&list);
        let ordered_time = t.elapsed();
        println!(
            "1000 pods: plain {plain_time:?} ({} bytes), ordered {ordered_time:?} ({} bytes)",
            plain.len(),
            ordered.len()
        );
    }
}
