//! Object storage semantics, independent of HTTP: what create, update, patch, delete and list
//! mean for Kubernetes objects over the [`Store`] (kube-apiserver's generic registry plus
//! the per-resource strategies).
//!
//! Objects are stored as JSON without `resourceVersion`; reads stamp the key's
//! `mod_revision` into it, and every conditional write is a compare-and-swap on it.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use crate::store::{KeyValue, Revision, Store, StoreError};

use super::admission::{self, Allocators, ServiceAllocations};
use super::object::{self, decode, encode, finalizers, is_deleting, meta_mut, meta_str};
use super::patch::{self, PatchType};
use super::resources::{self, ResourceInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult, FieldCause};
use super::{csr_strategy, defaults, service_strategy, validation};

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How many times an unconditional write is retried when it races another writer.
const MAX_RETRIES: usize = 16;

/// Options every write takes (`dryRun`, `fieldValidation`).
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
}

/// What to do with fields the wire type does not know (the `fieldValidation` parameter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> ApiResult<FieldValidation> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict (got {other:?})"
            ))),
        }
    }
}

/// The result of a write: the object as stored (or as it would be, on a dry run) and the
/// warnings for the client's `Warning` headers.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// 0 = no limit.
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<Revision>,
    /// `resourceVersionMatch=Exact`: serve exactly at `resource_version`.
    pub exact: bool,
}

#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: Revision,
    pub continue_token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<Revision>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// From a `DeleteOptions` body (any of its fields may be absent).
    pub fn from_body(body: &Value) -> ApiResult<DeleteOptions> {
        let mut out = DeleteOptions {
            grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            ..Default::default()
        };
        if let Some(p) = body.get("propagationPolicy").and_then(Value::as_str) {
            out.propagation = Some(parse_propagation(p)?);
        } else if let Some(orphan) = body.get("orphanDependents").and_then(Value::as_bool) {
            out.propagation = Some(if orphan {
                Propagation::Orphan
            } else {
                Propagation::Background
            });
        }
        if let Some(uid) = body.pointer("/preconditions/uid").and_then(Value::as_str) {
            out.precondition_uid = Some(uid.to_string());
        }
        out.precondition_rv = object::parse_resource_version(
            body.pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str),
        )?;
        if let Some(dry) = body.get("dryRun").and_then(Value::as_array) {
            out.dry_run = dry.iter().any(|v| v == "All");
        }
        Ok(out)
    }
}

pub fn parse_propagation(p: &str) -> ApiResult<Propagation> {
    match p {
        "Orphan" => Ok(Propagation::Orphan),
        "Background" => Ok(Propagation::Background),
        "Foreground" => Ok(Propagation::Foreground),
        other => Err(ApiError::bad_request(format!(
            "propagationPolicy must be Orphan, Background or Foreground (got {other:?})"
        ))),
    }
}

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// The object is gone; this is its last state.
    Gone(Value),
    /// The object is being deleted (graceful pod deletion or pending finalizers).
    Pending(Value),
}

pub struct Registry {
    store: Arc<dyn Store>,
    pub allocators: Allocators,
}

