//! Direct routing (`node add --direct`): pod traffic between nodes on one
//! L2 segment, unencapsulated. Each node is one router hop, as the kernel
//! would be with a route to the other node's pod CIDR via its address.
use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use pod_net_common::{Config, Reason, RemoteNode};

use crate::{
    mtu,
    parse::{Ip, IpPacket},
    verdict::Verdict,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Sends a pod's packet to `remote`, a direct-routing node, out of the
/// underlay as it is but for the hop: no headers added, and the MACs
/// filled in by `bpf_redirect_neigh` from the neighbour table.
#[inline(always)]
pub fn to_direct_node(
    ctx: &TcContext,
    packet: &IpPacket,
    remote: &RemoteNode,
    config: &Config,
) -> Verdict {
    let ip = packet.ip;
    // A router hop: the kernel answers expired TTLs with ICMP.
    if ip.hop_limit() <= 1 {
        return Verdict::pass(Reason::PassTtlExceeded);
    }
    if mtu::exceeds_underlay_mtu(ctx, ip, config, 0) {
        return mtu::pass_too_big(ip);
    }
    ip.decrement_hop_limit();
    let mut next_hop = next_hop(ip, remote.node_ip);
    // SAFETY: a plain helper call; it copies the next hop and records the
    // target.
    let action = unsafe {
        bpf_redirect_neigh(
            config.underlay_ifindex,
            &raw mut next_hop,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    Verdict::redirected(action, Reason::DirectOut)
}

/// The node itself as the next hop, not the route to the pod: IPv4 by its
/// address; IPv6 by `fe80::` + that address, which user space puts on each
/// node's underlay (`tunnel::link_local_next_hop`). For an IPv6 packet the
/// kernel reads the IPv6 next hop whatever the family says.
#[inline(always)]
fn next_hop(ip: Ip, node_ip: [u8; 4]) -> bpf_redir_neigh {
    let [a, b, c, d] = node_ip;
    let (nh_family, bytes) = match ip {
        Ip::V4(_) => (AF_INET, [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Ip::V6(_) => (
            AF_INET6,
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d],
        ),
    };
    // Network order as it lies in memory; `ipv4_nh` is the first word.
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    bpf_redir_neigh {
        nh_family,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
            ipv6_nh: [word(0), word(4), word(8), word(12)],
        },
    }
}
