//! HTTP in, registry calls, HTTP out: one dispatcher for every path, like kube-apiserver's
//! handler chain (authentication → request info → REST handler).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::authn::{self, Authenticator, PeerIdentity};
use super::certificates;
use super::discovery::{self, AggregatedVersion};
use super::nodeauthz::{self, NodeAuthorizer};
use super::nodeproxy::{self, NodeClient};
use super::noderestriction;
use super::nodestream;
use super::object::{self, meta_str};
use super::openapi;
use super::patch::PatchType;
use super::rbac::{self, Authorizer, escalation};
use super::registry::{
    self, DeleteOptions, Deleted, FieldValidation, ListOptions, Registry, WriteOptions, Written,
};
use super::request::{self, Endpoint, Query, ResourceRequest, Shape};
use super::resources::{ResourceInfo, ReviewResource};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult, success_status};
use super::table::{self, IncludeObject};
use super::watch::{self, WatchOptions, partial_metadata};

/// The largest request body accepted (kube-apiserver's limit is 3 MiB as well).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Handler {
    pub registry: Registry,
    pub authn: Authenticator,
    pub rbac: Arc<Authorizer>,
    /// The Node authorizer, first in the chain `Node,RBAC`.
    pub node_authz: Arc<NodeAuthorizer>,
    /// The address clients should use, for `/api`'s serverAddressByClientCIDRs.
    pub advertise: String,
    /// Connections to node agents (`pods/log`).
    pub nodes: NodeClient,
    /// True once the server shuts down: open watches end, as kube-apiserver's do, so their
    /// clients watch again (on another server) instead of holding this one open.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Entry point for every request: never fails, errors become `Status` responses.
