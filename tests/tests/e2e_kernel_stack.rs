//! Beside the kernel stack on the rig: kube-proxy-style DNAT to a service
//! IP (same node and across nodes), a pod forging its source address, and
//! a pod that opts out of the fast path for iptables' sake.
use pod_net_tests::{
    Node, Pod, Rig, RigSpec,
    cmd::output_of,
    frames::{self, IPPROTO_ICMP, Ipv4},
    require_root,
};

const SERVICE_IP: &str = "10.96.0.10";

/// A cluster IP the way kube-proxy's iptables mode makes one: DNAT in
/// PREROUTING (and OUTPUT) from `SERVICE_IP`:80 to `backend`:5201.
fn cluster_ip(node: &Node, backend: &Pod) {
    let target = format!("{}:5201", backend.ip);
    for chain in ["PREROUTING", "OUTPUT"] {
        node.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            chain,
            "-d",
            SERVICE_IP,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &target,
        ])
        .unwrap();
    }
}

/// TCP through the service, the data flowing back from the backend (-R),
/// so the bulk of it is replies; a reply from the wrong address would not
/// match the client's socket and the transfer would fail.
fn tcp_via_service(client: &Pod, backend: &Pod) {
    let _server = backend.iperf3_server(&[]).unwrap();
    let report = client
        .exec(&[
            "iperf3", "-c", SERVICE_IP, "-p", "80", "-n", "4M", "-R", "-J",
        ])
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report.get("error").is_none(), "{report}");
    assert!(report["end"]["sum_sent"]["bytes"].as_u64().unwrap() >= 4 << 20);
}

#[test]
fn a_cluster_ip_backend_on_the_same_node_answers_through_conntrack() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    cluster_ip(node, b);
    let (nat_before, redirect_before) = (
        node.counter("pass_nat").unwrap(),
        node.counter("redirect_local").unwrap(),
    );
    tcp_via_service(a, b);
    // Every reply went to the kernel to be un-DNATed; none was redirected.
    assert!(node.counter("pass_nat").unwrap() - nat_before > 10);
    assert_eq!(node.counter("redirect_local").unwrap(), redirect_before);
    // Plain pod-to-pod traffic still takes the fast path.
    a.ping(b.ip, 2).unwrap();
    assert_eq!(node.counter("redirect_local").unwrap(), redirect_before + 4);

    // The control: without the NAT check, B's SYN-ACK reaches A from B's
    // own address, not the service's, and the connection never forms.
    node.pod_net(&["load", "--nat-check", "off"]).unwrap();
    let _server = b.iperf3_server(&[]).unwrap();
    let broken = output_of(&mut a.command(&[
        "timeout",
        "5",
        "iperf3",
        "-c",
        SERVICE_IP,
        "-p",
        "80",
        "-n",
        "1M",
        "--connect-timeout",
        "2000",
    ]))
    .unwrap();
    assert!(
        !broken.status.success(),
        "the service worked without the NAT check"
    );
}

#[test]
fn a_cluster_ip_backend_on_another_node_answers_through_conntrack() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 1,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })
    .unwrap();
    rig.pod_net_mesh().unwrap();
    let (node_1, a, b) = (rig.node(1), rig.pod(1, 1), rig.pod(2, 1));
    cluster_ip(node_1, b);
    let before = node_1.counter("pass_nat").unwrap();
    tcp_via_service(a, b);
    // The replies, VXLAN from node 2, were left to node 1's kernel.
    assert!(node_1.counter("pass_nat").unwrap() - before > 10);
    a.ping(b.ip, 2).unwrap();
}

#[test]
fn a_forged_source_address_is_dropped_and_never_arrives() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let forged = frames::ping_frame(
        frames::mac(&b.mac),
        frames::mac(&a.mac),
        &Ipv4::new("10.244.1.77".parse().unwrap(), b.ip, IPPROTO_ICMP),
    );
    let received = || b.eth0_packets().unwrap().rx;
    let before = (node.counter("drop_spoofed").unwrap(), received());
    a.inject(&forged).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(node.counter("drop_spoofed").unwrap(), before.0 + 1);
    assert_eq!(received(), before.1, "the victim saw the forged packet");

    // Turned off for the node, the same frame is delivered.
    let output = node.pod_net(&["load", "--anti-spoofing", "off"]).unwrap();
    assert!(output.contains("anti-spoofing: off"), "{output}");
    a.inject(&forged).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(received(), before.1 + 1);
}

#[test]
fn a_no_bypass_pod_goes_through_iptables_forward() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let a_ip = a.ip.to_string();
    node.pod_net(&[
        "pod",
        "add",
        "--ip",
        &a_ip,
        "--veth",
        &a.host_veth,
        "--no-bypass",
    ])
    .unwrap();
    node.register(b).unwrap();
    a.pin_neighbour(b).unwrap();
    b.pin_neighbour(a).unwrap();
    let listed = node.pod_net(&["pod", "list", "--json"]).unwrap();
    assert!(listed.contains("\"no_bypass\": true"), "{listed}");

    // Both directions cross the bridge: B's host veth transmits them.
    let tx = || node.link_packets(&b.host_veth).unwrap().tx;
    let before = (tx(), node.counter("pass_no_bypass").unwrap());
    a.ping(b.ip, 3).unwrap();
    assert_eq!(tx() - before.0, 3);
    assert_eq!(node.counter("pass_no_bypass").unwrap() - before.1, 6);

    // So a NetworkPolicy-style FORWARD rule applies to it.
    node.exec(&["iptables", "-I", "FORWARD", "-s", &a_ip, "-j", "DROP"])
        .unwrap();
    let blocked =
        output_of(&mut a.command(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &b.ip.to_string()]))
            .unwrap();
    assert!(!blocked.status.success(), "FORWARD DROP did not apply");

    // Registered normally, A's traffic bypasses FORWARD: the trade-off.
    node.pod_net(&["pod", "del", "--ip", &a_ip]).unwrap();
    node.register(a).unwrap();
    a.ping(b.ip, 2).unwrap();
}
