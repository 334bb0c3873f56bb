//! The socket-LB programs (`connect4`, `sendmsg4`, `recvmsg4`, `getpeername4`), attached to the
//! cgroup whose processes get service addresses translated, and `post_bind4`/`post_bind6`, which
//! refuse the node's own binds to node ports, external IPs and LB addresses there.
use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, Result};
use aya::Ebpf;
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr};
use skiff_ebpf_common::programs;

use super::{AttachReport, Attachment, Hook, load_and_link};
use crate::proxy::ebpf::sys;

/// `enum bpf_attach_type` of each `cgroup/sock_addr` program.
const PROGRAMS: [(&str, u32); 4] = [
    (programs::CONNECT4, 10),     // BPF_CGROUP_INET4_CONNECT
    (programs::SENDMSG4, 14),     // BPF_CGROUP_UDP4_SENDMSG
    (programs::RECVMSG4, 19),     // BPF_CGROUP_UDP4_RECVMSG
    (programs::GETPEERNAME4, 29), // BPF_CGROUP_INET4_GETPEERNAME
];
/// The `cgroup/sock` programs and their attach types.
const POST_BIND: [(&str, u32); 2] = [
    (programs::POST_BIND4, 12), // BPF_CGROUP_INET4_POST_BIND
    (programs::POST_BIND6, 13), // BPF_CGROUP_INET6_POST_BIND
];

/// Whether `name` is one of the cgroup programs.
fn is_cgroup_program(name: &str) -> bool {
    PROGRAMS.iter().chain(&POST_BIND).any(|(n, _)| *n == name)
}

/// Load every cgroup program and attach it to `cgroup_root` through its pinned link in
/// `links`.
pub fn attach(
    ebpf: &mut Ebpf,
    links: &Path,
    cgroup_root: &Path,
    report: &mut AttachReport,
) -> Result<()> {
    let cgroup = fs::File::open(cgroup_root)
        .with_context(|| format!("open cgroup {}", cgroup_root.display()))?;
    let cgroup_id = sys::cgroup_id(cgroup_root)?;
    for (name, attach_type) in PROGRAMS {
        let at = Attachment {
            name,
            attach_type,
            hook: Hook::Cgroup(cgroup_id),
        };
        load_and_link(ebpf, &at, links, report, |prog: &mut CgroupSockAddr| {
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attach {name} to {}", cgroup_root.display()))?;
            Ok(prog.take_link(id)?.try_into()?)
        })?;
    }
    for (name, attach_type) in POST_BIND {
        let at = Attachment {
            name,
            attach_type,
            hook: Hook::Cgroup(cgroup_id),
        };
        load_and_link(ebpf, &at, links, report, |prog: &mut CgroupSock| {
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attach {name} to {}", cgroup_root.display()))?;
            Ok(prog.take_link(id)?.try_into()?)
        })?;
    }
    Ok(())
}

/// Detach skiff cgroup links on `root` that no pin holds (left by a crash between attach and
/// pin); returns how many.
pub fn sweep(root: &Path) -> Result<usize> {
    let cgroup_id = match sys::cgroup_id(root) {
        Ok(id) => id,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let skiff_progs: std::collections::HashSet<u32> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| p.name_as_str().is_some_and(is_cgroup_program))
        .map(|p| p.id())
        .collect();
    let mut n = 0;
    for id in sys::link_ids()? {
        let Ok(fd) = sys::link_fd_by_id(id) else {
            continue;
        };
        let Ok(info) = sys::link_info(&fd) else {
            continue;
        };
        if info.link_type == sys::LINK_TYPE_CGROUP
            && info.cgroup_id == cgroup_id
            && skiff_progs.contains(&info.prog_id)
        {
            sys::link_detach(&fd).with_context(|| format!("detach link {id}"))?;
            n += 1;
        }
    }
    Ok(n)
}
