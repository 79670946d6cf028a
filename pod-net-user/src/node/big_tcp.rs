//! IPv4 BIG TCP for pods (`load --big-tcp on`, Linux 6.3+): GSO and GRO
//! packets up to 192 KiB on both ends of a pod's veth, so TCP moves a
//! third as many packets through the stack, the fast path included.
//!
//! The underlay gets the same limit. A device with a smaller one has the
//! kernel segment every super-packet into MTU-sized packets before it, in
//! software: measured on the rig, that cut cross-node TCP to a quarter.
//! So an underlay whose driver cannot send 192 KiB GSO packets is refused.
use anyhow::{Context as _, Result, bail};
use std::path::Path;

use crate::{
    datapath::Datapath,
    sys::{netdev, netdev::Link, netns},
};

/// The GSO/GRO size pods get with BIG TCP on, as Cilium uses.
pub const BIG_SIZE: u32 = 192 * 1024;
/// The kernel's default, which pods get back when BIG TCP goes off.
pub const DEFAULT_SIZE: u32 = 64 * 1024;

/// Sets the IPv4 GSO/GRO size of the veth `veth_ifindex` and of its peer,
/// the pod's interface, in the pod's namespace (`pod_netns`, if known).
pub fn set_pod(veth_ifindex: u32, size: u32, pod_netns: Option<&Path>) -> Result<()> {
    let veth = netdev::link_by_index(veth_ifindex)?
        .with_context(|| format!("ifindex {veth_ifindex} is gone"))?;
    netdev::set_ipv4_gso_gro_max(veth.index, size)?;
    // Changes are made inside the pod's namespace: a set request does not
    // take a target namespace id as a get does.
    let set_peer = |peer| netdev::set_ipv4_gso_gro_max(peer, size);
    let result = match (veth.peer_index, veth.peer_netnsid) {
        (Some(peer), Some(netnsid)) => netns::run_in(netnsid, pod_netns, || set_peer(peer)),
        (Some(peer), None) => set_peer(peer),
        (None, _) => Ok(()),
    };
    result.with_context(|| format!("on the pod's end of {}", veth.name))?;
    Ok(())
}

/// Refuses an underlay that cannot send BIG TCP's packets whole.
pub fn check_underlay(underlay: &Link) -> Result<()> {
    match netdev::tso_max_size(underlay.index)? {
        Some(tso_max) if tso_max < BIG_SIZE => bail!(
            "the underlay {} sends GSO packets of at most {tso_max} bytes, so BIG TCP pods' \
             packets to other nodes would be segmented in software; BIG TCP needs {BIG_SIZE}",
            underlay.name
        ),
        _ => Ok(()),
    }
}

/// Sets the underlay's IPv4 GSO/GRO size (see the module's notes).
pub fn set_underlay(underlay: &Link, size: u32) -> Result<()> {
    netdev::set_ipv4_gso_gro_max(underlay.index, size)
        .with_context(|| format!("on the underlay {}", underlay.name))
}

/// Sets `size` on every registered pod's veth pair; returns how many.
pub fn set_all(datapath: &Datapath, size: u32) -> Result<usize> {
    let mut veths: Vec<u32> = datapath
        .endpoint_entries()?
        .iter()
        .map(|(_, endpoint)| endpoint.ifindex)
        .collect();
    veths.sort_unstable();
    veths.dedup();
    for &veth in &veths {
        set_pod(veth, size, None)?;
    }
    Ok(veths.len())
}
