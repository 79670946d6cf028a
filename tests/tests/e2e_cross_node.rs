//! Cross-node fast path on the rig: nodes joined by a veth underlay (a
//! switch bridge for three), pods on each, VXLAN in BPF, and the kernel's
//! own vxlan device as an interop peer.

use pod_net_tests::{Node, Pod, Rig, RigSpec, cmd::output_of, require_root};

fn rig(nodes: u8, pods_per_node: u8, pod_mtu: Option<u32>) -> Rig {
    Rig::build(&RigSpec {
        nodes,
        pods_per_node,
        pod_mtu,
        ..RigSpec::default()
    })
    .expect("build rig")
}

#[test]
fn three_nodes_every_pod_pair_pings_and_carries_tcp() {
    require_root!();
    let rig = rig(3, 2, Some(1450));
    rig.pod_net_mesh().unwrap();
    let before: Vec<_> = rig
        .nodes()
        .iter()
        .map(|node| node.counters().unwrap())
        .collect();

    let pods: Vec<&Pod> = rig.pods().collect();
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            a.ping(b.ip, 2)
                .unwrap_or_else(|err| panic!("{} -> {}: {err:#}", a.ip, b.ip));
        }
    }
    for (from, to) in [(1, 2), (2, 3), (3, 1), (2, 1)] {
        rig.pod(from, 1).tcp_transfer(rig.pod(to, 2), "8M").unwrap();
    }

    for (node, before) in rig.nodes().iter().zip(&before) {
        let after = node.counters().unwrap();
        // Each node's 2 pods ping 4 remote pods twice: 16 requests out,
        // 16 replies out, and as many in.
        assert!(
            after["encap"] - before["encap"] >= 32,
            "node {}",
            node.index
        );
        assert!(
            after["decap"] - before["decap"] >= 32,
            "node {}",
            node.index
        );
        for reason in [
            "drop_vni",
            "drop_malformed",
            "pass_frag_needed",
            "pass_inner_not_local",
        ] {
            assert_eq!(
                after[reason], before[reason],
                "node {} {reason}",
                node.index
            );
        }
    }
}

#[test]
fn node_entries_change_the_path_at_runtime() {
    require_root!();
    let rig = rig(3, 1, Some(1450));
    rig.pod_net_mesh().unwrap();
    let (node_1, node_2, node_3) = (rig.node(1), rig.node(2), rig.node(3));
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    a.ping(b.ip, 2).unwrap();

    // Without the entry, node 1 neither encapsulates nor has a route: the
    // kernel says so to the pod, and the counter says so to the operator.
    node_1
        .pod_net(&["node", "del", "--cidr", &node_2.pod_cidr()])
        .unwrap();
    let before = node_1.counters().unwrap();
    let ping = output_of(&mut a.command(&[
        "ping",
        "-n",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "1",
        &b.ip.to_string(),
    ]))
    .unwrap();
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert!(!ping.status.success());
    assert!(stdout.contains("Unreachable"), "{stdout}");
    assert_eq!(
        node_1.counted_since(&before, "pass_unknown_dst").unwrap(),
        2
    );
    assert_eq!(node_1.counted_since(&before, "encap").unwrap(), 0);

    node_1.add_peer(node_2, None).unwrap();
    let before = node_1.counters().unwrap();
    a.ping(b.ip, 2).unwrap();
    assert_eq!(node_1.counted_since(&before, "encap").unwrap(), 2);

    // Pin B to node 3 with a /32: node 1 now sends it there, node 3 finds
    // no such pod and hands it to its kernel, which routes it on to node 2.
    let pinned = format!("{}/32", b.ip);
    let node_3_ip = node_3.underlay_ip.to_string();
    node_1
        .pod_net(&["node", "add", "--cidr", &pinned, "--node-ip", &node_3_ip])
        .unwrap();
    let before_3 = node_3.counters().unwrap();
    let before_2 = node_2.counters().unwrap();
    a.ping(b.ip, 2).unwrap();
    assert_eq!(
        node_3
            .counted_since(&before_3, "pass_inner_not_local")
            .unwrap(),
        2
    );
    assert!(node_2.counted_since(&before_2, "decap").unwrap() >= 2);

    node_1.pod_net(&["node", "del", "--cidr", &pinned]).unwrap();
    let before_3 = node_3.counters().unwrap();
    a.ping(b.ip, 2).unwrap();
    assert_eq!(
        node_3
            .counted_since(&before_3, "pass_inner_not_local")
            .unwrap(),
        0
    );
}

