//! The XDP receive path on the underlay (`pod-net load --xdp`): VXLAN for a
//! local pod is stripped with `bpf_xdp_adjust_head` and sent to the pod's
//! host veth through the `pod_veths` devmap, before any skb exists.
//! Everything else goes on to the TC program, which counts it; this
//! program counts only what it delivers or drops itself.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_head,
    programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use pod_net_common::{Config, Reason};

use crate::{
    csum::{decrement_ttl, fold},
    decap::{Inbound, classify},
    maps::POD_VETHS,
    packet::{IPPROTO_TCP, IPPROTO_UDP, ptr_at},
    parse::Ip,
    redirect::address_to_pod,
};

/// Whether the TCP or UDP checksum of the IPv4 packet at `ip_offset` holds
/// only the pseudo-header sum, as a sender leaves it for offload. A complete
/// checksum equals that sum by chance once in 65536 packets; those take the
/// TC path, which is correct too.
#[inline(always)]
fn l4_checksum_is_partial(ctx: &XdpContext, ip_offset: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ip_offset) else {
        return true;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let header_len = usize::from(ip.ihl());
    let check_offset = match ip.proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        _ => return false,
    };
    let Some(check) = ptr_at::<[u8; 2]>(ctx, ip_offset + header_len + check_offset) else {
        return true;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let check = u16::from_be_bytes(unsafe { *check });
    let l4_len = u32::from(u16::from_be_bytes(ip.tot_len)).saturating_sub(header_len as u32);
    let word = |bytes: [u8; 2]| u32::from(u16::from_be_bytes(bytes));
    let sum = word([ip.src_addr[0], ip.src_addr[1]])
        + word([ip.src_addr[2], ip.src_addr[3]])
        + word([ip.dst_addr[0], ip.dst_addr[1]])
        + word([ip.dst_addr[2], ip.dst_addr[3]])
        + u32::from(ip.proto)
        + l4_len;
    check == fold(sum)
}

/// The XDP action, and the reason to count it under if this program owns
/// the decision.
pub struct XdpVerdict {
    pub action: u32,
    pub reason: Option<Reason>,
}

const PASS_TO_TC: XdpVerdict = XdpVerdict {
    action: XDP_PASS,
    reason: None,
};

#[inline(always)]
pub fn decide_and_act(ctx: &XdpContext, config: &Config) -> XdpVerdict {
    let (endpoint, outer_len) = match classify(ctx, config) {
        Inbound::Deliver {
            endpoint,
            outer_len,
            inner: Ip::V4(_),
        } => (endpoint, outer_len),
        Inbound::Drop(reason) => {
            return XdpVerdict {
                action: XDP_DROP,
                reason: Some(reason),
            };
        }
        // Inner IPv6 takes the TC path, which delivers it; so does direct
        // routing (its sender check is TC's), uncounted here like any pass.
        Inbound::Deliver { .. } | Inbound::Direct { .. } | Inbound::Pass(_) => return PASS_TO_TC,
    };
    if POD_VETHS.get(endpoint.ifindex).is_none() {
        return PASS_TO_TC;
    }
    // A sender that left its TCP/UDP checksum to offload (veth passes
    // CHECKSUM_PARTIAL packets on as they are) needs the skb's checksum
    // state, which XDP cannot carry through a redirect: TC delivers those.
    if l4_checksum_is_partial(ctx, EthHdr::LEN + outer_len) {
        return PASS_TO_TC;
    }
    // Keep the outer Ethernet header's place: move the start past the outer
    // IP, UDP, VXLAN and inner Ethernet headers, then write a fresh one.
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return PASS_TO_TC;
    }
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
    ) else {
        return XdpVerdict {
            action: XDP_DROP,
            reason: Some(Reason::DropMalformed),
        };
    };
    // SAFETY: bounds-checked just above.
    unsafe {
        decrement_ttl(&mut *ip);
        address_to_pod(eth, endpoint);
        (*eth).ether_type = crate::packet::ETH_P_IP.to_be();
    }
    let action = match POD_VETHS.redirect(endpoint.ifindex, 0) {
        Ok(action) | Err(action) => action,
    };
    XdpVerdict {
        action,
        reason: Some(Reason::Decap),
    }
}
