//! Direct routing on the rig (`node add --direct`, issue 13): pods on nodes
//! that share the underlay's L2 reach each other unencapsulated, one router
//! hop on the sender, and straight into the pod on the receiver. Plain IP on
//! the underlay that is not from a direct peer's pod (or not from its MAC)
//! goes to the pod only through the kernel's routing. Beside them: a VXLAN
//! node in the same cluster, and flannel host-gw nodes (kernel routes only)
//! as the baseline and interop peer.
use std::{
    net::{IpAddr, Ipv4Addr},
    thread::sleep,
    time::Duration,
};

use pod_net_tests::{
    Node, Pod, Rig, RigSpec,
    capture::Capture,
    cmd::output_of,
    frames::{self, ETH_P_IP, IPPROTO_ICMP, Ipv4},
    require_root,
    rig::sibling_binary,
};

/// Pods at MTU 1500 on a 1500 underlay: direct routing adds no header.
fn rig(nodes: u8, ipv6: bool) -> Rig {
    Rig::build(&RigSpec {
        nodes,
        pods_per_node: 1,
        pod_mtu: Some(1500),
        underlay_mtu: Some(1500),
        ipv6,
    })
    .expect("build rig")
}

fn ip6(pod: &Pod) -> IpAddr {
    IpAddr::V6(pod.ip6.expect("a dual-stack pod"))
}

/// A ping with don't-fragment and `size` bytes of payload, which must be
/// answered.
fn df_ping(from: &Pod, to: Ipv4Addr, size: u32) {
    let ping = from.df_ping(to, size).unwrap();
    assert!(
        ping.status.success(),
        "{} -> {to} with {size} bytes, DF: {}",
        from.ip,
        String::from_utf8_lossy(&ping.stdout)
    );
}

/// Pins the pod's gateway in its neighbour table, so that no ARP reply
/// from the bridge reaches the pod's host veth while a test counts what
/// that veth transmits.
fn pin_gateway(node: &Node, pod: &Pod) {
    let mac = node.link_mac("cni0").unwrap();
    let gateway = node.gateway_ip.to_string();
    pod.ip(&[
        "neigh",
        "replace",
        &gateway,
        "lladdr",
        &mac,
        "nud",
        "permanent",
        "dev",
        "eth0",
    ])
    .unwrap();
}

fn tx(node: &Node, ifname: &str) -> u64 {
    node.link_packets(ifname).unwrap().tx
}

/// pod-net's kernel routes on the underlay (`proto 112`).
fn direct_routes(node: &Node, family: &str) -> String {
    node.ip(&[family, "route", "show", "proto", "112", "dev", "eth0"])
        .unwrap()
}

