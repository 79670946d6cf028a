//! Direct routing (`node add --direct`): pod traffic between nodes on one
//! L2 segment, unencapsulated. Each node is one router hop, as the kernel
//! would be with a route to the other node's pod CIDR via its address.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT, bpf_fib_lookup,
        bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use network_types::eth::EthHdr;
use pod_net_common::{
    Config, Endpoint, Reason, RemoteNode, endpoint::ENDPOINT_F_NO_BYPASS,
    event::CONFIG_F_NO_NAT_CHECK, remote::REMOTE_F_DIRECT,
};

use crate::{
    mtu, nat,
    parse::{Ip, IpPacket},
    redirect, remote,
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
    if let Some(verdict) = mtu::kernel_answers_hop(ctx, ip, config, 0) {
        return verdict;
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

/// Plain unicast IP from the underlay to `endpoint`, a pod on this node:
/// delivered into it if a direct-routing node sent it from one of its
/// pods, else left to the kernel, which routes it with its forwarding
/// rules. (`decap::classify` found it; this is TC's alone, XDP leaves it.)
#[inline(always)]
pub fn into_local_pod(
    ctx: &TcContext,
    packet: &IpPacket,
    endpoint: &Endpoint,
    config: &Config,
) -> Verdict {
    let ip = packet.ip;
    let Some(node) = remote::node_of(ip.src()).filter(|node| node.flags & REMOTE_F_DIRECT != 0)
    else {
        return Verdict::pass(Reason::PassNotDirectPeer);
    };
    if let Err(reason) = check_sender(ctx, packet.eth, node.node_ip, config) {
        return Verdict::pass(reason);
    }
    if endpoint.flags & ENDPOINT_F_NO_BYPASS != 0 {
        return Verdict::pass(Reason::PassNoBypass);
    }
    // A reply to a local pod's flow that this node's kernel may have
    // NATed: its conntrack must see it.
    if config.flags & CONFIG_F_NO_NAT_CHECK == 0
        && let Some((_, dst_port)) = nat::ports(ctx, ip, EthHdr::LEN)
        && nat::is_reply_to_nat_client(ip.dst(), dst_port, ip.protocol())
    {
        return Verdict::pass(Reason::PassNat);
    }
    // This node is a router hop too.
    if ip.hop_limit() <= 1 {
        return Verdict::pass(Reason::PassTtlExceeded);
    }
    ip.decrement_hop_limit();
    redirect::into_pod(packet.eth, endpoint, Reason::DirectIn)
}

/// Whether the frame came from `node_ip` itself: its source MAC is that
/// node's in the neighbour table, on the interface it arrived on. Plain IP
/// carries no proof of its sender, and a pod address is no secret; the
/// MAC at least pins it to the node's port on the segment.
#[inline(always)]
fn check_sender(
    ctx: &TcContext,
    eth: *mut EthHdr,
    node_ip: [u8; 4],
    config: &Config,
) -> Result<(), Reason> {
    // SAFETY: reading a field of our own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut storage = core::mem::MaybeUninit::uninit();
    let params = FibParams::zero(&mut storage);
    params.family = AF_INET as u8;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(config.node_ip);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(node_ip);
    // DIRECT: the main table, without policy rules; the node's address is
    // on a connected route. The helper fails with FWD_DISABLED when the
    // interface does not forward IPv4, as then the kernel would not either.
    // SAFETY: a plain helper call on our own context and stack.
    let result = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &raw mut *params,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_DIRECT,
        )
    };
    if result == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Err(Reason::PassDirectUnresolved);
    }
    // SAFETY: `classify` bounds-checked the Ethernet header; the lookup
    // does not move the packet.
    let sender_mac = unsafe { (*eth).src_addr };
    if result != i64::from(BPF_FIB_LKUP_RET_SUCCESS)
        || params.ifindex != ifindex
        || params.dmac != sender_mac
    {
        return Err(Reason::PassNotDirectPeer);
    }
    Ok(())
}

/// A `bpf_fib_lookup` on an 8-byte boundary, so that it can be zeroed with
/// eight 8-byte stores. `mem::zeroed` is a 64-byte memset, which bpf-linker
/// leaves as a call to a byte-loop subprogram: some 320 instructions on
/// every direct packet received.
#[repr(C, align(8))]
struct FibParams {
    params: bpf_fib_lookup,
}

impl FibParams {
    /// Zeroes `storage` in place (a zeroed value returned would be copied,
    /// and that copy is a memset again) and hands out the request.
    #[inline(always)]
    fn zero(storage: &mut core::mem::MaybeUninit<Self>) -> &mut bpf_fib_lookup {
        const WORDS: usize = size_of::<FibParams>() / 8;
        let words = storage.as_mut_ptr().cast::<u64>();
        for index in 0..WORDS {
            // SAFETY: inside `storage`, 8-byte aligned. Volatile, so that
            // LLVM does not merge the stores back into a memset.
            unsafe { words.add(index).write_volatile(0) };
        }
        // SAFETY: every byte is written; all zeros is a valid request.
        unsafe { &mut storage.assume_init_mut().params }
    }
}
