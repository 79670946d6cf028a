//! The kernel side of `node add` and `node del` in the rig: pod-net never
//! takes over, replaces or deletes a route that is not its own, never
//! leaves neighbour or FDB entries behind when an add fails, keeps one
//! VTEP MAC per node, and reads IPv4-mapped prefixes as IPv4.
use std::{fmt::Write as _, process::Output};

use pod_net_tests::{Node, Rig, RigSpec, require_root};

/// Two nodes with one pod each; node 1 loaded with its underlay.
fn rig() -> Rig {
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 1,
        ..RigSpec::default()
    })
    .expect("build rig");
    rig.node(1).load_cross_node().unwrap();
    rig
}

fn node_add(node: &Node, cidr: &str, node_ip: &str) -> Output {
    node.pod_net_output(&["node", "add", "--cidr", cidr, "--node-ip", node_ip])
        .unwrap()
}

/// Asserts a run that failed with exactly `pod-net: error: <message>`.
fn assert_refused(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr, format!("pod-net: error: {message}\n"));
}

fn assert_added(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
}

/// What the node's kernel holds: every IPv4 route, and the routes,
/// neighbours and FDB entries of the tunnel device.
fn kernel(node: &Node) -> [String; 4] {
    [
        node.ip(&["-4", "route", "show", "table", "all"]).unwrap(),
        node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap(),
        node.ip(&["neigh", "show", "dev", "pnvxlan1"]).unwrap(),
        node.exec(&["bridge", "fdb", "show", "dev", "pnvxlan1"])
            .unwrap(),
    ]
}

fn remote_entries(node: &Node) -> serde_json::Value {
    serde_json::from_str(&node.pod_net(&["node", "list", "--json"]).unwrap()).unwrap()
}