#[test]
fn direct_nodes_carry_pod_traffic_unencapsulated_beside_a_vxlan_node() {
    require_root!();
    // Three nodes on the switch: 1 and 2 direct each way, 3 over VXLAN
    // with both.
    let rig = rig(3, false);
    let (n1, n2, n3) = (rig.node(1), rig.node(2), rig.node(3));
    for node in rig.nodes() {
        node.load_cross_node().unwrap();
    }
    n1.add_direct_peer(n2).unwrap();
    n2.add_direct_peer(n1).unwrap();
    for node in [n1, n2] {
        node.add_peer(n3, None).unwrap();
        n3.add_peer(node, None).unwrap();
    }
    let (a, b, c) = (rig.pod(1, 1), rig.pod(2, 1), rig.pod(3, 1));

    // The kernel's side: the direct prefix via the node on the underlay,
    // the VXLAN one not.
    let routes = direct_routes(n1, "-4");
    assert!(
        routes.contains("10.244.2.0/24 via 192.168.100.2"),
        "{routes}"
    );
    assert!(!routes.contains("10.244.3.0/24"), "{routes}");

    // node list --json says which is which (the MODE column: below).
    let modes = n1.remote_modes().unwrap();
    assert_eq!(modes["10.244.2.0/24"], "direct", "{modes:?}");
    assert_eq!(modes["10.244.3.0/24"], "vxlan", "{modes:?}");

    // Warm up: the nodes learn each other's underlay MACs.
    for pod in [a, b] {
        pin_gateway(rig.node(pod.node), pod);
    }
    a.ping(b.ip, 1).unwrap();
    b.ping(a.ip, 1).unwrap();

    let (before_1, before_2) = (n1.counters().unwrap(), n2.counters().unwrap());
    let (veth_a, veth_b) = (tx(n1, &a.host_veth), tx(n2, &b.host_veth));
    a.ping(b.ip, 5).unwrap();
    b.ping(a.ip, 5).unwrap();
    // Five requests and five replies each way, each counted once on the
    // way out and once on the way in.
    for (node, before) in [(n1, &before_1), (n2, &before_2)] {
        let index = node.index;
        assert_eq!(
            node.counted_since(before, "direct_out").unwrap(),
            10,
            "node {index}"
        );
        assert_eq!(
            node.counted_since(before, "direct_in").unwrap(),
            10,
            "node {index}"
        );
        for reason in [
            "encap",
            "decap",
            "pass_not_direct_peer",
            "pass_direct_unresolved",
        ] {
            assert_eq!(
                node.counted_since(before, reason).unwrap(),
                0,
                "node {index} {reason}"
            );
        }
    }
    // Delivered with bpf_redirect_peer: the pods' host veths sent nothing.
    assert_eq!(tx(n1, &a.host_veth), veth_a, "a's host veth transmitted");
    assert_eq!(tx(n2, &b.host_veth), veth_b, "b's host veth transmitted");

    // A full-size packet fits: no header is added.
    df_ping(a, b.ip, 1472);
    df_ping(b, a.ip, 1472);

    a.tcp_transfer(b, "16M").unwrap();
    b.tcp_transfer(a, "16M").unwrap();
    for (node, before) in [(n1, &before_1), (n2, &before_2)] {
        let index = node.index;
        assert!(
            node.counted_since(before, "direct_out").unwrap() > 100,
            "node {index}"
        );
        assert!(
            node.counted_since(before, "direct_in").unwrap() > 100,
            "node {index}"
        );
        for reason in ["encap", "decap", "pass_frag_needed", "pass_fragment"] {
            assert_eq!(
                node.counted_since(before, reason).unwrap(),
                0,
                "node {index} {reason}"
            );
        }
    }

    // On the wire (the switch's port to node 2): plain ICMP between the
    // pods, node to node MACs, TTL 63 (the sender's hop), no VXLAN.
    let switch = rig.switch().unwrap();
    let file = rig.scratch_dir().unwrap().join("direct.pcap");
    let capture = Capture::start(switch, "n2", "icmp or udp port 8472", &file, 4).unwrap();
    a.ping(b.ip, 3).unwrap();
    let packets = capture
        .fields(
            "",
            &[
                "eth.src",
                "eth.dst",
                "ip.src",
                "ip.dst",
                "ip.ttl",
                "udp.dstport",
            ],
        )
        .unwrap();
    let (mac_1, mac_2) = (n1.link_mac("eth0").unwrap(), n2.link_mac("eth0").unwrap());
    let request = format!("{mac_1}\t{mac_2}\t{}\t{}\t63\t", a.ip, b.ip);
    let reply = format!("{mac_2}\t{mac_1}\t{}\t{}\t63\t", b.ip, a.ip);
    let count = |wanted: &str| packets.iter().filter(|line| *line == wanted).count();
    assert_eq!(count(&request), 3, "{packets:#?}");
    assert_eq!(count(&reply), 3, "{packets:#?}");
    assert_eq!(packets.len(), 6, "{packets:#?}");

    // Node 3 over VXLAN, at the same time: encapsulated, not direct.
    a.ping(c.ip, 1).unwrap();
    b.ping(c.ip, 1).unwrap();
    let (before_1, before_2, before_3) = (
        n1.counters().unwrap(),
        n2.counters().unwrap(),
        n3.counters().unwrap(),
    );
    a.ping(c.ip, 3).unwrap();
    b.ping(c.ip, 3).unwrap();
    c.ping(a.ip, 3).unwrap();
    // a: 3 requests and 3 replies to c; b: 3 requests; c: 3 replies to a
    // and b and 3 requests to a.
    assert!(n1.counted_since(&before_1, "encap").unwrap() >= 6);
    assert!(n1.counted_since(&before_1, "decap").unwrap() >= 6);
    assert!(n2.counted_since(&before_2, "encap").unwrap() >= 3);
    assert!(n3.counted_since(&before_3, "encap").unwrap() >= 9);
    assert!(n3.counted_since(&before_3, "decap").unwrap() >= 9);
    for (node, before) in [(n1, &before_1), (n2, &before_2)] {
        for reason in ["direct_out", "direct_in"] {
            assert_eq!(
                node.counted_since(before, reason).unwrap(),
                0,
                "node {} {reason}",
                node.index
            );
        }
    }
}

