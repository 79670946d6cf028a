//! Attaching pinned programs to interfaces, in one of two ways (`load
//! --attach`):
//! - TCX (the default): a link, pinned so it outlives the process that made
//!   it. Creating one waits for an RCU grace period (10–15 ms here).
//! - tc: a `cls_bpf` filter on a `clsact` qdisc over netlink (`sys::tc`),
//!   which the interface itself keeps. No grace period: about 0.2 ms.
//!
//! Switching `--attach` moves each interface to the other kind without a
//! moment of neither. Filters are asked for over netlink, under the RTNL
//! lock, which a TCX link's detach holds through an RCU grace period: so
//! pod add and del look for filters only in tc mode; `gc`, `status`,
//! `unload` and reloads look for both kinds.
use std::{fs, io, os::fd::AsFd as _, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    LinkOrder, SchedClassifier, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{TcAttachOptions, TcAttachType},
};
use aya_obj::programs::XdpAttachType;
use pod_net_common::{config::Config, event::CONFIG_F_TC_ATTACH, program_names};

use crate::{
    datapath::pins::PinDir,
    sys::{
        netdev::{self, Link},
        tc,
    },
};

/// How TC programs are attached (`load --attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    #[default]
    Tcx,
    Tc,
}

impl AttachMode {
    /// The mode a loaded datapath's config names.
    #[must_use]
    pub fn of(config: &Config) -> Self {
        if config.flags & CONFIG_F_TC_ATTACH == 0 {
            Self::Tcx
        } else {
            Self::Tc
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Tc => "tc",
        }
    }
}

/// Whether an attach call did anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    AlreadyThere,
}

/// One attachment of a TC program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifindex: u32,
    pub ifname: String,
    pub kind: AttachmentKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachmentKind {
    /// A pinned TCX link, at this path.
    Tcx(PathBuf),
    /// pod-net's tc filter.
    Filter,
}

impl AttachmentKind {
    /// The `--attach` mode that makes this kind.
    #[must_use]
    pub fn mode(&self) -> AttachMode {
        match self {
            Self::Tcx(_) => AttachMode::Tcx,
            Self::Filter => AttachMode::Tc,
        }
    }
}

/// Attaches the pinned `program` to the TC ingress of `link` the `mode`
/// way, unless it is attached that way already. In tc mode a pinned TCX
/// link there goes once the filter runs. A pinned TCX link that no longer
/// is (the interface went and its ifindex was reused) is replaced.
pub fn attach(pins: &PinDir, mode: AttachMode, program: &str, link: &Link) -> Result<Attached> {
    match mode {
        AttachMode::Tcx => attach_tcx(pins, program, link),
        AttachMode::Tc => {
            let attached = attach_filter(pins, program, link)?;
            unpin(pins, program, link.index)?;
            Ok(attached)
        }
    }
}

fn attach_tcx(pins: &PinDir, program: &str, link: &Link) -> Result<Attached> {
    if is_tcx_live(pins, program, link)? {
        return Ok(Attached::AlreadyThere);
    }
    unpin(pins, program, link.index)?;
    let links_dir = pins.program_links_dir(program);
    fs::create_dir_all(&links_dir).with_context(|| format!("creating {}", links_dir.display()))?;
    let mut classifier = pinned_classifier(pins, program)?;
    let link_id = classifier
        .attach_with_options(
            &link.name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching {program} to {} with TCX", link.name))?;
    let fd_link = FdLink::try_from(classifier.take_link(link_id)?)
        .context("TCX attach returned a non-fd link")?;
    let link_path = pins.link(program, link.index, &link.name);
    fd_link
        .pin(&link_path)
        .with_context(|| format!("pinning link {}", link_path.display()))?;
    Ok(Attached::New)
}

fn attach_filter(pins: &PinDir, program: &str, link: &Link) -> Result<Attached> {
    match tc::filter(link.index)? {
        Some(filter) if filter.name == program => return Ok(Attached::AlreadyThere),
        // Setting ours would replace it: another tool's is left alone.
        Some(filter) => bail!(
            "{} has another tc filter at priority {}, handle 1 ({:?}); pod-net will not \
             replace it",
            link.name,
            tc::PRIORITY,
            filter.name
        ),
        None => {}
    }
    let classifier = pinned_classifier(pins, program)?;
    tc::ensure_clsact(link.index).with_context(|| {
        format!(
            "{} needs a clsact qdisc, as this node attaches with tc filters (an `ingress` \
             qdisc takes its place)",
            link.name
        )
    })?;
    tc::set_filter(link.index, classifier.fd()?.as_fd(), program)?;
    Ok(Attached::New)
}

fn pinned_classifier(pins: &PinDir, program: &str) -> Result<SchedClassifier> {
    let program_path = pins.program(program);
    SchedClassifier::from_pin(&program_path)
        .with_context(|| format!("opening pinned program {}", program_path.display()))
}

/// Points `program`'s tc filter on `ifindex` at `new`, atomically (a reload).
pub fn switch_filter(ifindex: u32, program: &str, new: &SchedClassifier) -> Result<()> {
    tc::set_filter(ifindex, new.fd()?.as_fd(), program)
}

/// Attaches each of `programs` the `mode` way wherever it is attached,
/// then removes the attachments of the other kind: `load --attach`
/// switching, each interface without a gap.
pub fn move_all(pins: &PinDir, mode: AttachMode, programs: &[&str]) -> Result<()> {
    for program in programs {
        for attachment in attachments(pins, program)? {
            if let Some(link) = netdev::link_by_index(attachment.ifindex)? {
                attach(pins, mode, program, &link)?;
            }
            if attachment.kind.mode() != mode {
                remove(&attachment)?;
            }
        }
    }
    Ok(())
}

/// Removes one attachment found by [`attachments`].
pub fn remove(attachment: &Attachment) -> Result<()> {
    match &attachment.kind {
        AttachmentKind::Tcx(path) => match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("unpinning {}", path.display()))
            }
            _ => Ok(()),
        },
        AttachmentKind::Filter => tc::delete_filter(attachment.ifindex).map(drop),
    }
}

