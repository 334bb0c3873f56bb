//! Bootstrap tokens as kubeadm makes them: `<id>.<secret>` (`[a-z0-9]{6}.[a-z0-9]{16}`), kept
//! in the Secret `bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` in
//! `kube-system`. The API server authenticates a token as `system:bootstrap:<id>` in
//! `system:bootstrappers` (plus the Secret's extra groups) until it expires; a joining node
//! uses it only to ask for its own certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rand::Rng;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const NAMESPACE: &str = "kube-system";
/// The extra group skiff's node tokens carry (kubeadm's is
/// `system:bootstrappers:kubeadm:default-node-token`).
pub const DEFAULT_NODE_TOKEN_GROUP: &str = "system:bootstrappers:skiff:default-node-token";

/// A token: its public id and its secret half.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    // The secret half never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl BootstrapToken {
    /// A new random token (`rand`'s OS-seeded generator, as kubeadm uses crypto/rand).
    pub fn generate() -> BootstrapToken {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect()
        };
        BootstrapToken {
            id: pick(6),
            secret: pick(16),
        }
    }

    /// `<id>.<secret>`, what a bootstrap kubeconfig carries.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret that makes the token valid for authentication (and for signing
    /// `cluster-info`), expiring `ttl` after `now` (never, without a ttl).
    pub fn secret(
        &self,
        ttl: Option<Duration>,
        now: jiff::Timestamp,
        description: &str,
        extra_groups: &[&str],
    ) -> Secret {
        let mut data = BTreeMap::from([
            ("token-id".to_string(), self.id.clone()),
            ("token-secret".to_string(), self.secret.clone()),
            ("usage-bootstrap-authentication".to_string(), "true".into()),
            ("usage-bootstrap-signing".to_string(), "true".into()),
        ]);
        if !description.is_empty() {
            data.insert("description".into(), description.into());
        }
        if !extra_groups.is_empty() {
            data.insert("auth-extra-groups".into(), extra_groups.join(","));
        }
        let expiration = ttl
            .and_then(|ttl| jiff::SignedDuration::try_from(ttl).ok())
            .and_then(|ttl| now.checked_add(ttl).ok());
        if let Some(at) = expiration {
            data.insert(
                "expiration".into(),
                at.round(jiff::Unit::Second)
                    .map_or_else(|_| at.to_string(), |t| t.to_string()),
            );
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("{SECRET_PREFIX}{}", self.id)),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            string_data: Some(data),
            ..Default::default()
        }
    }
}

/// The key of `cluster-info` holding the signature made with token `id`.
pub fn jws_key(id: &str) -> String {
    format!("jws-kubeconfig-{id}")
}

fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The JWS protected header and signing input of `content` for `token`, and its HMAC key.
fn jws_parts(content: &str, token: &BootstrapToken) -> (String, String, ring::hmac::Key) {
    let header = b64url(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, token.id).as_bytes());
    let signing_input = format!("{header}.{}", b64url(content.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.token().as_bytes());
    (header, signing_input, key)
}

/// kube's `ComputeDetachedSignature`: a JWS (HS256, `kid` = the token id, keyed with the
/// whole token `<id>.<secret>`) over `content`, in compact form with the payload left out
/// (`<header>..<signature>`).
pub fn detached_signature(content: &str, token: &BootstrapToken) -> String {
    let (header, signing_input, key) = jws_parts(content, token);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", b64url(tag.as_ref()))
}

/// Whether `signature` is [`detached_signature`] of `content` with `token` (the MAC checked
/// in constant time).
pub fn verify_detached_signature(content: &str, signature: &str, token: &BootstrapToken) -> bool {
    use base64::Engine;
    let (header, signing_input, key) = jws_parts(content, token);
    let Some((got_header, tag)) = signature.split_once("..") else {
        return false;
    };
    let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    got_header == header && ring::hmac::verify(&key, signing_input.as_bytes(), &tag).is_ok()
}

/// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` and the hex SHA-256 of the CA
/// certificate's SubjectPublicKeyInfo (DER).
pub fn ca_cert_hash(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A token `<id>.<secret>` of kubeadm's shape, or None.
pub fn parse(token: &str) -> Option<BootstrapToken> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (valid(id, 6) && valid(secret, 16)).then(|| BootstrapToken {
        id: id.to_string(),
        secret: secret.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_shape() {
        let t = BootstrapToken::generate();
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        assert!(ok(&t.id, 6) && ok(&t.secret, 16), "{}", t.token());
        assert_ne!(t, BootstrapToken::generate());
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn secret_holds_what_the_authenticator_reads() {
        let t = BootstrapToken {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
        };
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = t.secret(
            Some(Duration::from_secs(3600)),
            now,
            "a node",
            &[DEFAULT_NODE_TOKEN_GROUP],
        );
        assert_eq!(s.metadata.name.as_deref(), Some("bootstrap-token-abcdef"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
        let d = s.string_data.unwrap();
        assert_eq!(d["token-secret"], "0123456789abcdef");
        assert_eq!(d["expiration"], "2026-01-01T01:00:00Z");
        assert_eq!(d["auth-extra-groups"], DEFAULT_NODE_TOKEN_GROUP);
        assert_eq!(d["usage-bootstrap-authentication"], "true");
    }

    #[test]
    fn detached_signatures_verify_only_with_their_token_and_content() {
        let t = parse("abcdef.0123456789abcdef").unwrap();
        let sig = detached_signature("kubeconfig", &t);
        let (header, rest) = sig.split_once("..").unwrap();
        assert_eq!(header, "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9");
        assert_eq!(rest.len(), 43);
        assert!(verify_detached_signature("kubeconfig", &sig, &t));
        assert!(!verify_detached_signature("kubeconfig!", &sig, &t));
        let other = parse("abcdef.0123456789abcdee").unwrap();
        assert!(!verify_detached_signature("kubeconfig", &sig, &other));
        assert!(parse("ABCDEF.0123456789abcdef").is_none());
        assert!(parse("abcdef").is_none());
    }

    #[test]
    fn ca_hashes_are_sha256_hex() {
        let h = ca_cert_hash(b"");
        assert_eq!(
            h,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
