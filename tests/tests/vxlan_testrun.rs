//! Cross-node programs under `BPF_PROG_TEST_RUN`: VXLAN encapsulation on a
//! pod's egress and decapsulation on the underlay, exact bytes in and out.

use std::net::Ipv4Addr;

use pod_net_tests::{
    decode,
    frames::{self, ETH_P_IP, IPPROTO_ICMP, IPPROTO_UDP, Ipv4},
    require_root,
    testrun::{
        Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, endpoint,
    },
};

const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const NODE_3: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 3);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
const PINNED_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const MAC_A: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 2];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const NODE_1_VTEP: [u8; 6] = [0x0e, 0x6e, 192, 168, 100, 1];
const NODE_2_VTEP: [u8; 6] = [0x0e, 0x6e, 192, 168, 100, 2];
const FLANNEL_VTEP: [u8; 6] = [0x5a, 0x11, 0x22, 0x33, 0x44, 0x55];
const VNI: u32 = 1;
const PORT: u16 = 8472;
/// Test run's device is loopback: A's packets arrive there.
const A_IFINDEX: u32 = LOOPBACK_IFINDEX;

/// Node 1's datapath: pod A local; 10.244.2.0/24 on node 2, except
/// 10.244.2.9/32, pinned to node 3 (a flannel node with its own VTEP MAC).
fn node_1() -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    harness.set_underlay(NODE_1, VNI, PORT).unwrap();
    harness
        .add_endpoint(POD_A, endpoint(A_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    harness
        .add_remote(Ipv4Addr::new(10, 244, 2, 0), 24, NODE_2, None)
        .unwrap();
    harness
        .add_remote(PINNED_POD, 32, NODE_3, Some(FLANNEL_VTEP))
        .unwrap();
    harness
}

fn ping_from_a(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let ip = Ipv4 {
        ttl,
        ..Ipv4::new(POD_A, dst, IPPROTO_ICMP)
    };
    frames::ping_frame(GATEWAY_MAC, MAC_A, &ip)
}

/// What node 1 must emit for `inner` (a frame A sent to its gateway): the
/// outer headers to `node` with inner destination MAC `vtep`, the inner
/// Ethernet rewritten, and the inner TTL one lower. The UDP source port is
/// the flow hash's, so it is taken from `output` and checked separately.
/// The outer MACs are the pod's frame's, untouched: `bpf_redirect_neigh`
/// writes the underlay's on the way out, which a test run does not do.
fn expected_encap(inner: &[u8], node: Ipv4Addr, vtep: [u8; 6], output: &[u8]) -> Vec<u8> {
    let outer_macs = frames::macs_of(inner);
    let mut inner = inner.to_vec();
    inner[0..6].copy_from_slice(&vtep);
    inner[6..12].copy_from_slice(&NODE_1_VTEP);
    let sent = decode::ipv4(&inner).unwrap().ip;
    let hop = Ipv4 {
        ttl: sent.time_to_live - 1,
        ..Ipv4::new(POD_A, Ipv4Addr::from(sent.destination), sent.protocol.0)
    };
    let inner_ip_len = inner.len() - 14 - 20;
    inner[14..34].copy_from_slice(&hop.header(inner_ip_len));
    let outer = Ipv4 {
        identification: 0,
        ..Ipv4::new(NODE_1, node, IPPROTO_UDP)
    };
    let source_port = decode::vxlan(output).unwrap().udp.source_port;
    frames::vxlan_frame(outer_macs, &outer, (source_port, PORT), VNI, &inner)
}

#[test]
fn pod_traffic_to_a_remote_cidr_is_vxlan_encapsulated() {
    require_root!();
    let harness = node_1();
    let frame = ping_from_a(REMOTE_POD, 64);
    let run = harness.run(&frame).unwrap();

    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.output.len(), frame.len() + 50);
    assert_eq!(
        run.output,
        expected_encap(&frame, NODE_2, NODE_2_VTEP, &run.output)
    );
    let wire = decode::vxlan(&run.output).unwrap();
    // Outer IPv4: DF, TTL 64, UDP, and a checksum that verifies.
    assert_eq!(usize::from(wire.outer.total_len), frame.len() - 14 + 50);
    assert!(wire.outer.dont_fragment);
    assert_eq!(wire.outer.time_to_live, 64);
    assert_eq!(
        wire.outer.header_checksum,
        wire.outer.calc_header_checksum()
    );
    // UDP: source port in the ephemeral range, destination 8472, length.
    let source_port = wire.udp.source_port;
    assert!((32768..61000).contains(&source_port), "{source_port}");
    assert_eq!(wire.udp.destination_port, PORT);
    assert_eq!(usize::from(wire.udp.length), frame.len() - 14 + 50 - 20);
    // VXLAN: I flag, VNI 1.
    assert_eq!((wire.flags, wire.vni, wire.reserved), (0x08, VNI, [0; 4]));
    // Inner IPv4 checksum still verifies after the TTL decrement.
    let inner_ip = decode::ipv4(wire.inner).unwrap().ip;
    assert_eq!(inner_ip.header_checksum, inner_ip.calc_header_checksum());
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("encap", 1, frame.len() as u64)]
    );
}

