//! flanneld's kernel state read as remote entries. Beside flannel
//! (`load --beside-flannel`) pod-net's remote entries mirror what flanneld
//! programmed, so the fast path never disagrees with the kernel path it
//! stands beside. flanneld's vxlan backend programs a remote node as
//!
//! - a route `SUBNET via GW dev flannel.<VNI> onlink` (GW: the subnet's
//!   network address),
//! - a permanent neighbour entry `GW lladdr VTEPMAC` on the device,
//! - an FDB entry `VTEPMAC dst NODE_IP` on the device;
//!
//! and with `DirectRouting`, a node on the underlay's subnet as a route
//! `SUBNET via NODE_IP dev <underlay>` instead.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::Result;

use crate::{
    cidr::Cidr,
    datapath::Locked,
    mac::MacAddr,
    node::{
        remotes::{self, HostChecks, Mode, NodeEntry, NodeIndex, NodeSpec, node_value},
        tunnel::{self, DeviceContents, KernelRoute},
    },
    sys::netdev::Link,
};

/// The entries this node takes, each judged on its own (flanneld's state
/// is trusted no more than a store: a node in the way of this node's own
/// addresses or routes is refused, never the reason others are).
pub fn admit(
    datapath: &Locked,
    wanted: &[NodeSpec],
) -> Result<(Vec<NodeSpec>, BTreeMap<Cidr, String>)> {
    let config = datapath.config()?;
    let host = HostChecks::new(datapath)?;
    let mut index = NodeIndex::default();
    let mut admitted = Vec::new();
    let mut refused = BTreeMap::new();
    for spec in wanted {
        let verdict = host
            .check(spec)
            .and_then(|()| node_value(spec, &config))
            .and_then(|value| index.admit(spec, &value));
        match verdict {
            Ok(()) => admitted.push(spec.clone()),
            Err(err) => {
                refused.insert(spec.cidr, format!("{err:#}"));
            }
        }
    }
    Ok((admitted, refused))
}

/// Fills the empty remote maps of a datapath being loaded beside flannel
/// with flanneld's VXLAN peers, before the underlay program sees its first
/// packet: it drops VXLAN from nodes it does not know, and packets already
/// flowing on flannel's path must not be lost to that while the agent
/// catches up. (Direct peers need no entry to pass.) Returns how many went
/// in.
pub fn prefill(datapath: &mut Locked) -> Result<usize> {
    let config = datapath.config()?;
    if !remotes::list(datapath)?.is_empty() {
        return Ok(0);
    }
    let Some(device) = tunnel::kernel_device(&config)? else {
        return Ok(0);
    };
    // VXLAN peers only: a direct peer's packets need no entry to pass.
    let mirror = read(&device, config.underlay_ifindex, |_| false)?;
    // A refused node stays on flannel's path; the agent reports it.
    let (admitted, _refused) = admit(datapath, &mirror.specs)?;
    remotes::add_many(datapath, &admitted)?;
    Ok(admitted.len())
}

/// The remote nodes flanneld's state stands for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// One entry per subnet.
    pub specs: Vec<NodeSpec>,
    /// Subnets routed through the device whose neighbour or FDB entry is
    /// missing (flanneld writes them one by one): not entries yet.
    pub incomplete: Vec<Cidr>,
}

/// The nodes of `device` (flanneld's VXLAN device) and of the `direct`
/// routes on the underlay (flanneld's `DirectRouting` routes, already
/// narrowed to the network's subnets).
#[must_use]
pub fn mirror(device: &DeviceContents, direct: &[KernelRoute]) -> Mirror {
    let neighbours: HashMap<IpAddr, MacAddr> = device.neighbours.iter().copied().collect();
    let fdb: HashMap<MacAddr, IpAddr> = device.fdb.iter().copied().collect();
    let mut specs: BTreeMap<Cidr, NodeSpec> = BTreeMap::new();
    let mut incomplete = Vec::new();
    for route in &device.routes {
        if !route.cidr.addr.is_ipv4() {
            continue;
        }
        let node = route.via.and_then(|gateway| {
            let mac = *neighbours.get(&gateway)?;
            match fdb.get(&mac)? {
                IpAddr::V4(node_ip) => Some((*node_ip, mac)),
                IpAddr::V6(_) => None,
            }
        });
        match node {
            Some((node_ip, mac)) => {
                specs.insert(
                    route.cidr,
                    NodeSpec {
                        cidr: route.cidr,
                        node_ip,
                        vtep_mac: Some(mac),
                        mode: Mode::Vxlan,
                    },
                );
            }
            None => incomplete.push(route.cidr),
        }
    }
    for route in direct {
        if let Some(IpAddr::V4(node_ip)) = route.gateway {
            specs.entry(route.cidr).or_insert(NodeSpec {
                cidr: route.cidr,
                node_ip,
                vtep_mac: None,
                mode: Mode::Direct,
            });
        }
    }
    Mirror {
        specs: specs.into_values().collect(),
        incomplete,
    }
}