pub async fn handle(handler: Arc<Handler>, req: Request<Body>) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match handler.dispatch(req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(
        %method,
        %path,
        code = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    // kube-apiserver's field order, with the fields the schema requires.
    let body = super::wire::to_vec(value);
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// The write options of a create, update or patch: `dryRun` and `fieldValidation`.
fn write_options(query: &Query) -> ApiResult<WriteOptions> {
    Ok(WriteOptions {
        dry_run: query.dry_run()?,
        validation: FieldValidation::parse(query.get("fieldValidation"))?,
    })
}

/// A list's metadata: its resource version and, when there is more, the continue token.
fn list_meta(rv: &str, continue_token: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    meta
}

/// A request to a resource, as the steps for one verb take it.
#[derive(Clone, Copy)]
struct Call<'a> {
    info: &'static ResourceInfo,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
    query: &'a Query,
    content_type: Option<&'a str>,
    body: &'a Bytes,
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `pods/exec`, `pods/attach` and `pods/portforward`, which are streamed to the pod's node (GET for WebSocket,
/// POST for SPDY).
fn is_pod_stream(r: &ResourceRequest, method: &Method) -> bool {
    r.info.group.is_empty()
        && r.info.plural == "pods"
        && r.name.is_some()
        && r.subresource
            .as_deref()
            .is_some_and(|s| nodestream::SUBRESOURCES.contains(&s))
        && (*method == Method::GET || *method == Method::POST)
}

impl Handler {
    /// A WebSocket upgrade arrives as a GET, authorized above as `get`; like kube-apiserver
    /// with `AuthorizePodWebsocketUpgradeCreatePermission`, it must also be allowed to
    /// `create` the subresource, as the SPDY POST is.
    fn authorize_websocket_create(
        &self,
        user: &authn::UserInfo,
        parts: &axum::http::request::Parts,
        mut attributes: rbac::rules::Request,
    ) -> ApiResult<()> {
        if parts.method != Method::GET || !nodestream::is_websocket(&parts.headers) {
            return Ok(());
        }
        if let rbac::rules::Request::Resource { verb, .. } = &mut attributes {
            *verb = "create".into();
        }
        nodeauthz::authorize(&self.node_authz, &self.rbac, user, &attributes)
    }

    /// Who a request is served as: its authenticated user, or whom that user may impersonate.
    async fn identity(&self, parts: &axum::http::request::Parts) -> ApiResult<authn::UserInfo> {
        let peer = parts.extensions.get::<PeerIdentity>();
        let user = self
            .authn
            .authenticate(&self.registry, &parts.headers, peer)
            .await?;
        let uri = parts.uri.path_and_query().map_or("", |p| p.as_str());
        authn::impersonation::impersonate(user, &parts.headers, uri, |who, target| {
            self.rbac
                .authorize(who, &rbac::attributes::impersonation(target))
        })
    }

    async fn dispatch(&self, req: Request<Body>) -> ApiResult<Response> {
        let (mut parts, body) = req.into_parts();
        let user = self.identity(&parts).await?;
        // Authorized before a missing route is reported, as kube-apiserver does.
        let routed = request::route(parts.uri.path());
        let (path, raw_query) = (parts.uri.path(), parts.uri.query());
        let attributes = rbac::attributes::of(&parts.method, routed.as_ref().ok(), path, raw_query);
        nodeauthz::authorize(&self.node_authz, &self.rbac, &user, &attributes)?;
        let endpoint = routed?;
        if let Endpoint::Resource(r) = &endpoint
            && is_pod_stream(r, &parts.method)
        {
            self.authorize_websocket_create(&user, &parts, attributes)?;
            return nodestream::connect(&self.registry, &self.nodes, r, &mut parts).await;
        }
        let accept = header_str(&parts.headers, header::ACCEPT);
        let read_only = parts.method == Method::GET || parts.method == Method::HEAD;
        match endpoint {
            // Proxied to the pod's node agent; the raw query is decoded there.
            Endpoint::Resource(r)
                if r.subresource.as_deref() == Some("log") && parts.method == Method::GET =>
            {
                nodeproxy::pod_log(&self.registry, &self.nodes, &r, parts.uri.query()).await
            }
            Endpoint::Resource(r) => {
                let query = Query::parse(parts.uri.query())?;
                let body = if read_only {
                    Bytes::new()
                } else {
                    read_body(&parts.headers, body).await?
                };
                let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
                let (body, content_type) = self
                    .admit(&user, &parts.method, &r, content_type, body)
                    .await?;
                let rbac_write = r.info.group == rbac::GROUP && !read_only;
                let out = self
                    .resource(&parts.method, r, &query, accept, content_type, body)
                    .await;
                if rbac_write && out.is_ok() {
                    // The author's next request must see the new grants.
                    self.rbac
                        .resync()
                        .await
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                }
                out
            }
            Endpoint::Review { info, namespace } if parts.method == Method::POST => {
                let body = read_body(&parts.headers, body).await?;
                let content_type = header_str(&parts.headers, header::CONTENT_TYPE);
                let review = object::parse_body(content_type, &body)?;
                let out = self.review(info, namespace.as_deref(), &user, &review, path)?;
                Ok(json_response(StatusCode::CREATED, &out))
            }
            Endpoint::Review { info, .. } => Err(ApiError::method_not_allowed(
                parts.method.as_str(),
                info.group,
                info.plural,
            )),
            _ if !read_only => Err(ApiError::method_not_allowed(
                parts.method.as_str(),
                "",
                parts.uri.path(),
            )),
            Endpoint::Version => Ok(json_response(StatusCode::OK, &discovery::version_info())),
            Endpoint::Health => Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "ok",
            )
                .into_response()),
            Endpoint::CoreVersions => Ok(match aggregated(accept) {
                Some(v) => aggregated_response(discovery::aggregated(true, v), v),
                None => json_response(StatusCode::OK, &discovery::api_versions(&self.advertise)),
            }),
            Endpoint::Groups => Ok(match aggregated(accept) {
                Some(v) => aggregated_response(discovery::aggregated(false, v), v),
                None => json_response(StatusCode::OK, &discovery::api_group_list()),
            }),
            Endpoint::Group(g) => discovery::api_group(&g)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(|| ApiError::no_route(parts.uri.path())),
            Endpoint::ResourceList { group, version } => {
                discovery::api_resource_list(&group, &version)
                    .map(|v| json_response(StatusCode::OK, &v))
                    .ok_or_else(|| ApiError::no_route(parts.uri.path()))
            }
            Endpoint::OpenApiV3Root => Ok(json_response(StatusCode::OK, &openapi::v3_root())),
            Endpoint::OpenApiV3(path) => openapi::v3_group_version(&path)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(|| ApiError::no_route(parts.uri.path())),
        }
    }

    /// The admission checks that need the requester: RBAC escalation prevention, and the
    /// certificates API's (which may rewrite a CSR body, then as JSON).
    async fn admit<'a>(
        &self,
        user: &authn::UserInfo,
        method: &Method,
        r: &ResourceRequest,
        content_type: Option<&'a str>,
        body: Bytes,
    ) -> ApiResult<(Bytes, Option<&'a str>)> {
        let write = escalation::Write {
            method,
            request: r,
            content_type,
            body: &body,
        };
        escalation::check(&self.rbac, &self.registry, user, &write).await?;
        noderestriction::admit(&self.registry, user, &write).await?;
        if !certificates::is_csr(r) || method == Method::GET || method == Method::HEAD {
            return Ok((body, content_type));
        }
        let admitted = certificates::admit(
            &self.rbac,
            &self.registry,
            user,
            method,
            r,
            content_type,
            &body,
        )
        .await?;
        Ok(match admitted {
            Some(json) => (json, Some("application/json")),
            None => (body, content_type),
        })
    }

    async fn resource(
        &self,
        method: &Method,
        r: ResourceRequest,
        query: &Query,
        accept: Option<&str>,
        content_type: Option<&str>,
        body: Bytes,
    ) -> ApiResult<Response> {
        let info = r.info;
        let ns = r.namespace.as_deref();
        let sub = r.subresource.as_deref();
        let write = || write_options(query);
        let not_allowed = || ApiError::method_not_allowed(method.as_str(), info.group, info.plural);
        let call = Call {
            info,
            ns,
            name: r.name.as_deref(),
            sub,
            query,
            content_type,
            body: &body,
        };
        match (method.clone(), r.name.as_deref(), sub) {
            (Method::GET, None, None) => {
                let shape = request::negotiate(accept)?;
                if query.flag("watch")? {
                    self.watch(info, ns, query, shape).await
                } else {
                    self.list(info, ns, query, shape).await
                }
            }
            (Method::GET, Some(name), None | Some("status") | Some("approval")) => {
                let shape = request::negotiate(accept)?;
                let obj = self.registry.get(info, ns, name).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &shaped_one(info, obj, shape, query)?,
                ))
            }
            (Method::GET, Some(name), Some("scale")) => {
                let obj = self.registry.get(info, ns, name).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &Registry::scale_of(info, &obj)?,
                ))
            }
            (Method::POST, None, None) => {
                let obj = object::parse_body(content_type, &body)?;
                let w = self.registry.create(info, ns, obj, write()?).await?;
                Ok(written(w))
            }
            (Method::POST, _, Some("binding")) => self.bind(&call).await,
            (Method::POST, Some(name), Some("eviction")) => {
                let eviction = object::parse_body(content_type, &body)?;
                let ns = ns.ok_or_else(|| ApiError::bad_request("eviction needs a namespace"))?;
                let out =
                    super::eviction::evict(&self.registry, ns, name, &eviction, query.dry_run()?)
                        .await?;
                Ok(json_response(StatusCode::CREATED, &out))
            }
            (Method::POST, Some(name), Some("token")) => {
                let request = object::parse_body(content_type, &body)?;
                let out = authn::token_request::create(
                    &self.registry,
                    &self.authn.service_accounts,
                    ns.unwrap_or_default(),
                    name,
                    request,
                )
                .await?;
                Ok(json_response(StatusCode::CREATED, &out))
            }
            (Method::PUT, Some(name), None | Some("status") | Some("approval")) => {
                let obj = object::parse_body(content_type, &body)?;
                let w = self
                    .registry
                    .update(info, ns, name, sub, obj, write()?)
                    .await?;
                Ok(written(w))
            }
            (Method::PUT, Some(name), Some("scale")) => {
                let scale = object::parse_body(content_type, &body)?;
                let out = self
                    .registry
                    .update_scale(info, ns, name, write()?, |_| Ok(scale.clone()))
                    .await?;
                Ok(json_response(StatusCode::OK, &out))
            }
            (Method::PUT, Some(name), Some("finalize")) => {
                let obj = object::parse_body(content_type, &body)?;
                let out = self
                    .registry
                    .finalize_namespace(info, name, &obj, write()?)
                    .await?;
                Ok(json_response(StatusCode::OK, &out))
            }
            (
                Method::PATCH,
                Some(name),
                None | Some("status") | Some("scale") | Some("approval"),
            ) => self.patch(&call, name).await,
            (Method::DELETE, _, None) => self.delete(&call).await,
            _ => Err(not_allowed()),
        }
    }

    /// `POST pods/{name}/binding` (or a Binding posted to the collection, naming its pod).
    async fn bind(&self, call: &Call<'_>) -> ApiResult<Response> {
        let binding = object::parse_body(call.content_type, call.body)?;
        let pod = match call.name {
            Some(n) => n.to_string(),
            None => meta_str(&binding, "name").unwrap_or("").to_string(),
        };
        if pod.is_empty() {
            return Err(ApiError::bad_request(
                "the binding names no pod (metadata.name)",
            ));
        }
        let ns = call
            .ns
            .ok_or_else(|| ApiError::bad_request("binding needs a namespace"))?;
        self.registry
            .bind(call.info, ns, &pod, &binding, write_options(call.query)?)
            .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    /// `PATCH` of an object, its status or its scale, by the patch type of the content type.
    async fn patch(&self, call: &Call<'_>, name: &str) -> ApiResult<Response> {
        let Call {
            info,
            ns,
            sub,
            query,
            body,
            ..
        } = *call;
        let ct = call.content_type.unwrap_or("");
        let patch_type =
            PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
        if sub == Some("scale") {
            let out = self
                .registry
                .update_scale(info, ns, name, write_options(query)?, |scale| {
                    super::patch::apply_patch("Scale", scale, patch_type, body)
                })
                .await?;
            return Ok(json_response(StatusCode::OK, &out));
        }
        let w = self
            .registry
            .patch(info, ns, name, sub, patch_type, body, write_options(query)?)
            .await?;
        Ok(written(w))
    }

    /// `DELETE` of one object, or of the collection (the deleted items as a list).
    async fn delete(&self, call: &Call<'_>) -> ApiResult<Response> {
        let Call {
            info, ns, query, ..
        } = *call;
        let opts = delete_options(query, call.content_type, call.body)?;
        if let Some(name) = call.name {
            let deleted = self.registry.delete(info, ns, name, &opts).await?;
            return Ok(deleted_response(info, deleted));
        }
        let list = list_options(info, query)?;
        let items = self
            .registry
            .delete_collection(info, ns, &list, &opts)
            .await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", info.kind),
                "apiVersion": info.api_version(),
                "metadata": {},
                "items": items,
            }),
        ))
    }

    async fn list(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        query: &Query,
        shape: Shape,
    ) -> ApiResult<Response> {
        let opts = list_options(info, query)?;
        let page = self.registry.list(info, ns, &opts).await?;
        let rv = page.resource_version.to_string();
        let body = match shape {
            Shape::Table => table::table(
                info.plural,
                &page.items,
                include_object(query)?,
                &rv,
                page.continue_token.as_deref(),
                None,
                jiff::Timestamp::now(),
            ),
            Shape::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": list_meta(&rv, page.continue_token.as_deref()),
                "items": page.items.iter().map(partial_metadata).collect::<Vec<_>>(),
            }),
            Shape::Plain => json!({
                "kind": format!("{}List", info.kind),
                "apiVersion": info.api_version(),
                "metadata": list_meta(&rv, page.continue_token.as_deref()),
                "items": page.items,
            }),
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    async fn watch(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        query: &Query,
        shape: Shape,
    ) -> ApiResult<Response> {
        let list = list_options(info, query)?;
        let rv = match query.get("resourceVersion") {
            None | Some("") | Some("0") => None,
            Some(v) => object::parse_resource_version(Some(v))?,
        };
        let timeout = match query.int("timeoutSeconds")? {
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            // kube: a random time in [30 min, 60 min) so watches of many clients spread out.
            _ => {
                use rand::Rng;
                Duration::from_secs(rand::rng().random_range(1800..3600))
            }
        };
        let opts = WatchOptions {
            labels: list.labels,
            fields: list.fields,
            resource_version: rv,
            send_initial_events: query.flag("sendInitialEvents")?,
            bookmarks: query.flag("allowWatchBookmarks")?,
            timeout,
            shape,
            include: include_object(query)?,
        };
        let rx = watch::watch(&self.registry, info, ns, opts).await?;
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let stream = futures::StreamExt::take_until(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            stopped,
        );
        Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

impl Handler {
    /// The answer to a posted review (created, never stored).
    fn review(
        &self,
        info: &ReviewResource,
        namespace: Option<&str>,
        user: &authn::UserInfo,
        review: &Value,
        path: &str,
    ) -> ApiResult<Value> {
        match (info.group, info.kind) {
            (rbac::review::GROUP, kind) => {
                let chain = nodeauthz::Chain {
                    nodes: &self.node_authz,
                    rbac: &self.rbac,
                };
                rbac::review::answer(&chain, kind, user, review, namespace)
            }
            (_, "SelfSubjectReview") => authn::review::self_subject_review(user, review),
            _ => Err(ApiError::no_route(path)),
        }
    }
}

async fn read_body(headers: &HeaderMap, body: Body) -> ApiResult<Bytes> {
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok())
        && len > MAX_BODY
    {
        return Err(ApiError::payload_too_large(MAX_BODY));
    }
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        let text = format!("{e}");
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || text.contains("length limit");
        if too_big {
            ApiError::payload_too_large(MAX_BODY)
        } else {
            ApiError::bad_request(format!("could not read the request body: {text}"))
        }
    })
}

