//! Interface facts from rtnetlink: index, MAC, kind, bridge master, and the
//! veth peer, which may live in another network namespace.
//!
//! Netlink rather than sysfs: sysfs shows the namespace it was mounted in,
//! netlink always answers for the caller's own.
use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{DefaultNla, Nla as _};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

use crate::{error::NodeError, mac::MacAddr, sys::netlink};

/// What pod-net needs to know about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub kind: LinkKind,
    pub mtu: u32,
    pub up: bool,
    /// The link has carrier (`IFF_LOWER_UP`): a veth whose peer is up.
    pub lower_up: bool,
    /// ifindex of the bridge this interface is enslaved to.
    pub master: Option<u32>,
    /// For a veth: the peer's ifindex, in the namespace `peer_netnsid`
    /// names (or in ours when that is `None`).
    pub peer_index: Option<u32>,
    pub peer_netnsid: Option<i32>,
    /// `ip link set ... alias TEXT`, if set.
    pub alias: Option<String>,
    /// For a vxlan device: what it is made of.
    pub vxlan: Option<Vxlan>,
}

/// A vxlan device's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// The UDP port it listens on and sends to (host order).
    pub port: u16,
    /// The address it sends from, when set.
    pub local: Option<Ipv4Addr>,
    /// The ifindex of the interface it sends through, when set.
    pub underlay: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Veth,
    Bridge,
    Vxlan,
    Other,
}

/// Looks an interface up by name in the caller's namespace.
pub fn link_by_name(name: &str) -> Result<Option<Link>> {
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(name.to_owned()));
    get_link(message).with_context(|| format!("netlink lookup of interface {name}"))
}

/// Looks an interface up by index in the caller's namespace.
pub fn link_by_index(index: u32) -> Result<Option<Link>> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    get_link(message).with_context(|| format!("netlink lookup of ifindex {index}"))
}

/// The veth peer of `link`, wherever its namespace is.
pub fn veth_peer(link: &Link) -> Result<Option<Link>> {
    let Some(peer_index) = link.peer_index else {
        return Ok(None);
    };
    let mut message = LinkMessage::default();
    message.header.index = peer_index;
    if let Some(netnsid) = link.peer_netnsid {
        message.attributes.push(LinkAttribute::IfNetnsId(netnsid));
    }
    get_link(message).with_context(|| format!("netlink lookup of the peer of {}", link.name))
}

/// Every interface in the caller's namespace.
pub fn all_links() -> Result<Vec<Link>> {
    let replies = netlink::get(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)
        .context("netlink dump of interfaces")?;
    Ok(link_messages(&replies).map(link_from_message).collect())
}

fn get_link(message: LinkMessage) -> io::Result<Option<Link>> {
    match netlink::get(RouteNetlinkMessage::GetLink(message), false) {
        Ok(replies) => Ok(link_messages(&replies).next().map(link_from_message)),
        Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(err),
    }
}

fn link_messages(replies: &[RouteNetlinkMessage]) -> impl Iterator<Item = &LinkMessage> {
    replies.iter().filter_map(|reply| match reply {
        RouteNetlinkMessage::NewLink(link) => Some(link),
        _ => None,
    })
}

/// ifindex -> name for every interface in the caller's namespace (one dump
/// instead of a query per entry).
pub fn link_names() -> Result<std::collections::HashMap<u32, String>> {
    Ok(all_links()?
        .into_iter()
        .map(|link| (link.index, link.name))
        .collect())
}

/// The IPv4 addresses on interface `index`.
pub fn ipv4_addresses(index: u32) -> Result<Vec<Ipv4Addr>> {
    Ok(all_addresses()?
        .into_iter()
        .filter(|address| address.index == index)
        .filter_map(|address| match address.ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// One address on one interface of this namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// Every address on every interface of the caller's namespace.
pub fn all_addresses() -> Result<Vec<HostAddress>> {
    let replies = netlink::get(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        true,
    )
    .context("netlink dump of addresses")?;
    Ok(replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(address) => Some(address),
            _ => None,
        })
        .filter_map(|address| {
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on a point-to-point link); IFA_ADDRESS when alone.
            let local = address
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
            let ip = local.or_else(|| {
                address
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
            })?;
            Some(HostAddress {
                index: address.header.index,
                ip,
                prefix_len: address.header.prefix_len,
            })
        })
        .collect())
}

