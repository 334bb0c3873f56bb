//! `authorization.k8s.io/v1` access reviews, answered as kube-apiserver's REST storage for
//! them does: `SubjectAccessReview` (may this user do that?), `LocalSubjectAccessReview` (the
//! same within the URL's namespace), `SelfSubjectAccessReview` (may I? — `kubectl auth can-i`)
//! and `SelfSubjectRulesReview` (what may I do in this namespace? — `kubectl auth can-i
//! --list`). Nothing is stored: each answer is the posted review with its status filled in by
//! the same authorizer every request goes through.

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReviewSpec, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::authorizer::{Authorizer, Decision, go_aggregate};
use super::rules::Request;
use crate::apiserver::authn::UserInfo;
use crate::apiserver::status::{ApiError, ApiResult, FieldCause};

pub const GROUP: &str = "authorization.k8s.io";

/// What the reviews ask of the authorizer chain: a decision with its reason, and the rules a
/// user holds in a namespace (kube's `RuleResolver`). RBAC alone is one; the API server's
/// `Node,RBAC` chain is another.
pub trait AccessDecider {
    fn decide(&self, user: &UserInfo, request: &Request) -> Decision;
    /// The rules `user` holds in `namespace`, the errors met on the way, and whether the list
    /// is incomplete (an authorizer that cannot enumerate what it allows).
    fn rules_review(&self, user: &UserInfo, namespace: &str) -> RulesReview;
}

/// A [`AccessDecider::rules_review`] answer.
#[derive(Debug, Default)]
pub struct RulesReview {
    pub rules: Vec<PolicyRule>,
    pub errors: Vec<String>,
    pub incomplete: bool,
}

impl AccessDecider for Authorizer {
    fn decide(&self, user: &UserInfo, request: &Request) -> Decision {
        Authorizer::decide(self, user, request)
    }

    fn rules_review(&self, user: &UserInfo, namespace: &str) -> RulesReview {
        let (rules, errors) = self.index().rules_review(user, namespace);
        RulesReview {
            rules,
            errors,
            incomplete: false,
        }
    }
}
const API_VERSION: &str = "authorization.k8s.io/v1";

/// The answer to a posted review of `kind` from `user`; `namespace` is the URL's (only the
/// namespaced `LocalSubjectAccessReview` has one).
pub fn answer(
    authorizer: &dyn AccessDecider,
    kind: &str,
    user: &UserInfo,
    review: &Value,
    namespace: Option<&str>,
) -> ApiResult<Value> {
    check_kind(kind, review)?;
    match kind {
        "SubjectAccessReview" => subject_access_review(authorizer, review),
        "LocalSubjectAccessReview" => {
            local_subject_access_review(authorizer, review, namespace.unwrap_or(""))
        }
        "SelfSubjectAccessReview" => self_subject_access_review(authorizer, user, review),
        "SelfSubjectRulesReview" => self_subject_rules_review(authorizer, user, review),
        other => Err(ApiError::internal(format!(
            "no access review of kind {other:?}"
        ))),
    }
}

/// kube decodes the body into the endpoint's type: another kind or version cannot be.
fn check_kind(kind: &str, review: &Value) -> ApiResult<()> {
    let posted_kind = review.get("kind").and_then(Value::as_str).unwrap_or(kind);
    let posted_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or(API_VERSION);
    if posted_kind == kind && posted_version == API_VERSION {
        return Ok(());
    }
    let version = posted_version.rsplit('/').next().unwrap_or(posted_version);
    Err(ApiError::bad_request(format!(
        "{posted_kind} in version {version:?} cannot be handled as a {kind}: converting ({version}.{posted_kind}) to (authorization.{kind}): unknown conversion"
    )))
}

/// A typed part of the body (`spec`), absent or null read as its zero value, as Go decodes it.
fn decode<T: DeserializeOwned + Default>(kind: &str, part: Option<&Value>) -> ApiResult<T> {
    match part {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            ApiError::bad_request(format!(
                "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
            ))
        }),
    }
}

/// 422 as kube's `NewInvalid` for a review: the qualified kind, an empty name (left out of
/// the details).
fn invalid(kind: &str, causes: Vec<FieldCause>) -> ApiError {
    let mut e = ApiError::invalid(GROUP, kind, "", causes);
    e.message = e.message.replacen(kind, &format!("{kind}.{GROUP}"), 1);
    if let Some(details) = e.details.as_mut().and_then(Value::as_object_mut) {
        details.remove("name");
    }
    e
}

