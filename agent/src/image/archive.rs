//! Reading image archives: `docker save` output and OCI image layouts, plain or gzip.
//!
//! The outer archive is unpacked into a scratch directory first because layers are applied in
//! manifest order, not archive order. Entries are stored under numbered file names and looked
//! up through an in-memory table of archive paths, so no archive path ever becomes a host
//! path: nothing in the outer archive can write outside the scratch directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::normalize_reference;

/// Manifests, indexes and configs are small; anything bigger is not what it claims to be.
const MAX_METADATA_BYTES: u64 = 16 << 20;
const MAX_SYMLINK_HOPS: usize = 32;
const MAX_INDEX_DEPTH: usize = 4;

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// One image found in an archive, with its blobs already unpacked to scratch files.
pub(super) struct ImageSource {
    /// Normalized references; may be empty.
    pub names: Vec<String>,
    /// The image config blob, byte for byte (its sha256 is the image id).
    pub config: Vec<u8>,
    /// Layers, bottom first.
    pub layers: Vec<LayerSource>,
}

pub(super) struct LayerSource {
    /// The layer's path inside the archive, for messages.
    pub name: String,
    /// Where the layer blob was unpacked.
    pub file: PathBuf,
}

/// Unpacks `archive` into `scratch` and describes the images in it.
pub(super) fn read(archive: &Path, scratch: &Path) -> Result<Vec<ImageSource>> {
    let files = ArchiveFiles::unpack(archive, scratch)?;
    if files.contains("manifest.json") {
        // Docker >= 25 writes both manifest.json and an OCI index.json; manifest.json is
        // preferred there because its RepoTags are complete references.
        read_docker_save(&files)
    } else if files.contains("index.json") {
        read_oci_layout(&files)
    } else {
        bail!(
            "not an image archive: it has neither manifest.json (docker save) nor index.json (OCI layout)"
        )
    }
}

/// Opens a file as plain bytes, transparently gunzipping it; the format is told by its magic
/// bytes because archive and layer names say nothing reliable about compression.
pub(super) fn open_decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(64 << 10, file);
    let magic = reader.fill_buf()?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        bail!("zstd-compressed archives and layers are not supported")
    } else {
        Ok(Box::new(reader))
    }
}

enum ArchiveEntry {
    File(PathBuf),
    Symlink(String),
}

/// The outer archive's regular files and symlinks, by normalized archive path.
struct ArchiveFiles {
    entries: HashMap<String, ArchiveEntry>,
}

impl ArchiveFiles {
    fn unpack(archive: &Path, scratch: &Path) -> Result<ArchiveFiles> {
        fs::create_dir_all(scratch)?;
        let mut tar = tar::Archive::new(open_decompressed(archive)?);
        let mut entries = HashMap::new();
        for (number, entry) in tar.entries()?.enumerate() {
            let mut entry = entry.context("reading the archive")?;
            let raw_path = entry.path()?.into_owned();
            // JSON manifests can only name UTF-8 paths, so other entries cannot matter.
            let Some(raw_path) = raw_path.to_str() else {
                continue;
            };
            if raw_path.starts_with('/') {
                bail!("archive entry {raw_path:?} escapes the archive: absolute path");
            }
            let path = normalize_archive_path("", raw_path)?;
            if path.is_empty() {
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
                let stored = scratch.join(number.to_string());
                let mut out = File::create(&stored)?;
                io::copy(&mut entry, &mut out).with_context(|| format!("unpacking {raw_path}"))?;
                entries.insert(path, ArchiveEntry::File(stored));
            } else if kind.is_symlink() {
                let target = link_target(&entry, raw_path)?;
                entries.insert(path, ArchiveEntry::Symlink(target));
            } else if kind.is_hard_link() {
                let target = link_target(&entry, raw_path)?;
                let target = normalize_archive_path("", target.trim_start_matches('/'))?;
                match entries.get(&target) {
                    Some(ArchiveEntry::File(stored)) => {
                        let stored = stored.clone();
                        entries.insert(path, ArchiveEntry::File(stored));
                    }
                    _ => bail!("hard link {raw_path} points to missing {target}"),
                }
            }
        }
        Ok(ArchiveFiles { entries })
    }

    fn contains(&self, path: &str) -> bool {
        self.resolve(path).is_ok()
    }

