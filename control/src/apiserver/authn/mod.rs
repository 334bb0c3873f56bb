//! Authentication: who a request comes from, as kube-apiserver's authenticator chain works it
//! out. The first authenticator that recognises the credential wins:
//!
//! 1. [`x509`]: a client certificate signed by the cluster CA (the TLS handshake has already
//!    checked the chain; CN is the user, O the groups);
//! 2. a bearer token, tried by [`token`] (static tokens: the admin token and
//!    `--token-auth-file`), [`serviceaccount`] (service-account JWTs) and [`bootstrap`]
//!    (bootstrap-token Secrets); a bearer token none of them accepts is a 401;
//! 3. otherwise the request is `system:anonymous` in `system:unauthenticated`.
//!
//! Every authenticated user is also in `system:authenticated`. A request may then ask to act
//! as someone else ([`impersonation`]). What a user (anonymous
//! included) may do is decided afterwards by the RBAC authorizer (`super::rbac`): the default
//! policy lets `system:unauthenticated` read `/version` and the health endpoints only.

pub mod bootstrap;
pub mod cache;
pub mod impersonation;
pub mod review;
pub mod serviceaccount;
pub mod token;
pub mod token_request;
pub mod x509;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, header};

use super::registry::Registry;
use super::status::{ApiError, ApiResult};

pub use self::serviceaccount::ServiceAccountTokens;
pub use self::token::StaticTokens;

pub const ANONYMOUS_USER: &str = "system:anonymous";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The identity a request authenticated as (kube's `user.Info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: ANONYMOUS_USER.into(),
            groups: vec![UNAUTHENTICATED_GROUP.into()],
            ..UserInfo::default()
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS_USER
    }

    /// Add `system:authenticated`, as kube-apiserver does for every authenticated user
    /// (unless the authenticator already did, or the user is anonymous).
    fn authenticated(mut self) -> UserInfo {
        let listed = self
            .groups
            .iter()
            .any(|g| g == AUTHENTICATED_GROUP || g == UNAUTHENTICATED_GROUP);
        if !listed && !self.is_anonymous() {
            self.groups.push(AUTHENTICATED_GROUP.into());
        }
        self
    }
}

/// The user a connection's verified client certificate names (`None` without one), read once
/// per connection and put into each of its requests' extensions by the HTTPS server.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity(pub Option<std::sync::Arc<UserInfo>>);

impl PeerIdentity {
    pub fn from_chain(chain: &[rustls::pki_types::CertificateDer<'static>]) -> PeerIdentity {
        PeerIdentity(x509::user_from_chain(chain).map(std::sync::Arc::new))
    }
}

/// The authenticator chain of one API server.
pub struct Authenticator {
    pub tokens: StaticTokens,
    pub service_accounts: ServiceAccountTokens,
    /// Recent successes of the service-account and bootstrap authenticators.
    pub cache: cache::TokenCache,
}

impl Authenticator {
    /// Who sent a request with these `headers` over a connection whose certificate names
    /// `peer`: the user, anonymous when it carries no credential, or a 401 when it
    /// carries a bearer token nobody accepts.
    pub async fn authenticate(
        &self,
        registry: &Registry,
        headers: &HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> ApiResult<UserInfo> {
        if let Some(user) = peer.and_then(|p| p.0.as_deref()) {
            return Ok(user.clone().authenticated());
        }
        let Some(token) = bearer_token(headers) else {
            return Ok(UserInfo::anonymous());
        };
        match self.authenticate_token(registry, token).await {
            Some(user) => Ok(user.authenticated()),
            None => Err(ApiError::unauthorized()),
        }
    }

    /// The user a bearer token stands for, trying each token authenticator in kube's order.
    /// Static tokens are a map lookup already; the others go through the [`cache`].
    pub async fn authenticate_token(&self, registry: &Registry, token: &str) -> Option<UserInfo> {
        if let Some(user) = self.tokens.authenticate(token) {
            return Some(user.clone());
        }
        let now = std::time::Instant::now();
        if let Some(user) = self.cache.get(token, now) {
            return Some(user);
        }
        let user = if serviceaccount::looks_like_jwt(token) {
            self.service_accounts.authenticate(registry, token).await
        } else {
            bootstrap::authenticate(registry, token).await
        }?;
        self.cache.put(token, &user, now);
        Some(user)
    }
}

/// The token of an `Authorization: Bearer <token>` header. Another scheme, or an empty token,
/// is no bearer credential at all (kube's bearer authenticator passes on it).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn authenticated_users_join_system_authenticated_once() {
        let u = UserInfo {
            name: "alice".into(),
            groups: vec!["devs".into()],
            ..UserInfo::default()
        }
        .authenticated();
        assert_eq!(u.groups, vec!["devs", AUTHENTICATED_GROUP]);
        assert_eq!(u.clone().authenticated().groups, u.groups);
        let anon = UserInfo::anonymous().authenticated();
        assert_eq!(anon.groups, vec![UNAUTHENTICATED_GROUP]);
        assert!(anon.is_anonymous() && !u.is_anonymous());
    }

