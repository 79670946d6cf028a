//! Direct routing under `BPF_PROG_TEST_RUN`: pod traffic to and from nodes
//! on the same L2 segment, unencapsulated, exact bytes in and out.
//!
//! The ingress sender check asks the kernel's FIB and neighbour table, and
//! test run resolves devices in the caller's network namespace; so each
//! test runs on a thread of its own in a private namespace with a veth
//! underlay, permanent neighbours for the nodes, and IPv4 forwarding on.
//! The namespace goes with the thread.

use std::{
    ffi::CString,
    net::{Ipv4Addr, Ipv6Addr},
};

use pod_net_common::endpoint::ENDPOINT_F_NO_BYPASS;
use pod_net_tests::{
    cmd, decode,
    frames::{self, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, Ipv4, Ipv6},
    require_root,
    testrun::{self, Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, XDP_PASS, endpoint},
};

const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// Direct, with its MAC in the neighbour table.
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
/// VXLAN, with its MAC in the neighbour table.
const NODE_3: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 3);
/// Direct, not resolved yet.
const NODE_4: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 4);
/// Direct, but reached through another interface.
const NODE_5: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 5);
const NODE_1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const NODE_2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const NODE_3_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 3];
const NODE_5_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 5];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
/// A pod that opted out of the fast path.
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const NODE_2_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
const NODE_3_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 7);
const NODE_4_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 4, 7);
const NODE_5_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 5, 7);
const NOBODYS_POD: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 7);
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const POD_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
const NODE_2_NET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0);
const NODE_2_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 7);
const MAC_A: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 2];
const MAC_C: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 4];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const VNI: u32 = 1;
const PORT: u16 = 8472;
/// The underlay's MTU (veth's default).
const MTU: usize = 1500;
/// Pod A's host veth: test run's default device, loopback.
const A_IFINDEX: u32 = LOOPBACK_IFINDEX;
/// Offset of the hop limit in an Ethernet + IPv6 frame.
const HOP_LIMIT: usize = 14 + 7;

/// Node 1 in its own namespace: `underlay` is the veth it receives on.
struct Node1 {
    harness: Harness,
    underlay: u32,
}

