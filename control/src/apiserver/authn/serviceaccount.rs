//! Service-account tokens: JWTs this API server signs (ES256, with a key created once in the
//! data dir) for the `serviceaccounts/token` subresource, and accepts as bearer tokens when
//! the issuer, an audience, the validity window and the signature check out and the service
//! account (and the pod or secret a bound token names) still exists with the same uid.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::UserInfo;
use crate::apiserver::object::{self, meta_str};
use crate::apiserver::pki::write_private;
use crate::apiserver::registry::Registry;
use crate::apiserver::resources;

/// kube-apiserver's `--service-account-issuer` as kubeadm sets it.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The signing key (kube-apiserver's `--service-account-signing-key-file`, kubeadm's name).
const SIGNING_KEY: &str = "sa.key";
const PUBLIC_KEY: &str = "sa.pub";
/// A bound object deleted longer ago than this no longer backs its tokens (kube's grace, so a
/// pod still shutting down can talk to the API).
const DELETION_GRACE: i64 = 60;
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// An object a token names: its name and uid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim of a token, as kube-apiserver writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    pub serviceaccount: ObjectRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub jti: String,
    pub nbf: i64,
    pub sub: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The object a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoundObject {
    Pod(ObjectRef),
    Secret(ObjectRef),
}

/// What a token is issued for.
pub struct Grant {
    pub namespace: String,
    pub service_account: ObjectRef,
    pub bound: Option<BoundObject>,
    pub audiences: Vec<String>,
    pub expiration: Duration,
}

/// Issues and checks service-account tokens.
pub struct ServiceAccountTokens {
    issuer: String,
    audiences: Vec<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A JWT is three base64url parts; anything else is some other kind of token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl ServiceAccountTokens {
    /// The key kept in `dir` (created on first start, mode 0600), for `issuer`, accepting
    /// tokens for any of `audiences` (kube's `--api-audiences`, the issuer when empty).
    pub fn load_or_create(
        dir: &Path,
        issuer: &str,
        audiences: &[String],
    ) -> Result<ServiceAccountTokens> {
        let path = dir.join(SIGNING_KEY);
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem)
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate()?;
                write_private(&path, &key.serialize_pem())?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        std::fs::write(dir.join(PUBLIC_KEY), key.public_key_pem())?;
        let audiences = if audiences.is_empty() {
            vec![issuer.to_string()]
        } else {
            audiences.to_vec()
        };
        Ok(ServiceAccountTokens {
            issuer: issuer.to_string(),
            audiences,
            encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
                .context("loading the service-account signing key")?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())
                .context("loading the service-account public key")?,
        })
    }

    /// The audiences of the API itself, which tokens get when they ask for none.
    pub fn api_audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Sign a token for `grant`, valid from `now` (unix seconds).
    pub fn issue(&self, grant: &Grant, now: i64) -> Result<(String, Claims)> {
        let (pod, secret) = match &grant.bound {
            Some(BoundObject::Pod(r)) => (Some(r.clone()), None),
            Some(BoundObject::Secret(r)) => (None, Some(r.clone())),
            None => (None, None),
        };
        let claims = Claims {
            aud: grant.audiences.clone(),
            exp: now + i64::try_from(grant.expiration.as_secs()).unwrap_or(i64::MAX / 2),
            iat: now,
            iss: self.issuer.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            sub: username(&grant.namespace, &grant.service_account.name),
            kubernetes: KubernetesClaims {
                namespace: grant.namespace.clone(),
                pod,
                secret,
                serviceaccount: grant.service_account.clone(),
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)?;
        Ok((token, claims))
    }

    /// The claims of a token signed by this key for this issuer and one of the API audiences,
    /// inside its validity window; `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        // Expiry is exact: a token asked for ten minutes lasts ten minutes.
        validation.leeway = 0;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Some(data.claims),
            Err(e) => {
                tracing::debug!(error = %e, "service-account token rejected");
                None
            }
        }
    }

    /// The service account a bearer token stands for, if it verifies and what it is bound to
    /// still exists.
    pub async fn authenticate(&self, registry: &Registry, token: &str) -> Option<UserInfo> {
        let claims = self.verify(token)?;
        let now = jiff::Timestamp::now().as_second();
        if !still_bound(registry, &claims.kubernetes, now).await {
            tracing::debug!(sub = %claims.sub, "service-account token's objects are gone");
            return None;
        }
        Some(user_of(&claims))
    }
}

/// Whether the service account, and the pod or secret the token is bound to, exist with the
/// uids the token names and were not deleted more than [`DELETION_GRACE`] ago.
async fn still_bound(registry: &Registry, k: &KubernetesClaims, now: i64) -> bool {
    let refs = [
        Some(("serviceaccounts", &k.serviceaccount)),
        k.pod.as_ref().map(|p| ("pods", p)),
        k.secret.as_ref().map(|s| ("secrets", s)),
    ];
    for (plural, r) in refs.into_iter().flatten() {
        let Some(info) = resources::lookup("", "v1", plural) else {
            return false;
        };
        match registry.get(info, Some(&k.namespace), &r.name).await {
            Ok(obj) if live_with_uid(&obj, &r.uid, now) => {}
            _ => return false,
        }
    }
    true
}