/// Frames each injection case sends.
const SENT: u32 = 5;

/// An ICMP echo reply: a pod that gets one answers nothing, so the pod's
/// counters see only what a test sent.
fn echo_reply_frame(macs: (&str, &str), src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut icmp = frames::icmp_echo(0x4242, 1, b"pod-net direct test");
    icmp[0] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let checksum = frames::internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = frames::ethernet(frames::mac(macs.0), frames::mac(macs.1), ETH_P_IP);
    frame.extend_from_slice(&Ipv4::new(src, dst, IPPROTO_ICMP).header(icmp.len()));
    frame.extend_from_slice(&icmp);
    frame
}

/// Sends `frame` raw out of `node`'s underlay, `count` times.
fn inject(node: &Node, frame: &[u8], count: u32) {
    let probe = sibling_binary("pod-net-probe");
    let hex = frames::hex(frame);
    for _ in 0..count {
        node.exec(&[probe.to_str().unwrap(), "inject", "eth0", &hex])
            .unwrap();
    }
}

#[test]
fn plain_ip_not_from_a_direct_peers_pod_reaches_pods_only_through_the_kernel() {
    require_root!();
    // Nodes 1 and 2 direct each way; node 3 runs nothing and is nobody's
    // peer: a stranger on the switch.
    let rig = rig(3, false);
    let (n1, n2, n3) = (rig.node(1), rig.node(2), rig.node(3));
    for node in [n1, n2] {
        node.load_cross_node().unwrap();
    }
    n1.add_direct_peer(n2).unwrap();
    n2.add_direct_peer(n1).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    // Node 2's kernel routes the stranger's network back to it (so reverse
    // path filtering, if on, lets it through) and knows b's MAC (so no ARP
    // reaches b's veth).
    n2.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        &n3.underlay_ip.to_string(),
        "dev",
        "eth0",
    ])
    .unwrap();
    n2.ip(&[
        "neigh",
        "replace",
        &b.ip.to_string(),
        "lladdr",
        &b.mac,
        "nud",
        "permanent",
        "dev",
        "cni0",
    ])
    .unwrap();
    pin_gateway(n2, b);
    // Warm up: node 2 learns node 1's MAC, the one direct_in checks.
    a.ping(b.ip, 1).unwrap();
    b.ping(a.ip, 1).unwrap();

    let mac_1 = n1.link_mac("eth0").unwrap();
    let mac_2 = n2.link_mac("eth0").unwrap();
    let mac_3 = n3.link_mac("eth0").unwrap();
    let stranger = Ipv4Addr::new(10, 244, 9, 9);
    // (what, sent from, its MAC, source address, expected reason)
    let cases = [
        (
            "a source that is no direct peer's pod",
            n3,
            &mac_3,
            stranger,
            "pass_not_direct_peer",
        ),
        (
            "a direct peer's pod from a MAC that is not that node's",
            n3,
            &mac_3,
            a.ip,
            "pass_not_direct_peer",
        ),
        (
            "a direct peer's pod from that node's MAC",
            n1,
            &mac_1,
            a.ip,
            "direct_in",
        ),
    ];
    for (what, from, mac, source, reason) in cases {
        let frame = echo_reply_frame((&mac_2, mac), source, b.ip);
        let before = n2.counters().unwrap();
        let (received, veth) = (b.eth0_packets().unwrap().rx, tx(n2, &b.host_veth));
        inject(from, &frame, SENT);
        sleep(Duration::from_millis(300));
        let after = n2.counters().unwrap();
        for counted in [
            "pass_not_direct_peer",
            "direct_in",
            "pass_direct_unresolved",
        ] {
            let expected = if counted == reason { SENT } else { 0 };
            assert_eq!(
                after[counted] - before[counted],
                u64::from(expected),
                "{what}: {counted}"
            );
        }
        // Every one reached the pod: through the bridge (the kernel's
        // routing, which sends it out of the host veth), or straight in.
        assert_eq!(
            b.eth0_packets().unwrap().rx - received,
            u64::from(SENT),
            "{what}: b's receive count"
        );
        let through_bridge = if reason == "direct_in" { 0 } else { SENT };
        assert_eq!(
            tx(n2, &b.host_veth) - veth,
            u64::from(through_bridge),
            "{what}: b's host veth"
        );
    }
}

