//! What a pod and a stranger on the underlay must not get through, on the
//! rig: forged VXLAN (a pod sending to a node's VXLAN port; a host that is
//! not a known node) and forged sources inside broadcast frames. The
//! evidence is the victim's own receive counter and the kernel tunnel
//! device's, beside pod-net's counters.
use std::{net::Ipv4Addr, thread::sleep, time::Duration};

use pod_net_tests::{
    Node, Pod, Rig, RigSpec,
    frames::{self, IPPROTO_ICMP, Ipv4},
    require_root,
    rig::sibling_binary,
};

const VXLAN_PORT: u16 = 8472;
/// An address on the underlay that no node list names.
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 66);

fn counter(node: &Node, reason: &str) -> u64 {
    node.counters().unwrap()[reason]
}

/// A VXLAN payload (VNI 1) whose inner frame is a ping to `victim` from an
/// address no pod has: what must never come out of a decapsulation.
fn forged_vxlan_payload(victim: &Pod) -> Vec<u8> {
    let inner = frames::ping_frame(
        frames::mac(&victim.mac),
        [0x0e, 0x6e, 0, 0, 0, 9],
        &Ipv4 {
            ttl: 63,
            ..Ipv4::new(Ipv4Addr::new(10, 244, 9, 9), victim.ip, IPPROTO_ICMP)
        },
    );
    let mut payload = frames::vxlan_header(1).to_vec();
    payload.extend_from_slice(&inner);
    payload
}

fn send_udp(command: std::process::Command, from: Ipv4Addr, to: Ipv4Addr, payload: &[u8]) {
    let probe = sibling_binary("pod-net-probe");
    let mut command = command;
    let output = command
        .arg(probe)
        .args([
            "send-udp",
            &from.to_string(),
            &format!("{to}:{VXLAN_PORT}"),
            &frames::hex(payload),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

fn received(pod: &Pod) -> u64 {
    pod.eth0_packets().unwrap().rx
}

fn tunnel_rx(node: &Node) -> u64 {
    node.link_packets("pnvxlan1").unwrap().rx
}

#[test]
fn forged_vxlan_from_a_pod_or_a_stranger_is_never_decapsulated() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 2,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })
    .unwrap();
    rig.pod_net_mesh().unwrap();
    let (node_1, node_2) = (rig.node(1), rig.node(2));
    let (attacker, local_victim, remote_victim) = (rig.pod(1, 1), rig.pod(1, 2), rig.pod(2, 1));
    // The legitimate path works before and after.
    attacker.ping(remote_victim.ip, 1).unwrap();
    attacker.ping(local_victim.ip, 1).unwrap();

    let before = (
        received(local_victim),
        received(remote_victim),
        tunnel_rx(node_1),
        tunnel_rx(node_2),
        counter(node_1, "drop_pod_to_vxlan"),
        counter(node_2, "decap"),
    );
    // From the pod: to its gateway and its own node (the kernel tunnel
    // device's socket listens on every address), and to the other node.
    for (target, victim) in [
        (node_1.gateway_ip, local_victim),
        (node_1.underlay_ip, local_victim),
        (node_2.underlay_ip, remote_victim),
    ] {
        send_udp(
            attacker.command(&[]),
            Ipv4Addr::UNSPECIFIED,
            target,
            &forged_vxlan_payload(victim),
        );
    }
    sleep(Duration::from_millis(300));
    assert_eq!(received(local_victim), before.0, "same-node victim got it");
    assert_eq!(
        received(remote_victim),
        before.1,
        "other node's victim got it"
    );
    assert_eq!(tunnel_rx(node_1), before.2, "node 1's kernel decapsulated");
    assert_eq!(tunnel_rx(node_2), before.3, "node 2's kernel decapsulated");
    assert_eq!(counter(node_1, "drop_pod_to_vxlan"), before.4 + 3);
    assert_eq!(counter(node_2, "decap"), before.5);

    // From a host on the underlay that is not a node of the cluster.
    node_2
        .ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", "eth0"])
        .unwrap();
    let dropped = counter(node_1, "drop_unknown_peer");
    send_udp(
        node_2.command(&[]),
        STRANGER,
        node_1.underlay_ip,
        &forged_vxlan_payload(local_victim),
    );
    sleep(Duration::from_millis(300));
    assert_eq!(counter(node_1, "drop_unknown_peer"), dropped + 1);
    assert_eq!(
        received(local_victim),
        before.0,
        "a stranger's VXLAN arrived"
    );
    assert_eq!(tunnel_rx(node_1), before.2);

    attacker.ping(remote_victim.ip, 1).unwrap();
    attacker.ping(local_victim.ip, 1).unwrap();
}

