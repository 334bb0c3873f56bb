//! The files of API-backed volumes, as the kubelet projects them: configMap and secret keys
//! (all, or the `items` picked, `optional` sources may be missing), downward API fields, and
//! service-account tokens from the TokenRequest API bound to the pod, refreshed before they
//! expire (the kubelet's token manager: at 80 % of the token's lifetime, or after 24 h).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, Secret,
    ServiceAccount, ServiceAccountTokenProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::PostParams;
use kube::{Api, Client};

use super::atomic_writer::{self, FileProjection, Payload};
use crate::pods::env;

/// The mode of a file nobody gave one (0644).
pub const DEFAULT_MODE: i32 = 0o644;
/// The kubelet refreshes a token that has lived this long, whatever its lifetime.
const MAX_TOKEN_AGE_SECONDS: i64 = 24 * 3600;

/// What a projection needs to know about where the pod runs.
pub struct Projector<'a> {
    pub client: &'a Client,
    pub pod: &'a Pod,
    pub addresses: &'a env::Addresses,
    /// The node's allocatable resources: a `resourceFieldRef` limit the container lacks.
    pub allocatable: &'a BTreeMap<String, Quantity>,
    /// The volume as written before, if it is being re-synced: its service-account tokens
    /// are kept until they are due for renewal.
    pub written: Option<&'a Path>,
}

impl Projector<'_> {
    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    /// Every source of a projected volume, merged into one payload.
    pub async fn projected(&self, v: &ProjectedVolumeSource) -> Result<Payload> {
        let default_mode = v.default_mode.unwrap_or(DEFAULT_MODE);
        let mut payload = Payload::new();
        for src in v.sources.iter().flatten() {
            let part = if let Some(cm) = &src.config_map {
                self.config_map(&cm.name, cm.items.as_deref(), cm.optional, default_mode)
                    .await?
            } else if let Some(s) = &src.secret {
                self.secret(&s.name, s.items.as_deref(), s.optional, default_mode)
                    .await?
            } else if let Some(d) = &src.downward_api {
                self.downward(d.items.as_deref().unwrap_or_default(), default_mode)?
            } else if let Some(t) = &src.service_account_token {
                self.token(t, default_mode).await?
            } else {
                bail!("projected volume source not supported by skiff");
            };
            payload.extend(part);
        }
        Ok(payload)
    }

    /// The keys of ConfigMap `name` (an `optional` one that does not exist projects nothing).
    pub async fn config_map(
        &self,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
        default_mode: i32,
    ) -> Result<Payload> {
        let Some(obj) = self.fetch::<ConfigMap>("configmap", name, optional).await? else {
            return Ok(Payload::new());
        };
        let files = keyed_files(
            obj.data,
            obj.binary_data
                .map(|b| b.into_iter().map(|(k, v)| (k, v.0)).collect()),
        );
        select("configmap", files, items, optional, default_mode)
    }

    /// The keys of Secret `name` (an `optional` one that does not exist projects nothing).
    pub async fn secret(
        &self,
        name: &str,
        items: Option<&[KeyToPath]>,
        optional: Option<bool>,
        default_mode: i32,
    ) -> Result<Payload> {
        let Some(obj) = self.fetch::<Secret>("secret", name, optional).await? else {
            return Ok(Payload::new());
        };
        let files = keyed_files(
            obj.string_data,
            obj.data
                .map(|b| b.into_iter().map(|(k, v)| (k, v.0)).collect()),
        );
        select("secret", files, items, optional, default_mode)
    }

    /// Object `name` of the pod's namespace; `None` when it is missing and `optional`, an
    /// error (`<kind> "name" not found`) when it is missing and required.
    async fn fetch<K>(&self, kind: &str, name: &str, optional: Option<bool>) -> Result<Option<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        crate::pods::optional_object(self.client, &self.namespace(), kind, name, optional).await
    }

    /// Downward API files: the pod's fields the kubelet offers (`fieldRef`) and its
    /// containers' resources (`resourceFieldRef`).
    pub fn downward(&self, items: &[DownwardAPIVolumeFile], default_mode: i32) -> Result<Payload> {
        let mut payload = Payload::new();
        for item in items {
            let value = if let Some(f) = &item.field_ref {
                env::field_ref(self.pod, &f.field_path, self.addresses)
                    .ok_or_else(|| anyhow!("unsupported fieldRef {}", f.field_path))?
            } else if let Some(r) = &item.resource_field_ref {
                let c = env::resource_container(self.pod, r.container_name.as_deref(), None)
                    .map_err(|e| anyhow!(e))?;
                env::resource_value(&r.resource, r.divisor.as_ref(), c, self.allocatable)
                    .map_err(|e| anyhow!(e))?
            } else {
                bail!(
                    "downwardAPI {}: neither fieldRef nor resourceFieldRef",
                    item.path
                );
            };
            payload.insert(
                item.path.clone(),
                file(value.into_bytes(), item.mode, default_mode),
            );
        }
        Ok(payload)
    }

    /// The token written before at `path`, unless it is due for renewal (or unreadable).
    fn kept_token(&self, path: &str) -> Option<Vec<u8>> {
        let token = atomic_writer::read(self.written?, path).ok()?;
        let (iat, exp) = token_times(&token)?;
        let now = jiff::Timestamp::now().as_second();
        (!token_needs_refresh(iat, exp, now)).then_some(token)
    }

    /// A token of the pod's service account, bound to the pod (it dies with the pod).
    pub async fn token(
        &self,
        t: &ServiceAccountTokenProjection,
        default_mode: i32,
    ) -> Result<Payload> {
        if let Some(token) = self.kept_token(&t.path) {
            return Ok(Payload::from([(
                t.path.clone(),
                file(token, None, default_mode),
            )]));
        }
        let meta = &self.pod.metadata;
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: t
                    .audience
                    .clone()
                    .filter(|a| !a.is_empty())
                    .into_iter()
                    .collect(),
                expiration_seconds: t.expiration_seconds,
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: meta.name.clone(),
                    uid: meta.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace());
        let answer: TokenRequest = api
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token of service account {account}"))?;
        let token = answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("the TokenRequest answer has no token"))?;
        Ok(Payload::from([(
            t.path.clone(),
            file(token.into_bytes(), None, default_mode),
        )]))
    }
}

