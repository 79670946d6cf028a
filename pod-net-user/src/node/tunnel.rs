//! The kernel's own path beside the fast path: a flannel-style VXLAN device
//! (`pnvxlan<VNI>`) with a route, neighbour and FDB entry per remote node.
//!
//! pod-net hands the kernel what it does not accelerate: TTL expiry, packets
//! too big for the underlay, traffic from the node itself to remote pods,
//! VXLAN whose inner destination is not a pod here. The kernel then routes
//! it through this device, which encapsulates exactly like the fast path
//! (same VNI, port and VTEP MACs), so nothing is lost, and the device's MTU
//! (underlay MTU - 50) makes the kernel send ICMP fragmentation needed
//! where it must.
//!
//! Every route pod-net writes carries its own route protocol number,
//! [`ROUTE_PROTOCOL`]: pod-net replaces and deletes only routes with that
//! mark, and never the node's connected routes or anyone else's.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
};
use pod_net_common::{Config, config::VXLAN_OVERHEAD};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    mac::MacAddr,
    sys::{
        netdev::{self, Link, LinkKind},
        netlink::{self, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE},
    },
};

/// The route protocol (`rtm_protocol`) marking pod-net's routes; `ip route`
/// shows it as `proto 112`, or by name with a line `112 pod-net` in
/// `/etc/iproute2/rt_protos.d/pod-net.conf`. Unassigned in iproute2's
/// `rt_protos`, and not Calico's 80 (Canal runs Calico's Felix beside
/// flannel).
pub const ROUTE_PROTOCOL: u8 = 0x70;

/// The tunnel device's name for a VNI.
#[must_use]
pub fn device_name(vni: u32) -> String {
    format!("pnvxlan{vni}")
}

/// flanneld's VXLAN device for a VNI.
#[must_use]
pub fn flannel_device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// The kernel's VXLAN device of the datapath loaded with `config`: its own
/// tunnel device, or flanneld's beside flannel.
#[must_use]
pub fn kernel_device_name(config: &Config) -> String {
    if config.beside_flannel() {
        flannel_device_name(config.vni)
    } else {
        device_name(config.vni)
    }
}

/// That device, if the datapath has an underlay and the device exists.
pub fn kernel_device(config: &Config) -> Result<Option<Link>> {
    if !config.has_underlay() {
        return Ok(None);
    }
    Ok(netdev::link_by_name(&kernel_device_name(config))?
        .filter(|link| link.kind == LinkKind::Vxlan))
}

/// What the tunnel device is made of.
pub struct TunnelSpec<'a> {
    pub vni: u32,
    pub port: u16,
    pub underlay: &'a Link,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// The pin dir whose datapath the device serves.
    pub owner: &'a Path,
}

/// How a tunnel device names its owner in its alias (`ip link` shows it).
const OWNER_ALIAS: &str = "pod-net:";

/// The pin dir a pod-net tunnel device serves, as its alias records it.
#[must_use]
pub fn owner(device: &Link) -> Option<PathBuf> {
    device
        .alias
        .as_deref()?
        .strip_prefix(OWNER_ALIAS)
        .map(PathBuf::from)
}

/// Creates the tunnel device if it is missing, and brings it up. Its alias
/// records `spec.owner` (a device from before owners were recorded is
/// given one).
pub fn ensure_device(spec: &TunnelSpec<'_>) -> Result<Link> {
    let name = device_name(spec.vni);
    let mtu = spec
        .underlay
        .mtu
        .checked_sub(VXLAN_OVERHEAD)
        .context("the underlay MTU is too small for VXLAN")?;
    let device = match netdev::link_by_name(&name)? {
        Some(existing) if existing.kind != LinkKind::Vxlan => {
            bail!("{name} exists and is not a vxlan device; remove it or pick another VNI");
        }
        Some(existing) => existing,
        None => create_device(spec, &name, mtu)?,
    };
    // The kernel takes an alias only on a device that exists.
    let alias = format!("{OWNER_ALIAS}{}", spec.owner.display());
    if device.alias.as_deref() != Some(alias.as_str()) {
        let mut message = LinkMessage::default();
        message.header.index = device.index;
        message.attributes = vec![LinkAttribute::IfAlias(alias)];
        netlink::change(RouteNetlinkMessage::SetLink(message), 0)
            .with_context(|| format!("recording the owner of {name}"))?;
    }
    Ok(device)
}

