//! Decisions for packets a pod sends (TC ingress of its host veth).
use aya_ebpf::programs::TcContext;
use pod_net_common::{EndpointKey, Reason};

use crate::{
    maps::LOCAL_ENDPOINTS,
    parse::{Parsed, parse_l2_l3},
    redirect::{self, Verdict},
};

#[inline(always)]
pub fn decide_and_act(ctx: &TcContext) -> Verdict {
    let packet = match parse_l2_l3(ctx) {
        Parsed::Ipv4(packet) => packet,
        Parsed::Multicast => return Verdict::pass(Reason::PassMulticast),
        Parsed::NotIpv4 => return Verdict::pass(Reason::PassNotIp),
        Parsed::Malformed => return Verdict::pass(Reason::PassMalformed),
    };
    // SAFETY: `parse_l2_l3` bounds-checked the IPv4 header.
    let dst = unsafe { (*packet.ip).dst_addr };
    // SAFETY: the value is only read, before anything can replace it.
    match unsafe { LOCAL_ENDPOINTS.get(EndpointKey::ipv4(dst)) } {
        Some(endpoint) => redirect::to_local_pod(ctx, &packet, endpoint),
        None => Verdict::pass(Reason::PassUnknownDst),
    }
}
