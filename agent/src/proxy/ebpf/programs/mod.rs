//! The programs of the eBPF object, one module per kind (as aya's `programs`): each loads its
//! programs and puts them behind bpf_links pinned under `links/<program name>`, or takes them
//! away again.
//!
//! A link a previous agent pinned is reused when it still points where this agent attaches (the
//! new program is swapped into it atomically: connections keep flowing); one that points
//! elsewhere (another cgroup or interface) is detached and replaced.
pub mod cgroup_sock_addr;
pub mod tc;

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::Ebpf;
use aya::programs::links::FdLink;
use aya::programs::{CgroupSock, CgroupSockAddr, Program, ProgramError, SchedClassifier};
use tracing::{debug, info, warn};

use super::sys;

/// What [`load`](super::loader::load) did with each attachment (and each pinned map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachReport {
    /// Links created (and pinned) by this call.
    pub attached: Vec<String>,
    /// Pinned links whose program was swapped atomically (`BPF_LINK_UPDATE`).
    pub updated: Vec<String>,
    /// Pinned links removed because they pointed elsewhere (other cgroup or interface).
    pub replaced: Vec<String>,
    /// Maps reused from pins / created / resized (entries migrated) / recreated empty.
    pub maps_reused: Vec<String>,
    pub maps_created: Vec<String>,
    pub maps_resized: Vec<String>,
    pub maps_recreated: Vec<String>,
}

/// A kind of program this agent attaches through a bpf_link.
trait LinkedProgram {
    fn load_program(&mut self) -> Result<(), ProgramError>;
    /// The loaded program's fd, to swap into a pinned link.
    fn owned_fd(&self) -> Result<OwnedFd>;
}

/// [`LinkedProgram`] for aya's program kinds, which share these methods but no trait.
macro_rules! linked_program {
    ($($kind:ty),+) => {$(
        impl LinkedProgram for $kind {
            fn load_program(&mut self) -> Result<(), ProgramError> {
                self.load()
            }
            fn owned_fd(&self) -> Result<OwnedFd> {
                Ok(self.fd()?.as_fd().try_clone_to_owned()?)
            }
        }
    )+};
}
linked_program!(CgroupSock, CgroupSockAddr, SchedClassifier);

/// What a program's link attaches to.
#[derive(Clone, Copy, Debug)]
enum Hook {
    /// A cgroup, by id.
    Cgroup(u64),
    /// A network interface (TCX), by index.
    Interface(u32),
}

/// Program `name`, attached as `attach_type` (`enum bpf_attach_type`) to `hook`.
struct Attachment<'a> {
    name: &'a str,
    attach_type: u32,
    hook: Hook,
}

impl Attachment<'_> {
    /// Whether the link `info` describes is this attachment's (a pinned link to reuse).
    fn is(&self, info: &sys::LinkInfo) -> bool {
        let on_hook = match self.hook {
            Hook::Cgroup(id) => info.link_type == sys::LINK_TYPE_CGROUP && info.cgroup_id == id,
            Hook::Interface(ifindex) => {
                info.link_type == sys::LINK_TYPE_TCX && info.ifindex == ifindex
            }
        };
        on_hook && info.attach_type == self.attach_type
    }
}

/// Load program `at.name` (of kind `P`) and put it behind its pinned link in `links`: swapped
/// into the link a previous run pinned there if that is `at`'s, else `attach`ed anew and
/// pinned.
fn load_and_link<P>(
    ebpf: &mut Ebpf,
    at: &Attachment<'_>,
    links: &Path,
    report: &mut AttachReport,
    attach: impl FnOnce(&mut P) -> Result<FdLink>,
) -> Result<()>
where
    P: LinkedProgram,
    for<'p> &'p mut P: TryFrom<&'p mut Program, Error = ProgramError>,
{
    let name = at.name;
    let prog: &mut P = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
        .try_into()?;
    prog.load_program()
        .with_context(|| format!("load program {name}"))?;
    let pin = links.join(name);
    let existing = reusable_link(&pin, |info| at.is(info), report)?;
    let prog_fd = prog.owned_fd()?;
    swap_or_attach(name, &pin, existing, prog_fd, report, || attach(prog))
}

/// Put program `name` behind its pinned link: swap it into the reusable link a previous
/// run pinned (connections keep flowing), or `attach` it anew and pin the link.
fn swap_or_attach(
    name: &str,
    pin: &Path,
    existing: Option<OwnedFd>,
    prog_fd: OwnedFd,
    report: &mut AttachReport,
    attach: impl FnOnce() -> Result<FdLink>,
) -> Result<()> {
    match existing {
        Some(link) => {
            sys::link_update(&link, &prog_fd)
                .with_context(|| format!("swap program {name} into {}", pin.display()))?;
            report.updated.push(name.into());
        }
        None => {
            let link = attach()?;
            link.pin(pin)
                .map_err(|e| anyhow!("pin link {}: {e}", pin.display()))?;
            report.attached.push(name.into());
        }
    }
    Ok(())
}

/// The pinned link at `pin` if it exists and `fits`; a link that does not fit (another cgroup
/// or interface) is detached and unpinned.
fn reusable_link(
    pin: &Path,
    fits: impl Fn(&sys::LinkInfo) -> bool,
    report: &mut AttachReport,
) -> Result<Option<OwnedFd>> {
    if fs::symlink_metadata(pin).is_err() {
        return Ok(None);
    }
    let fd = match sys::obj_get(pin) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(pin = %pin.display(), error = %e, "unreadable pinned link; replacing it");
            let _ = fs::remove_file(pin);
            return Ok(None);
        }
    };
    let info = sys::link_info(&fd).with_context(|| format!("link info of {}", pin.display()))?;
    if fits(&info) {
        return Ok(Some(fd));
    }
    info!(pin = %pin.display(), ?info, "pinned link points elsewhere; replacing it");
    let _ = sys::link_detach(&fd);
    fs::remove_file(pin).with_context(|| format!("unpin {}", pin.display()))?;
    report
        .replaced
        .push(pin.file_name().unwrap_or_default().to_string_lossy().into());
    Ok(None)
}

/// Detach the link pinned at `pin` and unpin it; a missing pin is fine.
pub(super) fn detach_pinned(pin: &Path) -> Result<()> {
    if let Ok(fd) = sys::obj_get(pin)
        && let Err(e) = sys::link_detach(&fd)
    {
        // EINVAL/EOPNOTSUPP: already detached (e.g. its cgroup or interface is gone).
        debug!(pin = %pin.display(), error = %e, "link detach");
    }
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("unpin {}", pin.display())),
    }
}
