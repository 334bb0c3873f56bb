//! Flattening image layers into one root filesystem.
//!
//! Layers are applied bottom first with overlayfs semantics: `.wh.<name>` deletes `<name>`
//! from lower layers and `.wh..wh..opq` hides everything lower layers put in its directory.
//! Every entry is confined to the rootfs: `..` and absolute names are refused, and each
//! parent component must be a real directory, so a symlink planted by a layer is never
//! followed while writing.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::stat::SFlag;
use tar::EntryType;

use super::sys;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`) that some old layers carry.
const AUFS_META_PREFIX: &str = ".wh..wh.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// Ownership, mode and time of an entry, from its tar header and PAX records.
#[derive(Clone, Copy, Debug)]
struct Attributes {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<SystemTime>,
}

/// A layer entry about to be written.
struct NewEntry {
    /// Its path inside the rootfs.
    relative: PathBuf,
    /// The same path on the host, below the rootfs directory.
    target: PathBuf,
    attributes: Attributes,
}

/// Whether an entry left something in the rootfs that whiteouts of this layer must spare.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// A hard link to itself, or a device node we may not create.
    Skipped,
}

/// Applies layers into one rootfs directory.
pub(super) struct RootfsBuilder {
    root: PathBuf,
    /// Directory attributes are applied once all layers are in: writing into a directory
    /// changes its mtime, and a read-only mode would stop an unprivileged writer.
    directories: BTreeMap<PathBuf, Attributes>,
    /// Warn only once per image about ownership we are not allowed to set.
    ownership_warned: bool,
}

/// Paths written by the layer being applied (with all their ancestors): whiteouts and opaque
/// markers only act on what lower layers put there.
#[derive(Default)]
struct LayerPaths(HashSet<PathBuf>);

impl LayerPaths {
    fn mark(&mut self, relative: &Path) {
        let mut path = Some(relative);
        while let Some(current) = path {
            if !self.0.insert(current.to_path_buf()) {
                break;
            }
            path = current.parent();
        }
    }

    fn contains(&self, relative: &Path) -> bool {
        self.0.contains(relative)
    }
}

impl RootfsBuilder {
    pub(super) fn new(root: &Path) -> RootfsBuilder {
        // "/" must be usable by any container user even if no layer has an entry for it
        // and the umask made the directory private.
        let root_attributes = Attributes {
            mode: 0o755,
            owner: None,
            mtime: None,
        };
        RootfsBuilder {
            root: root.to_path_buf(),
            directories: BTreeMap::from([(PathBuf::new(), root_attributes)]),
            ownership_warned: false,
        }
    }

    pub(super) fn apply_file(&mut self, layer: &Path) -> Result<()> {
        let reader = super::archive::open_decompressed(layer)?;
        self.apply(reader)
    }

    pub(super) fn apply(&mut self, layer: impl Read) -> Result<()> {
        let mut archive = tar::Archive::new(layer);
        let mut written = LayerPaths::default();
        for entry in archive.entries().context("reading the layer")? {
            let mut entry = entry.context("reading the layer")?;
            let raw_path = entry.path_bytes().into_owned();
            self.apply_entry(&mut entry, &mut written)
                .with_context(|| format!("layer entry {:?}", String::from_utf8_lossy(&raw_path)))?;
        }
        Ok(())
    }

    /// Applies the deferred directory attributes, deepest first so that setting a parent's
    /// mtime is not undone by touching its children.
    pub(super) fn finish(mut self) -> Result<()> {
        let mut directories: Vec<(PathBuf, Attributes)> =
            std::mem::take(&mut self.directories).into_iter().collect();
        directories.sort_by_key(|(relative, _)| std::cmp::Reverse(relative.components().count()));
        for (relative, attributes) in directories {
            let path = self.root.join(&relative);
            match fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {}
                _ => continue,
            }
            self.set_owner_nofollow(&path, attributes)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(attributes.mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            if let Some(mtime) = attributes.mtime {
                File::open(&path)
                    .and_then(|dir| dir.set_times(times(mtime)))
                    .with_context(|| format!("setting the mtime of {}", path.display()))?;
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        written: &mut LayerPaths,
    ) -> Result<()> {
        let kind = entry_kind(entry);
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let components = confined_components(&entry.path()?)?;
        let attributes = attributes_of(entry)?;

        let Some((name, parents)) = components.split_last() else {
            // The layer's entry for the root directory itself ("./").
            if kind == EntryType::Directory {
                self.directories.insert(PathBuf::new(), attributes);
            }
            return Ok(());
        };
        if self.apply_marker(name, parents, written)? {
            return Ok(());
        }

        let parent_dir = self.prepare_parents(parents, written)?;
        let new = NewEntry {
            relative: components.iter().collect(),
            target: parent_dir.join(name),
            attributes,
        };
        let outcome = match kind {
            EntryType::Directory => self.write_directory(entry, &new)?,
            EntryType::Symlink => self.write_symlink(entry, &new)?,
            EntryType::Link => self.write_hard_link(entry, &new)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.write_node(entry, kind, &new)?
            }
            // POSIX: unknown type flags are regular files (this includes contiguous and
            // GNU sparse files, whose holes the tar reader fills in).
            _ => self.write_file(entry, &new)?,
        };
        if outcome == Outcome::Written {
            written.mark(&new.relative);
        }
        Ok(())
    }

    /// Applies `name` if it is an opaque marker, a whiteout or aufs bookkeeping rather than
    /// a file; says whether it was one.
    fn apply_marker(
        &mut self,
        name: &OsStr,
        parents: &[OsString],
        written: &mut LayerPaths,
    ) -> Result<bool> {
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let directory: PathBuf = parents.iter().collect();
            self.prepare_parents(parents, written)?;
            written.mark(&directory);
            self.clear_lower_entries(&directory, written)?;
            return Ok(true);
        }
        if name_bytes.starts_with(AUFS_META_PREFIX.as_bytes()) {
            return Ok(true);
        }
        let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
            return Ok(false);
        };
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            bail!("malformed whiteout");
        }
        let relative: PathBuf = parents
            .iter()
            .map(OsStr::new)
            .chain([OsStr::from_bytes(hidden)])
            .collect();
        if !written.contains(&relative) && self.existing_dir(parents)?.is_some() {
            self.remove_path(&relative)?;
        }
        Ok(true)
    }

    fn write_directory<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        new: &NewEntry,
    ) -> Result<Outcome> {
        match fs::symlink_metadata(&new.target) {
            Ok(metadata) if metadata.is_dir() => {}
            _ => {
                self.remove_path(&new.relative)?;
                create_dir(&new.target)?;
            }
        }
        self.directories
            .insert(new.relative.clone(), new.attributes);
        set_xattrs(entry, &new.target);
        Ok(Outcome::Written)
    }

    fn write_symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        new: &NewEntry,
    ) -> Result<Outcome> {
        let link_target = entry
            .link_name()?
            .ok_or_else(|| anyhow!("symlink without a target"))?;
        if link_target.as_os_str().is_empty() {
            bail!("symlink with an empty target");
        }
        self.remove_path(&new.relative)?;
        std::os::unix::fs::symlink(&link_target, &new.target)?;
        self.set_owner_nofollow(&new.target, new.attributes)?;
        set_xattrs(entry, &new.target);
        set_mtime_nofollow(&new.target, new.attributes);
        Ok(Outcome::Written)
    }

    fn write_hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        new: &NewEntry,
    ) -> Result<Outcome> {
        let link_name = entry
            .link_name()?
            .ok_or_else(|| anyhow!("hard link without a target"))?;
        let source_components = confined_components(&link_name)?;
        let source_relative: PathBuf = source_components.iter().collect();
        if source_relative == new.relative {
            return Ok(Outcome::Skipped);
        }
        let source = self.existing_file(&source_components)?;
        self.remove_path(&new.relative)?;
        fs::hard_link(&source, &new.target)
            .with_context(|| format!("linking to {}", source_relative.display()))?;
        Ok(Outcome::Written)
    }

    /// A character or block device, or a fifo.
    fn write_node<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        new: &NewEntry,
    ) -> Result<Outcome> {
        self.remove_path(&new.relative)?;
        let file_type = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        // Fifos often leave the device fields blank, which is not a number.
        let (major, minor) = if kind == EntryType::Fifo {
            (0, 0)
        } else {
            let header = entry.header();
            (
                header.device_major()?.unwrap_or(0),
                header.device_minor()?.unwrap_or(0),
            )
        };
        match sys::mknod(&new.target, file_type, new.attributes.mode, major, minor) {
            Ok(()) => {}
            // Unprivileged (e.g. rootless test) runs cannot create device nodes; an
            // image is still usable without them, as the runtime provides /dev.
            Err(error)
                if error.kind() == io::ErrorKind::PermissionDenied && kind != EntryType::Fifo =>
            {
                tracing::warn!(path = %new.relative.display(), "no permission to create device node; skipped");
                return Ok(Outcome::Skipped);
            }
            Err(error) => return Err(error).context("creating the node"),
        }
        self.set_owner_nofollow(&new.target, new.attributes)?;
        // mknod is subject to the umask.
        fs::set_permissions(&new.target, fs::Permissions::from_mode(new.attributes.mode))?;
        set_xattrs(entry, &new.target);
        set_mtime_nofollow(&new.target, new.attributes);
        Ok(Outcome::Written)
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        new: &NewEntry,
    ) -> Result<Outcome> {
        self.remove_path(&new.relative)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&new.target)?;
        io::copy(entry, &mut file).context("writing the file")?;
        if let Some((uid, gid)) = new.attributes.owner {
            let result = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
            self.tolerate_ownership_error(result, &new.target)?;
        }
        // After chown, which clears set-id bits and file capabilities.
        file.set_permissions(fs::Permissions::from_mode(new.attributes.mode))?;
        set_xattrs(entry, &new.target);
        if let Some(mtime) = new.attributes.mtime {
            file.set_times(times(mtime))?;
        }
        Ok(Outcome::Written)
    }

    /// Gives `path` itself (not a symlink's target) the entry's owner, where allowed.
    fn set_owner_nofollow(&mut self, path: &Path, attributes: Attributes) -> Result<()> {
        if let Some((uid, gid)) = attributes.owner {
            let result = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
            self.tolerate_ownership_error(result, path)?;
        }
        Ok(())
    }

    /// Makes sure every parent of an entry is a real directory inside the rootfs, creating
    /// missing ones (tars need not list directories), and returns the innermost.
    fn prepare_parents(
        &mut self,
        parents: &[OsString],
        written: &mut LayerPaths,
    ) -> Result<PathBuf> {
        let mut path = self.root.clone();
        let mut relative = PathBuf::new();
        for component in parents {
            path.push(component);
            relative.push(component);
            match fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => bail!(
                    "{} is not a directory (a link or file from an earlier entry); refusing to write through it",
                    relative.display()
                ),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    create_dir(&path)?;
                    written.mark(&relative);
                    // Until a layer says otherwise, implicit directories get the usual mode.
                    self.directories
                        .entry(relative.clone())
                        .or_insert(Attributes {
                            mode: 0o755,
                            owner: None,
                            mtime: None,
                        });
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("inspecting {}", relative.display()));
                }
            }
        }
        Ok(path)
    }

    /// The directory at `components` if it exists as real directories all the way down.
    fn existing_dir(&self, components: &[OsString]) -> Result<Option<PathBuf>> {
        let mut path = self.root.clone();
        for component in components {
            path.push(component);
            match fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => return Ok(None),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Some(path))
    }

    /// A hard link's source: must already exist in the rootfs and not be a directory.
    fn existing_file(&self, components: &[OsString]) -> Result<PathBuf> {
        let relative: PathBuf = components.iter().collect();
        let missing = || anyhow!("hard link target {} does not exist", relative.display());
        let (name, parents) = components.split_last().ok_or_else(missing)?;
        let path = self.existing_dir(parents)?.ok_or_else(missing)?.join(name);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => {
                bail!("hard link target {} is a directory", relative.display())
            }
            Ok(_) => Ok(path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(missing()),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes whatever is at `relative` (never following a final symlink) and forgets
    /// deferred attributes of directories that went with it.
    fn remove_path(&mut self, relative: &Path) -> Result<()> {
        let path = self.root.join(relative);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => {
                super::remove_tree(&path)
                    .with_context(|| format!("removing {}", relative.display()))?;
                let doomed: Vec<PathBuf> = self
                    .directories
                    .range(relative.to_path_buf()..)
                    .map(|(key, _)| key)
                    .take_while(|key| key.starts_with(relative))
                    .cloned()
                    .collect();
                for key in doomed {
                    self.directories.remove(&key);
                }
                Ok(())
            }
            Ok(_) => {
                fs::remove_file(&path).with_context(|| format!("removing {}", relative.display()))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Opaque directory: drop everything below `directory` that this layer did not write.
    fn clear_lower_entries(&mut self, directory: &Path, written: &LayerPaths) -> Result<()> {
        let mut pending = vec![directory.to_path_buf()];
        while let Some(current) = pending.pop() {
            for child in fs::read_dir(self.root.join(&current))? {
                let child = child?;
                let relative = current.join(child.file_name());
                if !written.contains(&relative) {
                    self.remove_path(&relative)?;
                } else if child.file_type()?.is_dir() {
                    pending.push(relative);
                }
            }
        }
        Ok(())
    }

    fn tolerate_ownership_error(&mut self, result: io::Result<()>, path: &Path) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            // Only root may give files away; unprivileged imports (tests, rootless use) keep
            // their own uid rather than failing.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
                ) =>
            {
                if !self.ownership_warned {
                    self.ownership_warned = true;
                    tracing::warn!(error = %error, "cannot set file ownership in image; keeping our own");
                }
                Ok(())
            }
            Err(error) => {
                Err(error).with_context(|| format!("changing the owner of {}", path.display()))
            }
        }
    }
}

/// The entry's type; pre-POSIX tars mark directories only by a trailing slash.
fn entry_kind<R: Read>(entry: &tar::Entry<'_, R>) -> EntryType {
    let kind = entry.header().entry_type();
    if kind == EntryType::Regular && entry.path_bytes().ends_with(b"/") {
        EntryType::Directory
    } else {
        kind
    }
}

/// The components of an entry or link name, refusing anything that would leave the rootfs.
fn confined_components(path: &Path) -> Result<Vec<OsString>> {
    let mut components = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => components.push(name.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => bail!(
                "{} escapes the root filesystem (contains ..)",
                path.display()
            ),
            Component::RootDir | Component::Prefix(_) => {
                bail!(
                    "{} escapes the root filesystem (absolute path)",
                    path.display()
                )
            }
        }
    }
    Ok(components)
}

fn attributes_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Attributes> {
    let header = entry.header();
    let mode = header.mode()? & 0o7777;
    let mut uid = header.uid()?;
    let mut gid = header.gid()?;
    let mut mtime = Duration::from_secs(header.mtime()?);
    // PAX records override the header for values that do not fit into it.
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let Ok(value) = extension.value() else {
                continue;
            };
            match extension.key() {
                Ok("uid") => uid = value.parse().unwrap_or(uid),
                Ok("gid") => gid = value.parse().unwrap_or(gid),
                Ok("mtime") => mtime = parse_pax_time(value).unwrap_or(mtime),
                _ => {}
            }
        }
    }
    let owner = match (u32::try_from(uid), u32::try_from(gid)) {
        (Ok(uid), Ok(gid)) => Some((uid, gid)),
        _ => bail!("owner {uid}:{gid} out of range"),
    };
    Ok(Attributes {
        mode,
        owner,
        mtime: UNIX_EPOCH.checked_add(mtime),
    })
}

/// PAX times are decimal seconds with an optional fraction ("1700000000.123456789").
/// Times before 1970 are clamped to it.
fn parse_pax_time(value: &str) -> Option<Duration> {
    if value.starts_with('-') {
        return Some(Duration::ZERO);
    }
    let (seconds, fraction) = value.split_once('.').unwrap_or((value, ""));
    let seconds: u64 = seconds.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    Some(Duration::new(seconds, nanos))
}

/// Extended attributes (e.g. file capabilities) from `SCHILY.xattr.*` PAX records. Failing
/// to set one is logged, not fatal: unprivileged runs cannot set `security.*`, and not every
/// filesystem supports xattrs at all.
fn set_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, path: &Path) {
    let Ok(Some(extensions)) = entry.pax_extensions() else {
        return;
    };
    for extension in extensions.flatten() {
        let Some(name) = extension
            .key_bytes()
            .strip_prefix(PAX_XATTR_PREFIX.as_bytes())
        else {
            continue;
        };
        if let Err(error) = sys::set_xattr_nofollow(path, name, extension.value_bytes()) {
            tracing::debug!(
                path = %path.display(),
                xattr = %String::from_utf8_lossy(name),
                error = %error,
                "cannot set extended attribute"
            );
        }
    }
}

/// The mtime of a file that must not be opened (symlink, fifo, device node). Such times are
/// cosmetic; a filesystem refusing them is no reason to fail.
fn set_mtime_nofollow(path: &Path, attributes: Attributes) {
    if let Some(mtime) = attributes.mtime {
        let _ = sys::set_mtime_nofollow(path, mtime);
    }
}

fn create_dir(path: &Path) -> Result<()> {
    DirBuilder::new()
        .mode(0o755)
        .create(path)
        .with_context(|| format!("creating directory {}", path.display()))
}

fn times(mtime: SystemTime) -> FileTimes {
    FileTimes::new().set_modified(mtime).set_accessed(mtime)
}

/// Total size of the regular files under `root`, each hard-linked inode counted once.
pub(super) fn disk_usage(root: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file()
                && (metadata.nlink() == 1 || seen.insert((metadata.dev(), metadata.ino())))
            {
                total += metadata.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn apply_layers(layers: &[Vec<u8>]) -> Result<tempfile::TempDir> {
        let temp = tempfile::tempdir().unwrap();
        let mut builder = RootfsBuilder::new(temp.path());
        for layer in layers {
            builder.apply(layer.as_slice())?;
        }
        builder.finish()?;
        Ok(temp)
    }

    #[test]
    fn whiteout_of_directory_and_replacing_types() {
        let lower = TarBuilder::new()
            .dir("a", 0o755)
            .file("a/deep/x", b"x", 0o644)
            .file("b", b"file", 0o644)
            .symlink("c", "/etc")
            .finish();
        let upper = TarBuilder::new()
            .file("a/.wh.deep", b"", 0o644)
            .dir("b", 0o700)
            .file("b/inner", b"now a dir", 0o644)
            .file("c", b"no longer a link", 0o644)
            .finish();
        let root = apply_layers(&[lower, upper]).unwrap();
        assert!(!root.path().join("a/deep").exists());
        assert!(root.path().join("a").is_dir());
        assert_eq!(fs::read(root.path().join("b/inner")).unwrap(), b"now a dir");
        assert_mode(&root.path().join("b"), 0o700);
        assert!(
            !fs::symlink_metadata(root.path().join("c"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn opaque_directory_keeps_nested_entries_of_its_own_layer() {
        let lower = TarBuilder::new()
            .file("d/sub/old", b"old", 0o644)
            .file("d/top", b"top", 0o644)
            .finish();
        // No explicit entry for d/sub: it is implied by d/sub/new.
        let upper = TarBuilder::new()
            .file("d/sub/new", b"new", 0o644)
            .file("d/.wh..wh..opq", b"", 0o644)
            .finish();
        let root = apply_layers(&[lower, upper]).unwrap();
        assert!(!root.path().join("d/top").exists());
        assert!(!root.path().join("d/sub/old").exists());
        assert_eq!(fs::read(root.path().join("d/sub/new")).unwrap(), b"new");
    }

    #[test]
    fn whiteout_does_not_follow_symlinked_parent() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let lower = TarBuilder::new()
            .symlink("link", outside.path().to_str().unwrap())
            .finish();
        let upper = TarBuilder::new()
            .file("link/.wh.victim", b"", 0o644)
            .finish();
        apply_layers(&[lower, upper]).unwrap();
        assert!(outside.path().join("victim").exists());
    }

    #[test]
    fn hard_link_to_missing_or_directory_target_fails() {
        let missing = TarBuilder::new().hardlink("l", "nope").finish();
        assert!(apply_layers(&[missing]).is_err());
        let directory = TarBuilder::new()
            .dir("d", 0o755)
            .hardlink("l", "d")
            .finish();
        assert!(apply_layers(&[directory]).is_err());
    }

    #[test]
    fn truncated_layer_is_an_error_not_a_panic() {
        let layer = TarBuilder::new().file("big", &[7u8; 4096], 0o644).finish();
        assert!(apply_layers(&[layer[..1000].to_vec()]).is_err());
        assert!(apply_layers(&[vec![0xff; 700]]).is_err());
    }

    #[test]
    fn ownership_is_applied_when_permitted() {
        let layer = TarBuilder::new()
            .file_owned("owned", b"x", 0o640, 1234, 4321)
            .finish();
        let root = apply_layers(&[layer]).unwrap();
        let metadata = fs::metadata(root.path().join("owned")).unwrap();
        if running_as_root() {
            assert_eq!((metadata.uid(), metadata.gid()), (1234, 4321));
        }
        assert_eq!(metadata.mode() & 0o7777, 0o640);
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_pax_time("12.5"), Some(Duration::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some(Duration::new(12, 0)));
        assert_eq!(parse_pax_time("-5.1"), Some(Duration::ZERO));
        assert_eq!(parse_pax_time("x"), None);
    }
}