fn create_device(spec: &TunnelSpec<'_>, name: &str, mtu: u32) -> Result<Link> {
    let mut message = LinkMessage::default();
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes = vec![
        LinkAttribute::IfName(name.to_owned()),
        LinkAttribute::Address(spec.vtep_mac.0.to_vec()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Link(spec.underlay.index),
                InfoVxlan::Local(spec.node_ip),
                InfoVxlan::Learning(false),
            ])),
        ]),
    ];
    netlink::change(
        RouteNetlinkMessage::NewLink(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .with_context(|| format!("creating tunnel device {name}"))?;
    netdev::link_by_name(name)?.with_context(|| format!("{name} vanished after creation"))
}

/// Deletes the tunnel device (its routes and neighbours go with it).
pub fn remove_device(vni: u32) -> Result<()> {
    let name = device_name(vni);
    let Some(link) = netdev::link_by_name(&name)? else {
        return Ok(());
    };
    let mut message = LinkMessage::default();
    message.header.index = link.index;
    netlink::change(RouteNetlinkMessage::DelLink(message), 0)
        .with_context(|| format!("deleting tunnel device {name}"))
}

/// Where one prefix goes: a remote node and its VTEP MAC.
#[derive(Clone, Copy, Debug)]
pub struct RemoteRoute {
    pub cidr: Cidr,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// Routed out of the underlay to the node itself (see `crate::node::direct`),
    /// not through the tunnel device.
    pub direct: bool,
}

/// Routes each prefix to its node through the tunnel device, with the
/// neighbour and FDB entries (one per node) that let the kernel
/// encapsulate without learning. All requests go on one netlink socket.
///
/// A prefix in `ours` (pod-net already routes it, see [`main_routes`]) has
/// its route replaced; any other is created exclusively, so a route that
/// is not pod-net's is never overwritten (the kernel answers EEXIST).
///
/// IPv6 prefixes cannot have an IPv4 next hop (the kernel refuses `RTA_VIA`
/// for IPv6), so they go via a link-local next hop derived from the node's
/// address (`fe80::` + its four bytes), with a neighbour entry giving it
/// the node's VTEP MAC; the FDB entry then sends that MAC over IPv4.
pub fn add_routes(device: &Link, routes: &[RemoteRoute], ours: &BTreeSet<Cidr>) -> Result<()> {
    let (mut messages, mut describe) = node_messages(device, routes);
    let (routes, described) = route_requests(device, routes, ours);
    messages.extend(routes);
    describe.extend(described);
    send_route_requests(messages, &describe)
}

/// Requests routing each of `routes` out of `link`: replacing pod-net's
/// own route for a prefix in `ours`, creating any other exclusively.
pub(crate) fn route_requests(
    link: &Link,
    routes: &[RemoteRoute],
    ours: &BTreeSet<Cidr>,
) -> (Vec<(RouteNetlinkMessage, u16)>, Vec<String>) {
    routes
        .iter()
        .map(|remote| {
            let flags = if ours.contains(&remote.cidr) {
                NLM_F_CREATE | NLM_F_REPLACE
            } else {
                NLM_F_CREATE | NLM_F_EXCL
            };
            (
                (
                    RouteNetlinkMessage::NewRoute(route(link.index, remote.cidr, remote.node_ip)),
                    flags,
                ),
                format!(
                    "adding route {} via {} on {}",
                    remote.cidr, remote.node_ip, link.name
                ),
            )
        })
        .unzip()
}

/// Sends `messages` on one socket; `describe` says what each does. EEXIST
/// means a route that is not pod-net's holds the prefix.
pub(crate) fn send_route_requests(
    messages: Vec<(RouteNetlinkMessage, u16)>,
    describe: &[String],
) -> Result<()> {
    netlink::change_all(messages, &[]).map_err(|(index, error)| {
        if error.raw_os_error() == Some(libc::EEXIST) {
            anyhow::anyhow!(
                "{}: a route that is not pod-net's is in the way; pod-net leaves it alone",
                describe[index]
            )
        } else {
            anyhow::Error::new(error).context(describe[index].clone())
        }
    })
}

/// Requests removing pod-net's routes for `routes` out of `link`.
pub(crate) fn route_removals(
    link: &Link,
    routes: &[RemoteRoute],
) -> (Vec<(RouteNetlinkMessage, u16)>, Vec<String>) {
    routes
        .iter()
        .map(|remote| {
            (
                (
                    RouteNetlinkMessage::DelRoute(route(link.index, remote.cidr, remote.node_ip)),
                    0,
                ),
                format!("removing route {} on {}", remote.cidr, link.name),
            )
        })
        .unzip()
}

/// Sets the neighbour and FDB entries of the nodes `routes` go to (and the
/// IPv6 next hop's neighbour for nodes with IPv6 prefixes), replacing what
/// is there: after a node's prefix goes, its other prefixes keep a
/// neighbour entry with the right MAC.
pub fn set_nodes(device: &Link, routes: &[RemoteRoute]) -> Result<()> {
    let (messages, describe) = node_messages(device, routes);
    netlink::change_all(messages, &[])
        .map_err(|(index, error)| anyhow::Error::new(error).context(describe[index].clone()))
}

/// The neighbour and FDB requests for the nodes of `routes`, each once.
fn node_messages(
    device: &Link,
    routes: &[RemoteRoute],
) -> (Vec<(RouteNetlinkMessage, u16)>, Vec<String>) {
    let mut messages = Vec::new();
    let mut describe = Vec::new();
    let mut nodes = BTreeSet::new();
    let mut nodes6 = BTreeSet::new();
    for remote in routes {
        let (node_ip, vtep_mac) = (remote.node_ip, remote.vtep_mac);
        if nodes.insert((node_ip, vtep_mac.0)) {
            messages.push((
                RouteNetlinkMessage::NewNeighbour(neighbour(device, node_ip.into(), vtep_mac)),
                NLM_F_CREATE | NLM_F_REPLACE,
            ));
            describe.push(format!("adding neighbour {node_ip} on {}", device.name));
            messages.push((
                RouteNetlinkMessage::NewNeighbour(fdb_entry(device, node_ip, vtep_mac)),
                NLM_F_CREATE | NLM_F_REPLACE,
            ));
            describe.push(format!("adding FDB entry {vtep_mac} on {}", device.name));
        }
        if remote.cidr.addr.is_ipv6() && nodes6.insert((node_ip, vtep_mac.0)) {
            let next_hop = link_local_next_hop(node_ip);
            messages.push((
                RouteNetlinkMessage::NewNeighbour(neighbour(device, next_hop.into(), vtep_mac)),
                NLM_F_CREATE | NLM_F_REPLACE,
            ));
            describe.push(format!("adding neighbour {next_hop} on {}", device.name));
        }
    }
    (messages, describe)
}

/// Removes pod-net's routes for `routes` (a route without
/// [`ROUTE_PROTOCOL`] stays, whatever its prefix), then the FDB entries of
/// `gone_nodes` and, for those no prefix uses any more (`last` true), their
/// neighbour entries. What is already gone is not an error.
pub fn remove_routes(device: &Link, routes: &[RemoteRoute], gone_nodes: &[GoneNode]) -> Result<()> {
    let (mut messages, mut describe) = route_removals(device, routes);
    for gone in gone_nodes {
        let (node_ip, vtep_mac) = (gone.node_ip, gone.vtep_mac);
        messages.push((
            RouteNetlinkMessage::DelNeighbour(fdb_entry(device, node_ip, vtep_mac)),
            0,
        ));
        describe.push(format!("removing FDB entry {vtep_mac} on {}", device.name));
        if !gone.last {
            continue;
        }
        for neighbour_ip in [IpAddr::from(node_ip), link_local_next_hop(node_ip).into()] {
            messages.push((
                RouteNetlinkMessage::DelNeighbour(neighbour(device, neighbour_ip, vtep_mac)),
                0,
            ));
            describe.push(format!(
                "removing neighbour {neighbour_ip} on {}",
                device.name
            ));
        }
    }
    netlink::change_all(messages, &[libc::ENOENT, libc::ESRCH])
        .map_err(|(index, error)| anyhow::Error::new(error).context(describe[index].clone()))
}

/// A (node, VTEP MAC) pair no remote entry uses any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoneNode {
    pub node_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// No entry uses the node IP at all: its neighbour entries go too.
    pub last: bool,
}

