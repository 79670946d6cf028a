//! IPv6 pods under `BPF_PROG_TEST_RUN`: local redirect, hop limit, anti-
//! spoofing, VXLAN over the IPv4 underlay with inner IPv6 both ways, and
//! the NAT check, exact bytes in and out.

use std::net::{Ipv4Addr, Ipv6Addr};

use pod_net_tests::{
    decode,
    frames::{self, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4, Ipv6},
    require_root,
    testrun::{Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, endpoint},
};

const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const NODE_3: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 3);
const POD_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
const POD_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 3);
const REMOTE_NET: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0);
const REMOTE_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 7);
const PINNED_POD: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 9);
const SERVICE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const MAC_A: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 3];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const NODE_1_VTEP: [u8; 6] = [0x0e, 0x6e, 192, 168, 100, 1];
const NODE_2_VTEP: [u8; 6] = [0x0e, 0x6e, 192, 168, 100, 2];
const FLANNEL_VTEP: [u8; 6] = [0x5a, 0x11, 0x22, 0x33, 0x44, 0x55];
const VNI: u32 = 1;
const PORT: u16 = 8472;
/// Offset of the hop limit in an Ethernet + IPv6 frame.
const HOP_LIMIT: usize = 14 + 7;

/// Node 1: pods A (sending from test run's loopback) and B local; the
/// remote /64 on node 2, one pod of it pinned to node 3 (a flannel node).
fn node_1() -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    harness.set_underlay(NODE_1, VNI, PORT).unwrap();
    harness
        .add_endpoint(POD_A, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    harness
        .add_endpoint(POD_B, endpoint(42, MAC_B, GATEWAY_MAC))
        .unwrap();
    harness.add_remote(REMOTE_NET, 64, NODE_2, None).unwrap();
    harness
        .add_remote(PINNED_POD, 128, NODE_3, Some(FLANNEL_VTEP))
        .unwrap();
    harness
}

fn ping6(dst_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let ip = Ipv6 {
        hop_limit,
        ..Ipv6::new(src, dst, IPPROTO_ICMPV6)
    };
    frames::ping6_frame(dst_mac, MAC_A, &ip)
}

/// `frame` as pod B must receive it: to B's MAC from the gateway's, hop
/// limit lowered by `hops`.
fn delivered_to_b(frame: &[u8], hops: u8) -> Vec<u8> {
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&MAC_B);
    expected[6..12].copy_from_slice(&GATEWAY_MAC);
    expected[HOP_LIMIT] -= hops;
    expected
}

#[test]
fn bridged_ipv6_to_a_local_pod_is_redirected_as_it_is() {
    require_root!();
    let harness = node_1();
    let frame = ping6(MAC_B, POD_A, POD_B, 64);
    let run = harness.run(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.output, delivered_to_b(&frame, 0));
    let len = frame.len() as u64;
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("redirect_local", 1, len)]
    );
}

#[test]
fn routed_ipv6_loses_one_hop_and_expires_at_one() {
    require_root!();
    let harness = node_1();
    let frame = ping6(GATEWAY_MAC, POD_A, POD_B, 64);
    let run = harness.run(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.output, delivered_to_b(&frame, 1));

    // Hop limit 1: the kernel answers with ICMPv6 time exceeded.
    let harness = node_1();
    let expiring = ping6(GATEWAY_MAC, POD_A, POD_B, 1);
    let run = harness.run(&expiring).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(run.output, expiring);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("pass_ttl_exceeded", 1, expiring.len() as u64)]
    );
}

#[test]
fn ipv6_from_an_address_the_pod_does_not_own_is_dropped() {
    require_root!();
    let harness = node_1();
    // B's address, sent from A's interface.
    let forged = ping6(MAC_A, POD_B, POD_A, 64);
    let run = harness.run(&forged).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("drop_spoofed", 1, forged.len() as u64)]
    );
}

/// What node 1 must emit for `inner` (IPv6 that A sent to its gateway):
/// outer IPv4/UDP/VXLAN to `node`, the inner Ethernet to `vtep` from node
/// 1's VTEP with the IPv6 Ethernet type, and one hop fewer. The UDP source port
/// is the flow hash's, so it is taken from `output`. The outer MACs are A's
/// frame's, untouched: `bpf_redirect_neigh` writes the underlay's on the way
/// out, which a test run does not do.
fn expected_encap(inner: &[u8], node: Ipv4Addr, vtep: [u8; 6], output: &[u8]) -> Vec<u8> {
    let outer_macs = frames::macs_of(inner);
    let mut inner = inner.to_vec();
    inner[0..6].copy_from_slice(&vtep);
    inner[6..12].copy_from_slice(&NODE_1_VTEP);
    inner[HOP_LIMIT] -= 1;
    let outer = Ipv4 {
        identification: 0,
        ..Ipv4::new(NODE_1, node, IPPROTO_UDP)
    };
    let source_port = decode::vxlan(output).unwrap().udp.source_port;
    frames::vxlan_frame(outer_macs, &outer, (source_port, PORT), VNI, &inner)
}

