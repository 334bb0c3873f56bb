//! What a request is asking for, worked out from its method, path and query the way
//! kube-apiserver's RequestInfoFactory does, before any handler runs.

use std::collections::HashMap;

use super::resources::{self, ResourceInfo, ReviewResource};
use super::status::{ApiError, ApiResult};

/// The endpoint a path names.
#[derive(Debug)]
pub enum Endpoint {
    Version,
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    ResourceList {
        group: String,
        version: String,
    },
    OpenApiV3Root,
    OpenApiV3(String),
    Resource(ResourceRequest),
    /// A review resource (created, answered, never stored), in its namespace if namespaced.
    Review {
        info: &'static ReviewResource,
        namespace: Option<String>,
    },
}

/// A request on a resource: a collection, one object, or one object's subresource.
#[derive(Debug, Clone)]
pub struct ResourceRequest {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parse a request path (without the query) into the endpoint it names.
pub fn route(path: &str) -> ApiResult<Endpoint> {
    let trimmed = path.trim_end_matches('/');
    match trimmed {
        "/version" => return Ok(Endpoint::Version),
        "/healthz" | "/livez" | "/readyz" => return Ok(Endpoint::Health),
        "/api" => return Ok(Endpoint::CoreVersions),
        "/apis" => return Ok(Endpoint::Groups),
        "/openapi/v3" => return Ok(Endpoint::OpenApiV3Root),
        _ => {}
    }
    if let Some(rest) = trimmed.strip_prefix("/openapi/v3/") {
        return Ok(Endpoint::OpenApiV3(rest.to_string()));
    }
    if trimmed.starts_with("/healthz/")
        || trimmed.starts_with("/livez/")
        || trimmed.starts_with("/readyz/")
    {
        return Ok(Endpoint::Health);
    }
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => return Ok(Endpoint::Group((*group).to_string())),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    if rest.is_empty() {
        return Ok(Endpoint::ResourceList {
            group: group.to_string(),
            version: version.to_string(),
        });
    }
    if rest.iter().any(|s| s.is_empty()) {
        return Err(ApiError::no_route(path));
    }
    let unknown = || ApiError::no_route(path);
    if let Some(review) = review_endpoint(group, version, rest) {
        return Ok(review);
    }
    // `/namespaces/<ns>/<resource>…` addresses namespaced resources; `/namespaces` and
    // `/namespaces/<name>[/<sub>]` address the namespace objects themselves.
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..] => {
            let info = resources::lookup(group, version, resource);
            match info {
                Some(info) if info.namespaced => (Some((*ns).to_string()), {
                    let mut v = vec![*resource];
                    v.extend_from_slice(tail);
                    v
                }),
                // `/api/v1/namespaces/<ns>/status|finalize`
                _ if group.is_empty()
                    && tail.is_empty()
                    && (*resource == "status" || *resource == "finalize") =>
                {
                    (None, vec!["namespaces", ns, resource])
                }
                _ if group.is_empty() && tail.is_empty() && *resource == "bindings" => {
                    let pods = resources::lookup("", "v1", "pods").ok_or_else(unknown)?;
                    return Ok(Endpoint::Resource(ResourceRequest {
                        info: pods,
                        namespace: Some((*ns).to_string()),
                        name: None,
                        subresource: Some("binding".to_string()),
                    }));
                }
                _ => return Err(unknown()),
            }
        }
        other => (None, other.to_vec()),
    };
    let (resource, name, sub) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return Err(unknown()),
    };
    let info = resources::lookup(group, version, resource).ok_or_else(unknown)?;
    if info.namespaced != namespace.is_some() && !(info.namespaced && name.is_none()) {
        // A namespaced resource's object needs its namespace; a cluster-scoped resource has
        // none. (A namespaced collection without a namespace lists across all of them.)
        return Err(unknown());
    }
    if let Some(sub) = sub
        && !info.has_subresource(sub)
    {
        return Err(unknown());
    }
    Ok(Endpoint::Resource(ResourceRequest {
        info,
        namespace,
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    }))
}

/// `<reviews>` or `namespaces/<ns>/<reviews>` of a review resource.
fn review_endpoint(group: &str, version: &str, rest: &[&str]) -> Option<Endpoint> {
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some((*ns).to_string()), *plural),
        _ => return None,
    };
    let info = resources::lookup_review(group, version, plural)?;
    (info.namespaced == namespace.is_some()).then_some(Endpoint::Review { info, namespace })
}