fn invalid_value(field: &str, value: &Value, detail: &str) -> FieldCause {
    FieldCause::invalid(field, value, detail)
}

/// Whether a JSON value is Go's zero value (what `Semantic.DeepEqual` against an empty
/// `ObjectMeta` accepts: nil and empty maps and lists alike).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

/// The posted metadata without the fields kube ignores in its "must be empty" checks.
fn metadata_beyond(review: &Value, ignored: &[&str]) -> Value {
    let mut meta = review.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
        for key in ignored {
            m.remove(*key);
        }
    }
    meta
}

/// Go's `%#v` of the internal `NonResourceAttributes`, as kube shows it in an Invalid value.
fn go_non_resource(attrs: &NonResourceAttributes) -> Value {
    Value::String(format!(
        "authorization.NonResourceAttributes{{Path:{:?}, Verb:{:?}}}",
        attrs.path.as_deref().unwrap_or(""),
        attrs.verb.as_deref().unwrap_or("")
    ))
}

/// The first check of kube's `ValidateSelfSubjectAccessReviewSpec`: exactly one kind of
/// attributes.
fn validate_one_kind(
    resource: Option<&ResourceAttributes>,
    non_resource: Option<&NonResourceAttributes>,
) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    match (resource, non_resource) {
        (Some(_), Some(n)) => causes.push(invalid_value(
            "spec.nonResourceAttributes",
            &go_non_resource(n),
            "cannot be specified in combination with resourceAttributes",
        )),
        (None, None) => causes.push(invalid_value(
            "spec.resourceAttributes",
            &json!("null"),
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        _ => {}
    }
    causes
}

/// kube's `validateResourceAttributes`: a field or label selector carries a raw selector or
/// requirements, not both.
fn validate_selectors(resource: Option<&ResourceAttributes>) -> Vec<FieldCause> {
    let Some(r) = resource else {
        return Vec::new();
    };
    let field = r.field_selector.as_ref().map(|s| {
        (
            s.raw_selector.as_deref(),
            s.requirements.as_ref().map(Vec::len),
        )
    });
    let label = r.label_selector.as_ref().map(|s| {
        (
            s.raw_selector.as_deref(),
            s.requirements.as_ref().map(Vec::len),
        )
    });
    let mut causes = Vec::new();
    for (path, selector) in [("fieldSelector", field), ("labelSelector", label)] {
        let Some((raw, requirements)) = selector else {
            continue;
        };
        let path = format!("spec.resourceAttributes.{path}");
        let raw = raw.unwrap_or("");
        let requirements = requirements.unwrap_or(0);
        if !raw.is_empty() && requirements > 0 {
            causes.push(invalid_value(
                &format!("{path}.rawSelector"),
                &json!(raw),
                "may not specified at the same time as requirements",
            ));
        }
        if raw.is_empty() && requirements == 0 {
            causes.push(FieldCause {
                reason: "FieldValueRequired",
                field: format!("{path}.requirements"),
                message: format!(
                    "Required value: when {path} is specified, requirements or rawSelector is required"
                ),
            });
        }
    }
    causes
}

/// kube's `ValidateSubjectAccessReviewSpec`: one kind of attributes, a subject, selectors.
fn validate_subject_spec(spec: &SubjectAccessReviewSpec) -> Vec<FieldCause> {
    let resource = spec.resource_attributes.as_ref();
    let mut causes = validate_one_kind(resource, spec.non_resource_attributes.as_ref());
    let user = spec.user.as_deref().unwrap_or("");
    if user.is_empty() && spec.groups.as_ref().is_none_or(Vec::is_empty) {
        causes.push(invalid_value(
            "spec.user",
            &json!(user),
            "at least one of user or group must be specified",
        ));
    }
    causes.extend(validate_selectors(resource));
    causes
}

/// kube's `ValidateSelfSubjectAccessReviewSpec`.
fn validate_self_spec(spec: &SelfSubjectAccessReviewSpec) -> Vec<FieldCause> {
    let resource = spec.resource_attributes.as_ref();
    let mut causes = validate_one_kind(resource, spec.non_resource_attributes.as_ref());
    causes.extend(validate_selectors(resource));
    causes
}

/// The metadata check of a cluster-scoped review: nothing but managed fields.
fn validate_empty_metadata(review: &Value, causes: &mut Vec<FieldCause>) {
    let meta = metadata_beyond(review, &["namespace"]);
    if !is_zero(&meta) {
        causes.push(invalid_value("metadata", &meta, "must be empty"));
    }
}

/// kube's `ResourceAttributesFrom` / `NonResourceAttributesFrom`.
fn request_of(
    resource: Option<&ResourceAttributes>,
    non_resource: Option<&NonResourceAttributes>,
) -> Request {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    match (resource, non_resource) {
        (Some(r), _) => Request::Resource {
            verb: s(&r.verb),
            group: s(&r.group),
            resource: s(&r.resource),
            subresource: s(&r.subresource),
            name: s(&r.name),
            namespace: s(&r.namespace),
        },
        (None, Some(n)) => Request::NonResource {
            verb: s(&n.verb),
            path: s(&n.path),
        },
        // Validation has refused a spec with neither.
        (None, None) => Request::NonResource {
            verb: String::new(),
            path: String::new(),
        },
    }
}

/// `SubjectAccessReviewStatus`: `denied`, `reason` and `evaluationError` are `omitempty`.
fn access_status(decision: &Decision) -> Value {
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    status
}

/// A spec as kube writes it back: its empty strings left out (every string of these specs
/// is `omitempty`).
fn spec_json<T: serde::Serialize>(spec: &T) -> Value {
    fn strip(v: &mut Value) {
        if let Value::Object(o) = v {
            o.retain(|_, v| !matches!(v, Value::String(s) if s.is_empty()));
            o.values_mut().for_each(strip);
        }
    }
    let mut v = serde_json::to_value(spec).unwrap_or(json!({}));
    strip(&mut v);
    v
}

fn reviewed(kind: &str, metadata: Value, spec: Value, status: Value) -> Value {
    json!({
        "kind": kind,
        "apiVersion": API_VERSION,
        "metadata": metadata,
        "spec": spec,
        "status": status,
    })
}

/// The user a SubjectAccessReview asks about (kube does not add `system:authenticated`).
fn subject_of(spec: &SubjectAccessReviewSpec) -> UserInfo {
    UserInfo {
        name: spec.user.clone().unwrap_or_default(),
        uid: spec.uid.clone().unwrap_or_default(),
        groups: spec.groups.clone().unwrap_or_default(),
        extra: spec.extra.clone().unwrap_or_default(),
    }
}

fn subject_access_review(authorizer: &dyn AccessDecider, review: &Value) -> ApiResult<Value> {
    const KIND: &str = "SubjectAccessReview";
    let spec: SubjectAccessReviewSpec = decode(KIND, review.get("spec"))?;
    let mut causes = validate_subject_spec(&spec);
    validate_empty_metadata(review, &mut causes);
    ensure_valid(KIND, causes)?;
    // A cluster-scoped object: a namespace the client set is cleared, as kube does.
    let question = Question {
        kind: KIND,
        resource: spec.resource_attributes.as_ref(),
        non_resource: spec.non_resource_attributes.as_ref(),
        metadata: review_metadata(review, None),
    };
    Ok(question.answer(authorizer, &subject_of(&spec), &spec))
}

/// A validated access review: what it asks, and the metadata its answer carries.
struct Question<'a> {
    kind: &'a str,
    resource: Option<&'a ResourceAttributes>,
    non_resource: Option<&'a NonResourceAttributes>,
    metadata: Value,
}