fn store_err<'a>(info: &'a ResourceInfo, name: &'a str) -> impl Fn(StoreError) -> ApiError + 'a {
    move |e| ApiError::from_store(e, info.group, info.plural, name)
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, allocators: Allocators) -> Registry {
        Registry { store, allocators }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Claim what a service needs (ClusterIP, NodePorts); nothing for other resources.
    async fn allocate(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<ServiceAllocations> {
        if info.plural == "services" {
            self.allocators.allocate_service(obj, old).await
        } else {
            Ok(ServiceAllocations::default())
        }
    }

    async fn current(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<KeyValue>> {
        self.store
            .get(&info.key(ns, name))
            .await
            .map_err(store_err(info, name))
    }

    pub async fn get(&self, info: &ResourceInfo, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let kv = self
            .current(info, ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found(info.group, info.plural, name))?;
        decode(&kv)
    }

    pub async fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<ListPage> {
        let prefix = info.key_prefix(ns);
        let (mut start_after, mut revision) = match &opts.continue_token {
            Some(token) => {
                let (rev, start) = decode_continue(token, &prefix)?;
                (Some(start), Some(rev))
            }
            None => (None, None),
        };
        if revision.is_none() && opts.exact {
            revision = opts.resource_version;
        }
        let current = if revision.is_none() {
            let cur = self
                .store
                .current_revision()
                .await
                .map_err(store_err(info, ""))?;
            if let Some(rv) = opts.resource_version
                && rv > cur
            {
                return Err(ApiError::timeout(format!(
                    "Too large resource version: {rv}, current: {cur}"
                )));
            }
            Some(cur)
        } else {
            None
        };
        let revision = revision.or(current);
        let filtered = !opts.labels.is_empty() || !opts.fields.is_empty();
        // One key is enough when the field selector names the object.
        let exact_key = match (opts.fields.exact_name(), ns.is_some() || !info.namespaced) {
            (Some(name), true) => Some(format!("{prefix}{name}")),
            _ => None,
        };
        let page_size = match (opts.limit, filtered) {
            (0, _) => 0,
            (n, false) => n + 1,
            (n, true) => (n + 1).max(500),
        };
        let mut items = Vec::new();
        let mut served_at;
        let mut continue_from: Option<String> = None;
        'pages: loop {
            let scan_prefix = exact_key.as_deref().unwrap_or(&prefix);
            let page = self
                .store
                .list(scan_prefix, start_after.as_deref(), page_size, revision)
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    e => ApiError::from_store(e, info.group, info.plural, ""),
                })?;
            served_at = page.revision;
            let count = page.items.len();
            for kv in &page.items {
                if exact_key.as_deref().is_some_and(|k| k != kv.key) {
                    continue;
                }
                let obj = decode(kv)?;
                if !opts.labels.matches_object(&obj) || !opts.fields.matches(&obj) {
                    continue;
                }
                if opts.limit > 0 && items.len() == opts.limit {
                    // One more match exists: the client continues after the last one it got.
                    continue_from = items
                        .last()
                        .map(|o: &Value| info.key(meta_str(o, "namespace"), object::name(o)));
                    break 'pages;
                }
                items.push(obj);
            }
            if !page.more || count == 0 || page_size == 0 {
                break;
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
        let continue_token = continue_from.map(|key| encode_continue(served_at, &key, &prefix));
        Ok(ListPage {
            items,
            resource_version: served_at,
            continue_token,
        })
    }

    /// Create an object in `ns` (the URL's namespace).
    pub async fn create(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        body: Value,
        opts: WriteOptions,
    ) -> ApiResult<Written> {
        let mut obj = body;
        check_type_meta(info, &mut obj)?;
        set_namespace(info, ns, &mut obj)?;
        let generate = meta_str(&obj, "generateName").map(str::to_string);
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        if name.is_empty() && generate.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::invalid(
                info.group,
                info.kind,
                "",
                vec![FieldCause::required("metadata.name")],
            ));
        }
        let warnings = normalize(info, &mut obj, opts.validation)?;
        {
            let meta = meta_mut(&mut obj);
            meta.insert("uid".into(), json!(object::new_uid()));
            meta.insert("creationTimestamp".into(), json!(object::now()));
            for server_owned in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "selfLink",
                "generation",
                "managedFields",
            ] {
                meta.remove(server_owned);
            }
        }
        if let Some(ns) = ns
            && info.namespaced
        {
            admission::check_namespace(self.store.as_ref(), ns).await?;
            if info.plural == "pods" {
                let shown = if name.is_empty() {
                    generate.as_deref().unwrap_or("")
                } else {
                    &name
                };
                admission::serviceaccount::admit(self.store.as_ref(), ns, &mut obj, shown).await?;
            }
        }
        // A generated name can collide; kube retries with a fresh suffix.
        let attempts = if name.is_empty() { 5 } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            let mut candidate = obj.clone();
            if name.is_empty() {
                let generated = format!(
                    "{}{}",
                    generate.as_deref().unwrap_or(""),
                    object::name_suffix()
                );
                meta_mut(&mut candidate).insert("name".into(), json!(generated));
            }
            let cname = object::name(&candidate).to_string();
            admission::prepare_create(info, &mut candidate);
            defaults::apply_defaults(info.plural, &mut candidate);
            let causes = validation::validate(info, &candidate, None);
            if !causes.is_empty() {
                return Err(ApiError::invalid(info.group, info.kind, &cname, causes));
            }
            let claimed = self.allocate(info, &mut candidate, None).await?;
            if opts.dry_run {
                self.allocators.release(&claimed).await;
                return Ok(Written {
                    object: candidate,
                    created: true,
                    warnings,
                });
            }
            let key = info.key(ns.filter(|_| info.namespaced), &cname);
            match self.store.create(&key, encode(&candidate)?).await {
                Ok(kv) => {
                    return Ok(Written {
                        object: decode(&kv)?,
                        created: true,
                        warnings,
                    });
                }
                Err(e) => {
                    self.allocators.release(&claimed).await;
                    last_err = Some(ApiError::from_store(e, info.group, info.plural, &cname));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ApiError::internal("create failed")))
    }

    /// Read-modify-write with optimistic concurrency, as kube's GuaranteedUpdate: `mutate`
    /// turns the current object into the desired one; a lost race is retried unless the
    /// caller pinned a resourceVersion (then it is a 409 Conflict).
    #[allow(clippy::too_many_arguments)]
    async fn guaranteed_update<F>(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        opts: WriteOptions,
        create_if_missing: Option<Value>,
        mut mutate: F,
    ) -> ApiResult<Written>
    where
        F: FnMut(&Value) -> ApiResult<Value>,
    {
        let key = info.key(ns.filter(|_| info.namespaced), name);
        for _ in 0..MAX_RETRIES {
            let Some(kv) = self.current(info, ns, name).await? else {
                if let Some(body) = create_if_missing {
                    return self.create(info, ns, body, opts).await;
                }
                return Err(ApiError::not_found(info.group, info.plural, name));
            };
            let cur = decode(&kv)?;
            let desired = mutate(&cur)?;
            let pinned = object::parse_resource_version(meta_str(&desired, "resourceVersion"))?;
            if let Some(rv) = pinned
                && rv != kv.mod_revision
            {
                return Err(ApiError::from_store(
                    StoreError::Conflict {
                        key: key.clone(),
                        expected: rv,
                        actual: kv.mod_revision,
                    },
                    info.group,
                    info.plural,
                    name,
                ));
            }
            let (new, warnings) =
                self.prepare_update(info, ns, name, subresource, &cur, desired, opts)?;
            if strip_rv(&new) == strip_rv(&cur) {
                // Nothing changed: kube does not write (and the resourceVersion stays).
                return Ok(Written {
                    object: cur,
                    created: false,
                    warnings,
                });
            }
            let mut new = new;
            let claimed = self.allocate(info, &mut new, Some(&cur)).await?;
            if opts.dry_run {
                self.allocators.release(&claimed).await;
                return Ok(Written {
                    object: new,
                    created: false,
                    warnings,
                });
            }
            match self
                .store
                .update(&key, encode(&new)?, kv.mod_revision)
                .await
            {
                Ok(written) => {
                    if info.plural == "services" {
                        let freed =
                            ServiceAllocations::of(&cur).minus(&ServiceAllocations::of(&new));
                        self.allocators.release(&freed).await;
                    }
                    let object = decode(&written)?;
                    let object = self.finish_deletion(info, &key, object).await?;
                    return Ok(Written {
                        object,
                        created: false,
                        warnings,
                    });
                }
                Err(StoreError::Conflict { .. }) if pinned.is_none() => {
                    self.allocators.release(&claimed).await;
                    continue;
                }
                Err(e) => {
                    self.allocators.release(&claimed).await;
                    return Err(ApiError::from_store(e, info.group, info.plural, name));
                }
            }
        }
        Err(ApiError::conflict(
            info.group,
            info.plural,
            name,
            "too many concurrent writers; try again",
        ))
    }

    /// Checks and server-owned fields common to every update of an existing object.
    #[allow(clippy::too_many_arguments)]
    fn prepare_update(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        cur: &Value,
        desired: Value,
        opts: WriteOptions,
    ) -> ApiResult<(Value, Vec<String>)> {
        let mut new = desired;
        check_type_meta(info, &mut new)?;
        set_namespace(info, ns, &mut new)?;
        let body_name = meta_str(&new, "name").unwrap_or("");
        if body_name.is_empty() {
            meta_mut(&mut new).insert("name".into(), json!(name));
        } else if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let warnings = normalize(info, &mut new, opts.validation)?;
        keep_server_owned_metadata(cur, &mut new);
        // The main resource does not write status, and the status subresource writes only
        // status (kube's status strategies).
        if info.plural == "certificatesigningrequests" {
            new = csr_strategy::update_rules(subresource, cur, new);
        } else if info.has_status() {
            new = status_rules(subresource, cur, new);
        }
        if info.plural == "services" && subresource.is_none() {
            service_strategy::drop_type_dependent_fields(cur, &mut new);
            service_strategy::keep_health_check_node_port(cur, &mut new);
        }
        no_new_finalizers_while_deleting(info, name, cur, &new)?;
        // Namespace "defaults" (the `kubernetes` finalizer) belong to creation only: the
        // namespace controller hands the finalizer back through an update.
        if info.plural != "namespaces" {
            defaults::apply_defaults(info.plural, &mut new);
        }
        // A binding is the one way to set a pod's nodeName; it is checked as a whole pod, not
        // against the update rules that freeze the pod spec.
        let old = if subresource == Some("binding") {
            None
        } else {
            Some(cur)
        };
        let causes = validation::validate(info, &new, old);
        if !causes.is_empty() {
            return Err(ApiError::invalid(info.group, info.kind, name, causes));
        }
        bump_generation(cur, &mut new);
        Ok((new, warnings))
    }

    /// An object whose deletion is pending and whose last finalizer just went is removed
    /// (pods only once their grace period is over: the node agent deletes them with grace 0).
    async fn finish_deletion(
        &self,
        info: &ResourceInfo,
        key: &str,
        obj: Value,
    ) -> ApiResult<Value> {
        if !is_deleting(&obj) || !finalizers(&obj).is_empty() {
            return Ok(obj);
        }
        let grace = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if info.plural == "pods" && grace > 0 {
            return Ok(obj);
        }
        if info.plural == "namespaces"
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty())
        {
            return Ok(obj);
        }
        let rv = object::parse_resource_version(meta_str(&obj, "resourceVersion"))?;
        match self.store.delete(key, rv).await {
            Ok(kv) => {
                if info.plural == "services" {
                    self.allocators.release(&ServiceAllocations::of(&obj)).await;
                }
                decode(&kv)
            }
            // Someone else moved it on; what they wrote stands.
            Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => Ok(obj),
            Err(e) => Err(ApiError::from_store(
                e,
                info.group,
                info.plural,
                object::name(&obj),
            )),
        }
    }

    /// PUT on an object or its `status` subresource.
    pub async fn update(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        body: Value,
        opts: WriteOptions,
    ) -> ApiResult<Written> {
        // Endpoints, events and leases may be created by PUT (kube's AllowCreateOnUpdate).
        let create = matches!(info.plural, "endpoints" | "events" | "leases")
            .then(|| body.clone())
            .filter(|_| subresource.is_none());
        let unconditional =
            object::parse_resource_version(meta_str(&body, "resourceVersion"))?.is_none();
        let result = self
            .guaranteed_update(info, ns, name, subresource, opts, create, |_cur| {
                Ok(body.clone())
            })
            .await;
        match result {
            Ok(mut w) if w.created => {
                w.created = true;
                Ok(w)
            }
            Err(e) if e.code == 409 && unconditional => Err(e),
            other => other,
        }
    }

    /// PATCH on an object or its `status` subresource.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch_type: PatchType,
        body: &[u8],
        opts: WriteOptions,
    ) -> ApiResult<Written> {
        // Server-side apply of an object that does not exist yet creates it.
        let create = if patch_type == PatchType::Apply && subresource.is_none() {
            let empty = json!({});
            Some(patch::apply_patch(info.kind, &empty, patch_type, body)?)
        } else {
            None
        };
        self.guaranteed_update(info, ns, name, subresource, opts, create, |cur| {
            let mut patched = patch::apply_patch(info.kind, cur, patch_type, body)?;
            // A resourceVersion in the patch is a precondition; none means "whatever is there".
            if meta_str(&patched, "resourceVersion") == meta_str(cur, "resourceVersion") {
                meta_mut(&mut patched).remove("resourceVersion");
            }
            Ok(patched)
        })
        .await
    }

    /// The `scale` subresource of a Deployment or ReplicaSet, as autoscaling/v1 `Scale`; a
    /// selector kube cannot convert is a 400, as kube-apiserver's scale subresource has it.
    pub fn scale_of(info: &ResourceInfo, obj: &Value) -> ApiResult<Value> {
        let selector = obj
            .pointer("/spec/selector")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .map(
                |s: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
                    selector_string(&s)
                },
            )
            .transpose()?
            .unwrap_or_default();
        let _ = info;
        Ok(json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": object::name(obj),
                "namespace": meta_str(obj, "namespace"),
                "uid": meta_str(obj, "uid"),
                "resourceVersion": meta_str(obj, "resourceVersion"),
                "creationTimestamp": meta_str(obj, "creationTimestamp"),
            },
            "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
            "status": {
                "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
                "selector": selector,
            },
        }))
    }

    /// PUT or PATCH of `scale`: `scale` turns the current Scale into the desired one.
    pub async fn update_scale<F>(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: WriteOptions,
        mut scale: F,
    ) -> ApiResult<Value>
    where
        F: FnMut(&Value) -> ApiResult<Value>,
    {
        let written = self
            .guaranteed_update(info, ns, name, None, opts, None, |cur| {
                let desired = scale(&Self::scale_of(info, cur)?)?;
                let replicas = desired.pointer("/spec/replicas").ok_or_else(|| {
                    ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        vec![FieldCause::required("spec.replicas")],
                    )
                })?;
                let replicas = replicas
                    .as_i64()
                    .filter(|r| *r >= 0 && *r <= i64::from(i32::MAX))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "autoscaling",
                            "Scale",
                            name,
                            vec![FieldCause::invalid(
                                "spec.replicas",
                                replicas,
                                "must be greater than or equal to 0",
                            )],
                        )
                    })?;
                let mut new = cur.clone();
                new["spec"]["replicas"] = json!(replicas);
                if let Some(rv) = meta_str(&desired, "resourceVersion")
                    && Some(rv) != meta_str(cur, "resourceVersion")
                {
                    meta_mut(&mut new).insert("resourceVersion".into(), json!(rv));
                } else {
                    meta_mut(&mut new).remove("resourceVersion");
                }
                Ok(new)
            })
            .await?;
        Self::scale_of(info, &written.object)
    }

    /// `pods/binding`: assign a pod to a node (what the scheduler does).
    pub async fn bind(
        &self,
        pods: &'static ResourceInfo,
        ns: &str,
        pod: &str,
        binding: &Value,
        opts: WriteOptions,
    ) -> ApiResult<()> {
        let target = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "Binding",
                    pod,
                    vec![FieldCause::required("target.name")],
                )
            })?
            .to_string();
        if let Some(kind) = binding.pointer("/target/kind").and_then(Value::as_str)
            && !kind.is_empty()
            && kind != "Node"
        {
            return Err(ApiError::invalid(
                "",
                "Binding",
                pod,
                vec![FieldCause::not_supported(
                    "target.kind",
                    &json!(kind),
                    &["Node"],
                )],
            ));
        }
        self.guaranteed_update(pods, Some(ns), pod, Some("binding"), opts, None, |cur| {
            if is_deleting(cur) {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    pod,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            if let Some(node) = cur.pointer("/spec/nodeName").and_then(Value::as_str)
                && !node.is_empty()
            {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    pod,
                    format!("pod {pod} is already assigned to node \"{node}\""),
                ));
            }
            if let Some(uid) = binding.pointer("/metadata/uid").and_then(Value::as_str)
                && !uid.is_empty()
                && Some(uid) != meta_str(cur, "uid")
            {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    pod,
                    "the UID in the binding does not match the pod",
                ));
            }
            let mut new = cur.clone();
            new["spec"]["nodeName"] = json!(target);
            set_condition(
                &mut new,
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now()}),
            );
            meta_mut(&mut new).remove("resourceVersion");
            Ok(new)
        })
        .await?;
        Ok(())
    }

    /// `namespaces/<name>/finalize`: the namespace controller hands back its finalizer.
    pub async fn finalize_namespace(
        &self,
        info: &'static ResourceInfo,
        name: &str,
        body: &Value,
        opts: WriteOptions,
    ) -> ApiResult<Value> {
        let finalizers = body
            .pointer("/spec/finalizers")
            .cloned()
            .unwrap_or_else(|| json!([]));
        let written = self
            .guaranteed_update(info, None, name, Some("finalize"), opts, None, |cur| {
                let mut new = cur.clone();
                new["spec"]["finalizers"] = finalizers.clone();
                meta_mut(&mut new).remove("resourceVersion");
                Ok(new)
            })
            .await?;
        Ok(written.object)
    }

    pub async fn delete(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Deleted> {
        if info.plural == "namespaces" && SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let key = info.key(ns.filter(|_| info.namespaced), name);
        for _ in 0..MAX_RETRIES {
            let kv = self
                .current(info, ns, name)
                .await?
                .ok_or_else(|| ApiError::not_found(info.group, info.plural, name))?;
            let cur = decode(&kv)?;
            if let Some(uid) = &opts.precondition_uid
                && Some(uid.as_str()) != meta_str(&cur, "uid")
            {
                return Err(ApiError::conflict(
                    info.group,
                    info.plural,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&cur, "uid").unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = opts.precondition_rv
                && rv != kv.mod_revision
            {
                return Err(ApiError::conflict(
                    info.group,
                    info.plural,
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    ),
                ));
            }
            let (new, immediate) = plan_deletion(info, &cur, opts);
            if opts.dry_run {
                return Ok(if immediate {
                    Deleted::Gone(cur)
                } else {
                    Deleted::Pending(new)
                });
            }
            if immediate {
                match self.store.delete(&key, Some(kv.mod_revision)).await {
                    Ok(gone) => {
                        if info.plural == "services" {
                            self.allocators.release(&ServiceAllocations::of(&cur)).await;
                        }
                        return Ok(Deleted::Gone(decode(&gone)?));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(e, info.group, info.plural, name)),
                }
            }
            if strip_rv(&new) == strip_rv(&cur) {
                return Ok(Deleted::Pending(cur));
            }
            match self
                .store
                .update(&key, encode(&new)?, kv.mod_revision)
                .await
            {
                Ok(written) => return Ok(Deleted::Pending(decode(&written)?)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, info.group, info.plural, name)),
            }
        }
        Err(ApiError::conflict(
            info.group,
            info.plural,
            name,
            "too many concurrent writers; try again",
        ))
    }

    /// DELETE on a collection: every matching object, as if deleted one by one.
    pub async fn delete_collection(
        &self,
        info: &'static ResourceInfo,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<Vec<Value>> {
        let page = self
            .list(
                info,
                ns,
                &ListOptions {
                    limit: 0,
                    continue_token: None,
                    ..list.clone()
                },
            )
            .await?;
        let mut out = Vec::new();
        for obj in page.items {
            let name = object::name(&obj).to_string();
            let obj_ns = meta_str(&obj, "namespace").map(str::to_string);
            if info.plural == "namespaces" && SYSTEM_NAMESPACES.contains(&name.as_str()) {
                continue;
            }
            match self.delete(info, obj_ns.as_deref(), &name, opts).await {
                Ok(Deleted::Gone(o)) | Ok(Deleted::Pending(o)) => out.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Server-owned metadata never changes through an update.
fn keep_server_owned_metadata(cur: &Value, new: &mut Value) {
    let old_meta = cur.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let meta = meta_mut(new);
    for owned in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(owned) {
            Some(v) => meta.insert(owned.into(), v.clone()),
            None => meta.remove(owned),
        };
    }
    meta.remove("selfLink");
}

/// What an update of a resource with a status writes: through `status` only the status (and
/// labels and annotations), through the main resource everything but the status.
fn status_rules(subresource: Option<&str>, cur: &Value, mut new: Value) -> Value {
    match subresource {
        Some("status") => {
            let status = new.get("status").cloned();
            let mut only_status = cur.clone();
            match status {
                Some(s) => only_status["status"] = s,
                None => {
                    if let Some(o) = only_status.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            // Labels and annotations may change with status (kubelet does this).
            for field in ["labels", "annotations"] {
                if let Some(v) = new.pointer(&format!("/metadata/{field}")) {
                    meta_mut(&mut only_status).insert(field.into(), v.clone());
                }
            }
            only_status
        }
        // A binding sets nodeName and the PodScheduled condition in one write.
        Some("binding") => new,
        _ => {
            match cur.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            new
        }
    }
}

/// An object being deleted may lose finalizers but not gain any.
fn no_new_finalizers_while_deleting(
    info: &ResourceInfo,
    name: &str,
    cur: &Value,
    new: &Value,
) -> ApiResult<()> {
    if !is_deleting(cur) {
        return Ok(());
    }
    let old = finalizers(cur);
    let added: Vec<String> = finalizers(new)
        .into_iter()
        .filter(|f| !old.contains(f))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        info.group,
        info.kind,
        name,
        vec![FieldCause::forbidden(
            "metadata.finalizers",
            format!(
                "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
            ),
        )],
    ))
}

/// A spec change of an object that counts generations starts the next one.
fn bump_generation(cur: &Value, new: &mut Value) {
    if cur.pointer("/metadata/generation").is_some() && spec_of(new) != spec_of(cur) {
        let generation = cur
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(new).insert("generation".into(), json!(generation + 1));
    }
}

/// What deleting `cur` means: the object to write (with deletionTimestamp and finalizers) and
/// whether the key can go right away.
fn plan_deletion(info: &ResourceInfo, cur: &Value, opts: &DeleteOptions) -> (Value, bool) {
    let mut new = cur.clone();
    meta_mut(&mut new).remove("resourceVersion");
    let now = jiff::Timestamp::now();
    let mut immediate = true;
    match info.plural {
        "namespaces" => {
            // The namespace controller empties it and hands back the `kubernetes` finalizer.
            if !is_deleting(&new) {
                let meta = meta_mut(&mut new);
                meta.insert("deletionTimestamp".into(), json!(object::format_time(now)));
                meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            new["status"]["phase"] = json!("Terminating");
            let spec_finalizers = new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            immediate = !spec_finalizers;
        }
        "pods" => {
            let bound = cur
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let finished = matches!(
                cur.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            let existing = cur
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            let mut grace = opts
                .grace_period
                .or(existing)
                .or_else(|| {
                    cur.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0);
            // Nothing runs an unbound or finished pod, so nobody needs to confirm its end.
            if !bound || finished {
                grace = 0;
            }
            // A second delete may shorten the grace period, never lengthen it.
            if let Some(existing) = existing {
                grace = grace.min(existing);
            }
            if grace > 0 {
                let deadline = now + jiff::SignedDuration::from_secs(grace);
                let meta = meta_mut(&mut new);
                if existing != Some(grace) {
                    meta.insert(
                        "deletionTimestamp".into(),
                        json!(object::format_time(deadline)),
                    );
                    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
                }
                immediate = false;
            } else if is_deleting(cur) {
                meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
            }
        }
        _ => {}
    }
    if let Some(p) = opts.propagation {
        let wanted = match p {
            Propagation::Orphan => Some("orphan"),
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Background => None,
        };
        // Only the garbage collector acts on these, and only for objects that may own others.
        let owner_kind = !matches!(
            info.plural,
            "events" | "leases" | "endpoints" | "endpointslices"
        );
        if let Some(f) = wanted.filter(|_| owner_kind && !is_deleting(cur)) {
            let mut list = finalizers(&new);
            if !list.iter().any(|x| x == f) {
                list.push(f.to_string());
            }
            meta_mut(&mut new).insert("finalizers".into(), json!(list));
        }
    }
    if !finalizers(&new).is_empty() {
        immediate = false;
        let meta = meta_mut(&mut new);
        if meta.get("deletionTimestamp").is_none_or(Value::is_null) {
            meta.insert("deletionTimestamp".into(), json!(object::format_time(now)));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
    }
    (new, immediate)
}

/// Everything but metadata and status: what a change to bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn strip_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

fn set_condition(obj: &mut Value, condition: Value) {
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    let kind = condition["type"].clone();
    let conditions = obj["status"]
        .as_object_mut()
        .expect("made an object above")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("made an array above");
    match list.iter_mut().find(|c| c["type"] == kind) {
        Some(existing) => {
            if existing["status"] != condition["status"] {
                *existing = condition;
            }
        }
        None => list.push(condition),
    }
}

/// `kind` and `apiVersion` must name this resource; missing ones are filled in.
fn check_type_meta(info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    let api_version = info.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(info.kind),
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    Ok(())
}

fn set_namespace(info: &ResourceInfo, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
    let meta = meta_mut(obj);
    if !info.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let Some(ns) = ns else {
        return Err(ApiError::bad_request(
            "a namespaced object needs a namespace in the request path",
        ));
    };
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
        Some(n) if n == ns => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// Decode into the real wire type and back: wrong types are a 400, unknown fields are dropped
/// with a warning, or refused under `fieldValidation=Strict`.
fn normalize(
    info: &ResourceInfo,
    obj: &mut Value,
    validation: FieldValidation,
) -> ApiResult<Vec<String>> {
    let normalized = (info.normalize)(obj.clone()).map_err(|e| {
        ApiError::bad_request(format!("{} in body cannot be decoded: {e}", info.kind))
    })?;
    let unknown = if validation == FieldValidation::Ignore {
        Vec::new()
    } else {
        resources::unknown_fields(obj, &normalized)
    };
    *obj = normalized;
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if validation == FieldValidation::Strict && !messages.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        )));
    }
    Ok(messages)
}

/// `app=web,tier in (a,b)` for a LabelSelector, as kube prints it. A selector kube cannot
/// convert (an unknown operator, `In` without values, `Exists` with values) is a 400, never
/// a text that leaves the bad requirement out and so selects more.
pub fn selector_string(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> ApiResult<String> {
    skiff_common::selector::selector_string(sel).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn encode_continue(revision: Revision, key: &str, prefix: &str) -> String {
    let token = json!({"v": "skiff.continue/v1", "rv": revision, "start": &key[prefix.len().min(key.len())..]});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(Revision, String)> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = v["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    if start.contains("..") {
        return Err(bad());
    }
    Ok((rev, format!("{prefix}{start}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/pods/default/web-1", "/registry/pods/");
        assert_eq!(
            decode_continue(&t, "/registry/pods/").unwrap(),
            (42, "/registry/pods/default/web-1".to_string())
        );
        assert_eq!(
            decode_continue("!!", "/registry/pods/").unwrap_err().code,
            400
        );
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"rv":1,"start":"../../secrets/x"}"#);
        assert_eq!(
            decode_continue(&evil, "/registry/pods/").unwrap_err().code,
            400
        );
    }

    #[test]
    fn pods_on_a_node_get_a_grace_period_unbound_ones_go_at_once() {
        let pods = resources::lookup("", "v1", "pods").unwrap();
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30}});
        let (new, immediate) = plan_deletion(pods, &bound, &DeleteOptions::default());
        assert!(!immediate);
        assert_eq!(new["metadata"]["deletionGracePeriodSeconds"], 30);
        assert!(is_deleting(&new));
        let zero = DeleteOptions {
            grace_period: Some(0),
            ..Default::default()
        };
        assert!(plan_deletion(pods, &new, &zero).1);
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(plan_deletion(pods, &unbound, &DeleteOptions::default()).1);
    }

    #[test]
    fn finalizers_and_propagation_hold_deletion() {
        let deps = resources::lookup("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d"}});
        let fg = DeleteOptions {
            propagation: Some(Propagation::Foreground),
            ..Default::default()
        };
        let (new, immediate) = plan_deletion(deps, &d, &fg);
        assert!(!immediate);
        assert_eq!(new["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        assert!(plan_deletion(deps, &d, &DeleteOptions::default()).1);
        let ns = resources::lookup("", "v1", "namespaces").unwrap();
        let n = json!({"metadata": {"name": "x"}, "spec": {"finalizers": ["kubernetes"]}});
        let (new, immediate) = plan_deletion(ns, &n, &DeleteOptions::default());
        assert!(!immediate);
        assert_eq!(new["status"]["phase"], "Terminating");
    }

    #[test]
    fn selector_strings_match_kube() {
        let sel = serde_json::from_value(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}))
        .unwrap();
        assert_eq!(selector_string(&sel).unwrap(), "app=web,tier in (a,b)");
    }

    #[test]
    fn unknown_selector_operators_are_bad_requests_not_wider_selectors() {
        let sel = serde_json::from_value(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "Foo", "values": ["a"]}]}))
        .unwrap();
        let err = selector_string(&sel).unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert_eq!(
            err.message,
            r#""Foo" is not a valid label selector operator"#
        );
        let empty_in = serde_json::from_value(json!({
            "matchExpressions": [{"key": "tier", "operator": "In", "values": []}]}))
        .unwrap();
        assert_eq!(selector_string(&empty_in).unwrap_err().code, 400);

        // The scale subresource of an object with such a selector is a 400 too.
        let deps = resources::lookup("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2, "selector":
            {"matchExpressions": [{"key": "tier", "operator": "Foo", "values": ["a"]}]}}});
        assert_eq!(Registry::scale_of(deps, &d).unwrap_err().code, 400);
        let ok = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2, "selector":
            {"matchLabels": {"app": "web"}}}});
        assert_eq!(
            Registry::scale_of(deps, &ok).unwrap()["status"]["selector"],
            "app=web"
        );
    }
}
