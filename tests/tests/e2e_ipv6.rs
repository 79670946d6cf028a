//! Dual stack on the rig: pods with an IPv6 address beside their IPv4 one
//! get the same fast path, on one node (bridge bypass) and across nodes
//! (VXLAN with inner IPv6 over the IPv4 underlay), and the kernel path
//! beside it (`pnvxlan1` with IPv6 routes via IPv4 next hops) carries what
//! pod-net leaves to it.
use std::net::IpAddr;

use pod_net_tests::{Pod, Rig, RigSpec, require_root};
use serde_json::Value;

fn dual_stack(nodes: u8, pods_per_node: u8) -> Rig {
    Rig::build(&RigSpec {
        nodes,
        pods_per_node,
        pod_mtu: Some(1450),
        ipv6: true,
        ..RigSpec::default()
    })
    .expect("build rig")
}

fn ip6(pod: &Pod) -> IpAddr {
    IpAddr::V6(pod.ip6.expect("a dual-stack pod"))
}

/// Sends 4 MB of TCP over IPv6 from `client` to `server`.
/// 16 MiB of TCP: even as 64 KiB GSO super-packets, a few hundred packets
/// for the counters (4 MiB could stay under a hundred on a busy machine).
fn tcp6(client: &Pod, server: &Pod) {
    let _server = server.iperf3_server(&[]).unwrap();
    let report = client.iperf3_client(ip6(server), &["-n", "16M"]).unwrap();
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    assert!(sent >= 16 << 20, "{sent} bytes sent");
}

#[test]
fn ipv6_pods_on_one_node_bypass_the_bridge() {
    require_root!();
    let rig = dual_stack(1, 2);
    let node = rig.node(1);
    node.load_and_register().unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    // Both addresses are registered, each with the pod's veth.
    let pods: Vec<Value> =
        serde_json::from_str(&node.pod_net(&["pod", "list", "--json"]).unwrap()).unwrap();
    let registered: Vec<&str> = pods.iter().map(|pod| pod["ip"].as_str().unwrap()).collect();
    assert!(
        registered.contains(&ip6(a).to_string().as_str()),
        "{registered:?}"
    );
    assert!(
        registered.contains(&ip6(b).to_string().as_str()),
        "{registered:?}"
    );

    a.pin_neighbour(b).unwrap();
    b.pin_neighbour(a).unwrap();
    let redirects = node.counter("redirect_local").unwrap();
    let through_bridge = node.link_packets(&b.host_veth).unwrap().tx;
    a.ping(ip6(b), 20).unwrap();
    // Every request and reply took the fast path; the bridge did not send
    // them to B's veth (the little it sends is IPv6's own chatter).
    assert!(node.counter("redirect_local").unwrap() - redirects >= 40);
    assert!(node.link_packets(&b.host_veth).unwrap().tx - through_bridge < 20);

    tcp6(a, b);
    // 4 MB in 64 KiB GSO packets, and their ACKs.
    assert!(node.counter("redirect_local").unwrap() - redirects > 100);
    assert_eq!(node.counter("drop_spoofed").unwrap(), 0);
}

#[test]
fn ipv6_pods_on_two_nodes_talk_through_vxlan_and_the_node_through_the_kernel() {
    require_root!();
    let rig = dual_stack(2, 1);
    rig.pod_net_mesh().unwrap();
    let (n1, n2) = (rig.node(1), rig.node(2));
    let (a, c) = (rig.pod(1, 1), rig.pod(2, 1));
    // The kernel's side of the /64: a route via node 2's link-local next
    // hop, whose neighbour entry is node 2's VTEP MAC.
    let routes = n1.ip(&["-6", "route", "show", "dev", "pnvxlan1"]).unwrap();
    assert!(
        routes.contains("fd00:10:244:2::/64 via fe80::c0a8:6402"),
        "{routes}"
    );
    let neighbours = n1.ip(&["-6", "neigh", "show", "dev", "pnvxlan1"]).unwrap();
    assert!(
        neighbours.contains("fe80::c0a8:6402 lladdr 0e:6e:c0:a8:64:02 PERMANENT"),
        "{neighbours}"
    );

    a.ping(ip6(c), 1).unwrap(); // neighbour discovery with the gateways
    let (encap, decap) = (n1.counter("encap").unwrap(), n2.counter("decap").unwrap());
    a.ping(ip6(c), 20).unwrap();
    assert!(n1.counter("encap").unwrap() - encap >= 20);
    assert!(n2.counter("decap").unwrap() - decap >= 20);

    tcp6(a, c);
    assert!(n1.counter("encap").unwrap() - encap > 100);

    // The node itself reaches a remote pod through pnvxlan1 (the kernel
    // encapsulates, node 2's program decapsulates into the pod), and the
    // reply to a non-pod address goes back through the kernel too.
    let inner_not_local = n1.counter("pass_inner_not_local").unwrap();
    let target = ip6(c).to_string();
    n1.exec(&[
        "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", &target,
    ])
    .unwrap();
    assert!(n1.counter("pass_inner_not_local").unwrap() - inner_not_local >= 3);
}
