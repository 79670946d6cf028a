//! A seeded fuzzer for the programs under `BPF_PROG_TEST_RUN`: random and
//! mutated IPv4 and IPv6 frames (truncated, oversized, IP options,
//! fragments, bogus VXLAN, wrong checksums, VLAN tags, broadcast and
//! multicast MACs, forged pod sources, VXLAN from strangers). Every frame
//! must land in exactly one counter reason, and no frame an independent
//! parser calls malformed, forged, L2-broadcast or from a stranger may be
//! redirected. `POD_NET_FUZZ_ITERATIONS` runs longer (CI: a bounded
//! corpus); `POD_NET_FUZZ_SEED` replays a run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pod_net_tests::{
    frames::{
        self, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4,
        Ipv6,
    },
    require_root,
    testrun::{Harness, LOOPBACK_IFINDEX, TC_ACT_REDIRECT, XDP_DROP, XDP_REDIRECT, endpoint},
};

const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
const POD_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
const POD_B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 3);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 7);
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 3];
const GATEWAY: [u8; 6] = [2, 0xbb, 0, 0, 0, 1];
/// On the underlay, but not a node any remote entry sends to.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 66);
const FORGED: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 77);
const FORGED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x77);

/// splitmix64: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn iterations() -> usize {
    std::env::var("POD_NET_FUZZ_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("POD_NET_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x0070_6f64_2d6e_6574)
}

/// Node 1 with pods A (sending, on the test-run device) and B, node 2's
/// CIDR, and XDP targets.
fn node_1() -> Harness {
    let mut harness = Harness::new().expect("load pod-net object");
    harness.set_underlay(NODE_1, 1, 8472).unwrap();
    harness
        .add_endpoint(POD_A, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY))
        .unwrap();
    harness
        .add_endpoint(POD_B, endpoint(43, MAC_B, GATEWAY))
        .unwrap();
    harness
        .add_endpoint(POD_A6, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY))
        .unwrap();
    harness
        .add_endpoint(POD_B6, endpoint(43, MAC_B, GATEWAY))
        .unwrap();
    harness
        .add_remote(Ipv4Addr::new(10, 244, 2, 0), 24, NODE_2, None)
        .unwrap();
    harness
        .add_remote(
            Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0),
            64,
            NODE_2,
            None,
        )
        .unwrap();
    harness.add_pod_veth(LOOPBACK_IFINDEX).unwrap();
    harness
}

/// A well-formed frame from pod A, IPv4 or IPv6: ICMP, TCP or UDP to B, a
/// remote pod or an unknown address.
fn pod_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.below(2) == 0;
    let dst: IpAddr = if v6 {
        [
            POD_B6,
            REMOTE6,
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 1),
        ][rng.below(3)]
        .into()
    } else {
        [POD_B, REMOTE, Ipv4Addr::new(10, 96, 0, 1)][rng.below(3)].into()
    };
    let to_b = dst == IpAddr::from(POD_B) || dst == IpAddr::from(POD_B6);
    let dst_mac = match rng.below(8) {
        0 => [0xff; 6],
        1 if v6 => [0x33, 0x33, 0, 0, 0, 1],
        1 => [0x01, 0x00, 0x5e, 0, 0, 1],
        _ if to_b && rng.below(2) == 0 => MAC_B,
        _ => GATEWAY,
    };
    let forged = rng.below(4) == 0;
    let hops = [1, 2, 64][rng.below(3)];
    let transport = rng.below(3);
    let (ether_type, header, l4) = match dst {
        IpAddr::V4(dst) => {
            let protocol = [IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP][transport];
            let src = if forged { FORGED } else { POD_A };
            let ip = Ipv4 {
                ttl: hops,
                ..Ipv4::new(src, dst, protocol)
            };
            let l4 = transport_payload(rng, transport);
            (ETH_P_IP, ip.header(l4.len()), l4)
        }
        IpAddr::V6(dst) => {
            let protocol = [IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP][transport];
            let src = if forged { FORGED6 } else { POD_A6 };
            let ip = Ipv6 {
                hop_limit: hops,
                ..Ipv6::new(src, dst, protocol)
            };
            let l4 = transport_payload(rng, transport);
            (ETH_P_IPV6, ip.header(l4.len()), l4)
        }
    };
    let mut frame = frames::ethernet(dst_mac, MAC_A, ether_type);
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&l4);
    frame
}

