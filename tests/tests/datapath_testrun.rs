//! The kernel programs under `BPF_PROG_TEST_RUN`: exact bytes in and out,
//! return codes, and the one counter each packet lands in.

use std::net::Ipv4Addr;

use pod_net_tests::{
    decode,
    frames::{self, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, Ipv4},
    require_root,
    testrun::{Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, endpoint},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const UNKNOWN: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);
const MAC_A: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [0x02, 0, 0x0a, 0xf4, 1, 3];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const B_IFINDEX: u32 = 42;

/// Pod A sends from the test-run device (loopback), pod B is elsewhere.
fn harness_with_pod_b() -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    harness
        .add_endpoint(POD_A, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY_MAC))
        .expect("register pod A");
    harness
        .add_endpoint(POD_B, endpoint(B_IFINDEX, MAC_B, GATEWAY_MAC))
        .expect("register pod B");
    harness
}

/// The frame as pod-net must emit it: MACs rewritten, nothing else touched.
fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&dst);
    expected[6..12].copy_from_slice(&src);
    expected
}

#[test]
fn bridged_frame_to_local_pod_is_redirected_with_both_macs_rewritten() {
    require_root!();
    let harness = harness_with_pod_b();
    // Pod A sends to B's MAC: the bridge would switch it at L2.
    let frame = frames::ping_frame(MAC_B, MAC_A, &Ipv4::new(POD_A, POD_B, IPPROTO_ICMP));
    let run = harness.run(&frame).unwrap();

    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.output, with_macs(&frame, MAC_B, GATEWAY_MAC));
    let len = frame.len() as u64;
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("redirect_local", 1, len)]
    );
}

#[test]
fn routed_frame_to_local_pod_decrements_ttl_and_fixes_the_checksum() {
    require_root!();
    let harness = harness_with_pod_b();
    // Sent to the gateway's MAC: the kernel would route it, one hop.
    let frame = frames::ping_frame(GATEWAY_MAC, MAC_A, &Ipv4::new(POD_A, POD_B, IPPROTO_ICMP));
    let run = harness.run(&frame).unwrap();

    assert_eq!(run.action, TC_ACT_REDIRECT);
    let mut expected = with_macs(&frame, MAC_B, GATEWAY_MAC);
    let hop = Ipv4 {
        ttl: 63,
        ..Ipv4::new(POD_A, POD_B, IPPROTO_ICMP)
    };
    let ip_len = frame.len() - 14 - 20;
    expected[14..34].copy_from_slice(&hop.header(ip_len));
    assert_eq!(run.output, expected);
    let ip = decode::ipv4(&run.output).unwrap().ip;
    assert_eq!(ip.time_to_live, 63);
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
}

#[test]
fn routed_frame_with_ttl_1_goes_to_the_kernel_for_icmp() {
    require_root!();
    let harness = harness_with_pod_b();
    let ip = Ipv4 {
        ttl: 1,
        ..Ipv4::new(POD_A, POD_B, IPPROTO_ICMP)
    };
    let frame = frames::ping_frame(GATEWAY_MAC, MAC_A, &ip);
    let run = harness.run(&frame).unwrap();

    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(run.output, frame);
    let len = frame.len() as u64;
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("pass_ttl_exceeded", 1, len)]
    );
}

/// Frames that must reach the kernel untouched, each with its reason.
fn passing_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let to_b = Ipv4::new(POD_A, POD_B, IPPROTO_ICMP);
    let ping_b = frames::ping_frame(MAC_B, MAC_A, &to_b);

    let arp_request = frames::arp_request(MAC_A, POD_A, POD_B);
    let mut arp_reply = frames::ethernet(MAC_B, MAC_A, ETH_P_ARP);
    arp_reply.extend_from_slice(&arp_request[14..]);

    // A unicast neighbour solicitation (NUD), and IPv6 with a hop-by-hop
    // options header: both the kernel's.
    let mut neighbour_solicitation = frames::ethernet(MAC_B, MAC_A, ETH_P_IPV6);
    neighbour_solicitation.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 58, 255]);
    neighbour_solicitation.extend_from_slice(&[0xfd; 32]);
    neighbour_solicitation.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
    neighbour_solicitation.extend_from_slice(&[0xfd; 16]);
    let mut hop_by_hop = frames::ethernet(MAC_B, MAC_A, ETH_P_IPV6);
    hop_by_hop.extend_from_slice(&[0x60, 0, 0, 0, 0, 16, 0, 64]);
    hop_by_hop.extend_from_slice(&[0xfd; 32]);
    hop_by_hop.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
    hop_by_hop.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
    let mut ethertype_not_ip = frames::ethernet(MAC_B, MAC_A, 0x88cc);
    ethertype_not_ip.extend_from_slice(&[0; 46]);

    let broadcast = frames::ping_frame(frames::BROADCAST, MAC_A, &to_b);
    let mut multicast = ping_b.clone();
    multicast[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
    let unknown = frames::ping_frame(GATEWAY_MAC, MAC_A, &Ipv4::new(POD_A, UNKNOWN, IPPROTO_ICMP));

    let mut bad_ihl = ping_b.clone();
    bad_ihl[14] = 0x44;
    let mut not_version_4 = ping_b.clone();
    not_version_4[14] = 0x65;
    let mut total_length_too_long = ping_b.clone();
    let claimed = u16::try_from(ping_b.len() - 14 + 1).unwrap();
    total_length_too_long[16..18].copy_from_slice(&claimed.to_be_bytes());
    let mut total_length_below_header = ping_b.clone();
    total_length_below_header[16..18].copy_from_slice(&19u16.to_be_bytes());

    vec![
        ("ARP request", arp_request, "pass_multicast"),
        ("ARP reply", arp_reply, "pass_not_ip"),
        ("LLDP", ethertype_not_ip, "pass_not_ip"),
        (
            "IPv6 neighbour solicitation",
            neighbour_solicitation,
            "pass_ndp",
        ),
        ("IPv6 hop-by-hop options", hop_by_hop, "pass_ipv6_ext"),
        ("broadcast", broadcast, "pass_multicast"),
        ("IPv4 multicast MAC", multicast, "pass_multicast"),
        ("unknown destination", unknown, "pass_unknown_dst"),
        ("IHL of 4 words", bad_ihl, "pass_malformed"),
        (
            "version 6 in an IPv4 frame",
            not_version_4,
            "pass_malformed",
        ),
        (
            "total length past the frame",
            total_length_too_long,
            "pass_malformed",
        ),
        (
            "total length below the header",
            total_length_below_header,
            "pass_malformed",
        ),
    ]
}