/// The files of `data` as `items` picks them (all keys when there are none). A picked key
/// that is missing fails the volume unless the source is optional (as the kubelet does).
/// The files of a ConfigMap (`data`, `binaryData`) or Secret (`stringData`, `data`): the
/// string keys, then the byte keys.
fn keyed_files(
    strings: Option<BTreeMap<String, String>>,
    bytes: Option<BTreeMap<String, Vec<u8>>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = strings
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    files.extend(bytes.unwrap_or_default());
    files
}

fn select(
    what: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    default_mode: i32,
) -> Result<Payload> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data
            .into_iter()
            .map(|(k, v)| (k, file(v, None, default_mode)))
            .collect());
    };
    let mut payload = Payload::new();
    for item in items {
        match data.get(&item.key) {
            Some(v) => {
                payload.insert(item.path.clone(), file(v.clone(), item.mode, default_mode));
            }
            None if optional == Some(true) => {}
            None => bail!("{what} references non-existent config key: {}", item.key),
        }
    }
    Ok(payload)
}

fn file(data: Vec<u8>, mode: Option<i32>, default_mode: i32) -> FileProjection {
    FileProjection {
        data,
        mode: mode.unwrap_or(default_mode).clamp(0, 0o777) as u32,
    }
}

/// Whether a token issued at `iat` and expiring at `exp` (seconds) is due for a new one at
/// `now`: past 80 % of its lifetime, or older than a day.
pub fn token_needs_refresh(iat: i64, exp: i64, now: i64) -> bool {
    let ttl = (exp - iat).max(0);
    now >= iat + MAX_TOKEN_AGE_SECONDS || now >= exp - ttl / 5
}

/// `(iat, exp)` of a JWT, read without checking its signature (the agent only needs to know
/// when to ask for a new one).
pub fn token_times(token: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(token).ok()?;
    let claims = text.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some((v.get("iat")?.as_i64()?, v.get("exp")?.as_i64()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_eighty_percent_or_a_day() {
        // A one-hour token: due after 48 minutes.
        assert!(!token_needs_refresh(0, 3600, 2879));
        assert!(token_needs_refresh(0, 3600, 2880));
        // A year-long token: due after a day.
        assert!(!token_needs_refresh(0, 365 * 86400, 86399));
        assert!(token_needs_refresh(0, 365 * 86400, 86400));
    }

    #[test]
    fn reads_the_times_of_a_jwt() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"iat":100,"exp":3700,"sub":"x"}"#)
        );
        assert_eq!(token_times(jwt.as_bytes()), Some((100, 3700)));
        assert_eq!(token_times(b"not a token"), None);
    }

    #[test]
    fn picks_items_and_modes() {
        let data = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        let all = select("configmap", data.clone(), None, None, 0o644).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["a"].mode, 0o644);
        let items = [KeyToPath {
            key: "b".into(),
            path: "dir/b.txt".into(),
            mode: Some(0o400),
        }];
        let picked = select("configmap", data.clone(), Some(&items), None, 0o644).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked["dir/b.txt"].data, b"2");
        assert_eq!(picked["dir/b.txt"].mode, 0o400);
        let missing = [KeyToPath {
            key: "c".into(),
            path: "c".into(),
            mode: None,
        }];
        let err = select("configmap", data.clone(), Some(&missing), None, 0o644).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configmap references non-existent config key: c"
        );
        assert!(
            select("configmap", data, Some(&missing), Some(true), 0o644)
                .unwrap()
                .is_empty()
        );
    }
}
