//! Serving certificates, bearer tokens and the admin kubeconfig.
//!
//! kubectl sends no bearer token over plain http, so the apiserver serves HTTPS only. A CA is
//! generated once and kept in the data dir (every kubeconfig handed out carries it); the
//! serving certificate is re-issued from it at every start so new `--tls-san`s take effect.
//! So is the client certificate the apiserver presents to node agents (kube-apiserver's
//! `--kubelet-client-certificate`), which [`super::nodeproxy`] uses for `pods/log`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const ADMIN_TOKEN: &str = "admin.token";

/// The identity a request authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// Bearer tokens the apiserver accepts.
#[derive(Clone, Debug, Default)]
pub struct TokenAuthenticator {
    tokens: HashMap<String, UserInfo>,
}

impl TokenAuthenticator {
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<&UserInfo> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.tokens.get(token)
    }

    pub fn insert(&mut self, token: String, user: UserInfo) {
        self.tokens.insert(token, user);
    }

    /// Tokens in kube-apiserver's `--token-auth-file` format:
    /// `token,user,uid[,"group1,group2"]`, one per line; `#` starts a comment.
    pub fn load_csv(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading token file {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                bail!(
                    "{}:{}: want token,user,uid[,\"groups\"], got {line:?}",
                    path.display(),
                    i + 1
                );
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            self.insert(
                fields[0].clone(),
                UserInfo {
                    name: fields[1].clone(),
                    uid: fields[2].clone(),
                    groups,
                },
            );
        }
        Ok(())
    }
}

/// Split one CSV line, honouring double quotes (the groups column is quoted).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// The CA, serving certificate and admin token of one control plane.
pub struct Pki {
    pub ca_pem: String,
    pub admin_token: String,
    pub server_config: Arc<rustls::ServerConfig>,
    /// TLS for connections to node agents: presents the `kube-apiserver-kubelet-client`
    /// certificate (signed by the CA) and accepts the agents' self-signed serving certificates.
    pub kubelet_client_config: Arc<rustls::ClientConfig>,
}

/// The common name kubeadm gives the apiserver's kubelet client certificate.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    skiff_common::fs::write_atomic(path, contents.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Pki {
    /// Load the CA and admin token from `dir`, creating them on first start, and issue a
    /// serving certificate for `sans` (DNS names or IPs).
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_cert_path, ca_key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let (ca_pem, ca_key) = if ca_cert_path.exists() && ca_key_path.exists() {
            let key_pem = std::fs::read_to_string(&ca_key_path)?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("parsing {}", ca_key_path.display()))?;
            (std::fs::read_to_string(&ca_cert_path)?, key)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            std::fs::write(&ca_cert_path, cert.pem())?;
            (cert.pem(), key)
        };
        // The issuer is rebuilt from the same name and key as the stored CA certificate,
        // so certificates it signs chain to that certificate.
        let issuer = Issuer::new(ca_params()?, ca_key);

        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skiff-apiserver");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        for san in sans {
            let entry =
                skiff_common::tls::san_entry(san).with_context(|| format!("--tls-san {san:?}"))?;
            if !params.subject_alt_names.contains(&entry) {
                params.subject_alt_names.push(entry);
            }
        }
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &issuer)?;
        std::fs::write(dir.join("apiserver.crt"), server_cert.pem())?;

        let chain = vec![
            server_cert.der().clone(),
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("parsing ca.crt")?,
        ];
        let key = PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes())
            .context("parsing the serving key")?;
        let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let kubelet_client_config = kubelet_client_config(dir, &issuer, &ca_pem)?;

        let token_path = dir.join(ADMIN_TOKEN);
        let admin_token = match std::fs::read_to_string(&token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = random_token();
                write_private(&token_path, &t)?;
                t
            }
        };
        Ok(Pki {
            ca_pem,
            admin_token,
            server_config: Arc::new(server_config),
            kubelet_client_config,
        })
    }

    /// A kubeconfig for `server` that trusts this CA and presents `token`.
    pub fn kubeconfig(&self, server: &str, user: &str, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: {user}
    namespace: default
current-context: skiff
"
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_private(path, &self.kubeconfig(server, "admin", &self.admin_token))
    }

    pub fn admin_user() -> UserInfo {
        UserInfo {
            name: "admin".into(),
            uid: "admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

/// Issue the client certificate the apiserver presents to node agents (CN
/// `kube-apiserver-kubelet-client`, O `system:masters`, clientAuth, as kubeadm makes it) and
/// build the TLS client configuration around it. A fresh key and certificate every start: the
/// agents trust the CA, not this certificate.
fn kubelet_client_config(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, KUBELET_CLIENT_CN);
    dn.push(DnType::OrganizationName, "system:masters");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    std::fs::write(dir.join("apiserver-kubelet-client.crt"), cert.pem())?;

    let chain = vec![
        cert.der().clone(),
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).context("parsing ca.crt")?,
    ];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .context("parsing the kubelet client key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts whatever certificate a node agent serves, as kube-apiserver does when it is not
/// given `--kubelet-certificate-authority`: agents sign their own serving certificates (they
/// do not hold the CA key), so there is no chain to check. The handshake signatures are still
/// verified with the ring provider, so the peer must hold the key of the certificate it shows;
/// what this gives up is only the binding of that key to the node's name.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_csv_with_quoted_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "# comment\nt1,alice,1001,\"dev,ops\"\nt2,bob,1002\n").unwrap();
        let mut auth = TokenAuthenticator::default();
        auth.load_csv(&path).unwrap();
        let alice = auth.authenticate(Some("Bearer t1")).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, vec!["dev", "ops"]);
        assert_eq!(auth.authenticate(Some("Bearer t2")).unwrap().uid, "1002");
        assert!(auth.authenticate(Some("Bearer nope")).is_none());
        assert!(auth.authenticate(Some("Basic t1")).is_none());
        assert!(auth.authenticate(None).is_none());
    }

    #[test]
    fn malformed_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "onlytoken\n").unwrap();
        assert!(TokenAuthenticator::default().load_csv(&path).is_err());
    }

    #[test]
    fn ca_is_kept_and_admin_token_stable_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let b = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert!(
            a.kubeconfig("https://127.0.0.1:6443", "admin", "t")
                .contains("token: t")
        );
    }
}
