//! Pod volumes a container mounts: emptyDir (a directory of the pod), hostPath, and the
//! API-backed configMap, secret, downwardAPI and projected volumes, whose files are written
//! with the kubelet's [`atomic_writer`] (from [`projected`]) before a container starts, kept
//! up to date with their objects and the pod's metadata while it runs ([`resync`]), their
//! service-account tokens renewed when due ([`refresh_tokens`]).
//! Other volume types are skipped with a warning.

pub mod atomic_writer;
pub mod projected;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use self::atomic_writer::Payload;
use self::projected::{DEFAULT_MODE, Projector};
use super::Agent;
use super::env::Addresses;

/// (host dir, path in container, read-only) for each of `c`'s volumeMounts.
pub async fn mounts(
    agent: &Agent,
    pod: &Pod,
    uid: &str,
    at: &Addresses,
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
        let ready = volume_dir(agent, pod, uid, at, v).await;
        let ready = ready.map_err(|e| MountError {
            volume: v.name.clone(),
            message: format!("{e:#}"),
        })?;
        let Some(host) = ready else {
            tracing::warn!(volume = %v.name, "skipping a volume type skiff does not support yet");
            continue;
        };
        // A subPath is bound to the file it resolves to now: a later update of the volume
        // swaps `..data` but not what the container already mounted (as in Kubernetes).
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

/// A volume that could not be made ready: the container waits (ContainerCreating) and the
/// kubelet's FailedMount event says why.
#[derive(Debug)]
pub struct MountError {
    pub volume: String,
    pub message: String,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MountVolume.SetUp failed for volume \"{}\" : {}",
            self.volume, self.message
        )
    }
}

impl std::error::Error for MountError {}

/// The host directory of volume `v`, made ready (files written for API-backed volumes);
/// `None` for a type skiff does not support.
async fn volume_dir(
    agent: &Agent,
    pod: &Pod,
    uid: &str,
    at: &Addresses,
    v: &Volume,
) -> Result<Option<PathBuf>> {
    let dir = volume_path(agent, uid, v);
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
    // Written once per pod; later changes come from resync (a restarted container sees the
    // volume as it is now, its tokens kept).
    let written = atomic_writer::is_written(&dir).then_some(dir.as_path());
    let Some(payload) = payload(agent, pod, at, v, written).await? else {
        return Ok(None);
    };
    write(&dir, &payload)?;
    Ok(Some(dir))
}

/// The files of an API-backed volume; `None` for any other kind.
async fn payload(
    agent: &Agent,
    pod: &Pod,
    at: &Addresses,
    v: &Volume,
    written: Option<&Path>,
) -> Result<Option<Payload>> {
    let allocatable = crate::node::allocatable(&agent.cfg);
    let p = Projector {
        client: &agent.client,
        pod,
        addresses: at,
        allocatable: &allocatable,
        written,
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

fn volume_path(agent: &Agent, uid: &str, v: &Volume) -> PathBuf {
    agent.runtime.pod_dir(uid).join("volumes").join(&v.name)
}

/// Renew the service-account tokens of the pod's projected volumes that are due (see
/// [`projected::token_needs_refresh`]): the whole volume is projected again (its other
/// tokens kept) and swapped in atomically. Volumes not written yet (no container started)
/// are left to [`mounts`].
pub async fn refresh_tokens(agent: &Agent, pod: &Pod, uid: &str, at: &Addresses) -> Result<()> {
    let now = jiff::Timestamp::now().as_second();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(pv) = &v.projected else { continue };
        let dir = volume_path(agent, uid, v);
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
        if let Some(payload) = payload(agent, pod, at, v, Some(&dir)).await? {
            write(&dir, &payload)?;
            tracing::info!(volume = %v.name, pod = %uid, "renewed the service-account token");
        }
    }
    Ok(())
}

/// What one [`resync`] did: the volumes whose files changed, and those whose source failed
/// (volume, message), which keep their files.
#[derive(Debug, Default)]
pub struct Resynced {
    pub changed: Vec<String>,
    pub failed: Vec<(String, String)>,
}

/// Bring every API-backed volume already written for the pod up to date with its objects
/// and the pod's metadata (the kubelet's periodic volume re-sync): each is projected again
/// and swapped in atomically when it differs, its tokens kept until due. A volume whose
/// source fails keeps its files, as the kubelet's do (it reports FailedMount).
pub async fn resync(agent: &Agent, pod: &Pod, uid: &str, at: &Addresses) -> Resynced {
    let mut done = Resynced::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = volume_path(agent, uid, v);
        if !atomic_writer::is_written(&dir) {
            continue;
        }
        let outcome = match payload(agent, pod, at, v, Some(&dir)).await {
            Ok(Some(payload)) => atomic_writer::write(&dir, &payload).map_err(anyhow::Error::from),
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(true) => done.changed.push(v.name.clone()),
            Ok(false) => {}
            Err(e) => done.failed.push((v.name.clone(), format!("{e:#}"))),
        }
    }
    done
}