#[test]
fn interop_with_the_kernel_vxlan_device() {
    require_root!();
    let rig = rig(2, 1, Some(1450));
    let (pod_net_node, flannel_node) = (rig.node(1), rig.node(2));
    // Node 2 runs no pod-net: flannel's kernel VXLAN, pointing at node 1's
    // derived VTEP MAC. Node 1 sends node 2 inner frames to flannel.1's MAC.
    flannel_node
        .flannel_style(&[(pod_net_node, pod_net_node.derived_vtep_mac())])
        .unwrap();
    pod_net_node.load_cross_node().unwrap();
    pod_net_node
        .add_peer(flannel_node, Some(&flannel_node.flannel_vtep_mac()))
        .unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));

    let capture = std::env::temp_dir().join(format!("{}-underlay.pcap", rig.id()));
    let capture_path = capture.to_str().unwrap().to_owned();
    let tshark = flannel_node
        .command(&[
            "tshark",
            "-q",
            "-i",
            "eth0",
            "-f",
            "udp port 8472",
            "-w",
            &capture_path,
            "-a",
            "duration:6",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&capture);

    let before = pod_net_node.counters().unwrap();
    a.ping(b.ip, 3).unwrap();
    b.ping(a.ip, 3).unwrap();
    a.tcp_transfer(b, "8M").unwrap();
    b.tcp_transfer(a, "8M").unwrap();
    assert!(pod_net_node.counted_since(&before, "encap").unwrap() >= 6);
    assert!(pod_net_node.counted_since(&before, "decap").unwrap() >= 6);

    let status = wait_with_timeout(tshark, 15);
    assert!(status, "tshark did not finish");
    let decoded = flannel_node
        .exec(&[
            "tshark",
            "-r",
            &capture_path,
            "-d",
            "udp.port==8472,vxlan",
            "-T",
            "fields",
            "-e",
            "vxlan.vni",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-Y",
            "icmp",
        ])
        .unwrap();
    let _ = std::fs::remove_file(&capture);
    // Outer and inner addresses, comma-separated, per packet.
    let a_to_b = format!(
        "1\t{},{}\t{},{}",
        pod_net_node.underlay_ip, a.ip, flannel_node.underlay_ip, b.ip
    );
    let b_to_a = format!(
        "1\t{},{}\t{},{}",
        flannel_node.underlay_ip, b.ip, pod_net_node.underlay_ip, a.ip
    );
    assert!(
        decoded.lines().any(|line| line == a_to_b),
        "no {a_to_b:?} in\n{decoded}"
    );
    assert!(
        decoded.lines().any(|line| line == b_to_a),
        "no {b_to_a:?} in\n{decoded}"
    );
    assert_eq!(decoded.lines().count(), 12, "{decoded}");
}

