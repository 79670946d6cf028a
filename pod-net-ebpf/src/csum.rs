//! IPv4 header checksums.
use network_types::ip::Ipv4Hdr;

/// TTL - 1 with the incremental header checksum update of RFC 1624, as the
/// kernel's `ip_decrease_ttl` does it.
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let check = u32::from(u16::from_be_bytes(ip.check)) + 0x0100;
    let check = (check + u32::from(check >= 0xffff)) as u16;
    ip.check = check.to_be_bytes();
    ip.ttl -= 1;
}

/// The checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header_checksum(header: &Ipv4Hdr) -> [u8; 2] {
    // SAFETY: `Ipv4Hdr` is 20 bytes of plain data.
    let bytes: &[u8; 20] = unsafe { &*core::ptr::from_ref(header).cast::<[u8; 20]>() };
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    (!fold(sum)).to_be_bytes()
}

/// A 32-bit one's-complement sum folded to 16 bits (two carries at most
/// for the sums here).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