    /// The chain over a real registry: first match wins, a token nobody accepts is a 401.
    #[tokio::test]
    async fn the_chain_tries_each_authenticator_in_order() {
        use crate::apiserver::admission::{Allocators, Ipv4Cidr, PortRange};
        use crate::store::{Store, embedded::EmbeddedStore};
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let allocators = Allocators::new(
            store.clone(),
            Ipv4Cidr::parse("10.96.0.0/12").unwrap(),
            PortRange::parse("30000-32767").unwrap(),
        );
        let registry = Registry::new(store, allocators);
        let mut tokens = StaticTokens::default();
        tokens.insert("admin-token".into(), token::admin_user());
        let service_accounts =
            ServiceAccountTokens::load_or_create(dir.path(), serviceaccount::DEFAULT_ISSUER, &[])
                .unwrap();
        let grant = serviceaccount::Grant {
            namespace: "foo".into(),
            service_account: serviceaccount::ObjectRef {
                name: "gone".into(),
                uid: "u".into(),
            },
            bound: None,
            audiences: vec![serviceaccount::DEFAULT_ISSUER.into()],
            expiration: std::time::Duration::from_secs(600),
        };
        let now = jiff::Timestamp::now().as_second();
        let (orphan_jwt, _) = service_accounts.issue(&grant, now).unwrap();
        let authn = Authenticator {
            tokens,
            service_accounts,
            cache: cache::TokenCache::default(),
        };
        let who = |h: HeaderMap, peer: Option<PeerIdentity>| {
            let (authn, registry) = (&authn, &registry);
            async move { authn.authenticate(registry, &h, peer.as_ref()).await }
        };

        assert_eq!(who(HeaderMap::new(), None).await, Ok(UserInfo::anonymous()));
        let admin = who(headers("Bearer admin-token"), None).await.unwrap();
        assert_eq!(admin.name, "admin");
        assert_eq!(admin.groups, vec!["system:masters", AUTHENTICATED_GROUP]);
        for bad in [
            "Bearer wrong",
            "Bearer abcdef.0123456789abcdef",
            &format!("Bearer {orphan_jwt}"),
        ] {
            let err = who(headers(bad), None).await.unwrap_err();
            assert_eq!((err.code, err.reason), (401, "Unauthorized"), "{bad}");
        }
        // A client certificate wins over whatever token comes with it.
        let cert_user = UserInfo {
            name: "alice".into(),
            groups: vec!["devs".into()],
            ..UserInfo::default()
        };
        let peer = PeerIdentity(Some(std::sync::Arc::new(cert_user)));
        let alice = who(headers("Bearer wrong"), Some(peer)).await.unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, vec!["devs", AUTHENTICATED_GROUP]);
    }
}
