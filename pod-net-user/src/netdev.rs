//! Interface facts from rtnetlink: index, MAC, kind, bridge master, and the
//! veth peer, which may live in another network namespace.
//!
//! Netlink rather than sysfs: sysfs shows the namespace it was mounted in,
//! netlink always answers for the caller's own.
use std::io;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::mac::MacAddr;

/// What pod-net needs to know about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub kind: LinkKind,
    pub mtu: u32,
    pub up: bool,
    /// ifindex of the bridge this interface is enslaved to.
    pub master: Option<u32>,
    /// For a veth: the peer's ifindex, in the namespace `peer_netnsid`
    /// names (or in ours when that is `None`).
    pub peer_index: Option<u32>,
    pub peer_netnsid: Option<i32>,
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
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .context("netlink dump of interfaces")?;
    Ok(replies.iter().map(link_from_message).collect())
}

fn get_link(message: LinkMessage) -> io::Result<Option<Link>> {
    match request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST) {
        Ok(replies) => Ok(replies.first().map(link_from_message)),
        Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(err),
    }
}

fn link_from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        kind: LinkKind::Other,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        master: None,
        peer_index: None,
        peer_netnsid: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::LinkNetNsId(netnsid) => link.peer_netnsid = Some(*netnsid),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = match kind {
                            InfoKind::Veth => LinkKind::Veth,
                            InfoKind::Bridge => LinkKind::Bridge,
                            InfoKind::Vxlan => LinkKind::Vxlan,
                            _ => LinkKind::Other,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Sends one rtnetlink request and collects the link messages of the reply.
fn request(payload: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<LinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut links = Vec::new();
    let mut receive = Vec::with_capacity(64 * 1024);
    loop {
        receive.clear();
        let size = socket.recv(&mut receive, 0)?;
        let mut offset = 0;
        while offset < size {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    links.push(link);
                }
                NetlinkPayload::Error(error) => {
                    return Err(match error.code {
                        Some(code) => io::Error::from_raw_os_error(-code.get()),
                        None => io::Error::other("unexpected netlink ACK"),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(links),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
        if flags & NLM_F_DUMP != NLM_F_DUMP {
            return Ok(links);
        }
    }
}

/// Resolves `name` to a veth on this node, with a clear error when it is
/// missing or of another kind.
pub fn require_veth(name: &str) -> Result<Link> {
    let Some(link) = link_by_name(name)? else {
        bail!("no interface named {name:?} in this network namespace");
    };
    if link.kind != LinkKind::Veth {
        bail!("interface {name:?} is not a veth; pods attach through their host-side veth");
    }
    Ok(link)
}
