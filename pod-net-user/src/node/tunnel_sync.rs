//! The kernel's side of the remote entries, compared with them and mended.
//!
//! Every remote entry has a route through the tunnel device, and every
//! node its permanent neighbour entry (plus its IPv6 link-local next hop's,
//! when it has IPv6 prefixes) and its FDB entry; nothing else is on the
//! device. A command killed between writing the maps and the kernel (or
//! the other way round), or a tunnel device deleted by hand and created
//! again by `load`, leaves the two out of step: the maps then say a prefix
//! is routed when the kernel has no route for it, or the kernel routes a
//! prefix no entry holds. `gc`, `status`, `apply` and `load` use this to
//! find and mend that. The maps are the truth.
//!
//! The device is pod-net's own (`pnvxlan<VNI>`), so every route on it is
//! pod-net's, whatever its protocol, except the kernel's own
//! (`proto kernel`, its IPv6 link-local prefix).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result};
use pod_net_common::Config;
use serde::Serialize;

use crate::{
    cidr::Cidr,
    datapath::{Datapath, Locked},
    mac::MacAddr,
    node::{
        remotes::{self, Mode, NodeEntry},
        tunnel::{self, DeviceContents, DeviceRoute, RemoteRoute},
    },
    sys::netdev::Link,
};

/// One difference between the remote entries and the tunnel device, as
/// the change that mends it. An `Add*` writes the kernel side of the
/// remote entry `cidr` again (route, neighbour and FDB entries: each is
/// idempotent); a `Remove*` deletes what no entry explains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fix", rename_all = "snake_case")]
pub enum Fix {
    /// The entry's route is missing, or goes elsewhere.
    AddRoute {
        cidr: Cidr,
        node_ip: Ipv4Addr,
        vtep_mac: MacAddr,
    },
    /// `ip` (a node, or its IPv6 next hop) has no permanent neighbour
    /// entry with the node's VTEP MAC; `cidr` is one of the node's entries.
    AddNeighbour {
        ip: IpAddr,
        cidr: Cidr,
        node_ip: Ipv4Addr,
        vtep_mac: MacAddr,
    },
    /// The node's VTEP MAC has no FDB entry pointing at it; `cidr` is one
    /// of the node's entries.
    AddFdb {
        cidr: Cidr,
        node_ip: Ipv4Addr,
        vtep_mac: MacAddr,
    },
    /// A route on the device that no entry has.
    RemoveRoute {
        cidr: Cidr,
        via: Option<IpAddr>,
        metric: Option<u32>,
    },
    /// A permanent neighbour entry no node uses.
    RemoveNeighbour { ip: IpAddr, mac: MacAddr },
    /// An FDB entry no node uses.
    RemoveFdb { mac: MacAddr, dst: IpAddr },
}

impl Fix {
    /// Why the fix is needed, for `gc` and `status`.
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Self::AddRoute { .. } => {
                "its remote entry has no route there, or one going elsewhere".to_owned()
            }
            Self::AddNeighbour { node_ip, .. } => {
                format!("missing or with another MAC, and node {node_ip}'s remote entries need it")
            }
            Self::AddFdb { node_ip, .. } => {
                format!("missing, and node {node_ip}'s remote entries need it")
            }
            Self::RemoveRoute { .. } => "no remote entry has this route".to_owned(),
            Self::RemoveNeighbour { .. } | Self::RemoveFdb { .. } => {
                "no remote entry uses it".to_owned()
            }
        }
    }

    /// The kind of fix, to group thousands of them into one line.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::AddRoute { .. } => "add_route",
            Self::AddNeighbour { .. } => "add_neighbour",
            Self::AddFdb { .. } => "add_fdb",
            Self::RemoveRoute { .. } => "remove_route",
            Self::RemoveNeighbour { .. } => "remove_neighbour",
            Self::RemoveFdb { .. } => "remove_fdb",
        }
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddRoute { cidr, node_ip, .. } => write!(f, "+ route {cidr} via {node_ip}"),
            Self::AddNeighbour { ip, vtep_mac, .. } => {
                write!(f, "+ neighbour {ip} lladdr {vtep_mac}")
            }
            Self::AddFdb {
                node_ip, vtep_mac, ..
            } => write!(f, "+ fdb {vtep_mac} dst {node_ip}"),
            Self::RemoveRoute { cidr, via, .. } => match via {
                Some(via) => write!(f, "- route {cidr} via {via}"),
                None => write!(f, "- route {cidr}"),
            },
            Self::RemoveNeighbour { ip, mac } => write!(f, "- neighbour {ip} lladdr {mac}"),
            Self::RemoveFdb { mac, dst } => write!(f, "- fdb {mac} dst {dst}"),
        }
    }
}

