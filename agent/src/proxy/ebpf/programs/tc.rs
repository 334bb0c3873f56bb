//! The NodePort programs, attached to the uplink interface with TCX (ingress and egress).
use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, Result};
use aya::Ebpf;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use skiff_ebpf_common::programs;

use super::{AttachReport, Attachment, Hook, detach_pinned, load_and_link};

/// `enum bpf_attach_type` and direction of each tc program.
const PROGRAMS: [(&str, u32, TcAttachType); 2] = [
    (programs::NODEPORT_INGRESS, 46, TcAttachType::Ingress), // BPF_TCX_INGRESS
    (programs::NODEPORT_EGRESS, 47, TcAttachType::Egress),   // BPF_TCX_EGRESS
];

/// Load every tc program and attach it to interface `ifname` through its pinned link in
/// `links`.
pub fn attach(
    ebpf: &mut Ebpf,
    links: &Path,
    ifname: &str,
    report: &mut AttachReport,
) -> Result<()> {
    let ifindex = if_index(ifname)?;
    for (name, attach_type, direction) in PROGRAMS {
        let at = Attachment {
            name,
            attach_type,
            hook: Hook::Interface(ifindex),
        };
        load_and_link(ebpf, &at, links, report, |prog: &mut SchedClassifier| {
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            let id = prog
                .attach_with_options(ifname, direction, options)
                .with_context(|| format!("attach {name} to {ifname} (tcx)"))?;
            Ok(prog.take_link(id)?.try_into()?)
        })?;
    }
    Ok(())
}

/// Detach the tc programs a previous run attached (there is no uplink any more).
pub fn detach(links: &Path, report: &mut AttachReport) -> Result<()> {
    for (name, _, _) in PROGRAMS {
        let pin = links.join(name);
        if fs::symlink_metadata(&pin).is_ok() {
            detach_pinned(&pin)?;
            report.replaced.push(name.into());
        }
    }
    Ok(())
}

fn if_index(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname).context("interface name")?;
    // SAFETY: a valid C string.
    let i = unsafe { nix::libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("uplink interface {ifname}"));
    }
    Ok(i)
}
