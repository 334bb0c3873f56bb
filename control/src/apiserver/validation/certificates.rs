//! Validation of `certificates.k8s.io/v1` CertificateSigningRequests, as kube's
//! `pkg/apis/certificates/validation`: the request parses and is signed by its key, the signer
//! name is qualified, usages are known and unique, `expirationSeconds` is at least ten
//! minutes, Approved and Denied are exclusive and only ever True, and an issued certificate is
//! PEM certificates that no later write may change.

use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde_json::{Value, json};

use super::{dns1123_label_errors, dns1123_subdomain_errors};
use crate::apiserver::status::FieldCause;
use crate::csr;

const CONDITION_STATUSES: &[&str] = &["True", "False", "Unknown"];

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The bytes of a `[]byte` field (base64 in JSON); empty when absent or not base64.
pub fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// Validate a CSR for create (`old = None`) or any update (object, status or approval).
pub fn validate(obj: &Value, old: Option<&Value>, out: &mut Vec<FieldCause>) {
    let spec = &obj["spec"];
    if let Err(e) = csr::parse_pem(&bytes_of(&spec["request"])) {
        out.push(FieldCause::invalid(
            "spec.request",
            &json!("<request data>"),
            e,
        ));
    }
    usages(&spec["usages"], out);
    let signer = spec["signerName"].as_str().unwrap_or("");
    if signer == csr::LEGACY_UNKNOWN {
        out.push(FieldCause::invalid(
            "spec.signerName",
            &json!(signer),
            "the legacy signerName is not allowed via this API version",
        ));
    } else {
        signer_name("spec.signerName", signer, out);
    }
    if let Some(secs) = spec["expirationSeconds"].as_i64()
        && secs < 600
    {
        out.push(FieldCause::invalid(
            "spec.expirationSeconds",
            &json!(secs),
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    conditions(&obj["status"]["conditions"], out);
    if let Err(e) = certificate(&bytes_of(&obj["status"]["certificate"])) {
        out.push(FieldCause::invalid(
            "status.certificate",
            &json!("<certificate data>"),
            e,
        ));
    }
    if let Some(old) = old {
        kept_on_update(obj, old, out);
    }
}

fn usages(usages: &Value, out: &mut Vec<FieldCause>) {
    let list = arr(usages);
    if list.is_empty() {
        out.push(FieldCause {
            message: "Required value: usages must be provided".into(),
            ..FieldCause::required("spec.usages")
        });
    }
    for (i, u) in list.iter().enumerate() {
        let field = format!("spec.usages[{i}]");
        if !u.as_str().is_some_and(|s| csr::ALL_USAGES.contains(&s)) {
            out.push(FieldCause::not_supported(field.clone(), u, csr::ALL_USAGES));
        }
        if list[..i].contains(u) {
            out.push(FieldCause::duplicate(field, u));
        }
    }
}

/// kube's `ValidateSignerName`: `<domain with a dot>/<path of DNS-1123 subdomains>`.
pub fn signer_name(field: &str, signer: &str, out: &mut Vec<FieldCause>) {
    if signer.is_empty() {
        out.push(FieldCause::required(field));
        return;
    }
    let segments: Vec<&str> = signer.split('/').collect();
    if segments.len() != 2 {
        out.push(FieldCause::invalid(
            field,
            &json!(signer),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    let domain = segments[0];
    let labels: Vec<&str> = domain.split('.').collect();
    if let Some((label, errs)) = labels
        .iter()
        .map(|l| (l, dns1123_label_errors(l)))
        .find(|(_, e)| !e.is_empty())
    {
        for e in errs {
            out.push(FieldCause::invalid(
                field,
                &json!(domain),
                format!("validating label {label:?}: {e}"),
            ));
        }
    }
    if labels.len() < 2 {
        out.push(FieldCause::invalid(
            field,
            &json!(domain),
            "should be a domain with at least two segments separated by dots",
        ));
    }
    let Some(path) = segments.get(1) else {
        return;
    };
    if let Some((part, errs)) = path
        .split('.')
        .map(|p| (p, dns1123_subdomain_errors(p)))
        .find(|(_, e)| !e.is_empty())
    {
        for e in errs {
            out.push(FieldCause::invalid(
                field,
                &json!(path),
                format!("validating component {part:?}: {e}"),
            ));
        }
    }
}

fn conditions(conditions: &Value, out: &mut Vec<FieldCause>) {
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in arr(conditions).iter().enumerate() {
        let ty = c["type"].as_str().unwrap_or("");
        let status = c["status"].as_str().unwrap_or("");
        if ty.is_empty() {
            out.push(FieldCause::required(format!("status.conditions[{i}].type")));
        }
        if status.is_empty() {
            out.push(FieldCause::required(format!(
                "status.conditions[{i}].status"
            )));
        } else if !CONDITION_STATUSES.contains(&status) {
            out.push(FieldCause::not_supported(
                format!("status.conditions[{i}].status"),
                &c["status"],
                CONDITION_STATUSES,
            ));
        }
        if ty == "Approved" || ty == "Denied" {
            if ty == "Approved" {
                approved = true;
            } else {
                denied = true;
            }
            if status != "True" {
                out.push(FieldCause::invalid(
                    format!("status.conditions[{i}].status"),
                    &c["status"],
                    format!("{ty} condition may only be set to True"),
                ));
            }
        }
        if seen.contains(&ty) {
            out.push(FieldCause::duplicate(
                format!("status.conditions[{i}].type"),
                &c["type"],
            ));
        }
        seen.push(ty);
    }
    if approved && denied {
        out.push(FieldCause::invalid(
            "status.conditions",
            conditions,
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
}

/// kube's `validateCertificate`: empty, or only `CERTIFICATE` PEM blocks that parse.
fn certificate(pem: &[u8]) -> Result<(), String> {
    if pem.is_empty() {
        return Ok(());
    }
    let mut blocks = 0;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| format!("invalid PEM: {e}"))?;
        if kind != SectionKind::Certificate {
            return Err(format!(
                "only CERTIFICATE PEM blocks are allowed, found {kind:?}"
            ));
        }
        x509_parser::parse_x509_certificate(CertificateDer::from(der).as_ref())
            .map_err(|e| format!("x509: malformed certificate: {e}"))?;
        blocks += 1;
    }
    if blocks == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".into());
    }
    Ok(())
}

/// What an update may not undo: an issued certificate, and an Approved or Denied verdict.
fn kept_on_update(obj: &Value, old: &Value, out: &mut Vec<FieldCause>) {
    let before = &old["status"]["certificate"];
    if before.as_str().is_some_and(|s| !s.is_empty()) && obj["status"]["certificate"] != *before {
        out.push(FieldCause::invalid(
            "status.certificate",
            &json!("<certificate data>"),
            "updates may not modify existing certificate content",
        ));
    }
    for verdict in ["Approved", "Denied"] {
        let has = |v: &Value| {
            arr(&v["status"]["conditions"])
                .iter()
                .any(|c| c["type"] == verdict)
        };
        if has(old) && !has(obj) {
            out.push(FieldCause::forbidden(
                "status.conditions",
                format!("updates may not remove a condition of type {verdict:?}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(signer: &str) -> Vec<String> {
        let mut out = Vec::new();
        signer_name("spec.signerName", signer, &mut out);
        out.into_iter().map(|c| c.message).collect()
    }

    #[test]
    fn signer_names_are_qualified() {
        assert!(causes("example.com/my-signer").is_empty());
        assert!(causes(csr::KUBE_APISERVER_CLIENT).is_empty());
        assert_eq!(causes(""), vec!["Required value"]);
        assert!(causes("my-signer")[0].contains("must be a fully qualified domain and path"));
        assert!(causes("example/x")[0].contains("at least two segments"));
        assert!(causes("Example.com/x")[0].contains("validating label \"Example\""));
    }

    #[test]
    fn approved_and_denied_are_exclusive_and_true() {
        let mut out = Vec::new();
        conditions(
            &json!([{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]),
            &mut out,
        );
        assert!(out[0].message.contains("mutually exclusive"), "{out:?}");
        let mut out = Vec::new();
        conditions(&json!([{"type": "Approved", "status": "False"}]), &mut out);
        assert!(
            out[0].message.contains("may only be set to True"),
            "{out:?}"
        );
    }

    #[test]
    fn an_issued_certificate_and_a_verdict_stay() {
        let old = json!({"status": {"certificate": "Y2VydA==", "conditions": [{"type": "Approved", "status": "True"}]}});
        let mut out = Vec::new();
        kept_on_update(
            &json!({"status": {"certificate": "b3RoZXI="}}),
            &old,
            &mut out,
        );
        let messages: Vec<&str> = out.iter().map(|c| c.message.as_str()).collect();
        assert!(
            messages[0].contains("may not modify existing certificate"),
            "{messages:?}"
        );
        assert!(messages[1].contains("may not remove a condition of type \"Approved\""));
    }
}
