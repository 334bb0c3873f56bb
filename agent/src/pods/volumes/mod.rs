//! Pod volumes a container mounts: emptyDir (a directory of the pod), hostPath, and the
//! API-backed configMap, secret, downwardAPI and projected volumes, whose files are written
//! with the kubelet's [`atomic_writer`] (from [`projected`]) before a container starts; the
//! service-account tokens in them are renewed while the pod runs ([`refresh_tokens`]).
//! Other volume types are skipped with a warning.

pub mod atomic_writer;
pub mod projected;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use self::atomic_writer::Payload;
use self::projected::{DEFAULT_MODE, Projector};
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
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            bail!("volumeMount {} refers to no volume of the pod", m.name);
        };
        let Some(host) = volume_dir(agent, pod, uid, v).await? else {
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

/// The host directory of volume `v`, made ready (files written for API-backed volumes);
/// `None` for a type skiff does not support.
async fn volume_dir(agent: &Agent, pod: &Pod, uid: &str, v: &Volume) -> Result<Option<PathBuf>> {
    let dir = agent.runtime.pod_dir(uid).join("volumes").join(&v.name);
    if v.empty_dir.is_some() {
        std::fs::create_dir_all(&dir)?;
        return Ok(Some(dir));
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        if h.type_.as_deref() == Some("DirectoryOrCreate") {
            std::fs::create_dir_all(&p)?;
        }
        if !p.exists() {
            bail!("hostPath {} does not exist", h.path);
        }
        return Ok(Some(p));
    }
    let Some(payload) = payload(agent, pod, v).await? else {
        return Ok(None);
    };
    write(&dir, &payload)?;
    Ok(Some(dir))
}

/// The files of an API-backed volume; `None` for any other kind.
async fn payload(agent: &Agent, pod: &Pod, v: &Volume) -> Result<Option<Payload>> {
    let host_ip = agent.cfg.node_ip.to_string();
    let p = Projector {
        client: &agent.client,
        pod,
        host_ip: &host_ip,
    };
    let mode = |m: Option<i32>| m.unwrap_or(DEFAULT_MODE);
    Ok(Some(if let Some(cm) = &v.config_map {
        p.config_map(
            &cm.name,
            cm.items.as_deref(),
            cm.optional,
            mode(cm.default_mode),
        )
        .await?
    } else if let Some(sv) = &v.secret {
        let name = sv.secret_name.clone().unwrap_or_default();
        p.secret(
            &name,
            sv.items.as_deref(),
            sv.optional,
            mode(sv.default_mode),
        )
        .await?
    } else if let Some(d) = &v.downward_api {
        p.downward(d.items.as_deref().unwrap_or_default(), mode(d.default_mode))?
    } else if let Some(pv) = &v.projected {
        p.projected(pv).await?
    } else {
        return Ok(None);
    }))
}

fn write(dir: &Path, payload: &Payload) -> Result<()> {
    atomic_writer::write(dir, payload)
        .map(|_| ())
        .with_context(|| format!("writing volume {}", dir.display()))
}

/// Renew the service-account tokens of the pod's projected volumes that are due (see
/// [`projected::token_needs_refresh`]): the whole volume is projected again and swapped in
/// atomically. Volumes not written yet (no container started) are left to [`mounts`].
pub async fn refresh_tokens(agent: &Agent, pod: &Pod, uid: &str) -> Result<()> {
    let now = jiff::Timestamp::now().as_second();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(pv) = &v.projected else { continue };
        let dir = agent.runtime.pod_dir(uid).join("volumes").join(&v.name);
        let due = pv
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.service_account_token.as_ref())
            .any(|t| match atomic_writer::read(&dir, &t.path) {
                Ok(token) => projected::token_times(&token)
                    .is_none_or(|(iat, exp)| projected::token_needs_refresh(iat, exp, now)),
                // Not written yet: the container start writes it.
                Err(_) => false,
            });
        if !due {
            continue;
        }
        if let Some(payload) = payload(agent, pod, v).await? {
            write(&dir, &payload)?;
            tracing::info!(volume = %v.name, pod = %uid, "renewed the service-account token");
        }
    }
    Ok(())
}