impl Question<'_> {
    /// The posted review with `status` filled by the authorizer's decision for `subject`.
    fn answer<S: serde::Serialize>(
        self,
        authorizer: &dyn AccessDecider,
        subject: &UserInfo,
        spec: &S,
    ) -> Value {
        let decision = authorizer.decide(subject, &request_of(self.resource, self.non_resource));
        reviewed(
            self.kind,
            self.metadata,
            spec_json(spec),
            access_status(&decision),
        )
    }
}

fn ensure_valid(kind: &str, causes: Vec<FieldCause>) -> ApiResult<()> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(kind, causes))
    }
}

/// The posted metadata with its namespace set as kube's create handler leaves it.
fn review_metadata(review: &Value, namespace: Option<&str>) -> Value {
    let mut meta = review.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(m) = meta.as_object_mut() {
        match namespace {
            Some(ns) => m.insert("namespace".into(), json!(ns)),
            None => m.remove("namespace"),
        };
    } else {
        meta = json!({});
    }
    meta
}

fn local_subject_access_review(
    authorizer: &dyn AccessDecider,
    review: &Value,
    url_namespace: &str,
) -> ApiResult<Value> {
    const KIND: &str = "LocalSubjectAccessReview";
    // kube's create handler: the object's namespace defaults to the URL's and may not differ.
    let posted = review
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !posted.is_empty() && posted != url_namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let spec: SubjectAccessReviewSpec = decode(KIND, review.get("spec"))?;
    let mut causes = validate_subject_spec(&spec);
    let meta = metadata_beyond(review, &["namespace"]);
    if !is_zero(&meta) {
        causes.push(invalid_value(
            "metadata",
            &meta,
            "must be empty except for namespace",
        ));
    }
    if let Some(r) = &spec.resource_attributes {
        let ns = r.namespace.as_deref().unwrap_or("");
        if ns != url_namespace {
            causes.push(invalid_value(
                "spec.resourceAttributes.namespace",
                &json!(ns),
                "must match metadata.namespace",
            ));
        }
    }
    if let Some(n) = &spec.non_resource_attributes {
        causes.push(invalid_value(
            "spec.nonResourceAttributes",
            &go_non_resource(n),
            "disallowed on this kind of request",
        ));
    }
    ensure_valid(KIND, causes)?;
    let question = Question {
        kind: KIND,
        resource: spec.resource_attributes.as_ref(),
        non_resource: None,
        metadata: review_metadata(review, Some(url_namespace)),
    };
    Ok(question.answer(authorizer, &subject_of(&spec), &spec))
}