#[test]
fn a_pod_mtu_without_room_for_vxlan_gets_frag_needed_not_silence() {
    require_root!();
    // Pods at 1500 on a 1500 underlay: misconfigured, as pod add warns.
    let rig = rig(2, 1, None);
    rig.pod_net_mesh().unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    let before = rig.node(1).counters().unwrap();
    let ping = a.df_ping(b.ip, 1472).unwrap();
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert!(!ping.status.success());
    assert!(
        stdout.contains("Frag needed and DF set (mtu = 1450)"),
        "{stdout}"
    );
    assert_eq!(
        rig.node(1)
            .counted_since(&before, "pass_frag_needed")
            .unwrap(),
        1
    );
    // What fits the tunnel goes through.
    assert!(a.df_ping(b.ip, 1422).unwrap().status.success());
    // TCP learns the path MTU and carries on.
    a.tcp_transfer(b, "8M").unwrap();

    // pod add says so, exactly once, and still registers the pod.
    let node = rig.node(1);
    let warned = pod_add_stderr(node, a);
    assert_eq!(
        warned,
        format!(
            "pod-net: warning: pod behind {} has MTU 1500; with VXLAN's 50 bytes that exceeds \
             eth0's MTU 1500, so cross-node packets over 1450 bytes take the kernel's path \
             (ICMP fragmentation needed or fragments). Set the pod MTU to 1450\n",
            a.host_veth
        )
    );
    // With node 2 reached directly, 1500 fits: nothing to say.
    node.pod_net(&["node", "del", "--cidr", &rig.node(2).pod_cidr()])
        .unwrap();
    let node_2_ip = rig.node(2).underlay_ip.to_string();
    node.pod_net(&[
        "node",
        "add",
        "--cidr",
        &rig.node(2).pod_cidr(),
        "--node-ip",
        &node_2_ip,
        "--direct",
    ])
    .unwrap();
    assert_eq!(pod_add_stderr(node, a), "");
}

