//! Label and field selectors with the grammar and semantics of k8s.io/apimachinery
//! (`pkg/labels`, `pkg/fields`), so `kubectl -l`/`--field-selector` and controllers' list
//! options select exactly what they would on kube-apiserver. Label selectors live in
//! [`skiff_common::labels`], shared with the controllers.

use std::fmt;

use serde_json::Value;

pub use skiff_common::labels::LabelSelector;

// ----- field selectors (fields/selector.go) -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldOp {
    /// `=` or `==`, which Go treats alike.
    Equals,
    NotEquals,
}

#[derive(Clone, Debug, PartialEq)]
struct FieldTerm {
    field: String,
    op: FieldOp,
    value: String,
}

/// A field selector (`metadata.name=x,spec.nodeName!=n`; operators =, ==, !=).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut parts = split_terms(s);
        // Go sorts the raw terms, which makes equal selectors compare equal.
        parts.sort_unstable();
        let mut terms = Vec::with_capacity(parts.len());
        // Whitespace is not trimmed: kube-apiserver rejects `metadata.name = x` as an
        // unknown field label `metadata.name `.
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((field, op, rhs)) = split_term(part) else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            terms.push(FieldTerm {
                field: field.to_string(),
                op,
                value: unescape_value(rhs)?,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Check every field is supported for this resource (plural), as kube-apiserver does.
    pub fn validate(&self, plural: &str) -> Result<(), String> {
        for t in &self.terms {
            if !field_supported(plural, &t.field) {
                return Err(format!("field label not supported: {}", t.field));
            }
        }
        Ok(())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let have = object_field(obj, &t.field);
            match t.op {
                FieldOp::Equals => have == t.value,
                FieldOp::NotEquals => have != t.value,
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// `Some(name)` when the selector pins metadata.name with = (lets the server read one key).
    pub fn exact_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == "metadata.name" && t.op == FieldOp::Equals)
            .map(|t| t.value.as_str())
    }
}

/// The canonical text form (Go `Selector.String()`), values escaped again.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match t.op {
                FieldOp::Equals => "=",
                FieldOp::NotEquals => "!=",
            };
            let value = t
                .value
                .replace('\\', "\\\\")
                .replace(',', "\\,")
                .replace('=', "\\=");
            write!(f, "{}{op}{value}", t.field)?;
        }
        Ok(())
    }
}

/// Split on commas not escaped by a backslash.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// The first operator from the left wins; `!=` and `==` are tried before `=` so the value
/// keeps no stray `=`.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (text, op) in [
            ("!=", FieldOp::NotEquals),
            ("==", FieldOp::Equals),
            ("=", FieldOp::Equals),
        ] {
            if let Some(value) = rest.strip_prefix(text) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    ));
                }
            }
            escaped = false;
        } else {
            match c {
                '\\' => escaped = true,
                ',' | '=' => {
                    return Err(format!(
                        "invalid field selector: unescaped character in value: {c:?}"
                    ));
                }
                _ => out.push(c),
            }
        }
    }
    if escaped {
        return Err("invalid field selector: invalid escape sequence: \\".into());
    }
    Ok(out)
}

/// Field labels kube-apiserver accepts per resource (its field label conversion funcs).
fn field_supported(plural: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let extra: &[&str] = match plural {
        "pods" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "events" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "nodes" => &["spec.unschedulable"],
        "secrets" => &["type"],
        "namespaces" => &["status.phase"],
        "replicasets" | "replicationcontrollers" => &["status.replicas"],
        "jobs" => &["status.successful"],
        _ => &[],
    };
    extra.contains(&field)
}