#[test]
fn the_source_port_follows_the_flow() {
    require_root!();
    let harness = node_1();
    let port_of = |frame: &[u8]| {
        let run = harness.run(frame).unwrap();
        decode::vxlan(&run.output).unwrap().udp.source_port
    };
    let flow = ping_from_a(REMOTE_POD, 64);
    assert_eq!(port_of(&flow), port_of(&flow), "one flow, two ports");
    let ports: std::collections::BTreeSet<u16> = (10..30)
        .map(|host| port_of(&ping_from_a(Ipv4Addr::new(10, 244, 2, host), 64)))
        .collect();
    assert!(ports.len() > 10, "little entropy: {ports:?}");
}

#[test]
fn a_pinned_pod_wins_over_its_cidr_and_uses_the_given_vtep_mac() {
    require_root!();
    let harness = node_1();
    let frame = ping_from_a(PINNED_POD, 64);
    let run = harness.run(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(
        run.output,
        expected_encap(&frame, NODE_3, FLANNEL_VTEP, &run.output)
    );
}

#[test]
fn expired_ttl_and_unconfigured_underlay_go_to_the_kernel() {
    require_root!();
    let harness = node_1();
    let expiring = ping_from_a(REMOTE_POD, 1);
    let run = harness.run(&expiring).unwrap();
    assert_eq!((run.action, run.output), (TC_ACT_OK, expiring.clone()));
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("pass_ttl_exceeded", 1, expiring.len() as u64)]
    );

    // Remote entries without `load --underlay`: nothing to encapsulate with.
    let mut bare = Harness::new().unwrap();
    bare.add_endpoint(POD_A, endpoint(A_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    bare.add_remote(Ipv4Addr::new(10, 244, 2, 0), 24, NODE_2, None)
        .unwrap();
    let frame = ping_from_a(REMOTE_POD, 64);
    let run = bare.run(&frame).unwrap();
    assert_eq!((run.action, run.output), (TC_ACT_OK, frame.clone()));
    assert_eq!(
        bare.nonzero_counters().unwrap(),
        [("pass_unknown_dst", 1, frame.len() as u64)]
    );
}

/// A VXLAN frame from node 2 to node 1 carrying `inner`.
fn from_node_2(inner: &[u8], vni: u32, port: u16) -> Vec<u8> {
    let outer = Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP);
    frames::vxlan_frame(
        ([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]),
        &outer,
        (50000, port),
        vni,
        inner,
    )
}

/// A ping from a pod on node 2 to pod A, as node 2 encapsulates it.
fn inner_to_a(ttl: u8) -> Vec<u8> {
    let ip = Ipv4 {
        ttl,
        ..Ipv4::new(REMOTE_POD, POD_A, IPPROTO_ICMP)
    };
    frames::ping_frame(NODE_1_VTEP, NODE_2_VTEP, &ip)
}

#[test]
fn vxlan_for_a_local_pod_is_decapsulated_into_it() {
    require_root!();
    let harness = node_1();
    let inner = inner_to_a(63);
    let frame = from_node_2(&inner, VNI, PORT);
    let run = harness.run_underlay(&frame).unwrap();

    assert_eq!(run.action, TC_ACT_REDIRECT);
    let mut expected = inner.clone();
    expected[0..6].copy_from_slice(&MAC_A);
    expected[6..12].copy_from_slice(&GATEWAY_MAC);
    let hop = Ipv4 {
        ttl: 62,
        ..Ipv4::new(REMOTE_POD, POD_A, IPPROTO_ICMP)
    };
    expected[14..34].copy_from_slice(&hop.header(inner.len() - 34));
    assert_eq!(run.output, expected);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("decap", 1, frame.len() as u64)]
    );
}