/// An echo request, a TCP SYN or a UDP datagram (checksums left zero: the
/// programs do not check them).
fn transport_payload(rng: &mut Rng, transport: usize) -> Vec<u8> {
    match transport {
        0 => [8, 0, 0, 0, 0x42, 0x42, 0, 1].to_vec(),
        1 => {
            let mut tcp = vec![
                0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
            ];
            tcp.extend_from_slice(&[0; 4]);
            tcp
        }
        _ => {
            let payload = vec![0x5a; rng.below(64)];
            let mut udp = frames::udp_header(40000, 53, payload.len());
            udp.extend_from_slice(&payload);
            udp
        }
    }
}

/// A well-formed VXLAN frame from node 2 to node 1 carrying a pod frame,
/// IPv4 or IPv6, to A (local) or elsewhere.
fn vxlan_frame(rng: &mut Rng) -> Vec<u8> {
    let hops = [1, 63][rng.below(2)];
    let inner = if rng.below(2) == 0 {
        let dst = [
            POD_A6,
            POD_B6,
            Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x99),
        ][rng.below(3)];
        let ip = Ipv6 {
            hop_limit: hops,
            ..Ipv6::new(REMOTE6, dst, IPPROTO_ICMPV6)
        };
        frames::ping6_frame([0x0e; 6], [0x0e; 6], &ip)
    } else {
        let dst = [POD_A, POD_B, Ipv4Addr::new(10, 244, 1, 99)][rng.below(3)];
        let ip = Ipv4 {
            ttl: hops,
            ..Ipv4::new(REMOTE, dst, IPPROTO_ICMP)
        };
        frames::ping_frame([0x0e; 6], [0x0e; 6], &ip)
    };
    let outer_src = if rng.below(4) == 0 { STRANGER } else { NODE_2 };
    frames::vxlan_frame(
        ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
        &Ipv4::new(outer_src, NODE_1, IPPROTO_UDP),
        (50000, 8472),
        1,
        &inner,
    )
}

/// Mutates `frame` in one of the ways real networks and attackers do.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, ip_offset: usize) {
    match rng.below(9) {
        // Truncate anywhere past the Ethernet header.
        0 => {
            let keep = 15 + rng.below(frame.len().saturating_sub(15).max(1));
            frame.truncate(keep);
        }
        // Oversize with junk.
        1 => frame.extend((0..rng.below(1500)).map(|_| rng.byte())),
        // IP options: a larger IHL.
        2 => frame[ip_offset] = 0x40 | (5 + rng.below(11)) as u8,
        // Fragments: MF and/or an offset.
        3 => {
            frame[ip_offset + 6] = [0x20, 0x00, 0x20, 0x01][rng.below(4)];
            frame[ip_offset + 7] = rng.byte();
        }
        // A wrong IP checksum.
        4 => frame[ip_offset + 10] ^= 0xff,
        // A VLAN tag in front of the EtherType.
        5 => {
            let tag = [0x81, 0x00, 0x00, rng.byte()];
            frame.splice(12..12, tag);
        }
        // Random bytes anywhere.
        _ => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(frame.len());
                frame[at] = rng.byte();
            }
        }
    }
}

/// An independent judgement: is the IPv4 header at `offset` unusable?
fn ipv4_malformed(frame: &[u8], offset: usize) -> bool {
    let Some(header) = frame.get(offset..offset + 20) else {
        return true;
    };
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    header[0] >> 4 != 4 || ihl < 20 || total < ihl || offset + total > frame.len()
}

/// An independent judgement: is the IPv6 header at `offset` unusable?
fn ipv6_malformed(frame: &[u8], offset: usize) -> bool {
    let Some(header) = frame.get(offset..offset + 40) else {
        return true;
    };
    let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
    header[0] >> 4 != 6 || offset + 40 + payload > frame.len()
}

fn ether_type(frame: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([frame[offset - 2], frame[offset - 1]])
}

/// Whether the network header at `offset`, after an EtherType, is unusable
/// (or neither IPv4 nor IPv6, which is never to be redirected either).
fn ip_malformed(frame: &[u8], offset: usize) -> bool {
    match ether_type(frame, offset) {
        ETH_P_IP => ipv4_malformed(frame, offset),
        ETH_P_IPV6 => ipv6_malformed(frame, offset),
        _ => true,
    }
}

/// A pod frame is malformed if its network header is unusable.
fn pod_frame_malformed(frame: &[u8]) -> bool {
    ip_malformed(frame, 14)
}

