//! Decisions for packets a pod sends (TC ingress of its host veth).
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use pod_net_common::{EndpointKey, Reason, RemoteAddr, remote::IPV4_MAPPED_PREFIX_BITS};

use crate::{
    csum::decrement_ttl,
    encap,
    maps::{CONFIG, LOCAL_ENDPOINTS, REMOTE_NODES},
    parse::{Ipv4Packet, Parsed, parse_l2_l3},
    redirect,
    verdict::Verdict,
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
    if let Some(endpoint) = unsafe { LOCAL_ENDPOINTS.get(EndpointKey::ipv4(dst)) } {
        if routed_hop_expired(&packet, &endpoint.mac) {
            return Verdict::pass(Reason::PassTtlExceeded);
        }
        return redirect::into_pod(packet.eth, endpoint, Reason::RedirectLocal);
    }
    let key = Key::new(IPV4_MAPPED_PREFIX_BITS + 32, RemoteAddr::ipv4_mapped(dst));
    if let Some(remote) = REMOTE_NODES.get(&key)
        && let Some(config) = CONFIG.get(0)
        && config.has_underlay()
    {
        return encap::to_remote_node(ctx, &packet, remote, config);
    }
    Verdict::pass(Reason::PassUnknownDst)
}

/// A frame addressed to the pod's own MAC was bridged at L2, so its IP
/// header stays as it is. Any other frame was sent to the gateway and the
/// kernel would route it: like that hop, decrement the TTL; TTL <= 1 is the
/// kernel's to answer with ICMP time exceeded. Returns whether it expired.
#[inline(always)]
fn routed_hop_expired(packet: &Ipv4Packet, pod_mac: &[u8; 6]) -> bool {
    // SAFETY: `parse_l2_l3` bounds-checked both headers; the packet is
    // writable because the program writes to it.
    unsafe {
        if (*packet.eth).dst_addr == *pod_mac {
            return false;
        }
        let ip = &mut *packet.ip;
        if ip.ttl <= 1 {
            return true;
        }
        decrement_ttl(ip);
    }
    false
}