#[test]
fn outer_ip_options_do_not_stop_decapsulation() {
    require_root!();
    let harness = node_1();
    let inner = inner_to_a(63);
    let plain = from_node_2(&inner, VNI, PORT);
    // Rebuild the outer IPv4 header with IHL 6 (one NOP/EOL option word).
    let mut header = plain[14..34].to_vec();
    header[0] = 0x46;
    let total = u16::from_be_bytes([header[2], header[3]]) + 4;
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header[10..12].copy_from_slice(&[0, 0]);
    header.extend_from_slice(&[1, 1, 1, 0]);
    let checksum = frames::internet_checksum(&header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = plain[..14].to_vec();
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&plain[34..]);

    let run = harness.run_underlay(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    let plain_run = node_1().run_underlay(&plain).unwrap();
    assert_eq!(run.output, plain_run.output);
}

/// Underlay frames that must not be decapsulated, and where each lands.
fn underlay_cases() -> Vec<(&'static str, Vec<u8>, u32, &'static str)> {
    let inner = inner_to_a(63);
    let good = from_node_2(&inner, VNI, PORT);

    let wrong_vni = from_node_2(&inner, 7, PORT);
    let wrong_port = from_node_2(&inner, VNI, 4789);
    let mut no_i_flag = good.clone();
    no_i_flag[42] = 0;
    let not_for_us = {
        let outer = Ipv4::new(NODE_2, NODE_3, IPPROTO_UDP);
        frames::vxlan_frame(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            &outer,
            (50000, PORT),
            VNI,
            &inner,
        )
    };
    // Cut inside the VXLAN header, and inside the inner IPv4 header; the
    // outer IP and UDP lengths match the cut, as a sender would write them.
    let cut = |keep: usize| {
        let payload = &good[42..42 + keep];
        let outer = Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP);
        let mut frame = frames::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], ETH_P_IP);
        frame.extend_from_slice(&outer.header(8 + keep));
        frame.extend_from_slice(&frames::udp_header(50000, PORT, keep));
        frame.extend_from_slice(payload);
        frame
    };
    let truncated_vxlan = cut(4);
    let truncated_inner = cut(8 + 14 + 10);
    let mut bad_inner_ihl = good.clone();
    bad_inner_ihl[64] = 0x43;
    let fragment = {
        let outer = Ipv4 {
            flags_fragment: 0x2000,
            ..Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP)
        };
        frames::vxlan_frame(
            ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            &outer,
            (50000, PORT),
            VNI,
            &inner,
        )
    };
    let not_local = {
        let ip = Ipv4::new(REMOTE_POD, Ipv4Addr::new(10, 244, 1, 99), IPPROTO_ICMP);
        from_node_2(
            &frames::ping_frame(NODE_1_VTEP, NODE_2_VTEP, &ip),
            VNI,
            PORT,
        )
    };
    let inner_arp = from_node_2(
        &frames::arp_request(NODE_2_VTEP, REMOTE_POD, POD_A),
        VNI,
        PORT,
    );
    let inner_ttl_1 = from_node_2(&inner_to_a(1), VNI, PORT);
    let plain_arp = frames::arp_request([2, 0, 0, 0, 0, 2], NODE_2, NODE_1);

    vec![
        ("wrong VNI", wrong_vni, TC_ACT_SHOT, "drop_vni"),
        (
            "VXLAN without the I flag",
            no_i_flag,
            TC_ACT_SHOT,
            "drop_malformed",
        ),
        (
            "truncated VXLAN header",
            truncated_vxlan,
            TC_ACT_SHOT,
            "drop_malformed",
        ),
        (
            "truncated inner IPv4",
            truncated_inner,
            TC_ACT_SHOT,
            "drop_malformed",
        ),
        (
            "inner IHL of 3 words",
            bad_inner_ihl,
            TC_ACT_SHOT,
            "drop_malformed",
        ),
        ("wrong port", wrong_port, TC_ACT_OK, "pass_not_vxlan"),
        (
            "another node's address",
            not_for_us,
            TC_ACT_OK,
            "pass_not_vxlan",
        ),
        (
            "plain ARP on the underlay",
            plain_arp,
            TC_ACT_OK,
            "pass_not_vxlan",
        ),
        ("outer fragment", fragment, TC_ACT_OK, "pass_outer_fragment"),
        (
            "inner destination not local",
            not_local,
            TC_ACT_OK,
            "pass_inner_not_local",
        ),
        ("inner ARP", inner_arp, TC_ACT_OK, "pass_not_ip"),
        ("inner TTL 1", inner_ttl_1, TC_ACT_OK, "pass_ttl_exceeded"),
    ]
}

