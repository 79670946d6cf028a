//! VXLAN from other nodes: which packets are pod-net's to decapsulate, and
//! the TC program's way of doing it. `xdp` does the same on the XDP hook.
//! Plain IP to a local pod is handed to `direct`.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_FIXED_GSO,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use aya_log_ebpf::warn;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vxlan::VxlanHdr,
};
use pod_net_common::{
    Config, Endpoint, Reason, endpoint::ENDPOINT_F_NO_BYPASS, event::CONFIG_F_NO_NAT_CHECK,
    remote::PEER_F_VXLAN,
};

use crate::{
    direct,
    maps::{LOCAL_ENDPOINTS, PEER_NODES},
    nat,
    packet::{ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, Packet, ensure_linear, ptr_at},
    parse::{Ip, IpPacket, Parsed, parse_l2_l3, valid_ipv4_at, valid_ipv6_at},
    redirect,
    verdict::Verdict,
};

/// More-fragments flag and fragment offset.
const IP_FRAGMENT_MASK: u16 = 0x3fff;
/// Fragment offset alone: set on every fragment but the first.
const IP_OFFSET_MASK: u16 = 0x1fff;

/// What an underlay packet is to pod-net.
pub enum Inbound {
    /// Not pod-net's, or pod-net leaves it to the kernel.
    Pass(Reason),
    /// Addressed to pod-net and invalid.
    Drop(Reason),
    /// VXLAN for a pod on this node: strip `outer_len` bytes after the
    /// outer Ethernet header and deliver. `inner` is the inner network
    /// header as it is before stripping (its kind is what matters after).
    Deliver {
        endpoint: &'static Endpoint,
        outer_len: usize,
        inner: Ip,
    },
    /// Plain unicast IP to a pod on this node: delivered by TC if a
    /// direct-routing node sent it (`direct::into_local_pod`).
    Direct {
        endpoint: &'static Endpoint,
        packet: IpPacket,
    },
}

/// The headers after the outer IP header, read through one pointer so the
/// verifier sees a single bounds check.
#[repr(C)]
struct TunnelHeaders {
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}

/// Classifies an underlay packet without changing it.
#[inline(always)]
pub fn classify(ctx: &impl Packet, config: &Config) -> Inbound {
    // L2 broadcast and multicast frames too: the kernel accepts a unicast
    // IP packet inside one, so the peer check must see them.
    let Parsed::Ip(packet) = parse_l2_l3(ctx) else {
        return Inbound::Pass(Reason::PassNotVxlan);
    };
    let to_node = match packet.ip {
        // SAFETY: bounds-checked by `parse_l2_l3`.
        Ip::V4(ip) => (unsafe { (*ip).dst_addr }) == config.node_ip,
        Ip::V6(_) => false,
    };
    // VXLAN is addressed to the node, never to a pod: no lookup on its path.
    // Plain IP to a pod is no tunnel, whatever its port.
    if !to_node
        // SAFETY: the value is only read, before anything can replace it.
        && let Some(endpoint) = unsafe { LOCAL_ENDPOINTS.get(packet.ip.dst().endpoint_key()) }
    {
        return if packet.l2_multicast {
            Inbound::Pass(Reason::PassNotVxlan)
        } else {
            Inbound::Direct { endpoint, packet }
        };
    }
    match packet.ip {
        Ip::V4(outer) => classify_vxlan(ctx, outer, packet.l2_multicast, config),
        Ip::V6(_) => Inbound::Pass(Reason::PassNotVxlan),
    }
}

