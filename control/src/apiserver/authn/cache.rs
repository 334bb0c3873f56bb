//! kube-apiserver's cache in front of its token authenticators: a token that authenticated is
//! remembered for a few seconds (keyed by its SHA-256, never past the token's own `exp`), so a
//! client sending the same service-account or bootstrap token on every request pays for the
//! signature check and the lookups of its ServiceAccount and bound object once per period, not
//! once per request. Failures are not kept (kube's default failure TTL is 0): a wrong token is
//! a 401 each time it is tried. As in kube, a token whose pod or account was just deleted keeps
//! working until its entry expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::UserInfo;

/// kube-apiserver's `TokenSuccessCacheTTL`.
pub const SUCCESS_TTL: Duration = Duration::from_secs(10);
/// Entries kept at most; past it the expired ones go, and if that is not enough, all of them
/// (a burst of distinct tokens then costs what it would without a cache).
const CAPACITY: usize = 4096;

type Key = [u8; 32];

pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<Key, (UserInfo, Instant)>>,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::new(SUCCESS_TTL)
    }
}

impl TokenCache {
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The user `token` authenticated as within the last period, if any.
    pub fn get(&self, token: &str, now: Instant) -> Option<UserInfo> {
        let key = key(token);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&key) {
            Some((user, until)) if *until > now => Some(user.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remember that `token` authenticated as `user`, for the period or until the token's
    /// `exp` (a JWT's), whichever comes first.
    pub fn put(&self, token: &str, user: &UserInfo, now: Instant) {
        let lifetime = jwt_lifetime(token).map_or(self.ttl, |left| left.min(self.ttl));
        if lifetime.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key(token), (user.clone(), now + lifetime));
    }
}

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

/// How long a JWT has left by its (already verified) `exp` claim; `None` for a token that is
/// no JWT or has no `exp`.
fn jwt_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let left = exp - jiff::Timestamp::now().as_second();
    Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            ..UserInfo::default()
        }
    }

    fn jwt_expiring_in(seconds: i64) -> String {
        let exp = jiff::Timestamp::now().as_second() + seconds;
        let claims = format!(r#"{{"exp":{exp}}}"#);
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b64(br#"{"alg":"ES256"}"#),
            b64(claims.as_bytes())
        )
    }

    #[test]
    fn a_success_is_kept_for_the_period_only() {
        let cache = TokenCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(cache.get("abc", t0), None);
        cache.put("abc", &alice(), t0);
        assert_eq!(cache.get("abc", t0 + Duration::from_secs(9)), Some(alice()));
        assert_eq!(cache.get("abcd", t0), None);
        assert_eq!(cache.get("abc", t0 + Duration::from_secs(10)), None);
        // The expired entry is gone, not merely hidden.
        assert_eq!(cache.get("abc", t0), None);
    }

    #[test]
    fn a_jwt_is_never_kept_past_its_exp() {
        let cache = TokenCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let soon = jwt_expiring_in(2);
        cache.put(&soon, &alice(), t0);
        assert_eq!(cache.get(&soon, t0 + Duration::from_secs(1)), Some(alice()));
        assert_eq!(cache.get(&soon, t0 + Duration::from_secs(3)), None);
        let expired = jwt_expiring_in(-5);
        cache.put(&expired, &alice(), t0);
        assert_eq!(cache.get(&expired, t0), None);
        let later = jwt_expiring_in(3600);
        cache.put(&later, &alice(), t0);
        assert_eq!(cache.get(&later, t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn a_full_cache_makes_room() {
        let cache = TokenCache::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..CAPACITY {
            cache.put(&format!("t{i}"), &alice(), t0);
        }
        cache.put("new", &alice(), t0);
        assert_eq!(cache.get("new", t0), Some(alice()));
        let len = cache.entries.lock().unwrap().len();
        assert!(len <= CAPACITY, "{len}");
    }
}
