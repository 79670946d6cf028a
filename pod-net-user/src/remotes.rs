//! Remote nodes: which node hosts which pod prefix. Each entry is written
//! to the `remote_nodes` trie (the fast path) and routed through the tunnel
//! device (the kernel's path for what the fast path leaves to it).
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, MapError, lpm_trie::Key};
use pod_net_common::{
    Config, RemoteAddr, RemoteNode, map_names,
    remote::{IPV4_MAPPED_PREFIX_BITS, REMOTE_F_VTEP_MAC, derived_vtep_mac},
};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    datapath::Datapath,
    mac::MacAddr,
    map_batch::{self, BatchError},
    netdev::{self, Link},
    pins::PinDir,
    tunnel::{self, RemoteRoute},
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
    let mut datapath = Datapath::open(pins)?;
    let config = datapath.config()?;
    let device = tunnel_device(&config)?;
    let (key, value) = entry_for(spec, &config)?;
    let route = [remote_route(spec.cidr, &value)];

    let _lock = pins.lock()?;
    // NOEXIST fails only on exactly this prefix; a lookup by its key then
    // returns that entry (a shorter prefix would not fail the insert).
    match datapath.remotes.insert(&key, value, map_batch::BPF_NOEXIST) {
        Ok(()) => {}
        Err(err) if errno(&err) == Some(libc::EEXIST) => {
            let existing = datapath
                .remotes
                .get(&key, 0)
                .context("reading remote_nodes")?;
            if existing == value {
                // Make sure the kernel's side is there too.
                tunnel::add_routes(&device, &route)?;
                return Ok(AddOutcome::Unchanged);
            }
            bail!(
                "{} already goes to node {}; run `pod-net node del --cidr {}` first",
                spec.cidr,
                Ipv4Addr::from(existing.node_ip),
                spec.cidr
            );
        }
        Err(err) => return Err(insert_error(err, datapath.remotes_capacity)),
    }
    if let Err(err) = tunnel::add_routes(&device, &route) {
        // Leave the node as it was.
        let _ = datapath.remotes.remove(&key);
        return Err(err);
    }
    Ok(AddOutcome::Added)
}