/// A route of the main table, as the overlap checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub cidr: Cidr,
    /// `rtm_protocol`: [`ROUTE_PROTOCOL`] for pod-net's own routes.
    pub protocol: u8,
    /// The output interface, when the route names one.
    pub oif: Option<u32>,
    /// Whether the route goes via a gateway.
    pub via: bool,
    /// The gateway, when given as an address of the route's own family.
    pub gateway: Option<IpAddr>,
    /// Scope link: the prefix is on a link (a connected route).
    pub on_link: bool,
}

impl KernelRoute {
    /// Whether pod-net wrote this route.
    #[must_use]
    pub const fn is_pod_nets(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL
    }
}

/// Every IPv4 and IPv6 route in the main table of the caller's namespace.
pub fn main_routes() -> Result<Vec<KernelRoute>> {
    let replies = netlink::get(RouteNetlinkMessage::GetRoute(RouteMessage::default()), true)
        .context("netlink dump of routes")?;
    Ok(replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(message) => kernel_route(message),
            _ => None,
        })
        .collect())
}

fn kernel_route(message: &RouteMessage) -> Option<KernelRoute> {
    let header = &message.header;
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut oif = None;
    let mut via = false;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                destination = Some(IpAddr::V4(*ip));
            }
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                destination = Some(IpAddr::V6(*ip));
            }
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(address) => {
                via = true;
                gateway = route_ip(address);
            }
            RouteAttribute::Via(_) => via = true,
            _ => {}
        }
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    (table == u32::from(RouteHeader::RT_TABLE_MAIN)).then(|| KernelRoute {
        cidr: Cidr::masked(
            destination.unwrap_or(unspecified),
            header.destination_prefix_length,
        ),
        protocol: header.protocol.into(),
        oif,
        via,
        gateway,
        on_link: header.scope == RouteScope::Link,
    })
}

