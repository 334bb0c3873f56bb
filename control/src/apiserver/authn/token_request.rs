//! `POST serviceaccounts/<name>/token`: a `TokenRequest` (`authentication.k8s.io/v1`) answered
//! with a signed service-account token, as kube-apiserver's TokenREST does (`kubectl create
//! token`).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest};
use serde_json::{Value, json};

use super::serviceaccount::{BoundObject, Grant, ObjectRef, ServiceAccountTokens};
use crate::apiserver::object::meta_str;
use crate::apiserver::registry::Registry;
use crate::apiserver::resources;
use crate::apiserver::status::{ApiError, ApiResult, FieldCause};

pub const GROUP: &str = "authentication.k8s.io";
/// kube's defaults and bounds for `spec.expirationSeconds`.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

/// Issue a token for service account `name` in `ns` as `request` (the posted TokenRequest)
/// asks; the answer is the request with its defaults filled in and `status` set.
pub async fn create(
    registry: &Registry,
    tokens: &ServiceAccountTokens,
    ns: &str,
    name: &str,
    mut request: Value,
) -> ApiResult<Value> {
    // The status is the server's to write; a protobuf body carries an empty one whose zero
    // time does not decode as a TokenRequestStatus.
    if let Some(obj) = request.as_object_mut() {
        obj.remove("status");
    }
    let req: TokenRequest = serde_json::from_value(request)
        .map_err(|e| ApiError::bad_request(format!("the body is not a TokenRequest: {e}")))?;
    let sa = get(registry, "serviceaccounts", ns, name).await?;
    let mut spec = req.spec;
    if spec.audiences.is_empty() {
        spec.audiences = tokens.api_audiences().to_vec();
    }
    let expiration = spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION);
    validate_expiration(name, expiration)?;
    spec.expiration_seconds = Some(expiration);
    let bound = match &mut spec.bound_object_ref {
        Some(r) => Some(bound_object(registry, ns, name, r).await?),
        None => None,
    };
    let grant = Grant {
        namespace: ns.to_string(),
        service_account: ObjectRef {
            name: name.to_string(),
            uid: meta_str(&sa, "uid").unwrap_or_default().to_string(),
        },
        bound,
        audiences: spec.audiences.clone(),
        expiration: Duration::from_secs(expiration.unsigned_abs()),
    };
    let now = jiff::Timestamp::now().as_second();
    let (token, claims) = tokens
        .issue(&grant, now)
        .map_err(|e| ApiError::internal(format!("failed to sign the token: {e}")))?;
    let expires = jiff::Timestamp::from_second(claims.exp)
        .map_err(|e| ApiError::internal(format!("token expiry out of range: {e}")))?;
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": format!("{GROUP}/v1"),
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires.to_string()},
    }))
}

async fn get(registry: &Registry, plural: &str, ns: &str, name: &str) -> ApiResult<Value> {
    let info = resources::lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    registry.get(info, Some(ns), name).await
}

fn validate_expiration(name: &str, seconds: i64) -> ApiResult<()> {
    let detail = if seconds < MIN_EXPIRATION {
        "may not specify a duration less than 10 minutes"
    } else if seconds > MAX_EXPIRATION {
        "may not specify a duration larger than 2^32 seconds"
    } else {
        return Ok(());
    };
    let cause = FieldCause::invalid("spec.expirationSeconds", &json!(seconds), detail);
    let summary = format!("{}: {}", cause.field, cause.message);
    let mut e = ApiError::invalid(GROUP, "TokenRequest", name, vec![cause]);
    // kube names the kind with its group here: `TokenRequest.authentication.k8s.io "x"`.
    e.message = format!("TokenRequest.{GROUP} \"{name}\" is invalid: {summary}");
    Err(e)
}

/// The pod or secret a token is to be bound to: it must exist, have the uid the reference
/// names (if any), and for a pod run as this service account. Fills in the reference's uid.
async fn bound_object(
    registry: &Registry,
    ns: &str,
    sa_name: &str,
    r: &mut BoundObjectReference,
) -> ApiResult<BoundObject> {
    let kind = r.kind.as_deref().unwrap_or("");
    let api_version = r.api_version.as_deref().unwrap_or("v1");
    let obj_name = r.name.as_deref().unwrap_or("");
    let plural = match (api_version, kind) {
        ("v1" | "", "Pod") => "pods",
        ("v1" | "", "Secret") => "secrets",
        _ => {
            let gvk = format!("{api_version}, Kind={kind}");
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {gvk}"
            )));
        }
    };
    let obj = get(registry, plural, ns, obj_name).await?;
    let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
    if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty())
        && want != uid
    {
        return Err(ApiError::conflict(
            "",
            kind,
            obj_name,
            format!(
                "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    if plural == "pods" {
        // The ServiceAccount admission plugin makes an unset name `default`.
        let runs_as = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        if runs_as != sa_name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
            )));
        }
    }
    r.uid = Some(uid.clone());
    r.api_version = Some("v1".into());
    let object = ObjectRef {
        name: obj_name.to_string(),
        uid,
    };
    Ok(if plural == "pods" {
        BoundObject::Pod(object)
    } else {
        BoundObject::Secret(object)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_bounds_are_kubes() {
        assert!(validate_expiration("default", 600).is_ok());
        assert!(validate_expiration("default", 1 << 32).is_ok());
        let e = validate_expiration("default", 100).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "TokenRequest.authentication.k8s.io \"default\" is invalid: spec.expirationSeconds: Invalid value: 100: may not specify a duration less than 10 minutes"
        );
        assert!(validate_expiration("default", (1 << 32) + 1).is_err());
    }
}
