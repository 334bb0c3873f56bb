//! Bootstrap tokens (kube's `bootstrap.kubernetes.io/token` Secrets): a token
//! `<id>.<secret>` authenticates as `system:bootstrap:<id>` in `system:bootstrappers` (plus the
//! Secret's `auth-extra-groups`) while the Secret `bootstrap-token-<id>` in `kube-system`
//! holds that secret, allows authentication and has not expired. Nodes join with them.

use base64::Engine;
use serde_json::Value;

use super::UserInfo;
use crate::apiserver::object::{self, meta_str};
use crate::apiserver::registry::Registry;
use crate::apiserver::resources;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const SECRET_PREFIX: &str = "bootstrap-token-";
pub const USER_PREFIX: &str = "system:bootstrap:";
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
const NAMESPACE: &str = "kube-system";

/// The id and secret of a token of the form `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (valid(id, 6) && valid(secret, 16)).then_some((id, secret))
}

/// The user of a bootstrap token, if its Secret accepts it now.
pub async fn authenticate(registry: &Registry, token: &str) -> Option<UserInfo> {
    let (id, secret) = parse_token(token)?;
    let secrets = resources::lookup("", "v1", "secrets")?;
    let obj = registry
        .get(secrets, Some(NAMESPACE), &format!("{SECRET_PREFIX}{id}"))
        .await
        .ok()?;
    let user = user_from_secret(&obj, id, secret, jiff::Timestamp::now());
    if user.is_none() {
        tracing::debug!(token_id = id, "bootstrap token rejected");
    }
    user
}

/// A key of the Secret's `data`, decoded.
fn data(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

/// Compare without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// kube's extra-group rule: `system:bootstrappers:` and then `[a-z0-9:-]`, not ending in
/// `:` or `-`.
fn valid_extra_group(g: &str) -> bool {
    g.strip_prefix("system:bootstrappers:").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 256
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
            && rest
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// The user `secret` grants to token `<id>.<token_secret>` at `now`, checked as kube's
/// bootstrap authenticator does.
pub fn user_from_secret(
    secret: &Value,
    id: &str,
    token_secret: &str,
    now: jiff::Timestamp,
) -> Option<UserInfo> {
    if meta_str(secret, "deletionTimestamp").is_some()
        || secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE)
    {
        return None;
    }
    let stored = data(secret, "token-secret")?;
    if !constant_time_eq(stored.as_bytes(), token_secret.as_bytes())
        || data(secret, "token-id").as_deref() != Some(id)
    {
        return None;
    }
    if let Some(exp) = data(secret, "expiration") {
        // An expiration that does not parse counts as expired, as in kube.
        if object::parse_time(&exp).is_none_or(|t| t <= now) {
            return None;
        }
    }
    if data(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return None;
    }
    let mut groups = vec![BOOTSTRAPPERS_GROUP.to_string()];
    if let Some(extra) = data(secret, "auth-extra-groups") {
        for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !valid_extra_group(g) {
                return None;
            }
            if !groups.iter().any(|have| have == g) {
                groups.push(g.to_string());
            }
        }
    }
    Some(UserInfo {
        name: format!("{USER_PREFIX}{id}"),
        groups,
        ..UserInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(expiration: Option<&str>, usage: &str, extra: &str) -> Value {
        let mut data = json!({
            "token-id": b64("abcdef"),
            "token-secret": b64("0123456789abcdef"),
            "usage-bootstrap-authentication": b64(usage),
            "auth-extra-groups": b64(extra),
        });
        if let Some(e) = expiration {
            data["expiration"] = json!(b64(e));
        }
        json!({"metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "type": SECRET_TYPE, "data": data})
    }

    #[test]
    fn tokens_have_kubes_shape() {
        assert_eq!(
            parse_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(parse_token("ABCDEF.0123456789abcdef"), None);
        assert_eq!(parse_token("abcdef.0123456789abcde"), None);
        assert_eq!(parse_token("abcdef0123456789abcdef"), None);
    }

    #[test]
    fn a_valid_secret_grants_the_bootstrap_user() {
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let s = secret(
            Some("2030-01-02T00:00:00Z"),
            "true",
            "system:bootstrappers:kubeadm:default-node-token",
        );
        let user = user_from_secret(&s, "abcdef", "0123456789abcdef", now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            vec![
                "system:bootstrappers",
                "system:bootstrappers:kubeadm:default-node-token"
            ]
        );
        assert!(user_from_secret(&s, "abcdef", "0123456789abcdee", now).is_none());
        assert!(user_from_secret(&s, "abcdeg", "0123456789abcdef", now).is_none());
    }

    #[test]
    fn expired_unusable_mistyped_or_badly_grouped_secrets_grant_nothing() {
        let now: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let ok = |s: &Value| user_from_secret(s, "abcdef", "0123456789abcdef", now).is_some();
        assert!(ok(&secret(None, "true", "")));
        assert!(!ok(&secret(Some("2029-12-31T23:59:59Z"), "true", "")));
        assert!(!ok(&secret(Some("soon"), "true", "")));
        assert!(!ok(&secret(None, "false", "")));
        assert!(!ok(&secret(None, "true", "system:masters")));
        let mut opaque = secret(None, "true", "");
        opaque["type"] = json!("Opaque");
        assert!(!ok(&opaque));
    }
}