/// Where the kernel sends `cidr` on its way to `node_ip`: the node itself,
/// or for an IPv6 prefix its link-local stand-in (see [`add_routes`]).
#[must_use]
pub fn next_hop(cidr: Cidr, node_ip: Ipv4Addr) -> IpAddr {
    match cidr.addr {
        IpAddr::V4(_) => node_ip.into(),
        IpAddr::V6(_) => link_local_next_hop(node_ip).into(),
    }
}

/// The IPv6 next hop standing for a node: `fe80::` + its IPv4 address.
#[must_use]
pub fn link_local_next_hop(node_ip: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = node_ip.octets();
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    )
}

/// pod-net's route for `cidr` via `node_ip` (IPv6: its link-local stand-in)
/// out of interface `oif`: the tunnel device, or the underlay for a direct
/// node.
fn route(oif: u32, cidr: Cidr, node_ip: Ipv4Addr) -> RouteMessage {
    let mut message = RouteMessage::default();
    let (family, destination, gateway) = match cidr.addr {
        IpAddr::V4(destination) => (
            AddressFamily::Inet,
            RouteAddress::Inet(destination),
            RouteAddress::Inet(node_ip),
        ),
        IpAddr::V6(destination) => (
            AddressFamily::Inet6,
            RouteAddress::Inet6(destination),
            RouteAddress::Inet6(link_local_next_hop(node_ip)),
        ),
    };
    message.header = RouteHeader {
        address_family: family,
        destination_prefix_length: cidr.prefix_len,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Other(ROUTE_PROTOCOL),
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        flags: RouteFlags::Onlink,
        ..RouteHeader::default()
    };
    message.attributes = vec![
        RouteAttribute::Destination(destination),
        RouteAttribute::Gateway(gateway),
        RouteAttribute::Oif(oif),
    ];
    message
}

