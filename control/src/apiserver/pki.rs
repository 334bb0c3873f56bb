//! The cluster CA, serving and client certificates, and kubeconfigs.
//!
//! kubectl sends no bearer token over plain http, so the apiserver serves HTTPS only. A CA is
//! generated once and kept in the data dir (every kubeconfig handed out carries it); the
//! serving certificate is re-issued from it at every start so new `--tls-san`s take effect.
//! So is the client certificate the apiserver presents to node agents (kube-apiserver's
//! `--kubelet-client-certificate`), which [`super::nodeproxy`] uses for `pods/log`, and the
//! admin kubeconfig's client certificate (`kubernetes-admin` in `system:masters`, as kubeadm
//! writes `admin.conf`). Clients may present a certificate signed by the CA; the handshake
//! checks the chain and [`super::authn::x509`] reads the user from it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// The users of the in-process components' client certificates.
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The user and group of the admin kubeconfig's client certificate (kubeadm's `admin.conf`).
pub const ADMIN_USER: &str = "kubernetes-admin";
pub const MASTERS_GROUP: &str = "system:masters";
/// How long the admin client certificate is valid; it is re-issued at every start.
const ADMIN_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Client certificates start this long before their issue, so clocks a little behind ours
/// accept them (kubeadm backdates by the same).
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The CA, serving certificate and admin credentials of one control plane.
pub struct Pki {
    pub ca: ClusterCa,
    pub ca_pem: String,
    /// A bearer token for user `admin` in `system:masters`, kept in `admin.token` for the
    /// clients that read it (tests and tools; the components have identities of their own).
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

/// Write `contents` to `path` readable by its owner only (keys, tokens, kubeconfigs), through a
/// temporary file so a reader never sees half of it.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    skiff_common::fs::write_atomic(path, contents.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

fn random_token() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The cluster CA: its certificate (PEM) and what signs with its key.
pub struct ClusterCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A client certificate and its private key, both PEM.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClusterCa {
    /// The CA kept in `dir`, created (key mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if dir.join(CA_CERT).exists() && dir.join(CA_KEY).exists() {
            return ClusterCa::load(dir);
        }
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
        std::fs::write(dir.join(CA_CERT), cert.pem())?;
        Ok(ClusterCa {
            pem: cert.pem(),
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    /// The CA kept in `dir`; an error when there is none (`skiff-control kubeconfig` signs
    /// with the CA of an existing control plane, never a new one).
    pub fn load(dir: &Path) -> Result<ClusterCa> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if !cert_path.exists() || !key_path.exists() {
            bail!(
                "no cluster CA in {} (want {CA_CERT} and {CA_KEY}): is --data-dir the control plane's?",
                dir.display()
            );
        }
        let key_pem = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing {}", key_path.display()))?;
        let pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        // The issuer is rebuilt from the same name and key as the stored CA certificate,
        // so certificates it signs chain to that certificate.
        Ok(ClusterCa {
            pem,
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    pub fn der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.pem.as_bytes()).context("parsing ca.crt")
    }

    /// A client certificate for `user` in `groups` (CN and one O per group, as
    /// kube-apiserver's x509 authenticator reads them), valid for `validity` from now.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[String],
        validity: Duration,
    ) -> Result<ClientCert> {
        use rcgen::PublicKeyData;
        use x509_cert::der::Decode;
        if user.is_empty() {
            bail!("a client certificate needs a user name");
        }
        let key = KeyPair::generate()?;
        let spki =
            x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&key.subject_public_key_info())
                .context("encoding the client public key")?;
        let leaf = Leaf {
            subject: client_subject(user, groups)?,
            spki,
            validity,
            key_encipherment: true,
            san: None,
        };
        Ok(ClientCert {
            cert_pem: self.sign_leaf(leaf)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for a PKCS#10 request (DER) whose proof of possession was checked:
    /// its subject, key and subject alternative names, `validity` from now, the key usages
    /// `usages` asks for (kube's csrsigning with the cluster CA). PEM.
    pub fn sign_request(
        &self,
        csr_der: &[u8],
        usages: &[String],
        validity: Duration,
    ) -> Result<String> {
        use x509_cert::der::{Decode, Encode};
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::request::{CertReq, ExtensionReq};
        let req = CertReq::from_der(csr_der).context("parsing the certificate request")?;
        let mut san = None;
        for attr in req.info.attributes.iter() {
            if attr.oid != x509_cert::der::oid::db::rfc5912::ID_EXTENSION_REQ {
                continue;
            }
            for value in attr.values.iter() {
                let requested = ExtensionReq::from_der(&value.to_der()?)?;
                for ext in requested.0 {
                    if ext.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
                        san = Some(SubjectAltName::from_der(ext.extn_value.as_bytes())?);
                    }
                }
            }
        }
        let leaf = Leaf {
            subject: req.info.subject,
            spki: req.info.public_key,
            validity,
            key_encipherment: usages.iter().any(|u| u == "key encipherment"),
            san,
        };
        self.sign_leaf(leaf)
    }

    /// Sign a client-auth leaf certificate with the CA key (ECDSA P-256).
    ///
    /// Built with x509-cert rather than rcgen: rcgen keeps one value per subject attribute, so
    /// a second group would replace the first, and it cannot sign a foreign public key.
    fn sign_leaf(&self, leaf: Leaf) -> Result<String> {
        use p256::pkcs8::DecodePrivateKey;
        use x509_cert::builder::Builder;
        use x509_cert::der::{Decode, EncodePem};
        let signer = p256::ecdsa::SigningKey::from_pkcs8_pem(&self.issuer.key().serialize_pem())
            .context("the CA key is not an ECDSA P-256 key")?;
        let ca =
            x509_cert::Certificate::from_der(self.der()?.as_ref()).context("parsing ca.crt")?;
        let profile = x509_cert::builder::Profile::Leaf {
            issuer: ca.tbs_certificate.subject,
            enable_key_agreement: false,
            enable_key_encipherment: leaf.key_encipherment,
        };
        let mut builder = x509_cert::builder::CertificateBuilder::new(
            profile,
            random_serial()?,
            client_validity(leaf.validity)?,
            leaf.subject,
            leaf.spki,
            &signer,
        )
        .context("building the client certificate")?;
        builder
            .add_extension(&x509_cert::ext::pkix::ExtendedKeyUsage(vec![
                x509_cert::der::oid::db::rfc5280::ID_KP_CLIENT_AUTH,
            ]))
            .context("adding the clientAuth usage")?;
        if let Some(san) = &leaf.san {
            builder
                .add_extension(san)
                .context("adding the subject alternative names")?;
        }
        let cert = builder
            .build::<p256::ecdsa::DerSignature>()
            .context("signing the client certificate")?;
        Ok(cert.to_pem(x509_cert::der::pem::LineEnding::LF)?)
    }
}

/// What a client certificate is made of.
struct Leaf {
    subject: x509_cert::name::Name,
    spki: x509_cert::spki::SubjectPublicKeyInfoOwned,
    validity: Duration,
    key_encipherment: bool,
    san: Option<x509_cert::ext::pkix::SubjectAltName>,
}

/// `O=<group>` for each group, then `CN=<user>`, as Go's crypto/x509 orders a subject.
fn client_subject(user: &str, groups: &[String]) -> Result<x509_cert::name::Name> {
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::der::asn1::{Any, SetOfVec, Utf8StringRef};
    use x509_cert::der::oid::db::rfc4519::{CN, O};
    use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
    let rdn = |oid, value: &str| -> Result<RelativeDistinguishedName> {
        let value = Any::from(Utf8StringRef::new(value)?);
        let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])?;
        Ok(RelativeDistinguishedName(set))
    };
    let mut rdns = groups
        .iter()
        .map(|g| rdn(O, g))
        .collect::<Result<Vec<_>>>()?;
    rdns.push(rdn(CN, user)?);
    Ok(RdnSequence(rdns))
}

