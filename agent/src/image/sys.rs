//! The few Linux calls the standard library lacks for unpacking layers: device nodes and
//! fifos, extended attributes, and times of files that must not be opened (symlinks, fifos).
//! nix wraps the first and last; it has no xattr calls, so `lsetxattr` comes from the libc
//! it re-exports.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::libc;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, utimensat};
use nix::sys::time::TimeSpec;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Creates a fifo or device node of `file_type` with permission bits `mode`.
pub(super) fn mknod(
    path: &Path,
    file_type: SFlag,
    mode: u32,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let path = c_path(path)?;
    let device = makedev(u64::from(major), u64::from(minor));
    nix::sys::stat::mknod(
        path.as_c_str(),
        file_type,
        Mode::from_bits_truncate(mode),
        device,
    )?;
    Ok(())
}

/// Sets an extended attribute on `path` itself, not on what a symlink points to.
pub(super) fn set_xattr_nofollow(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let path = c_path(path)?;
    let name = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "xattr name contains a NUL byte",
        )
    })?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for `value.len()` bytes,
    // all outliving the call.
    let result = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(result)?;
    Ok(())
}

/// Sets the modification time of `path` itself (symlinks are not followed).
pub(super) fn set_mtime_nofollow(path: &Path, mtime: SystemTime) -> io::Result<()> {
    let since_epoch = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    // TimeSpec::from(Duration) would wrap seconds that do not fit time_t (64 bits on every
    // target skiff builds for; libc's alias is deprecated on musl, so it is not named).
    if i64::try_from(since_epoch.as_secs()).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "time out of range",
        ));
    }
    let path = c_path(path)?;
    utimensat(
        AT_FDCWD,
        path.as_c_str(),
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::from(since_epoch),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::time::Duration;

    #[test]
    fn device_numbers_match_glibc() {
        assert_eq!(makedev(1, 3), 0x103);
        assert_eq!(makedev(259, 65537), 0x1001_0301);
        assert_eq!(makedev(0x1000, 0), 0x1000_0000_0000);
    }

    #[test]
    fn fifo_and_symlink_times() {
        let temp = tempfile::tempdir().unwrap();
        let fifo = temp.path().join("fifo");
        mknod(&fifo, SFlag::S_IFIFO, 0o600, 0, 0).unwrap();
        assert!(fs_meta(&fifo).file_type().is_fifo());
        let link = temp.path().join("link");
        std::os::unix::fs::symlink("fifo", &link).unwrap();
        let when = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
        set_mtime_nofollow(&link, when).unwrap();
        assert_eq!(fs_meta(&link).mtime(), 1_234_567_890);
        assert_ne!(fs_meta(&fifo).mtime(), 1_234_567_890);
    }

    fn fs_meta(path: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(path).unwrap()
    }
}