/// The string value of a selectable field of an object as kube-apiserver renders it (missing →
/// "" ; booleans "true"/"false"; numbers as decimal; `source` of an Event is source.component).
pub fn object_field(obj: &Value, path: &str) -> String {
    // Fields whose Go source is not a plain path, or a non-pointer Go field whose zero value
    // kube-apiserver still renders when the JSON omits it.
    let (path, missing) = match path {
        "source" => ("source.component", ""),
        // Jobs expose `status.succeeded` under this label.
        "status.successful" => ("status.succeeded", "0"),
        "status.replicas" => ("status.replicas", "0"),
        "spec.hostNetwork" | "spec.unschedulable" => (path, "false"),
        _ => (path, ""),
    };
    let mut cur = obj;
    for segment in path.split('.') {
        match cur.get(segment) {
            Some(next) => cur = next,
            None => return missing.to_string(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => missing.to_string(),
        Value::Array(_) | Value::Object(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::test_rng::Rng;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[test]
    fn field_selector_parse_and_match() {
        let f = FieldSelector::parse("metadata.name=web,spec.nodeName!=n1").unwrap();
        let pod = json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n2"}});
        assert!(f.matches(&pod));
        assert!(!f.matches(&json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n1"}})));
        assert_eq!(f.exact_name(), Some("web"));
        assert!(f.validate("pods").is_ok());
        assert_eq!(
            f.validate("services").unwrap_err(),
            "field label not supported: spec.nodeName"
        );
        assert_eq!(
            FieldSelector::parse("spec.nodeName==n2,metadata.name=web").unwrap(),
            FieldSelector::parse("metadata.name==web,spec.nodeName=n2").unwrap()
        );
        assert_eq!(f.to_string(), "metadata.name=web,spec.nodeName!=n1");
        assert_eq!(
            FieldSelector::parse("metadata.name!=web")
                .unwrap()
                .exact_name(),
            None
        );
    }

    #[test]
    fn field_selector_empty_and_escapes() {
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(FieldSelector::parse(",,").unwrap().is_empty());
        let f = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert_eq!(f.exact_name(), Some(r"a,b=c\d"));
        assert_eq!(f.to_string(), r"metadata.name=a\,b\=c\\d");
        for bad in [
            "metadata.name",
            "metadata.name=a=b",
            r"metadata.name=a\x",
            r"metadata.name=a\",
        ] {
            assert!(FieldSelector::parse(bad).is_err(), "{bad}");
        }
        // `==` leaves no `=` on the value; an empty value is allowed.
        assert_eq!(
            FieldSelector::parse("spec.nodeName==").unwrap(),
            FieldSelector::parse("spec.nodeName=").unwrap()
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .matches(&json!({"spec": {}}))
        );
        // Whitespace belongs to the field label, as on kube-apiserver.
        let spaced = FieldSelector::parse("metadata.name = x").unwrap();
        assert!(spaced.validate("pods").is_err());
    }

    #[test]
    fn field_validation_per_resource() {
        let ok = [
            ("pods", "status.phase"),
            ("pods", "spec.hostNetwork"),
            ("events", "involvedObject.uid"),
            ("events", "source"),
            ("nodes", "spec.unschedulable"),
            ("secrets", "type"),
            ("namespaces", "status.phase"),
            ("replicasets", "status.replicas"),
            ("jobs", "status.successful"),
            ("configmaps", "metadata.namespace"),
        ];
        for (plural, field) in ok {
            let f = FieldSelector::parse(&format!("{field}=x")).unwrap();
            assert!(f.validate(plural).is_ok(), "{plural} {field}");
        }
        for (plural, field) in [
            ("pods", "spec.foo"),
            ("nodes", "status.phase"),
            ("configmaps", "type"),
        ] {
            let f = FieldSelector::parse(&format!("{field}=x")).unwrap();
            assert_eq!(
                f.validate(plural).unwrap_err(),
                format!("field label not supported: {field}")
            );
        }
    }

    #[test]
    fn object_field_rendering() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
                         "spec": {"nodeName": "n1", "hostNetwork": true},
                         "status": {"phase": "Running"}});
        assert_eq!(object_field(&pod, "spec.hostNetwork"), "true");
        assert_eq!(object_field(&pod, "status.podIP"), "");
        assert_eq!(object_field(&pod, "metadata.namespace"), "ns");
        assert_eq!(
            object_field(&json!({"spec": {}}), "spec.hostNetwork"),
            "false"
        );
        assert_eq!(object_field(&json!({}), "spec.unschedulable"), "false");
        assert_eq!(
            object_field(&json!({"status": {"replicas": 3}}), "status.replicas"),
            "3"
        );
        assert_eq!(object_field(&json!({"status": {}}), "status.replicas"), "0");
        assert_eq!(
            object_field(&json!({"status": {"succeeded": 2}}), "status.successful"),
            "2"
        );
        assert_eq!(
            object_field(
                &json!({"source": {"component": "kubelet", "host": "n"}}),
                "source"
            ),
            "kubelet"
        );
        assert_eq!(object_field(&json!({"spec": {"x": [1]}}), "spec.x"), "");
        assert_eq!(object_field(&json!("scalar"), "spec.x"), "");

        let f = FieldSelector::parse("spec.hostNetwork=false").unwrap();
        assert!(f.matches(&json!({"spec": {}})));
        assert!(!f.matches(&pod));
        let f = FieldSelector::parse("spec.unschedulable!=true").unwrap();
        assert!(f.matches(&json!({"spec": {}})));
    }

    #[test]
    fn random_input_never_panics_and_canonical_form_round_trips() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let pieces = [
            "a", "b", "in", "notin", "=", "==", "!=", "!", "(", ")", ",", " ", ">", "<", "1", "-",
            "x.io/", "é", "\\", "\0", "/", ".", "_",
        ];
        let subject: BTreeMap<String, String> = [("a", "1"), ("b", ""), ("in", "notin")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let obj = json!({"metadata": {"name": "a", "labels": {"a": "1"}}});
        for i in 0..20_000 {
            let s: String = if i % 5 == 0 {
                let bytes: Vec<u8> = (0..rng.below(20)).map(|_| rng.next() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                (0..rng.below(10))
                    .map(|_| pieces[rng.below(pieces.len())])
                    .collect()
            };
            if let Ok(parsed) = LabelSelector::parse(&s) {
                let _ = parsed.matches(&subject);
                let _ = parsed.matches_object(&obj);
                let again = LabelSelector::parse(&parsed.to_string())
                    .unwrap_or_else(|e| panic!("{s:?} -> {parsed}: {e}"));
                assert_eq!(again, parsed, "{s:?}");
            }
            if let Ok(parsed) = FieldSelector::parse(&s) {
                let _ = parsed.matches(&obj);
                let _ = parsed.validate("pods");
                let _ = parsed.exact_name();
                let again = FieldSelector::parse(&parsed.to_string())
                    .unwrap_or_else(|e| panic!("{s:?} -> {parsed}: {e}"));
                assert_eq!(again.matches(&obj), parsed.matches(&obj), "{s:?}");
            }
            let _ = object_field(&obj, &s);
        }
    }
}