#[test]
fn everything_else_on_the_underlay_lands_in_its_reason_and_is_never_redirected() {
    require_root!();
    for (name, frame, action, reason) in underlay_cases() {
        let harness = node_1();
        let run = harness
            .run_underlay(&frame)
            .unwrap_or_else(|err| panic!("{name}: {err:#}"));
        assert_eq!(run.action, action, "{name}: wrong action");
        if action == TC_ACT_OK {
            assert_eq!(run.output, frame, "{name}: bytes changed");
        }
        assert_eq!(
            harness.nonzero_counters().unwrap(),
            [(reason, 1, frame.len() as u64)],
            "{name}: wrong counter"
        );
    }
}

/// Node 1 with pod A behind loopback's ifindex, which is in `pod_veths` as
/// `load --xdp` would put A's host veth there.
fn node_1_with_xdp() -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    harness.set_underlay(NODE_1, VNI, PORT).unwrap();
    harness
        .add_endpoint(POD_A, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    harness.add_pod_veth(LOOPBACK_IFINDEX).unwrap();
    harness.add_peer(NODE_2).unwrap();
    harness
}

#[test]
fn xdp_decapsulates_into_the_pods_veth_with_the_same_bytes_as_tc() {
    require_root!();
    let harness = node_1_with_xdp();
    let frame = from_node_2(&inner_to_a(63), VNI, PORT);
    let xdp = harness.run_xdp(&frame).unwrap();
    assert_eq!(xdp.action, XDP_REDIRECT);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("decap", 1, frame.len() as u64)]
    );

    let tc = node_1_with_xdp().run_underlay(&frame).unwrap();
    assert_eq!(tc.action, TC_ACT_REDIRECT);
    assert_eq!(xdp.output, tc.output);
}

#[test]
fn xdp_leaves_partial_checksums_and_non_vxlan_to_tc_and_drops_what_tc_drops() {
    require_root!();
    // A UDP datagram whose checksum holds only the pseudo-header sum, as a
    // sender leaves it for offload.
    let payload = b"offloaded checksum";
    let inner_ip = Ipv4 {
        ttl: 63,
        ..Ipv4::new(REMOTE_POD, POD_A, IPPROTO_UDP)
    };
    let udp_len = 8 + payload.len();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&REMOTE_POD.octets());
    pseudo.extend_from_slice(&POD_A.octets());
    pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
    let partial = !frames::internet_checksum(&pseudo);
    let mut udp = frames::udp_header(40000, 5201, payload.len());
    udp[6..8].copy_from_slice(&partial.to_be_bytes());
    let mut inner = frames::ethernet(NODE_1_VTEP, NODE_2_VTEP, ETH_P_IP);
    inner.extend_from_slice(&inner_ip.header(udp_len));
    inner.extend_from_slice(&udp);
    inner.extend_from_slice(payload);

    for (name, frame, action, counted) in [
        (
            "partial UDP checksum",
            from_node_2(&inner, VNI, PORT),
            XDP_PASS,
            None,
        ),
        (
            "wrong port",
            from_node_2(&inner_to_a(63), VNI, 4789),
            XDP_PASS,
            None,
        ),
        (
            "inner TTL 1",
            from_node_2(&inner_to_a(1), VNI, PORT),
            XDP_PASS,
            None,
        ),
        (
            "wrong VNI",
            from_node_2(&inner_to_a(63), 9, PORT),
            XDP_DROP,
            Some("drop_vni"),
        ),
    ] {
        let harness = node_1_with_xdp();
        let run = harness.run_xdp(&frame).unwrap();
        assert_eq!(run.action, action, "{name}");
        if action == XDP_PASS {
            assert_eq!(run.output, frame, "{name}: bytes changed");
        }
        let expected: Vec<(&str, u64, u64)> = counted
            .map(|reason| vec![(reason, 1, frame.len() as u64)])
            .unwrap_or_default();
        assert_eq!(harness.nonzero_counters().unwrap(), expected, "{name}");
    }
}
