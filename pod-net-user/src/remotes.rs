//! Remote nodes: which node hosts which pod prefix. Each entry is written
//! to the `remote_nodes` trie (the fast path) and routed through the tunnel
//! device (the kernel's path for what the fast path leaves to it).
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapError, lpm_trie::Key};
use pod_net_common::{
    Config, RemoteAddr, RemoteNode,
    remote::{IPV4_MAPPED_PREFIX_BITS, REMOTE_F_VTEP_MAC, derived_vtep_mac},
};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    datapath::Datapath,
    mac::MacAddr,
    netdev::{self, Link},
    pins::PinDir,
    tunnel,
};

/// A remote node entry as the CLI describes it.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub cidr: Cidr,
    pub node_ip: Ipv4Addr,
    /// The node's VTEP MAC (a flannel node's `VtepMAC`); derived from the
    /// node IP when absent, which is what pod-net nodes use.
    pub vtep_mac: Option<MacAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    Unchanged,
}

/// One remote entry, as `node list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeEntry {
    pub cidr: Cidr,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// Whether the VTEP MAC was given rather than derived.
    pub vtep_mac_given: bool,
}

/// Adds a remote entry; the same entry again changes nothing.
pub fn add(pins: &PinDir, spec: &NodeSpec) -> Result<AddOutcome> {
    if spec.cidr.addr.is_ipv6() {
        bail!("{}: IPv6 prefixes are not supported yet", spec.cidr);
    }
    if let Some(mac) = spec.vtep_mac
        && (mac.is_zero() || mac.is_multicast())
    {
        bail!("VTEP MAC {mac} is not a unicast address");
    }
    let mut datapath = Datapath::open(pins)?;
    let config = datapath.config()?;
    let device = tunnel_device(&config)?;
    if spec.node_ip == Ipv4Addr::from(config.node_ip) {
        bail!("{} is this node's own underlay address", spec.node_ip);
    }
    let value = RemoteNode {
        node_ip: spec.node_ip.octets(),
        flags: if spec.vtep_mac.is_some() {
            REMOTE_F_VTEP_MAC
        } else {
            0
        },
        vtep_mac: spec
            .vtep_mac
            .map_or_else(|| derived_vtep_mac(spec.node_ip.octets()), |mac| mac.0),
        pad: [0; 2],
    };
    let key = trie_key(spec.cidr);

    let _lock = pins.lock()?;
    if let Some(existing) = exact_entry(&datapath, spec.cidr)? {
        if existing == value {
            // Make sure the kernel's side is there too.
            tunnel::add_route(&device, spec.cidr, spec.node_ip, MacAddr(value.vtep_mac))?;
            return Ok(AddOutcome::Unchanged);
        }
        bail!(
            "{} already goes to node {}; run `pod-net node del --cidr {}` first",
            spec.cidr,
            Ipv4Addr::from(existing.node_ip),
            spec.cidr
        );
    }
    datapath
        .remotes
        .insert(&key, value, 0)
        .map_err(|err| insert_error(err, datapath.remotes_capacity))?;
    if let Err(err) = tunnel::add_route(&device, spec.cidr, spec.node_ip, MacAddr(value.vtep_mac)) {
        // Leave the node as it was.
        let _ = datapath.remotes.remove(&key);
        return Err(err);
    }
    Ok(AddOutcome::Added)
}

/// Removes the entry for exactly `cidr`. Afterwards traffic to it is no
/// longer encapsulated, and the kernel answers it as unroutable.
pub fn del(pins: &PinDir, cidr: Cidr) -> Result<NodeEntry> {
    let mut datapath = Datapath::open(pins)?;
    let config = datapath.config()?;
    let _lock = pins.lock()?;
    let Some(existing) = exact_entry(&datapath, cidr)? else {
        bail!("no remote node entry for {cidr}");
    };
    datapath
        .remotes
        .remove(&trie_key(cidr))
        .context("removing from remote_nodes")?;
    let node_ip = Ipv4Addr::from(existing.node_ip);
    let still_used = entries(&datapath)?
        .iter()
        .any(|(_, other)| other.node_ip == existing.node_ip);
    if let Ok(device) = tunnel_device(&config) {
        tunnel::remove_route(
            &device,
            cidr,
            node_ip,
            MacAddr(existing.vtep_mac),
            !still_used,
        )?;
    }
    Ok(node_entry(cidr, &existing))
}