/// From [`BACKDATE`] ago to `validity` from now.
fn client_validity(validity: Duration) -> Result<x509_cert::time::Validity> {
    use x509_cert::time::Time;
    let now = std::time::SystemTime::now();
    let start = now.checked_sub(BACKDATE).unwrap_or(now);
    let end = now
        .checked_add(validity)
        .context("--expiration is too far in the future")?;
    Ok(x509_cert::time::Validity {
        not_before: Time::try_from(start).context("certificate start")?,
        not_after: Time::try_from(end).context("certificate expiry out of range")?,
    })
}

/// A random positive 16-byte serial number (RFC 5280 allows up to 20).
fn random_serial() -> Result<x509_cert::serial_number::SerialNumber> {
    use rand::Rng;
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(x509_cert::serial_number::SerialNumber::new(&bytes)?)
}

/// What a kubeconfig's user presents.
pub enum Credential<'a> {
    Token(&'a str),
    Certificate(&'a ClientCert),
}

/// A kubeconfig for `server` that trusts `ca_pem` and presents `credential` as `user`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, credential: Credential<'_>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let ca = b64(ca_pem);
    let auth = match credential {
        Credential::Token(token) => format!("    token: {token}\n"),
        Credential::Certificate(c) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&c.cert_pem),
            b64(&c.key_pem)
        ),
    };
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
{auth}contexts:
- name: skiff
  context:
    cluster: skiff
    user: {user}
    namespace: default
