//! `peer_nodes`: the nodes whose VXLAN this node opens.
//!
//! VXLAN has no authentication, and the kernel's tunnel device listens on
//! every local address, so anything that reaches the VXLAN port with a
//! forged inner packet would be delivered. The underlay program drops VXLAN
//! whose outer source is not in this map. The map holds exactly the node IPs
//! of the VXLAN remote entries (direct nodes send no VXLAN): a node becomes
//! a peer with its first prefix and stops being one with its last. `gc`
//! repairs any drift an interrupted command left.
use std::{collections::BTreeSet, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::maps::MapError;
use pod_net_common::{PeerNode, remote::PEER_F_VXLAN};

use crate::datapath::{Datapath, is_missing_key, map_batch::BPF_NOEXIST};

const VXLAN_PEER: PeerNode = PeerNode {
    flags: PEER_F_VXLAN,
};

/// Makes `node_ips` peers (again: the write is idempotent).
pub fn add(datapath: &mut Datapath, node_ips: impl IntoIterator<Item = Ipv4Addr>) -> Result<()> {
    for node_ip in node_ips {
        datapath
            .peer_nodes
            .insert(node_ip.octets(), VXLAN_PEER, 0)
            .with_context(|| format!("adding {node_ip} to peer_nodes"))?;
    }
    Ok(())
}

/// Stops treating `node_ips` as peers.
pub fn remove(datapath: &mut Datapath, node_ips: impl IntoIterator<Item = Ipv4Addr>) -> Result<()> {
    for node_ip in node_ips {
        match datapath.peer_nodes.remove(&node_ip.octets()) {
            Ok(()) => {}
            Err(err) if is_missing_key(&err) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("removing {node_ip} from peer_nodes"));
            }
        }
    }
    Ok(())
}

/// The peers in the map now.
pub fn current(datapath: &Datapath) -> Result<BTreeSet<Ipv4Addr>> {
    datapath
        .peer_nodes
        .keys()
        .map(|key| key.map(Ipv4Addr::from).context("reading peer_nodes"))
        .collect()
}

/// How the map differs from `wanted`, the node IPs of the remote entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Nodes with remote entries whose VXLAN would be dropped.
    pub missing: BTreeSet<Ipv4Addr>,
    /// Peers with no remote entry left.
    pub extra: BTreeSet<Ipv4Addr>,
}

pub fn drift(datapath: &Datapath, wanted: &BTreeSet<Ipv4Addr>) -> Result<Drift> {
    let current = current(datapath)?;
    Ok(Drift {
        missing: wanted.difference(&current).copied().collect(),
        extra: current.difference(wanted).copied().collect(),
    })
}

/// Makes the map hold exactly `wanted`.
pub fn sync(datapath: &mut Datapath, wanted: &BTreeSet<Ipv4Addr>) -> Result<Drift> {
    let drift = drift(datapath, wanted)?;
    add(datapath, drift.missing.iter().copied())?;
    remove(datapath, drift.extra.iter().copied())?;
    Ok(drift)
}

/// Adds the nodes among `node_ips` that are not peers yet, and returns
/// those it added: the caller removes them again if what needed them fails,
/// so a failed `node add` leaves the map as it was.
pub fn admit(datapath: &mut Datapath, node_ips: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>> {
    let mut added = Vec::new();
    for &node_ip in node_ips {
        match datapath
            .peer_nodes
            .insert(node_ip.octets(), VXLAN_PEER, BPF_NOEXIST)
        {
            Ok(()) => added.push(node_ip),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => {
                let _ = remove(datapath, added);
                return Err(err).with_context(|| format!("adding {node_ip} to peer_nodes"));
            }
        }
    }
    Ok(added)
}