/// Every remote entry, sorted by prefix.
pub fn list(pins: &PinDir) -> Result<Vec<NodeEntry>> {
    let datapath = Datapath::open(pins)?;
    let mut list: Vec<NodeEntry> = entries(&datapath)?
        .iter()
        .map(|(cidr, node)| node_entry(*cidr, node))
        .collect();
    list.sort_by_key(|entry| entry.cidr);
    Ok(list)
}

fn node_entry(cidr: Cidr, node: &RemoteNode) -> NodeEntry {
    NodeEntry {
        cidr,
        node_ip: Ipv4Addr::from(node.node_ip),
        vtep_mac: MacAddr(node.vtep_mac),
        vtep_mac_given: node.flags & REMOTE_F_VTEP_MAC != 0,
    }
}

/// The tunnel device of a datapath loaded with an underlay.
fn tunnel_device(config: &Config) -> Result<Link> {
    if !config.has_underlay() {
        bail!(
            "pod-net was loaded without an underlay; run `pod-net load --underlay IFACE \
             --node-ip IPV4` first"
        );
    }
    let name = tunnel::device_name(config.vni);
    netdev::link_by_name(&name)?.with_context(|| {
        format!("the tunnel device {name} is missing; run `pod-net load` again to recreate it")
    })
}

/// The trie key for an IPv4 prefix (IPv4-mapped).
fn trie_key(cidr: Cidr) -> Key<RemoteAddr> {
    let IpAddr::V4(addr) = cidr.addr else {
        unreachable!("IPv6 prefixes are refused before keys are made");
    };
    Key::new(
        IPV4_MAPPED_PREFIX_BITS + u32::from(cidr.prefix_len),
        RemoteAddr::ipv4_mapped(addr.octets()),
    )
}

/// The entry stored under exactly `cidr` (a trie lookup would also match a
/// shorter prefix).
fn exact_entry(datapath: &Datapath, cidr: Cidr) -> Result<Option<RemoteNode>> {
    let key = trie_key(cidr);
    match datapath.remotes.get(&key, 0) {
        Ok(value) => {
            let exact = entries(datapath)?.iter().any(|(stored, _)| *stored == cidr);
            Ok(exact.then_some(value))
        }
        Err(MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(err).context("reading remote_nodes"),
    }
}

/// Every (prefix, node) in the trie.
fn entries(datapath: &Datapath) -> Result<Vec<(Cidr, RemoteNode)>> {
    datapath
        .remotes
        .iter()
        .map(|entry| {
            let (key, value) = entry.context("reading remote_nodes")?;
            Ok((cidr_of(&key), value))
        })
        .collect()
}

/// The prefix a trie key stands for. The kernel keeps prefix lengths at
/// most 128 for a 16-byte key, so they fit a `u8`.
fn cidr_of(key: &Key<RemoteAddr>) -> Cidr {
    let data = key.data();
    let addr = &data.addr;
    let prefix_len = u8::try_from(key.prefix_len()).unwrap_or(u8::MAX);
    let mapped_bits = u8::try_from(IPV4_MAPPED_PREFIX_BITS).unwrap_or(u8::MAX);
    if prefix_len >= mapped_bits && addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff] {
        Cidr {
            addr: IpAddr::from([addr[12], addr[13], addr[14], addr[15]]),
            prefix_len: prefix_len - mapped_bits,
        }
    } else {
        Cidr {
            addr: IpAddr::from(*addr),
            prefix_len,
        }
    }
}

fn insert_error(err: MapError, capacity: u32) -> anyhow::Error {
    if let MapError::SyscallError(syscall) = &err
        && syscall.io_error.raw_os_error() == Some(libc::ENOSPC)
    {
        return anyhow::anyhow!(
            "remote_nodes is full ({capacity} entries); remove stale entries or load with a larger map"
        );
    }
    anyhow::Error::new(err).context("writing remote_nodes")
}