/// Adds many new entries at once (what `apply` does): one batched map
/// write and one netlink socket. Any prefix already present, or a full
/// map, fails the whole call and leaves the entries as they were.
pub fn add_many(pins: &PinDir, specs: &[NodeSpec]) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let datapath = Datapath::open(pins)?;
    let config = datapath.config()?;
    let device = tunnel_device(&config)?;
    let (keys, values): (Vec<_>, Vec<_>) = specs
        .iter()
        .map(|spec| entry_for(spec, &config).with_context(|| spec.cidr.to_string()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let routes: Vec<RemoteRoute> = specs
        .iter()
        .zip(&values)
        .map(|(spec, value)| remote_route(spec.cidr, value))
        .collect();

    let _lock = pins.lock()?;
    let map = open_trie(pins)?;
    let fd = map.fd().as_fd();
    if let Err(BatchError { done, error }) = map_batch::insert_new(fd, &keys, &values) {
        let _ = map_batch::delete(fd, &keys[..done]);
        let cidr = specs
            .get(done)
            .map_or_else(String::new, |spec| spec.cidr.to_string());
        return Err(match error.raw_os_error() {
            Some(libc::ENOSPC) => anyhow::anyhow!(
                "remote_nodes is full ({} entries): {} of the {} new entries fit, so none were added; remove stale entries or load with a larger --max-remotes",
                datapath.remotes_capacity,
                done,
                specs.len()
            ),
            Some(libc::EEXIST) => {
                anyhow::anyhow!("{cidr} is already in remote_nodes; nothing was added")
            }
            _ => anyhow::Error::new(error).context(format!("writing {cidr} to remote_nodes")),
        });
    }
    if let Err(err) = tunnel::add_routes(&device, &routes) {
        // Leave the node as it was.
        let _ = map_batch::delete(fd, &keys);
        let _ = tunnel::remove_routes(&device, &routes, &[]);
        return Err(err.context("nothing was added"));
    }
    Ok(())
}

/// Removes the entry for exactly `cidr`. Afterwards traffic to it is no
/// longer encapsulated, and the kernel answers it as unroutable.
pub fn del(pins: &PinDir, cidr: Cidr) -> Result<NodeEntry> {
    let mut removed = del_many(pins, &[cidr])?;
    removed
        .pop()
        .with_context(|| format!("no remote node entry for {cidr}"))
}

/// Removes the entries for exactly these prefixes, all or none: a prefix
/// with no entry fails the call before anything changes.
pub fn del_many(pins: &PinDir, cidrs: &[Cidr]) -> Result<Vec<NodeEntry>> {
    if cidrs.is_empty() {
        return Ok(Vec::new());
    }
    let datapath = Datapath::open(pins)?;
    let config = datapath.config()?;
    let _lock = pins.lock()?;
    let mut current: std::collections::HashMap<Cidr, RemoteNode> =
        entries(&datapath)?.into_iter().collect();
    let mut removed = Vec::with_capacity(cidrs.len());
    for &cidr in cidrs {
        let node = current
            .remove(&cidr)
            .with_context(|| format!("no remote node entry for {cidr}"))?;
        removed.push((cidr, node));
    }
    let keys: Vec<_> = removed.iter().map(|(cidr, _)| trie_key(*cidr)).collect();
    let map = open_trie(pins)?;
    let fd = map.fd().as_fd();
    if let Err(BatchError { done, error }) = map_batch::delete(fd, &keys) {
        // Put back what went, so the call changes nothing.
        let values: Vec<RemoteNode> = removed[..done].iter().map(|(_, node)| *node).collect();
        let _ = map_batch::update(fd, &keys[..done], &values);
        return Err(anyhow::Error::new(error).context("removing from remote_nodes"));
    }
    // A node's neighbour and FDB entries go with its last prefix.
    let still_used: std::collections::HashSet<[u8; 4]> =
        current.values().map(|node| node.node_ip).collect();
    let gone_nodes: std::collections::BTreeSet<(Ipv4Addr, [u8; 6])> = removed
        .iter()
        .filter(|(_, node)| !still_used.contains(&node.node_ip))
        .map(|(_, node)| (Ipv4Addr::from(node.node_ip), node.vtep_mac))
        .collect();
    if let Ok(device) = tunnel_device(&config) {
        let routes: Vec<RemoteRoute> = removed
            .iter()
            .map(|(cidr, node)| remote_route(*cidr, node))
            .collect();
        let gone_nodes: Vec<(Ipv4Addr, MacAddr)> = gone_nodes
            .into_iter()
            .map(|(ip, mac)| (ip, MacAddr(mac)))
            .collect();
        tunnel::remove_routes(&device, &routes, &gone_nodes)?;
    }
    Ok(removed
        .iter()
        .map(|(cidr, node)| node_entry(*cidr, node))
        .collect())
}

/// The trie key and value for `spec`, after the checks no map can make.
fn entry_for(spec: &NodeSpec, config: &Config) -> Result<(Key<RemoteAddr>, RemoteNode)> {
    if spec.cidr.addr.is_ipv6() {
        bail!("{}: IPv6 prefixes are not supported yet", spec.cidr);
    }
    if let Some(mac) = spec.vtep_mac
        && (mac.is_zero() || mac.is_multicast())
    {
        bail!("VTEP MAC {mac} is not a unicast address");
    }
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
    Ok((trie_key(spec.cidr), value))
}

fn remote_route(cidr: Cidr, node: &RemoteNode) -> RemoteRoute {
    RemoteRoute {
        cidr,
        node_ip: Ipv4Addr::from(node.node_ip),
        vtep_mac: MacAddr(node.vtep_mac),
    }
}

/// The trie as raw map data, for the batch calls.
fn open_trie(pins: &PinDir) -> Result<MapData> {
    let path = pins.map(map_names::REMOTE_NODES);
    MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
}

fn errno(err: &MapError) -> Option<i32> {
    match err {
        MapError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    }
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
    if errno(&err) == Some(libc::ENOSPC) {
        return anyhow::anyhow!(
            "remote_nodes is full ({capacity} entries); remove stale entries or load with a larger --max-remotes"
        );
    }
    anyhow::Error::new(err).context("writing remote_nodes")
}
