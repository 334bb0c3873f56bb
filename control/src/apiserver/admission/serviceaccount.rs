//! kube's ServiceAccount admission plugin (plugin/pkg/admission/serviceaccount) for pod
//! creation: the pod's service account must exist, and unless `automountServiceAccountToken`
//! is false (the pod's setting wins over the account's) the pod gets the projected
//! `kube-api-access-<random>` volume (a bound token, the cluster CA from the `kube-root-ca.crt`
//! ConfigMap and the namespace) mounted read-only in every container at
//! [`MOUNT_PATH`]. Mirror pods are left as they are: they stand for static pods, which run
//! from a manifest and may not hold API credentials.

use std::time::Duration;

use serde_json::{Value, json};

use super::spec_mut;

use crate::apiserver::object::{self, decode};
use crate::apiserver::resources;
use crate::apiserver::status::{ApiError, ApiResult};
use crate::store::Store;

/// Where the token, `ca.crt` and `namespace` appear in every container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The name of the projected volume, before its random suffix.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap the root-CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// kube asks for an hour and 7 seconds: the odd seconds tell the token's issuer that this is
/// the admission plugin's token (kube-apiserver may extend it to a year for old clients;
/// skiff does not, so it is simply a one-hour token).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
const DEFAULT_ACCOUNT: &str = "default";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The `default` account is made by a controller moments after its namespace, so a pod
/// created right after the namespace waits for it a little (as kube does: 10 tries).
const DEFAULT_ACCOUNT_TRIES: usize = 10;

/// Admit a pod being created in `ns`: look its service account up and mount its token.
/// `display_name` is the pod's name, or its generateName (as kube's errors show it).
pub async fn admit(
    store: &dyn Store,
    ns: &str,
    pod: &mut Value,
    display_name: &str,
) -> ApiResult<()> {
    if is_mirror(pod) {
        return Ok(());
    }
    let account = account_name(pod);
    let Some(sa) = lookup(store, ns, &account).await? else {
        return Err(ApiError::forbidden(format!(
            "pods \"{display_name}\" is forbidden: error looking up service account \
             {ns}/{account}: serviceaccount \"{account}\" not found"
        )));
    };
    if should_automount(&sa, pod) {
        mount_token(pod, &object::name_suffix());
    }
    Ok(())
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// `serviceAccountName`, else the deprecated `serviceAccount`, else `default`; written back so
/// the pod names the account it was admitted with.
fn account_name(pod: &mut Value) -> String {
    let spec = spec_mut(pod);
    let named = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = named("serviceAccountName")
        .or_else(|| named("serviceAccount"))
        .unwrap_or_else(|| DEFAULT_ACCOUNT.to_string());
    spec.insert("serviceAccountName".into(), json!(name));
    name
}

/// The account as stored, waiting a little for `default` (see [`DEFAULT_ACCOUNT_TRIES`]).
async fn lookup(store: &dyn Store, ns: &str, name: &str) -> ApiResult<Option<Value>> {
    let info = resources::lookup("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts are not served"))?;
    let key = info.key(Some(ns), name);
    let tries = if name == DEFAULT_ACCOUNT {
        DEFAULT_ACCOUNT_TRIES
    } else {
        1
    };
    for attempt in 0..tries {
        if attempt > 0 {
            use rand::Rng;
            let wait = rand::rng().random_range(100..200);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let found = store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, "", "serviceaccounts", name))?;
        if let Some(kv) = found {
            return decode(&kv).map(Some);
        }
    }
    Ok(None)
}

/// The pod's `automountServiceAccountToken` if set, else the account's, else true.
fn should_automount(sa: &Value, pod: &Value) -> bool {
    let flag = |v: Option<&Value>| v.and_then(Value::as_bool);
    flag(pod.pointer("/spec/automountServiceAccountToken"))
        .or_else(|| flag(sa.get("automountServiceAccountToken")))
        .unwrap_or(true)
}

