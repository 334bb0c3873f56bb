//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): a request whose headers ask to act
//! as another user is served as that user once the authenticated requester is allowed to
//! `impersonate` each part of the new identity, as kube-apiserver's `WithImpersonation` filter
//! does it:
//!
//! - `Impersonate-User: NAME`: resource `users` (group ""), or for
//!   `system:serviceaccount:NS:NAME` resource `serviceaccounts` named NAME in namespace NS;
//! - `Impersonate-Group: G` (repeatable): resource `groups` (group "");
//! - `Impersonate-Uid: U`: resource `uids` in `authentication.k8s.io`;
//! - `Impersonate-Extra-KEY: V` (repeatable): resource `userextras`, subresource KEY (lowercased,
//!   percent-decoded), in `authentication.k8s.io`.
//!
//! Groups, a uid or extras without a user are refused. The authorizing itself is the caller's
//! (the authorizer lives beside this module, not in it).

use axum::http::HeaderMap;

use super::{ANONYMOUS_USER, AUTHENTICATED_GROUP, UNAUTHENTICATED_GROUP, UserInfo};
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::validation::{is_dns1123_label, is_dns1123_subdomain};

const USER_HEADER: &str = "impersonate-user";
const GROUP_HEADER: &str = "impersonate-group";
const UID_HEADER: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// What kind of identity part a target is (kube's `ObjectReference` kinds for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    User,
    ServiceAccount,
    Group,
    UserExtra,
    Uid,
}

/// One part of the identity asked for: authorized as verb `impersonate` on
/// `group`/`resource`[/`subresource`] named `name` in `namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The extra's key (`userextras/<key>`); empty for other kinds.
    pub extra_key: String,
}

impl Target {
    pub fn group(&self) -> &'static str {
        match self.kind {
            Kind::User | Kind::ServiceAccount | Kind::Group => "",
            Kind::UserExtra | Kind::Uid => AUTHENTICATION_GROUP,
        }
    }

    pub fn resource(&self) -> &'static str {
        match self.kind {
            Kind::User => "users",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Group => "groups",
            Kind::UserExtra => "userextras",
            Kind::Uid => "uids",
        }
    }

    /// Go's `%v` of the `ObjectReference` kube builds for it, for the error text.
    fn go_reference(&self) -> String {
        let kind = match self.kind {
            Kind::User => "User",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Group => "Group",
            Kind::UserExtra => "UserExtra",
            Kind::Uid => "UID",
        };
        let api_version = if self.group().is_empty() {
            String::new()
        } else {
            format!("{AUTHENTICATION_GROUP}/v1")
        };
        // {Kind Namespace Name UID APIVersion ResourceVersion FieldPath}
        format!(
            "{{{kind} {} {}  {api_version}  {}}}",
            self.namespace, self.name, self.extra_key
        )
    }
}

/// A header's values as text (Go takes the bytes as they are).
fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = String> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// kube's `serviceaccount.SplitUsername`: (namespace, name) of a service account's user name.
fn split_service_account(user: &str) -> Option<(&str, &str)> {
    let (ns, name) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
    let valid = is_dns1123_label(ns) && is_dns1123_subdomain(name) && !name.contains(':');
    valid.then_some((ns, name))
}