#[test]
fn everything_else_passes_untouched_and_is_counted_once() {
    require_root!();
    for (name, frame, reason) in passing_cases() {
        // A fresh instance per case, so the counters name this case alone.
        let harness = harness_with_pod_b();
        let run = harness
            .run(&frame)
            .unwrap_or_else(|err| panic!("{name}: {err:#}"));
        assert_eq!(run.action, TC_ACT_OK, "{name}: not passed");
        assert_eq!(run.output, frame, "{name}: bytes changed");
        let len = frame.len() as u64;
        assert_eq!(
            harness.nonzero_counters().unwrap(),
            [(reason, 1, len)],
            "{name}: wrong counter"
        );
    }
}

#[test]
fn ip_options_do_not_stop_the_redirect() {
    require_root!();
    let harness = harness_with_pod_b();
    // IHL 6: a 4-byte NOP/EOL option word after the fixed header.
    let icmp = frames::icmp_echo(1, 1, b"opts");
    let mut header = Ipv4::new(POD_A, POD_B, IPPROTO_ICMP).header(icmp.len() + 4);
    header[0] = 0x46;
    header.extend_from_slice(&[1, 1, 1, 0]);
    header[10..12].copy_from_slice(&[0, 0]);
    let checksum = frames::internet_checksum(&header);
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = frames::ethernet(MAC_B, MAC_A, ETH_P_IP);
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&icmp);

    let run = harness.run(&frame).unwrap();
    assert_eq!(run.action, TC_ACT_REDIRECT);
    assert_eq!(run.output, with_macs(&frame, MAC_B, GATEWAY_MAC));
}

#[test]
fn test_run_refuses_frames_with_cut_headers() {
    require_root!();
    // Test run only builds skbs with a whole Ethernet header and, for IPv4,
    // a whole IPv4 header. Shorter frames sent by a pod are covered on the
    // rig (`e2e_same_node`), where a raw socket injects them.
    let harness = harness_with_pod_b();
    assert!(harness.run(&[0u8; 13]).is_err());
    let ping = frames::ping_frame(MAC_B, MAC_A, &Ipv4::new(POD_A, POD_B, IPPROTO_ICMP));
    assert!(harness.run(&ping[..14 + 19]).is_err());
    assert!(harness.nonzero_counters().unwrap().is_empty());
    // A whole header whose total length runs past the frame is malformed.
    let run = harness.run(&ping[..14 + 20]).unwrap();
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(
        harness.nonzero_counters().unwrap(),
        [("pass_malformed", 1, 34)]
    );
}

#[test]
fn every_packet_lands_in_exactly_one_reason() {
    require_root!();
    let harness = harness_with_pod_b();
    let mut frames_sent = Vec::new();
    for (_, frame, _) in passing_cases() {
        frames_sent.push(frame);
    }
    frames_sent.push(frames::ping_frame(
        MAC_B,
        MAC_A,
        &Ipv4::new(POD_A, POD_B, IPPROTO_ICMP),
    ));
    for frame in &frames_sent {
        harness.run(frame).unwrap();
    }
    let counters = harness.counters().unwrap();
    let packets: u64 = counters.iter().map(|(_, counter)| counter.packets).sum();
    let bytes: u64 = counters.iter().map(|(_, counter)| counter.bytes).sum();
    assert_eq!(packets, frames_sent.len() as u64);
    assert_eq!(
        bytes,
        frames_sent
            .iter()
            .map(|frame| frame.len() as u64)
            .sum::<u64>()
    );
}
