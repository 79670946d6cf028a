//! The Ethernet and network headers of a packet, parsed and validated, for
//! TC and XDP alike.
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

pub use crate::ip::Ip;
use crate::packet::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Packet, ensure_linear, ptr_at,
};

/// ICMPv6 types of neighbour discovery (RFC 4861): router solicitation
/// and advertisement, neighbour solicitation and advertisement, redirect.
const NDP_TYPES: core::ops::RangeInclusive<u8> = 133..=137;

/// The Ethernet and network headers of a packet, validated.
pub struct IpPacket {
    pub eth: *mut EthHdr,
    pub ip: Ip,
    /// Sent to a broadcast or multicast MAC: the kernel floods it, but the
    /// IP packet inside is checked like any other.
    pub l2_multicast: bool,
}

/// What the L2/L3 parse found.
pub enum Parsed {
    Ip(IpPacket),
    /// Broadcast or multicast destination MAC, and not a sane IP packet.
    Multicast,
    /// A well-formed frame of another EtherType.
    NotIp,
    /// IPv6 neighbour discovery: the kernel's.
    Ndp,
    /// IPv6 with an extension header before the transport header.
    Ipv6Extension,
    /// Too short, or a network header that cannot be right.
    Malformed,
}

/// Parses Ethernet and the IPv4 or IPv6 header after it, and checks the
/// header: version, header length, and a length that fits the frame.
#[inline(always)]
pub fn parse_l2_l3(ctx: &impl Packet) -> Parsed {
    if ensure_linear(ctx, EthHdr::LEN).is_err() {
        return Parsed::Malformed;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: `ptr_at` checked the bounds.
    let (dst0, ether_type) = unsafe { ((*eth).dst_addr[0], u16::from_be((*eth).ether_type)) };
    let l2_multicast = dst0 & 1 != 0;
    match parse_l3(ctx, ether_type, l2_multicast) {
        Parsed::Ip(packet) => Parsed::Ip(packet),
        // What the kernel floods unparsed (ARP, NDP, ...) is counted as such.
        _ if l2_multicast => Parsed::Multicast,
        other => other,
    }
}

/// The network header after the Ethernet header.
#[inline(always)]
fn parse_l3(ctx: &impl Packet, ether_type: u16, l2_multicast: bool) -> Parsed {
    let ip_len = match ether_type {
        ETH_P_IP => Ipv4Hdr::LEN,
        ETH_P_IPV6 => Ipv6Hdr::LEN,
        _ => return Parsed::NotIp,
    };
    if ensure_linear(ctx, EthHdr::LEN + ip_len).is_err() {
        return Parsed::Malformed;
    }
    let ip = if ether_type == ETH_P_IP {
        valid_ipv4_at(ctx, EthHdr::LEN).map(Ip::V4)
    } else {
        match valid_ipv6_at(ctx, EthHdr::LEN) {
            Ok(ip) => Some(Ip::V6(ip)),
            Err(other) => return other,
        }
    };
    // Pulls may have moved the packet: the Ethernet pointer comes last.
    match (ip, ptr_at::<EthHdr>(ctx, 0)) {
        (Some(ip), Some(eth)) => Parsed::Ip(IpPacket {
            eth,
            ip,
            l2_multicast,
        }),
        _ => Parsed::Malformed,
    }
}

/// An IPv6 header and the start of the ICMPv6 message after it.
#[repr(C)]
struct Ipv6Icmp {
    ip: Ipv6Hdr,
    icmp: [u8; 4],
}

/// The IPv6 header at `offset` if it is whole and sane and followed by
/// TCP, UDP or ICMPv6 other than neighbour discovery; otherwise what the
/// packet is instead.
#[inline(always)]
pub fn valid_ipv6_at(ctx: &impl Packet, offset: usize) -> Result<*mut Ipv6Hdr, Parsed> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, offset).ok_or(Parsed::Malformed)?;
    // SAFETY: `ptr_at` checked the bounds.
    let (version, payload_len, next_hdr) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u32::from(u16::from_be_bytes((*ip).payload_len)),
            (*ip).next_hdr,
        )
    };
    let available = ctx.len().saturating_sub((offset + Ipv6Hdr::LEN) as u32);
    // BIG TCP GSO packets over 64 KiB carry a payload length of 0.
    let big_tcp = payload_len == 0 && available > u32::from(u16::MAX);
    if version != 6 || !(big_tcp || payload_len <= available) {
        return Err(Parsed::Malformed);
    }
    match next_hdr {
        IPPROTO_TCP | IPPROTO_UDP => Ok(ip),
        IPPROTO_ICMPV6 => {
            // The header and the ICMPv6 type, code and checksum (which
            // every ICMPv6 message has) through one pointer, so the
            // verifier sees one bounds check for both.
            if ensure_linear(ctx, offset + size_of::<Ipv6Icmp>()).is_err() {
                return Err(Parsed::Malformed);
            }
            let both = ptr_at::<Ipv6Icmp>(ctx, offset).ok_or(Parsed::Malformed)?;
            // SAFETY: `ptr_at` checked the bounds.
            if NDP_TYPES.contains(&unsafe { (*both).icmp[0] }) {
                return Err(Parsed::Ndp);
            }
            // SAFETY: as above; the pull may have moved the packet, and
            // this pointer was taken after it.
            Ok(unsafe { &raw mut (*both).ip })
        }
        _ => Err(Parsed::Ipv6Extension),
    }
}

/// The IPv4 header at `offset` if it is whole and sane.
#[inline(always)]
pub fn valid_ipv4_at(ctx: &impl Packet, offset: usize) -> Option<*mut Ipv4Hdr> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, offset)?;
    // SAFETY: `ptr_at` checked the bounds.
    let sane = ipv4_header_is_sane(unsafe { &*ip }, ctx.len().saturating_sub(offset as u32));
    sane.then_some(ip)
}

/// Version 4, an IHL of at least 5 words, and a total length between the
/// header and the `available` bytes the frame has from the header on.
#[inline(always)]
pub fn ipv4_header_is_sane(ip: &Ipv4Hdr, available: u32) -> bool {
    let tot_len = u32::from(u16::from_be_bytes(ip.tot_len));
    let header_len = u32::from(ip.ihl());
    // BIG TCP GSO packets over 64 KiB carry a total length of 0.
    let big_tcp = tot_len == 0 && available > u32::from(u16::MAX);
    ip.version() == 4
        && header_len >= Ipv4Hdr::LEN as u32
        && (big_tcp || (tot_len >= header_len && tot_len <= available))
}
