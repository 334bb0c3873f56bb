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
}