/// What `pod add` of an already registered pod writes to stderr.
fn pod_add_stderr(node: &Node, pod: &Pod) -> String {
    let output = output_of(&mut node.pod_add_command(pod)).unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn tcp_fits_when_the_pod_mtu_leaves_room_for_vxlan() {
    require_root!();
    let rig = rig(2, 1, Some(1450));
    rig.pod_net_mesh().unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    let before = rig.node(1).counters().unwrap();
    a.tcp_transfer(b, "32M").unwrap();
    b.tcp_transfer(a, "32M").unwrap();
    let node_1 = rig.node(1);
    assert!(node_1.counted_since(&before, "encap").unwrap() > 100);
    assert!(node_1.counted_since(&before, "decap").unwrap() > 100);
    for reason in ["pass_frag_needed", "pass_fragment", "pass_resize_failed"] {
        assert_eq!(
            node_1.counted_since(&before, reason).unwrap(),
            0,
            "{reason}"
        );
    }
}

/// Frames XDP redirected into `veth` (its `tx_queue_0_xdp_xmit` statistic).
fn xdp_xmit(node: &Node, veth: &str) -> u64 {
    let stats = node.exec(&["ethtool", "-S", veth]).unwrap();
    stats
        .lines()
        .find_map(|line| line.trim().strip_prefix("tx_queue_0_xdp_xmit: "))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no xdp_xmit statistic in {stats}"))
}

fn wait_for_file(path: &std::path::Path) {
    for _ in 0..100 {
        if path.exists() {
            // dumpcap creates the file once it captures.
            std::thread::sleep(std::time::Duration::from_millis(300));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("tshark never started capturing");
}

fn wait_with_timeout(mut child: std::process::Child, seconds: u64) -> bool {
    for _ in 0..seconds * 10 {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
fn the_xdp_receive_path_delivers_and_can_be_turned_off() {
    require_root!();
    let rig = rig(2, 1, Some(1450));
    rig.pod_net_mesh().unwrap();
    let (node_2, a, b) = (rig.node(2), rig.pod(1, 1), rig.pod(2, 1));
    let output = node_2.pod_net(&["load", "--xdp"]).unwrap();
    assert!(
        output.contains("XDP receive path on the underlay: on"),
        "{output}"
    );
    // XDP redirects into a veth need NAPI on the pod's end: GRO is on.
    let features = b.exec(&["ethtool", "-k", "eth0"]).unwrap();
    assert!(
        features.contains("generic-receive-offload: on"),
        "{features}"
    );
    assert_eq!(node_2.tcx_ingress_programs("eth0").unwrap().len(), 1);

    let before = node_2.counters().unwrap();
    let xdp_before = xdp_xmit(node_2, &b.host_veth);
    a.ping(b.ip, 5).unwrap();
    b.ping(a.ip, 5).unwrap();
    // Pings carry complete checksums: all ten arrive through XDP, which
    // sends them into B's host veth (the TC path would skip it entirely).
    assert_eq!(node_2.counted_since(&before, "decap").unwrap(), 10);
    assert_eq!(xdp_xmit(node_2, &b.host_veth) - xdp_before, 10);
    // TCP from a veth carries offloaded (partial) checksums: TC delivers it.
    a.tcp_transfer(b, "8M").unwrap();

    node_2.pod_net(&["load", "--no-xdp"]).unwrap();
    let status = node_2.pod_net(&["status", "--json"]).unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let xdp = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|program| program["name"] == "underlay_xdp")
        .unwrap();
    assert_eq!(xdp["attachments"], 0);
    a.ping(b.ip, 2).unwrap();
}

/// BIG TCP pods (`load --big-tcp on`: 192 KiB GSO on their veths and the
/// underlay) across nodes, through a switch that passes such packets whole
/// and runs `br_netfilter`, which checks every IPv4 header it forwards.
/// Direct routing sends the super-packets as they are; over VXLAN they
/// would need outer lengths past 16 bits, so the kernel segments them
/// (`pass_big_gso`). TCP arrives whole both ways on both.
#[test]
fn big_tcp_pods_carry_tcp_across_nodes_over_vxlan_and_direct() {
    require_root!();
    let rig = rig(3, 1, Some(1450));
    rig.switch_passes_gso_up_to(192 * 1024).unwrap();
    let (n1, n2) = (rig.node(1), rig.node(2));
    for node in [n1, n2] {
        node.load_on_underlay(&["--big-tcp", "on"]).unwrap();
        node.register(&node.pods[0]).unwrap();
    }
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    // The underlay takes the super-packets whole too.
    let path = std::path::PathBuf::from(format!("/run/netns/{}", n1.netns));
    let underlay_size = pod_net::sys::netns::run_in_path(&path, || {
        let eth0 = pod_net::sys::netdev::link_by_name("eth0")?.expect("eth0");
        pod_net::sys::netdev::ipv4_gso_max_size(eth0.index, None)
    })
    .unwrap();
    assert_eq!(underlay_size, Some(192 * 1024));
    for direct in [false, true] {
        for (node, peer) in [(n1, n2), (n2, n1)] {
            let cidr = peer.pod_cidr();
            let _ = node.pod_net(&["node", "del", "--cidr", &cidr]);
            let node_ip = peer.underlay_ip.to_string();
            let mut add = vec!["node", "add", "--cidr", &cidr, "--node-ip", &node_ip];
            if direct {
                add.push("--direct");
            }
            node.pod_net(&add).unwrap();
        }
        a.ping(b.ip, 1).unwrap();
        let (out, into) = if direct {
            ("direct_out", "direct_in")
        } else {
            ("encap", "decap")
        };
        let before = n1.counters().unwrap();
        let sent_before = n1.counted(out).unwrap();
        a.tcp_transfer(b, "256M").unwrap();
        let sent = n1.counted(out).unwrap();
        let (packets, bytes) = (sent.0 - sent_before.0, sent.1 - sent_before.1);
        if direct {
            // Without BIG TCP no packet the program sees exceeds 64 KiB and
            // an Ethernet header; on average these do.
            assert!(
                bytes / packets > 65_550,
                "{out}: {packets} packets of {bytes} bytes"
            );
            assert_eq!(n1.counted_since(&before, "pass_big_gso").unwrap(), 0);
        } else {
            assert!(n1.counted_since(&before, "pass_big_gso").unwrap() > 10);
        }
        b.tcp_transfer(a, "64M").unwrap();
        assert!(
            n1.counted_since(&before, out).unwrap() > 100,
            "{out} (direct {direct})"
        );
        assert!(
            n1.counted_since(&before, into).unwrap() > 100,
            "{into} (direct {direct})"
        );
        for reason in ["pass_resize_failed", "pass_frag_needed", "pass_fragment"] {
            assert_eq!(
                n1.counted_since(&before, reason).unwrap(),
                0,
                "{reason} (direct {direct})"
            );
        }
    }
}
