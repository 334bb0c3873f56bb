//! The attributes of a request as kube's `RequestInfoFactory` derives them (verb from the
//! method and whether a name is given, group, resource, subresource, name, namespace; other
//! paths as non-resource URLs), and the 403 kube writes when they are not allowed.

use axum::http::Method;
use serde_json::json;

use super::rules::Request;
use crate::apiserver::authn::{UserInfo, impersonation};
use crate::apiserver::request::{Endpoint, Query, ResourceRequest};
use crate::apiserver::selectors::FieldSelector;
use crate::apiserver::status::ApiError;

/// Whether the raw query asks for a watch (`watch=true`, `watch=1`).
fn wants_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    })
}

/// kube's verb of a resource request.
fn resource_verb(method: &Method, named: bool, query: Option<&str>) -> String {
    let verb = match *method {
        Method::GET | Method::HEAD if wants_watch(query) => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return method.as_str().to_ascii_lowercase(),
    };
    verb.to_string()
}

/// The attributes of a request to a resource.
pub fn resource_request(method: &Method, r: &ResourceRequest, query: Option<&str>) -> Request {
    let info = r.info;
    let verb = resource_verb(method, r.name.is_some(), query);
    let name = match &r.name {
        Some(n) => n.clone(),
        None if verb == "list" || verb == "watch" => selected_name(query).unwrap_or_default(),
        None => String::new(),
    };
    let (resource, subresource) = match r.subresource.as_deref() {
        // `/namespaces/<ns>/bindings` is the `bindings` resource to kube.
        Some("binding") if r.name.is_none() => ("bindings".to_string(), String::new()),
        sub => (info.plural.to_string(), sub.unwrap_or("").to_string()),
    };
    // kube reads `/api/v1/namespaces/<name>` as a request in namespace <name>: reading your
    // own namespace is granted by a RoleBinding there.
    let namespace = match &r.namespace {
        Some(ns) => ns.clone(),
        None if info.plural == "namespaces" => name.clone(),
        None => String::new(),
    };
    Request::Resource {
        verb,
        group: info.group.to_string(),
        resource,
        subresource,
        name,
        namespace,
    }
}

/// The name a list or watch pins with `fieldSelector=metadata.name=<name>`: kube's
/// RequestInfo takes it as the request's name, so a rule with resourceNames (or the Node
/// authorizer) can allow watching one object.
fn selected_name(query: Option<&str>) -> Option<String> {
    let query = Query::parse(query).ok()?;
    let selector = FieldSelector::parse(query.value("fieldSelector")?).ok()?;
    let name = selector.exact_name()?;
    let valid = !matches!(name, "" | "." | "..") && !name.contains(['/', '%']);
    valid.then(|| name.to_string())
}

/// The attributes of any request (`None`: a path that names nothing, a non-resource URL).
pub fn of(
    method: &Method,
    endpoint: Option<&Endpoint>,
    path: &str,
    query: Option<&str>,
) -> Request {
    match endpoint {
        Some(Endpoint::Resource(r)) => resource_request(method, r, query),
        // A review (`selfsubjectreviews`, …) is a resource to kube, though never stored.
        Some(Endpoint::Review { info, namespace }) => Request::Resource {
            verb: resource_verb(method, false, query),
            group: info.group.to_string(),
            resource: info.plural.to_string(),
            subresource: String::new(),
            name: String::new(),
            namespace: namespace.clone().unwrap_or_default(),
        },
        _ => Request::NonResource {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_string(),
        },
    }
}

/// What impersonating one part of an identity asks of the authorizer: verb `impersonate` on
/// the target, kube's `actingAsAttributes`.
pub fn impersonation(target: &impersonation::Target) -> Request {
    Request::Resource {
        verb: "impersonate".into(),
        group: target.group().into(),
        resource: target.resource().into(),
        subresource: target.extra_key.clone(),
        name: target.name.clone(),
        namespace: target.namespace.clone(),
    }
}

/// kube's `forbiddenMessage` wrapped in `NewForbidden`: 403 `Forbidden`, details {name, group,
/// kind: the resource}; the authorizer's `reason`, if any, after a colon.
pub fn forbidden(user: &UserInfo, request: &Request, reason: &str) -> ApiError {
    let who = &user.name;
    let because = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match request {
        Request::NonResource { verb, path } => ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!("forbidden: User {who:?} cannot {verb} path {path:?}{because}"),
            details: Some(json!({})),
        },
        Request::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            namespace,
        } => {
            let shown = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {namespace:?}")
            };
            let reason = format!(
                "User {who:?} cannot {verb} resource {shown:?} in API group {group:?} {scope}{because}"
            );
            forbidden_object(group, resource, name, &reason)
        }
    }
}