    /// Maps an archive path to the scratch file holding it, following the archive's symlinks
    /// (old `docker save` output links duplicate layers to each other).
    fn resolve(&self, path: &str) -> Result<&Path> {
        let mut current = normalize_archive_path("", path)?;
        for _ in 0..MAX_SYMLINK_HOPS {
            let components: Vec<&str> = current.split('/').collect();
            let mut redirected = None;
            for end in 1..=components.len() {
                let prefix = components[..end].join("/");
                match self.entries.get(&prefix) {
                    Some(ArchiveEntry::File(stored)) if end == components.len() => {
                        return Ok(stored);
                    }
                    Some(ArchiveEntry::Symlink(target)) => {
                        let parent = components[..end - 1].join("/");
                        let base = if target.starts_with('/') { "" } else { &parent };
                        let mut next =
                            normalize_archive_path(base, target.trim_start_matches('/'))?;
                        for rest in &components[end..] {
                            next.push('/');
                            next.push_str(rest);
                        }
                        redirected = Some(next);
                        break;
                    }
                    _ => {}
                }
            }
            match redirected {
                Some(next) => current = next,
                None => bail!("{path} not found in the archive"),
            }
        }
        bail!("{path}: too many levels of symbolic links in the archive")
    }

    fn read_small(&self, path: &str) -> Result<Vec<u8>> {
        let stored = self.resolve(path)?;
        let file = File::open(stored)?;
        let mut bytes = Vec::new();
        file.take(MAX_METADATA_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            bail!("{path} is larger than {MAX_METADATA_BYTES} bytes");
        }
        Ok(bytes)
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let bytes = self.read_small(path)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {path}"))
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw_path: &str) -> Result<String> {
    let target = entry
        .link_name()?
        .ok_or_else(|| anyhow!("link {raw_path} has no target"))?;
    target
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("link {raw_path} has a non-UTF-8 target"))
}

/// Joins `path` onto `base` (both relative to the archive root) and resolves `.` and `..`
/// lexically; going above the archive root is an error.
fn normalize_archive_path(base: &str, path: &str) -> Result<String> {
    let mut components: Vec<&str> = base.split('/').filter(|c| !c.is_empty()).collect();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if components.pop().is_none() {
                    bail!("archive path {path:?} escapes the archive");
                }
            }
            other => components.push(other),
        }
    }
    Ok(components.join("/"))
}

