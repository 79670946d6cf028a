//! Whether a packet still fits the underlay as it leaves, and what becomes
//! of one that does not: what the kernel answers in place of a hop out of
//! this node. Encapsulation and direct routing share it.
use aya_ebpf::{
    bindings::bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED, helpers::bpf_check_mtu,
    programs::TcContext,
};
use network_types::{eth::EthHdr, tcp::TcpHdr, udp::UdpHdr};
use pod_net_common::{Config, Reason};

use crate::{
    packet::{IPPROTO_TCP, ptr_at},
    parse::Ip,
    verdict::Verdict,
};

/// Whether the packet grown by `overhead` bytes, or for GSO any of its
/// segments, would exceed the underlay MTU.
#[inline(always)]
fn exceeds_underlay_mtu(ctx: &TcContext, ip: Ip, config: &Config, overhead: u32) -> bool {
    let mut mtu: u32 = 0;
    // SAFETY: plain helper call; `mtu` lives across it.
    let verdict = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            config.underlay_ifindex,
            &raw mut mtu,
            overhead as i32,
            0,
        )
    };
    if verdict == i64::from(BPF_MTU_CHK_RET_FRAG_NEEDED) {
        return true;
    }
    // For GSO the helper only compares the whole skb; check one segment.
    // SAFETY: reading a field of our own context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if verdict != 0 || gso_size == 0 {
        return false;
    }
    let ip_len = ip.header_len() as u32;
    let l4_len = if ip.protocol() == IPPROTO_TCP {
        match ptr_at::<TcpHdr>(ctx, EthHdr::LEN + ip.header_len()) {
            // SAFETY: bounds-checked by `ptr_at`; the data offset is in words.
            Some(tcp) => u32::from(unsafe { (*tcp).doff() }) * 4,
            None => return false,
        }
    } else {
        size_of::<UdpHdr>() as u32
    };
    ip_len + l4_len + gso_size + overhead > mtu
}

/// For a packet leaving this node as one router hop, grown by `overhead`:
/// what the kernel must answer instead, if anything. An expired TTL gets
/// ICMP time exceeded; a packet too big for the underlay, see
/// [`pass_too_big`].
#[inline(always)]
pub fn kernel_answers_hop(
    ctx: &TcContext,
    ip: Ip,
    config: &Config,
    overhead: u32,
) -> Option<Verdict> {
    if ip.hop_limit() <= 1 {
        return Some(Verdict::pass(Reason::PassTtlExceeded));
    }
    exceeds_underlay_mtu(ctx, ip, config, overhead).then(|| pass_too_big(ip))
}

/// A packet too big for the underlay goes to the kernel, which routes it
/// to a device whose MTU it knows (the tunnel device, or the underlay):
/// DF (and all IPv6) gets ICMP fragmentation needed or packet too big, the
/// rest is fragmented. Nothing too big is sent, or lost, silently.
#[inline(always)]
fn pass_too_big(ip: Ip) -> Verdict {
    Verdict::pass(if ip.may_fragment() {
        Reason::PassFragment
    } else {
        Reason::PassFragNeeded
    })
}