/// flanneld's state as remote nodes: `device`'s routes, neighbours and FDB
/// entries, and its `DirectRouting` routes out of `underlay` to subnets
/// `is_flannels` accepts (which of the underlay's routes are flanneld's,
/// only what the caller knows of flannel's network can tell).
pub fn read(device: &Link, underlay: u32, is_flannels: impl Fn(Cidr) -> bool) -> Result<Mirror> {
    let direct = direct_routes(&tunnel::main_routes()?, underlay, is_flannels);
    Ok(mirror(&tunnel::contents(device)?, &direct))
}

/// flanneld's `DirectRouting` routes among `routes`: via an IPv4 gateway
/// out of `underlay`, not pod-net's, to a subnet `is_flannels` accepts.
#[must_use]
pub fn direct_routes(
    routes: &[KernelRoute],
    underlay: u32,
    is_flannels: impl Fn(Cidr) -> bool,
) -> Vec<KernelRoute> {
    routes
        .iter()
        .filter(|route| {
            route.oif == Some(underlay)
                && !route.is_pod_nets()
                && matches!(route.gateway, Some(IpAddr::V4(_)))
                && is_flannels(route.cidr)
        })
        .cloned()
        .collect()
}

/// Whether a subnet is another node's in flannel's `network`, this node's
/// being `own`.
pub fn other_subnet(network: Cidr, own: Cidr) -> impl Fn(Cidr) -> bool {
    move |cidr| {
        cidr.prefix_len > network.prefix_len && network.contains(cidr.addr) && !cidr.overlaps(&own)
    }
}

/// Where the remote entries and flanneld's state disagree, one line each:
/// an entry flanneld has no node for (or another one), and a node of
/// flanneld's the fast path has no entry for.
#[must_use]
pub fn disagreements(entries: &[NodeEntry], mirror: &Mirror) -> Vec<String> {
    let flannels: BTreeMap<Cidr, &NodeSpec> =
        mirror.specs.iter().map(|spec| (spec.cidr, spec)).collect();
    let mut lines = Vec::new();
    for entry in entries {
        match flannels.get(&entry.cidr) {
            None if mirror.incomplete.contains(&entry.cidr) => {}
            None => lines.push(format!(
                "{} goes to node {} in the fast path, but flanneld has no route for it",
                entry.cidr, entry.node_ip
            )),
            Some(spec) if !same(entry, spec) => lines.push(format!(
                "{} goes to node {} ({} {}) in the fast path, but to node {} ({}{}) in flanneld's \
                 kernel state",
                entry.cidr,
                entry.node_ip,
                entry.mode,
                entry.vtep_mac,
                spec.node_ip,
                spec.mode,
                spec.vtep_mac
                    .map(|mac| format!(" {mac}"))
                    .unwrap_or_default()
            )),
            Some(_) => {}
        }
    }
    let ours: BTreeMap<Cidr, &NodeEntry> =
        entries.iter().map(|entry| (entry.cidr, entry)).collect();
    for spec in &mirror.specs {
        if !ours.contains_key(&spec.cidr) {
            lines.push(format!(
                "flanneld routes {} to node {}, but the fast path has no entry for it",
                spec.cidr, spec.node_ip
            ));
        }
    }
    lines
}

