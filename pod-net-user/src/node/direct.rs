//! Direct routing (`node add --direct`): a node on this node's L2 segment
//! gets its pods' packets unencapsulated, as flannel's host-gw does.
//!
//! The fast path sends them with `bpf_redirect_neigh` to the node IP; the
//! kernel's path beside it is a route `CIDR via NODE_IP dev UNDERLAY`. The
//! underlay stays IPv4, so an IPv6 prefix goes via the node's link-local
//! stand-in `fe80::` + its four bytes (`tunnel::link_local_next_hop`),
//! which each node with direct peers puts on its underlay for NDP to find.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};

use pod_net_common::remote::derived_vtep_mac;
use serde::Serialize;

use crate::{
    cidr::Cidr,
    mac::MacAddr,
    node::tunnel::{self, RemoteRoute},
    sys::{
        netdev::{HostAddress, Link},
        netlink::{self, NLM_F_CREATE, NLM_F_EXCL},
    },
};

/// Refuses a direct node that is not on one of the underlay's IPv4
/// subnets: the FIB would send its pods' packets to a gateway, which
/// drops (or routes elsewhere) addresses it does not know.
pub fn check_on_link(underlay: &Link, addresses: &[HostAddress], node_ip: Ipv4Addr) -> Result<()> {
    let subnets = subnets(underlay.index, addresses);
    if on_link(&subnets, node_ip) {
        return Ok(());
    }
    let subnets = if subnets.is_empty() {
        "none".to_owned()
    } else {
        subnets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    bail!(
        "node {node_ip} is not on a subnet of the underlay {} ({subnets}): direct routing needs \
         a node on the same L2 segment, as a gateway would drop pod addresses; reach it over \
         VXLAN instead",
        underlay.name
    )
}

/// The IPv4 subnets of the underlay (interface `index`): the nodes it
/// reaches without a gateway.
#[must_use]
pub fn subnets(index: u32, addresses: &[HostAddress]) -> Vec<Cidr> {
    addresses
        .iter()
        .filter(|address| address.index == index && address.ip.is_ipv4())
        .map(|address| Cidr::masked(address.ip, address.prefix_len))
        .collect()
}

/// Whether `node_ip` is on one of `subnets`.
#[must_use]
pub fn on_link(subnets: &[Cidr], node_ip: Ipv4Addr) -> bool {
    subnets
        .iter()
        .any(|subnet| subnet.contains(IpAddr::V4(node_ip)))
}

/// The forwarding sysctls of the underlay that direct routing needs and
/// finds off: the receiving side's `bpf_fib_lookup` (which checks the
/// sender's MAC) and the kernel's path both refuse to forward without
/// them. IPv6's only when `routes` hold IPv6 prefixes.
#[must_use]
pub fn forwarding_off(underlay: &Link, routes: &[RemoteRoute]) -> Vec<String> {
    let mut families = vec!["ipv4"];
    if routes.iter().any(|route| route.cidr.addr.is_ipv6()) {
        families.push("ipv6");
    }
    families
        .into_iter()
        .map(|family| format!("net.{family}.conf.{}.forwarding", underlay.name))
        .filter(|key| {
            // /proc/sys/net answers for the reader's network namespace.
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::read_to_string(path).is_ok_and(|value| value.trim() == "0")
        })
        .collect()
}

/// Routes each direct prefix to its node out of the underlay, on one
/// socket, replacing pod-net's own routes in `ours` and no one else's.
pub fn add_routes(underlay: &Link, routes: &[RemoteRoute], ours: &BTreeSet<Cidr>) -> Result<()> {
    if routes.is_empty() {
        return Ok(());
    }
    let (messages, describe) = tunnel::route_requests(underlay, routes, ours);
    tunnel::send_route_requests(messages, &describe)
}

/// Removes pod-net's routes for these direct prefixes; what is already
/// gone is not an error.
pub fn remove_routes(underlay: &Link, routes: &[RemoteRoute]) -> Result<()> {
    if routes.is_empty() {
        return Ok(());
    }
    let (messages, describe) = tunnel::route_removals(underlay, routes);
    netlink::change_all(messages, &[libc::ENOENT, libc::ESRCH])
        .map_err(|(index, error)| anyhow::Error::new(error).context(describe[index].clone()))
}

/// Removes every route pod-net made out of the underlay (`unload`): its
/// protocol marks them, so no one else's route goes.
pub fn remove_all_routes(underlay: &Link) -> Result<()> {
    let marked: Vec<Cidr> = marked_routes(underlay)?.into_keys().collect();
    remove_marked(underlay, &marked)
}

/// A difference between the direct entries and pod-net's routes on the
/// underlay, which `gc` mends and `status` reports. The routes go with the
/// underlay's link: a flap of the link takes them away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "fix", rename_all = "snake_case")]
pub enum RouteFix {
    /// A direct entry without its route, or with one via another hop.
    Add { cidr: Cidr, node_ip: Ipv4Addr },
    /// A route of pod-net's on the underlay that no direct entry explains.
    Remove { cidr: Cidr },
}

impl fmt::Display for RouteFix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Add { cidr, node_ip } => write!(
                f,
                "+ route {cidr} via {node_ip}: a direct entry has no route"
            ),
            Self::Remove { cidr } => {
                write!(f, "- route {cidr}: no direct entry sends it there")
            }
        }
    }
}

