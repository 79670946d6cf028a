//! What a remote prefix and its node IP must leave alone on this node.
//!
//! A remote prefix becomes a route through the tunnel device. One that
//! covers this node's own addresses, its pods, or a route that is not
//! pod-net's (the connected routes of `cni0` and the underlay above all)
//! would take their traffic into the tunnel, so it is refused, as are the
//! ranges that are never pod prefixes. A node IP must be a unicast address
//! of another machine.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, bail};

use crate::{cidr::Cidr, node::tunnel::KernelRoute, sys::netdev::HostAddress};

/// Ranges that are never a pod prefix, with what they are.
const SPECIAL: [(IpAddr, u8, &str); 10] = [
    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8, "\"this network\""),
    (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8, "loopback"),
    (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16, "link-local"),
    (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4, "multicast"),
    (IpAddr::V4(Ipv4Addr::BROADCAST), 32, "broadcast"),
    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128, "unspecified"),
    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128, "loopback"),
    (
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)),
        10,
        "link-local",
    ),
    (
        IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
        8,
        "multicast",
    ),
    // IPv4 in the maps' keys: an IPv6 prefix over it would catch IPv4.
    (
        IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
        96,
        "IPv4-mapped",
    ),
];

/// This node as the checks see it: read once, then asked per prefix.
#[derive(Debug, Default)]
pub struct HostView {
    /// This node's addresses, sorted.
    addresses: Vec<HostAddress>,
    /// Routes of the main table that are not pod-net's, sorted by prefix.
    foreign: Vec<KernelRoute>,
    /// Local pod addresses, sorted.
    pods: Vec<IpAddr>,
    names: HashMap<u32, String>,
}

impl HostView {
    #[must_use]
    pub fn new(
        mut addresses: Vec<HostAddress>,
        routes: Vec<KernelRoute>,
        mut pods: Vec<IpAddr>,
        names: HashMap<u32, String>,
    ) -> Self {
        addresses.sort_by_key(|address| address.ip);
        let mut foreign: Vec<KernelRoute> = routes
            .into_iter()
            .filter(|route| !route.is_pod_nets())
            .collect();
        foreign.sort_by_key(|route| route.cidr);
        pods.sort_unstable();
        Self {
            addresses,
            foreign,
            pods,
            names,
        }
    }

    /// Refuses a prefix that is not a remote pod prefix for this node.
    pub fn check_prefix(&self, cidr: Cidr) -> Result<()> {
        if cidr.prefix_len == 0 {
            bail!("{cidr} would send every address into the tunnel; give a pod prefix");
        }
        for (addr, prefix_len, what) in SPECIAL {
            let range = Cidr::masked(addr, prefix_len);
            if cidr.overlaps(&range) {
                bail!("{cidr} overlaps {range} ({what}), which is never a pod prefix");
            }
        }
        if let Some(address) = cidr.first_inside(&self.addresses, |address| address.ip) {
            bail!(
                "{cidr} contains {}, an address of this node (on {})",
                address.ip,
                self.name(address.index)
            );
        }
        if let Some(pod) = cidr.first_inside(&self.pods, |pod| *pod) {
            bail!("{cidr} contains {pod}, a pod on this node");
        }
        if let Some(route) = self.foreign_route_in_the_way(cidr) {
            bail!(
                "{cidr} overlaps this node's route {}{} (proto {}), which is not pod-net's",
                route.cidr,
                route
                    .oif
                    .map(|index| format!(" dev {}", self.name(index)))
                    .unwrap_or_default(),
                protocol_name(route.protocol)
            );
        }
        Ok(())
    }

