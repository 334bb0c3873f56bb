//! The server side of `certificates.k8s.io/v1` CertificateSigningRequests beyond plain
//! storage (kube's `pkg/registry/certificates` strategies and its certificates admission
//! plugins):
//!
//! - on create the requester's identity is written into `spec.username/uid/groups/extra` and
//!   any status dropped, and `kubernetes.io/kube-apiserver-client` may not ask for
//!   `system:masters` (CertificateSubjectRestriction);
//! - a write of the object changes only metadata, of `status` only the status (never the
//!   Approved/Denied verdict), of `approval` only the conditions ([`super::csr_strategy`]);
//! - approving or denying needs verb `approve` on `signers` (CertificateApproval), and issuing
//!   a certificate through `status` needs `sign` (CertificateSigning), for the signer name or
//!   `<domain>/*`.

use axum::body::Bytes;
use axum::http::Method;
use serde_json::{Value, json};

use super::authn::UserInfo;
use super::object;
use super::patch::{self, PatchType};
use super::rbac::Authorizer;
use super::rbac::attributes::forbidden_object;
use super::rbac::rules::Request;
use super::registry::Registry;
use super::request::ResourceRequest;
use super::status::{ApiError, ApiResult};
use super::validation::certificates::bytes_of;
use crate::csr;

pub const PLURAL: &str = "certificatesigningrequests";
const MASTERS: &str = "system:masters";

/// Whether `r` is a request to CertificateSigningRequests.
pub fn is_csr(r: &ResourceRequest) -> bool {
    r.info.group == csr::GROUP && r.info.plural == PLURAL
}

/// The admission of a write to CSRs: `Some(body)` when the body was rewritten (as JSON).
pub async fn admit(
    rbac: &Authorizer,
    registry: &Registry,
    user: &UserInfo,
    method: &Method,
    r: &ResourceRequest,
    content_type: Option<&str>,
    body: &Bytes,
) -> ApiResult<Option<Bytes>> {
    let sub = r.subresource.as_deref();
    match (method, r.name.as_deref(), sub) {
        (&Method::POST, None, None) => {
            let mut obj = object::parse_body(content_type, body)?;
            on_create(&mut obj, user);
            restrict_subject(&obj)?;
            let json = serde_json::to_vec(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(Some(Bytes::from(json)))
        }
        (&Method::PUT | &Method::PATCH, Some(name), Some("approval")) => {
            let cur = registry.get(r.info, None, name).await?;
            let signer = signer_of(&cur);
            permitted(rbac, user, "approve", &signer, name)?;
            Ok(None)
        }
        (&Method::PUT | &Method::PATCH, Some(name), Some("status")) => {
            let cur = registry.get(r.info, None, name).await?;
            let new = written(method, &cur, content_type, body)?;
            if new["status"]["certificate"] != cur["status"]["certificate"]
                && !bytes_of(&new["status"]["certificate"]).is_empty()
            {
                permitted(rbac, user, "sign", &signer_of(&cur), name)?;
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn signer_of(obj: &Value) -> String {
    obj["spec"]["signerName"].as_str().unwrap_or("").to_string()
}

/// The object a PUT or PATCH of `status` would leave (before the update rules).
fn written(
    method: &Method,
    cur: &Value,
    content_type: Option<&str>,
    body: &Bytes,
) -> ApiResult<Value> {
    if method == Method::PUT {
        return object::parse_body(content_type, body);
    }
    let ct = content_type.unwrap_or("");
    let patch_type =
        PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
    patch::apply_patch("CertificateSigningRequest", cur, patch_type, body)
}

/// kube's `csrStrategy.PrepareForCreate`: the requester as the server authenticated them, and
/// no status (nobody creates a pre-approved request).
pub fn on_create(obj: &mut Value, user: &UserInfo) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(user.name);
    spec["uid"] = json!(user.uid);
    spec["groups"] = json!(user.groups);
    spec["extra"] = json!(user.extra);
    for empty in ["uid", "groups", "extra"] {
        let blank = match &spec[empty] {
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => true,
        };
        if blank && let Some(o) = spec.as_object_mut() {
            o.remove(empty);
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
}

/// kube's CertificateSubjectRestriction admission: the client signer never issues
/// `system:masters` certificates.
fn restrict_subject(obj: &Value) -> ApiResult<()> {
    if signer_of(obj) != csr::KUBE_APISERVER_CLIENT {
        return Ok(());
    }
    // An unparsable request is validation's to report.
    let Ok(req) = csr::parse_pem(&bytes_of(&obj["spec"]["request"])) else {
        return Ok(());
    };
    if req.organizations.iter().any(|o| o == MASTERS) {
        return Err(forbidden_object(
            csr::GROUP,
            PLURAL,
            object::name(obj),
            &format!(
                "use of {} signer with {MASTERS} group is not allowed",
                csr::KUBE_APISERVER_CLIENT
            ),
        ));
    }
    Ok(())
}

/// kube's `certificates.IsAuthorizedForSignerName`: `verb` on `signers` named `signer`, or
/// `<domain>/*`.
fn permitted(
    rbac: &Authorizer,
    user: &UserInfo,
    verb: &str,
    signer: &str,
    csr_name: &str,
) -> ApiResult<()> {
    let ask = |name: &str| Request::Resource {
        verb: verb.to_string(),
        group: csr::GROUP.to_string(),
        resource: "signers".to_string(),
        subresource: String::new(),
        name: name.to_string(),
        namespace: String::new(),
    };
    let wildcard = signer
        .split_once('/')
        .map(|(domain, _)| format!("{domain}/*"));
    if rbac.allows(user, &ask(signer)) || wildcard.is_some_and(|w| rbac.allows(user, &ask(&w))) {
        return Ok(());
    }
    Err(forbidden_object(
        csr::GROUP,
        PLURAL,
        csr_name,
        &format!("user not permitted to {verb} requests with signerName {signer:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            uid: "u1".into(),
            groups: vec!["dev".into(), "system:authenticated".into()],
            extra: Default::default(),
        }
    }

    #[test]
    fn the_requester_is_the_authenticated_user() {
        let mut obj = json!({"spec": {"username": "root", "groups": ["system:masters"], "signerName": "example.com/x"},
            "status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        on_create(&mut obj, &user());
        assert_eq!(obj["spec"]["username"], "alice");
        assert_eq!(obj["spec"]["uid"], "u1");
        assert_eq!(
            obj["spec"]["groups"],
            json!(["dev", "system:authenticated"])
        );
        assert!(obj["spec"].get("extra").is_none());
        assert!(obj.get("status").is_none());
        assert_eq!(obj["spec"]["signerName"], "example.com/x");
    }
}
