//! The few Linux calls the standard library lacks for unpacking layers: device nodes and
//! fifos, extended attributes, and times of files that must not be opened (symlinks, fifos).
//! They are declared directly against the C library std already links.

use std::ffi::{CString, c_char, c_int, c_long, c_void};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) const S_IFIFO: u32 = 0o010_000;
pub(super) const S_IFCHR: u32 = 0o020_000;
pub(super) const S_IFBLK: u32 = 0o060_000;

const AT_FDCWD: c_int = -100;
const AT_SYMLINK_NOFOLLOW: c_int = 0x100;
/// `UTIME_OMIT`: leave the access time alone.
const UTIME_OMIT: c_long = (1 << 30) - 2;

#[repr(C)]
struct Timespec {
    tv_sec: c_long,
    tv_nsec: c_long,
}

unsafe extern "C" {
    #[link_name = "mknod"]
    fn c_mknod(path: *const c_char, mode: u32, dev: u64) -> c_int;
    #[link_name = "lsetxattr"]
    fn c_lsetxattr(
        path: *const c_char,
        name: *const c_char,
        value: *const c_void,
        size: usize,
        flags: c_int,
    ) -> c_int;
    #[link_name = "utimensat"]
    fn c_utimensat(
        dirfd: c_int,
        path: *const c_char,
        times: *const Timespec,
        flags: c_int,
    ) -> c_int;
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// glibc's `makedev`.
fn device_number(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// Creates a fifo or device node; `mode` includes the file type bits.
pub(super) fn mknod(path: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let result = unsafe { c_mknod(path.as_ptr(), mode, device_number(major, minor)) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
        c_lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the modification time of `path` itself (symlinks are not followed).
pub(super) fn set_mtime_nofollow(path: &Path, mtime: SystemTime) -> io::Result<()> {
    let since_epoch = mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = c_long::try_from(since_epoch.as_secs())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?;
    let times = [
        Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        Timespec {
            tv_sec: seconds,
            tv_nsec: since_epoch.subsec_nanos() as c_long,
        },
    ];
    let path = c_path(path)?;
    // SAFETY: `path` is NUL-terminated and `times` points to two timespecs, as utimensat
    // requires; both outlive the call.
    let result =
        unsafe { c_utimensat(AT_FDCWD, path.as_ptr(), times.as_ptr(), AT_SYMLINK_NOFOLLOW) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::time::Duration;

    #[test]
    fn device_numbers_match_glibc() {
        assert_eq!(device_number(1, 3), 0x103);
        assert_eq!(device_number(259, 65537), 0x1001_0301);
        assert_eq!(device_number(0x1000, 0), 0x1000_0000_0000);
    }

    #[test]
    fn fifo_and_symlink_times() {
        let temp = tempfile::tempdir().unwrap();
        let fifo = temp.path().join("fifo");
        mknod(&fifo, S_IFIFO | 0o600, 0, 0).unwrap();
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
