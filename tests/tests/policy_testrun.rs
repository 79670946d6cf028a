//! Correct beside the kernel stack, under `BPF_PROG_TEST_RUN`:
//! anti-spoofing, the per-pod opt-out, and replies of flows the kernel may
//! have NATed.

use std::net::Ipv4Addr;

use pod_net_common::{
    endpoint::ENDPOINT_F_NO_BYPASS,
    event::{CONFIG_F_NO_ANTI_SPOOF, CONFIG_F_NO_NAT_CHECK},
};
use pod_net_tests::{
    frames::{self, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4},
    require_root,
    testrun::{self, Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, endpoint},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const MAC_A: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 3];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);

/// Pods A and B on this node; each test sends as one of them from the
/// test-run device (loopback), so that one is registered there.
fn node(sender: Ipv4Addr, flags: u32) -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    for (ip, mac) in [(POD_A, MAC_A), (POD_B, MAC_B)] {
        let ifindex = if ip == sender {
            LOOPBACK_IFINDEX
        } else {
            40 + u32::from(mac[5])
        };
        harness
            .add_endpoint(
                ip,
                testrun::Endpoint {
                    flags: 0,
                    ..endpoint(ifindex, mac, GATEWAY_MAC)
                },
            )
            .unwrap();
    }
    harness.set_flags(flags).unwrap();
    harness
}

fn ping(src: Ipv4Addr, src_mac: [u8; 6], dst: Ipv4Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    frames::ping_frame(dst_mac, src_mac, &Ipv4::new(src, dst, IPPROTO_ICMP))
}

#[test]
fn a_forged_source_is_dropped_unless_anti_spoofing_is_off() {
    require_root!();
    let forged = ping(Ipv4Addr::new(10, 244, 1, 77), MAC_A, POD_B, MAC_B);
    let harness = node(POD_A, 0);
    let run = harness.run(&forged).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("drop_spoofed", 1, forged.len() as u64)]
    );

    // B's address, sent from A's veth: another pod's IP is forged too.
    let as_b = ping(POD_B, MAC_A, POD_A, MAC_A);
    let run = harness.run(&as_b).unwrap();
    assert_eq!(run.action, TC_ACT_SHOT);

    let lenient = node(POD_A, CONFIG_F_NO_ANTI_SPOOF);
    assert_eq!(lenient.run(&forged).unwrap().action, TC_ACT_REDIRECT);
}

#[test]
fn a_no_bypass_pod_keeps_both_directions_on_the_kernel_path() {
    require_root!();
    for sender_no_bypass in [true, false] {
        let mut harness = node(POD_A, 0);
        // Mark A (the sender) or B (the receiver) no-bypass.
        let (ip, mac, ifindex) = if sender_no_bypass {
            (POD_A, MAC_A, LOOPBACK_IFINDEX)
        } else {
            (POD_B, MAC_B, 43)
        };
        harness
            .add_endpoint(
                ip,
                testrun::Endpoint {
                    flags: ENDPOINT_F_NO_BYPASS,
                    ..endpoint(ifindex, mac, GATEWAY_MAC)
                },
            )
            .unwrap();
        let frame = ping(POD_A, MAC_A, POD_B, MAC_B);
        let run = harness.run(&frame).unwrap();
        assert_eq!((run.action, &run.output), (TC_ACT_OK, &frame));
        assert_eq!(
            harness.nonzero_counters().unwrap(),
            [("pass_no_bypass", 1, frame.len() as u64)]
        );
    }
}

#[test]
fn replies_to_a_flow_that_went_to_the_kernel_go_to_the_kernel() {
    require_root!();
    for (protocol, name) in [(IPPROTO_TCP, "tcp"), (IPPROTO_UDP, "udp")] {
        // A opens a flow to a service IP from port 40000: the kernel takes
        // it (and may DNAT it to B).
        let mut harness = node(POD_A, 0);
        let request = l4_frame(
            protocol,
            (POD_A, MAC_A),
            (SERVICE, GATEWAY_MAC),
            (40000, 80),
        );
        assert_eq!(harness.run(&request).unwrap().action, TC_ACT_OK, "{name}");
        // B answers A:40000: that reply is conntrack's to un-NAT.
        let (ip, ifindex) = (POD_B, LOOPBACK_IFINDEX);
        harness
            .add_endpoint(ip, endpoint(ifindex, MAC_B, GATEWAY_MAC))
            .unwrap();
        harness
            .add_endpoint(POD_A, endpoint(41, MAC_A, GATEWAY_MAC))
            .unwrap();
        let reply = l4_frame(protocol, (POD_B, MAC_B), (POD_A, MAC_A), (5201, 40000));
        let run = harness.run(&reply).unwrap();
        assert_eq!((run.action, &run.output), (TC_ACT_OK, &reply), "{name}");
        let other_port = l4_frame(protocol, (POD_B, MAC_B), (POD_A, MAC_A), (5201, 40001));
        assert_eq!(
            harness.run(&other_port).unwrap().action,
            TC_ACT_REDIRECT,
            "{name}"
        );
        assert_eq!(
            harness.nonzero_counters().unwrap(),
            [
                ("redirect_local", 1, other_port.len() as u64),
                ("pass_unknown_dst", 1, request.len() as u64),
                ("pass_nat", 1, reply.len() as u64),
            ],
            "{name}"
        );
        // Without the NAT check the reply takes the fast path.
        harness.set_flags(CONFIG_F_NO_NAT_CHECK).unwrap();
        assert_eq!(
            harness.run(&reply).unwrap().action,
            TC_ACT_REDIRECT,
            "{name}"
        );
    }
}

#[test]
fn vxlan_replies_to_a_flow_that_went_to_the_kernel_go_to_the_kernel() {
    require_root!();
    let mut harness = node(POD_A, 0);
    harness.set_underlay(NODE_1, 1, 8472).unwrap();
    harness.add_peer(NODE_2).unwrap();
    let request = l4_frame(
        IPPROTO_TCP,
        (POD_A, MAC_A),
        (SERVICE, GATEWAY_MAC),
        (40000, 80),
    );
    assert_eq!(harness.run(&request).unwrap().action, TC_ACT_OK);
    // The service backend on node 2 answers; node 2 encapsulated it.
    let remote = Ipv4Addr::new(10, 244, 2, 7);
    let reply = l4_frame(
        IPPROTO_TCP,
        (remote, [0x0e; 6]),
        (POD_A, [0x0e; 6]),
        (5201, 40000),
    );
    let vxlan = frames::vxlan_frame(
        ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
        &Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP),
        (50000, 8472),
        1,
        &reply,
    );
    let run = harness.run_underlay(&vxlan).unwrap();
    assert_eq!((run.action, &run.output), (TC_ACT_OK, &vxlan));
    let counters = harness.nonzero_counters().unwrap();
    assert!(
        counters.contains(&("pass_nat", 1, vxlan.len() as u64)),
        "{counters:?}"
    );
}

/// A TCP SYN or a small UDP datagram between two (IP, MAC) ends.
fn l4_frame(
    protocol: u8,
    src: (Ipv4Addr, [u8; 6]),
    dst: (Ipv4Addr, [u8; 6]),
    ports: (u16, u16),
) -> Vec<u8> {
    let ip = Ipv4::new(src.0, dst.0, protocol);
    if protocol == IPPROTO_TCP {
        return frames::tcp_syn_frame((dst.1, src.1), &ip, ports);
    }
    frames::udp_frame((dst.1, src.1), &ip, ports, b"query")
}