fn include_object(query: &Query) -> ApiResult<IncludeObject> {
    match query.value("includeObject") {
        None => Ok(IncludeObject::default()),
        Some(v) => IncludeObject::parse(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "includeObject must be None, Metadata or Object (got {v:?})"
            ))
        }),
    }
}

fn list_options(info: &ResourceInfo, query: &Query) -> ApiResult<ListOptions> {
    let labels = match query.value("labelSelector") {
        Some(s) => LabelSelector::parse(s)
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        None => LabelSelector::default(),
    };
    let fields = match query.value("fieldSelector") {
        Some(s) => {
            let f = FieldSelector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("invalid field selector: {e}")))?;
            f.validate(info.plural).map_err(ApiError::bad_request)?;
            f
        }
        None => FieldSelector::default(),
    };
    let limit = match query.int("limit")? {
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        _ => 0,
    };
    let exact = match query.value("resourceVersionMatch") {
        None | Some("NotOlderThan") => false,
        Some("Exact") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch must be Exact or NotOlderThan (got {other:?})"
            )));
        }
    };
    let resource_version = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        v => object::parse_resource_version(v)?,
    };
    Ok(ListOptions {
        labels,
        fields,
        limit,
        continue_token: query.value("continue").map(str::to_string),
        resource_version,
        exact,
    })
}

