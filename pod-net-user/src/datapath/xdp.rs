//! The XDP receive path on the underlay (`load --xdp`): switching it on and
//! off, and readying each pod for it. XDP redirects into a veth land in the
//! peer's NAPI queue, which exists only with GRO (or XDP) on the pod's end,
//! so each pod's `eth0` gets GRO and its host veth a `pod_veths` entry.
use std::path::Path;

use anyhow::{Context as _, Result};
use pod_net_common::{Config, program_names};

use crate::{
    datapath::{Datapath, attach, is_missing_key, pins::PinDir},
    error::LoadRefusal,
    sys::{
        netdev::{self, Link},
        netns,
    },
};

/// Whether the XDP program is attached (its link pinned).
pub fn is_on(pins: &PinDir) -> Result<bool> {
    Ok(!pins.pinned_links(program_names::UNDERLAY_XDP)?.is_empty())
}

/// Attaches or detaches the XDP program on the underlay.
pub fn set(pins: &PinDir, datapath: &Datapath, config: &Config, on: bool) -> Result<()> {
    if !on {
        for link in pins.pinned_links(program_names::UNDERLAY_XDP)? {
            attach::unpin(pins, program_names::UNDERLAY_XDP, link.ifindex)?;
        }
        return Ok(());
    }
    if !config.has_underlay() {
        return Err(LoadRefusal::XdpNeedsUnderlay.into());
    }
    let underlay = netdev::link_by_index(config.underlay_ifindex)?
        .context("the underlay interface is gone")?;
    for (_, endpoint) in datapath.endpoint_entries()? {
        if let Some(veth) = netdev::link_by_index(endpoint.ifindex)? {
            prepare_pod(datapath, &veth, None)?;
        }
    }
    attach::attach_xdp(pins, &underlay)?;
    Ok(())
}

/// Readies one pod for XDP delivery: GRO on its `eth0` (entering its
/// namespace, `pod_netns` if known), and its host veth in `pod_veths`.
pub fn prepare_pod(datapath: &Datapath, veth: &Link, pod_netns: Option<&Path>) -> Result<()> {
    let peer = netdev::veth_peer(veth)?
        .with_context(|| format!("cannot find the pod end of {}", veth.name))?;
    match veth.peer_netnsid {
        Some(nsid) => netns::run_in(nsid, pod_netns, || netdev::set_gro(&peer.name, true))?,
        None => netdev::set_gro(&peer.name, true)?,
    }
    let mut pod_veths = datapath.pod_veths()?;
    pod_veths
        .insert(veth.index, veth.index, None, 0)
        .with_context(|| format!("adding {} to pod_veths", veth.name))
}

/// Drops a host veth from `pod_veths` (it may never have been there).
pub fn forget_pod(datapath: &Datapath, ifindex: u32) -> Result<()> {
    let mut pod_veths = datapath.pod_veths()?;
    match pod_veths.remove(ifindex) {
        Ok(()) => Ok(()),
        Err(err) if is_missing_key(&err) => Ok(()),
        Err(err) => Err(err).context("removing from pod_veths"),
    }
}
