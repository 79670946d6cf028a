//! Attaching the pinned `pod_egress` program to a pod's host veth with TCX,
//! and pinning the link so it outlives the process that made it.
use std::{fs, io};

use anyhow::{Context as _, Result};
use aya::programs::{
    LinkOrder, ProgramInfo, SchedClassifier,
    links::FdLink,
    tc::{TcAttachOptions, TcAttachType},
};
use pod_net_common::program_names;

use crate::{netdev::Link, pins::PinDir};

/// Whether an attach call did anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    New,
    AlreadyThere,
}

/// Attaches `pod_egress` to the TC ingress of `veth` (the packets its pod
/// sends), unless a link pinned for this ifindex already exists.
pub fn attach_pod_egress(pins: &PinDir, veth: &Link) -> Result<Attached> {
    if pins.pinned_link(veth.index)?.is_some() {
        return Ok(Attached::AlreadyThere);
    }
    fs::create_dir_all(pins.links_dir())
        .with_context(|| format!("creating {}", pins.links_dir().display()))?;
    let program_path = pins.program(program_names::POD_EGRESS);
    let mut program = SchedClassifier::from_pin(&program_path)
        .with_context(|| format!("opening pinned program {}", program_path.display()))?;
    let link_id = program
        .attach_with_options(
            &veth.name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching pod_egress to {} with TCX", veth.name))?;
    let link = program.take_link(link_id)?;
    let link = FdLink::try_from(link).context("TCX attach returned a non-fd link")?;
    let link_path = pins.link(veth.index, &veth.name);
    link.pin(&link_path)
        .with_context(|| format!("pinning link {}", link_path.display()))?;
    Ok(Attached::New)
}

/// Removes the pinned link on `ifindex`, which detaches the program there.
/// Returns whether there was one.
pub fn detach(pins: &PinDir, ifindex: u32) -> Result<bool> {
    let Some(link) = pins.pinned_link(ifindex)? else {
        return Ok(false);
    };
    match fs::remove_file(&link.path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("unpinning {}", link.path.display())),
    }
}

/// Whether the pinned `pod_egress` program is among the TCX ingress
/// programs of `ifname` right now.
pub fn is_attached(pins: &PinDir, ifname: &str) -> Result<bool> {
    let program_path = pins.program(program_names::POD_EGRESS);
    let ours = ProgramInfo::from_pin(&program_path)
        .with_context(|| format!("reading {}", program_path.display()))?
        .id();
    let (_, programs) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .with_context(|| format!("querying TCX ingress programs of {ifname}"))?;
    Ok(programs.iter().any(|program| program.id() == ours))
}
