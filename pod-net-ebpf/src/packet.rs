//! The packet as the programs see it, TC and XDP alike: bounds-checked
//! access to its linear bytes, and the protocol numbers the parsers use.
use aya_ebpf::programs::{TcContext, XdpContext};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
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
