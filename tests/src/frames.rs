//! Hand-built frames with exact bytes, for `BPF_PROG_TEST_RUN` cases and
//! raw-socket injection.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// An Ethernet header.
#[must_use]
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

/// The fields of an IPv4 header a test varies.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
    /// DF and MF flags plus fragment offset, as on the wire.
    pub flags_fragment: u16,
    pub identification: u16,
}

impl Ipv4 {
    #[must_use]
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Self {
            src,
            dst,
            ttl: 64,
            protocol,
            flags_fragment: 0x4000,
            identification: 0x1234,
        }
    }

    /// A 20-byte header for `payload_len` bytes of payload, checksummed.
    #[must_use]
    pub fn header(&self, payload_len: usize) -> Vec<u8> {
        let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
        let mut header = Vec::with_capacity(20);
        header.push(0x45);
        header.push(0);
        header.extend_from_slice(&total.to_be_bytes());
        header.extend_from_slice(&self.identification.to_be_bytes());
        header.extend_from_slice(&self.flags_fragment.to_be_bytes());
        header.push(self.ttl);
        header.push(self.protocol);
        header.extend_from_slice(&[0, 0]);
        header.extend_from_slice(&self.src.octets());
        header.extend_from_slice(&self.dst.octets());
        let checksum = internet_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        header
    }
}

/// The fields of an IPv6 header a test varies.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub next_header: u8,
}

impl Ipv6 {
    #[must_use]
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8) -> Self {
        Self {
            src,
            dst,
            hop_limit: 64,
            next_header,
        }
    }

    /// A 40-byte header for `payload_len` bytes of payload.
    #[must_use]
    pub fn header(&self, payload_len: usize) -> Vec<u8> {
        let payload = u16::try_from(payload_len).unwrap_or(u16::MAX);
        let mut header = vec![0x60, 0, 0, 0];
        header.extend_from_slice(&payload.to_be_bytes());
        header.push(self.next_header);
        header.push(self.hop_limit);
        header.extend_from_slice(&self.src.octets());
        header.extend_from_slice(&self.dst.octets());
        header
    }

    /// The transport checksum of `l4` (its checksum field zero) over the
    /// IPv6 pseudo-header.
    #[must_use]
    pub fn l4_checksum(&self, l4: &[u8]) -> u16 {
        let mut pseudo = Vec::with_capacity(40 + l4.len());
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&u32::try_from(l4.len()).unwrap_or(u32::MAX).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, self.next_header]);
        pseudo.extend_from_slice(l4);
        internet_checksum(&pseudo)
    }
}

/// Ethernet + IPv6 + `ICMPv6` echo request: a complete ping6 frame.
#[must_use]
pub fn ping6_frame(dst_mac: [u8; 6], src_mac: [u8; 6], ip: &Ipv6) -> Vec<u8> {
    let mut icmp = vec![128, 0, 0, 0, 0x42, 0x42, 0, 1];
    icmp.extend_from_slice(b"pod-net test payload");
    let checksum = ip.l4_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IPV6);
    frame.extend_from_slice(&ip.header(icmp.len()));
    frame.extend_from_slice(&icmp);
    frame
}

/// Ethernet + IPv6 + a 20-byte TCP SYN from `ports.0` to `ports.1`.
#[must_use]
pub fn tcp6_syn_frame(macs: ([u8; 6], [u8; 6]), ip: &Ipv6, ports: (u16, u16)) -> Vec<u8> {
    let mut tcp = tcp_syn(ports);
    let checksum = ip.l4_checksum(&tcp);
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = ethernet(macs.0, macs.1, ETH_P_IPV6);
    frame.extend_from_slice(&ip.header(tcp.len()));
    frame.extend_from_slice(&tcp);
    frame
}

/// A 20-byte TCP SYN segment, checksum field zero.
fn tcp_syn(ports: (u16, u16)) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&ports.0.to_be_bytes());
    tcp.extend_from_slice(&ports.1.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    tcp
}

/// An ICMP echo request with `data` as payload.
#[must_use]
pub fn icmp_echo(id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let checksum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    icmp
}