/// Go's `url.PathUnescape`, `None` for a malformed escape.
fn path_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// kube's `buildImpersonationRequests`: the targets in kube's order (user, groups, extras,
/// uid), or none when the request impersonates nobody.
pub fn targets(headers: &HeaderMap, request_uri: &str) -> ApiResult<Vec<Target>> {
    let target = |kind, namespace: &str, name: &str, extra_key: &str| Target {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        extra_key: extra_key.to_string(),
    };
    let mut out = Vec::new();
    let user = values(headers, USER_HEADER).next().unwrap_or_default();
    if !user.is_empty() {
        out.push(match split_service_account(&user) {
            Some((ns, name)) => target(Kind::ServiceAccount, ns, name, ""),
            None => target(Kind::User, "", &user, ""),
        });
    }
    for group in values(headers, GROUP_HEADER) {
        out.push(target(Kind::Group, "", &group, ""));
    }
    let mut extra_headers: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with(EXTRA_PREFIX))
        .collect();
    extra_headers.sort_unstable();
    extra_headers.dedup();
    for header in extra_headers {
        let encoded = &header[EXTRA_PREFIX.len()..];
        let key = path_unescape(encoded).unwrap_or_else(|| encoded.to_string());
        for value in values(headers, header) {
            out.push(target(Kind::UserExtra, "", &value, &key));
        }
    }
    let uid = values(headers, UID_HEADER).next().unwrap_or_default();
    if !uid.is_empty() {
        out.push(target(Kind::Uid, "", &uid, ""));
    }
    if !out.is_empty() && user.is_empty() {
        // kube answers this with a plain 500 (`responsewriters.InternalError`).
        let listed: Vec<String> = out.iter().map(Target::go_reference).collect();
        return Err(ApiError::internal(format!(
            "Internal Server Error: {request_uri:?}: requested [{}] without impersonating a user",
            listed.join(" ")
        )));
    }
    Ok(out)
}

/// The identity the targets make, as kube's filter assembles it.
fn impersonated(targets: &[Target], groups_given: bool) -> UserInfo {
    let mut user = UserInfo::default();
    for t in targets {
        match t.kind {
            Kind::User => user.name = t.name.clone(),
            Kind::ServiceAccount => {
                user.name = format!("{SERVICE_ACCOUNT_PREFIX}{}:{}", t.namespace, t.name);
                if !groups_given {
                    // A service account's groups are a fixed mapping.
                    user.groups = vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{}", t.namespace),
                    ];
                }
            }
            Kind::Group => user.groups.push(t.name.clone()),
            Kind::UserExtra => {
                let values: &mut Vec<String> = user.extra.entry(t.extra_key.clone()).or_default();
                values.push(t.name.clone());
            }
            Kind::Uid => user.uid = t.name.clone(),
        }
    }
    let has = |g: &str| user.groups.iter().any(|x| x == g);
    if user.name != ANONYMOUS_USER {
        if !has(AUTHENTICATED_GROUP) && !has(UNAUTHENTICATED_GROUP) {
            user.groups.push(AUTHENTICATED_GROUP.into());
        }
    } else if !has(UNAUTHENTICATED_GROUP) {
        user.groups.push(UNAUTHENTICATED_GROUP.into());
    }
    user
}