// ---- docker save ----

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn read_docker_save(files: &ArchiveFiles) -> Result<Vec<ImageSource>> {
    let manifest: Vec<DockerManifestEntry> = files.read_json("manifest.json")?;
    // Old archives may carry tags only in `repositories`: repo -> tag -> top layer id.
    let repositories: BTreeMap<String, BTreeMap<String, String>> = if files.contains("repositories")
    {
        files.read_json("repositories").unwrap_or_else(|error| {
            tracing::warn!(
                error = format!("{error:#}"),
                "ignoring unreadable repositories file"
            );
            BTreeMap::new()
        })
    } else {
        BTreeMap::new()
    };

    let mut sources = Vec::new();
    for entry in manifest {
        let mut names: Vec<String> = Vec::new();
        for tag in entry.repo_tags.iter().flatten() {
            push_unique(&mut names, normalize_reference(tag));
        }
        if names.is_empty()
            && let Some(top_layer_id) = entry
                .layers
                .last()
                .and_then(|layer| layer.rsplit_once('/').map(|(dir, _)| dir))
        {
            for (repository, tags) in &repositories {
                for (tag, layer_id) in tags {
                    if layer_id == top_layer_id {
                        push_unique(
                            &mut names,
                            normalize_reference(&format!("{repository}:{tag}")),
                        );
                    }
                }
            }
        }
        let config = files.read_small(&entry.config)?;
        let layers = entry
            .layers
            .iter()
            .map(|name| {
                Ok(LayerSource {
                    name: name.clone(),
                    file: files.resolve(name)?.to_path_buf(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sources.push(ImageSource {
            names,
            config,
            layers,
        });
    }
    Ok(sources)
}

// ---- OCI image layout ----

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

fn read_oci_layout(files: &ArchiveFiles) -> Result<Vec<ImageSource>> {
    if !files.contains("oci-layout") {
        tracing::warn!("OCI archive has no oci-layout file; reading index.json anyway");
    }
    let index: OciIndex = files.read_json("index.json")?;
    let mut sources = Vec::new();
    for descriptor in index.manifests.iter().filter(|d| is_runnable_here(d)) {
        let manifest = resolve_manifest(files, descriptor, 0)?;
        let config = read_blob(files, &manifest.config)?;
        let layers = manifest
            .layers
            .iter()
            .map(|layer| {
                let path = blob_path(&layer.digest)?;
                let file = files.resolve(&path)?.to_path_buf();
                verify_digest(&file, &layer.digest)?;
                Ok(LayerSource { name: path, file })
            })
            .collect::<Result<Vec<_>>>()?;
        sources.push(ImageSource {
            names: names_from_annotations(&descriptor.annotations),
            config,
            layers,
        });
    }
    Ok(sources)
}

/// Follows (possibly nested) indexes down to the image manifest for this node's platform.
fn resolve_manifest(
    files: &ArchiveFiles,
    descriptor: &Descriptor,
    depth: usize,
) -> Result<OciManifest> {
    if depth > MAX_INDEX_DEPTH {
        bail!("image indexes nested too deeply");
    }
    let bytes = read_blob(files, descriptor)?;
    let document: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", descriptor.digest))?;
    let media_type = descriptor
        .media_type
        .as_deref()
        .or_else(|| document.get("mediaType").and_then(|m| m.as_str()))
        .unwrap_or_default();
    let is_index = media_type.contains("image.index")
        || media_type.contains("manifest.list")
        || document.get("manifests").is_some();
    if !is_index {
        return OciManifest::deserialize(&document)
            .with_context(|| format!("parsing manifest {}", descriptor.digest));
    }
    let index = OciIndex::deserialize(&document)
        .with_context(|| format!("parsing index {}", descriptor.digest))?;
    // An index lists one image for several platforms; archives often hold the blobs of only
    // the platform that was pulled.
    let present = |d: &&Descriptor| {
        is_runnable_here(d) && blob_path(&d.digest).is_ok_and(|path| files.contains(&path))
    };
    let chosen = index
        .manifests
        .iter()
        .filter(present)
        .find(|d| d.platform.is_some())
        .or_else(|| {
            index
                .manifests
                .iter()
                .filter(present)
                .find(|d| d.platform.is_none())
        })
        .ok_or_else(|| {
            anyhow!(
                "index {} has no image for linux/{} in this archive",
                descriptor.digest,
                host_architecture()
            )
        })?;
    resolve_manifest(files, chosen, depth + 1)
}

/// False for other platforms' images and for attestations (which carry platform
/// unknown/unknown or a docker reference-type annotation).
fn is_runnable_here(descriptor: &Descriptor) -> bool {
    if descriptor
        .annotations
        .contains_key(ANNOTATION_REFERENCE_TYPE)
    {
        return false;
    }
    match &descriptor.platform {
        None => true,
        Some(platform) => platform.os == "linux" && platform.architecture == host_architecture(),
    }
}

/// The OCI (GOARCH) name of the architecture this agent runs on.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

fn names_from_annotations(annotations: &BTreeMap<String, String>) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(name) = annotations.get(ANNOTATION_CONTAINERD_NAME) {
        push_unique(&mut names, normalize_reference(name));
    }
    if let Some(reference) = annotations.get(ANNOTATION_REF_NAME) {
        if reference.contains(['/', ':', '@']) {
            push_unique(&mut names, normalize_reference(reference));
        } else if names.is_empty() {
            // A bare tag names no repository, and guessing one would invent image names.
            tracing::warn!(
                tag = reference.as_str(),
                "OCI image is tagged without a repository; importing it without a name"
            );
        }
    }
    names
}

fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}

/// `blobs/<algorithm>/<encoded>` for a digest, refusing anything that is not a plain name.
fn blob_path(digest: &str) -> Result<String> {
    let (algorithm, encoded) = digest
        .split_once(':')
        .ok_or_else(|| anyhow!("malformed digest {digest:?}"))?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b));
    if !algorithm_ok || !encoded_ok {
        bail!("malformed digest {digest:?}");
    }
    Ok(format!("blobs/{algorithm}/{encoded}"))
}

fn read_blob(files: &ArchiveFiles, descriptor: &Descriptor) -> Result<Vec<u8>> {
    let bytes = files.read_small(&blob_path(&descriptor.digest)?)?;
    if let Some(expected) = descriptor.digest.strip_prefix("sha256:") {
        let actual = super::sha256_hex(&bytes);
        if actual != expected {
            bail!("blob {} has digest sha256:{actual}", descriptor.digest);
        }
    }
    Ok(bytes)
}

/// Layers are verified too: a truncated or corrupted archive should fail the import rather
/// than produce a quietly broken rootfs. Digests other than sha256 are taken on trust.
fn verify_digest(file: &Path, digest: &str) -> Result<()> {
    let Some(expected) = digest.strip_prefix("sha256:") else {
        return Ok(());
    };
    let mut hasher = Sha256::new();
    let mut reader = File::open(file)?;
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let actual = super::hex(&hasher.finalize());
    if actual != expected {
        bail!("blob {digest} has digest sha256:{actual}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn archive_paths_are_normalized_and_confined() {
        assert_eq!(normalize_archive_path("", "./a//b/./c").unwrap(), "a/b/c");
        assert_eq!(normalize_archive_path("x/y", "../z").unwrap(), "x/z");
        assert!(normalize_archive_path("x", "../../z").is_err());
        assert!(normalize_archive_path("", "..").is_err());
    }

    #[test]
    fn blob_paths_only_accept_plain_digests() {
        assert_eq!(blob_path("sha256:abc").unwrap(), "blobs/sha256/abc");
        assert!(blob_path("sha256:../../etc").is_err());
        assert!(blob_path("sha256/x").is_err());
        assert!(blob_path("../x:abc").is_err());
    }

    #[test]
    fn old_docker_save_with_symlinked_layers_and_repositories() {
        let temp = tempfile::tempdir().unwrap();
        let layer = TarBuilder::new().file("hello", b"hi", 0o644).finish();
        let config = image_config_json(&[], &["sh"], "");
        let outer = TarBuilder::new()
            .dir("aaa", 0o755)
            .file("aaa/layer.tar", &layer, 0o644)
            .dir("bbb", 0o755)
            .symlink("bbb/layer.tar", "../aaa/layer.tar")
            .file("config.json", &config, 0o644)
            .file(
                "manifest.json",
                br#"[{"Config":"config.json","RepoTags":null,"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#,
                0o644,
            )
            .file("repositories", br#"{"busybox":{"old":"bbb"}}"#, 0o644)
            .finish();
        let archive = write_file(temp.path(), "old.tar", &outer);
        let sources = read(&archive, &temp.path().join("scratch")).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].names, ["docker.io/library/busybox:old"]);
        assert_eq!(sources[0].layers.len(), 2);
        assert_eq!(sources[0].layers[0].file, sources[0].layers[1].file);
    }

    #[test]
    fn corrupted_oci_layer_is_rejected() {
        let temp = tempfile::tempdir().unwrap();
        let layer = TarBuilder::new().file("a", b"a", 0o644).finish();
        let config = image_config_json(&[], &[], "");
        let archive = OciArchive::new()
            .image(&config, &[layer], &[("io.containerd.image.name", "x:1")])
            .corrupt_layers()
            .finish();
        let path = write_file(temp.path(), "corrupt.tar", &archive);
        let error = read(&path, &temp.path().join("scratch")).err().unwrap();
        assert!(format!("{error:#}").contains("has digest"), "{error:#}");
    }

    #[test]
    fn foreign_platforms_and_attestations_are_skipped() {
        let host = Descriptor {
            media_type: None,
            digest: "sha256:a".into(),
            annotations: BTreeMap::new(),
            platform: Some(Platform {
                architecture: host_architecture().into(),
                os: "linux".into(),
            }),
        };
        assert!(is_runnable_here(&host));
        let mut foreign = host.clone();
        foreign.platform = Some(Platform {
            architecture: "s390x-not-here".into(),
            os: "linux".into(),
        });
        assert!(!is_runnable_here(&foreign));
        let mut attestation = host.clone();
        attestation.annotations.insert(
            ANNOTATION_REFERENCE_TYPE.into(),
            "attestation-manifest".into(),
        );
        assert!(!is_runnable_here(&attestation));
    }
}