/// A permanent neighbour entry: `ip` (a node, or its IPv6 next hop) has
/// the node's VTEP MAC.
fn neighbour(device: &Link, ip: IpAddr, vtep_mac: MacAddr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    let (family, destination) = match ip {
        IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
    };
    message.header.family = family;
    message.header.ifindex = device.index;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(destination),
        NeighbourAttribute::LinkLocalAddress(vtep_mac.0.to_vec()),
    ];
    message
}

fn fdb_entry(device: &Link, node_ip: impl Into<IpAddr>, vtep_mac: MacAddr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = device.index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    let destination = match node_ip.into() {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    };
    message.attributes = vec![
        NeighbourAttribute::LinkLocalAddress(vtep_mac.0.to_vec()),
        NeighbourAttribute::Destination(destination),
    ];
    message
}

/// A route through the tunnel device, as the kernel lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DeviceRoute {
    pub cidr: Cidr,
    /// The next hop; `None` for a route without one (or a multipath one).
    pub via: Option<IpAddr>,
    /// The route's metric, when the kernel gives one.
    pub metric: Option<u32>,
}

/// What the kernel holds on the tunnel device. The device is pod-net's
/// own, so everything on it is pod-net's too, except what the kernel
/// keeps there by itself (the IPv6 link-local prefix, `proto kernel`) and
/// neighbour entries it made (only permanent ones are listed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceContents {
    pub routes: Vec<DeviceRoute>,
    /// Permanent neighbour entries: address and link-layer address.
    pub neighbours: Vec<(IpAddr, MacAddr)>,
    /// FDB entries: VTEP MAC and the remote address it goes to.
    pub fdb: Vec<(MacAddr, IpAddr)>,
}

/// Lists `device`'s routes (main table), permanent neighbours and FDB
/// entries. Read-only: one dump per kind and family.
pub fn contents(device: &Link) -> Result<DeviceContents> {
    let mut contents = DeviceContents::default();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let replies = netlink::get(RouteNetlinkMessage::GetRoute(request), true)
            .context("netlink dump of routes")?;
        contents
            .routes
            .extend(replies.iter().filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route) => device_route(device, route),
                _ => None,
            }));
    }
    for family in [
        AddressFamily::Inet,
        AddressFamily::Inet6,
        AddressFamily::Bridge,
    ] {
        let mut request = NeighbourMessage::default();
        request.header.family = family;
        let replies = netlink::get(RouteNetlinkMessage::GetNeighbour(request), true)
            .context("netlink dump of neighbours")?;
        for reply in &replies {
            let RouteNetlinkMessage::NewNeighbour(entry) = reply else {
                continue;
            };
            if entry.header.ifindex != device.index {
                continue;
            }
            let (Some(ip), Some(mac)) = (neighbour_ip(entry), neighbour_mac(entry)) else {
                continue;
            };
            if family == AddressFamily::Bridge {
                contents.fdb.push((mac, ip));
            } else if entry.header.state == NeighbourState::Permanent {
                contents.neighbours.push((ip, mac));
            }
        }
    }
    contents.routes.sort_unstable();
    contents.neighbours.sort_unstable();
    contents.fdb.sort_unstable();
    Ok(contents)
}