#[test]
fn node_list_shows_the_mode_and_direct_needs_a_node_on_the_underlay_subnet() {
    require_root!();
    let rig = rig(2, false);
    let (n1, n2) = (rig.node(1), rig.node(2));
    n1.load_cross_node().unwrap();
    n1.add_direct_peer(n2).unwrap();
    n1.pod_net(&[
        "node",
        "add",
        "--cidr",
        "10.244.3.0/24",
        "--node-ip",
        "192.168.100.3",
    ])
    .unwrap();
    let list = n1.pod_net(&["node", "list"]).unwrap();
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert!(header.contains(&"MODE"), "no MODE column in\n{list}");
    let mode = |cidr: &str| {
        let line = list
            .lines()
            .find(|line| line.split_whitespace().next() == Some(cidr))
            .unwrap_or_else(|| panic!("no {cidr} in\n{list}"));
        line.split_whitespace()
            .find(|word| matches!(*word, "direct" | "vxlan"))
            .unwrap_or_else(|| panic!("no mode in {line:?}"))
            .to_owned()
    };
    assert_eq!(mode("10.244.2.0/24"), "direct", "{list}");
    assert_eq!(mode("10.244.3.0/24"), "vxlan", "{list}");
    let modes = n1.remote_modes().unwrap();
    assert_eq!(modes["10.244.2.0/24"], "direct");
    assert_eq!(modes["10.244.3.0/24"], "vxlan");

    // A node that is not on the underlay's subnet cannot share our L2.
    let state = || {
        [
            n1.pod_net(&["node", "list", "--json"]).unwrap(),
            n1.ip(&["-4", "route", "show", "table", "all"]).unwrap(),
            n1.ip(&["neigh", "show", "dev", "pnvxlan1"]).unwrap(),
            n1.exec(&["bridge", "fdb", "show", "dev", "pnvxlan1"])
                .unwrap(),
        ]
    };
    let before = state();
    let refused = output_of(&mut n1.pod_net_command(&[
        "node",
        "add",
        "--cidr",
        "10.244.5.0/24",
        "--node-ip",
        "192.168.200.5",
        "--direct",
    ]))
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("192.168.200.5") && stderr.to_lowercase().contains("subnet"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(state(), before);
}

#[test]
fn a_direct_pod_net_node_and_a_host_gw_node_reach_each_others_pods() {
    require_root!();
    let rig = rig(2, false);
    let (pod_net_node, host_gw_node) = (rig.node(1), rig.node(2));
    host_gw_node.host_gw_style(&[pod_net_node]).unwrap();
    pod_net_node.load_cross_node().unwrap();
    pod_net_node.add_direct_peer(host_gw_node).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));

    a.ping(b.ip, 1).unwrap();
    b.ping(a.ip, 1).unwrap();
    let before = pod_net_node.counters().unwrap();
    a.ping(b.ip, 3).unwrap();
    b.ping(a.ip, 3).unwrap();
    df_ping(a, b.ip, 1472);
    df_ping(b, a.ip, 1472);
    a.tcp_transfer(b, "8M").unwrap();
    b.tcp_transfer(a, "8M").unwrap();
    // The host-gw node's kernel forwards from its own MAC: direct_in.
    assert!(pod_net_node.counted_since(&before, "direct_out").unwrap() >= 8);
    assert!(pod_net_node.counted_since(&before, "direct_in").unwrap() >= 8);
    for reason in ["encap", "decap", "pass_not_direct_peer"] {
        assert_eq!(
            pod_net_node.counted_since(&before, reason).unwrap(),
            0,
            "{reason}"
        );
    }
}