/// The user a request is served as: `requester` itself, or the identity its impersonation
/// headers ask for once `authorize` has allowed `requester` to impersonate every part of it
/// (the first refusal is the answer).
pub fn impersonate(
    requester: UserInfo,
    headers: &HeaderMap,
    request_uri: &str,
    authorize: impl Fn(&UserInfo, &Target) -> ApiResult<()>,
) -> ApiResult<UserInfo> {
    let targets = targets(headers, request_uri)?;
    if targets.is_empty() {
        return Ok(requester);
    }
    for t in &targets {
        authorize(&requester, t)?;
    }
    let groups_given = headers.contains_key(GROUP_HEADER);
    let user = impersonated(&targets, groups_given);
    tracing::debug!(requester = %requester.name, user = %user.name, "impersonating");
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            groups: vec!["devs".into(), AUTHENTICATED_GROUP.into()],
            ..UserInfo::default()
        }
    }

    fn allow_all(_: &UserInfo, _: &Target) -> ApiResult<()> {
        Ok(())
    }

    #[test]
    fn no_headers_keep_the_requester() {
        let user = impersonate(alice(), &HeaderMap::new(), "/api", allow_all).unwrap();
        assert_eq!(user, alice());
    }

    #[test]
    fn a_user_joins_system_authenticated_and_nothing_else() {
        let h = headers(&[("Impersonate-User", "bob")]);
        let user = impersonate(alice(), &h, "/api", allow_all).unwrap();
        assert_eq!(user.name, "bob");
        assert_eq!(user.groups, vec![AUTHENTICATED_GROUP]);
        let h = headers(&[
            ("Impersonate-User", "bob"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Group", "system:unauthenticated"),
            ("Impersonate-Uid", "u-1"),
            ("Impersonate-Extra-Scopes", "view"),
            ("Impersonate-Extra-Scopes", "edit"),
            ("Impersonate-Extra-example.com%2fteam", "blue"),
        ]);
        let user = impersonate(alice(), &h, "/api", allow_all).unwrap();
        assert_eq!(user.groups, vec!["ops", "system:unauthenticated"]);
        assert_eq!(user.uid, "u-1");
        assert_eq!(user.extra["scopes"], vec!["view", "edit"]);
        assert_eq!(user.extra["example.com/team"], vec!["blue"]);
    }

    #[test]
    fn service_accounts_get_their_groups_unless_groups_are_given() {
        let h = headers(&[("Impersonate-User", "system:serviceaccount:foo:default")]);
        let t = targets(&h, "/api").unwrap();
        assert_eq!(t[0].kind, Kind::ServiceAccount);
        assert_eq!(
            (t[0].namespace.as_str(), t[0].name.as_str()),
            ("foo", "default")
        );
        let user = impersonate(alice(), &h, "/api", allow_all).unwrap();
        assert_eq!(user.name, "system:serviceaccount:foo:default");
        assert_eq!(
            user.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:foo",
                AUTHENTICATED_GROUP
            ]
        );
        let h = headers(&[
            ("Impersonate-User", "system:serviceaccount:foo:default"),
            ("Impersonate-Group", "x"),
        ]);
        let user = impersonate(alice(), &h, "/api", allow_all).unwrap();
        assert_eq!(user.groups, vec!["x", AUTHENTICATED_GROUP]);
        // Not a valid service account name: an ordinary user.
        let h = headers(&[("Impersonate-User", "system:serviceaccount:Foo:a:b")]);
        assert_eq!(targets(&h, "/api").unwrap()[0].kind, Kind::User);
    }

    #[test]
    fn anonymous_stays_unauthenticated() {
        let h = headers(&[("Impersonate-User", ANONYMOUS_USER)]);
        let user = impersonate(alice(), &h, "/api", allow_all).unwrap();
        assert_eq!(user.groups, vec![UNAUTHENTICATED_GROUP]);
    }

    #[test]
    fn groups_without_a_user_are_refused() {
        let h = headers(&[("Impersonate-Group", "devs")]);
        let err = impersonate(alice(), &h, "/api/v1/pods?limit=1", allow_all).unwrap_err();
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            r#"Internal Server Error: "/api/v1/pods?limit=1": requested [{Group  devs    }] without impersonating a user"#
        );
    }

    #[test]
    fn every_part_is_authorized_and_the_first_refusal_wins() {
        let h = headers(&[
            ("Impersonate-User", "bob"),
            ("Impersonate-Group", "ops"),
            ("Impersonate-Extra-Scopes", "view"),
        ]);
        let seen = std::cell::RefCell::new(Vec::new());
        let user = impersonate(alice(), &h, "/api", |who, t| {
            assert_eq!(who.name, "alice");
            seen.borrow_mut()
                .push(format!("{}/{}/{}", t.group(), t.resource(), t.name));
            Ok(())
        })
        .unwrap();
        assert_eq!(user.name, "bob");
        assert_eq!(
            *seen.borrow(),
            vec![
                "/users/bob",
                "/groups/ops",
                "authentication.k8s.io/userextras/view"
            ]
        );
        let err = impersonate(alice(), &h, "/api", |_, t| {
            if t.kind == Kind::Group {
                Err(ApiError::forbidden("no"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.code, 403);
    }
}
