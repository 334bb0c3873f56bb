//! Asking the cluster for the node's client certificate (client-go's `csr.RequestCertificate`
//! and `WaitForCertificate`, as the kubelet uses them): a new ECDSA P-256 key, a PKCS#10
//! request for `CN=system:node:<name>, O=system:nodes`, a CertificateSigningRequest for the
//! signer `kubernetes.io/kube-apiserver-client-kubelet`, then waiting until it is issued,
//! denied or failed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::Digest;

use super::certstore::NodeCert;

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The usages kubelet asks for with an ECDSA key (`key encipherment` is for RSA keys only).
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];

/// How the request is named: the bootstrap request after its key (`node-csr-<digest>`, so a
/// retry with the same key finds its own request), a renewal by the API (`csr-<random>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Digested,
    Generated,
}

/// A key and the PEM request for the node's identity.
pub struct KeyAndRequest {
    pub key_pem: String,
    pub public_key_der: Vec<u8>,
    pub request_pem: String,
}

pub fn new_request(node_name: &str) -> Result<KeyAndRequest> {
    let key = rcgen::KeyPair::generate().context("generating the node key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let request = params
        .serialize_request(&key)
        .context("building the certificate request")?;
    Ok(KeyAndRequest {
        key_pem: key.serialize_pem(),
        public_key_der: rcgen::PublicKeyData::subject_public_key_info(&key),
        request_pem: request.pem().context("encoding the certificate request")?,
    })
}

/// The CertificateSigningRequest object for `req`.
pub fn csr_object(
    req: &KeyAndRequest,
    node_name: &str,
    naming: Naming,
) -> CertificateSigningRequest {
    let mut metadata = ObjectMeta::default();
    match naming {
        Naming::Digested => metadata.name = Some(digested_name(req, node_name)),
        Naming::Generated => metadata.generate_name = Some("csr-".into()),
    }
    CertificateSigningRequest {
        metadata,
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(req.request_pem.clone().into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(USAGES.iter().map(|u| u.to_string()).collect()),
            ..Default::default()
        },
        status: None,
    }
}

/// kubelet's `digestedName`: a hash of the public key, the subject and the usages.
fn digested_name(req: &KeyAndRequest, node_name: &str) -> String {
    let mut hash = sha2::Sha512::new();
    hash.update(&req.public_key_der);
    hash.update(format!(
        "system:node:{node_name}|system:nodes|{}",
        USAGES.join("|")
    ));
    let digest = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.finalize());
    format!("node-csr-{}", &digest[..43])
}

/// Submit a request for the node's certificate and wait (at most `timeout`) until it is
/// issued.
pub async fn request_node_certificate(
    client: &Client,
    node_name: &str,
    naming: Naming,
    timeout: Duration,
) -> Result<NodeCert> {
    let req = new_request(node_name)?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let object = csr_object(&req, node_name, naming);
    let name = match api.create(&PostParams::default(), &object).await {
        Ok(created) => created.metadata.name.unwrap_or_default(),
        // The same key asked before (a retry): wait for that request.
        Err(kube::Error::Api(s)) if s.code == 409 && naming == Naming::Digested => {
            object.metadata.name.unwrap_or_default()
        }
        Err(e) => return Err(e).context("creating the certificate signing request"),
    };
    tracing::info!(csr = %name, "waiting for the node client certificate to be approved and issued");
    let cert_pem = wait_for_certificate(&api, &name, timeout).await?;
    NodeCert::parse(&cert_pem, &req.key_pem)
        .with_context(|| format!("the certificate issued for {name}"))
}

/// What became of a request, once something did.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Issued(String),
    Denied(String),
    Failed(String),
}

pub fn outcome(csr: &CertificateSigningRequest) -> Option<Outcome> {
    let status = csr.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        let why = || {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        };
        match c.type_.as_str() {
            "Denied" if c.status == "True" => return Some(Outcome::Denied(why())),
            "Failed" if c.status == "True" => return Some(Outcome::Failed(why())),
            _ => {}
        }
    }
    let cert = status.certificate.as_ref().filter(|c| !c.0.is_empty())?;
    Some(Outcome::Issued(
        String::from_utf8_lossy(&cert.0).to_string(),
    ))
}

async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    timeout: Duration,
) -> Result<String> {
    let decided = |csr: Option<&CertificateSigningRequest>| csr.and_then(outcome).is_some();
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, decided),
    )
    .await;
    let csr = match waited {
        Err(_) => bail!(
            "timed out after {}s waiting for certificate signing request {name} to be approved \
             and issued (kubectl certificate approve {name})",
            timeout.as_secs()
        ),
        Ok(r) => r.with_context(|| format!("watching certificate signing request {name}"))?,
    };
    match csr.as_ref().and_then(outcome) {
        Some(Outcome::Issued(pem)) => Ok(pem),
        Some(Outcome::Denied(why)) => bail!("certificate signing request {name} was denied: {why}"),
        Some(Outcome::Failed(why)) => bail!("certificate signing request {name} failed: {why}"),
        None => bail!("certificate signing request {name} was deleted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;

    #[test]
    fn requests_the_nodes_identity() {
        let req = new_request("n1").unwrap();
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(
            req.request_pem.as_bytes(),
        )
        .unwrap();
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        let subject = parsed.certification_request_info.subject.to_string();
        assert!(subject.contains("CN=system:node:n1"), "{subject}");
        assert!(subject.contains("O=system:nodes"), "{subject}");
        let obj = csr_object(&req, "n1", Naming::Digested);
        assert_eq!(obj.spec.signer_name, SIGNER);
        let name = obj.metadata.name.unwrap();
        assert!(name.starts_with("node-csr-") && name.len() == 52, "{name}");
        assert_eq!(
            csr_object(&req, "n1", Naming::Generated)
                .metadata
                .generate_name
                .as_deref(),
            Some("csr-")
        );
    }

    fn with(conditions: &[(&str, &str)], cert: Option<&str>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                certificate: cert.map(|c| k8s_openapi::ByteString(c.as_bytes().to_vec())),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, s)| CertificateSigningRequestCondition {
                            type_: t.to_string(),
                            status: s.to_string(),
                            reason: Some("R".into()),
                            message: Some("m".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_outcome() {
        assert_eq!(outcome(&with(&[("Approved", "True")], None)), None);
        assert_eq!(
            outcome(&with(&[("Approved", "True")], Some("PEM"))),
            Some(Outcome::Issued("PEM".into()))
        );
        assert_eq!(
            outcome(&with(&[("Denied", "True")], None)),
            Some(Outcome::Denied("R: m".into()))
        );
        assert_eq!(
            outcome(&with(&[("Approved", "True"), ("Failed", "True")], None)),
            Some(Outcome::Failed("R: m".into()))
        );
        assert_eq!(outcome(&with(&[("Denied", "False")], None)), None);
    }
}