#[test]
fn a_forged_source_in_a_broadcast_frame_is_dropped_not_flooded() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    for dst_mac in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1]] {
        let forged = frames::ping_frame(
            dst_mac,
            frames::mac(&a.mac),
            &Ipv4::new(Ipv4Addr::new(10, 244, 1, 77), b.ip, IPPROTO_ICMP),
        );
        let before = (counter(node, "drop_spoofed"), received(b));
        a.inject(&forged).unwrap();
        sleep(Duration::from_millis(200));
        assert_eq!(counter(node, "drop_spoofed"), before.0 + 1);
        assert_eq!(received(b), before.1, "the bridge flooded the forged frame");
    }
}

#[test]
fn peers_follow_the_node_entries_and_drift_is_reported_and_repaired() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 1,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })
    .unwrap();
    rig.pod_net_mesh().unwrap();
    let (node_1, node_2) = (rig.node(1), rig.node(2));
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    assert_eq!(node_1.peer_nodes().unwrap(), ["192.168.100.2"]);
    let cidr = node_2.pod_cidr();
    node_1.pod_net(&["node", "del", "--cidr", &cidr]).unwrap();
    assert_eq!(node_1.peer_nodes().unwrap(), Vec::<String>::new());
    node_1.add_peer(node_2, None).unwrap();
    assert_eq!(node_1.peer_nodes().unwrap(), ["192.168.100.2"]);
    a.ping(b.ip, 1).unwrap();

    // Lost by hand: node 2's VXLAN is dropped, status says so, gc repairs.
    let path = node_1.pin_dir.join("peer_nodes");
    node_1
        .exec(&[
            "bpftool",
            "map",
            "delete",
            "pinned",
            path.to_str().unwrap(),
            "key",
            "192",
            "168",
            "100",
            "2",
        ])
        .unwrap();
    let dropped = counter(node_1, "drop_unknown_peer");
    assert!(a.ping(b.ip, 1).is_err(), "replies from node 2 still arrive");
    assert!(counter(node_1, "drop_unknown_peer") > dropped);
    let status = pod_net_tests::cmd::output_of(&mut node_1.pod_net_command(&["status"])).unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "add 192.168.100.2 to peer_nodes: remote entries send to it, but its VXLAN is dropped"
        ),
        "{text}"
    );
    node_1.pod_net(&["gc"]).unwrap();
    a.ping(b.ip, 1).unwrap();

    // A pin dir from a build without `peer_nodes`: load fills it in.
    std::fs::remove_file(&path).unwrap();
    node_1.pod_net(&["load"]).unwrap();
    assert_eq!(node_1.peer_nodes().unwrap(), ["192.168.100.2"]);
    a.ping(b.ip, 1).unwrap();
}

#[test]
fn a_second_pin_dir_cannot_take_a_loaded_underlay_or_its_tunnel_device() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    node.load_on_underlay(&[]).unwrap();
    node.pod_net(&[
        "node",
        "add",
        "--cidr",
        "10.244.9.0/24",
        "--node-ip",
        "192.168.100.9",
    ])
    .unwrap();
    let kernel = || {
        (
            node.ip(&["-d", "link", "show", "pnvxlan1"]).unwrap(),
            node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap(),
        )
    };
    let before = kernel();
    let first = node.pin_dir.display().to_string();
    assert!(
        before.0.contains(&format!("alias pod-net:{first}")),
        "{}",
        before.0
    );

    // Another pin dir on the same underlay (and VNI): refused, in one line
    // naming the first, before anything is made.
    let second = format!("{first}-second");
    let node_ip = node.underlay_ip.to_string();
    let binary = pod_net_tests::rig::pod_net_binary();
    let second_pod_net = |args: &[&str]| {
        let mut full = vec![binary.to_str().unwrap(), "--pin-dir", &second];
        full.extend_from_slice(args);
        pod_net_tests::cmd::output_of(&mut node.command(&full)).unwrap()
    };
    let load = |extra: &[&str]| {
        let mut args = vec!["load"];
        args.extend_from_slice(extra);
        second_pod_net(&args)
    };
    for vni in ["1", "2"] {
        let output = load(&["--underlay", "eth0", "--node-ip", &node_ip, "--vni", vni]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "eth0 is the underlay of the datapath at {first} (its tunnel device pnvxlan1)"
            )),
            "{stderr}"
        );
        assert!(!std::path::Path::new(&second).exists());
        assert!(node.ip(&["link", "show", "pnvxlan2"]).is_err());
    }
    assert_eq!(kernel(), before);

    // A second datapath without an underlay is fine, and its unload leaves
    // the first one's device and routes alone.
    assert!(load(&[]).status.success());
    let unload = second_pod_net(&["unload"]);
    let unload = String::from_utf8_lossy(&unload.stdout);
    assert!(unload.starts_with("unloaded"), "{unload}");
    assert!(!unload.contains("pnvxlan1"), "{unload}");
    assert_eq!(kernel(), before);
    let list = node.pod_net(&["node", "list"]).unwrap();
    assert!(list.contains("10.244.9.0/24"), "{list}");
}