/// `route` as a [`DeviceRoute`], when it is a main-table unicast route
/// through `device` that the kernel did not make itself.
fn device_route(device: &Link, route: &RouteMessage) -> Option<DeviceRoute> {
    let header = &route.header;
    let mut table = u32::from(header.table);
    let (mut oif, mut destination, mut via, mut metric) = (None, None, None, None);
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Destination(address) => destination = route_ip(address),
            RouteAttribute::Gateway(address) => via = route_ip(address),
            RouteAttribute::Priority(value) => metric = Some(*value),
            _ => {}
        }
    }
    let main = table == u32::from(RouteHeader::RT_TABLE_MAIN);
    if oif != Some(device.index)
        || !main
        || header.kind != RouteType::Unicast
        || header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let addr = destination.unwrap_or(match header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    Some(DeviceRoute {
        cidr: Cidr {
            addr,
            prefix_len: header.destination_prefix_length,
        },
        via,
        metric,
    })
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn neighbour_ip(entry: &NeighbourMessage) -> Option<IpAddr> {
    entry
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            // FDB entries (family AF_BRIDGE) carry the raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
                4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(bytes.as_slice())
                    .ok()
                    .map(IpAddr::from),
                _ => None,
            },
            _ => None,
        })
}

fn neighbour_mac(entry: &NeighbourMessage) -> Option<MacAddr> {
    entry
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::LinkLocalAddress(bytes) => {
                <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            _ => None,
        })
}

/// Removes exactly these entries from `device`, as [`contents`] listed
/// them (whatever protocol, scope or metric a route has). What is already
/// gone is not an error.
pub fn remove_listed(
    device: &Link,
    routes: &[DeviceRoute],
    neighbours: &[(IpAddr, MacAddr)],
    fdb: &[(MacAddr, IpAddr)],
) -> Result<()> {
    let mut messages = Vec::new();
    let mut describe = Vec::new();
    for listed in routes {
        messages.push((
            RouteNetlinkMessage::DelRoute(listed_route(device, listed)),
            0,
        ));
        describe.push(format!("removing route {} on {}", listed.cidr, device.name));
    }
    for &(ip, mac) in neighbours {
        messages.push((
            RouteNetlinkMessage::DelNeighbour(neighbour(device, ip, mac)),
            0,
        ));
        describe.push(format!("removing neighbour {ip} on {}", device.name));
    }
    for &(mac, ip) in fdb {
        messages.push((
            RouteNetlinkMessage::DelNeighbour(fdb_entry(device, ip, mac)),
            0,
        ));
        describe.push(format!("removing FDB entry {mac} on {}", device.name));
    }
    netlink::change_all(messages, &[libc::ENOENT, libc::ESRCH])
        .map_err(|(index, error)| anyhow::Error::new(error).context(describe[index].clone()))
}

/// A delete request matching exactly one listed route: unset fields
/// (protocol, scope, type, and the metric when none was listed) match any.
fn listed_route(device: &Link, listed: &DeviceRoute) -> RouteMessage {
    let mut message = RouteMessage::default();
    let (family, destination) = match listed.cidr.addr {
        IpAddr::V4(ip) => (AddressFamily::Inet, RouteAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, RouteAddress::Inet6(ip)),
    };
    message.header = RouteHeader {
        address_family: family,
        destination_prefix_length: listed.cidr.prefix_len,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Unspec,
        scope: RouteScope::NoWhere,
        kind: RouteType::Unspec,
        ..RouteHeader::default()
    };
    message.attributes = vec![
        RouteAttribute::Destination(destination),
        RouteAttribute::Oif(device.index),
    ];
    if let Some(via) = listed.via {
        message.attributes.push(RouteAttribute::Gateway(match via {
            IpAddr::V4(ip) => RouteAddress::Inet(ip),
            IpAddr::V6(ip) => RouteAddress::Inet6(ip),
        }));
    }
    if let Some(metric) = listed.metric {
        message.attributes.push(RouteAttribute::Priority(metric));
    }
    message
}
