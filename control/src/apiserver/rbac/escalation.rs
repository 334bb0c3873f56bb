//! Escalation prevention, as kube's RBAC storage does it: a Role or ClusterRole may only be
//! written with rules its author holds (in that namespace) unless they may `escalate` it, and
//! a binding only to a role whose rules its author holds unless they may `bind` it.
//! `system:masters` skips both checks.

use axum::http::Method;
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;

use super::attributes::forbidden_object;
use super::authorizer::{Authorizer, is_master};
use super::bootstrap::GROUP;
use super::rules::{self, Request, compact, compact_string, go_quoted};
use crate::apiserver::authn::UserInfo;
use crate::apiserver::object;
use crate::apiserver::patch::{self, PatchType};
use crate::apiserver::registry::Registry;
use crate::apiserver::request::ResourceRequest;
use crate::apiserver::status::{ApiError, ApiResult};

/// A write as the admission checks (escalation, NodeRestriction) see it: the request and its
/// raw body, before the registry decodes it.
pub struct Write<'a> {
    pub method: &'a Method,
    pub request: &'a ResourceRequest,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// The object a write would store (`None` when the handler will refuse it anyway, e.g. a
/// patch of a missing object: its own error is the better answer).
async fn proposed(registry: &Registry, w: &Write<'_>) -> ApiResult<(Option<Value>, Option<Value>)> {
    let r = w.request;
    let ns = r.namespace.as_deref();
    let old = match r.name.as_deref() {
        Some(name) => registry.get(r.info, ns, name).await.ok(),
        None => None,
    };
    let new = match *w.method {
        Method::POST | Method::PUT => Some(object::parse_body(w.content_type, w.body)?),
        Method::PATCH => {
            let ct = w.content_type.unwrap_or("");
            let patch_type = PatchType::from_content_type(ct)
                .ok_or_else(|| ApiError::unsupported_media_type(ct))?;
            match &old {
                Some(o) => Some(patch::apply_patch(r.info.kind, o, patch_type, w.body)?),
                None => None,
            }
        }
        _ => None,
    };
    Ok((old, new))
}

/// Refuse an RBAC write that would grant more than its author holds.
pub async fn check(
    authorizer: &Authorizer,
    registry: &Registry,
    user: &UserInfo,
    w: &Write<'_>,
) -> ApiResult<()> {
    let r = w.request;
    let writes = matches!(*w.method, Method::POST | Method::PUT | Method::PATCH);
    if r.info.group != GROUP || !writes || r.subresource.is_some() || is_master(user) {
        return Ok(());
    }
    let (old, Some(new)) = proposed(registry, w).await? else {
        return Ok(());
    };
    let ns = r.namespace.clone().unwrap_or_default();
    let name = object::name(&new).to_string();
    match r.info.plural {
        "roles" | "clusterroles" => check_role(authorizer, user, r, &ns, &name, old.as_ref(), &new),
        _ => check_binding(authorizer, user, r, &ns, &name, &new),
    }
}

/// Everything: what a ClusterRole with an aggregationRule may come to hold.
fn full_authority() -> Vec<PolicyRule> {
    let all = || Some(vec![rules::ALL.to_string()]);
    vec![
        PolicyRule {
            verbs: vec![rules::ALL.into()],
            api_groups: all(),
            resources: all(),
            ..Default::default()
        },
        PolicyRule {
            verbs: vec![rules::ALL.into()],
            non_resource_urls: all(),
            ..Default::default()
        },
    ]
}

fn check_role(
    authorizer: &Authorizer,
    user: &UserInfo,
    r: &ResourceRequest,
    ns: &str,
    name: &str,
    old: Option<&Value>,
    new: &Value,
) -> ApiResult<()> {
    let unchanged = old.is_some_and(|o| {
        o["rules"] == new["rules"] && o["aggregationRule"] == new["aggregationRule"]
    });
    if unchanged || may(authorizer, user, "escalate", r.info.plural, ns, name) {
        return Ok(());
    }
    let wanted = if new["aggregationRule"].is_object() {
        full_authority()
    } else {
        serde_json::from_value(new["rules"].clone()).unwrap_or_default()
    };
    confirm_no_escalation(authorizer, user, ns, &wanted)
        .map_err(|reason| forbidden_object(GROUP, r.info.plural, name, &reason))
}

fn check_binding(
    authorizer: &Authorizer,
    user: &UserInfo,
    r: &ResourceRequest,
    ns: &str,
    name: &str,
    new: &Value,
) -> ApiResult<()> {
    let role: RoleRef = serde_json::from_value(new["roleRef"].clone()).unwrap_or_default();
    let role_plural = if role.kind == "Role" {
        "roles"
    } else {
        "clusterroles"
    };
    if may(authorizer, user, "bind", role_plural, ns, &role.name) {
        return Ok(());
    }
    let deny = |reason: String| forbidden_object(GROUP, r.info.plural, name, &reason);
    let scope = r.namespace.as_deref();
    let rules = authorizer
        .index()
        .role_rules(&role, scope)
        .ok_or_else(|| deny(Authorizer::missing_role(&role)))?;
    confirm_no_escalation(authorizer, user, ns, &rules).map_err(deny)
}

/// Whether `user` may `verb` (`escalate`, `bind`) the named role.
fn may(
    authorizer: &Authorizer,
    user: &UserInfo,
    verb: &str,
    plural: &str,
    ns: &str,
    name: &str,
) -> bool {
    authorizer.allows(
        user,
        &Request::Resource {
            verb: verb.into(),
            group: GROUP.into(),
            resource: plural.into(),
            subresource: String::new(),
            name: name.into(),
            namespace: ns.into(),
        },
    )
}

/// kube's `ConfirmNoEscalation`: the rules `user` holds in `ns` must cover `wanted`; the error
/// lists the missing ones.
fn confirm_no_escalation(
    authorizer: &Authorizer,
    user: &UserInfo,
    ns: &str,
    wanted: &[PolicyRule],
) -> Result<(), String> {
    let held = authorizer.index().rules_for(user, ns);
    let missing = rules::uncovered(&held, wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let mut lines: Vec<String> = compact(missing).iter().map(compact_string).collect();
    lines.sort();
    lines.dedup();
    Err(format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        go_quoted(&user.groups),
        lines.join("\n")
    ))
}