current-context: skiff
"
    )
}

impl Pki {
    /// Load the CA and admin token from `dir`, creating them on first start, and issue a
    /// serving certificate for `sans` (DNS names or IPs).
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        let ca = ClusterCa::load_or_create(dir)?;
        let ca_pem = ca.pem.clone();

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
        let server_cert = params.signed_by(&server_key, &ca.issuer)?;
        std::fs::write(dir.join("apiserver.crt"), server_cert.pem())?;

        let chain = vec![server_cert.der().clone(), ca.der()?];
        let key = PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes())
            .context("parsing the serving key")?;
        let server_config = server_config(&ca, chain, key)?;
        let kubelet_client_config = kubelet_client_config(dir, &ca.issuer, &ca_pem)?;

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
            ca,
            ca_pem,
            admin_token,
            server_config,
            kubelet_client_config,
        })
    }

    /// A kubeconfig with the admin token (tests and tools; no component uses it).
    pub fn token_kubeconfig(&self, server: &str) -> String {
        kubeconfig(
            server,
            &self.ca_pem,
            "admin",
            Credential::Token(&self.admin_token),
        )
    }

    /// An in-memory kubeconfig with a fresh client certificate for a control-plane component
    /// (`system:kube-controller-manager`, `system:kube-scheduler`: kubeadm's CNs, no groups).
    /// Never written to disk: the components run in this process.
    pub fn component_kubeconfig(&self, server: &str, user: &str) -> Result<String> {
        let cert = self.ca.issue_client(user, &[], ADMIN_CERT_VALIDITY)?;
        Ok(kubeconfig(
            server,
            &self.ca_pem,
            user,
            Credential::Certificate(&cert),
        ))
    }

    /// The admin kubeconfig as kubeadm writes it: a fresh client certificate for
    /// `kubernetes-admin` in `system:masters`, written mode 0600.
    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let cert =
            self.ca
                .issue_client(ADMIN_USER, &[MASTERS_GROUP.into()], ADMIN_CERT_VALIDITY)?;
        let text = kubeconfig(
            server,
            &self.ca_pem,
            ADMIN_USER,
            Credential::Certificate(&cert),
        );
        write_private(path, &text)
    }
}

/// TLS for the API: the serving chain, and client certificates checked against the cluster CA
/// when a client presents one (kube-apiserver's `--client-ca-file`). A client without one still
/// connects; it may authenticate by bearer token or be anonymous.
fn server_config(
    ca: &ClusterCa,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()?).context("trusting ca.crt")?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("building the client certificate verifier")?;
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server_config))
}

/// Issue the client certificate the apiserver presents to node agents (CN
/// `kube-apiserver-kubelet-client`, clientAuth) and build the TLS client configuration around
/// it. The certificate names no group: the agents authorize its user by SubjectAccessReview,
/// and RBAC grants it `system:kubelet-api-admin` (the default ClusterRoleBinding
/// `system:kube-apiserver-kubelet-client`) and nothing else. A fresh key and
/// certificate every start: the agents trust the CA, not this certificate.
fn kubelet_client_config(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, KUBELET_CLIENT_CN);
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
    fn ca_is_kept_and_admin_token_stable_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let b = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.admin_token, b.admin_token);
        assert!(
            a.token_kubeconfig("https://127.0.0.1:6443")
                .contains(&format!("token: {}", a.admin_token))
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn admin_kubeconfig_carries_a_client_certificate_from_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &["localhost".into()]).unwrap();
        let path = dir.path().join("admin.kubeconfig");
        pki.write_kubeconfig(&path, "https://127.0.0.1:6443")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("client-certificate-data: "), "{text}");
        assert!(text.contains("client-key-data: "), "{text}");
        assert!(!text.contains("token:"), "{text}");
        assert!(text.contains("user: kubernetes-admin"), "{text}");
    }

    #[test]
    fn load_needs_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClusterCa::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no cluster CA"), "{err}");
        ClusterCa::load_or_create(dir.path()).unwrap();
        assert!(ClusterCa::load(dir.path()).is_ok());
    }
}
