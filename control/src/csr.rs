//! What the certificates API knows about a PKCS#10 request, shared by its validation in the
//! API server and the signers among the controllers (a leaf, as [`crate::api_resources`]):
//! parsing with the proof of possession checked, the well-known signer names, the key usages
//! kube accepts, and the rules of the client signers (kube's `capihelper`).

use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

pub const GROUP: &str = "certificates.k8s.io";
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
pub const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// Every `spec.usages` value kube accepts, sorted (its `allValidUsages`).
pub const ALL_USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// The facts of a request the signers judge it by.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request's DER (PKCS#10).
    pub der: Vec<u8>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: usize,
    pub ip_addresses: usize,
    pub emails: usize,
    pub uris: usize,
}

/// kube's `ParseCSR` plus `CheckSignature`: one `CERTIFICATE REQUEST` PEM block holding a
/// request signed by the key it carries. The error is kube's text.
pub fn parse_pem(pem: &[u8]) -> Result<Request, String> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let der = der.as_ref().to_vec();
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
    req.verify_signature()
        .map_err(|e| format!("x509: certificate request signature is invalid: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_string).unwrap_or_default()
    };
    let mut out = Request {
        common_name: subject
            .iter_common_name()
            .next()
            .map(text)
            .unwrap_or_default(),
        organizations: subject.iter_organization().map(text).collect(),
        dns_names: 0,
        ip_addresses: 0,
        emails: 0,
        uris: 0,
        der: Vec::new(),
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(_) => out.dns_names += 1,
                    GeneralName::IPAddress(_) => out.ip_addresses += 1,
                    GeneralName::RFC822Name(_) => out.emails += 1,
                    GeneralName::URI(_) => out.uris += 1,
                    _ => {}
                }
            }
        }
    }
    out.der = der;
    Ok(out)
}

/// kube's `ValidateKubeletClientCSR`: what `kubernetes.io/kube-apiserver-client-kubelet`
/// signs. The error is kube's text.
pub fn validate_kubelet_client(req: &Request, usages: &[String]) -> Result<(), String> {
    if req.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if req.dns_names > 0 {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if req.emails > 0 {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if req.ip_addresses > 0 {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if req.uris > 0 {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !req.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    let mut set: Vec<&str> = usages.iter().map(String::as_str).collect();
    set.sort_unstable();
    set.dedup();
    let with_rsa = ["client auth", "digital signature", "key encipherment"];
    let without_rsa = ["client auth", "digital signature"];
    if set != with_rsa && set != without_rsa {
        // Go prints the sorted set as `[a b c]`.
        return Err(format!("usages did not match [{}]", with_rsa.join(" ")));
    }
    Ok(())
}

/// What `kubernetes.io/kube-apiserver-client` signs: client auth, optionally digital
/// signature and key encipherment (kube's `validAPIServerClientUsages`).
pub fn validate_apiserver_client_usages(usages: &[String]) -> Result<(), String> {
    let mut client_auth = false;
    for u in usages {
        match u.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return Err(format!("invalid usage for client certificate: {other}")),
        }
    }
    if !client_auth {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usages(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    fn request(cn: &str, orgs: &[&str]) -> Request {
        Request {
            der: Vec::new(),
            common_name: cn.into(),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            dns_names: 0,
            ip_addresses: 0,
            emails: 0,
            uris: 0,
        }
    }

    #[test]
    fn kubelet_client_requests_are_judged_as_kube_does() {
        let ok = request("system:node:n1", &["system:nodes"]);
        let u = usages(&["digital signature", "client auth"]);
        assert_eq!(validate_kubelet_client(&ok, &u), Ok(()));
        let rsa = usages(&["key encipherment", "digital signature", "client auth"]);
        assert_eq!(validate_kubelet_client(&ok, &rsa), Ok(()));
        let wrong_o = request("system:node:n1", &["system:masters"]);
        assert_eq!(
            validate_kubelet_client(&wrong_o, &u).unwrap_err(),
            "subject organization is not system:nodes"
        );
        let wrong_cn = request("alice", &["system:nodes"]);
        assert_eq!(
            validate_kubelet_client(&wrong_cn, &u).unwrap_err(),
            "subject common name does not begin with system:node:"
        );
        let server = usages(&["digital signature", "server auth"]);
        assert_eq!(
            validate_kubelet_client(&ok, &server).unwrap_err(),
            "usages did not match [client auth digital signature key encipherment]"
        );
        let mut with_dns = ok.clone();
        with_dns.dns_names = 1;
        assert!(validate_kubelet_client(&with_dns, &u).is_err());
    }

    #[test]
    fn apiserver_client_usages_need_client_auth_only() {
        assert!(validate_apiserver_client_usages(&usages(&["client auth"])).is_ok());
        assert_eq!(
            validate_apiserver_client_usages(&usages(&["digital signature"])).unwrap_err(),
            "missing required usage for client certificate: client auth"
        );
        assert_eq!(
            validate_apiserver_client_usages(&usages(&["client auth", "server auth"])).unwrap_err(),
            "invalid usage for client certificate: server auth"
        );
    }

    #[test]
    fn requests_that_are_not_csrs_or_forged_are_refused() {
        assert_eq!(
            parse_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err(),
            "PEM block type must be CERTIFICATE REQUEST"
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:n1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:nodes");
        let csr = params.serialize_request(&key).unwrap();
        let parsed = parse_pem(csr.pem().unwrap().as_bytes()).unwrap();
        assert_eq!(parsed.common_name, "system:node:n1");
        assert_eq!(parsed.organizations, vec!["system:nodes"]);
        // A flipped bit in the signature breaks the proof of possession.
        let mut der = csr.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let forged = rustls::pki_types::CertificateSigningRequestDer::from(der);
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, forged.as_ref())
        );
        assert!(parse_pem(pem.as_bytes()).unwrap_err().contains("signature"));
    }
}