fn live_with_uid(obj: &Value, uid: &str, now: i64) -> bool {
    if meta_str(obj, "uid") != Some(uid) {
        return false;
    }
    match meta_str(obj, "deletionTimestamp").and_then(object::parse_time) {
        Some(t) => t.as_second() >= now - DELETION_GRACE,
        None => true,
    }
}

/// The user of verified claims, with the extras kube-apiserver sets.
pub fn user_of(claims: &Claims) -> UserInfo {
    let k = &claims.kubernetes;
    let mut extra = BTreeMap::new();
    if let Some(pod) = &k.pod {
        extra.insert(EXTRA_POD_NAME.to_string(), vec![pod.name.clone()]);
        extra.insert(EXTRA_POD_UID.to_string(), vec![pod.uid.clone()]);
    }
    if !claims.jti.is_empty() {
        extra.insert(
            EXTRA_CREDENTIAL_ID.to_string(),
            vec![format!("JTI={}", claims.jti)],
        );
    }
    UserInfo {
        name: username(&k.namespace, &k.serviceaccount.name),
        uid: k.serviceaccount.uid.clone(),
        groups: vec![
            SERVICE_ACCOUNTS_GROUP.to_string(),
            format!("{SERVICE_ACCOUNTS_GROUP}:{}", k.namespace),
        ],
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(dir: &Path) -> ServiceAccountTokens {
        ServiceAccountTokens::load_or_create(dir, DEFAULT_ISSUER, &[]).unwrap()
    }

    fn grant(bound: Option<BoundObject>, audiences: Vec<String>) -> Grant {
        Grant {
            namespace: "foo".into(),
            service_account: ObjectRef {
                name: "default".into(),
                uid: "sa-uid".into(),
            },
            bound,
            audiences,
            expiration: Duration::from_secs(600),
        }
    }

    #[test]
    fn issued_tokens_verify_and_name_the_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let pod = ObjectRef {
            name: "p".into(),
            uid: "pod-uid".into(),
        };
        let now = jiff::Timestamp::now().as_second();
        let (jwt, claims) = t
            .issue(
                &grant(Some(BoundObject::Pod(pod)), vec![DEFAULT_ISSUER.into()]),
                now,
            )
            .unwrap();
        assert_eq!(t.verify(&jwt), Some(claims.clone()));
        let user = user_of(&claims);
        assert_eq!(user.name, "system:serviceaccount:foo:default");
        assert_eq!(user.uid, "sa-uid");
        assert_eq!(
            user.groups,
            vec!["system:serviceaccounts", "system:serviceaccounts:foo"]
        );
        assert_eq!(user.extra[EXTRA_POD_NAME], vec!["p"]);
        assert_eq!(user.extra[EXTRA_POD_UID], vec!["pod-uid"]);
        // The key is kept: a second start verifies tokens of the first.
        assert!(tokens(dir.path()).verify(&jwt).is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SIGNING_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn expired_foreign_audience_other_issuer_and_other_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let now = jiff::Timestamp::now().as_second();
        let (expired, _) = t
            .issue(&grant(None, vec![DEFAULT_ISSUER.into()]), now - 700)
            .unwrap();
        assert!(t.verify(&expired).is_none());
        let (future, _) = t
            .issue(&grant(None, vec![DEFAULT_ISSUER.into()]), now + 100)
            .unwrap();
        assert!(t.verify(&future).is_none(), "not valid before nbf");
        let (vault, _) = t.issue(&grant(None, vec!["vault".into()]), now).unwrap();
        assert!(t.verify(&vault).is_none());
        let other_issuer = ServiceAccountTokens::load_or_create(
            dir.path(),
            "https://elsewhere",
            &[DEFAULT_ISSUER.into()],
        )
        .unwrap();
        let (elsewhere, _) = other_issuer
            .issue(&grant(None, vec![DEFAULT_ISSUER.into()]), now)
            .unwrap();
        assert!(t.verify(&elsewhere).is_none());
        let other_dir = tempfile::tempdir().unwrap();
        let (forged, _) = tokens(other_dir.path())
            .issue(&grant(None, vec![DEFAULT_ISSUER.into()]), now)
            .unwrap();
        assert!(t.verify(&forged).is_none());
        assert!(t.verify("a.b.c").is_none());
    }

    #[test]
    fn deleted_objects_keep_tokens_only_during_the_grace() {
        let now = 1_000_000;
        let obj = |ts: Option<&str>| serde_json::json!({"metadata": {"uid": "u", "deletionTimestamp": ts}});
        assert!(live_with_uid(&obj(None), "u", now));
        assert!(!live_with_uid(&obj(None), "other", now));
        let t = |secs: i64| jiff::Timestamp::from_second(secs).unwrap().to_string();
        assert!(live_with_uid(&obj(Some(&t(now - 30))), "u", now));
        assert!(!live_with_uid(&obj(Some(&t(now - 120))), "u", now));
    }
}