    /// A route that is not pod-net's and that `cidr` would take over: one
    /// inside it (or the same prefix), or a connected route around it. A
    /// route via a gateway around it (a default route, a site's /8) is what
    /// a more specific remote prefix is meant to beat.
    fn foreign_route_in_the_way(&self, cidr: Cidr) -> Option<&KernelRoute> {
        let start = self.foreign.partition_point(|route| route.cidr < cidr);
        let inside = self.foreign[start..]
            .iter()
            .take_while(|route| cidr.contains(route.cidr.addr))
            .find(|route| route.cidr.prefix_len >= cidr.prefix_len);
        inside.or_else(|| {
            self.foreign.iter().find(|route| {
                route.on_link
                    && route.cidr.prefix_len > 0
                    && route.cidr.prefix_len < cidr.prefix_len
                    && route.cidr.contains(cidr.addr)
            })
        })
    }

    /// Refuses a node IP that is not another machine's unicast address.
    pub fn check_node_ip(&self, node_ip: Ipv4Addr) -> Result<()> {
        let what = if node_ip.is_unspecified() || node_ip.octets()[0] == 0 {
            Some("\"this network\"")
        } else if node_ip.is_loopback() {
            Some("loopback")
        } else if node_ip.is_multicast() {
            Some("multicast")
        } else if node_ip.is_broadcast() {
            Some("broadcast")
        } else {
            None
        };
        if let Some(what) = what {
            bail!("node IP {node_ip} is not a unicast address ({what})");
        }
        let node = IpAddr::V4(node_ip);
        for address in &self.addresses {
            if address.ip == node {
                bail!(
                    "node IP {node_ip} is this node's own address (on {})",
                    self.name(address.index)
                );
            }
            if let IpAddr::V4(ip) = address.ip
                && address.prefix_len < 31
                && directed_broadcast(ip, address.prefix_len) == node_ip
            {
                bail!(
                    "node IP {node_ip} is the broadcast address of {} (on {})",
                    Cidr::masked(address.ip, address.prefix_len),
                    self.name(address.index)
                );
            }
        }
        Ok(())
    }

    fn name(&self, index: u32) -> String {
        self.names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("ifindex {index}"))
    }
}

/// A route protocol as `ip route` names it.
fn protocol_name(protocol: u8) -> String {
    match protocol {
        2 => "kernel".to_owned(),
        3 => "boot".to_owned(),
        4 => "static".to_owned(),
        16 => "dhcp".to_owned(),
        other => other.to_string(),
    }
}

