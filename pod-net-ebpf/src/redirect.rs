//! Delivery into a pod on this node with `bpf_redirect_peer`.
use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect_peer, programs::TcContext};
use pod_net_common::{Endpoint, Reason};

use crate::parse::Ipv4Packet;

/// What a program returns, and the one reason it is counted under.
pub struct Verdict {
    pub action: i32,
    pub reason: Reason,
}

impl Verdict {
    /// Hand the packet to the kernel untouched.
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self {
            action: TC_ACT_OK as i32,
            reason,
        }
    }
}

/// Rewrites L2 for `endpoint` and redirects into its namespace.
///
/// A frame addressed to the pod's own MAC was bridged at L2, so the IP header
/// stays as it is. Any other frame was sent to the gateway and the kernel
/// would route it: like that hop, decrement the TTL, and leave TTL <= 1 to the
/// kernel, which answers with ICMP time exceeded.
#[inline(always)]
pub fn to_local_pod(_ctx: &TcContext, packet: &Ipv4Packet, endpoint: &Endpoint) -> Verdict {
    // SAFETY: `parse_l2_l3` bounds-checked both headers; the verifier has
    // made the packet writable because the program writes to it.
    unsafe {
        let eth = &mut *packet.eth;
        if eth.dst_addr != endpoint.mac {
            let ip = &mut *packet.ip;
            if ip.ttl <= 1 {
                return Verdict::pass(Reason::PassTtlExceeded);
            }
            decrement_ttl(ip);
        }
        eth.dst_addr = endpoint.mac;
        eth.src_addr = endpoint.gateway_mac;
    }
    // SAFETY: a plain helper call; it only records the target.
    let action = unsafe { bpf_redirect_peer(endpoint.ifindex, 0) };
    Verdict {
        action: action as i32,
        reason: Reason::RedirectLocal,
    }
}

/// TTL - 1 with the incremental header checksum update of RFC 1624, as the
/// kernel's `ip_decrease_ttl` does it.
#[inline(always)]
fn decrement_ttl(ip: &mut network_types::ip::Ipv4Hdr) {
    let check = u32::from(u16::from_be_bytes(ip.check)) + 0x0100;
    let check = (check + u32::from(check >= 0xffff)) as u16;
    ip.check = check.to_be_bytes();
    ip.ttl -= 1;
}
