//! The resources this apiserver serves: lookups in the one table of them ([`RESOURCES`],
//! defined in [`crate::api_resources`], which the controllers read too), and the check for
//! fields a request has that the wire type does not know.

use serde_json::Value;

pub use crate::api_resources::{RESOURCES, ResourceInfo};

/// A resource that is only ever created and answered, never stored (kube's "review"
/// resources: `SelfSubjectReview`, and the access reviews of `authorization.k8s.io`).
#[derive(Debug)]
pub struct ReviewResource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
}

impl ReviewResource {
    pub const VERBS: &'static [&'static str] = &["create"];
}

/// The review resources served, in the groups discovery lists after those of [`RESOURCES`].
pub static REVIEWS: &[ReviewResource] = &[
    ReviewResource {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        namespaced: false,
    },
    // authorization.k8s.io/v1: the access reviews (`rbac::review`).
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "LocalSubjectAccessReview",
        plural: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        namespaced: true,
    },
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        namespaced: false,
    },
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectRulesReview",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        namespaced: false,
    },
    ReviewResource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        namespaced: false,
    },
];

pub fn lookup_review(group: &str, version: &str, plural: &str) -> Option<&'static ReviewResource> {
    REVIEWS
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The groups in the order discovery lists them (core first, as kube-apiserver does).
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    let all = RESOURCES
        .iter()
        .map(|r| (r.group, r.version))
        .chain(REVIEWS.iter().map(|r| (r.group, r.version)));
    for gv in all {
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// Paths of fields in `original` that the wire type does not know (present, non-null in the
/// request and gone after a round trip through the typed struct).
pub fn unknown_fields(original: &Value, normalized: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(original, normalized, String::new(), &mut out);
    out
}

fn walk_unknown(original: &Value, normalized: &Value, path: String, out: &mut Vec<String>) {
    match (original, normalized) {
        (Value::Object(o), Value::Object(n)) => {
            for (k, v) in o {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match n.get(k) {
                    Some(nv) => walk_unknown(v, nv, child, out),
                    None if !v.is_null() => out.push(child),
                    None => {}
                }
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            for (i, (ov, nv)) in o.iter().zip(n.iter()).enumerate() {
                walk_unknown(ov, nv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_resource_round_trips_a_minimal_object() {
        for r in RESOURCES {
            let obj =
                json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}});
            let back = (r.normalize)(obj.clone()).unwrap_or_else(|e| panic!("{}: {e}", r.plural));
            assert_eq!(back["metadata"]["name"], "x", "{}", r.plural);
            assert_eq!(back["kind"], r.kind);
        }
    }

    #[test]
    fn unknown_fields_are_found_by_path() {
        let r = lookup("", "v1", "pods").unwrap();
        let obj = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","bogus":1},
            "spec":{"containers":[{"name":"a","image":"i","imagePullPolicyy":"x"}]}});
        let back = (r.normalize)(obj.clone()).unwrap();
        assert_eq!(
            unknown_fields(&obj, &back),
            vec!["metadata.bogus", "spec.containers[0].imagePullPolicyy"]
        );
    }

    #[test]
    fn wrong_types_are_rejected() {
        let r = lookup("", "v1", "pods").unwrap();
        let obj = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":7}});
        assert!((r.normalize)(obj).is_err());
    }

    #[test]
    fn keys_follow_the_kubernetes_layout() {
        let pods = lookup("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        let nodes = lookup("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/nodes/n1");
    }
}
