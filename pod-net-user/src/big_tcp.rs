//! IPv4 BIG TCP for pods (`load --big-tcp on`, Linux 6.3+): GSO and GRO
//! packets up to 192 KiB on both ends of a pod's veth, so TCP moves a
//! third as many packets through the stack, the fast path included. A
//! device on the way with a smaller limit (the underlay, a tunnel device)
//! has the kernel segment in software before it, so nothing else changes.
use anyhow::{Context as _, Result};

use crate::{datapath::Datapath, netdev, netns};

/// The GSO/GRO size pods get with BIG TCP on, as Cilium uses.
pub const BIG_SIZE: u32 = 192 * 1024;
/// The kernel's default, which pods get back when BIG TCP goes off.
pub const DEFAULT_SIZE: u32 = 64 * 1024;

/// Sets the IPv4 GSO/GRO size of the veth `veth_ifindex` and of its peer,
/// the pod's interface, in the pod's namespace.
pub fn set_pod(veth_ifindex: u32, size: u32) -> Result<()> {
    let veth = netdev::link_by_index(veth_ifindex)?
        .with_context(|| format!("ifindex {veth_ifindex} is gone"))?;
    netdev::set_ipv4_gso_gro_max(veth.index, size)?;
    // Changes are made inside the pod's namespace: a set request does not
    // take a target namespace id as a get does.
    let set_peer = |peer| netdev::set_ipv4_gso_gro_max(peer, size);
    let result = match (veth.peer_index, veth.peer_netnsid) {
        (Some(peer), Some(netnsid)) => netns::run_in(netnsid, || set_peer(peer)),
        (Some(peer), None) => set_peer(peer),
        (None, _) => Ok(()),
    };
    result.with_context(|| format!("on the pod's end of {}", veth.name))?;
    Ok(())
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
        set_pod(veth, size)?;
    }
    Ok(veths.len())
}