/// pod-net's own tunnel device, if it exists: the one to keep in step
/// with the remote entries. Beside flannel there is none (flanneld's
/// device is flanneld's to keep).
pub fn device(config: &Config) -> Result<Option<Link>> {
    if config.beside_flannel() {
        return Ok(None);
    }
    tunnel::kernel_device(config)
}

/// The fixes that bring `device` in step with the VXLAN remote entries
/// (direct ones are routed out of the underlay instead). Read-only.
pub fn plan(datapath: &Datapath, device: &Link) -> Result<Vec<Fix>> {
    let mut entries = remotes::list(datapath)?;
    entries.retain(|entry| entry.mode == Mode::Vxlan);
    let contents =
        tunnel::contents(device).with_context(|| format!("listing what {} holds", device.name))?;
    Ok(diff(&entries, &contents))
}

/// The fixes the tunnel device of `config` needs, each with the device's
/// name; none without an underlay or a device (`status` reports a missing
/// device, and `load` makes it again, in step).
pub fn plan_if_loaded(datapath: &Datapath) -> Result<Vec<(String, Fix)>> {
    let Some(device) = device(&datapath.config()?)? else {
        return Ok(Vec::new());
    };
    Ok(plan(datapath, &device)?
        .into_iter()
        .map(|fix| (device.name.clone(), fix))
        .collect())
}

