//! The remote maps: where a pod address lives, when it is on another node.
//!
//! - `remote_pods`, a hash: one pod's address -> its node (a /32). Exact
//!   match, O(1), so a million pinned pods cost what ten do.
//! - `remote_nodes`, an LPM trie: a node's pod CIDR -> the node.
//!
//! A /32 is the longest prefix there is, so looking in `remote_pods` first
//! and then in the trie is exactly longest-prefix match over both.
//! Addresses are 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`,
//! trie prefix length + 96), so IPv6 entries fit the same maps.

/// Bits of an IPv4-mapped prefix before the IPv4 part.
pub const IPV4_MAPPED_PREFIX_BITS: u32 = 96;

/// A `remote_pods` key, and the data part of a `remote_nodes` key
/// (`prefixlen` comes first in the trie key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RemoteAddr {
    pub addr: [u8; 16],
}

impl RemoteAddr {
    /// `::ffff:a.b.c.d`
    #[must_use]
    #[expect(clippy::inline_always, reason = "eBPF code must inline it")]
    #[inline(always)]
    pub const fn ipv4_mapped(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = octets[0];
        addr[13] = octets[1];
        addr[14] = octets[2];
        addr[15] = octets[3];
        Self { addr }
    }
}

/// The remote node's VXLAN endpoint MAC was given (`node add --vtep-mac`):
/// use it as the inner destination MAC. Kernel vxlan devices (flannel)
/// drop inner frames not addressed to their own MAC.
pub const REMOTE_F_VTEP_MAC: u32 = 1;

/// The node shares an L2 segment with this one (`node add --direct`):
/// its pods' packets go to it unencapsulated, one router hop, and plain IP
/// from its pods may go straight into local pods.
pub const REMOTE_F_DIRECT: u32 = 2;

/// Value of `remote_pods` and `remote_nodes`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RemoteNode {
    /// Underlay IPv4 address of the node, network order.
    pub node_ip: [u8; 4],
    /// `REMOTE_F_*` bits.
    pub flags: u32,
    /// Inner destination MAC: the node's VTEP MAC.
    pub vtep_mac: [u8; 6],
    pub pad: [u8; 2],
}

/// The VTEP MAC pod-net derives from a node's underlay IPv4 address, so
/// pod-net nodes know each other's without configuration: `0e:6e:` + the
/// address (locally administered, unicast).
#[must_use]
pub const fn derived_vtep_mac(node_ip: [u8; 4]) -> [u8; 6] {
    [0x0e, 0x6e, node_ip[0], node_ip[1], node_ip[2], node_ip[3]]
}

/// The peer speaks VXLAN to this node: its VXLAN may be decapsulated.
pub const PEER_F_VXLAN: u32 = 1;

/// Value of `peer_nodes`, keyed by a remote node's underlay IPv4 address
/// (network order): what that node may send this node. VXLAN is not
/// authenticated, so its outer source is all there is to check; only
/// nodes that own a remote entry are peers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PeerNode {
    /// `PEER_F_*` bits.
    pub flags: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for PeerNode {}
#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for RemoteAddr {}
#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for RemoteNode {}