/// Attaches the pinned XDP program to `link` (native mode where the driver
/// has it), unless already attached there.
pub fn attach_xdp(pins: &PinDir, link: &Link) -> Result<Attached> {
    let program = program_names::UNDERLAY_XDP;
    if pins.pinned_link(program, link.index)?.is_some() {
        return Ok(Attached::AlreadyThere);
    }
    let links_dir = pins.program_links_dir(program);
    fs::create_dir_all(&links_dir).with_context(|| format!("creating {}", links_dir.display()))?;
    let program_path = pins.program(program);
    let mut xdp = Xdp::from_pin(&program_path, XdpAttachType::Interface)
        .with_context(|| format!("opening pinned program {}", program_path.display()))?;
    let link_id = xdp
        .attach_to_if_index(link.index, XdpMode::Default)
        .with_context(|| format!("attaching {program} to {}", link.name))?;
    let fd_link =
        FdLink::try_from(xdp.take_link(link_id)?).context("XDP attach returned a non-fd link")?;
    let link_path = pins.link(program, link.index, &link.name);
    fd_link
        .pin(&link_path)
        .with_context(|| format!("pinning link {}", link_path.display()))?;
    Ok(Attached::New)
}

/// Detaches `program` from `ifindex`: its pinned link, and in tc mode its
/// filter. Returns whether it was attached.
pub fn detach(pins: &PinDir, mode: AttachMode, program: &str, ifindex: u32) -> Result<bool> {
    match mode {
        AttachMode::Tcx => unpin(pins, program, ifindex),
        AttachMode::Tc => detach_any(pins, program, ifindex),
    }
}

/// Detaches `program` from `ifindex` whichever way it is attached (`gc`).
pub fn detach_any(pins: &PinDir, program: &str, ifindex: u32) -> Result<bool> {
    let unpinned = unpin(pins, program, ifindex)?;
    let deleted = delete_filter(program, ifindex)?;
    Ok(unpinned || deleted)
}

/// Removes `program`'s pinned link on `ifindex` (TCX or XDP), which
/// detaches it there. Returns whether there was one.
pub fn unpin(pins: &PinDir, program: &str, ifindex: u32) -> Result<bool> {
    let Some(link) = pins.pinned_link(program, ifindex)? else {
        return Ok(false);
    };
    match fs::remove_file(&link.path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("unpinning {}", link.path.display())),
    }
}

/// Deletes the tc filter on `ifindex` if it is `program`'s: one at pod-net's
/// priority and handle that runs something else is left alone.
fn delete_filter(program: &str, ifindex: u32) -> Result<bool> {
    if !is_filter_ours(program, ifindex)? {
        return Ok(false);
    }
    tc::delete_filter(ifindex)
}

/// Whether `program` is attached to `link`, either way.
pub fn is_attached(pins: &PinDir, program: &str, link: &Link) -> Result<bool> {
    Ok(is_tcx_live(pins, program, link)? || is_filter_ours(program, link.index)?)
}

/// Whether `program` is attached to `link` the `mode` way.
pub fn is_attached_as(pins: &PinDir, mode: AttachMode, program: &str, link: &Link) -> Result<bool> {
    match mode {
        AttachMode::Tcx => is_tcx_live(pins, program, link),
        AttachMode::Tc => is_filter_ours(program, link.index),
    }
}

fn is_filter_ours(program: &str, ifindex: u32) -> Result<bool> {
    Ok(tc::filter(ifindex)?.is_some_and(|filter| filter.name == program))
}

/// Whether `program`'s pinned link for `link` is live: the program it runs
/// is among the TCX ingress programs of `link` right now. Asking the link,
/// not the pinned program, stays right in the middle of a reload, when
/// links already run the new program and the old one is still pinned.
fn is_tcx_live(pins: &PinDir, program: &str, link: &Link) -> Result<bool> {
    let Some(pinned) = pins.pinned_link(program, link.index)? else {
        return Ok(false);
    };
    let link_program = FdLink::from(
        PinnedLink::from_pin(&pinned.path)
            .with_context(|| format!("opening pinned link {}", pinned.path.display()))?,
    )
    .info()
    .with_context(|| format!("reading pinned link {}", pinned.path.display()))?
    .program_id();
    let (_, programs) = SchedClassifier::query_tcx(&link.name, TcAttachType::Ingress)
        .with_context(|| format!("querying TCX ingress programs of {}", link.name))?;
    Ok(programs.iter().any(|info| info.id() == link_program))
}

/// Every attachment of `program`: its pinned TCX links (live or not), and
/// its filters on the interfaces of this namespace (one netlink query per
/// interface).
pub fn attachments(pins: &PinDir, program: &str) -> Result<Vec<Attachment>> {
    let mut found: Vec<Attachment> = pins
        .pinned_links(program)?
        .into_iter()
        .map(|pinned| Attachment {
            ifindex: pinned.ifindex,
            ifname: pinned.ifname,
            kind: AttachmentKind::Tcx(pinned.path),
        })
        .collect();
    for link in netdev::all_links()? {
        if is_filter_ours(program, link.index)? {
            found.push(Attachment {
                ifindex: link.index,
                ifname: link.name,
                kind: AttachmentKind::Filter,
            });
        }
    }
    Ok(found)
}
