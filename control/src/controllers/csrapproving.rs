//! CSR approving controller (kube-controller-manager's `csrapproving`, its `sarApprover`):
//! approves the node client requests of signer `kubernetes.io/kube-apiserver-client-kubelet`
//! whose requester may have them. A request is recognized as a node's client certificate
//! (kube's `IsKubeletClientCSR`) and, when its CN is the requester's own name, as a renewal
//! (`selfnodeclient`); for each way it is recognized, in that order, a SubjectAccessReview asks
//! whether the requester (the CSR's `spec.username/uid/groups/extra`) may `create`
//! `certificatesigningrequests/<selfnodeclient|nodeclient>`. The first allowed one approves;
//! if none does the request is left pending (and looked at again with back-off, so a binding
//! created later still approves it), for a person or another approver to decide.

use std::sync::Arc;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use kube::api::{Api, PostParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use tokio::task::JoinSet;

use crate::csr;
use crate::runtime::{self, Context, Error, Result};

const AUTO_APPROVED: &str = "AutoApproved";

/// One way a request may be auto-approved (kube's `csrRecognizer`).
struct Recognizer {
    /// The subresource of `certificatesigningrequests` the requester needs `create` on.
    subresource: &'static str,
    recognize: fn(&CertificateSigningRequest, &csr::Request) -> bool,
    message: &'static str,
}

/// kube's recognizers, in kube's order: a renewal by the node itself first.
const RECOGNIZERS: [Recognizer; 2] = [
    Recognizer {
        subresource: "selfnodeclient",
        recognize: is_self_node_client,
        message: "Auto approving self kubelet client certificate after SubjectAccessReview.",
    },
    Recognizer {
        subresource: "nodeclient",
        recognize: is_node_client,
        message: "Auto approving kubelet client certificate after SubjectAccessReview.",
    },
];

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    let informer = &ctx.informers.certificate_signing_requests;
    let controller = Controller::for_shared_stream(informer.subscribe(), informer.store());
    runtime::drive("csrapproving", controller, ctx, 2, reconcile, tasks);
}

async fn reconcile(obj: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action> {
    let tried = recognized(&obj).map_err(|e| {
        let name = obj.metadata.name.as_deref().unwrap_or("");
        Error::other(format!("unable to parse csr {name:?}: {e}"))
    })?;
    for recognizer in &tried {
        if authorized(&ctx, &obj, recognizer).await? {
            approve(&ctx, &obj, recognizer.message).await?;
            return Ok(runtime::done(obj.as_ref(), &ctx));
        }
    }
    if tried.is_empty() {
        return Ok(runtime::done(obj.as_ref(), &ctx));
    }
    // kube's `IgnorableError`: retried with the queue's back-off, logged quietly.
    let key = runtime::key_of(obj.as_ref());
    let subresources: Vec<&str> = tried.iter().map(|r| r.subresource).collect();
    tracing::debug!(csr = %key, tried = ?subresources, "recognized but the subject access review was not approved");
    Ok(Action::requeue(ctx.backoff.failed(&key)))
}

/// The recognizers that match a request still waiting for a verdict, in order (kube's
/// `sarApprover.handle` up to the reviews); none for an issued or decided request.
fn recognized(obj: &CertificateSigningRequest) -> Result<Vec<&'static Recognizer>, String> {
    let status = obj.status.clone().unwrap_or_default();
    let issued = status.certificate.as_ref().is_some_and(|c| !c.0.is_empty());
    // kube looks at the type only (`GetCertApprovalCondition`).
    let decided = status
        .conditions
        .iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"));
    if issued || decided {
        return Ok(Vec::new());
    }
    let req = csr::parse_pem(&obj.spec.request.0)?;
    Ok(RECOGNIZERS
        .iter()
        .filter(|r| (r.recognize)(obj, &req))
        .collect())
}