/// The query string as a map; the last value of a repeated parameter wins, except for
/// `dryRun`, which kube treats as a list.
#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> ApiResult<Query> {
        let Some(q) = query else {
            return Ok(Query::default());
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
        Ok(Query(pairs.into_iter().collect()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A non-empty parameter.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value {other:?} for {key}: expected true or false"
            ))),
        }
    }

    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for {key}: expected an integer"
                ))
            }),
        }
    }

    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid dry run value {other:?}: only \"All\" is supported"
            ))),
        }
    }
}

/// How a response body should be shaped, from the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The object or list itself.
    Plain,
    /// A `meta.k8s.io/v1` Table (kubectl get).
    Table,
    /// `PartialObjectMetadata` / `PartialObjectMetadataList` (metadata-only clients).
    Metadata,
}

/// Pick the first acceptable representation, as kube-apiserver's content negotiation does:
/// kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io,application/json`.
pub fn negotiate(accept: Option<&str>) -> ApiResult<Shape> {
    let Some(accept) = accept else {
        return Ok(Shape::Plain);
    };
    for clause in accept.split(',') {
        let mut parts = clause.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: HashMap<&str, &str> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        if !matches!(
            media,
            "application/json" | "*/*" | "application/*" | "application/yaml"
        ) {
            continue;
        }
        match (params.get("as"), params.get("g"), params.get("v")) {
            (None, _, _) => return Ok(Shape::Plain),
            (Some(&"Table"), Some(&"meta.k8s.io"), Some(&"v1" | &"v1beta1")) => {
                return Ok(Shape::Table);
            }
            (
                Some(&"PartialObjectMetadata" | &"PartialObjectMetadataList"),
                Some(&"meta.k8s.io"),
                Some(&"v1"),
            ) => return Ok(Shape::Metadata),
            _ => continue,
        }
    }
    // Only transformations we do not offer, or only media types other than JSON (protobuf
    // alone, say): kube answers 406 too.
    Err(ApiError::not_acceptable(accept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourceRequest {
        match route(path).unwrap() {
            Endpoint::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn routes_collections_objects_and_subresources() {
        let r = resource("/api/v1/namespaces/default/pods");
        assert_eq!(
            (r.info.plural, r.namespace.as_deref(), r.name.as_deref()),
            ("pods", Some("default"), None)
        );
        let r = resource("/api/v1/pods");
        assert_eq!((r.info.plural, r.namespace), ("pods", None));
        let r = resource("/apis/apps/v1/namespaces/x/deployments/web/scale");
        assert_eq!(
            (r.info.plural, r.name.as_deref(), r.subresource.as_deref()),
            ("deployments", Some("web"), Some("scale"))
        );
        let r = resource("/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.info.plural, r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = resource("/api/v1/namespaces/gone/finalize");
        assert_eq!(
            (r.info.plural, r.name.as_deref(), r.subresource.as_deref()),
            ("namespaces", Some("gone"), Some("finalize"))
        );
        let r = resource("/api/v1/nodes/n1/status");
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = resource("/api/v1/namespaces/default/bindings");
        assert_eq!(
            (r.info.plural, r.subresource.as_deref()),
            ("pods", Some("binding"))
        );
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/api/v1/namespaces/default/widgets",
            "/api/v1/nodes/n1/scale",
            "/api/v1/namespaces/default/nodes/x",
            "/apis/apps/v1/deployments/x",
            "/api/v1/namespaces/default/pods/x/status/extra",
            "/foo",
            "/api/v1//pods",
        ] {
            let err = route(p).unwrap_err();
            assert_eq!(err.code, 404, "{p}");
        }
    }

    #[test]
    fn negotiates_tables_and_plain_json() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)).unwrap(), Shape::Table);
        assert_eq!(negotiate(Some("application/json")).unwrap(), Shape::Plain);
        assert_eq!(negotiate(None).unwrap(), Shape::Plain);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf, */*")).unwrap(),
            Shape::Plain
        );
        assert_eq!(
            negotiate(Some(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            ))
            .unwrap(),
            Shape::Metadata
        );
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .code,
            406
        );
    }
}