#[test]
fn node_add_refuses_this_nodes_own_prefixes_and_routes() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let peer = "192.168.100.2";
    let before = kernel(node);
    assert!(
        before[0].contains("10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1"),
        "{}",
        before[0]
    );
    assert!(
        before[0].contains("192.168.100.0/24 dev eth0 proto kernel scope link src 192.168.100.1"),
        "{}",
        before[0]
    );

    for (cidr, message) in [
        // The node's own pod CIDR, a cluster-wide config's line for it.
        (
            "10.244.1.0/24",
            "10.244.1.0/24 contains 10.244.1.1, an address of this node (on cni0)",
        ),
        // The underlay.
        (
            "192.168.100.0/24",
            "192.168.100.0/24 contains 192.168.100.1, an address of this node (on eth0)",
        ),
        (
            "0.0.0.0/0",
            "0.0.0.0/0 would send every address into the tunnel; give a pod prefix",
        ),
        (
            "::ffff:0.0.0.0/96",
            "0.0.0.0/0 would send every address into the tunnel; give a pod prefix",
        ),
        (
            "10.244.1.2/32",
            "10.244.1.2/32 contains 10.244.1.2, a pod on this node",
        ),
        (
            "10.244.1.128/25",
            "10.244.1.128/25 overlaps this node's route 10.244.1.0/24 dev cni0 (proto kernel), \
             which is not pod-net's",
        ),
        (
            "192.168.100.64/26",
            "192.168.100.64/26 overlaps this node's route 192.168.100.0/24 dev eth0 \
             (proto kernel), which is not pod-net's",
        ),
        (
            "10.0.0.0/8",
            "10.0.0.0/8 contains 10.244.1.1, an address of this node (on cni0)",
        ),
        (
            "127.0.0.0/8",
            "127.0.0.0/8 overlaps 127.0.0.0/8 (loopback), which is never a pod prefix",
        ),
        (
            "169.254.0.0/16",
            "169.254.0.0/16 overlaps 169.254.0.0/16 (link-local), which is never a pod prefix",
        ),
        (
            "224.0.0.0/4",
            "224.0.0.0/4 overlaps 224.0.0.0/4 (multicast), which is never a pod prefix",
        ),
    ] {
        assert_refused(&node_add(node, cidr, peer), message);
        assert_eq!(kernel(node), before, "after node add --cidr {cidr}");
    }
    assert_eq!(remote_entries(node), serde_json::json!([]));

    // Nor does `node del` reach them.
    for cidr in ["10.244.1.0/24", "192.168.100.0/24", "0.0.0.0/0"] {
        let del = node
            .pod_net_output(&["node", "del", "--cidr", cidr])
            .unwrap();
        assert_refused(&del, &format!("no remote node entry for {cidr}"));
    }
    assert_eq!(kernel(node), before);

    // The same goes for apply's bulk path, and nothing of the file is kept.
    let file = rig.scratch_dir().unwrap().join("cluster.toml");
    std::fs::write(
        &file,
        "[[nodes]]\ncidr = \"10.244.2.0/24\"\nnode_ip = \"192.168.100.2\"\n\
         [[nodes]]\ncidr = \"10.244.1.0/24\"\nnode_ip = \"192.168.100.1\"\n",
    )
    .unwrap();
    let apply = node
        .pod_net_output(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert_refused(
        &apply,
        "nodes[1] (10.244.1.0/24): 192.168.100.1 is this node's own underlay address",
    );
    assert_eq!(kernel(node), before);
    assert_eq!(remote_entries(node), serde_json::json!([]));
    // This node's pod CIDR sent to another node: refused before anything
    // of the file changes, as every check of `node add` is.
    std::fs::write(
        &file,
        "[[nodes]]\ncidr = \"10.244.2.0/24\"\nnode_ip = \"192.168.100.2\"\n\
         [[nodes]]\ncidr = \"10.244.1.0/24\"\nnode_ip = \"192.168.100.2\"\n",
    )
    .unwrap();
    let apply = node
        .pod_net_output(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert_refused(
        &apply,
        "10.244.1.0/24 contains 10.244.1.1, an address of this node (on cni0)",
    );
    assert_eq!(kernel(node), before);
    assert_eq!(remote_entries(node), serde_json::json!([]));

    // A real peer still goes in, marked as pod-net's.
    assert_added(&node_add(node, "10.244.2.0/24", peer));
    assert_eq!(
        node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap(),
        "10.244.2.0/24 via 192.168.100.2 proto 112 onlink \n"
    );
}

#[test]
fn routes_that_are_not_pod_nets_are_never_replaced_or_deleted() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let peer = "192.168.100.2";

    // Someone else's route to a prefix: `node add` leaves it alone.
    node.ip(&["route", "add", "10.244.7.0/24", "via", peer, "dev", "eth0"])
        .unwrap();
    let theirs = "10.244.7.0/24 via 192.168.100.2 dev eth0 \n";
    assert_eq!(
        node.ip(&["route", "show", "10.244.7.0/24"]).unwrap(),
        theirs
    );
    assert_refused(
        &node_add(node, "10.244.7.0/24", peer),
        "10.244.7.0/24 overlaps this node's route 10.244.7.0/24 dev eth0 (proto boot), \
         which is not pod-net's",
    );
    assert_refused(
        &node_add(node, "10.244.0.0/16", peer),
        "10.244.0.0/16 contains 10.244.1.1, an address of this node (on cni0)",
    );
    assert_eq!(
        node.ip(&["route", "show", "10.244.7.0/24"]).unwrap(),
        theirs
    );

    // A prefix pod-net routes, whose route someone then takes over by hand:
    // adding it again does not take it back, deleting it leaves it.
    assert_added(&node_add(node, "10.244.2.0/24", peer));
    node.ip(&[
        "route",
        "replace",
        "10.244.2.0/24",
        "via",
        peer,
        "dev",
        "pnvxlan1",
        "onlink",
    ])
    .unwrap();
    let taken = "10.244.2.0/24 via 192.168.100.2 dev pnvxlan1 onlink \n";
    assert_eq!(node.ip(&["route", "show", "10.244.2.0/24"]).unwrap(), taken);
    assert_refused(
        &node_add(node, "10.244.2.0/24", peer),
        "10.244.2.0/24 overlaps this node's route 10.244.2.0/24 dev pnvxlan1 (proto boot), \
         which is not pod-net's",
    );
    let del = node
        .pod_net_output(&["node", "del", "--cidr", "10.244.2.0/24"])
        .unwrap();
    assert_added(&del);
    assert_eq!(node.ip(&["route", "show", "10.244.2.0/24"]).unwrap(), taken);
    assert_eq!(remote_entries(node), serde_json::json!([]));
}

