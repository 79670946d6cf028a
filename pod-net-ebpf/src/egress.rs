//! Decisions for packets a pod sends (TC ingress of its host veth).
use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use pod_net_common::{
    Config, Reason,
    endpoint::ENDPOINT_F_NO_BYPASS,
    event::{CONFIG_F_NO_ANTI_SPOOF, CONFIG_F_NO_NAT_CHECK},
    remote::REMOTE_F_DIRECT,
};

use crate::{
    direct, encap,
    ip::Addr,
    maps::LOCAL_ENDPOINTS,
    nat,
    packet::IPPROTO_UDP,
    parse::{Ip, IpPacket, Parsed, parse_l2_l3},
    redirect, remote,
    verdict::Verdict,
};

#[inline(always)]
pub fn decide_and_act(ctx: &TcContext, config: &Config) -> Verdict {
    let packet = match parse_l2_l3(ctx) {
        Parsed::Ip(packet) => packet,
        Parsed::Multicast => return Verdict::pass(Reason::PassMulticast),
        Parsed::NotIp => return Verdict::pass(Reason::PassNotIp),
        Parsed::Ndp => return Verdict::pass(Reason::PassNdp),
        Parsed::Ipv6Extension => return Verdict::pass(Reason::PassIpv6Ext),
        Parsed::Malformed => return Verdict::pass(Reason::PassMalformed),
    };
    let ip = packet.ip;
    // Copies: the header is rewritten further down.
    let (src, dst, protocol) = (ip.src(), ip.dst(), ip.protocol());
    // Link-local addresses are not registered and stay on the link.
    if src.is_link_local() || dst.is_link_local() {
        return Verdict::pass(if packet.l2_multicast {
            Reason::PassMulticast
        } else {
            Reason::PassLinkLocal
        });
    }
    // A host without an address yet (DHCP) broadcasts from 0.0.0.0, which
    // impersonates no one.
    if packet.l2_multicast && src.is_unspecified() {
        return Verdict::pass(Reason::PassMulticast);
    }

    // The sender: one of this veth's pods, unless anti-spoofing is off.
    // Whatever the L2 destination: a broadcast frame carries IP as well.
    // SAFETY: the value is only read, before anything can replace it.
    let sender = unsafe { LOCAL_ENDPOINTS.get(src.endpoint_key()) };
    // SAFETY: reading a field of our own context.
    let veth = unsafe { (*ctx.skb.skb).ifindex };
    if config.flags & CONFIG_F_NO_ANTI_SPOOF == 0
        && sender.is_none_or(|sender| sender.ifindex != veth)
    {
        return Verdict::drop(Reason::DropSpoofed);
    }
    // VXLAN is opened by whichever node receives it on its port: a pod may
    // send to that port only to another pod, never to a node, whatever the
    // L2 destination (the kernel takes unicast IP out of a broadcast frame).
    if protocol == IPPROTO_UDP
        && udp_dst_port(ctx, ip) == Some(config.guarded_vxlan_port())
        && !is_pod(dst, config)
    {
        return Verdict::drop(Reason::DropPodToVxlan);
    }
    if packet.l2_multicast {
        return Verdict::pass(Reason::PassMulticast);
    }
    if sender.is_some_and(|sender| sender.flags & ENDPOINT_F_NO_BYPASS != 0) {
        return Verdict::pass(Reason::PassNoBypass);
    }
    let ports = if config.flags & CONFIG_F_NO_NAT_CHECK == 0 {
        nat::ports(ctx, ip, EthHdr::LEN)
    } else {
        None
    };

    // SAFETY: the value is only read, before anything can replace it.
    if let Some(endpoint) = unsafe { LOCAL_ENDPOINTS.get(dst.endpoint_key()) } {
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
        && let Some(node) = remote::node_of(dst)
    {
        if node.flags & REMOTE_F_DIRECT != 0 {
            return direct::to_direct_node(ctx, &packet, node, config);
        }
        return encap::to_remote_node(ctx, &packet, node, config);
    }
    // Not a pod: the kernel takes it, and may NAT it (a service IP).
    if let Some((src_port, _)) = ports {
        nat::remember_client(src, src_port, protocol);
    }
    Verdict::pass(Reason::PassUnknownDst)
}

/// The UDP destination port, unless this is a later fragment (the first
/// one carries the port, and the kernel cannot reassemble without it).
/// Straight from the linear data, as nearly always, with no helper call on
/// the per-packet path; by copy only when a raw socket left the UDP header
/// in paged data (a copy reaches it and keeps the packet pointers valid).
#[inline(always)]
fn udp_dst_port(ctx: &TcContext, ip: Ip) -> Option<u16> {
    if ip.is_later_fragment() {
        return None;
    }
    if let Some((_, dst_port)) = nat::ports(ctx, ip, EthHdr::LEN) {
        return Some(dst_port);
    }
    let ports: [u8; 4] = ctx.load(EthHdr::LEN + ip.header_len()).ok()?;
    Some(u16::from_be_bytes([ports[2], ports[3]]))
}

/// Whether `dst` is a pod this node knows, here or on another node.
#[inline(always)]
fn is_pod(dst: Addr, config: &Config) -> bool {
    // SAFETY: the value is only read.
    unsafe { LOCAL_ENDPOINTS.get(dst.endpoint_key()) }.is_some()
        || config.has_underlay() && remote::node_of(dst).is_some()
}

/// A frame addressed to the pod's own MAC was bridged at L2, so its IP
/// header stays as it is. Any other frame was sent to the gateway and the
/// kernel would route it: like that hop, decrement the TTL or hop limit;
/// at 1 or less it is the kernel's to answer with ICMP time exceeded.
/// Returns whether it expired.
#[inline(always)]
fn routed_hop_expired(packet: &IpPacket, pod_mac: &[u8; 6]) -> bool {
    // SAFETY: `parse_l2_l3` bounds-checked the Ethernet header.
    if unsafe { (*packet.eth).dst_addr } == *pod_mac {
        return false;
    }
    if packet.ip.hop_limit() <= 1 {
        return true;
    }
    packet.ip.decrement_hop_limit();
    false
}
