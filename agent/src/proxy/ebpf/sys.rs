//! The few `bpf(2)` commands aya 0.14 does not expose for links: open a pinned link, read its
//! info, swap its program atomically (`BPF_LINK_UPDATE`) and force-detach it.
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::libc;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `BPF_LINK_TYPE_CGROUP`.
pub const LINK_TYPE_CGROUP: u32 = 3;
/// `BPF_LINK_TYPE_TCX`.
pub const LINK_TYPE_TCX: u32 = 11;

/// `BPF_FS_MAGIC` (statfs f_type of bpffs).
pub const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zeroed, 128-byte `union bpf_attr` the kernel reads (and for some
    // commands writes) within its stated size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr() as *mut libc::c_void,
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn u32s(attr: &mut [u64; 16]) -> &mut [u32; 32] {
    // SAFETY: same size, u32 has a weaker alignment than u64.
    unsafe { &mut *(attr as *mut [u64; 16] as *mut [u32; 32]) }
}

/// `BPF_OBJ_GET`: open a pinned object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` tells about a link (the parts used here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Cgroup links: the cgroup's id (its inode number on cgroup2).
    pub cgroup_id: u64,
    /// Tcx links: the interface.
    pub ifindex: u32,
    /// `enum bpf_attach_type`.
    pub attach_type: u32,
}

pub fn link_info(fd: impl AsFd) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union at offset 16.
    let mut info = [0u64; 16];
    let mut attr = [0u64; 16];
    {
        let a = u32s(&mut attr);
        a[0] = fd.as_fd().as_raw_fd() as u32;
        a[1] = std::mem::size_of_val(&info) as u32;
    }
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let w = u32s(&mut info);
    let link_type = w[0];
    let mut out = LinkInfo {
        link_type,
        id: w[1],
        prog_id: w[2],
        ..Default::default()
    };
    match link_type {
        LINK_TYPE_CGROUP => {
            out.cgroup_id = u64::from(w[4]) | (u64::from(w[5]) << 32);
            out.attach_type = w[6];
        }
        LINK_TYPE_TCX => {
            out.ifindex = w[4];
            out.attach_type = w[5];
        }
        _ => {}
    }
    Ok(out)
}

/// `BPF_LINK_UPDATE`: atomically replace the link's program.
pub fn link_update(link: impl AsFd, prog: impl AsFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    let a = u32s(&mut attr);
    a[0] = link.as_fd().as_raw_fd() as u32;
    a[1] = prog.as_fd().as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// `BPF_LINK_DETACH`: detach now, whoever else holds the link.
pub fn link_detach(link: impl AsFd) -> io::Result<()> {
    let mut attr = [0u64; 16];
    u32s(&mut attr)[0] = link.as_fd().as_raw_fd() as u32;
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// Every link in the system (ids), for sweeping leftovers.
pub fn link_ids() -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        let mut attr = [0u64; 16];
        u32s(&mut attr)[0] = start;
        match bpf(BPF_LINK_GET_NEXT_ID, &mut attr) {
            Ok(_) => {
                let next = u32s(&mut attr)[1];
                ids.push(next);
                start = next;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(e) => return Err(e),
        }
    }
}

pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    u32s(&mut attr)[0] = id;
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The cgroup id of a cgroup2 directory (its inode number).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}

/// Whether `dir` is on a bpffs mount.
/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, kernel ≥ 5.14):
/// what `bpf_get_netns_cookie` returns for sockets in it.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket; `cookie` and `len` are writable and `len` is `cookie`'s size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

pub fn is_bpffs(dir: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(dir).map_err(io::Error::from)?;
    Ok(st.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}
