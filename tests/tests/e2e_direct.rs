//! Direct routing on the rig (`node add --direct`, issue 13): pods on nodes
//! that share the underlay's L2 reach each other unencapsulated, one router
//! hop on the sender, and straight into the pod on the receiver. Plain IP on
//! the underlay that is not from a direct peer's pod (or not from its MAC)
//! goes to the pod only through the kernel's routing. Beside them: a VXLAN
//! node in the same cluster, and flannel host-gw nodes (kernel routes only)
//! as the baseline and interop peer.
use std::net::{IpAddr, Ipv4Addr};

use pod_net_tests::{Node, Pod, Rig, RigSpec, capture::Capture, privileges::require_root};

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

/// Sends `bytes` of TCP from `client` to `server` with iperf3 and checks
/// it all went out and some came in.
fn tcp(client: &Pod, server: &Pod, bytes: &str) {
    let _server = server.iperf3_server(&[]).unwrap();
    let report = client.iperf3_client(server.ip, &["-n", bytes]).unwrap();
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(
        sent > 0 && received > 0,
        "{} -> {}: {sent}/{received}",
        client.ip,
        server.ip
    );
}

/// A ping with don't-fragment and `size` bytes of payload, which must be
/// answered.
fn df_ping(from: &Pod, to: Ipv4Addr, size: u32) {
    let size = size.to_string();
    from.exec(&[
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "1",
        "-M",
        "do",
        "-s",
        &size,
        &to.to_string(),
    ])
    .unwrap_or_else(|err| panic!("{} -> {to} with {size} bytes, DF: {err:#}", from.ip));
}

#[test]
fn host_gw_nodes_reach_each_others_pods_with_kernel_routes_only() {
    if !require_root("host_gw_nodes_reach_each_others_pods_with_kernel_routes_only") {
        return;
    }
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
    tcp(a, b, "8M");
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
