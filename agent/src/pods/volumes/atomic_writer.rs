//! The kubelet's AtomicWriter: a volume's files change all at once, never half-written.
//!
//! The files live in a timestamped hidden directory (`..2026_12_07_00_10_00.123456789`); the
//! symlink `..data` points at it; every name a user sees is a symlink `name -> ..data/name`.
//! An update writes a new timestamped directory, points a fresh `..data_tmp` symlink at it and
//! renames that over `..data` (one atomic rename), then removes names no longer in the payload
//! and the old directory. A reader holding `..data/token` open sees the old or the new token,
//! never a mix; a container watching the directory sees one change.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a volume: its content and permission bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Path (relative to the volume) → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Make `dir` hold exactly `payload`. Returns whether anything changed (an identical payload
/// leaves the volume alone, so watchers see no spurious update).
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for path in payload.keys() {
        validate_path(path)?;
    }
    std::fs::create_dir_all(dir)?;
    let old = current_data_dir(dir);
    if let Some(old) = &old
        && same_contents(&dir.join(old), payload)
    {
        return Ok(false);
    }
    let new = new_timestamped_dir(dir)?;
    if let Err(e) = write_payload(&dir.join(&new), payload) {
        let _ = std::fs::remove_dir_all(dir.join(&new));
        return Err(e);
    }
    create_user_visible(dir, payload)?;
    swap_data_dir(dir, &new)?;
    // The old timestamped directory goes with the names the payload no longer has.
    remove_stale(dir, payload)?;
    Ok(true)
}

/// A relative path inside the volume: no `..` component, no leading `..` (the writer's own
/// names), not absolute, not empty.
pub fn validate_path(path: &str) -> io::Result<()> {
    let bad = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid volume file path {path:?}: {why}"),
        ))
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.starts_with("..") {
        return bad("must not start with '..'");
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return bad("must be relative");
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return bad("must not contain '..' or '.' elements");
    }
    Ok(())
}

/// The timestamped directory `..data` points at, if any.
fn current_data_dir(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join(DATA_DIR)).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    dir.join(&name).is_dir().then_some(name)
}