/// Whether a pod frame must never take the fast path whatever else it is:
/// sent to a broadcast or multicast MAC, or from an address not pod A's.
fn pod_frame_not_for_fast_path(frame: &[u8]) -> bool {
    let source_is_a = match ether_type(frame, 14) {
        ETH_P_IP => frame.get(26..30) == Some(&POD_A.octets()[..]),
        ETH_P_IPV6 => frame.get(22..38) == Some(&POD_A6.octets()[..]),
        _ => false,
    };
    frame[0] & 1 != 0 || !source_is_a
}

/// Whether a VXLAN frame's outer source is not node 2, the one peer.
fn vxlan_from_stranger(frame: &[u8]) -> bool {
    ether_type(frame, 14) != ETH_P_IP || frame.get(26..30) != Some(&NODE_2.octets()[..])
}

/// A VXLAN frame is malformed if any header on the way to the inner
/// network one is unusable or cut.
fn vxlan_malformed(frame: &[u8]) -> bool {
    if ether_type(frame, 14) != ETH_P_IP || ipv4_malformed(frame, 14) {
        return true;
    }
    let inner = 14 + usize::from(frame[14] & 0x0f) * 4 + 8 + 8 + 14;
    frame.len() < inner || ip_malformed(frame, inner)
}

fn total_packets(harness: &Harness) -> u64 {
    harness
        .counters()
        .unwrap()
        .iter()
        .map(|(_, counter)| counter.packets)
        .sum()
}

#[test]
fn every_fuzzed_frame_lands_in_one_reason_and_no_suspect_frame_is_redirected() {
    require_root!();
    let mut rng = Rng(seed());
    let harness = node_1();
    let (mut runs, mut refused, mut redirected) = (0u64, 0u64, 0u64);
    for iteration in 0..iterations() {
        let vxlan = rng.below(2) == 0;
        let mut frame = if vxlan {
            vxlan_frame(&mut rng)
        } else {
            pod_frame(&mut rng)
        };
        let mutations = rng.below(3);
        for _ in 0..mutations {
            let ip_offset = if vxlan && rng.below(2) == 0 { 64 } else { 14 };
            if frame.len() > ip_offset + 20 {
                mutate(&mut rng, &mut frame, ip_offset);
            }
        }
        let context = || format!("seed {:#x} iteration {iteration}: {frame:02x?}", seed());
        let before = total_packets(&harness);
        if vxlan {
            let must_not_redirect = vxlan_malformed(&frame) || vxlan_from_stranger(&frame);
            // XDP first: it counts only what it delivers or drops.
            if let Ok(run) = harness.run_xdp(&frame) {
                let counted = total_packets(&harness) - before;
                let owned = run.action == XDP_REDIRECT || run.action == XDP_DROP;
                assert_eq!(counted, u64::from(owned), "xdp {}", context());
                assert!(
                    !(must_not_redirect && run.action == XDP_REDIRECT),
                    "xdp redirected {}",
                    context()
                );
            }
            let before = total_packets(&harness);
            match harness.run_underlay(&frame) {
                Ok(run) => {
                    runs += 1;
                    assert_eq!(total_packets(&harness) - before, 1, "tc {}", context());
                    assert!(
                        !(must_not_redirect && run.action == TC_ACT_REDIRECT),
                        "tc redirected {}",
                        context()
                    );
                    redirected += u64::from(run.action == TC_ACT_REDIRECT);
                }
                // Test run refuses frames the kernel would never build.
                Err(_) => refused += 1,
            }
        } else {
            let must_not_redirect =
                pod_frame_malformed(&frame) || pod_frame_not_for_fast_path(&frame);
            match harness.run(&frame) {
                Ok(run) => {
                    runs += 1;
                    assert_eq!(total_packets(&harness) - before, 1, "{}", context());
                    assert!(
                        !(must_not_redirect && run.action == TC_ACT_REDIRECT),
                        "redirected {}",
                        context()
                    );
                    redirected += u64::from(run.action == TC_ACT_REDIRECT);
                }
                Err(_) => refused += 1,
            }
        }
    }
    // The corpus must have exercised both outcomes.
    assert!(
        runs > iterations() as u64 / 2,
        "only {runs} runs ({refused} refused)"
    );
    assert!(
        redirected > 0 && redirected < runs,
        "{redirected} of {runs} redirected"
    );
    eprintln!("fuzz: {runs} runs, {redirected} redirected, {refused} refused by test run");
}