/// An IPv4 underlay packet not addressed to a local pod: VXLAN for this
/// node, forged VXLAN, or none of pod-net's business.
#[inline(always)]
fn classify_vxlan(
    ctx: &impl Packet,
    outer: *mut Ipv4Hdr,
    l2_multicast: bool,
    config: &Config,
) -> Inbound {
    // SAFETY: bounds-checked by `parse_l2_l3`.
    let (src, dst, protocol, frags) = unsafe {
        let ip = &*outer;
        (
            ip.src_addr,
            ip.dst_addr,
            ip.proto,
            u16::from_be_bytes(ip.frags),
        )
    };
    if protocol != IPPROTO_UDP {
        return Inbound::Pass(Reason::PassNotVxlan);
    }
    let to_node = dst == config.node_ip;
    let fragment = frags & IP_FRAGMENT_MASK != 0;
    let not_vxlan = if fragment && to_node {
        Reason::PassOuterFragment
    } else {
        Reason::PassNotVxlan
    };
    // A later fragment has no UDP header; without its first fragment,
    // which is checked below, the kernel cannot reassemble it.
    if frags & IP_OFFSET_MASK != 0 {
        return Inbound::Pass(not_vxlan);
    }
    let udp_offset = EthHdr::LEN + Ip::V4(outer).header_len();
    if ensure_linear(ctx, udp_offset + size_of::<UdpHdr>()).is_err() {
        return Inbound::Pass(not_vxlan);
    }
    let Some(udp) = ptr_at::<UdpHdr>(ctx, udp_offset) else {
        return Inbound::Pass(not_vxlan);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if u16::from_be_bytes(unsafe { (*udp).dst }) != config.vxlan_port {
        return Inbound::Pass(not_vxlan);
    }
    // VXLAN carries no authentication: only a known node's is opened, by
    // this program or by the kernel's tunnel device, whose socket listens
    // on every local address and sees only what this program passes.
    // (A pod's own service on this port never gets here: see `classify`.)
    if !is_vxlan_peer(src) {
        return Inbound::Drop(Reason::DropUnknownPeer);
    }
    if !to_node || l2_multicast {
        return Inbound::Pass(Reason::PassNotVxlan);
    }
    if fragment {
        return Inbound::Pass(Reason::PassOuterFragment);
    }

    // UDP to this node's VXLAN port: pod-net's from here on.
    if ensure_linear(ctx, udp_offset + size_of::<TunnelHeaders>()).is_err() {
        return Inbound::Drop(Reason::DropMalformed);
    }
    let Some(headers) = ptr_at::<TunnelHeaders>(ctx, udp_offset) else {
        return Inbound::Drop(Reason::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let headers = unsafe { &*headers };
    if !headers.vxlan.vni_present() {
        return Inbound::Drop(Reason::DropMalformed);
    }
    if headers.vxlan.vni() != config.vni {
        return Inbound::Drop(Reason::DropVni);
    }
    let inner_offset = udp_offset + size_of::<TunnelHeaders>();
    let inner = match u16::from_be(headers.inner_eth.ether_type) {
        ETH_P_IP => {
            if ensure_linear(ctx, inner_offset + Ipv4Hdr::LEN).is_err() {
                return Inbound::Drop(Reason::DropMalformed);
            }
            match valid_ipv4_at(ctx, inner_offset) {
                Some(ip) => Ip::V4(ip),
                None => return Inbound::Drop(Reason::DropMalformed),
            }
        }
        ETH_P_IPV6 => {
            if ensure_linear(ctx, inner_offset + Ipv6Hdr::LEN).is_err() {
                return Inbound::Drop(Reason::DropMalformed);
            }
            match valid_ipv6_at(ctx, inner_offset) {
                Ok(ip) => Ip::V6(ip),
                Err(Parsed::Malformed) => return Inbound::Drop(Reason::DropMalformed),
                Err(Parsed::Ndp) => return Inbound::Pass(Reason::PassNdp),
                Err(_) => return Inbound::Pass(Reason::PassIpv6Ext),
            }
        }
        // ARP and friends: the kernel's tunnel device takes them.
        _ => return Inbound::Pass(Reason::PassNotIp),
    };
    let dst = inner.dst();
    // SAFETY: the value is only read, before anything can replace it.
    let Some(endpoint) = (unsafe { LOCAL_ENDPOINTS.get(dst.endpoint_key()) }) else {
        return Inbound::Pass(Reason::PassInnerNotLocal);
    };
    if endpoint.flags & ENDPOINT_F_NO_BYPASS != 0 {
        return Inbound::Pass(Reason::PassNoBypass);
    }
    // A reply to a local pod's flow that this node's kernel may have
    // NATed: its conntrack must see it (the tunnel device decapsulates).
    if config.flags & CONFIG_F_NO_NAT_CHECK == 0
        && let Some((_, dst_port)) = nat::ports(ctx, inner, inner_offset)
        && nat::is_reply_to_nat_client(dst, dst_port, inner.protocol())
    {
        return Inbound::Pass(Reason::PassNat);
    }
    // The receiving node is a router hop too.
    if inner.hop_limit() <= 1 {
        return Inbound::Pass(Reason::PassTtlExceeded);
    }
    Inbound::Deliver {
        endpoint,
        outer_len: inner_offset - EthHdr::LEN,
        inner,
    }
}

/// Whether `node_ip` is a node this node sends VXLAN to (see `peer_nodes`).
#[inline(always)]
fn is_vxlan_peer(node_ip: [u8; 4]) -> bool {
    // SAFETY: the value is only read, before anything can replace it.
    unsafe { PEER_NODES.get(node_ip) }.is_some_and(|peer| peer.flags & PEER_F_VXLAN != 0)
}

/// The TC program: decapsulate with `bpf_skb_adjust_room` and deliver with
/// `bpf_redirect_peer`.
#[inline(always)]
pub fn decide_and_act(ctx: &TcContext, config: &Config) -> Verdict {
    let (endpoint, outer_len, inner) = match classify(ctx, config) {
        Inbound::Pass(reason) => return Verdict::pass(reason),
        Inbound::Drop(reason) => return Verdict::drop(reason),
        Inbound::Direct { endpoint, packet } => {
            return direct::into_local_pod(ctx, &packet, endpoint, config);
        }
        Inbound::Deliver {
            endpoint,
            outer_len,
            inner,
        } => (endpoint, outer_len, inner),
    };
    // FIXED_GSO: for a GSO packet the MSS is the inner one already.
    // DECAP_L3: the skb's protocol becomes the inner packet's; the MAC
    // header left in front is the outer one, so its EtherType is set too.
    let decap_l3 = match inner {
        Ip::V4(_) => BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        Ip::V6(_) => BPF_F_ADJ_ROOM_DECAP_L3_IPV6,
    };
    if let Err(error) = ctx.adjust_room(
        -(outer_len as i32),
        BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | decap_l3),
    ) {
        // Rare and worth a line in the agent's log.
        warn!(ctx, "decap: bpf_skb_adjust_room failed: {}", error);
        return Verdict::pass(Reason::PassResizeFailed);
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), inner.at(ctx, EthHdr::LEN)) else {
        return Verdict::pass(Reason::PassResizeFailed);
    };
    ip.decrement_hop_limit();
    // SAFETY: bounds-checked just above.
    unsafe { (*eth).ether_type = ip.ether_type().to_be() };
    redirect::into_pod(eth, endpoint, Reason::Decap)
}
