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
use aya::maps::{HashMap, MapData, MapError};
use pod_net_common::{PeerNode, map_table, remote::PEER_F_VXLAN};

use crate::datapath::{is_missing_key, map_batch::BPF_NOEXIST, open_typed, pins::PinDir};

type PeerMap = HashMap<MapData, [u8; 4], PeerNode>;

fn open(pins: &PinDir) -> Result<PeerMap> {
    open_typed(pins, map_table::PEER_NODES).map(|(map, _)| map)
}

/// Makes `node_ips` peers (again: the write is idempotent).
pub fn add(pins: &PinDir, node_ips: impl IntoIterator<Item = Ipv4Addr>) -> Result<()> {
    let mut map = open(pins)?;
    for node_ip in node_ips {
        map.insert(
            node_ip.octets(),
            PeerNode {
                flags: PEER_F_VXLAN,
            },
            0,
        )
        .with_context(|| format!("adding {node_ip} to peer_nodes"))?;
    }
    Ok(())
}

/// Stops treating `node_ips` as peers.
pub fn remove(pins: &PinDir, node_ips: impl IntoIterator<Item = Ipv4Addr>) -> Result<()> {
    let mut map = open(pins)?;
    for node_ip in node_ips {
        match map.remove(&node_ip.octets()) {
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
pub fn current(pins: &PinDir) -> Result<BTreeSet<Ipv4Addr>> {
    open(pins)?
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

pub fn drift(pins: &PinDir, wanted: &BTreeSet<Ipv4Addr>) -> Result<Drift> {
    let current = current(pins)?;
    Ok(Drift {
        missing: wanted.difference(&current).copied().collect(),
        extra: current.difference(wanted).copied().collect(),
    })
}

/// Makes the map hold exactly `wanted`.
pub fn sync(pins: &PinDir, wanted: &BTreeSet<Ipv4Addr>) -> Result<Drift> {
    let drift = drift(pins, wanted)?;
    add(pins, drift.missing.iter().copied())?;
    remove(pins, drift.extra.iter().copied())?;
    Ok(drift)
}

/// Adds the nodes among `node_ips` that are not peers yet, and takes them
/// out again when dropped unless [`Admission::keep`] was called: a failed
/// `node add` leaves the map as it was.
pub fn admit(pins: &PinDir, node_ips: &BTreeSet<Ipv4Addr>) -> Result<Admission> {
    let mut map = open(pins)?;
    let mut admission = Admission {
        pins: pins.clone(),
        added: Vec::new(),
        kept: false,
    };
    for &node_ip in node_ips {
        let value = PeerNode {
            flags: PEER_F_VXLAN,
        };
        match map.insert(node_ip.octets(), value, BPF_NOEXIST) {
            Ok(()) => admission.added.push(node_ip),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("adding {node_ip} to peer_nodes"));
            }
        }
    }
    Ok(admission)
}

/// Peers [`admit`] added, removed on drop unless kept.
pub struct Admission {
    pins: PinDir,
    added: Vec<Ipv4Addr>,
    kept: bool,
}

impl Admission {
    /// The remote entries went in: the new peers stay.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.kept {
            let _ = remove(&self.pins, self.added.iter().copied());
        }
    }
}