/// kube's `isNodeClientCert`: the kubelet client signer, and a request that signer signs.
fn is_node_client(obj: &CertificateSigningRequest, req: &csr::Request) -> bool {
    let usages = obj.spec.usages.clone().unwrap_or_default();
    obj.spec.signer_name == csr::KUBE_APISERVER_CLIENT_KUBELET
        && csr::validate_kubelet_client(req, &usages).is_ok()
}

/// kube's `isSelfNodeClientCert`: a node client request for the requester's own name.
fn is_self_node_client(obj: &CertificateSigningRequest, req: &csr::Request) -> bool {
    obj.spec.username.as_deref() == Some(req.common_name.as_str()) && is_node_client(obj, req)
}

/// The review asking whether the requester may what `recognizer` needs (kube's
/// `sarApprover.authorize`).
fn access_review(obj: &CertificateSigningRequest, recognizer: &Recognizer) -> SubjectAccessReview {
    let spec = &obj.spec;
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username.clone(),
            uid: spec.uid.clone(),
            groups: spec.groups.clone(),
            extra: spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(csr::GROUP.into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(recognizer.subresource.into()),
                verb: Some("create".into()),
                version: Some("*".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn authorized(
    ctx: &Context,
    obj: &CertificateSigningRequest,
    recognizer: &Recognizer,
) -> Result<bool> {
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let review = api
        .create(&PostParams::default(), &access_review(obj, recognizer))
        .await?;
    Ok(review.status.is_some_and(|s| s.allowed))
}

/// The request with kube's `AutoApproved` condition appended (the server stamps its times).
fn approved(obj: &CertificateSigningRequest, message: &str) -> CertificateSigningRequest {
    let mut updated = obj.clone();
    updated
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some(AUTO_APPROVED.into()),
            message: Some(message.into()),
            ..Default::default()
        });
    updated
}

/// `PUT approval` guarded by the resource version read (kube's `UpdateApproval`); a conflict
/// or a vanished request is left to the next event.
async fn approve(ctx: &Context, obj: &CertificateSigningRequest, message: &str) -> Result<()> {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let name = obj.metadata.name.clone().unwrap_or_default();
    let body = approved(obj, message);
    match api
        .replace_subresource("approval", &name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE_USAGES: &[&str] = &["digital signature", "client auth"];

    fn request_pem(cn: &str, orgs: &[&str], dns: &[&str]) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr_of(
        username: &str,
        signer: &str,
        pem: &str,
        usages: &[&str],
    ) -> CertificateSigningRequest {
        serde_json::from_value(json!({
            "metadata": {"name": "r"},
            "spec": {
                "request": base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD, pem),
                "signerName": signer,
                "usages": usages,
                "username": username,
                "uid": "u-1",
                "groups": ["system:bootstrappers", "system:authenticated"],
                "extra": {"k": ["v"]},
            },
        }))
        .unwrap()
    }

    fn node_csr(username: &str, cn: &str) -> CertificateSigningRequest {
        let pem = request_pem(cn, &["system:nodes"], &[]);
        csr_of(
            username,
            csr::KUBE_APISERVER_CLIENT_KUBELET,
            &pem,
            NODE_USAGES,
        )
    }

    fn subresources(obj: &CertificateSigningRequest) -> Vec<&'static str> {
        recognized(obj)
            .unwrap()
            .iter()
            .map(|r| r.subresource)
            .collect()
    }

    #[test]
    fn node_client_requests_are_recognized_in_kubes_order() {
        let renewal = node_csr("system:node:n1", "system:node:n1");
        assert_eq!(subresources(&renewal), ["selfnodeclient", "nodeclient"]);
        let bootstrap = node_csr("system:bootstrap:abcdef", "system:node:n1");
        assert_eq!(subresources(&bootstrap), ["nodeclient"]);
        let rsa = csr_of(
            "system:bootstrap:abcdef",
            csr::KUBE_APISERVER_CLIENT_KUBELET,
            &request_pem("system:node:n1", &["system:nodes"], &[]),
            &["key encipherment", "digital signature", "client auth"],
        );
        assert_eq!(subresources(&rsa), ["nodeclient"]);
    }

    #[test]
    fn other_requests_are_not_recognized() {
        let kubelet = csr::KUBE_APISERVER_CLIENT_KUBELET;
        let cases = [
            // Another signer, even for a node's subject.
            csr_of(
                "system:node:n1",
                csr::KUBE_APISERVER_CLIENT,
                &request_pem("system:node:n1", &["system:nodes"], &[]),
                NODE_USAGES,
            ),
            // Not only system:nodes.
            csr_of(
                "system:bootstrap:abcdef",
                kubelet,
                &request_pem("system:node:n1", &["system:masters"], &[]),
                NODE_USAGES,
            ),
            csr_of(
                "system:bootstrap:abcdef",
                kubelet,
                &request_pem("system:node:n1", &["system:nodes", "system:masters"], &[]),
                NODE_USAGES,
            ),
            // Not a node's name.
            csr_of(
                "alice",
                kubelet,
                &request_pem("alice", &["system:nodes"], &[]),
                NODE_USAGES,
            ),
            // A SAN.
            csr_of(
                "system:node:n1",
                kubelet,
                &request_pem("system:node:n1", &["system:nodes"], &["n1.example"]),
                NODE_USAGES,
            ),
            // Serving usages.
            csr_of(
                "system:node:n1",
                kubelet,
                &request_pem("system:node:n1", &["system:nodes"], &[]),
                &["digital signature", "server auth"],
            ),
        ];
        for (i, obj) in cases.iter().enumerate() {
            assert!(subresources(obj).is_empty(), "case {i}");
        }
    }

    #[test]
    fn decided_or_issued_requests_are_left_alone() {
        for ty in ["Approved", "Denied", "Failed"] {
            let mut obj = node_csr("system:node:n1", "system:node:n1");
            obj.status = Some(
                serde_json::from_value(json!({
                "conditions": [{"type": ty, "status": "False"}]}))
                .unwrap(),
            );
            assert!(subresources(&obj).is_empty(), "{ty}");
        }
        let mut obj = node_csr("system:node:n1", "system:node:n1");
        obj.status = Some(serde_json::from_value(json!({"certificate": "AAAA"})).unwrap());
        assert!(subresources(&obj).is_empty());
    }

    #[test]
    fn an_unparsable_request_is_an_error() {
        let obj = csr_of(
            "system:node:n1",
            csr::KUBE_APISERVER_CLIENT_KUBELET,
            "not a request",
            NODE_USAGES,
        );
        assert!(recognized(&obj).is_err());
    }

    #[test]
    fn the_review_asks_about_the_requester() {
        let obj = node_csr("system:bootstrap:abcdef", "system:node:n1");
        let review = serde_json::to_value(access_review(&obj, &RECOGNIZERS[1])).unwrap();
        assert_eq!(
            review["spec"],
            json!({
                "user": "system:bootstrap:abcdef",
                "uid": "u-1",
                "groups": ["system:bootstrappers", "system:authenticated"],
                "extra": {"k": ["v"]},
                "resourceAttributes": {
                    "group": "certificates.k8s.io",
                    "resource": "certificatesigningrequests",
                    "subresource": "nodeclient",
                    "verb": "create",
                    "version": "*",
                },
            })
        );
    }

    #[test]
    fn approval_appends_kubes_condition() {
        let obj = node_csr("system:node:n1", "system:node:n1");
        let out = approved(&obj, RECOGNIZERS[0].message);
        let conditions = out.status.unwrap().conditions.unwrap();
        assert_eq!(conditions.len(), 1);
        let c = &conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Approved", "True"));
        assert_eq!(c.reason.as_deref(), Some("AutoApproved"));
        assert_eq!(
            c.message.as_deref(),
            Some("Auto approving self kubelet client certificate after SubjectAccessReview.")
        );
        assert_eq!(out.spec, obj.spec);
    }
}