/// The fixes that bring pod-net's routes on the underlay in step with the
/// direct entries `routes`. Read-only.
pub fn plan(underlay: &Link, routes: &[RemoteRoute]) -> Result<Vec<RouteFix>> {
    let marked = marked_routes(underlay)?;
    let mut fixes: Vec<RouteFix> = routes
        .iter()
        .filter(|route| {
            marked.get(&route.cidr).copied().flatten()
                != Some(tunnel::next_hop(route.cidr, route.node_ip))
        })
        .map(|route| RouteFix::Add {
            cidr: route.cidr,
            node_ip: route.node_ip,
        })
        .collect();
    let wanted: BTreeSet<Cidr> = routes.iter().map(|route| route.cidr).collect();
    fixes.extend(
        marked
            .keys()
            .filter(|cidr| !wanted.contains(cidr))
            .map(|cidr| RouteFix::Remove { cidr: *cidr }),
    );
    Ok(fixes)
}

/// Makes `fixes` on the underlay: every route in one go, then every
/// removal.
pub fn execute(underlay: &Link, fixes: &[RouteFix]) -> Result<()> {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for fix in fixes {
        match *fix {
            RouteFix::Add { cidr, node_ip } => add.push(RemoteRoute {
                cidr,
                node_ip,
                vtep_mac: MacAddr(derived_vtep_mac(node_ip.octets())),
                direct: true,
            }),
            RouteFix::Remove { cidr } => remove.push(cidr),
        }
    }
    let ours: BTreeSet<Cidr> = marked_routes(underlay)?.into_keys().collect();
    add_routes(underlay, &add, &ours)?;
    remove_marked(underlay, &remove)
}

/// pod-net's routes out of the underlay: prefix -> next hop.
fn marked_routes(underlay: &Link) -> Result<BTreeMap<Cidr, Option<IpAddr>>> {
    Ok(tunnel::main_routes()?
        .into_iter()
        .filter(|route| route.is_pod_nets() && route.oif == Some(underlay.index))
        .map(|route| (route.cidr, route.gateway))
        .collect())
}

/// Removes pod-net's routes for `cidrs` out of the underlay, by their
/// protocol, whatever their next hop.
fn remove_marked(underlay: &Link, cidrs: &[Cidr]) -> Result<()> {
    let messages = cidrs
        .iter()
        .map(|cidr| {
            let mut message = RouteMessage::default();
            message.header = RouteHeader {
                address_family: match cidr.addr {
                    IpAddr::V4(_) => AddressFamily::Inet,
                    IpAddr::V6(_) => AddressFamily::Inet6,
                },
                destination_prefix_length: cidr.prefix_len,
                table: RouteHeader::RT_TABLE_MAIN,
                protocol: RouteProtocol::Other(tunnel::ROUTE_PROTOCOL),
                scope: RouteScope::NoWhere,
                kind: RouteType::Unspec,
                ..RouteHeader::default()
            };
            message.attributes = vec![
                RouteAttribute::Destination(match cidr.addr {
                    IpAddr::V4(ip) => RouteAddress::Inet(ip),
                    IpAddr::V6(ip) => RouteAddress::Inet6(ip),
                }),
                RouteAttribute::Oif(underlay.index),
            ];
            (RouteNetlinkMessage::DelRoute(message), 0)
        })
        .collect();
    netlink::change_all(messages, &[libc::ENOENT, libc::ESRCH]).map_err(|(index, error)| {
        anyhow::Error::new(error).context(format!(
            "removing route {} on {}",
            cidrs[index], underlay.name
        ))
    })
}

/// Puts this node's link-local stand-in on the underlay, so direct peers'
/// IPv6 next hop resolves here. Already there is fine. No duplicate
/// address detection: the address is derived from this node's own IPv4
/// address, unique on the segment, and is usable at once. With IPv6 off
/// on the underlay only IPv4 can be routed directly: an error if `routes`
/// holds IPv6 prefixes, nothing to do otherwise.
pub fn ensure_link_local(underlay: &Link, node_ip: Ipv4Addr, routes: &[RemoteRoute]) -> Result<()> {
    let address = tunnel::link_local_next_hop(node_ip);
    let message = link_local_message(underlay, node_ip);
    match netlink::change(
        RouteNetlinkMessage::NewAddress(message),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(()) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EACCES) => {
            match routes.iter().find(|route| route.cidr.addr.is_ipv6()) {
                Some(route) => bail!(
                    "{} cannot be routed directly: IPv6 is off on the underlay {} \
                     (net.ipv6.conf.{}.disable_ipv6)",
                    route.cidr,
                    underlay.name,
                    underlay.name
                ),
                None => Ok(()),
            }
        }
        Err(error) => Err(error)
            .with_context(|| format!("adding {address}/64 to {} for direct IPv6", underlay.name)),
    }
}

/// Takes the link-local stand-in off the underlay again (`unload`).
pub fn remove_link_local(underlay: &Link, node_ip: Ipv4Addr) -> Result<()> {
    let message = link_local_message(underlay, node_ip);
    match netlink::change(RouteNetlinkMessage::DelAddress(message), 0) {
        Ok(()) => Ok(()),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        Err(error) => Err(error).with_context(|| {
            format!(
                "removing {} from {}",
                tunnel::link_local_next_hop(node_ip),
                underlay.name
            )
        }),
    }
}

fn link_local_message(underlay: &Link, node_ip: Ipv4Addr) -> AddressMessage {
    let address = IpAddr::V6(tunnel::link_local_next_hop(node_ip));
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet6;
    message.header.prefix_len = 64;
    message.header.index = underlay.index;
    message.header.scope = AddressScope::Link;
    message.header.flags = AddressHeaderFlags::Nodad;
    message.attributes = vec![
        AddressAttribute::Local(address),
        AddressAttribute::Address(address),
        AddressAttribute::Flags(AddressFlags::Nodad),
    ];
    message
}
