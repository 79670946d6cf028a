//! VXLAN from other nodes, on the underlay's TC ingress: strip the outer
//! headers and deliver into the pod, or leave the packet to the kernel.
use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};
use pod_net_common::{Config, EndpointKey, Reason};

use crate::{
    csum::decrement_ttl,
    encap::VXLAN_FLAG_VNI,
    maps::{CONFIG, LOCAL_ENDPOINTS},
    parse::{
        ETH_P_IP, IPPROTO_UDP, Parsed, ensure_linear, ipv4_header_is_sane, parse_l2_l3, ptr_at,
    },
    redirect,
    verdict::Verdict,
};

const VXLAN_HLEN: usize = 8;
const IP_FRAGMENT_MASK: u16 = 0x3fff;

#[inline(always)]
pub fn decide_and_act(ctx: &TcContext) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return Verdict::pass(Reason::PassNotVxlan);
    };
    let Some(udp_offset) = vxlan_for_us(ctx, config) else {
        return Verdict::pass(Reason::PassNotVxlan);
    };
    if udp_offset == FRAGMENT {
        return Verdict::pass(Reason::PassOuterFragment);
    }
    decapsulate(ctx, config, udp_offset)
}

/// Marker offset for "an outer fragment": no UDP header to look at.
const FRAGMENT: usize = 0;

/// The offset of the UDP header if this is UDP to this node's VXLAN port
/// (`FRAGMENT` for a fragment of UDP to this node), else `None`.
#[inline(always)]
fn vxlan_for_us(ctx: &TcContext, config: &Config) -> Option<usize> {
    let Parsed::Ipv4(outer) = parse_l2_l3(ctx) else {
        return None;
    };
    // SAFETY: bounds-checked by `parse_l2_l3`.
    let (dst, protocol, frags) = unsafe {
        let ip = &*outer.ip;
        (ip.dst_addr, ip.proto, u16::from_be_bytes(ip.frags))
    };
    if dst != config.node_ip || protocol != IPPROTO_UDP {
        return None;
    }
    if frags & IP_FRAGMENT_MASK != 0 {
        return Some(FRAGMENT);
    }
    let udp_offset = EthHdr::LEN + outer.ip_header_len();
    ensure_linear(ctx, udp_offset + size_of::<UdpHdr>()).ok()?;
    let udp = ptr_at::<UdpHdr>(ctx, udp_offset)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let port = u16::from_be_bytes(unsafe { (*udp).dst });
    (port == config.vxlan_port).then_some(udp_offset)
}

/// The headers after the outer IP header, read through one pointer so the
/// verifier sees a single bounds check.
#[repr(C)]
struct TunnelHeaders {
    udp: UdpHdr,
    vxlan: [u8; VXLAN_HLEN],
    inner_eth: EthHdr,
    inner_ip: Ipv4Hdr,
}

#[inline(always)]
fn decapsulate(ctx: &TcContext, config: &Config, udp_offset: usize) -> Verdict {
    if ensure_linear(ctx, udp_offset + size_of::<TunnelHeaders>()).is_err() {
        return Verdict::drop(Reason::DropMalformed);
    }
    let Some(headers) = ptr_at::<TunnelHeaders>(ctx, udp_offset) else {
        return Verdict::drop(Reason::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let headers = unsafe { &mut *headers };
    if headers.vxlan[0] & VXLAN_FLAG_VNI == 0 {
        return Verdict::drop(Reason::DropMalformed);
    }
    let vni = u32::from_be_bytes([0, headers.vxlan[4], headers.vxlan[5], headers.vxlan[6]]);
    if vni != config.vni {
        return Verdict::drop(Reason::DropVni);
    }
    if u16::from_be(headers.inner_eth.ether_type) != ETH_P_IP {
        // ARP and friends: the kernel's tunnel device takes them.
        return Verdict::pass(Reason::PassNotIp);
    }
    let inner_ip_offset = udp_offset + size_of::<TunnelHeaders>() - Ipv4Hdr::LEN;
    if !ipv4_header_is_sane(
        &headers.inner_ip,
        ctx.len().saturating_sub(inner_ip_offset as u32),
    ) {
        return Verdict::drop(Reason::DropMalformed);
    }
    // SAFETY: the value is only read, before anything can replace it.
    let Some(endpoint) =
        (unsafe { LOCAL_ENDPOINTS.get(EndpointKey::ipv4(headers.inner_ip.dst_addr)) })
    else {
        return Verdict::pass(Reason::PassInnerNotLocal);
    };
    // The receiving node is a router hop too.
    if headers.inner_ip.ttl <= 1 {
        return Verdict::pass(Reason::PassTtlExceeded);
    }
    let outer_len = (inner_ip_offset - EthHdr::LEN) as i32;
    // FIXED_GSO: for a GSO packet the MSS is the inner one already.
    if ctx
        .adjust_room(
            -outer_len,
            BPF_ADJ_ROOM_MAC,
            u64::from(BPF_F_ADJ_ROOM_FIXED_GSO),
        )
        .is_err()
    {
        return Verdict::pass(Reason::PassResizeFailed);
    }
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN),
    ) else {
        return Verdict::pass(Reason::PassResizeFailed);
    };
    // SAFETY: bounds-checked just above.
    unsafe { decrement_ttl(&mut *ip) };
    redirect::into_pod(eth, endpoint, Reason::Decap)
}