#[test]
fn ipv6_to_a_remote_pod_is_vxlan_encapsulated_over_the_ipv4_underlay() {
    require_root!();
    // A remote /64 (the trie) and a pinned /128 (remote_pods, flannel MAC).
    for (dst, node, vtep) in [
        (REMOTE_POD, NODE_2, NODE_2_VTEP),
        (PINNED_POD, NODE_3, FLANNEL_VTEP),
    ] {
        let harness = node_1();
        let frame = ping6(GATEWAY_MAC, POD_A, dst, 64);
        let run = harness.run(&frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{dst}");
        assert_eq!(
            run.output,
            expected_encap(&frame, node, vtep, &run.output),
            "{dst}"
        );
        let wire = decode::vxlan(&run.output).unwrap();
        let inner = decode::Ethernet2Header::from_slice(wire.inner).unwrap().0;
        assert_eq!(inner.ether_type, decode::EtherType::IPV6);
        assert_eq!(
            wire.outer.header_checksum,
            wire.outer.calc_header_checksum()
        );
        assert_eq!(
            harness.nonzero_counters().unwrap(),
            [("encap", 1, frame.len() as u64)]
        );
    }
}

#[test]
fn vxlan_with_inner_ipv6_is_decapsulated_into_the_pod() {
    require_root!();
    let vxlan = |hop_limit: u8| {
        let ip = Ipv6 {
            hop_limit,
            ..Ipv6::new(REMOTE_POD, POD_B, IPPROTO_ICMPV6)
        };
        let mut inner = frames::ping6_frame(NODE_1_VTEP, NODE_2_VTEP, &ip);
        inner[6..12].copy_from_slice(&NODE_2_VTEP);
        let outer = Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP);
        let frame = frames::vxlan_frame(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            &outer,
            (50000, PORT),
            VNI,
            &inner,
        );
        (frame, inner)
    };
    let harness = node_1();
    let (frame, inner) = vxlan(64);
    let run = harness.run_underlay(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.output, delivered_to_b(&inner, 1));
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("decap", 1, frame.len() as u64)]
    );

    // The receiving node is a hop too: at 1, the kernel's tunnel device.
    let harness = node_1();
    let (frame, _) = vxlan(1);
    let run = harness.run_underlay(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(run.output, frame);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("pass_ttl_exceeded", 1, frame.len() as u64)]
    );
}

#[test]
fn ipv6_replies_to_a_flow_the_kernel_took_go_to_the_kernel() {
    require_root!();
    // A and B both on test run's interface, so both may send.
    let mut harness = Harness::new().expect("load pod-net object");
    for (pod, mac) in [(POD_A, MAC_A), (POD_B, MAC_B)] {
        harness
            .add_endpoint(pod, endpoint(LOOPBACK_IFINDEX, mac, GATEWAY_MAC))
            .unwrap();
    }
    // A connects to a service address: not a pod, the kernel DNATs it.
    let to_service = Ipv6::new(POD_A, SERVICE, IPPROTO_TCP);
    let syn = frames::tcp6_syn_frame((GATEWAY_MAC, MAC_A), &to_service, (40000, 443));
    assert_eq!(harness.run(&syn).unwrap().action, TC_ACT_OK);
    // The backend B answers A's port directly: conntrack must see it.
    let reply_ip = Ipv6::new(POD_B, POD_A, IPPROTO_TCP);
    let reply = frames::tcp6_syn_frame((MAC_A, MAC_B), &reply_ip, (443, 40000));
    let run = harness.run(&reply).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(run.output, reply);
    // Another port of A is a flow the kernel never saw: fast path.
    let other = frames::tcp6_syn_frame((MAC_A, MAC_B), &reply_ip, (443, 40001));
    assert_eq!(harness.run(&other).unwrap().action, TC_ACT_REDIRECT);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [
            ("redirect_local", 1, other.len() as u64),
            ("pass_unknown_dst", 1, syn.len() as u64),
            ("pass_nat", 1, reply.len() as u64),
        ]
    );
}

#[test]
fn link_local_ipv6_stays_with_the_kernel() {
    require_root!();
    let harness = node_1();
    let link_local = |last| Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last);
    // Unregistered, yet not spoofed: on-link, the bridge's to carry.
    let frame = ping6(MAC_B, link_local(1), link_local(2), 64);
    let run = harness.run(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(run.output, frame);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("pass_link_local", 1, frame.len() as u64)]
    );
}