/// Makes `fixes` on `device`: every entry to restore in one go, then every
/// removal. A route that went elsewhere is replaced in place first, so its
/// removal afterwards finds nothing, which is not an error.
pub fn execute(device: &Link, fixes: &[Fix]) -> Result<()> {
    let mut restore: BTreeMap<Cidr, RemoteRoute> = BTreeMap::new();
    let (mut routes, mut neighbours, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
    for fix in fixes {
        match *fix {
            Fix::AddRoute {
                cidr,
                node_ip,
                vtep_mac,
            }
            | Fix::AddNeighbour {
                cidr,
                node_ip,
                vtep_mac,
                ..
            }
            | Fix::AddFdb {
                cidr,
                node_ip,
                vtep_mac,
            } => {
                restore.insert(
                    cidr,
                    RemoteRoute {
                        cidr,
                        node_ip,
                        vtep_mac,
                        direct: false,
                    },
                );
            }
            Fix::RemoveRoute { cidr, via, metric } => {
                routes.push(DeviceRoute { cidr, via, metric });
            }
            Fix::RemoveNeighbour { ip, mac } => neighbours.push((ip, mac)),
            Fix::RemoveFdb { mac, dst } => fdb.push((mac, dst)),
        }
    }
    if !restore.is_empty() {
        let restore: Vec<RemoteRoute> = restore.into_values().collect();
        // pod-net's own routes are replaced; another's is never overwritten.
        let ours: BTreeSet<Cidr> = tunnel::main_routes()?
            .into_iter()
            .filter(tunnel::KernelRoute::is_pod_nets)
            .map(|route| route.cidr)
            .collect();
        tunnel::add_routes(device, &restore, &ours)?;
    }
    if !(routes.is_empty() && neighbours.is_empty() && fdb.is_empty()) {
        tunnel::remove_listed(device, &routes, &neighbours, &fdb)?;
    }
    Ok(())
}

/// Brings the tunnel device in step with the remote entries; nothing to do
/// without an underlay or a device. `load` runs it: a device it had to
/// create again starts empty.
pub fn sync(datapath: &Locked) -> Result<Vec<Fix>> {
    let Some(device) = device(&datapath.config()?)? else {
        return Ok(Vec::new());
    };
    let fixes = plan(datapath, &device)?;
    execute(&device, &fixes)?;
    Ok(fixes)
}

/// Where the kernel sends an entry's prefix.
fn next_hop(entry: &NodeEntry) -> IpAddr {
    tunnel::next_hop(entry.cidr, entry.node_ip)
}

/// The fixes that turn `contents` into what `entries` need: adds sorted by
/// prefix, then removals in the order the kernel listed them.
#[must_use]
pub fn diff(entries: &[NodeEntry], contents: &DeviceContents) -> Vec<Fix> {
    let mut fixes = Vec::new();
    let mut removals = Vec::new();

    // Routes: one per entry, via its next hop; any other route goes.
    let wanted: BTreeMap<Cidr, IpAddr> = entries
        .iter()
        .map(|entry| (entry.cidr, next_hop(entry)))
        .collect();
    let mut routed = BTreeSet::new();
    for route in &contents.routes {
        let right = wanted.get(&route.cidr).copied() == route.via && route.via.is_some();
        if !(right && routed.insert(route.cidr)) {
            removals.push(Fix::RemoveRoute {
                cidr: route.cidr,
                via: route.via,
                metric: route.metric,
            });
        }
    }
    fixes.extend(
        entries
            .iter()
            .filter(|entry| !routed.contains(&entry.cidr))
            .map(|entry| Fix::AddRoute {
                cidr: entry.cidr,
                node_ip: entry.node_ip,
                vtep_mac: entry.vtep_mac,
            }),
    );

    // Neighbours: each node's address, and its IPv6 next hop when it has
    // IPv6 prefixes, need one with a VTEP MAC of the node's. The next hop
    // of a node without IPv6 prefixes may stay (`node del` of its last
    // IPv6 prefix leaves it).
    let mut allowed: BTreeMap<IpAddr, BTreeSet<MacAddr>> = BTreeMap::new();
    let mut needed: BTreeMap<IpAddr, &NodeEntry> = BTreeMap::new();
    for entry in entries {
        let link_local = IpAddr::from(tunnel::link_local_next_hop(entry.node_ip));
        for ip in [IpAddr::from(entry.node_ip), link_local] {
            allowed.entry(ip).or_default().insert(entry.vtep_mac);
        }
        needed.entry(entry.node_ip.into()).or_insert(entry);
        if entry.cidr.addr.is_ipv6() {
            needed.entry(link_local).or_insert(entry);
        }
    }
    let mut present = BTreeSet::new();
    for &(ip, mac) in &contents.neighbours {
        if allowed.get(&ip).is_some_and(|macs| macs.contains(&mac)) {
            present.insert(ip);
        } else if !needed.contains_key(&ip) {
            removals.push(Fix::RemoveNeighbour { ip, mac });
        }
    }
    fixes.extend(
        needed
            .iter()
            .filter(|(ip, _)| !present.contains(*ip))
            .map(|(ip, entry)| Fix::AddNeighbour {
                ip: *ip,
                cidr: entry.cidr,
                node_ip: entry.node_ip,
                vtep_mac: entry.vtep_mac,
            }),
    );

    // FDB: each node's VTEP MAC goes to the node; nothing else.
    let mut wanted: BTreeMap<(MacAddr, IpAddr), &NodeEntry> = BTreeMap::new();
    for entry in entries {
        wanted
            .entry((entry.vtep_mac, entry.node_ip.into()))
            .or_insert(entry);
    }
    let mut present = BTreeSet::new();
    for &(mac, dst) in &contents.fdb {
        if wanted.contains_key(&(mac, dst)) {
            present.insert((mac, dst));
        } else {
            removals.push(Fix::RemoveFdb { mac, dst });
        }
    }
    fixes.extend(
        wanted
            .iter()
            .filter(|(key, _)| !present.contains(*key))
            .map(|(_, entry)| Fix::AddFdb {
                cidr: entry.cidr,
                node_ip: entry.node_ip,
                vtep_mac: entry.vtep_mac,
            }),
    );

    fixes.extend(removals);
    fixes
}

#[cfg(test)]
mod tests {
    use pod_net_common::remote::derived_vtep_mac;

    use super::*;

    fn entry(cidr: &str, node: [u8; 4]) -> NodeEntry {
        NodeEntry {
            cidr: cidr.parse().unwrap(),
            node_ip: Ipv4Addr::from(node),
            vtep_mac: MacAddr(derived_vtep_mac(node)),
            vtep_mac_given: false,
            mode: Mode::Vxlan,
        }
    }

    /// What `tunnel::add_routes` writes for `entries`.
    fn written(entries: &[NodeEntry]) -> DeviceContents {
        let mut contents = DeviceContents::default();
        for entry in entries {
            contents.routes.push(DeviceRoute {
                cidr: entry.cidr,
                via: Some(next_hop(entry)),
                metric: entry.cidr.addr.is_ipv6().then_some(1024),
            });
            let node = (IpAddr::from(entry.node_ip), entry.vtep_mac);
            if !contents.neighbours.contains(&node) {
                contents.neighbours.push(node);
                contents.fdb.push((entry.vtep_mac, entry.node_ip.into()));
            }
            let link_local = (
                IpAddr::from(tunnel::link_local_next_hop(entry.node_ip)),
                entry.vtep_mac,
            );
            if entry.cidr.addr.is_ipv6() && !contents.neighbours.contains(&link_local) {
                contents.neighbours.push(link_local);
            }
        }
        contents
    }

    const NODE_2: [u8; 4] = [192, 168, 100, 2];
    const NODE_3: [u8; 4] = [192, 168, 100, 3];

    fn entries() -> Vec<NodeEntry> {
        vec![
            entry("10.244.2.0/24", NODE_2),
            entry("10.244.3.7/32", NODE_3),
            entry("fd00:10:244:2::/64", NODE_2),
        ]
    }

    #[test]
    fn in_step_needs_nothing() {
        let entries = entries();
        assert_eq!(diff(&entries, &written(&entries)), []);
        assert_eq!(diff(&[], &DeviceContents::default()), []);
    }

    #[test]
    fn an_empty_device_gets_everything_back() {
        let entries = entries();
        let fixes = diff(&entries, &DeviceContents::default());
        let lines: Vec<String> = fixes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "+ route 10.244.2.0/24 via 192.168.100.2",
                "+ route 10.244.3.7/32 via 192.168.100.3",
                "+ route fd00:10:244:2::/64 via 192.168.100.2",
                "+ neighbour 192.168.100.2 lladdr 0e:6e:c0:a8:64:02",
                "+ neighbour 192.168.100.3 lladdr 0e:6e:c0:a8:64:03",
                "+ neighbour fe80::c0a8:6402 lladdr 0e:6e:c0:a8:64:02",
                "+ fdb 0e:6e:c0:a8:64:02 dst 192.168.100.2",
                "+ fdb 0e:6e:c0:a8:64:03 dst 192.168.100.3",
            ]
        );
    }

    #[test]
    fn what_no_entry_explains_goes_and_a_wrong_route_is_replaced() {
        let entries = entries();
        let mut contents = written(&entries);
        let stale = written(&[entry("10.244.9.0/24", [192, 168, 100, 9])]);
        contents.routes.extend(stale.routes);
        contents.neighbours.extend(stale.neighbours);
        contents.fdb.extend(stale.fdb);
        // 10.244.3.7/32 now goes to node 2.
        contents.routes[1].via = Some(Ipv4Addr::from(NODE_2).into());
        let lines: Vec<String> = diff(&entries, &contents)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "+ route 10.244.3.7/32 via 192.168.100.3",
                "- route 10.244.3.7/32 via 192.168.100.2",
                "- route 10.244.9.0/24 via 192.168.100.9",
                "- neighbour 192.168.100.9 lladdr 0e:6e:c0:a8:64:09",
                "- fdb 0e:6e:c0:a8:64:09 dst 192.168.100.9",
            ]
        );
    }

    #[test]
    fn a_neighbour_with_another_mac_is_replaced_not_removed() {
        let entries = entries();
        let mut contents = written(&entries);
        contents.neighbours[0].1 = MacAddr([2, 0, 0, 0, 0, 1]);
        let fixes = diff(&entries, &contents);
        assert_eq!(
            fixes,
            [Fix::AddNeighbour {
                ip: Ipv4Addr::from(NODE_2).into(),
                cidr: entries[0].cidr,
                node_ip: NODE_2.into(),
                vtep_mac: entries[0].vtep_mac,
            }]
        );
        // The IPv6 next hop of a node without IPv6 prefixes may stay.
        let v4_only = &entries[..2];
        assert_eq!(
            diff(v4_only, &written(&entries)),
            [Fix::RemoveRoute {
                cidr: entries[2].cidr,
                via: Some(next_hop(&entries[2])),
                metric: Some(1024),
            }]
        );
    }
}