#[test]
fn node_ips_that_are_not_another_machines_leave_nothing() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let before = kernel(node);
    for (node_ip, message) in [
        (
            "0.0.0.0",
            "node IP 0.0.0.0 is not a unicast address (\"this network\")",
        ),
        (
            "127.0.0.1",
            "node IP 127.0.0.1 is not a unicast address (loopback)",
        ),
        (
            "224.0.0.1",
            "node IP 224.0.0.1 is not a unicast address (multicast)",
        ),
        (
            "255.255.255.255",
            "node IP 255.255.255.255 is not a unicast address (broadcast)",
        ),
        (
            "192.168.100.255",
            "node IP 192.168.100.255 is the broadcast address of 192.168.100.0/24 (on eth0)",
        ),
        (
            "192.168.100.1",
            "192.168.100.1 is this node's own underlay address",
        ),
        (
            "10.244.1.1",
            "node IP 10.244.1.1 is this node's own address (on cni0)",
        ),
    ] {
        assert_refused(&node_add(node, "10.244.2.0/24", node_ip), message);
        assert_eq!(kernel(node), before, "after --node-ip {node_ip}");
    }
    // A node IP inside a remote prefix would send the tunnel into itself.
    assert_refused(
        &node_add(node, "10.250.0.0/16", "10.250.0.9"),
        "node IP 10.250.0.9 lies inside the remote prefix 10.250.0.0/16: the tunnel cannot \
         carry its own underlay",
    );
    assert_eq!(kernel(node), before);
    assert_eq!(remote_entries(node), serde_json::json!([]));
}

#[test]
fn a_failed_node_add_takes_its_neighbour_and_fdb_entries_back() {
    require_root!();
    // IPv6 is off in this rig's namespaces, so an IPv6 prefix fails at
    // the kernel, after the node's neighbour and FDB entries went in.
    let rig = rig();
    let node = rig.node(1);
    let before = kernel(node);
    let failed = node_add(node, "fd00:10:244:2::/64", "192.168.100.2");
    assert_refused(
        &failed,
        "adding neighbour fe80::c0a8:6402 on pnvxlan1: Invalid argument (os error 22)",
    );
    assert_eq!(kernel(node), before);
    assert_eq!(remote_entries(node), serde_json::json!([]));

    // The same in a batch, beside a node that was already there: that
    // node keeps its entries, the new one leaves none.
    assert_added(&node_add(node, "10.244.2.0/24", "192.168.100.2"));
    let with_peer = kernel(node);
    let file = rig.scratch_dir().unwrap().join("nodes.toml");
    std::fs::write(
        &file,
        "[[nodes]]\ncidr = \"10.244.2.0/24\"\nnode_ip = \"192.168.100.2\"\n\
         [[nodes]]\ncidr = \"10.244.3.0/24\"\nnode_ip = \"192.168.100.3\"\n\
         [[nodes]]\ncidr = \"fd00:10:244:3::/64\"\nnode_ip = \"192.168.100.3\"\n",
    )
    .unwrap();
    let apply = node
        .pod_net_output(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert_refused(
        &apply,
        "adding 2 remote entries: nothing was added: adding neighbour fe80::c0a8:6403 on \
         pnvxlan1: Invalid argument (os error 22)",
    );
    assert_eq!(kernel(node), with_peer);
    assert_eq!(remote_entries(node).as_array().unwrap().len(), 1);
}

#[test]
fn one_node_ip_has_one_vtep_mac() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let peer = "192.168.100.2";
    assert_added(&node_add(node, "10.244.2.0/24", peer));
    let with_peer = kernel(node);
    assert_eq!(
        with_peer[2],
        "192.168.100.2 lladdr 0e:6e:c0:a8:64:02 PERMANENT \n"
    );

    let other_mac = node
        .pod_net_output(&[
            "node",
            "add",
            "--cidr",
            "10.244.2.9/32",
            "--node-ip",
            peer,
            "--vtep-mac",
            "02:fa:00:00:00:02",
        ])
        .unwrap();
    assert_refused(
        &other_mac,
        "node 192.168.100.2 already has VTEP MAC 0e:6e:c0:a8:64:02 (for 10.244.2.0/24); one \
         node has one VTEP MAC, so 10.244.2.9/32 cannot use 02:fa:00:00:00:02",
    );
    // The MAC pod-net derives for 192.168.100.2, claimed for another node.
    let taken_mac = node
        .pod_net_output(&[
            "node",
            "add",
            "--cidr",
            "10.244.3.0/24",
            "--node-ip",
            "192.168.100.3",
            "--vtep-mac",
            "0e:6e:c0:a8:64:02",
        ])
        .unwrap();
    assert_refused(
        &taken_mac,
        "VTEP MAC 0e:6e:c0:a8:64:02 is already node 192.168.100.2's (for 10.244.2.0/24); \
         10.244.3.0/24 via node 192.168.100.3 needs another one",
    );
    assert_eq!(kernel(node), with_peer);

    // The same MAC, given, is no conflict; deleting one of the node's two
    // prefixes keeps its entries, deleting the last takes them.
    let same_mac = node
        .pod_net_output(&[
            "node",
            "add",
            "--cidr",
            "10.244.2.9/32",
            "--node-ip",
            peer,
            "--vtep-mac",
            "0e:6e:c0:a8:64:02",
        ])
        .unwrap();
    assert_added(&same_mac);
    node.pod_net(&["node", "del", "--cidr", "10.244.2.9/32"])
        .unwrap();
    assert_eq!(kernel(node), with_peer);
    node.pod_net(&["node", "del", "--cidr", "10.244.2.0/24"])
        .unwrap();
    let [_, routes, neighbours, fdb] = kernel(node);
    assert_eq!([routes, neighbours, fdb], ["", "", ""].map(String::from));
}

