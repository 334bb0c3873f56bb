//! The node-local image store.
//!
//! No registry is reachable from a skiff node, so images only ever arrive as archives
//! (`docker save` output or OCI image layouts, read by `archive.rs`). Each image is flattened at
//! import time into one read-only root filesystem; the pod runtime stacks an overlay with a
//! per-container writable layer on top of it.
//!
//! Layout under the store root (`<agent root-dir>/images`):
//!
//! ```text
//! names.json          normalized name -> image id, replaced atomically
//! .lock               flock(2) target serializing writers (import, tag, remove)
//! tmp/                scratch space on the same filesystem, so results can be renamed into place
//! <id-hex>/config.json  our ImageConfig, size and the original image config
//! <id-hex>/rootfs/      the flattened layers
//! ```
//!
//! An image directory only ever appears through a rename of a fully built directory, so
//! "directory with config.json exists" means "image is complete".

mod archive;
mod layer;
mod sys;
#[cfg(test)]
mod testutil;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const NAMES_FILE: &str = "names.json";
const LOCK_FILE: &str = ".lock";
const TEMP_DIR: &str = "tmp";
const IMAGE_RECORD_FILE: &str = "config.json";
const ROOTFS_DIR: &str = "rootfs";
const ID_PREFIX: &str = "sha256:";
/// Shorter hex prefixes are not accepted as ids: a typo in a pod's image name must not
/// silently pick whatever image id happens to start with the same few characters.
const MIN_SHORT_ID_LEN: usize = 12;

/// The parts of an image's config the runtime needs to start a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// One image as seen through one of its names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalized reference (see [`normalize_reference`]); empty for an image without names.
    pub name: String,
    /// `"sha256:<hex of the config json>"`.
    pub id: String,
    /// The flattened, read-only root filesystem.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Total size of the files in `rootfs`, hard-linked files counted once.
    pub size_bytes: u64,
}

/// What `<id-hex>/config.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    id: String,
    size_bytes: u64,
    config: ImageConfig,
    /// The image config exactly as the archive carried it, for anything we don't interpret yet.
    original: serde_json::Value,
}

/// What `names.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NameIndex {
    names: BTreeMap<String, String>,
}

/// How a reference matched an image.
enum Match {
    Name(String),
    Id(String),
}