fn directed_broadcast(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let host_mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) | host_mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tunnel;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn route(text: &str, oif: u32, protocol: u8, via: bool, on_link: bool) -> KernelRoute {
        KernelRoute {
            cidr: cidr(text),
            protocol,
            oif: Some(oif),
            via,
            gateway: None,
            on_link,
        }
    }

    /// Node 1 of the rig: cni0 10.244.1.1/24 with two pods, eth0
    /// 192.168.100.1/24, a default route, and one pod-net route.
    fn node() -> HostView {
        let address = |index, ip: &str, prefix_len| HostAddress {
            index,
            ip: ip.parse().unwrap(),
            prefix_len,
        };
        HostView::new(
            vec![
                address(1, "127.0.0.1", 8),
                address(2, "10.244.1.1", 24),
                address(3, "192.168.100.1", 24),
                address(2, "fd00:10:244:1::1", 64),
            ],
            vec![
                route("10.244.1.0/24", 2, 2, false, true),
                route("192.168.100.0/24", 3, 2, false, true),
                route("0.0.0.0/0", 3, 3, true, false),
                route("10.0.0.0/8", 3, 3, true, false),
                route("10.245.0.0/16", 3, 4, false, false),
                route("10.246.1.0/24", 3, 4, true, false),
                route("10.244.2.0/24", 4, tunnel::ROUTE_PROTOCOL, true, false),
            ],
            vec!["10.244.1.2".parse().unwrap(), "10.244.1.3".parse().unwrap()],
            HashMap::from([
                (1, "lo".to_owned()),
                (2, "cni0".to_owned()),
                (3, "eth0".to_owned()),
            ]),
        )
    }

    fn refusal(text: &str) -> String {
        node().check_prefix(cidr(text)).unwrap_err().to_string()
    }

    #[test]
    fn refuses_what_is_not_a_pod_prefix() {
        assert_eq!(
            refusal("0.0.0.0/0"),
            "0.0.0.0/0 would send every address into the tunnel; give a pod prefix"
        );
        assert!(refusal("::/0").contains("every address"));
        assert_eq!(
            refusal("127.0.0.0/16"),
            "127.0.0.0/16 overlaps 127.0.0.0/8 (loopback), which is never a pod prefix"
        );
        assert!(refusal("169.254.1.0/24").contains("(link-local)"));
        assert!(refusal("224.0.0.0/3").contains("(multicast)"));
        assert!(refusal("239.1.0.0/16").contains("(multicast)"));
        assert!(refusal("255.255.255.255/32").contains("(broadcast)"));
        assert!(refusal("0.0.0.0/32").contains("(\"this network\")"));
        assert!(refusal("fe80::/64").contains("(link-local)"));
        assert!(refusal("ff02::/16").contains("(multicast)"));
        assert!(refusal("::1/128").contains("(loopback)"));
        assert_eq!(
            refusal("::fffe:0:0/95"),
            "::fffe:0:0/95 overlaps ::ffff:0.0.0.0/96 (IPv4-mapped), which is never a pod prefix"
        );
    }

    #[test]
    fn refuses_this_nodes_addresses_pods_and_routes() {
        assert_eq!(
            refusal("10.244.1.0/24"),
            "10.244.1.0/24 contains 10.244.1.1, an address of this node (on cni0)"
        );
        assert_eq!(
            refusal("192.168.0.0/16"),
            "192.168.0.0/16 contains 192.168.100.1, an address of this node (on eth0)"
        );
        assert!(refusal("fd00:10:244:1::/64").contains("an address of this node (on cni0)"));
        assert_eq!(
            refusal("10.244.1.3/32"),
            "10.244.1.3/32 contains 10.244.1.3, a pod on this node"
        );
        // Inside a connected route, with no address of ours in it.
        assert_eq!(
            refusal("192.168.100.128/25"),
            "192.168.100.128/25 overlaps this node's route 192.168.100.0/24 dev eth0 \
             (proto kernel), which is not pod-net's"
        );
        // The same prefix as someone else's route, and one around it.
        assert!(refusal("10.245.0.0/16").contains("route 10.245.0.0/16 dev eth0 (proto static)"));
        assert!(refusal("10.246.0.0/16").contains("route 10.246.1.0/24 dev eth0 (proto static)"));
    }

    #[test]
    fn accepts_remote_pod_prefixes() {
        let node = node();
        // Beside a default route, inside a routed /8, and pod-net's own.
        for text in [
            "10.244.3.0/24",
            "10.244.2.0/24",
            "10.244.2.9/32",
            "fd00:10:244:2::/64",
        ] {
            node.check_prefix(cidr(text)).unwrap();
        }
        // A blackhole or unreachable route around a prefix is beaten by it.
        let covered = HostView::new(
            Vec::new(),
            vec![route("10.244.0.0/16", 3, 4, false, false)],
            Vec::new(),
            HashMap::new(),
        );
        covered.check_prefix(cidr("10.244.3.0/24")).unwrap();
    }

    #[test]
    fn refuses_node_ips_that_are_not_another_machines() {
        let refusal = |ip: &str| {
            node()
                .check_node_ip(ip.parse().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refusal("0.0.0.0"),
            "node IP 0.0.0.0 is not a unicast address (\"this network\")"
        );
        assert!(refusal("127.0.0.1").contains("(loopback)"));
        assert!(refusal("224.0.0.1").contains("(multicast)"));
        assert!(refusal("255.255.255.255").contains("(broadcast)"));
        assert_eq!(
            refusal("192.168.100.1"),
            "node IP 192.168.100.1 is this node's own address (on eth0)"
        );
        assert_eq!(
            refusal("192.168.100.255"),
            "node IP 192.168.100.255 is the broadcast address of 192.168.100.0/24 (on eth0)"
        );
        node()
            .check_node_ip("192.168.100.2".parse().unwrap())
            .unwrap();
    }
}