#[test]
fn ipv6_pods_on_direct_nodes_and_a_host_gw_node() {
    require_root!();
    // Dual stack: nodes 1 and 2 pod-net, direct to each other and to node
    // 3, which runs host-gw.
    let rig = rig(3, true);
    let (n1, n2, n3) = (rig.node(1), rig.node(2), rig.node(3));
    for node in [n1, n2] {
        node.load_cross_node().unwrap();
        // The IPv6 next hop the peers route via (a no-op if pod-net put it
        // there already).
        node.add_underlay_link_local().unwrap();
    }
    n3.host_gw_style(&[n1, n2]).unwrap();
    n1.add_direct_peer(n2).unwrap();
    n1.add_direct_peer(n3).unwrap();
    n2.add_direct_peer(n1).unwrap();
    n2.add_direct_peer(n3).unwrap();
    let (a, b, c) = (rig.pod(1, 1), rig.pod(2, 1), rig.pod(3, 1));

    let routes = direct_routes(n1, "-6");
    assert!(
        routes.contains("fd00:10:244:2::/64 via fe80::c0a8:6402"),
        "{routes}"
    );
    assert!(
        routes.contains("fd00:10:244:3::/64 via fe80::c0a8:6403"),
        "{routes}"
    );

    // Warm up (neighbour discovery on the underlay and with the gateways,
    // in both families: either may be the one direct_in checks).
    a.ping(b.ip, 1).unwrap();
    b.ping(a.ip, 1).unwrap();
    a.ping(ip6(b), 1).unwrap();
    b.ping(ip6(a), 1).unwrap();
    let (before_1, before_2) = (n1.counters().unwrap(), n2.counters().unwrap());
    a.ping(ip6(b), 10).unwrap();
    assert!(n1.counted_since(&before_1, "direct_out").unwrap() >= 10);
    assert!(n2.counted_since(&before_2, "direct_in").unwrap() >= 10);
    assert!(n2.counted_since(&before_2, "direct_out").unwrap() >= 10);
    assert!(n1.counted_since(&before_1, "direct_in").unwrap() >= 10);
    for (node, before) in [(n1, &before_1), (n2, &before_2)] {
        for reason in ["encap", "decap"] {
            assert_eq!(
                node.counted_since(before, reason).unwrap(),
                0,
                "node {} {reason}",
                node.index
            );
        }
    }

    // IPv4 beside it, and the host-gw node both ways in both families.
    a.ping(b.ip, 2).unwrap();
    for pod in [a, b] {
        pod.ping(c.ip, 2).unwrap();
        pod.ping(ip6(c), 2).unwrap();
        c.ping(pod.ip, 2).unwrap();
        c.ping(ip6(pod), 2).unwrap();
    }
}

#[test]
fn host_gw_nodes_reach_each_others_pods_with_kernel_routes_only() {
    require_root!();
    // The emulation alone, no pod-net: three dual-stack nodes on the switch.
    let rig = rig(3, true);
    let nodes: Vec<&Node> = rig.nodes().iter().collect();
    for node in &nodes {
        let peers: Vec<&Node> = nodes
            .iter()
            .copied()
            .filter(|peer| peer.index != node.index)
            .collect();
        node.host_gw_style(&peers).unwrap();
    }
    let routes = nodes[0].ip(&["route", "show", "10.244.2.0/24"]).unwrap();
    assert!(
        routes.contains("10.244.2.0/24 via 192.168.100.2 dev eth0"),
        "{routes}"
    );
    let routes = nodes[0]
        .ip(&["-6", "route", "show", "fd00:10:244:3::/64"])
        .unwrap();
    assert!(
        routes.contains("fd00:10:244:3::/64 via fe80::c0a8:6403 dev eth0"),
        "{routes}"
    );
    let pods: Vec<&Pod> = rig.pods().collect();
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            a.ping(b.ip, 1)
                .unwrap_or_else(|err| panic!("{} -> {}: {err:#}", a.ip, b.ip));
            a.ping(ip6(b), 1)
                .unwrap_or_else(|err| panic!("{} -> {}: {err:#}", ip6(a), ip6(b)));
        }
    }
    // No tunnel: a full-size packet crosses with don't-fragment, and TCP.
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    df_ping(a, b.ip, 1472);
    a.tcp_transfer(b, "8M").unwrap();
    // Plain IP on the wire, TTL 63 after the sending node's hop, no VXLAN.
    let file = rig.scratch_dir().unwrap().join("host-gw.pcap");
    let capture = Capture::start(
        rig.switch().unwrap(),
        "n2",
        "icmp or udp port 8472",
        &file,
        3,
    )
    .unwrap();
    a.ping(b.ip, 2).unwrap();
    let packets = capture
        .fields("", &["ip.src", "ip.dst", "ip.ttl", "udp.dstport"])
        .unwrap();
    let request = format!("{}\t{}\t63\t", a.ip, b.ip);
    let reply = format!("{}\t{}\t63\t", b.ip, a.ip);
    let count = |wanted: &str| packets.iter().filter(|line| *line == wanted).count();
    assert_eq!(count(&request), 2, "{packets:#?}");
    assert_eq!(count(&reply), 2, "{packets:#?}");
    assert_eq!(packets.len(), 4, "{packets:#?}");
}