/// The node-local image store rooted at one directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, normally `<agent root-dir>/images`.
    pub fn open(root: &Path) -> Result<ImageStore> {
        fs::create_dir_all(root.join(TEMP_DIR))
            .with_context(|| format!("creating image store at {}", root.display()))?;
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports every image of a `docker save` or OCI-layout archive (plain or gzip).
    ///
    /// Returns one [`Image`] per name the archive gives (one unnamed entry for an image
    /// without names). Images already in the store are not unpacked again; their names are
    /// (re)pointed at them. On error the store is left as it was.
    pub fn import(&self, archive_path: &Path) -> Result<Vec<Image>> {
        let _lock = self.lock()?;
        self.clear_temp()?;
        let work = WorkDir::create(&self.root.join(TEMP_DIR), "import")?;

        let sources = archive::read(archive_path, &work.path.join("archive"))
            .with_context(|| format!("reading image archive {}", archive_path.display()))?;
        if sources.is_empty() {
            bail!("{} contains no images", archive_path.display());
        }

        // Several archive entries may describe the same image (one per tag).
        let mut ids_in_order: Vec<String> = Vec::new();
        let mut names_by_id: HashMap<String, Vec<String>> = HashMap::new();
        let mut built: Vec<String> = Vec::new();
        for source in &sources {
            let id_hex = sha256_hex(&source.config);
            if let Some(names) = names_by_id.get_mut(&id_hex) {
                for name in &source.names {
                    if !names.contains(name) {
                        names.push(name.clone());
                    }
                }
                continue;
            }
            names_by_id.insert(id_hex.clone(), source.names.clone());
            ids_in_order.push(id_hex.clone());
            if self.image_dir(&id_hex).join(IMAGE_RECORD_FILE).exists() {
                continue;
            }
            let staging = work.path.join(&id_hex);
            build_image(&staging, &id_hex, source)
                .with_context(|| format!("unpacking image {ID_PREFIX}{id_hex}"))?;
            built.push(id_hex);
        }

        // Only now touch the store proper, so that a failure above leaves it untouched.
        let mut committed: Vec<PathBuf> = Vec::new();
        let mut commit = || -> Result<()> {
            for id_hex in &built {
                let target = self.image_dir(id_hex);
                // A directory without a record cannot come from a finished import; it is
                // debris from a crash and in the way of the rename.
                if target.exists() {
                    remove_tree(&target)?;
                }
                fs::rename(work.path.join(id_hex), &target)
                    .with_context(|| format!("moving image into {}", target.display()))?;
                committed.push(target);
            }
            let mut index = self.read_names()?;
            for id_hex in &ids_in_order {
                for name in &names_by_id[id_hex] {
                    index
                        .names
                        .insert(name.clone(), format!("{ID_PREFIX}{id_hex}"));
                }
            }
            self.write_names(&index)
        };
        if let Err(error) = commit() {
            for dir in &committed {
                if let Err(cleanup) = remove_tree(dir) {
                    tracing::warn!(dir = %dir.display(), error = %cleanup, "cannot roll back image");
                }
            }
            return Err(error);
        }

        let mut images = Vec::new();
        for id_hex in &ids_in_order {
            let record = self.load_record(id_hex)?;
            let names = &names_by_id[id_hex];
            if names.is_empty() {
                images.push(self.image_from_record(String::new(), id_hex, &record));
            }
            for name in names {
                images.push(self.image_from_record(name.clone(), id_hex, &record));
            }
        }
        Ok(images)
    }

    /// All images: one entry per name, sorted by name, then images without names by id.
    pub fn list(&self) -> Result<Vec<Image>> {
        let index = self.read_names()?;
        let mut records: HashMap<String, Option<ImageRecord>> = HashMap::new();
        let mut images = Vec::new();
        let mut named: HashSet<String> = HashSet::new();
        for (name, id) in &index.names {
            let Some(id_hex) = id_hex(id) else { continue };
            let record = records
                .entry(id_hex.to_string())
                .or_insert_with(|| self.load_record_logged(id_hex));
            if let Some(record) = record {
                images.push(self.image_from_record(name.clone(), id_hex, record));
                named.insert(id_hex.to_string());
            }
        }
        for id_hex in self.stored_ids()? {
            if named.contains(&id_hex) {
                continue;
            }
            if let Some(record) = self.load_record_logged(&id_hex) {
                images.push(self.image_from_record(String::new(), &id_hex, &record));
            }
        }
        Ok(images)
    }

    /// Finds an image by name (normalized first, so "busybox" finds
    /// "docker.io/library/busybox:latest"), by id ("sha256:<hex>" or "<hex>"), or by a unique
    /// id prefix of at least 12 hex digits. Looked up by id, `name` is the image's first name.
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        let index = match self.read_names() {
            Ok(index) => index,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "cannot read image names");
                return None;
            }
        };
        let (name, id_hex) = match self.find(&index, reference)? {
            Match::Name(name) => {
                let id_hex = id_hex(&index.names[&name])?.to_string();
                (name, id_hex)
            }
            Match::Id(id_hex) => (first_name_of(&index, &id_hex), id_hex),
        };
        let record = self.load_record_logged(&id_hex)?;
        Some(self.image_from_record(name, &id_hex, &record))
    }

    /// Removes a name, or with an id every name and the image itself. An image whose last name
    /// is removed is deleted too. Returns `Ok(false)` if nothing matched `reference`.
    ///
    /// The caller must make sure no container still uses the image's rootfs.
    pub fn remove(&self, reference: &str) -> Result<bool> {
        let _lock = self.lock()?;
        let mut index = self.read_names()?;
        let id_hex = match self.find(&index, reference) {
            None => return Ok(false),
            Some(Match::Name(name)) => {
                let id = index.names.remove(&name).unwrap_or_default();
                let still_named = index.names.values().any(|other| *other == id);
                self.write_names(&index)?;
                match id_hex(&id) {
                    Some(id_hex) if !still_named => id_hex.to_string(),
                    _ => return Ok(true),
                }
            }
            Some(Match::Id(id_hex)) => {
                let id = format!("{ID_PREFIX}{id_hex}");
                index.names.retain(|_, other| *other != id);
                self.write_names(&index)?;
                id_hex
            }
        };
        let dir = self.image_dir(&id_hex);
        if dir.exists() {
            // Renamed away first so that a half-deleted image is never mistaken for a
            // complete one.
            let doomed = unique_path(&self.root.join(TEMP_DIR), "remove");
            fs::rename(&dir, &doomed)
                .with_context(|| format!("removing image {}", dir.display()))?;
            remove_tree(&doomed)?;
        }
        Ok(true)
    }

    /// Gives the image found by `reference` the additional name `new_name` (normalized),
    /// taking the name away from any other image. Useful for OCI archives that only carry a
    /// bare tag, which [`import`](Self::import) cannot turn into a name.
    pub fn tag(&self, reference: &str, new_name: &str) -> Result<Image> {
        let _lock = self.lock()?;
        let mut index = self.read_names()?;
        let id_hex = match self.find(&index, reference) {
            None => bail!("image {reference:?} not found"),
            Some(Match::Name(name)) => match id_hex(&index.names[&name]) {
                Some(id_hex) => id_hex.to_string(),
                None => bail!("image {reference:?} not found"),
            },
            Some(Match::Id(id_hex)) => id_hex,
        };
        let record = self.load_record(&id_hex)?;
        let name = normalize_reference(new_name);
        index
            .names
            .insert(name.clone(), format!("{ID_PREFIX}{id_hex}"));
        self.write_names(&index)?;
        Ok(self.image_from_record(name, &id_hex, &record))
    }

    fn find(&self, index: &NameIndex, reference: &str) -> Option<Match> {
        let reference = reference.trim();
        if reference.is_empty() {
            return None;
        }
        let hex = reference.strip_prefix(ID_PREFIX).unwrap_or(reference);
        let is_hex = hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex && hex.len() == 64 {
            return self
                .image_dir(hex)
                .join(IMAGE_RECORD_FILE)
                .exists()
                .then(|| Match::Id(hex.to_string()));
        }
        let name = normalize_reference(reference);
        if index.names.contains_key(&name) {
            return Some(Match::Name(name));
        }
        if is_hex && hex.len() >= MIN_SHORT_ID_LEN {
            let mut candidates = self
                .stored_ids()
                .ok()?
                .into_iter()
                .filter(|id| id.starts_with(hex));
            let only = candidates.next()?;
            return candidates.next().is_none().then_some(Match::Id(only));
        }
        None
    }

    fn image_dir(&self, id_hex: &str) -> PathBuf {
        self.root.join(id_hex)
    }

    fn image_from_record(&self, name: String, id_hex: &str, record: &ImageRecord) -> Image {
        Image {
            name,
            id: format!("{ID_PREFIX}{id_hex}"),
            rootfs: self.image_dir(id_hex).join(ROOTFS_DIR),
            config: record.config.clone(),
            size_bytes: record.size_bytes,
        }
    }

    fn load_record(&self, id_hex: &str) -> Result<ImageRecord> {
        let path = self.image_dir(id_hex).join(IMAGE_RECORD_FILE);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    fn load_record_logged(&self, id_hex: &str) -> Option<ImageRecord> {
        match self.load_record(id_hex) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "skipping unreadable image");
                None
            }
        }
    }

    /// Hex ids of the complete images on disk.
    fn stored_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in
            fs::read_dir(&self.root).with_context(|| format!("listing {}", self.root.display()))?
        {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let looks_like_id = name.len() == 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if looks_like_id && entry.path().join(IMAGE_RECORD_FILE).exists() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn read_names(&self) -> Result<NameIndex> {
        let path = self.root.join(NAMES_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(NameIndex::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn write_names(&self, index: &NameIndex) -> Result<()> {
        let path = self.root.join(NAMES_FILE);
        let bytes = serde_json::to_vec_pretty(index)?;
        write_atomically(&path, &bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Serializes writers across processes (`skiff-agent image import` runs beside the agent).
    fn lock(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    /// With the writer lock held, anything in tmp/ is left over from an interrupted writer.
    fn clear_temp(&self) -> Result<()> {
        let temp = self.root.join(TEMP_DIR);
        fs::create_dir_all(&temp)?;
        for entry in fs::read_dir(&temp)? {
            remove_tree(&entry?.path())?;
        }
        Ok(())
    }
}

/// Unpacks one image into `dir` (`rootfs/` + `config.json`).
fn build_image(dir: &Path, id_hex: &str, source: &archive::ImageSource) -> Result<()> {
    let original: serde_json::Value =
        serde_json::from_slice(&source.config).context("parsing the image config")?;
    let config = image_config_from(&original)?;
    let rootfs = dir.join(ROOTFS_DIR);
    fs::create_dir_all(&rootfs)?;
    let mut builder = layer::RootfsBuilder::new(&rootfs);
    for (position, layer) in source.layers.iter().enumerate() {
        builder
            .apply_file(&layer.file)
            .with_context(|| format!("layer {} ({})", position + 1, layer.name))?;
    }
    builder.finish()?;
    let record = ImageRecord {
        id: format!("{ID_PREFIX}{id_hex}"),
        size_bytes: layer::disk_usage(&rootfs)?,
        config,
        original,
    };
    fs::write(
        dir.join(IMAGE_RECORD_FILE),
        serde_json::to_vec_pretty(&record)?,
    )?;
    Ok(())
}

/// Extracts the runtime-relevant fields of an OCI/Docker image config.
fn image_config_from(original: &serde_json::Value) -> Result<ImageConfig> {
    #[derive(Deserialize)]
    struct Document {
        #[serde(default)]
        config: Option<Container>,
        #[serde(default)]
        os: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Container {
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        env: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
    }
    let document = Document::deserialize(original).context("parsing the image config")?;
    if let Some(os) = document.os.as_deref()
        && os != "linux"
    {
        tracing::warn!(os, "image is not built for linux");
    }
    let container = document.config.unwrap_or(Container {
        entrypoint: None,
        cmd: None,
        env: None,
        working_dir: None,
        user: None,
    });
    Ok(ImageConfig {
        entrypoint: container.entrypoint.unwrap_or_default(),
        cmd: container.cmd.unwrap_or_default(),
        env: container.env.unwrap_or_default(),
        working_dir: container.working_dir.unwrap_or_default(),
        user: container.user.unwrap_or_default(),
    })
}

/// Normalizes an image reference the way Docker does:
/// `busybox` → `docker.io/library/busybox:latest`, `foo/bar` → `docker.io/foo/bar:latest`,
/// `skiff.test/busybox:1` stays, and `x@sha256:…` keeps its digest (and gets no `:latest`).
pub fn normalize_reference(reference: &str) -> String {
    let reference = reference.trim();
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    // The first component is a registry only if it looks like a host: Docker's rule.
    let (domain, remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let mut normalized = String::with_capacity(reference.len() + 24);
    normalized.push_str(domain);
    normalized.push('/');
    if domain == "docker.io" && !remainder.contains('/') {
        normalized.push_str("library/");
    }
    normalized.push_str(remainder);
    let last_component = remainder.rsplit('/').next().unwrap_or(remainder);
    if !last_component.contains(':') && digest.is_none() {
        normalized.push_str(":latest");
    }
    if let Some(digest) = digest {
        normalized.push('@');
        normalized.push_str(digest);
    }
    normalized
}

fn id_hex(id: &str) -> Option<&str> {
    id.strip_prefix(ID_PREFIX)
}

fn first_name_of(index: &NameIndex, id_hex: &str) -> String {
    let id = format!("{ID_PREFIX}{id_hex}");
    index
        .names
        .iter()
        .find(|(_, other)| **other == id)
        .map(|(name, _)| name.clone())
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Write to a sibling temp file and rename over `path`, so readers never see a torn file.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    skiff_common::fs::write_atomic(path, bytes, 0o644)
}

/// A fresh path under `parent` that no other call in any process returns.
fn unique_path(parent: &Path, prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    parent.join(format!(
        "{prefix}-{}-{nanos}-{sequence}",
        std::process::id()
    ))
}

/// A scratch directory that is removed with everything in it when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(parent: &Path, prefix: &str) -> Result<WorkDir> {
        let path = unique_path(parent, prefix);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(error) = remove_tree(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %error, "cannot remove scratch dir");
        }
    }
}

/// `remove_dir_all` that also copes with read-only directories from an image (which stop an
/// unprivileged process from deleting their entries).
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
        Err(error) => Err(error),
    }
}

fn make_dirs_writable(path: &Path) {
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(metadata) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !metadata.is_dir() {
            continue;
        }
        let mode = metadata.permissions().mode() | 0o700;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode));
        if let Ok(entries) = fs::read_dir(&dir) {
            pending.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn normalize_reference_follows_docker_rules() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/foo/bar:2", "docker.io/foo/bar:2"),
            ("skiff.test/busybox:1", "skiff.test/busybox:1"),
            ("skiff.test/busybox", "skiff.test/busybox:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("registry:5000/team/app:v2", "registry:5000/team/app:v2"),
            (
                "busybox@sha256:0123",
                "docker.io/library/busybox@sha256:0123",
            ),
            ("skiff.test/x:1@sha256:0123", "skiff.test/x:1@sha256:0123"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_reference(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn docker_save_archive_with_whiteouts() {
        let temp = tempfile::tempdir().unwrap();
        let layer1 = TarBuilder::new()
            .dir("etc", 0o755)
            .file("etc/hostname", b"base\n", 0o644)
            .file("etc/gone", b"delete me", 0o644)
            .dir("var", 0o755)
            .dir("var/cache", 0o755)
            .file("var/cache/old", b"old", 0o644)
            .dir("var/cache/sub", 0o755)
            .file("var/cache/sub/older", b"older", 0o644)
            .dir("bin", 0o755)
            .file("bin/tool", b"#!/bin/sh\n", 0o4755)
            .finish();
        let layer2 = TarBuilder::new()
            .file("etc/.wh.gone", b"", 0o644)
            .file("var/cache/new-before", b"kept", 0o644)
            .file("var/cache/.wh..wh..opq", b"", 0o644)
            .file("var/cache/new-after", b"kept too", 0o644)
            .file("etc/hostname", b"top\n", 0o600)
            .finish();
        let config = image_config_json(&["/bin/tool"], &["serve"], "/srv");
        let archive = docker_archive(&[DockerImage {
            config: config.clone(),
            tags: vec!["busybox:latest".into(), "skiff.test/busybox:1".into()],
            layers: vec![layer1, layer2],
        }]);
        let archive_path = write_file(temp.path(), "busybox.tar", &archive);
        let store = ImageStore::open(&temp.path().join("images")).unwrap();

        let images = store.import(&archive_path).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].name, "docker.io/library/busybox:latest");
        assert_eq!(images[1].name, "skiff.test/busybox:1");
        let expected_id = format!("sha256:{}", sha256_hex(&config));
        assert!(images.iter().all(|image| image.id == expected_id));

        let image = &images[0];
        assert_eq!(image.config.entrypoint, vec!["/bin/tool"]);
        assert_eq!(image.config.cmd, vec!["serve"]);
        assert_eq!(image.config.working_dir, "/srv");
        assert_eq!(image.config.env, vec!["PATH=/bin"]);
        assert_eq!(image.config.user, "");

        let rootfs = &image.rootfs;
        assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), b"top\n");
        assert_mode(&rootfs.join("etc/hostname"), 0o600);
        assert_mode(&rootfs.join("bin/tool"), 0o4755);
        assert!(!rootfs.join("etc/gone").exists());
        assert!(!rootfs.join("etc/.wh.gone").exists());
        assert!(!rootfs.join("var/cache/old").exists());
        assert!(!rootfs.join("var/cache/sub").exists());
        assert!(!rootfs.join("var/cache/.wh..wh..opq").exists());
        assert_eq!(
            fs::read(rootfs.join("var/cache/new-before")).unwrap(),
            b"kept"
        );
        assert_eq!(
            fs::read(rootfs.join("var/cache/new-after")).unwrap(),
            b"kept too"
        );
        // etc/hostname (4) + bin/tool (10) + var/cache/new-before (4) + new-after (8)
        assert_eq!(image.size_bytes, 26);
        assert_eq!(
            directory_listing(&store.root().join(TEMP_DIR)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn oci_archive_with_gzip_layers_and_nested_index() {
        let temp = tempfile::tempdir().unwrap();
        let layer1 = gzip(
            &TarBuilder::new()
                .dir("app", 0o755)
                .file("app/one", b"1", 0o644)
                .finish(),
        );
        let layer2 = gzip(&TarBuilder::new().file("app/two", b"22", 0o644).finish());
        let config = image_config_json(&[], &["/app/one"], "");
        let archive = OciArchive::new()
            .image_behind_nested_index(
                &config,
                &[layer1, layer2],
                &[
                    ("io.containerd.image.name", "skiff.test/app:1"),
                    ("org.opencontainers.image.ref.name", "1"),
                ],
            )
            .finish();
        let archive_path = write_file(temp.path(), "app.oci", &gzip(&archive));
        let store = ImageStore::open(&temp.path().join("images")).unwrap();

        let images = store.import(&archive_path).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "skiff.test/app:1");
        assert_eq!(images[0].id, format!("sha256:{}", sha256_hex(&config)));
        assert_eq!(images[0].config.cmd, vec!["/app/one"]);
        assert_eq!(fs::read(images[0].rootfs.join("app/one")).unwrap(), b"1");
        assert_eq!(fs::read(images[0].rootfs.join("app/two")).unwrap(), b"22");
        assert_eq!(images[0].size_bytes, 3);
    }

    #[test]
    fn oci_ref_name_may_be_full_reference_or_bare_tag() {
        let temp = tempfile::tempdir().unwrap();
        let layer = TarBuilder::new().file("a", b"a", 0o644).finish();
        let named_config = image_config_json(&[], &["named"], "");
        let bare_config = image_config_json(&[], &["bare"], "");
        let archive = OciArchive::new()
            .image(
                &named_config,
                std::slice::from_ref(&layer),
                &[("org.opencontainers.image.ref.name", "busybox:musl")],
            )
            .image(
                &bare_config,
                &[layer],
                &[("org.opencontainers.image.ref.name", "v1")],
            )
            .finish();
        let archive_path = write_file(temp.path(), "two.tar", &archive);
        let store = ImageStore::open(&temp.path().join("images")).unwrap();

        let images = store.import(&archive_path).unwrap();
        let names: Vec<&str> = images.iter().map(|image| image.name.as_str()).collect();
        assert_eq!(names, ["docker.io/library/busybox:musl", ""]);

        // The bare-tag image is reachable by id and can be named afterwards.
        let bare_id = images[1].id.clone();
        assert_eq!(store.resolve(&bare_id).unwrap().name, "");
        let tagged = store.tag(&bare_id, "skiff.test/bare:v1").unwrap();
        assert_eq!(tagged.name, "skiff.test/bare:v1");
        assert_eq!(store.resolve("skiff.test/bare:v1").unwrap().id, bare_id);
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn reimport_is_idempotent_and_repoints_tags() {
        let temp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&temp.path().join("images")).unwrap();
        let layer = TarBuilder::new().file("version", b"1", 0o644).finish();
        let first_config = image_config_json(&[], &["v1"], "");
        let first = write_file(
            temp.path(),
            "first.tar",
            &docker_archive(&[DockerImage {
                config: first_config.clone(),
                tags: vec!["app:latest".into()],
                layers: vec![layer.clone()],
            }]),
        );
        let imported = store.import(&first).unwrap();
        let marker = imported[0].rootfs.join("marker");
        fs::write(&marker, b"proves the rootfs was not rebuilt").unwrap();

        let again = store.import(&first).unwrap();
        assert_eq!(again, imported);
        assert!(marker.exists());
        assert_eq!(store.list().unwrap().len(), 1);

        let second_config = image_config_json(&[], &["v2"], "");
        let second = write_file(
            temp.path(),
            "second.tar",
            &docker_archive(&[DockerImage {
                config: second_config.clone(),
                tags: vec!["app:latest".into()],
                layers: vec![layer],
            }]),
        );
        store.import(&second).unwrap();
        let resolved = store.resolve("app").unwrap();
        assert_eq!(
            resolved.id,
            format!("sha256:{}", sha256_hex(&second_config))
        );
        // The old image lost its only name but stays until removed by id.
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].name, "");
        assert_eq!(listed[1].id, imported[0].id);
    }

    #[test]
    fn path_traversal_is_rejected_and_store_left_intact() {
        let temp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&temp.path().join("images")).unwrap();
        let good = write_file(
            temp.path(),
            "good.tar",
            &docker_archive(&[DockerImage {
                config: image_config_json(&[], &["good"], ""),
                tags: vec!["good:1".into()],
                layers: vec![TarBuilder::new().file("ok", b"ok", 0o644).finish()],
            }]),
        );
        store.import(&good).unwrap();
        let names_before = fs::read(store.root().join(NAMES_FILE)).unwrap();
        let listing_before = directory_listing(store.root());

        let hostile_layers = [
            TarBuilder::new()
                .file("fine", b"x", 0o644)
                .raw_file(b"../../escaped", b"evil")
                .finish(),
            TarBuilder::new()
                .raw_file(b"/etc/escaped", b"evil")
                .finish(),
            // A symlink from an earlier entry must not be followed when writing.
            TarBuilder::new()
                .symlink("link", "/tmp")
                .file("link/escaped", b"evil", 0o644)
                .finish(),
            TarBuilder::new()
                .symlink("up", "..")
                .hardlink("stolen", "../../outside")
                .finish(),
        ];
        for (number, layer) in hostile_layers.into_iter().enumerate() {
            let bad = write_file(
                temp.path(),
                &format!("bad{number}.tar"),
                &docker_archive(&[DockerImage {
                    config: image_config_json(&[], &["bad", &number.to_string()], ""),
                    tags: vec!["good:1".into(), "bad:1".into()],
                    layers: vec![layer],
                }]),
            );
            let error = store.import(&bad).unwrap_err();
            let message = format!("{error:#}");
            assert!(
                message.contains("escapes") || message.contains("not a directory"),
                "case {number}: {message}"
            );
            assert_eq!(
                fs::read(store.root().join(NAMES_FILE)).unwrap(),
                names_before
            );
            assert_eq!(directory_listing(store.root()), listing_before);
            assert_eq!(
                directory_listing(&store.root().join(TEMP_DIR)),
                Vec::<String>::new()
            );
        }
        assert!(!temp.path().join("escaped").exists());
        assert!(!Path::new("/tmp/escaped").exists());
        assert_eq!(store.resolve("good:1").unwrap().config.cmd, vec!["good"]);
        assert!(store.resolve("bad:1").is_none());
    }

    #[test]
    fn hardlinks_and_symlinks() {
        let temp = tempfile::tempdir().unwrap();
        let layer1 = TarBuilder::new()
            .dir("usr", 0o755)
            .dir("usr/bin", 0o755)
            .file("usr/bin/busybox", b"BUSYBOX", 0o755)
            .hardlink("usr/bin/sh", "usr/bin/busybox")
            .symlink("bin", "usr/bin")
            .symlink("usr/bin/ls", "./busybox")
            .finish();
        let layer2 = TarBuilder::new()
            .hardlink("usr/bin/cat", "./usr/bin/busybox")
            .fifo("usr/pipe", 0o640)
            .char_device("dev/null", 0o666, 1, 3)
            .finish();
        let archive_path = write_file(
            temp.path(),
            "links.tar",
            &docker_archive(&[DockerImage {
                config: image_config_json(&[], &[], ""),
                tags: vec!["links".into()],
                layers: vec![layer1, layer2],
            }]),
        );
        let store = ImageStore::open(&temp.path().join("images")).unwrap();
        let image = store.import(&archive_path).unwrap().remove(0);
        let rootfs = &image.rootfs;

        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let busybox = fs::metadata(rootfs.join("usr/bin/busybox")).unwrap();
        assert_eq!(busybox.nlink(), 3);
        for link in ["usr/bin/sh", "usr/bin/cat"] {
            assert_eq!(
                fs::metadata(rootfs.join(link)).unwrap().ino(),
                busybox.ino()
            );
        }
        assert_eq!(
            fs::read_link(rootfs.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert_eq!(
            fs::read_link(rootfs.join("usr/bin/ls")).unwrap(),
            Path::new("./busybox")
        );
        let pipe = fs::symlink_metadata(rootfs.join("usr/pipe")).unwrap();
        assert!(pipe.file_type().is_fifo());
        assert_eq!(pipe.mode() & 0o7777, 0o640);
        if running_as_root() {
            let null = fs::symlink_metadata(rootfs.join("dev/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), 0x103);
            assert_eq!(null.mode() & 0o7777, 0o666);
        } else {
            // Unprivileged imports skip device nodes instead of failing.
            assert!(!rootfs.join("dev/null").exists());
        }
        // Hard-linked content counts once.
        assert_eq!(image.size_bytes, 7);
    }

    #[test]
    fn preserves_mtimes_and_directory_modes() {
        let temp = tempfile::tempdir().unwrap();
        let layer = TarBuilder::new()
            .dir_with("locked", 0o555, 1_600_000_000)
            .file_with("locked/file", b"x", 0o444, 1_500_000_000)
            .file("implicit/parent/file", b"y", 0o644)
            .finish();
        let archive_path = write_file(
            temp.path(),
            "times.tar",
            &docker_archive(&[DockerImage {
                config: image_config_json(&[], &[], ""),
                tags: vec!["times".into()],
                layers: vec![layer],
            }]),
        );
        let store = ImageStore::open(&temp.path().join("images")).unwrap();
        let image = store.import(&archive_path).unwrap().remove(0);

        use std::os::unix::fs::MetadataExt;
        let dir = fs::metadata(image.rootfs.join("locked")).unwrap();
        assert_eq!(dir.mtime(), 1_600_000_000);
        assert_eq!(dir.mode() & 0o7777, 0o555);
        let file = fs::metadata(image.rootfs.join("locked/file")).unwrap();
        assert_eq!(file.mtime(), 1_500_000_000);
        assert_mode(&image.rootfs.join("implicit/parent"), 0o755);

        // Removing must cope with the read-only directory.
        assert!(store.remove(&image.id).unwrap());
        assert!(!image.rootfs.exists());
    }

    #[test]
    fn list_resolve_remove() {
        let temp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&temp.path().join("images")).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(store.resolve("busybox").is_none());
        assert!(!store.remove("busybox").unwrap());

        let layer = TarBuilder::new().file("f", b"f", 0o644).finish();
        let config_a = image_config_json(&[], &["a"], "");
        let config_b = image_config_json(&[], &["b"], "");
        let archive = docker_archive(&[
            DockerImage {
                config: config_a.clone(),
                tags: vec!["busybox:latest".into(), "skiff.test/busybox:1".into()],
                layers: vec![layer.clone()],
            },
            DockerImage {
                config: config_b.clone(),
                tags: vec!["other/thing:2".into()],
                layers: vec![layer],
            },
        ]);
        let archive_path = write_file(temp.path(), "both.tar", &archive);
        store.import(&archive_path).unwrap();
        let id_a = format!("sha256:{}", sha256_hex(&config_a));
        let id_b = format!("sha256:{}", sha256_hex(&config_b));

        let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            [
                "docker.io/library/busybox:latest",
                "docker.io/other/thing:2",
                "skiff.test/busybox:1",
            ]
        );

        assert_eq!(store.resolve("busybox").unwrap().id, id_a);
        assert_eq!(store.resolve("docker.io/library/busybox").unwrap().id, id_a);
        assert_eq!(store.resolve("other/thing:2").unwrap().id, id_b);
        assert!(store.resolve("other/thing").is_none());
        let by_id = store.resolve(&id_b).unwrap();
        assert_eq!(by_id.name, "docker.io/other/thing:2");
        assert_eq!(store.resolve(&id_b[7..]).unwrap().id, id_b);
        assert_eq!(store.resolve(&id_b[7..7 + 12]).unwrap().id, id_b);
        assert!(store.resolve(&id_b[7..7 + 6]).is_none());

        // Removing one of two names keeps the image.
        assert!(store.remove("busybox").unwrap());
        assert!(store.resolve("busybox").is_none());
        let still = store.resolve("skiff.test/busybox:1").unwrap();
        assert!(still.rootfs.exists());
        // Removing the last name deletes it.
        assert!(store.remove("skiff.test/busybox:1").unwrap());
        assert!(!still.rootfs.exists());
        assert!(store.resolve(&id_a).is_none());
        // Removing by id drops every name.
        assert!(store.remove(&id_b).unwrap());
        assert!(store.list().unwrap().is_empty());
        assert!(!store.remove(&id_b).unwrap());
    }

    #[test]
    fn archive_that_is_not_an_image_is_rejected() {
        let temp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&temp.path().join("images")).unwrap();
        let plain = write_file(
            temp.path(),
            "plain.tar",
            &TarBuilder::new().file("hello", b"hi", 0o644).finish(),
        );
        assert!(store.import(&plain).is_err());
        let garbage = write_file(temp.path(), "garbage.tar", &[0x1f, 0x8b, 1, 2, 3]);
        assert!(store.import(&garbage).is_err());
        let missing = temp.path().join("missing.tar");
        assert!(store.import(&missing).is_err());
        assert!(store.list().unwrap().is_empty());
    }
}
