//! Attaching pinned programs to interfaces with TCX, and pinning the links
//! so they outlive the process that made them.
use std::{fs, io};

use anyhow::{Context as _, Result};
use aya::programs::{
    LinkOrder, SchedClassifier, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{TcAttachOptions, TcAttachType},
};
use aya_obj::programs::XdpAttachType;
use pod_net_common::program_names;

use crate::{datapath::pins::PinDir, sys::netdev::Link};

/// Whether an attach call did anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    AlreadyThere,
}

/// Attaches the pinned `program` to the TC ingress of `link`, unless its
/// pinned link for this ifindex is attached there already. A pin whose link
/// no longer is (the interface went and its ifindex was reused) is replaced.
pub fn attach(pins: &PinDir, program: &str, link: &Link) -> Result<Attached> {
    if is_attached(pins, program, link)? {
        return Ok(Attached::AlreadyThere);
    }
    detach(pins, program, link.index)?;
    let links_dir = pins.program_links_dir(program);
    fs::create_dir_all(&links_dir).with_context(|| format!("creating {}", links_dir.display()))?;
    let program_path = pins.program(program);
    let mut classifier = SchedClassifier::from_pin(&program_path)
        .with_context(|| format!("opening pinned program {}", program_path.display()))?;
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

/// Removes `program`'s pinned link on `ifindex`, which detaches it there.
/// Returns whether there was one.
pub fn detach(pins: &PinDir, program: &str, ifindex: u32) -> Result<bool> {
    let Some(link) = pins.pinned_link(program, ifindex)? else {
        return Ok(false);
    };
    match fs::remove_file(&link.path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("unpinning {}", link.path.display())),
    }
}

/// Whether `program`'s pinned link for `link` is live: the program it runs
/// is among the TCX ingress programs of `link` right now. Asking the link,
/// not the pinned program, stays right in the middle of a reload, when
/// links already run the new program and the old one is still pinned.
pub fn is_attached(pins: &PinDir, program: &str, link: &Link) -> Result<bool> {
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