fn delete_options(
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResult<DeleteOptions> {
    let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        DeleteOptions::from_body(&object::parse_body(content_type, body)?)?
    };
    if let Some(g) = query.int("gracePeriodSeconds")? {
        opts.grace_period = Some(g);
    }
    if let Some(p) = query.value("propagationPolicy") {
        opts.propagation = Some(registry::parse_propagation(p)?);
    } else if query.get("orphanDependents").is_some() {
        opts.propagation = Some(if query.flag("orphanDependents")? {
            registry::Propagation::Orphan
        } else {
            registry::Propagation::Background
        });
    }
    if query.dry_run()? {
        opts.dry_run = true;
    }
    Ok(opts)
}

fn shaped_one(info: &ResourceInfo, obj: Value, shape: Shape, query: &Query) -> ApiResult<Value> {
    Ok(match shape {
        Shape::Plain => obj,
        Shape::Metadata => partial_metadata(&obj),
        Shape::Table => {
            let rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
            table::table(
                info.plural,
                &[obj],
                include_object(query)?,
                &rv,
                None,
                None,
                jiff::Timestamp::now(),
            )
        }
    })
}

/// 201 for what a write created, 200 otherwise.
fn written(w: Written) -> Response {
    let code = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    with_warnings(json_response(code, &w.object), &w.warnings)
}