fn self_subject_access_review(
    authorizer: &dyn AccessDecider,
    user: &UserInfo,
    review: &Value,
) -> ApiResult<Value> {
    const KIND: &str = "SelfSubjectAccessReview";
    let spec: SelfSubjectAccessReviewSpec = decode(KIND, review.get("spec"))?;
    let mut causes = validate_self_spec(&spec);
    validate_empty_metadata(review, &mut causes);
    ensure_valid(KIND, causes)?;
    let question = Question {
        kind: KIND,
        resource: spec.resource_attributes.as_ref(),
        non_resource: spec.non_resource_attributes.as_ref(),
        metadata: review_metadata(review, None),
    };
    Ok(question.answer(authorizer, user, &spec))
}

fn self_subject_rules_review(
    authorizer: &dyn AccessDecider,
    user: &UserInfo,
    review: &Value,
) -> ApiResult<Value> {
    const KIND: &str = "SelfSubjectRulesReview";
    let spec: k8s_openapi::api::authorization::v1::SelfSubjectRulesReviewSpec =
        decode(KIND, review.get("spec"))?;
    let namespace = spec.namespace.as_deref().unwrap_or("");
    if namespace.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let review = authorizer.rules_review(user, namespace);
    // kube answers with a new object: no metadata or spec of the posted one.
    Ok(reviewed(KIND, json!({}), json!({}), rules_status(&review)))
}

