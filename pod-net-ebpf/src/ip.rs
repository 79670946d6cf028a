//! A pod packet's network header, IPv4 or IPv6, and what the decisions ask
//! of it, so that the same decisions serve both families.
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use pod_net_common::{
    EndpointKey, RemoteAddr,
    endpoint::{FAMILY_IPV4, FAMILY_IPV6},
};

use crate::{
    csum::decrement_ttl,
    packet::{ETH_P_IP, ETH_P_IPV6, Packet, ptr_at},
};

/// The IPv4 don't-fragment flag, in the first byte of `frags`.
pub const IP_DF: u8 = 0x40;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// A bounds-checked, sane network header.
#[derive(Clone, Copy)]
pub enum Ip {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

/// An address as the maps key it: 16 bytes and a family.
#[derive(Clone, Copy)]
pub struct Addr {
    pub bytes: [u8; 16],
    pub family: u8,
}

impl Addr {
    #[inline(always)]
    pub fn v4(octets: [u8; 4]) -> Self {
        // Not `[0u8; 16]` and a copy: bpf-linker leaves that memset as a
        // call to a byte-loop subprogram, twice per packet (both lookups).
        let bytes = u128::from(u32::from_ne_bytes(octets)).to_ne_bytes();
        Self {
            bytes,
            family: FAMILY_IPV4,
        }
    }

    #[inline(always)]
    fn v6(bytes: [u8; 16]) -> Self {
        Self {
            bytes,
            family: FAMILY_IPV6,
        }
    }

    /// An IPv6 link-local address (`fe80::/10`).
    #[inline(always)]
    pub fn is_link_local(self) -> bool {
        self.family == FAMILY_IPV6 && self.bytes[0] == 0xfe && self.bytes[1] & 0xc0 == 0x80
    }

    /// 0.0.0.0 or ::, the source of a host that has no address yet (DHCP,
    /// duplicate address detection).
    #[inline(always)]
    pub fn is_unspecified(self) -> bool {
        self.bytes == [0; 16]
    }

    /// The `local_endpoints` key.
    #[inline(always)]
    pub fn endpoint_key(self) -> EndpointKey {
        EndpointKey {
            addr: self.bytes,
            family: self.family,
            ..EndpointKey::default()
        }
    }

    /// The `remote_pods` key (IPv4 is IPv4-mapped).
    #[inline(always)]
    pub fn remote_key(self) -> RemoteAddr {
        if self.family == FAMILY_IPV4 {
            RemoteAddr::ipv4_mapped([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
        } else {
            RemoteAddr { addr: self.bytes }
        }
    }
}

// SAFETY, for every dereference below: an `Ip` holds a pointer that its
// parser bounds-checked, into a packet the program may write.
impl Ip {
    /// The same kind of header at `offset` of `ctx`, after the packet moved.
    #[inline(always)]
    pub fn at(self, ctx: &impl Packet, offset: usize) -> Option<Self> {
        match self {
            Self::V4(_) => ptr_at::<Ipv4Hdr>(ctx, offset).map(Self::V4),
            Self::V6(_) => ptr_at::<Ipv6Hdr>(ctx, offset).map(Self::V6),
        }
    }

    #[inline(always)]
    pub fn src(self) -> Addr {
        match self {
            Self::V4(ip) => Addr::v4(unsafe { (*ip).src_addr }),
            Self::V6(ip) => Addr::v6(unsafe { (*ip).src_addr }),
        }
    }

    #[inline(always)]
    pub fn dst(self) -> Addr {
        match self {
            Self::V4(ip) => Addr::v4(unsafe { (*ip).dst_addr }),
            Self::V6(ip) => Addr::v6(unsafe { (*ip).dst_addr }),
        }
    }

    /// The transport protocol (IPv6: the next header, which the parser
    /// made sure is not an extension header).
    #[inline(always)]
    pub fn protocol(self) -> u8 {
        match self {
            Self::V4(ip) => unsafe { (*ip).proto },
            Self::V6(ip) => unsafe { (*ip).next_hdr },
        }
    }

    /// Bytes from the network header to the transport header.
    #[inline(always)]
    pub fn header_len(self) -> usize {
        match self {
            Self::V4(ip) => usize::from(unsafe { (*ip).ihl() }),
            Self::V6(_) => Ipv6Hdr::LEN,
        }
    }

    /// TTL or hop limit.
    #[inline(always)]
    pub fn hop_limit(self) -> u8 {
        match self {
            Self::V4(ip) => unsafe { (*ip).ttl },
            Self::V6(ip) => unsafe { (*ip).hop_limit },
        }
    }

    /// One router hop: TTL - 1 (with the checksum update) or hop limit - 1.
    /// The caller has checked that it is above 1.
    #[inline(always)]
    pub fn decrement_hop_limit(self) {
        match self {
            Self::V4(ip) => unsafe { decrement_ttl(&mut *ip) },
            Self::V6(ip) => unsafe { (*ip).hop_limit -= 1 },
        }
    }

    /// DSCP and ECN (IPv4 TOS, IPv6 traffic class).
    #[inline(always)]
    pub fn traffic_class(self) -> u8 {
        match self {
            Self::V4(ip) => unsafe { (*ip).tos },
            Self::V6(ip) => {
                let vcf = unsafe { (*ip).vcf };
                (vcf[0] << 4) | (vcf[1] >> 4)
            }
        }
    }

    /// Whether routers may fragment it: IPv4 without DF. IPv6 never.
    #[inline(always)]
    pub fn may_fragment(self) -> bool {
        match self {
            Self::V4(ip) => (unsafe { (*ip).frags[0] } & IP_DF) == 0,
            Self::V6(_) => false,
        }
    }

    /// A fragment after the first, which carries no transport header.
    /// (IPv6 fragments have an extension header and never get this far.)
    #[inline(always)]
    pub fn is_later_fragment(self) -> bool {
        match self {
            Self::V4(ip) => u16::from_be_bytes(unsafe { (*ip).frags }) & IP_OFFSET_MASK != 0,
            Self::V6(_) => false,
        }
    }

    /// The EtherType that announces this header.
    #[inline(always)]
    pub fn ether_type(self) -> u16 {
        match self {
            Self::V4(_) => ETH_P_IP,
            Self::V6(_) => ETH_P_IPV6,
        }
    }
}