fn link_from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        kind: LinkKind::Other,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        lower_up: message.header.flags.contains(LinkFlags::LowerUp),
        master: None,
        peer_index: None,
        peer_netnsid: None,
        alias: None,
        vxlan: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::LinkNetNsId(netnsid) => link.peer_netnsid = Some(*netnsid),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => {
                            link.kind = match kind {
                                InfoKind::Veth => LinkKind::Veth,
                                InfoKind::Bridge => LinkKind::Bridge,
                                InfoKind::Vxlan => LinkKind::Vxlan,
                                _ => LinkKind::Other,
                            };
                        }
                        LinkInfo::Data(InfoData::Vxlan(attributes)) => {
                            let mut vxlan = Vxlan::default();
                            for attribute in attributes {
                                match attribute {
                                    InfoVxlan::Id(vni) => vxlan.vni = *vni,
                                    InfoVxlan::Port(port) => vxlan.port = *port,
                                    InfoVxlan::Local(local) => vxlan.local = Some(*local),
                                    InfoVxlan::Link(index) => vxlan.underlay = Some(*index),
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(vxlan);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Turns GRO on or off for `ifname` in the caller's namespace (the ethtool
/// ioctl). On a veth, GRO also gives it the NAPI receive queue that XDP
/// redirects into the veth need.
pub fn set_gro(ifname: &str, on: bool) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfreqData {
        name: [u8; 16],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    if ifname.len() >= 16 {
        bail!("interface name {ifname:?} is too long");
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    let mut request = IfreqData {
        name: [0; 16],
        data: &raw mut value,
        pad: [0; 16],
    };
    request.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: a datagram socket we close below, and an ioctl whose argument
    // outlives it.
    let result = unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(io::Error::last_os_error()).context("opening a socket for ethtool");
        }
        let rc = libc::ioctl(socket, SIOCETHTOOL, &raw mut request);
        let error = io::Error::last_os_error();
        libc::close(socket);
        if rc < 0 { Err(error) } else { Ok(()) }
    };
    result.with_context(|| format!("setting GRO {} on {ifname}", if on { "on" } else { "off" }))
}

/// `IFLA_GSO_IPV4_MAX_SIZE` and `IFLA_GRO_IPV4_MAX_SIZE` (Linux 6.3), which
/// netlink-packet-route does not name yet.
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
/// `IFLA_TSO_MAX_SIZE` (Linux 5.19).
const IFLA_TSO_MAX_SIZE: u16 = 59;

/// Sets the largest IPv4 GSO and GRO packet of interface `index` in the
/// caller's namespace: above 64 KiB is IPv4 BIG TCP.
pub fn set_ipv4_gso_gro_max(index: u32, size: u32) -> Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    for kind in [IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE] {
        message
            .attributes
            .push(LinkAttribute::Other(DefaultNla::new(
                kind,
                size.to_ne_bytes().to_vec(),
            )));
    }
    netlink::change(RouteNetlinkMessage::NewLink(message), 0)
        .with_context(|| format!("setting the IPv4 GSO/GRO size of ifindex {index} to {size}"))
}

/// Whether this kernel has IPv4 BIG TCP (Linux 6.3+): it reports the IPv4
/// GSO size of every interface, the loopback's included.
pub fn has_ipv4_big_tcp() -> Result<bool> {
    Ok(ipv4_gso_max_size(1, None)?.is_some())
}

/// The largest GSO packet interface `index` can segment (its driver's
/// TSO limit), when the kernel says.
pub fn tso_max_size(index: u32) -> Result<Option<u32>> {
    link_u32_attribute(index, None, IFLA_TSO_MAX_SIZE)
}

/// The largest IPv4 GSO packet of interface `index`, in the namespace
/// `netnsid` names (ours when `None`); `None` on a kernel without IPv4 BIG
/// TCP or for an interface that is gone.
pub fn ipv4_gso_max_size(index: u32, netnsid: Option<i32>) -> Result<Option<u32>> {
    link_u32_attribute(index, netnsid, IFLA_GSO_IPV4_MAX_SIZE)
}

/// A u32 link attribute that netlink-packet-route does not name.
fn link_u32_attribute(index: u32, netnsid: Option<i32>, kind: u16) -> Result<Option<u32>> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    if let Some(netnsid) = netnsid {
        message.attributes.push(LinkAttribute::IfNetnsId(netnsid));
    }
    let replies = match netlink::get(RouteNetlinkMessage::GetLink(message), false) {
        Ok(replies) => replies,
        Err(err) if err.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("netlink lookup of ifindex {index}")),
    };
    Ok(link_messages(&replies)
        .flat_map(|link| &link.attributes)
        .find_map(|attribute| match attribute {
            LinkAttribute::Other(nla) if nla.kind() == kind => {
                let mut value = [0; 4];
                nla.emit_value(&mut value);
                Some(u32::from_ne_bytes(value))
            }
            _ => None,
        }))
}

/// Resolves `name` to a veth on this node, with a clear error when it is
/// missing or of another kind.
pub fn require_veth(name: &str) -> Result<Link> {
    let Some(link) = link_by_name(name)? else {
        return Err(NodeError::NoSuchInterface {
            name: name.to_owned(),
        }
        .into());
    };
    if link.kind != LinkKind::Veth {
        return Err(NodeError::NotAVeth {
            name: name.to_owned(),
        }
        .into());
    }
    Ok(link)
}