/// Ethernet + IPv4 + ICMP echo: a complete ping frame.
#[must_use]
pub fn ping_frame(dst_mac: [u8; 6], src_mac: [u8; 6], ip: &Ipv4) -> Vec<u8> {
    let icmp = icmp_echo(0x4242, 1, b"pod-net test payload");
    let mut frame = ethernet(dst_mac, src_mac, ETH_P_IP);
    frame.extend_from_slice(&ip.header(icmp.len()));
    frame.extend_from_slice(&icmp);
    frame
}

/// Ethernet + IPv4 + a 20-byte TCP SYN from `ports.0` to `ports.1`.
#[must_use]
pub fn tcp_syn_frame(macs: ([u8; 6], [u8; 6]), ip: &Ipv4, ports: (u16, u16)) -> Vec<u8> {
    let mut tcp = tcp_syn(ports);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip.src.octets());
    pseudo.extend_from_slice(&ip.dst.octets());
    pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let checksum = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = ethernet(macs.0, macs.1, ETH_P_IP);
    frame.extend_from_slice(&ip.header(tcp.len()));
    frame.extend_from_slice(&tcp);
    frame
}

/// An ARP request (who-has `target`, tell `sender`), broadcast.
#[must_use]
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(BROADCAST, sender_mac, ETH_P_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&sender_mac);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// A UDP datagram with `payload` from `macs.1` to `macs.0`.
#[must_use]
pub fn udp_frame(
    macs: ([u8; 6], [u8; 6]),
    ip: &Ipv4,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = ethernet(macs.0, macs.1, ETH_P_IP);
    frame.extend_from_slice(&ip.header(8 + payload.len()));
    frame.extend_from_slice(&udp_header(ports.0, ports.1, payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// A UDP header for `payload_len` bytes, with a zero checksum (as VXLAN
/// over IPv4 sends it).
#[must_use]
pub fn udp_header(src_port: u16, dst_port: u16, payload_len: usize) -> Vec<u8> {
    let len = u16::try_from(8 + payload_len).unwrap_or(u16::MAX);
    let mut header = Vec::with_capacity(8);
    header.extend_from_slice(&src_port.to_be_bytes());
    header.extend_from_slice(&dst_port.to_be_bytes());
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    header
}

/// A VXLAN header (RFC 7348): the I flag and a 24-bit VNI.
#[must_use]
pub fn vxlan_header(vni: u32) -> [u8; 8] {
    let [_, a, b, c] = vni.to_be_bytes();
    [0x08, 0, 0, 0, a, b, c, 0]
}

/// `inner` (a whole Ethernet frame) inside outer Ethernet, IPv4 (`outer`,
/// protocol UDP), UDP and VXLAN headers.
#[must_use]
pub fn vxlan_frame(
    outer_macs: ([u8; 6], [u8; 6]),
    outer: &Ipv4,
    ports: (u16, u16),
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let udp_payload = 8 + inner.len();
    let mut frame = ethernet(outer_macs.0, outer_macs.1, ETH_P_IP);
    frame.extend_from_slice(&outer.header(8 + udp_payload));
    frame.extend_from_slice(&udp_header(ports.0, ports.1, udp_payload));
    frame.extend_from_slice(&vxlan_header(vni));
    frame.extend_from_slice(inner);
    frame
}

/// The RFC 1071 ones'-complement checksum of `bytes`.
#[must_use]
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Parses `aa:bb:..` into bytes.
///
/// # Panics
/// On a malformed MAC: test input is fixed.
#[must_use]
pub fn mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    let parts: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16).unwrap_or_else(|_| panic!("bad MAC {text}")))
        .collect();
    out.copy_from_slice(&parts);
    out
}

/// An Ethernet frame's (destination, source) MACs.
///
/// # Panics
/// On a frame shorter than the two MACs: test input is fixed.
#[must_use]
pub fn macs_of(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
    let mac = |at: usize| -> [u8; 6] {
        frame[at..at + 6]
            .try_into()
            .unwrap_or_else(|_| panic!("a frame of {} bytes has no MACs", frame.len()))
    };
    (mac(0), mac(6))
}

/// Lower-case hex, as `pod-net-probe` takes frames and payloads.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // The IPv4 header example from RFC 1071's discussions (Wikipedia).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
    }

    #[test]
    fn built_headers_verify() {
        let ip = Ipv4::new(
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 1, 3),
            IPPROTO_ICMP,
        );
        let header = ip.header(28);
        assert_eq!(internet_checksum(&header), 0);
    }
}