/// Add the projected volume (unless one is already mounted at [`MOUNT_PATH`] by every
/// container) and mount it read-only in each container that does not mount that path itself.
fn mount_token(pod: &mut Value, suffix: &str) {
    let spec = spec_mut(pod);
    let existing: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .filter(|n| n.starts_with(VOLUME_PREFIX))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // A pod submitted with the volume already (a copy of an admitted pod) keeps it.
    let volume = existing
        .into_iter()
        .next()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            mounted |= add_mount(c, &volume);
        }
    }
    if !mounted {
        return;
    }
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut();
    if let Some(volumes) = volumes
        && !volumes.iter().any(|v| v["name"] == json!(volume))
    {
        volumes.push(projected_volume(&volume));
    }
}

/// Mount `volume` in container `c` unless it already mounts something at [`MOUNT_PATH`].
/// Returns whether the container mounts `volume` afterwards.
fn add_mount(c: &mut Value, volume: &str) -> bool {
    let Some(obj) = c.as_object_mut() else {
        return false;
    };
    let mounts = obj.entry("volumeMounts").or_insert_with(|| json!([]));
    let Some(mounts) = mounts.as_array_mut() else {
        return false;
    };
    if let Some(m) = mounts.iter().find(|m| m["mountPath"] == json!(MOUNT_PATH)) {
        return m["name"] == json!(volume);
    }
    mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
    true
}

/// The volume kube's plugin adds, field for field.
pub fn projected_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    "path": "token",
                }},
                {"configMap": {
                    "name": ROOT_CA_CONFIG_MAP,
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                }},
                {"downwardAPI": {
                    "items": [{
                        "path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                    }],
                }},
            ],
            "defaultMode": 420,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> Value {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": "foo"},
            "spec": {
                "initContainers": [{"name": "init", "image": "i"}],
                "containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i",
                    "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}],
                "volumes": [{"name": "own", "emptyDir": {}}],
            },
        });
        if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        p
    }

    #[test]
    fn mounts_the_projected_volume_in_every_container_without_its_own() {
        let mut p = pod(json!({}));
        mount_token(&mut p, "abcde");
        let vols = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[1], projected_volume("kube-api-access-abcde"));
        let want =
            json!({"name": "kube-api-access-abcde", "readOnly": true, "mountPath": MOUNT_PATH});
        assert_eq!(p["spec"]["initContainers"][0]["volumeMounts"][0], want);
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"][0], want);
        // The container that mounts its own volume there keeps it, alone.
        let b = p["spec"]["containers"][1]["volumeMounts"]
            .as_array()
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["name"], "own");
    }

    #[test]
    fn no_volume_when_every_container_mounts_its_own() {
        let mut p = json!({"spec": {"containers": [{"name": "b",
            "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}],
            "volumes": [{"name": "own", "emptyDir": {}}]}});
        mount_token(&mut p, "abcde");
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_pod_setting_wins_over_the_account() {
        let off = json!({"automountServiceAccountToken": false});
        let on = json!({"automountServiceAccountToken": true});
        let plain = json!({});
        assert!(should_automount(&plain, &pod(json!({}))));
        assert!(!should_automount(&off, &pod(json!({}))));
        assert!(should_automount(&off, &pod(on.clone())));
        assert!(!should_automount(&on, &pod(off.clone())));
    }

    #[test]
    fn account_names_default_and_follow_the_legacy_field() {
        let mut p = json!({"spec": {}});
        assert_eq!(account_name(&mut p), "default");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        let mut p = json!({"spec": {"serviceAccount": "builder"}});
        assert_eq!(account_name(&mut p), "builder");
        let mut p = json!({"spec": {"serviceAccountName": "x", "serviceAccount": "y"}});
        assert_eq!(account_name(&mut p), "x");
    }

    #[test]
    fn mirror_pods_are_recognised() {
        let p = json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "abc"}}});
        assert!(is_mirror(&p));
        assert!(!is_mirror(&pod(json!({}))));
    }
}