/// Runs `test` against node 1 on a thread in a private network namespace.
fn on_node_1(test: impl FnOnce(&Node1) + Send) {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: plain syscall; it moves this thread alone.
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(unshared, 0, "unshare: {}", std::io::Error::last_os_error());
            let node = node_1();
            test(&node);
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn ip(args: &[&str]) {
    cmd::run("ip", args).unwrap();
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

fn ifindex(name: &str) -> u32 {
    let name = CString::new(name).unwrap();
    // SAFETY: a valid C string; the lookup uses this thread's namespace.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no device {name:?}");
    index
}

/// The namespace's devices and neighbours, and node 1's maps: pod A
/// (sending from loopback) and pod C (opted out) local; node 2's IPv4 and
/// IPv6 prefixes direct, node 3's VXLAN, node 4's direct and unresolved,
/// node 5's direct but behind another interface.
fn node_1() -> Node1 {
    ip(&["link", "set", "lo", "up"]);
    for (device, peer, address) in [
        ("pn-u0", "pn-u1", "192.168.100.1/24"),
        ("pn-v0", "pn-v1", "192.168.200.1/24"),
    ] {
        ip(&["link", "add", device, "type", "veth", "peer", "name", peer]);
        ip(&["addr", "add", address, "dev", device]);
        ip(&["link", "set", device, "up"]);
        ip(&["link", "set", peer, "up"]);
        set_forwarding(device, true);
    }
    for (node, mac, device) in [
        (NODE_2, NODE_2_MAC, "pn-u0"),
        (NODE_3, NODE_3_MAC, "pn-u0"),
        (NODE_5, NODE_5_MAC, "pn-v0"),
    ] {
        let (node, mac) = (node.to_string(), mac_text(mac));
        ip(&[
            "neigh",
            "replace",
            &node,
            "lladdr",
            &mac,
            "dev",
            device,
            "nud",
            "permanent",
        ]);
    }
    let underlay = ifindex("pn-u0");

    let mut harness = Harness::new().expect("load pod-net object");
    harness.set_underlay(NODE_1, VNI, PORT).unwrap();
    harness.set_underlay_ifindex(underlay).unwrap();
    harness
        .add_endpoint(POD_A, endpoint(A_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    harness
        .add_endpoint(POD_A6, endpoint(A_IFINDEX, MAC_A, GATEWAY_MAC))
        .unwrap();
    harness
        .add_endpoint(
            POD_C,
            testrun::Endpoint {
                flags: ENDPOINT_F_NO_BYPASS,
                ..endpoint(44, MAC_C, GATEWAY_MAC)
            },
        )
        .unwrap();
    let net = |pod: Ipv4Addr| Ipv4Addr::from(u32::from(pod) & !0xff);
    harness
        .add_direct_remote(net(NODE_2_POD), 24, NODE_2)
        .unwrap();
    harness.add_direct_remote(NODE_2_NET6, 64, NODE_2).unwrap();
    harness
        .add_remote(net(NODE_3_POD), 24, NODE_3, None)
        .unwrap();
    harness
        .add_direct_remote(net(NODE_4_POD), 24, NODE_4)
        .unwrap();
    harness
        .add_direct_remote(net(NODE_5_POD), 24, NODE_5)
        .unwrap();
    Node1 { harness, underlay }
}

fn set_forwarding(device: &str, on: bool) {
    let path = format!("/proc/sys/net/ipv4/conf/{device}/forwarding");
    std::fs::write(&path, if on { "1" } else { "0" }).unwrap();
}

fn assert_counted(harness: &Harness, name: &str, reason: &str, frame: &[u8]) {
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [(reason, 1, frame.len() as u64)],
        "{name}: wrong counter"
    );
}

fn ping_from_a(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let ip = Ipv4 {
        ttl,
        ..Ipv4::new(POD_A, dst, IPPROTO_ICMP)
    };
    frames::ping_frame(GATEWAY_MAC, MAC_A, &ip)
}

fn ping6_from_a(dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let ip = Ipv6 {
        hop_limit,
        ..Ipv6::new(POD_A6, dst, IPPROTO_ICMPV6)
    };
    frames::ping6_frame(GATEWAY_MAC, MAC_A, &ip)
}

#[test]
fn pod_traffic_to_a_direct_node_leaves_unencapsulated_one_hop_on() {
    require_root!();
    on_node_1(|node| {
        let harness = &node.harness;
        let frame = ping_from_a(NODE_2_POD, 64);
        let run = harness.run(&frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        // TTL 63 with its checksum, MACs as they were (the kernel fills
        // them in as it sends), not one byte more.
        assert_eq!(run.output, ping_from_a(NODE_2_POD, 63));
        assert_counted(harness, "IPv4", "direct_out", &frame);
    });
    on_node_1(|node| {
        let harness = &node.harness;
        let frame = ping6_from_a(NODE_2_POD6, 64);
        let run = harness.run(&frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        assert_eq!(run.output, ping6_from_a(NODE_2_POD6, 63));
        assert_counted(harness, "IPv6", "direct_out", &frame);
    });
}

#[test]
fn a_vxlan_node_beside_direct_ones_is_still_encapsulated() {
    require_root!();
    on_node_1(|node| {
        let harness = &node.harness;
        let frame = ping_from_a(NODE_3_POD, 64);
        let run = harness.run(&frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        assert_eq!(run.output.len(), frame.len() + 50);
        // Outer IPv4 to node 3, UDP to the VXLAN port.
        let wire = decode::vxlan(&run.output).unwrap();
        assert_eq!(
            (wire.outer.source, wire.outer.destination),
            (NODE_1.octets(), NODE_3.octets())
        );
        assert_eq!(wire.udp.destination_port, PORT);
        assert_counted(harness, "VXLAN", "encap", &frame);
    });
}

/// UDP from pod A to node 2's pod with an IP packet of `ip_len` bytes.
fn udp_from_a(ip_len: usize, flags_fragment: u16) -> Vec<u8> {
    let ip = Ipv4 {
        flags_fragment,
        ..Ipv4::new(POD_A, NODE_2_POD, IPPROTO_UDP)
    };
    frames::udp_frame(
        (GATEWAY_MAC, MAC_A),
        &ip,
        (40000, 5201),
        &vec![0x55; ip_len - 20 - 8],
    )
}

/// UDP over IPv6 from pod A to node 2's pod, `ip_len` bytes of IP.
fn udp6_from_a(ip_len: usize) -> Vec<u8> {
    let ip = Ipv6::new(POD_A6, NODE_2_POD6, IPPROTO_UDP);
    let payload = vec![0x55; ip_len - 40 - 8];
    let mut frame = frames::ethernet(GATEWAY_MAC, MAC_A, ETH_P_IPV6);
    frame.extend_from_slice(&ip.header(8 + payload.len()));
    frame.extend_from_slice(&frames::udp_header(40000, 5201, payload.len()));
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn expired_and_too_big_packets_to_a_direct_node_go_to_the_kernel() {
    require_root!();
    let cases = [
        ("TTL 1", ping_from_a(NODE_2_POD, 1), "pass_ttl_exceeded"),
        (
            "hop limit 1",
            ping6_from_a(NODE_2_POD6, 1),
            "pass_ttl_exceeded",
        ),
        (
            "MTU + 1 with DF",
            udp_from_a(MTU + 1, 0x4000),
            "pass_frag_needed",
        ),
        (
            "MTU + 1 without DF",
            udp_from_a(MTU + 1, 0),
            "pass_fragment",
        ),
        ("IPv6 MTU + 1", udp6_from_a(MTU + 1), "pass_frag_needed"),
    ];
    for (name, frame, reason) in cases {
        on_node_1(|node| {
            let run = node.harness.run(&frame).unwrap();
            assert_eq!((run.action, &run.output), (TC_ACT_OK, &frame), "{name}");
            assert_counted(&node.harness, name, reason, &frame);
        });
    }
    // Exactly the MTU fits: no room is kept for tunnel headers.
    for (name, frame) in [
        ("IPv4 at the MTU", udp_from_a(MTU, 0x4000)),
        ("IPv6 at the MTU", udp6_from_a(MTU)),
    ] {
        on_node_1(|node| {
            let run = node.harness.run(&frame).unwrap();
            assert_eq!(run.action, TC_ACT_REDIRECT, "{name}");
            assert_eq!(run.output.len(), frame.len(), "{name}");
            assert_counted(&node.harness, name, "direct_out", &frame);
        });
    }
}

/// A ping from `src` (a pod on another node) to `dst` on this node, as it
/// arrives on the underlay from `src_mac`.
fn ping_to(src: Ipv4Addr, dst: Ipv4Addr, src_mac: [u8; 6], ttl: u8) -> Vec<u8> {
    let ip = Ipv4 {
        ttl,
        ..Ipv4::new(src, dst, IPPROTO_ICMP)
    };
    frames::ping_frame(NODE_1_MAC, src_mac, &ip)
}

#[test]
fn plain_ip_from_a_direct_nodes_pod_is_delivered_into_the_local_pod() {
    require_root!();
    on_node_1(|node| {
        let harness = &node.harness;
        let frame = ping_to(NODE_2_POD, POD_A, NODE_2_MAC, 63);
        let run = harness.run_underlay_on(node.underlay, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        // To the pod from its gateway, TTL 62 with its checksum.
        let expected = frames::ping_frame(
            MAC_A,
            GATEWAY_MAC,
            &Ipv4 {
                ttl: 62,
                ..Ipv4::new(NODE_2_POD, POD_A, IPPROTO_ICMP)
            },
        );
        assert_eq!(run.output, expected);
        assert_counted(harness, "IPv4", "direct_in", &frame);
    });
    on_node_1(|node| {
        let harness = &node.harness;
        let ip = Ipv6 {
            hop_limit: 63,
            ..Ipv6::new(NODE_2_POD6, POD_A6, IPPROTO_ICMPV6)
        };
        let frame = frames::ping6_frame(NODE_1_MAC, NODE_2_MAC, &ip);
        let run = harness.run_underlay_on(node.underlay, &frame).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT);
        let mut expected = frame.clone();
        expected[0..6].copy_from_slice(&MAC_A);
        expected[6..12].copy_from_slice(&GATEWAY_MAC);
        expected[HOP_LIMIT] = 62;
        assert_eq!(run.output, expected);
        assert_counted(harness, "IPv6", "direct_in", &frame);
    });
}

#[test]
fn plain_ip_the_fast_path_cannot_vouch_for_goes_to_the_kernel_untouched() {
    require_root!();
    let udp_to = |src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16)| {
        frames::udp_frame(
            (NODE_1_MAC, NODE_2_MAC),
            &Ipv4::new(src, dst, IPPROTO_UDP),
            ports,
            b"plain",
        )
    };
    let cases = [
        (
            "another sender MAC",
            ping_to(NODE_2_POD, POD_A, OTHER_MAC, 63),
            "pass_not_direct_peer",
        ),
        (
            "a source in no node's prefix",
            ping_to(NOBODYS_POD, POD_A, NODE_2_MAC, 63),
            "pass_not_direct_peer",
        ),
        (
            "a source in a VXLAN node's prefix",
            ping_to(NODE_3_POD, POD_A, NODE_3_MAC, 63),
            "pass_not_direct_peer",
        ),
        (
            "a node reached through another interface",
            ping_to(NODE_5_POD, POD_A, NODE_5_MAC, 63),
            "pass_not_direct_peer",
        ),
        (
            "a node not in the neighbour table",
            ping_to(NODE_4_POD, POD_A, OTHER_MAC, 63),
            "pass_direct_unresolved",
        ),
        (
            "TTL 1",
            ping_to(NODE_2_POD, POD_A, NODE_2_MAC, 1),
            "pass_ttl_exceeded",
        ),
        (
            "a pod that opted out",
            ping_to(NODE_2_POD, POD_C, NODE_2_MAC, 63),
            "pass_no_bypass",
        ),
        (
            "a destination that is no local pod",
            ping_to(NODE_2_POD, Ipv4Addr::new(10, 244, 1, 99), NODE_2_MAC, 63),
            "pass_not_vxlan",
        ),
        (
            "a broadcast frame",
            frames::ping_frame(
                [0xff; 6],
                NODE_2_MAC,
                &Ipv4::new(NODE_2_POD, POD_A, IPPROTO_ICMP),
            ),
            "pass_not_vxlan",
        ),
        // Plain IP to a pod is no tunnel, whatever its port.
        (
            "to a pod's VXLAN port",
            udp_to(NODE_3_POD, POD_A, (50000, PORT)),
            "pass_not_direct_peer",
        ),
    ];
    for (name, frame, reason) in cases {
        on_node_1(|node| {
            let run = node.harness.run_underlay_on(node.underlay, &frame).unwrap();
            assert_eq!((run.action, &run.output), (TC_ACT_OK, &frame), "{name}");
            assert_counted(&node.harness, name, reason, &frame);
        });
    }

    // A reply to a flow the kernel may have NATed: its conntrack must see it.
    on_node_1(|node| {
        let harness = &node.harness;
        let query = frames::udp_frame(
            (GATEWAY_MAC, MAC_A),
            &Ipv4::new(POD_A, SERVICE, IPPROTO_UDP),
            (40000, 53),
            b"query",
        );
        assert_eq!(harness.run(&query).unwrap().action, TC_ACT_OK);
        let reply = udp_to(NODE_2_POD, POD_A, (53, 40000));
        let run = harness.run_underlay_on(node.underlay, &reply).unwrap();
        assert_eq!((run.action, &run.output), (TC_ACT_OK, &reply));
        assert_eq!(
            harness.nonzero_counters().unwrap(),
            [
                ("pass_unknown_dst", 1, query.len() as u64),
                ("pass_nat", 1, reply.len() as u64)
            ]
        );
    });

    // An underlay that does not forward: the kernel would not route the
    // packet into the pod, and the FIB lookup refuses too.
    on_node_1(|node| {
        set_forwarding("pn-u0", false);
        let frame = ping_to(NODE_2_POD, POD_A, NODE_2_MAC, 63);
        let run = node.harness.run_underlay_on(node.underlay, &frame).unwrap();
        assert_eq!((run.action, &run.output), (TC_ACT_OK, &frame));
        assert_counted(
            &node.harness,
            "no forwarding",
            "pass_not_direct_peer",
            &frame,
        );
    });
}

#[test]
fn xdp_leaves_direct_traffic_to_tc_uncounted() {
    require_root!();
    on_node_1(|node| {
        let frame = ping_to(NODE_2_POD, POD_A, NODE_2_MAC, 63);
        let run = node.harness.run_xdp(&frame).unwrap();
        assert_eq!((run.action, &run.output), (XDP_PASS, &frame));
        assert_eq!(
            node.harness.nonzero_counters().unwrap(),
            Vec::<(&str, u64, u64)>::new()
        );
    });
}