fn same(entry: &NodeEntry, spec: &NodeSpec) -> bool {
    entry.node_ip == spec.node_ip
        && entry.mode == spec.mode
        && spec.vtep_mac.is_none_or(|mac| mac == entry.vtep_mac)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::node::tunnel::DeviceRoute;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0a, 0x58, 0, 0, 0, last])
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// What flanneld writes on flannel.1 for node `n` (10.244.n.0/24 at
    /// 192.168.100.n).
    fn flannel_node(device: &mut DeviceContents, n: u8) {
        let gateway = ip(&format!("10.244.{n}.0"));
        device.routes.push(DeviceRoute {
            cidr: cidr(&format!("10.244.{n}.0/24")),
            via: Some(gateway),
            metric: None,
        });
        device.neighbours.push((gateway, mac(n)));
        device.fdb.push((mac(n), ip(&format!("192.168.100.{n}"))));
    }

    fn vxlan(n: u8) -> NodeSpec {
        NodeSpec {
            cidr: cidr(&format!("10.244.{n}.0/24")),
            node_ip: Ipv4Addr::new(192, 168, 100, n),
            vtep_mac: Some(mac(n)),
            mode: Mode::Vxlan,
        }
    }

    fn route(dst: &str, oif: u32, gateway: &str, protocol: u8) -> KernelRoute {
        KernelRoute {
            cidr: cidr(dst),
            protocol,
            oif: Some(oif),
            via: true,
            gateway: Some(ip(gateway)),
            on_link: false,
        }
    }

    #[test]
    fn flanneld_s_routes_neighbours_and_fdb_are_its_nodes() {
        let mut device = DeviceContents::default();
        flannel_node(&mut device, 3);
        flannel_node(&mut device, 2);
        // A route whose FDB entry is not written yet, and one without a
        // neighbour entry: flanneld is mid-update.
        device.routes.push(DeviceRoute {
            cidr: cidr("10.244.4.0/24"),
            via: Some(ip("10.244.4.0")),
            metric: None,
        });
        device.neighbours.push((ip("10.244.4.0"), mac(4)));
        device.routes.push(DeviceRoute {
            cidr: cidr("10.244.5.0/24"),
            via: Some(ip("10.244.5.0")),
            metric: None,
        });
        let direct = [route("10.244.7.0/24", 2, "192.168.100.7", 3)];
        let mirror = mirror(&device, &direct);
        let direct_7 = NodeSpec {
            cidr: cidr("10.244.7.0/24"),
            node_ip: Ipv4Addr::new(192, 168, 100, 7),
            vtep_mac: None,
            mode: Mode::Direct,
        };
        assert_eq!(mirror.specs, [vxlan(2), vxlan(3), direct_7]);
        assert_eq!(
            mirror.incomplete,
            [cidr("10.244.4.0/24"), cidr("10.244.5.0/24")]
        );
    }

    #[test]
    fn direct_routes_are_flanneld_s_routes_to_other_subnets_of_the_network() {
        let network = cidr("10.244.0.0/16");
        let own = cidr("10.244.1.0/24");
        let routes = [
            route("10.244.2.0/24", 2, "192.168.100.2", 3),
            // Another interface, pod-net's own, this node's subnet, the
            // network itself, outside it, a default route.
            route("10.244.3.0/24", 9, "192.168.100.3", 3),
            route("10.244.4.0/24", 2, "192.168.100.4", 0x70),
            route("10.244.1.0/24", 2, "192.168.100.1", 3),
            route("10.244.0.0/16", 2, "192.168.100.9", 3),
            route("10.96.0.0/24", 2, "192.168.100.9", 3),
            route("0.0.0.0/0", 2, "192.168.100.254", 3),
        ];
        let kept = direct_routes(&routes, 2, other_subnet(network, own));
        assert_eq!(
            kept.iter().map(|route| route.cidr).collect::<Vec<_>>(),
            [cidr("10.244.2.0/24")]
        );
    }

    #[test]
    fn disagreements_name_each_subnet_and_both_sides() {
        let mut device = DeviceContents::default();
        flannel_node(&mut device, 2);
        flannel_node(&mut device, 3);
        device.routes.push(DeviceRoute {
            cidr: cidr("10.244.4.0/24"),
            via: Some(ip("10.244.4.0")),
            metric: None,
        });
        let mirror = mirror(&device, &[]);
        let entry = |spec: &NodeSpec| NodeEntry {
            cidr: spec.cidr,
            node_ip: spec.node_ip,
            vtep_mac: spec.vtep_mac.unwrap_or_default(),
            vtep_mac_given: spec.vtep_mac.is_some(),
            mode: spec.mode,
        };
        // In step: node 2 as flanneld has it; node 4 is mid-update.
        let mut moved = vxlan(3);
        moved.node_ip = Ipv4Addr::new(192, 168, 100, 33);
        let entries = [
            entry(&vxlan(2)),
            entry(&moved),
            entry(&vxlan(4)),
            entry(&vxlan(9)),
        ];
        assert_eq!(
            disagreements(&entries, &mirror),
            [
                "10.244.3.0/24 goes to node 192.168.100.33 (vxlan 0a:58:00:00:00:03) in the fast \
                 path, but to node 192.168.100.3 (vxlan 0a:58:00:00:00:03) in flanneld's kernel \
                 state",
                "10.244.9.0/24 goes to node 192.168.100.9 in the fast path, but flanneld has no \
                 route for it",
            ]
        );
        assert_eq!(
            disagreements(&entries[..1], &mirror),
            [
                "flanneld routes 10.244.3.0/24 to node 192.168.100.3, but the fast path has no entry \
              for it"
            ]
        );
        assert!(disagreements(&[entry(&vxlan(2)), entry(&vxlan(3))], &mirror).is_empty());
    }
}
