//! What a pod or a stranger on the underlay must not get through, under
//! `BPF_PROG_TEST_RUN`: forged VXLAN (decapsulated only from known nodes,
//! never sent by a pod to a node) and forged sources in broadcast frames.

use std::net::Ipv4Addr;

use pod_net_tests::{
    frames::{self, IPPROTO_ICMP, IPPROTO_UDP, Ipv4},
    require_root,
    testrun::{
        Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, endpoint,
    },
};

const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
/// On the underlay, but no remote entry sends to it.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 66);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
const MAC_A: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 3];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const NODE_2_VTEP: [u8; 6] = [0x0e, 0x6e, 192, 168, 100, 2];
const BROADCAST: [u8; 6] = [0xff; 6];
const MULTICAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];
const VNI: u32 = 1;
const PORT: u16 = 8472;

/// Node 1: pod A on the test-run device (loopback), pod B elsewhere;
/// 10.244.2.0/24 on node 2, which is therefore a VXLAN peer.
fn node_1() -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    harness.set_underlay(NODE_1, VNI, PORT).unwrap();
    harness
        .add_endpoint(POD_A, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    harness
        .add_endpoint(POD_B, endpoint(43, MAC_B, GATEWAY_MAC))
        .unwrap();
    harness
        .add_remote(Ipv4Addr::new(10, 244, 2, 0), 24, NODE_2, None)
        .unwrap();
    harness
}

/// A VXLAN packet whose inner frame is a ping from `inner_src` to pod B:
/// the forgery a pod would want delivered.
fn forged_vxlan(outer: &Ipv4, dst_mac: [u8; 6]) -> Vec<u8> {
    let inner = frames::ping_frame(
        MAC_B,
        NODE_2_VTEP,
        &Ipv4 {
            ttl: 63,
            ..Ipv4::new(Ipv4Addr::new(10, 244, 9, 9), POD_B, IPPROTO_ICMP)
        },
    );
    frames::vxlan_frame(
        (dst_mac, [2, 0, 0, 0, 0, 66]),
        outer,
        (50000, PORT),
        VNI,
        &inner,
    )
}

fn assert_counted(harness: &Harness, name: &str, reason: &str, frame: &[u8]) {
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [(reason, 1, frame.len() as u64)],
        "{name}: wrong counter"
    );
}

#[test]
fn vxlan_from_a_stranger_is_dropped_before_anyone_decapsulates_it() {
    require_root!();
    let node_mac = [2, 0, 0, 0, 0, 1];
    let first_fragment = Ipv4 {
        flags_fragment: 0x2000,
        ..Ipv4::new(STRANGER, NODE_1, IPPROTO_UDP)
    };
    let cases = [
        (
            "to the node address",
            forged_vxlan(&Ipv4::new(STRANGER, NODE_1, IPPROTO_UDP), node_mac),
        ),
        // The kernel's tunnel socket listens on every local address.
        (
            "to another address of the node",
            forged_vxlan(&Ipv4::new(STRANGER, GATEWAY, IPPROTO_UDP), node_mac),
        ),
        // The kernel would reassemble it and decapsulate the whole.
        (
            "as a first fragment",
            forged_vxlan(&first_fragment, node_mac),
        ),
        // The kernel accepts unicast IP inside a broadcast frame.
        (
            "in a broadcast frame",
            forged_vxlan(&Ipv4::new(STRANGER, NODE_1, IPPROTO_UDP), BROADCAST),
        ),
    ];
    for (name, frame) in cases {
        let harness = node_1();
        let run = harness.run_underlay(&frame).unwrap();
        assert_eq!(run.action, TC_ACT_SHOT, "{name}: not dropped");
        assert_counted(&harness, name, "drop_unknown_peer", &frame);
    }

    // The XDP path drops it too.
    let frame = forged_vxlan(&Ipv4::new(STRANGER, NODE_1, IPPROTO_UDP), node_mac);
    let harness = node_1();
    assert_eq!(harness.run_xdp(&frame).unwrap().action, XDP_DROP);
    assert_counted(&harness, "xdp", "drop_unknown_peer", &frame);
}

#[test]
fn vxlan_from_a_known_node_still_flows_and_a_stranger_may_reach_a_pods_port() {
    require_root!();
    let node_mac = [2, 0, 0, 0, 0, 1];
    let from_peer = forged_vxlan(&Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP), node_mac);
    let harness = node_1();
    assert_eq!(
        harness.run_underlay(&from_peer).unwrap().action,
        TC_ACT_REDIRECT
    );
    assert_counted(&harness, "from a peer", "decap", &from_peer);

    // A pod's own service on the VXLAN port is no tunnel endpoint: plain
    // IP to a pod, which the kernel routes as the sender is no direct node.
    let to_pod = frames::udp_frame(
        (MAC_B, [2, 0, 0, 0, 0, 66]),
        &Ipv4::new(STRANGER, POD_B, IPPROTO_UDP),
        (50000, PORT),
        b"hello",
    );
    let harness = node_1();
    let run = harness.run_underlay(&to_pod).unwrap();
    assert_eq!((run.action, &run.output), (TC_ACT_OK, &to_pod));
    assert_counted(&harness, "to a pod", "pass_not_direct_peer", &to_pod);
}

