//! VXLAN encapsulation in BPF (RFC 7348) for pods on other nodes.
//!
//! The frame grows by 50 bytes in front of its IP header
//! (`bpf_skb_adjust_room` with the encap flags, so GSO keeps working as UDP
//! tunnel GSO), the outer headers are written in place, and
//! `bpf_redirect_neigh` sends it out of the underlay with the next hop's MAC
//! resolved by the kernel's FIB and neighbour table.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect_neigh},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use pod_net_common::{
    Config, Reason, RemoteNode,
    config::VXLAN_OVERHEAD,
    remote::{REMOTE_F_VTEP_MAC, derived_vtep_mac},
};

use crate::{
    csum::ipv4_header_checksum,
    ip::IP_DF,
    mtu,
    packet::{ETH_P_IP, IPPROTO_UDP, ptr_at},
    parse::IpPacket,
    verdict::Verdict,
};

/// Everything in front of the inner IP header after encapsulation.
#[repr(C)]
pub struct VxlanHeaders {
    pub outer_eth: EthHdr,
    pub tunnel: TunnelHeaders,
}

/// The headers after the outer Ethernet header, written whole for each
/// packet. The outer MACs are not written: `bpf_redirect_neigh` fills
/// them in, and a 12-byte zeroing would cost a byte-loop memset call
/// (bpf-linker's) on every encapsulated packet.
#[repr(C)]
pub struct TunnelHeaders {
    pub outer_ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
}

const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | ((EthHdr::LEN as u64) << 56);
/// What encapsulation adds to a frame's length to make the outer IPv4
/// datagram's: the headers, less the outer Ethernet header.
const OUTER_LEN_GROWTH: u32 = VXLAN_OVERHEAD - EthHdr::LEN as u32;
/// The kernel's default ephemeral range, as `udp_flow_src_port` uses it.
const SOURCE_PORT_MIN: u32 = 32768;
const SOURCE_PORT_SPAN: u32 = 60999 - 32768;

#[inline(always)]
pub fn to_remote_node(
    ctx: &TcContext,
    packet: &IpPacket,
    remote: &RemoteNode,
    config: &Config,
) -> Verdict {
    let ip = packet.ip;
    if let Some(verdict) = mtu::kernel_answers_hop(ctx, ip, config, VXLAN_OVERHEAD) {
        return verdict;
    }
    // A BIG TCP super-packet would need an outer IPv4 and UDP length past
    // 16 bits; whoever reads those headers before segmentation (a bridge's
    // netfilter, a kernel VXLAN peer) would trim it. The kernel segments it
    // for its own tunnel device instead.
    if ctx.len() + OUTER_LEN_GROWTH > u32::from(u16::MAX) {
        return Verdict::pass(Reason::PassBigGso);
    }
    let tos = ip.traffic_class();
    // SAFETY: plain helper call on our own context.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };

    if let Err(error) = ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS) {
        // Rare and worth a line in the agent's log.
        warn!(ctx, "encap: bpf_skb_adjust_room failed: {}", error);
        return Verdict::pass(Reason::PassResizeFailed);
    }
    // The packet moved: every pointer is taken afresh.
    let (Some(headers), Some(inner_ip)) = (
        ptr_at::<VxlanHeaders>(ctx, 0),
        ip.at(ctx, size_of::<VxlanHeaders>()),
    ) else {
        return Verdict::pass(Reason::PassResizeFailed);
    };
    let outer_len = (ctx.len() - EthHdr::LEN as u32) as u16;
    inner_ip.decrement_hop_limit();
    let outer = Outer {
        len: outer_len,
        tos,
        source_port: source_port(hash),
        inner_ether_type: ip.ether_type(),
    };
    // SAFETY: bounds-checked just above.
    unsafe {
        (*headers).outer_eth.ether_type = ETH_P_IP.to_be();
        (*headers).tunnel = build_headers(config, remote, &outer);
    }
    // SAFETY: a plain helper call; it only records the target.
    let action =
        unsafe { bpf_redirect_neigh(config.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    Verdict::redirected(action, Reason::Encap)
}

/// What the outer headers carry that depends on the packet.
struct Outer {
    /// The outer IP datagram's length.
    len: u16,
    /// DSCP and ECN, carried over as RFC 6040's normal mode has it.
    tos: u8,
    source_port: u16,
    inner_ether_type: u16,
}

/// The tunnel headers for a packet.
#[inline(always)]
fn build_headers(config: &Config, remote: &RemoteNode, outer: &Outer) -> TunnelHeaders {
    let mut outer_ip = Ipv4Hdr {
        vihl: 0x45,
        tos: outer.tos,
        tot_len: outer.len.to_be_bytes(),
        id: [0, 0],
        // DF: the MTU check above guarantees every segment fits.
        frags: [IP_DF, 0],
        ttl: 64,
        proto: IPPROTO_UDP,
        check: [0, 0],
        src_addr: config.node_ip,
        dst_addr: remote.node_ip,
    };
    outer_ip.check = ipv4_header_checksum(&outer_ip);
    let vni = config.vni;
    let inner_dst = if remote.flags & REMOTE_F_VTEP_MAC != 0 {
        remote.vtep_mac
    } else {
        derived_vtep_mac(remote.node_ip)
    };
    TunnelHeaders {
        outer_ip,
        udp: UdpHdr {
            src: outer.source_port.to_be_bytes(),
            dst: config.vxlan_port.to_be_bytes(),
            len: (outer.len - Ipv4Hdr::LEN as u16).to_be_bytes(),
            // Zero UDP checksum over IPv4, as RFC 7348 recommends.
            check: [0, 0],
        },
        vxlan: VxlanHdr::new(vni),
        inner_eth: EthHdr {
            dst_addr: inner_dst,
            src_addr: config.vtep_mac,
            ether_type: outer.inner_ether_type.to_be(),
        },
    }
}

/// A source port from the flow hash, in the kernel's ephemeral range, so
/// ECMP in the underlay spreads flows and keeps each on one path.
#[inline(always)]
fn source_port(hash: u32) -> u16 {
    (SOURCE_PORT_MIN + ((u64::from(hash) * u64::from(SOURCE_PORT_SPAN)) >> 32) as u32) as u16
}