#[test]
fn ipv4_mapped_prefixes_are_ipv4() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let added = node
        .pod_net(&[
            "node",
            "add",
            "--cidr",
            "::ffff:10.244.4.0/120",
            "--node-ip",
            "192.168.100.2",
        ])
        .unwrap();
    assert_eq!(added, "added 10.244.4.0/24 via node 192.168.100.2\n");
    assert_eq!(
        remote_entries(node)[0]["cidr"],
        serde_json::json!("10.244.4.0/24")
    );
    assert_eq!(
        node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap(),
        "10.244.4.0/24 via 192.168.100.2 proto 112 onlink \n"
    );
    // IPv6 is off in the rig: an IPv6 route would have failed the add.
    let removed = node
        .pod_net(&["node", "del", "--cidr", "10.244.4.0/24"])
        .unwrap();
    assert_eq!(
        removed,
        "removed 10.244.4.0/24 (was via node 192.168.100.2)\n"
    );
    assert_eq!(node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap(), "");

    // An apply file says the same in either form: no change the second time.
    let file = rig.scratch_dir().unwrap().join("mapped.toml");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        "[[nodes]]\ncidr = \"::ffff:10.244.4.0/120\"\nnode_ip = \"192.168.100.2\"\n",
    )
    .unwrap();
    let first = node.pod_net(&["apply", "-f", path]).unwrap();
    assert!(
        first.contains("+ node 10.244.4.0/24 via 192.168.100.2"),
        "{first}"
    );
    std::fs::write(
        &file,
        "[[nodes]]\ncidr = \"10.244.4.0/24\"\nnode_ip = \"192.168.100.2\"\n",
    )
    .unwrap();
    let second = node.pod_net(&["apply", "-f", path]).unwrap();
    assert!(!second.contains("node"), "{second}");
    assert_eq!(
        node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap(),
        "10.244.4.0/24 via 192.168.100.2 proto 112 onlink \n"
    );
}