fn deleted_response(info: &ResourceInfo, deleted: Deleted) -> Response {
    match deleted {
        // kube returns the object for pods and services and a Status for the rest.
        Deleted::Gone(obj) if !matches!(info.plural, "pods" | "services") => {
            let mut details = json!({
                "name": object::name(&obj),
                "kind": info.plural,
                "uid": meta_str(&obj, "uid"),
            });
            if !info.group.is_empty() {
                details["group"] = json!(info.group);
            }
            json_response(StatusCode::OK, &success_status(details))
        }
        Deleted::Gone(obj) => json_response(StatusCode::OK, &obj),
        Deleted::Pending(obj) => json_response(StatusCode::ACCEPTED, &obj),
    }
}

/// The aggregated discovery version the client asked for, if any (kubectl 1.28+ does).
fn aggregated(accept: Option<&str>) -> Option<AggregatedVersion> {
    let accept = accept?;
    for clause in accept.split(',') {
        let params: Vec<&str> = clause.split(';').map(str::trim).collect();
        if !params.contains(&"g=apidiscovery.k8s.io")
            || !params.contains(&"as=APIGroupDiscoveryList")
        {
            if params.first() == Some(&"application/json") && params.len() == 1 {
                return None;
            }
            continue;
        }
        if params.contains(&"v=v2") {
            return Some(AggregatedVersion::V2);
        }
        if params.contains(&"v=v2beta1") {
            return Some(AggregatedVersion::V2Beta1);
        }
    }
    None
}

fn aggregated_response(body: Value, version: AggregatedVersion) -> Response {
    let ct = match version {
        AggregatedVersion::V2 => {
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        }
        AggregatedVersion::V2Beta1 => {
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        }
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (header::VARY, HeaderValue::from_static("Accept")),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_only_when_asked() {
        let kubectl_133 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated(Some(kubectl_133)), Some(AggregatedVersion::V2));
        let kubectl_128 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            aggregated(Some(kubectl_128)),
            Some(AggregatedVersion::V2Beta1)
        );
        assert_eq!(aggregated(Some("application/json, */*")), None);
        assert_eq!(aggregated(None), None);
    }
}
