//! Validation of the RBAC objects, as kube's `pkg/apis/rbac/validation`: names are path
//! segments, rules need verbs (and groups and resources, or non-resource URLs at the cluster
//! scope), a binding's roleRef is required, of a supported kind and immutable, subjects are
//! users, groups or service accounts.

use serde_json::{Map, Value, json};

use super::{is_dns1123_subdomain, required_msg};
use crate::apiserver::status::FieldCause;

/// The RBAC API group (also `apiserver::rbac::GROUP`; defined here so validation stays a leaf).
const GROUP: &str = "rbac.authorization.k8s.io";

/// kube's `IsValidPathSegmentName` (the name rule of every RBAC object).
pub fn path_segment_name_errors(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if name == "." || name == ".." {
        out.push(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            out.push(format!("may not contain '{bad}'"));
        }
    }
    out
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Validate an RBAC object for create (`old = None`) or update.
pub fn validate(plural: &str, obj: &Value, old: Option<&Value>, out: &mut Vec<FieldCause>) {
    match plural {
        "roles" => rules(obj, true, out),
        "clusterroles" => {
            rules(obj, false, out);
            let agg = &obj["aggregationRule"];
            if agg.is_object() && arr(&agg["clusterRoleSelectors"]).is_empty() {
                out.push(required_msg(
                    "aggregationRule.clusterRoleSelectors",
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                ));
            }
        }
        "rolebindings" => binding(obj, old, true, out),
        "clusterrolebindings" => binding(obj, old, false, out),
        _ => {}
    }
}

fn rules(obj: &Value, namespaced: bool, out: &mut Vec<FieldCause>) {
    for (i, rule) in arr(&obj["rules"]).iter().enumerate() {
        let path = format!("rules[{i}]");
        if arr(&rule["verbs"]).is_empty() {
            out.push(required_msg(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = &rule["nonResourceURLs"];
        if !arr(urls).is_empty() {
            let field = format!("{path}.nonResourceURLs");
            if namespaced {
                out.push(FieldCause::invalid(
                    &field,
                    &go_list(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            let resourceful = ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !arr(&rule[*k]).is_empty());
            if resourceful {
                out.push(FieldCause::invalid(
                    &field,
                    &go_list(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if arr(&rule["apiGroups"]).is_empty() {
            out.push(required_msg(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if arr(&rule["resources"]).is_empty() {
            out.push(required_msg(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// Go's `%v` of a string slice, the way kube shows an invalid list: `[a b]`.
fn go_list(v: &Value) -> Value {
    let items: Vec<&str> = arr(v).iter().map(str_of).collect();
    json!(format!("[{}]", items.join(" ")))
}

fn binding(obj: &Value, old: Option<&Value>, namespaced: bool, out: &mut Vec<FieldCause>) {
    let role = &obj["roleRef"];
    if str_of(&role["apiGroup"]) != GROUP {
        out.push(FieldCause::not_supported(
            "roleRef.apiGroup",
            &role["apiGroup"],
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&str_of(&role["kind"])) {
        out.push(FieldCause::not_supported(
            "roleRef.kind",
            &role["kind"],
            kinds,
        ));
    }
    let name = str_of(&role["name"]);
    if name.is_empty() {
        out.push(FieldCause::required("roleRef.name"));
    }
    for e in path_segment_name_errors(name) {
        out.push(FieldCause::invalid("roleRef.name", &role["name"], e));
    }
    for (i, s) in arr(&obj["subjects"]).iter().enumerate() {
        subject(s, namespaced, &format!("subjects[{i}]"), out);
    }
    if let Some(old) = old
        && old["roleRef"] != *role
    {
        let shown = format!(
            "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
            str_of(&role["apiGroup"]),
            str_of(&role["kind"]),
            name
        );
        out.push(FieldCause {
            reason: "FieldValueInvalid",
            field: "roleRef".into(),
            message: format!("Invalid value: {shown}: cannot change roleRef"),
        });
    }
}

/// kube's `ValidateRoleBindingSubject`.
fn subject(s: &Value, namespaced: bool, path: &str, out: &mut Vec<FieldCause>) {
    let name = str_of(&s["name"]);
    if name.is_empty() {
        out.push(FieldCause::required(format!("{path}.name")));
    }
    let group = &s["apiGroup"];
    match str_of(&s["kind"]) {
        "ServiceAccount" => {
            if !name.is_empty() && !is_dns1123_subdomain(name) {
                out.push(FieldCause::invalid(format!("{path}.name"), &s["name"], "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
            }
            if !str_of(group).is_empty() {
                out.push(FieldCause::not_supported(
                    format!("{path}.apiGroup"),
                    group,
                    &[""],
                ));
            }
            if !namespaced && str_of(&s["namespace"]).is_empty() {
                out.push(FieldCause::required(format!("{path}.namespace")));
            }
        }
        "User" | "Group" => {
            if str_of(group) != GROUP {
                out.push(FieldCause::not_supported(
                    format!("{path}.apiGroup"),
                    group,
                    &[GROUP],
                ));
            }
        }
        _ => out.push(FieldCause::not_supported(
            format!("{path}.kind"),
            &s["kind"],
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// kube's RBAC defaulting: a binding's `roleRef.apiGroup`, and a User's or Group's subject
/// `apiGroup`, default to `rbac.authorization.k8s.io`.
pub fn apply_defaults(obj: &mut Map<String, Value>) {
    if let Some(role) = obj.get_mut("roleRef").and_then(Value::as_object_mut)
        && role
            .get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
    {
        role.insert("apiGroup".into(), json!(GROUP));
    }
    let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) else {
        return;
    };
    for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
        let unset = s
            .get("apiGroup")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
        if unset && matches!(kind, "User" | "Group") {
            s.insert("apiGroup".into(), json!(GROUP));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(plural: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let mut out = Vec::new();
        validate(plural, &obj, old.as_ref(), &mut out);
        out.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_need_verbs_groups_and_resources() {
        let got = causes(
            "roles",
            json!({"rules": [{"resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]}),
            None,
        );
        assert_eq!(
            got,
            vec![
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[1].nonResourceURLs: Invalid value: \"[/x]\": namespaced rules cannot apply to non-resource URLs",
            ]
        );
        assert!(
            causes(
                "clusterroles",
                json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]}),
                None
            )
            .is_empty()
        );
    }

    #[test]
    fn bindings_check_role_ref_and_subjects() {
        let good = json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "foo"}]});
        assert!(causes("rolebindings", good.clone(), None).is_empty());
        let got = causes("clusterrolebindings", good.clone(), None);
        assert_eq!(
            got,
            vec!["roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""]
        );
        let mut changed = good.clone();
        changed["roleRef"]["name"] = json!("other");
        let got = causes("rolebindings", changed, Some(good));
        assert_eq!(
            got,
            vec![
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"other\"}: cannot change roleRef"
            ]
        );
        let bad = json!({"roleRef": {"apiGroup": "", "kind": "", "name": ""}, "subjects": [{"kind": "Robot", "name": "x"}]});
        assert_eq!(causes("rolebindings", bad, None).len(), 4);
    }

    #[test]
    fn defaults_fill_api_groups() {
        let mut b = json!({"roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s"}]});
        apply_defaults(b.as_object_mut().unwrap());
        assert_eq!(b["roleRef"]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][0]["apiGroup"], GROUP);
        assert!(b["subjects"][1].get("apiGroup").is_none());
    }
}