/// Whether `ts_dir` holds exactly the files of `payload`, with the same bytes and modes.
fn same_contents(ts_dir: &Path, payload: &Payload) -> bool {
    let mut on_disk = BTreeSet::new();
    if collect_files(ts_dir, ts_dir, &mut on_disk).is_err() {
        return false;
    }
    if on_disk.iter().ne(payload.keys()) {
        return false;
    }
    payload.iter().all(|(path, f)| {
        let p = ts_dir.join(path);
        let mode_ok = std::fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o7777 == f.mode & 0o7777)
            .unwrap_or(false);
        mode_ok && std::fs::read(&p).is_ok_and(|d| d == f.data)
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.insert(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// A new `..<UTC timestamp>.<nanoseconds>` directory (retried if the name is taken).
fn new_timestamped_dir(dir: &Path) -> io::Result<String> {
    loop {
        let now = jiff::Timestamp::now();
        let name = format!(
            "..{}.{:09}",
            now.strftime("%Y_%m_%d_%H_%M_%S"),
            now.subsec_nanosecond()
        );
        match std::fs::create_dir(dir.join(&name)) {
            Ok(()) => {
                std::fs::set_permissions(dir.join(&name), std::fs::Permissions::from_mode(0o755))?;
                return Ok(name);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn write_payload(ts_dir: &Path, payload: &Payload) -> io::Result<()> {
    for (path, f) in payload {
        let p = ts_dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode & 0o7777))?;
    }
    Ok(())
}

/// The first component of each path: what the user sees at the top of the volume.
fn top_level(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// `name -> ..data/name` for each top-level name; whatever else sits there (a plain file left
/// by an older agent) is replaced.
fn create_user_visible(dir: &Path, payload: &Payload) -> io::Result<()> {
    for name in top_level(payload) {
        let link = dir.join(&name);
        let target = PathBuf::from(DATA_DIR).join(&name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                if std::fs::read_link(&link)? == target {
                    continue;
                }
                std::fs::remove_file(&link)?;
            }
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link)?,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink(&target, &link)?;
    }
    Ok(())
}

/// Point `..data` at `new` atomically: a fresh `..data_tmp` renamed over it.
fn swap_data_dir(dir: &Path, new: &str) -> io::Result<()> {
    let tmp = dir.join(DATA_DIR_TMP);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(new, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_DIR))
}

/// Remove the user-visible names and timestamped directories the payload no longer has
/// (the current `..data` target stays).
fn remove_stale(dir: &Path, payload: &Payload) -> io::Result<()> {
    let keep = top_level(payload);
    let current = current_data_dir(dir);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == DATA_DIR || keep.contains(&name) || Some(&name) == current.as_ref() {
            continue;
        }
        // The directory `..data` pointed at before, or one left by a crash mid-update.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whether `dir` holds a volume written by [`write`] (its `..data` link is there).
pub fn is_written(dir: &Path) -> bool {
    current_data_dir(dir).is_some()
}

/// The current content of `path` in a volume written by [`write`] (through `..data`).
pub fn read(dir: &Path, path: &str) -> io::Result<Vec<u8>> {
    validate_path(path)?;
    std::fs::read(dir.join(DATA_DIR).join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn entries(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn writes_through_a_data_symlink_and_swaps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let first = payload(&[
            ("token", "t1", 0o644),
            ("ca.crt", "ca", 0o644),
            ("sub/x", "nested", 0o600),
        ]);
        assert!(write(&dir, &first).unwrap());
        let ts1 = current_data_dir(&dir).unwrap();
        assert!(ts1.starts_with("..20"), "{ts1}");
        assert_eq!(
            std::fs::read_link(dir.join("..data")).unwrap(),
            PathBuf::from(&ts1)
        );
        assert_eq!(
            std::fs::read_link(dir.join("token")).unwrap(),
            PathBuf::from("..data/token")
        );
        assert_eq!(
            std::fs::read_link(dir.join("sub")).unwrap(),
            PathBuf::from("..data/sub")
        );
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "t1");
        assert_eq!(
            std::fs::read_to_string(dir.join("sub/x")).unwrap(),
            "nested"
        );
        let mode = std::fs::metadata(dir.join("sub/x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // The same payload changes nothing.
        assert!(!write(&dir, &first).unwrap());
        assert_eq!(current_data_dir(&dir).unwrap(), ts1);

        // A new token and one file fewer: a new directory, the old one and the stale name gone.
        let second = payload(&[("token", "t2", 0o644), ("ca.crt", "ca", 0o644)]);
        assert!(write(&dir, &second).unwrap());
        let ts2 = current_data_dir(&dir).unwrap();
        assert_ne!(ts1, ts2);
        assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), "t2");
        assert_eq!(read(&dir, "token").unwrap(), b"t2");
        let want: BTreeSet<String> = ["..data", "ca.crt", "token", ts2.as_str()]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(entries(&dir), want);

        // A mode change alone is a change.
        let third = payload(&[("token", "t2", 0o600), ("ca.crt", "ca", 0o644)]);
        assert!(write(&dir, &third).unwrap());
    }

    #[test]
    fn replaces_plain_files_left_by_an_older_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        std::fs::create_dir_all(dir.join("old-dir")).unwrap();
        std::fs::write(dir.join("key"), "old").unwrap();
        std::fs::write(dir.join("gone"), "x").unwrap();
        assert!(
            write(
                &dir,
                &payload(&[("key", "new", 0o644), ("old-dir", "f", 0o644)])
            )
            .unwrap()
        );
        assert!(
            std::fs::symlink_metadata(dir.join("key"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(dir.join("old-dir")).unwrap(), "f");
        assert!(!dir.join("gone").exists());
    }

    #[test]
    fn refuses_paths_outside_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../b", "..data", "", "./a"] {
            assert!(
                write(tmp.path(), &payload(&[(bad, "x", 0o644)])).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(entries(tmp.path()).is_empty());
    }
}
