//! A `LabelSelector` (matchLabels + matchExpressions) as the text of a `labelSelector=` list
//! option, as `metav1.LabelSelectorAsSelector(sel).String()` renders it.
//!
//! A selector that kube cannot convert (an operator it does not know, `In`/`NotIn` without
//! values, `Exists`/`DoesNotExist` with values) is an error, never a text that leaves the bad
//! requirement out: dropping a requirement would select more than the selector says.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a selector could not be converted; the text is kube-apiserver's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSelector(pub String);

impl fmt::Display for InvalidSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSelector {}

/// Go's `%#v` of a `[]string`, as `field.Invalid` prints the values.
fn go_strings(values: &[String]) -> String {
    if values.is_empty() {
        return "[]string(nil)".to_string();
    }
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

fn invalid_values(values: &[String], detail: &str) -> InvalidSelector {
    InvalidSelector(format!(
        "values: Invalid value: {}: {detail}",
        go_strings(values)
    ))
}

/// `app=web,tier in (a,b)`: requirements sorted by key and set values sorted, as kube prints
/// them. An empty selector is `""` (everything); the caller decides what a missing one means.
pub fn selector_string(sel: &LabelSelector) -> Result<String, InvalidSelector> {
    let mut reqs: Vec<(String, String)> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={v}")))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let key = &e.key;
        let rendered = match e.operator.as_str() {
            op @ ("In" | "NotIn") => {
                if values.is_empty() {
                    return Err(invalid_values(
                        values,
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
                let mut set: Vec<&str> = values.iter().map(String::as_str).collect();
                set.sort_unstable();
                set.dedup();
                let word = if op == "In" { "in" } else { "notin" };
                format!("{key} {word} ({})", set.join(","))
            }
            op @ ("Exists" | "DoesNotExist") => {
                if !values.is_empty() {
                    return Err(invalid_values(
                        values,
                        "values set must be empty for exists and does not exist",
                    ));
                }
                if op == "Exists" {
                    key.clone()
                } else {
                    format!("!{key}")
                }
            }
            other => {
                return Err(InvalidSelector(format!(
                    "{other:?} is not a valid label selector operator"
                )));
            }
        };
        reqs.push((key.clone(), rendered));
    }
    // Stable, so a key with several requirements keeps their order (as Go's sort.Stable).
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn expr(op: &str, values: Option<serde_json::Value>) -> LabelSelector {
        let mut e = json!({"key": "tier", "operator": op});
        if let Some(v) = values {
            e["values"] = v;
        }
        sel(json!({"matchLabels": {"app": "web"}, "matchExpressions": [e]}))
    }

    #[test]
    fn renders_like_kube() {
        let s = sel(json!({"matchLabels": {"app": "x"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                 {"key": "old", "operator": "DoesNotExist"},
                                 {"key": "env", "operator": "NotIn", "values": ["dev"]},
                                 {"key": "gpu", "operator": "Exists", "values": []}]}));
        assert_eq!(
            selector_string(&s).unwrap(),
            "app=x,env notin (dev),gpu,!old,tier in (a,b)"
        );
        assert_eq!(selector_string(&LabelSelector::default()).unwrap(), "");
    }

    #[test]
    fn unknown_operators_are_errors_not_wider_selectors() {
        let err = selector_string(&expr("Foo", Some(json!(["a"])))).unwrap_err();
        assert_eq!(err.0, r#""Foo" is not a valid label selector operator"#);
        // Node-affinity operators are not label-selector operators.
        for op in ["Gt", "Lt", "in", "Equals", ""] {
            assert!(
                selector_string(&expr(op, Some(json!(["1"])))).is_err(),
                "{op}"
            );
        }
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for op in ["In", "NotIn"] {
            for values in [None, Some(json!([]))] {
                let err = selector_string(&expr(op, values)).unwrap_err();
                assert_eq!(
                    err.0,
                    "values: Invalid value: []string(nil): for 'in', 'notin' operators, \
                     values set can't be empty"
                );
            }
        }
        for op in ["Exists", "DoesNotExist"] {
            let err = selector_string(&expr(op, Some(json!(["a", "b"])))).unwrap_err();
            assert_eq!(
                err.0,
                r#"values: Invalid value: []string{"a", "b"}: values set must be empty for exists and does not exist"#
            );
        }
    }
}
