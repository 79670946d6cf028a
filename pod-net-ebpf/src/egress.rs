//! Decisions for packets a pod sends (TC ingress of its host veth).
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use network_types::eth::EthHdr;
use pod_net_common::{
    Config, EndpointKey, Reason, RemoteAddr, RemoteNode,
    endpoint::ENDPOINT_F_NO_BYPASS,
    event::{CONFIG_F_NO_ANTI_SPOOF, CONFIG_F_NO_NAT_CHECK},
    remote::IPV4_MAPPED_PREFIX_BITS,
};

use crate::{
    csum::decrement_ttl,
    encap,
    maps::{LOCAL_ENDPOINTS, REMOTE_NODES, REMOTE_PODS},
    nat,
    parse::{Ipv4Packet, Parsed, parse_l2_l3},
    redirect,
    verdict::Verdict,
};

#[inline(always)]
pub fn decide_and_act(ctx: &TcContext, config: &Config) -> Verdict {
    let packet = match parse_l2_l3(ctx) {
        Parsed::Ipv4(packet) => packet,
        Parsed::Multicast => return Verdict::pass(Reason::PassMulticast),
        Parsed::NotIpv4 => return Verdict::pass(Reason::PassNotIp),
        Parsed::Malformed => return Verdict::pass(Reason::PassMalformed),
    };
    // SAFETY: `parse_l2_l3` bounds-checked the IPv4 header. Copies: the
    // header is rewritten further down.
    let (src, dst, protocol) = unsafe {
        let ip = &*packet.ip;
        (ip.src_addr, ip.dst_addr, ip.proto)
    };

    // The sender: one of this veth's pods, unless anti-spoofing is off.
    // SAFETY: the value is only read, before anything can replace it.
    let sender = unsafe { LOCAL_ENDPOINTS.get(EndpointKey::ipv4(src)) };
    // SAFETY: reading a field of our own context.
    let veth = unsafe { (*ctx.skb.skb).ifindex };
    if config.flags & CONFIG_F_NO_ANTI_SPOOF == 0
        && sender.is_none_or(|sender| sender.ifindex != veth)
    {
        return Verdict::drop(Reason::DropSpoofed);
    }
    if sender.is_some_and(|sender| sender.flags & ENDPOINT_F_NO_BYPASS != 0) {
        return Verdict::pass(Reason::PassNoBypass);
    }
    let nat_check = config.flags & CONFIG_F_NO_NAT_CHECK == 0;
    let ports = if nat_check {
        // SAFETY: as above; the reference ends with the call.
        nat::ports(ctx, unsafe { &*packet.ip }, EthHdr::LEN)
    } else {
        None
    };

    // SAFETY: the value is only read, before anything can replace it.
    if let Some(endpoint) = unsafe { LOCAL_ENDPOINTS.get(EndpointKey::ipv4(dst)) } {
        if endpoint.flags & ENDPOINT_F_NO_BYPASS != 0 {
            return Verdict::pass(Reason::PassNoBypass);
        }
        if let Some((_, dst_port)) = ports
            && nat::is_reply_to_nat_client(dst, dst_port, protocol)
        {
            return Verdict::pass(Reason::PassNat);
        }
        if routed_hop_expired(&packet, &endpoint.mac) {
            return Verdict::pass(Reason::PassTtlExceeded);
        }
        return redirect::into_pod(packet.eth, endpoint, Reason::RedirectLocal);
    }
    if config.has_underlay()
        && let Some(remote) = remote_node(dst)
    {
        return encap::to_remote_node(ctx, &packet, remote, config);
    }
    // Not a pod: the kernel takes it, and may NAT it (a service IP).
    if let Some((src_port, _)) = ports {
        nat::remember_client(src, src_port, protocol);
    }
    Verdict::pass(Reason::PassUnknownDst)
}

/// The node hosting remote pod address `dst`: its own /32 entry, else its
/// node's CIDR (longest prefix over both maps, as a /32 is the longest).
#[inline(always)]
fn remote_node(dst: [u8; 4]) -> Option<&'static RemoteNode> {
    let addr = RemoteAddr::ipv4_mapped(dst);
    // SAFETY: the values are only read, before anything can replace them.
    unsafe { REMOTE_PODS.get(&addr) }
        .or_else(|| REMOTE_NODES.get(&Key::new(IPV4_MAPPED_PREFIX_BITS + 32, addr)))
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
