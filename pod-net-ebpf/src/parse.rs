//! Bounds-checked access to packet headers, for TC and XDP alike.
use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// What the parsers need of a program context.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length, linear or not.
    fn len(&self) -> u32;
    /// Makes the first `len` bytes directly accessible; fails if the
    /// packet is shorter.
    fn ensure_linear(&self, len: usize) -> Result<(), ()>;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    /// Locally generated TCP keeps its headers linear already, so the pull
    /// is rare and never copies payload.
    #[inline(always)]
    fn ensure_linear(&self, len: usize) -> Result<(), ()> {
        if self.data() + len <= self.data_end() {
            return Ok(());
        }
        if (TcContext::len(self) as usize) < len {
            return Err(());
        }
        self.pull_data(len as u32).map_err(|_| ())
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (XdpContext::data_end(self) - XdpContext::data(self)) as u32
    }

    /// XDP frames here are linear: the bytes are there or not at all, and
    /// `ptr_at` checks that. (A second check here would let LLVM fold the
    /// two into one the verifier cannot follow.)
    #[inline(always)]
    fn ensure_linear(&self, _len: usize) -> Result<(), ()> {
        Ok(())
    }
}

/// A pointer to a `T` at `offset` into the packet's linear data, if the
/// whole `T` lies inside it. The check is the one the verifier needs.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// See [`Packet::ensure_linear`].
#[inline(always)]
pub fn ensure_linear(ctx: &impl Packet, len: usize) -> Result<(), ()> {
    ctx.ensure_linear(len)
}

/// The Ethernet and IPv4 headers of a packet, validated.
pub struct Ipv4Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

impl Ipv4Packet {
    /// Length of the IPv4 header, options included.
    #[inline(always)]
    pub fn ip_header_len(&self) -> usize {
        // SAFETY: the header was bounds-checked by `parse_l2_l3`.
        usize::from(unsafe { (*self.ip).vihl } & 0x0f) * 4
    }
}

/// What the L2/L3 parse found.
pub enum Parsed {
    Ipv4(Ipv4Packet),
    /// Broadcast or multicast destination MAC.
    Multicast,
    /// A well-formed frame of another EtherType.
    NotIpv4,
    /// Too short, or an IPv4 header that cannot be right.
    Malformed,
}

/// Parses Ethernet and, for IPv4, checks the IP header: version 4, IHL of at
/// least 5 words, and a total length that fits the frame.
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
    if dst0 & 1 != 0 {
        return Parsed::Multicast;
    }
    if ether_type != ETH_P_IP {
        return Parsed::NotIpv4;
    }
    if ensure_linear(ctx, EthHdr::LEN + Ipv4Hdr::LEN).is_err() {
        return Parsed::Malformed;
    }
    // `pull_data` may move the packet: take fresh pointers.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    match valid_ipv4_at(ctx, EthHdr::LEN) {
        Some(ip) => Parsed::Ipv4(Ipv4Packet { eth, ip }),
        None => Parsed::Malformed,
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
    let header_len = u32::from(ip.vihl & 0x0f) * 4;
    // BIG TCP GSO packets over 64 KiB carry a total length of 0.
    let big_tcp = tot_len == 0 && available > u32::from(u16::MAX);
    ip.vihl >> 4 == 4
        && header_len >= Ipv4Hdr::LEN as u32
        && (big_tcp || (tot_len >= header_len && tot_len <= available))
}
