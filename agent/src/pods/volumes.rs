//! Pod volumes a container mounts: emptyDir (a directory of the pod), hostPath, and the
//! API-backed configMap and secret volumes (files written when the container starts).
//! Other volume types are skipped with a warning.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret};
use kube::Api;

use super::Agent;

/// (host dir, path in container, read-only) for each of `c`'s volumeMounts.
pub async fn mounts(
    agent: &Agent,
    pod: &Pod,
    uid: &str,
    c: &Container,
) -> Result<Vec<(PathBuf, String, bool)>> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            bail!("volumeMount {} refers to no volume of the pod", m.name);
        };
        let dir = agent.runtime.pod_dir(uid).join("volumes").join(&v.name);
        let host = if v.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
            dir
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            if h.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&p)?;
            }
            if !p.exists() {
                bail!("hostPath {} does not exist", h.path);
            }
            p
        } else if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(agent.client.clone(), &ns);
            let Some(obj) = api.get_opt(&cm.name).await? else {
                if cm.optional == Some(true) {
                    std::fs::create_dir_all(&dir)?;
                    out.push((dir, m.mount_path.clone(), true));
                    continue;
                }
                bail!("configmap \"{}\" not found", cm.name);
            };
            let mut files: Vec<(String, Vec<u8>)> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            files.extend(
                obj.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            write_files(&dir, files, cm.items.as_deref())?;
            dir
        } else if let Some(sv) = &v.secret {
            let name = sv.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(agent.client.clone(), &ns);
            let Some(obj) = api.get_opt(&name).await? else {
                if sv.optional == Some(true) {
                    std::fs::create_dir_all(&dir)?;
                    out.push((dir, m.mount_path.clone(), true));
                    continue;
                }
                bail!("secret \"{name}\" not found");
            };
            let mut files: Vec<(String, Vec<u8>)> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            files.extend(
                obj.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            write_files(&dir, files, sv.items.as_deref())?;
            dir
        } else {
            tracing::warn!(volume = %v.name, "skipping a volume type skiff does not support yet");
            continue;
        };
        let sub = m.sub_path.clone().filter(|s| !s.is_empty());
        let host = match sub {
            Some(s) if !s.contains("..") => host.join(s),
            Some(s) => bail!("subPath {s:?} must not contain '..'"),
            None => host,
        };
        out.push((host, m.mount_path.clone(), m.read_only.unwrap_or(false)));
    }
    Ok(out)
}

fn write_files(
    dir: &PathBuf,
    files: Vec<(String, Vec<u8>)>,
    items: Option<&[KeyToPath]>,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (key, data) in files {
        let rel = match items {
            Some(items) => match items.iter().find(|i| i.key == key) {
                Some(i) => i.path.clone(),
                None => continue,
            },
            None => key,
        };
        if rel.contains("..") || rel.starts_with('/') {
            bail!("volume file path {rel:?} is not a relative path inside the volume");
        }
        let path = dir.join(&rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