/// UDP from pod A to `dst` on `port`.
fn udp_from_a(dst: Ipv4Addr, dst_mac: [u8; 6], port: u16, flags_fragment: u16) -> Vec<u8> {
    frames::udp_frame(
        (dst_mac, MAC_A),
        &Ipv4 {
            flags_fragment,
            ..Ipv4::new(POD_A, dst, IPPROTO_UDP)
        },
        (40000, port),
        b"not a tunnel",
    )
}

#[test]
fn a_pod_cannot_send_to_a_nodes_vxlan_port() {
    require_root!();
    let dropped = [
        ("to a node", udp_from_a(NODE_2, GATEWAY_MAC, PORT, 0x4000)),
        (
            "to its gateway",
            udp_from_a(GATEWAY, GATEWAY_MAC, PORT, 0x4000),
        ),
        (
            "to its own node",
            udp_from_a(NODE_1, GATEWAY_MAC, PORT, 0x4000),
        ),
        (
            "as a first fragment",
            udp_from_a(NODE_2, GATEWAY_MAC, PORT, 0x2000),
        ),
        // The bridge floods it to the node, whose kernel takes the IP in it.
        (
            "in a broadcast frame",
            udp_from_a(NODE_1, BROADCAST, PORT, 0x4000),
        ),
    ];
    for (name, frame) in dropped {
        let harness = node_1();
        assert_eq!(
            harness.run(&frame).unwrap().action,
            TC_ACT_SHOT,
            "{name}: not dropped"
        );
        assert_counted(&harness, name, "drop_pod_to_vxlan", &frame);
    }

    // Pod to pod on that port is just UDP; so are other ports to nodes and
    // later fragments, which cannot be reassembled without the first.
    let allowed = [
        (
            "to a local pod",
            udp_from_a(POD_B, MAC_B, PORT, 0x4000),
            TC_ACT_REDIRECT,
            "redirect_local",
        ),
        (
            "to a remote pod",
            udp_from_a(REMOTE_POD, GATEWAY_MAC, PORT, 0x4000),
            TC_ACT_REDIRECT,
            "encap",
        ),
        (
            "to a node on another port",
            udp_from_a(NODE_2, GATEWAY_MAC, 53, 0x4000),
            TC_ACT_OK,
            "pass_unknown_dst",
        ),
        (
            "a later fragment",
            udp_from_a(NODE_2, GATEWAY_MAC, PORT, 0x0010),
            TC_ACT_OK,
            "pass_unknown_dst",
        ),
    ];
    for (name, frame, action, reason) in allowed {
        let harness = node_1();
        assert_eq!(harness.run(&frame).unwrap().action, action, "{name}");
        assert_counted(&harness, name, reason, &frame);
    }
}

#[test]
fn a_forged_source_in_a_broadcast_or_multicast_frame_is_dropped() {
    require_root!();
    for dst_mac in [BROADCAST, MULTICAST] {
        let forged = frames::ping_frame(
            dst_mac,
            MAC_A,
            &Ipv4::new(Ipv4Addr::new(10, 244, 1, 77), POD_B, IPPROTO_ICMP),
        );
        let harness = node_1();
        assert_eq!(harness.run(&forged).unwrap().action, TC_ACT_SHOT);
        assert_counted(&harness, "forged", "drop_spoofed", &forged);

        // Its own source: flooded by the kernel as before.
        let own = frames::ping_frame(dst_mac, MAC_A, &Ipv4::new(POD_A, POD_B, IPPROTO_ICMP));
        let harness = node_1();
        let run = harness.run(&own).unwrap();
        assert_eq!((run.action, &run.output), (TC_ACT_OK, &own));
        assert_counted(&harness, "own", "pass_multicast", &own);
    }

    // A DHCP client has no address yet and impersonates no one.
    let discover = udp_from_a(Ipv4Addr::BROADCAST, BROADCAST, 67, 0x0000);
    let mut discover_from_nowhere = discover.clone();
    discover_from_nowhere[26..30].copy_from_slice(&[0, 0, 0, 0]);
    let ip_header = &mut discover_from_nowhere[14..34];
    ip_header[10..12].copy_from_slice(&[0, 0]);
    let checksum = frames::internet_checksum(ip_header);
    ip_header[10..12].copy_from_slice(&checksum.to_be_bytes());
    let harness = node_1();
    assert_eq!(
        harness.run(&discover_from_nowhere).unwrap().action,
        TC_ACT_OK
    );
    assert_counted(&harness, "dhcp", "pass_multicast", &discover_from_nowhere);
}