#[test]
fn node_del_gives_a_node_its_own_mac_back() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    assert_added(&node_add(node, "10.244.2.0/24", "192.168.100.2"));
    let with_peer = kernel(node);

    // What an older pod-net left after `node add --cidr 10.244.2.9/32
    // --node-ip 192.168.100.2 --vtep-mac 02:fa:00:00:00:02`: a second MAC
    // for the node, in the map and in its neighbour and FDB entries.
    let map = node.pin_dir.join("remote_pods");
    let key = "0 0 0 0 0 0 0 0 0 0 0xff 0xff 10 244 2 9";
    let value = "192 168 100 2 1 0 0 0 0x02 0xfa 0 0 0 2 0 0";
    pod_net_tests::cmd::run(
        "bpftool",
        format!(
            "map update pinned {} key {key} value {value}",
            map.display()
        )
        .split_whitespace(),
    )
    .unwrap();
    node.ip(&[
        "neigh",
        "replace",
        "192.168.100.2",
        "lladdr",
        "02:fa:00:00:00:02",
        "dev",
        "pnvxlan1",
        "nud",
        "permanent",
    ])
    .unwrap();
    node.exec(&[
        "bridge",
        "fdb",
        "append",
        "02:fa:00:00:00:02",
        "dev",
        "pnvxlan1",
        "dst",
        "192.168.100.2",
    ])
    .unwrap();

    node.pod_net(&["node", "del", "--cidr", "10.244.2.9/32"])
        .unwrap();
    assert_eq!(kernel(node), with_peer);
}

#[test]
fn ipv6_routes_are_marked_and_others_left_alone() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 1,
        ipv6: true,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    node.load_cross_node().unwrap();
    let peer = "192.168.100.2";
    let route6 = |cidr: &str| node.ip(&["-6", "route", "show", cidr]).unwrap();

    assert_refused(
        &node_add(node, "fd00:10:244:1::/64", peer),
        "fd00:10:244:1::/64 contains fd00:10:244:1::1, an address of this node (on cni0)",
    );
    assert_added(&node_add(node, "fd00:10:244:2::/64", peer));
    assert_eq!(
        route6("fd00:10:244:2::/64"),
        "fd00:10:244:2::/64 via fe80::c0a8:6402 dev pnvxlan1 proto 112 metric 1024 onlink pref \
         medium\n"
    );
    node.pod_net(&["node", "del", "--cidr", "fd00:10:244:2::/64"])
        .unwrap();
    assert_eq!(route6("fd00:10:244:2::/64"), "");

    // Taken over by hand (proto boot, which `ip` does not print): deleting
    // the entry leaves the route.
    assert_added(&node_add(node, "fd00:10:244:3::/64", peer));
    node.ip(&[
        "-6",
        "route",
        "replace",
        "fd00:10:244:3::/64",
        "via",
        "fe80::c0a8:6402",
        "dev",
        "pnvxlan1",
        "onlink",
    ])
    .unwrap();
    node.pod_net(&["node", "del", "--cidr", "fd00:10:244:3::/64"])
        .unwrap();
    assert_eq!(
        route6("fd00:10:244:3::/64"),
        "fd00:10:244:3::/64 via fe80::c0a8:6402 dev pnvxlan1 metric 1024 onlink pref medium\n"
    );
}