/// `SubjectRulesReviewStatus` from the rules a user holds, as kube's RBAC `RulesFor` splits
/// them: a rule naming resources is a resource rule, one naming URLs a non-resource rule.
/// RBAC enumerates everything it grants, so its list is never incomplete; roles that do not
/// resolve are reported as the evaluation error.
pub fn rules_status(review: &RulesReview) -> Value {
    let (rules, errors) = (&review.rules, &review.errors);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    for rule in rules {
        let resources = list(&rule.resources);
        if !resources.is_empty() {
            let mut r = json!({"verbs": rule.verbs});
            for (key, values) in [
                ("apiGroups", list(&rule.api_groups)),
                ("resources", resources),
                ("resourceNames", list(&rule.resource_names)),
            ] {
                if !values.is_empty() {
                    r[key] = json!(values);
                }
            }
            resource_rules.push(r);
        }
        let urls = list(&rule.non_resource_urls);
        if !urls.is_empty() {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": review.incomplete,
    });
    if !errors.is_empty() {
        let errors: Vec<&str> = errors.iter().map(String::as_str).collect();
        status["evaluationError"] = json!(go_aggregate(&errors));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::embedded::EmbeddedStore;
    use std::sync::Arc;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        }
    }

    fn binding(role_kind: &str, role: &str, subjects: Value) -> Value {
        json!({"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects})
    }

    /// An authorizer over a store holding: Role foo/service-reader (get, list services) bound
    /// to the service account foo:default; ClusterRole pod-reader (pods, pods/log) bound to
    /// group devs everywhere; ClusterRole health (GET /healthz) bound to alice; a RoleBinding
    /// in foo to a ClusterRole that does not exist.
    async fn authorizer(dir: &tempfile::TempDir) -> Authorizer {
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let objects = [
            (
                "/registry/roles/foo/service-reader",
                json!({"rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]}]}),
            ),
            (
                "/registry/clusterroles/pod-reader",
                json!({"rules": [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"],
                    "resourceNames": ["web"]}]}),
            ),
            (
                "/registry/clusterroles/health",
                json!({"rules": [{"nonResourceURLs": ["/healthz", "/livez"], "verbs": ["get"]}]}),
            ),
            (
                "/registry/rolebindings/foo/test",
                binding(
                    "Role",
                    "service-reader",
                    json!([{"kind": "ServiceAccount", "name": "default", "namespace": "foo"}]),
                ),
            ),
            (
                "/registry/rolebindings/foo/dangling",
                binding(
                    "ClusterRole",
                    "gone",
                    json!([{"kind": "ServiceAccount", "name": "default"}]),
                ),
            ),
            (
                "/registry/clusterrolebindings/devs",
                binding(
                    "ClusterRole",
                    "pod-reader",
                    json!([{"kind": "Group", "name": "devs"}]),
                ),
            ),
            (
                "/registry/clusterrolebindings/alice-health",
                binding(
                    "ClusterRole",
                    "health",
                    json!([{"kind": "User", "name": "alice"}]),
                ),
            ),
        ];
        for (key, value) in objects {
            store
                .create(key, serde_json::to_vec(&value).unwrap())
                .await
                .unwrap();
        }
        Authorizer::load(store).await.unwrap()
    }

    fn ssar(attributes: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": "SelfSubjectAccessReview",
            "metadata": {"creationTimestamp": null}, "spec": attributes})
    }

    fn list_services(ns: &str) -> Value {
        json!({"resourceAttributes": {"namespace": ns, "verb": "list", "resource": "services"}})
    }

    #[tokio::test]
    async fn self_reviews_answer_with_rbac_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let a = authorizer(&dir).await;
        let sa = user(
            "system:serviceaccount:foo:default",
            &["system:serviceaccounts", "system:authenticated"],
        );
        let kind = "SelfSubjectAccessReview";
        let out = answer(&a, kind, &sa, &ssar(list_services("foo")), None).unwrap();
        assert_eq!(
            out["status"],
            json!({"allowed": true, "reason": r#"RBAC: allowed by RoleBinding "test/foo" of Role "service-reader" to ServiceAccount "default/foo""#})
        );
        assert_eq!(out["spec"], list_services("foo"));
        // Elsewhere the dangling binding in foo does not apply: a plain "no".
        let out = answer(&a, kind, &sa, &ssar(list_services("bar")), None).unwrap();
        assert_eq!(out["status"], json!({"allowed": false}));
        // In foo a denial names the role that does not resolve, as kube's RBAC does.
        let watch = json!({"resourceAttributes": {"namespace": "foo", "verb": "watch", "resource": "services"}});
        let out = answer(&a, kind, &sa, &ssar(watch), None).unwrap();
        assert_eq!(
            out["status"],
            json!({"allowed": false, "reason": r#"RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found"#})
        );
        // Subresources and resource names, through a ClusterRoleBinding.
        let dev = user("bob", &["devs"]);
        let log = |name: &str| {
            ssar(
                json!({"resourceAttributes": {"namespace": "x", "verb": "get", "resource": "pods",
                "subresource": "log", "name": name}}),
            )
        };
        let out = answer(&a, kind, &dev, &log("web"), None).unwrap();
        assert_eq!(
            out["status"]["reason"],
            r#"RBAC: allowed by ClusterRoleBinding "devs" of ClusterRole "pod-reader" to Group "devs""#
        );
        assert_eq!(
            answer(&a, kind, &dev, &log("db"), None).unwrap()["status"]["allowed"],
            false
        );
        // Non-resource URLs.
        let health = ssar(json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}}));
        let alice = user("alice", &[]);
        assert_eq!(
            answer(&a, kind, &alice, &health, None).unwrap()["status"]["allowed"],
            true
        );
        assert_eq!(
            answer(&a, kind, &dev, &health, None).unwrap()["status"]["allowed"],
            false
        );
        // system:masters: allowed by the privileged-group authorizer, which gives no reason.
        let admin = user("admin", &["system:masters"]);
        let out = answer(&a, kind, &admin, &ssar(list_services("bar")), None).unwrap();
        assert_eq!(out["status"], json!({"allowed": true}));
    }

    #[tokio::test]
    async fn subject_reviews_ask_about_the_named_user() {
        let dir = tempfile::tempdir().unwrap();
        let a = authorizer(&dir).await;
        let admin = user("admin", &["system:masters"]);
        let sar = |spec: Value| json!({"kind": "SubjectAccessReview", "apiVersion": API_VERSION, "spec": spec});
        let mut spec = list_services("foo");
        spec["user"] = json!("system:serviceaccount:foo:default");
        let out = answer(&a, "SubjectAccessReview", &admin, &sar(spec.clone()), None).unwrap();
        assert_eq!(out["status"]["allowed"], true);
        assert_eq!(out["spec"]["user"], "system:serviceaccount:foo:default");
        // The subject's groups are as given: no system:authenticated is added.
        let groups = json!({"groups": ["devs"], "resourceAttributes":
            {"namespace": "x", "verb": "get", "resource": "pods", "subresource": "log", "name": "web"}});
        let out = answer(&a, "SubjectAccessReview", &admin, &sar(groups), None).unwrap();
        assert_eq!(out["status"]["allowed"], true);

        // The local review checks within the URL's namespace only.
        let local = |ns: Option<&str>, spec: Value| {
            let mut r = json!({"kind": "LocalSubjectAccessReview", "apiVersion": API_VERSION, "spec": spec});
            if let Some(ns) = ns {
                r["metadata"] = json!({"namespace": ns});
            }
            r
        };
        let kind = "LocalSubjectAccessReview";
        let out = answer(&a, kind, &admin, &local(None, spec.clone()), Some("foo")).unwrap();
        assert_eq!(out["status"]["allowed"], true);
        assert_eq!(out["metadata"]["namespace"], "foo");
        let err = answer(
            &a,
            kind,
            &admin,
            &local(Some("bar"), spec.clone()),
            Some("foo"),
        )
        .unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert_eq!(
            err.message,
            "the namespace of the provided object does not match the namespace sent on the request"
        );
        let err = answer(&a, kind, &admin, &local(None, spec), Some("bar")).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            r#"LocalSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes.namespace: Invalid value: "foo": must match metadata.namespace"#
        );
    }

    #[tokio::test]
    async fn malformed_reviews_get_kubes_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = authorizer(&dir).await;
        let admin = user("admin", &["system:masters"]);
        let sar = |spec: Value| json!({"kind": "SubjectAccessReview", "apiVersion": API_VERSION, "spec": spec});
        let err = answer(&a, "SubjectAccessReview", &admin, &sar(json!({})), None).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert_eq!(
            err.message,
            r#"SubjectAccessReview.authorization.k8s.io "" is invalid: [spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified, spec.user: Invalid value: "": at least one of user or group must be specified]"#
        );
        let details = err.details.unwrap();
        assert_eq!(details["kind"], "SubjectAccessReview");
        assert_eq!(details["group"], "authorization.k8s.io");
        assert!(details.get("name").is_none());
        assert_eq!(details["causes"][1]["field"], "spec.user");
        let both = json!({"user": "u", "resourceAttributes": {"verb": "get"},
            "nonResourceAttributes": {"path": "/healthz", "verb": "get"}});
        let err = answer(&a, "SubjectAccessReview", &admin, &sar(both), None).unwrap_err();
        assert_eq!(
            err.message,
            r#"SubjectAccessReview.authorization.k8s.io "" is invalid: spec.nonResourceAttributes: Invalid value: "authorization.NonResourceAttributes{Path:\"/healthz\", Verb:\"get\"}": cannot be specified in combination with resourceAttributes"#
        );
        let selector =
            json!({"user": "u", "resourceAttributes": {"verb": "list", "fieldSelector": {}}});
        let err = answer(&a, "SubjectAccessReview", &admin, &sar(selector), None).unwrap_err();
        assert!(
            err.message.ends_with("spec.resourceAttributes.fieldSelector.requirements: Required value: when spec.resourceAttributes.fieldSelector is specified, requirements or rawSelector is required"),
            "{}",
            err.message
        );
        let mut named = sar(json!({"user": "u", "resourceAttributes": {"verb": "get"}}));
        named["metadata"] = json!({"name": "x"});
        let err = answer(&a, "SubjectAccessReview", &admin, &named, None).unwrap_err();
        assert!(
            err.message.contains("metadata: Invalid value"),
            "{}",
            err.message
        );
        assert!(err.message.ends_with("must be empty"), "{}", err.message);
        // A field of the wrong type, and a body of another kind: 400.
        let err = answer(
            &a,
            "SubjectAccessReview",
            &admin,
            &sar(json!({"user": 7})),
            None,
        )
        .unwrap_err();
        assert_eq!(err.code, 400);
        let pod = json!({"kind": "Pod", "apiVersion": "v1"});
        let err = answer(&a, "SubjectAccessReview", &admin, &pod, None).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .starts_with(r#"Pod in version "v1" cannot be handled as a SubjectAccessReview"#)
        );
        // Self reviews need no subject but still one kind of attributes.
        let err = answer(
            &a,
            "SelfSubjectAccessReview",
            &admin,
            &ssar(json!({})),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            r#"SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified"#
        );
    }

    #[tokio::test]
    async fn rules_reviews_list_what_applies_in_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let a = authorizer(&dir).await;
        let rules_review = |ns: &str| json!({"kind": "SelfSubjectRulesReview", "apiVersion": API_VERSION, "spec": {"namespace": ns}});
        let who = user("system:serviceaccount:foo:default", &["devs"]);
        let kind = "SelfSubjectRulesReview";
        let out = answer(&a, kind, &who, &rules_review("foo"), None).unwrap();
        assert_eq!(out["spec"], json!({}));
        assert_eq!(
            out["status"],
            json!({
                "resourceRules": [
                    {"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "pods/log"], "resourceNames": ["web"]},
                    {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["services"]},
                ],
                "nonResourceRules": [],
                "incomplete": false,
                "evaluationError": r#"clusterrole.rbac.authorization.k8s.io "gone" not found"#,
            })
        );
        // Another namespace: only what ClusterRoleBindings grant.
        let out = answer(&a, kind, &who, &rules_review("bar"), None).unwrap();
        assert_eq!(out["status"]["resourceRules"].as_array().unwrap().len(), 1);
        assert!(out["status"].get("evaluationError").is_none());
        let out = answer(&a, kind, &user("alice", &[]), &rules_review("bar"), None).unwrap();
        assert_eq!(
            out["status"]["nonResourceRules"],
            json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/livez"]}])
        );
        assert_eq!(out["status"]["resourceRules"], json!([]));
        let err = answer(&a, kind, &who, &rules_review(""), None).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (400, "no namespace on request")
        );
    }

    #[test]
    fn a_rule_with_resources_and_urls_is_both_kinds() {
        let rule = PolicyRule {
            verbs: vec!["get".into()],
            api_groups: Some(vec!["*".into()]),
            resources: Some(vec!["*".into()]),
            non_resource_urls: Some(vec!["*".into()]),
            ..PolicyRule::default()
        };
        let status = rules_status(&RulesReview {
            rules: vec![rule],
            errors: vec!["a".into(), "b".into(), "a".into()],
            incomplete: false,
        });
        assert_eq!(
            status["resourceRules"],
            json!([{"verbs": ["get"], "apiGroups": ["*"], "resources": ["*"]}])
        );
        assert_eq!(
            status["nonResourceRules"],
            json!([{"verbs": ["get"], "nonResourceURLs": ["*"]}])
        );
        assert_eq!(status["evaluationError"], "[a, b]");
    }
}
