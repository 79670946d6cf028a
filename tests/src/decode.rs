//! Frames the programs emit, read back with etherparse, so that an
//! assertion names the field it checks instead of repeating the offsets
//! `frames` built it with.
use anyhow::{Context as _, Result, ensure};
pub use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, UdpHeader};

/// An Ethernet frame that carries IPv4.
#[derive(Debug)]
pub struct Ipv4Frame<'a> {
    pub ethernet: Ethernet2Header,
    pub ip: Ipv4Header,
    /// What follows the IPv4 header, to the end of the frame.
    pub payload: &'a [u8],
}

/// Decodes `frame` as Ethernet II and IPv4.
pub fn ipv4(frame: &[u8]) -> Result<Ipv4Frame<'_>> {
    let (ethernet, rest) = Ethernet2Header::from_slice(frame).context("Ethernet header")?;
    ensure!(
        ethernet.ether_type == EtherType::IPV4,
        "EtherType {:?}, not IPv4",
        ethernet.ether_type
    );
    let (ip, payload) = Ipv4Header::from_slice(rest).context("IPv4 header")?;
    Ok(Ipv4Frame {
        ethernet,
        ip,
        payload,
    })
}

/// A VXLAN frame (RFC 7348): outer Ethernet, IPv4 and UDP, the VXLAN
/// header, and the inner Ethernet frame.
#[derive(Debug)]
pub struct VxlanFrame<'a> {
    pub ethernet: Ethernet2Header,
    pub outer: Ipv4Header,
    pub udp: UdpHeader,
    /// The VXLAN header's flags byte: 0x08 is the I flag (a valid VNI).
    pub flags: u8,
    pub vni: u32,
    /// The VXLAN header's three reserved bytes before the VNI, and the
    /// last one after it: all zero on the wire.
    pub reserved: [u8; 4],
    pub inner: &'a [u8],
}

/// Decodes `frame` as a VXLAN frame over IPv4 and UDP (any port).
pub fn vxlan(frame: &[u8]) -> Result<VxlanFrame<'_>> {
    let Ipv4Frame {
        ethernet,
        ip: outer,
        payload,
    } = ipv4(frame)?;
    ensure!(
        outer.protocol == IpNumber::UDP,
        "outer protocol {:?}, not UDP",
        outer.protocol
    );
    let (udp, rest) = UdpHeader::from_slice(payload).context("UDP header")?;
    let (header, inner) = rest
        .split_first_chunk::<8>()
        .context("VXLAN header: fewer than 8 bytes")?;
    let [flags, r1, r2, r3, v1, v2, v3, r4] = *header;
    Ok(VxlanFrame {
        ethernet,
        outer,
        udp,
        flags,
        vni: u32::from_be_bytes([0, v1, v2, v3]),
        reserved: [r1, r2, r3, r4],
        inner,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::frames::{self, IPPROTO_UDP, Ipv4};

    #[test]
    fn a_built_vxlan_frame_decodes_to_the_fields_it_was_built_from() {
        let inner = frames::ethernet([2; 6], [4; 6], frames::ETH_P_IP);
        let outer = Ipv4::new(
            Ipv4Addr::new(192, 168, 100, 1),
            Ipv4Addr::new(192, 168, 100, 2),
            IPPROTO_UDP,
        );
        let frame = frames::vxlan_frame(([1; 6], [3; 6]), &outer, (40000, 8472), 0x12_3456, &inner);
        let decoded = vxlan(&frame).unwrap();
        assert_eq!(decoded.ethernet.destination, [1; 6]);
        assert_eq!(decoded.outer.source, [192, 168, 100, 1]);
        assert_eq!(decoded.outer.destination, [192, 168, 100, 2]);
        assert_eq!(
            decoded.outer.header_checksum,
            decoded.outer.calc_header_checksum()
        );
        assert_eq!(usize::from(decoded.outer.total_len), frame.len() - 14);
        assert_eq!(
            (decoded.udp.source_port, decoded.udp.destination_port),
            (40000, 8472)
        );
        assert_eq!(usize::from(decoded.udp.length), frame.len() - 34);
        assert_eq!(
            (decoded.flags, decoded.vni, decoded.reserved),
            (0x08, 0x12_3456, [0; 4])
        );
        assert_eq!(decoded.inner, inner);
    }

    #[test]
    fn a_frame_cut_short_or_not_vxlan_is_an_error() {
        let outer = Ipv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, IPPROTO_UDP);
        let frame = frames::vxlan_frame(([1; 6], [3; 6]), &outer, (1, 2), 1, &[]);
        assert!(vxlan(&frame[..frame.len() - 1]).is_err());
        assert!(vxlan(&frames::ethernet([1; 6], [3; 6], frames::ETH_P_ARP)).is_err());
    }
}