#[test]
fn ipv4_mapped_pod_addresses_are_ipv4() {
    require_root!();
    let rig = rig();
    let (node, pod) = (rig.node(1), rig.pod(1, 1));
    // load_cross_node registered the pod: take it out, then add it mapped.
    let ip = pod.ip.to_string();
    node.pod_net(&["pod", "del", "--ip", &ip]).unwrap();
    let mapped = format!("::ffff:{ip}");
    let added = node
        .pod_net(&["pod", "add", "--ip", &mapped, "--veth", &pod.host_veth])
        .unwrap();
    assert_eq!(added, format!("added pod {ip} on {}\n", pod.host_veth));
    let listed: serde_json::Value =
        serde_json::from_str(&node.pod_net(&["pod", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(listed[0]["ip"], serde_json::json!(ip));
    let removed = node.pod_net(&["pod", "del", "--ip", &mapped]).unwrap();
    assert_eq!(removed, format!("removed pod {ip}\n"));

    // In an apply file too: the mapped form is the registered pod.
    let file = rig.scratch_dir().unwrap().join("pods.toml");
    std::fs::write(
        &file,
        format!(
            "[[pods]]\nip = \"{mapped}\"\nveth = \"{}\"\n",
            pod.host_veth
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    assert_eq!(
        node.pod_net(&["apply", "-f", path]).unwrap(),
        format!("+ pod {ip} on {}\n1 change(s) applied\n", pod.host_veth)
    );
}

/// `node add --direct`: the prefix is routed out of the underlay to the
/// node itself (IPv6 via its link-local stand-in, which each node with
/// direct peers puts on its underlay), nothing goes on the tunnel device,
/// `node list` says so, and `node del` and `unload` take it all back.
#[test]
fn direct_nodes_are_routed_out_of_the_underlay() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 1,
        ipv6: true,
        ..RigSpec::default()
    })
    .expect("build rig");
    let node = rig.node(1);
    node.load_cross_node().unwrap();
    let tunnel_before = kernel(node)[1..].to_vec();
    for (cidr, said) in [
        (
            "10.244.2.0/24",
            "added 10.244.2.0/24 via node 192.168.100.2 (direct)\n",
        ),
        (
            "fd00:10:244:2::/64",
            "added fd00:10:244:2::/64 via node 192.168.100.2 (direct)\n",
        ),
    ] {
        let output = node
            .pod_net_output(&[
                "node",
                "add",
                "--cidr",
                cidr,
                "--node-ip",
                "192.168.100.2",
                "--direct",
            ])
            .unwrap();
        assert_added(&output);
        assert_eq!(String::from_utf8_lossy(&output.stdout), said);
    }
    assert_eq!(
        node.ip(&["-4", "route", "show", "proto", "112"]).unwrap(),
        "10.244.2.0/24 via 192.168.100.2 dev eth0 onlink \n"
    );
    assert_eq!(
        node.ip(&["-6", "route", "show", "proto", "112"]).unwrap(),
        "fd00:10:244:2::/64 via fe80::c0a8:6402 dev eth0 metric 1024 onlink pref medium\n"
    );
    assert!(
        node.ip(&["-6", "addr", "show", "dev", "eth0"])
            .unwrap()
            .contains("inet6 fe80::c0a8:6401/64 scope link nodad"),
        "node 1's link-local stand-in is on its underlay"
    );
    assert_eq!(
        kernel(node)[1..],
        tunnel_before,
        "the tunnel device holds nothing new"
    );
    let listed = remote_entries(node);
    assert_eq!(listed[0]["mode"], serde_json::json!("direct"));
    assert_eq!(listed[1]["mode"], serde_json::json!("direct"));
    let table = node.pod_net(&["node", "list"]).unwrap();
    assert!(
        table.contains("10.244.2.0/24") && table.lines().nth(1).unwrap().contains("direct"),
        "{table}"
    );

    // Again is no change; del takes the route back.
    let again = node
        .pod_net_output(&[
            "node",
            "add",
            "--cidr",
            "10.244.2.0/24",
            "--node-ip",
            "192.168.100.2",
            "--direct",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        "10.244.2.0/24 via node 192.168.100.2 (direct) is already there\n"
    );
    node.pod_net(&["node", "del", "--cidr", "10.244.2.0/24"])
        .unwrap();
    assert_eq!(
        node.ip(&["-4", "route", "show", "proto", "112"]).unwrap(),
        ""
    );
    node.pod_net(&["unload"]).unwrap();
    assert_eq!(
        node.ip(&["-6", "route", "show", "proto", "112"]).unwrap(),
        ""
    );
    assert!(
        !node
            .ip(&["-6", "addr", "show", "dev", "eth0"])
            .unwrap()
            .contains("fe80::c0a8:6401"),
        "unload takes the link-local stand-in back"
    );
}

/// A direct node must be on the underlay's subnet, has no VTEP MAC, and a
/// node keeps one mode; each refusal leaves nothing behind.
#[test]
fn direct_nodes_off_the_segment_or_in_two_modes_are_refused() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let before = kernel(node);
    assert_refused(
        &node
            .pod_net_output(&[
                "node",
                "add",
                "--cidr",
                "10.244.7.0/24",
                "--node-ip",
                "192.168.77.7",
                "--direct",
            ])
            .unwrap(),
        "node 192.168.77.7 is not on a subnet of the underlay eth0 (192.168.100.0/24): direct \
         routing needs a node on the same L2 segment, as a gateway would drop pod addresses; \
         reach it over VXLAN instead",
    );
    let both = node
        .pod_net_output(&[
            "node",
            "add",
            "--cidr",
            "10.244.2.0/24",
            "--node-ip",
            "192.168.100.2",
            "--direct",
            "--vtep-mac",
            "0e:6e:c0:a8:64:02",
        ])
        .unwrap();
    assert_eq!(both.status.code(), Some(2), "clap refuses the pair");
    // This rig's underlay has IPv6 off.
    assert_refused(
        &node
            .pod_net_output(&[
                "node",
                "add",
                "--cidr",
                "fd00:10:244:2::/64",
                "--node-ip",
                "192.168.100.2",
                "--direct",
            ])
            .unwrap(),
        "fd00:10:244:2::/64 cannot be routed directly: IPv6 is off on the underlay eth0 \
         (net.ipv6.conf.eth0.disable_ipv6)",
    );
    assert_eq!(kernel(node), before);
    assert_eq!(remote_entries(node), serde_json::json!([]));

    assert_added(&node_add(node, "10.244.2.0/24", "192.168.100.2"));
    let before = kernel(node);
    assert_refused(
        &node
            .pod_net_output(&[
                "node",
                "add",
                "--cidr",
                "10.244.3.0/24",
                "--node-ip",
                "192.168.100.2",
                "--direct",
            ])
            .unwrap(),
        "node 192.168.100.2 is already reached by vxlan (for 10.244.2.0/24); one node has one \
         mode, so 10.244.3.0/24 cannot go to it by direct",
    );
    assert_eq!(kernel(node), before);
    assert_eq!(remote_entries(node).as_array().unwrap().len(), 1);
}

/// The underlay's link takes direct routes with it when it goes down:
/// `status` says so, `gc` and `load` put them back, and a route of
/// pod-net's on the underlay that no entry explains goes.
#[test]
fn direct_routes_lost_with_the_underlay_are_reported_and_repaired() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    node.pod_net(&[
        "node",
        "add",
        "--cidr",
        "10.244.2.0/24",
        "--node-ip",
        "192.168.100.2",
        "--direct",
    ])
    .unwrap();
    let routed = "10.244.2.0/24 via 192.168.100.2 dev eth0 onlink \n";
    let marked = || node.ip(&["-4", "route", "show", "proto", "112"]).unwrap();
    assert_eq!(marked(), routed);

    node.ip(&["link", "set", "eth0", "down"]).unwrap();
    node.ip(&["link", "set", "eth0", "up"]).unwrap();
    assert_eq!(marked(), "", "the kernel flushed the route with the link");
    let status = node.pod_net_output(&["status"]).unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(
            "needs repair: + route 10.244.2.0/24 via 192.168.100.2: a direct entry has no route \
             (on eth0)"
        ),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    node.pod_net(&["gc"]).unwrap();
    assert_eq!(marked(), routed);

    node.ip(&["link", "set", "eth0", "down"]).unwrap();
    node.ip(&["link", "set", "eth0", "up"]).unwrap();
    node.load_on_underlay(&[]).unwrap();
    assert_eq!(marked(), routed, "load puts it back too");

    // One that no entry explains: gc takes it away, and only it.
    node.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "192.168.100.9",
        "dev",
        "eth0",
        "proto",
        "112",
    ])
    .unwrap();
    let plan = node.pod_net(&["gc", "--dry-run"]).unwrap();
    assert!(
        plan.contains("- route 10.244.9.0/24: no direct entry sends it there (on eth0)"),
        "{plan}"
    );
    node.pod_net(&["gc"]).unwrap();
    assert_eq!(marked(), routed);
    assert_eq!(
        node.pod_net_output(&["status"]).unwrap().status.code(),
        Some(0)
    );

    // Without forwarding on the underlay, direct traffic cannot come in.
    node.sysctl("net.ipv4.conf.eth0.forwarding", "0").unwrap();
    let status = node.pod_net_output(&["status"]).unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(
            "net.ipv4.conf.eth0.forwarding is 0: packets from direct nodes' pods are not forwarded"
        ),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// `apply` of the prefixes `nodes` (`(cidr, node IP, direct)`) on `node`;
