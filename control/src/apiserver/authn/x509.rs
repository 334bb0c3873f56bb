//! Client-certificate authentication, as kube-apiserver's x509 authenticator: the subject's
//! common name is the user and its organizations are the groups. The TLS handshake has already
//! verified the chain against the cluster CA (and the clientAuth usage and validity), so a
//! certificate from another CA never gets here: the handshake fails.

use super::UserInfo;

/// The user of a verified client chain (leaf first), or `None` when there is no certificate or
/// its subject names no user.
pub fn user_from_chain(chain: &[rustls::pki_types::CertificateDer<'static>]) -> Option<UserInfo> {
    let leaf = chain.first()?;
    user_from_der(leaf.as_ref())
}

/// The user a DER certificate names: CN, and each O as a group.
pub fn user_from_der(der: &[u8]) -> Option<UserInfo> {
    let (name, groups) = skiff_common::tls::certificate_user(der)?;
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::pki::ClusterCa;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use std::time::Duration;

    #[test]
    fn common_name_is_the_user_and_organizations_the_groups() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let cert = ca
            .issue_client(
                "alice",
                &["devs".into(), "ops, inc".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let user = user_from_chain(&[der]).unwrap();
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["devs", "ops, inc"]);
        assert_eq!(user.uid, "");
    }

    #[test]
    fn no_certificate_or_garbage_is_no_user() {
        assert!(user_from_chain(&[]).is_none());
        assert!(user_from_der(b"not a certificate").is_none());
    }
}