/// `<resource>[.<group>] ["<name>"] is forbidden: <reason>`, as kube's `NewForbidden`.
pub fn forbidden_object(group: &str, resource: &str, name: &str, reason: &str) -> ApiError {
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {reason}")
    } else {
        format!("{qualified} {name:?} is forbidden: {reason}")
    };
    let mut details = json!({});
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    details["kind"] = json!(resource);
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details: Some(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::request::route;

    fn attrs(method: Method, path_and_query: &str) -> Request {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        of(&method, route(path).ok().as_ref(), path, query)
    }

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn verbs_follow_method_and_name() {
        let verb = |m: Method, p: &str| attrs(m, p).verb().to_string();
        assert_eq!(verb(Method::GET, "/api/v1/namespaces/foo/pods"), "list");
        assert_eq!(
            verb(Method::GET, "/api/v1/namespaces/foo/pods?watch=true"),
            "watch"
        );
        assert_eq!(verb(Method::GET, "/api/v1/namespaces/foo/pods/p"), "get");
        assert_eq!(verb(Method::POST, "/api/v1/namespaces/foo/pods"), "create");
        assert_eq!(verb(Method::PUT, "/api/v1/namespaces/foo/pods/p"), "update");
        assert_eq!(
            verb(Method::PATCH, "/api/v1/namespaces/foo/pods/p"),
            "patch"
        );
        assert_eq!(
            verb(Method::DELETE, "/api/v1/namespaces/foo/pods/p"),
            "delete"
        );
        assert_eq!(
            verb(Method::DELETE, "/api/v1/namespaces/foo/pods"),
            "deletecollection"
        );
        assert_eq!(verb(Method::GET, "/apis"), "get");
    }

    #[test]
    fn denials_read_as_kube_writes_them() {
        let u = user("system:serviceaccount:foo:default");
        let e = forbidden(
            &u,
            &attrs(Method::GET, "/api/v1/namespaces/foo/services"),
            "",
        );
        assert_eq!(
            e.message,
            r#"services is forbidden: User "system:serviceaccount:foo:default" cannot list resource "services" in API group "" in the namespace "foo""#
        );
        assert_eq!(e.details, Some(json!({"kind": "services"})));
        let e = forbidden(
            &user("x"),
            &attrs(Method::GET, "/api/v1/namespaces/foo/pods/p/log"),
            "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found",
        );
        assert_eq!(
            e.message,
            r#"pods "p" is forbidden: User "x" cannot get resource "pods/log" in API group "" in the namespace "foo": RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found"#
        );
        assert_eq!(e.details, Some(json!({"name": "p", "kind": "pods"})));
        let e = forbidden(&user("x"), &attrs(Method::GET, "/api/v1/nodes"), "");
        assert_eq!(
            e.message,
            r#"nodes is forbidden: User "x" cannot list resource "nodes" in API group "" at the cluster scope"#
        );
        let e = forbidden(
            &user("x"),
            &attrs(Method::GET, "/apis/apps/v1/deployments"),
            "",
        );
        assert!(
            e.message.starts_with("deployments.apps is forbidden"),
            "{}",
            e.message
        );
        let e = forbidden(&user("x"), &attrs(Method::GET, "/apis"), "");
        assert_eq!(e.message, r#"forbidden: User "x" cannot get path "/apis""#);
    }

    #[test]
    fn a_field_selector_on_the_name_names_a_list_or_watch() {
        let name = |p: &str| match attrs(Method::GET, p) {
            Request::Resource { name, verb, .. } => format!("{verb} {name}"),
            Request::NonResource { .. } => unreachable!(),
        };
        assert_eq!(
            name("/api/v1/namespaces/a/secrets?fieldSelector=metadata.name%3Ds1&watch=true"),
            "watch s1"
        );
        assert_eq!(
            name("/api/v1/namespaces/a/secrets?fieldSelector=metadata.name=s1"),
            "list s1"
        );
        assert_eq!(
            name("/api/v1/namespaces/a/secrets?fieldSelector=metadata.name!%3Ds1"),
            "list "
        );
        assert_eq!(
            name("/api/v1/namespaces/a/secrets?fieldSelector=metadata.name%3D.."),
            "list "
        );
    }

    #[test]
    fn a_namespace_object_is_in_its_own_namespace() {
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/foo").namespace(),
            "foo"
        );
        assert_eq!(attrs(Method::GET, "/api/v1/namespaces").namespace(), "");
    }
}