/// what it printed.
fn apply_nodes(rig: &Rig, node: &Node, nodes: &[(&str, &str, bool)]) -> String {
    let mut text = String::new();
    for (cidr, node_ip, direct) in nodes {
        let _ = write!(
            text,
            "[[nodes]]\ncidr = \"{cidr}\"\nnode_ip = \"{node_ip}\"\ndirect = {direct}\n\n"
        );
    }
    let file = rig.scratch_dir().unwrap().join("nodes.toml");
    std::fs::write(&file, text).unwrap();
    node.pod_net(&["apply", "-f", file.to_str().unwrap()])
        .unwrap()
}

/// A prefix moved to another node or mode is replaced in place, make before
/// break: the kernel never reports its route deleted, and what only the
/// old node used (its neighbour, FDB entry and peer) goes afterwards.
#[test]
fn apply_moves_prefixes_to_other_nodes_and_modes_in_place() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    apply_nodes(
        &rig,
        node,
        &[
            ("10.244.2.0/24", "192.168.100.2", false),
            ("10.244.3.0/24", "192.168.100.3", false),
        ],
    );
    assert_eq!(
        node.ip(&["-4", "route", "show", "proto", "112"]).unwrap(),
        "10.244.2.0/24 via 192.168.100.2 dev pnvxlan1 onlink \n\
         10.244.3.0/24 via 192.168.100.3 dev pnvxlan1 onlink \n"
    );
    assert_eq!(
        node.peer_nodes().unwrap(),
        ["192.168.100.2", "192.168.100.3"]
    );

    let mut monitor = node
        .command(&["ip", "-4", "monitor", "route"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the monitor subscribe before anything changes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let said = apply_nodes(
        &rig,
        node,
        &[
            ("10.244.2.0/24", "192.168.100.2", true),
            ("10.244.3.0/24", "192.168.100.4", false),
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = monitor.kill();
    let events = String::from_utf8(monitor.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(
        said,
        "- node 10.244.2.0/24\n- node 10.244.3.0/24\n\
         + node 10.244.2.0/24 via 192.168.100.2 (direct)\n\
         + node 10.244.3.0/24 via 192.168.100.4\n4 change(s) applied\n"
    );
    assert!(
        events.contains("10.244.2.0/24 via 192.168.100.2 dev eth0")
            && events.contains("10.244.3.0/24 via 192.168.100.4 dev pnvxlan1"),
        "{events}"
    );
    assert!(!events.contains("Deleted"), "{events}");

    let [_, routes, neighbours, fdb] = kernel(node);
    assert_eq!(
        node.ip(&["-4", "route", "show", "proto", "112"]).unwrap(),
        "10.244.2.0/24 via 192.168.100.2 dev eth0 onlink \n\
         10.244.3.0/24 via 192.168.100.4 dev pnvxlan1 onlink \n"
    );
    assert_eq!(
        routes,
        "10.244.3.0/24 via 192.168.100.4 proto 112 onlink \n"
    );
    assert_eq!(
        neighbours,
        "192.168.100.4 lladdr 0e:6e:c0:a8:64:04 PERMANENT \n"
    );
    assert_eq!(fdb, "0e:6e:c0:a8:64:04 dst 192.168.100.4 self permanent\n");
    assert_eq!(node.peer_nodes().unwrap(), ["192.168.100.4"]);
    let listed = remote_entries(node);
    assert_eq!(listed[0]["mode"], serde_json::json!("direct"));
    assert_eq!(listed[1]["node_ip"], serde_json::json!("192.168.100.4"));
}
