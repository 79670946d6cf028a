//! Same-node fast path on the rig: real veths, bridge, namespaces, kernel.
use std::collections::BTreeMap;

use pod_net_tests::{
    Node, Pod, Rig, RigSpec,
    cmd::output_of,
    frames::{self, ETH_P_IP, IPPROTO_ICMP, Ipv4},
    require_root,
};

fn one_node_two_pods() -> Rig {
    Rig::build(&RigSpec::default()).expect("build rig")
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(name, count)| ((*name).to_owned(), *count))
        .collect()
}

/// Pods that already know each other's MAC, so a test counts only its own
/// packets (no ARP in the middle).
fn quiet_pair(rig: &Rig) -> (&Pod, &Pod) {
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    a.pin_neighbour(b).unwrap();
    b.pin_neighbour(a).unwrap();
    (a, b)
}

#[test]
fn pings_bypass_the_bridge_and_count_exactly() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = quiet_pair(&rig);

    let before = node.counters().unwrap();
    let b_veth_before = node.link_packets(&b.host_veth).unwrap();
    let b_eth0_before = b.eth0_packets().unwrap();
    a.ping(b.ip, 10).unwrap();
    let b_veth_after = node.link_packets(&b.host_veth).unwrap();
    let b_eth0_after = b.eth0_packets().unwrap();

    // 10 requests A->B and 10 replies B->A, each redirected once.
    assert_eq!(
        node.moved_since(&before).unwrap(),
        counts(&[("redirect_local", 20)])
    );
    // B received every request, and none of it crossed B's host veth.
    assert_eq!(b_eth0_after.rx - b_eth0_before.rx, 10);
    assert_eq!(b_veth_after.tx - b_veth_before.tx, 0);
}

#[test]
fn tcp_flows_through_the_fast_path() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = quiet_pair(&rig);

    let before = node.counters().unwrap();
    let b_veth_before = node.link_packets(&b.host_veth).unwrap();
    let _server = b.iperf3_server(&[]).unwrap();
    let json = a.iperf3_client(b.ip, &["-n", "64M"]).unwrap();
    // The sender's count is exact; the receiver's summary is cut when the
    // sender reports done, so it can trail by what was still in flight.
    let sent = json["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    let received = json["end"]["sum_received"]["bytes"].as_u64().unwrap();
    assert!(sent >= 64 << 20, "iperf3 sent only {sent} bytes");
    assert!(received > 0, "nothing arrived of {sent} bytes");

    let delta = node.moved_since(&before).unwrap();
    // Every packet of the connection went through the fast path, both ways.
    assert_eq!(delta.keys().collect::<Vec<_>>(), ["redirect_local"]);
    assert!(delta["redirect_local"] > 1000, "{delta:?}");
    let b_veth_after = node.link_packets(&b.host_veth).unwrap();
    assert_eq!(b_veth_after.tx - b_veth_before.tx, 0);
}

#[test]
fn traffic_keeps_flowing_with_no_pod_net_process_running() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = quiet_pair(&rig);
    // Every pod-net call above has exited; only pins hold the datapath.
    let running = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("pod-net --pin-dir {}", node.pin_dir.display()),
        ])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "a pod-net process is still running"
    );
    let before = node.counters().unwrap();
    a.ping(b.ip, 3).unwrap();
    assert_eq!(
        node.moved_since(&before).unwrap(),
        counts(&[("redirect_local", 6)])
    );
}

#[test]
fn pod_del_and_unload_fall_back_to_the_bridge() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = quiet_pair(&rig);

    node.pod_net(&["pod", "del", "--ip", &b.ip.to_string()])
        .unwrap();
    let before = node.counters().unwrap();
    let b_veth_before = node.link_packets(&b.host_veth).unwrap();
    a.ping(b.ip, 5).unwrap();
    // A's program still runs but B is unknown now; B has no program left,
    // so its replies are not seen at all. The bridge carried the requests.
    assert_eq!(
        node.moved_since(&before).unwrap(),
        counts(&[("pass_unknown_dst", 5)])
    );
    assert_eq!(
        node.link_packets(&b.host_veth).unwrap().tx - b_veth_before.tx,
        5
    );
    assert!(tcx_programs(node, &b.host_veth).is_empty());
    assert!(!tcx_programs(node, &a.host_veth).is_empty());

    node.pod_net(&["unload"]).unwrap();
    assert!(!node.pin_dir.exists(), "unload left the pin dir");
    assert!(tcx_programs(node, &a.host_veth).is_empty());
    a.ping(b.ip, 3).unwrap();
    b.ping(a.ip, 3).unwrap();
}

#[test]
fn reload_keeps_entries_and_attachments() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = quiet_pair(&rig);
    let pods_before = node.pod_net(&["pod", "list", "--json"]).unwrap();
    let programs_before = tcx_programs(node, &a.host_veth);

    let output = node.pod_net(&["load"]).unwrap();
    assert!(output.contains("2 attachment(s) updated"), "{output}");
    assert_eq!(
        node.pod_net(&["pod", "list", "--json"]).unwrap(),
        pods_before
    );
    let programs_after = tcx_programs(node, &a.host_veth);
    assert_eq!(programs_after.len(), 1);
    assert_ne!(
        programs_after, programs_before,
        "the program was not replaced"
    );

    let before = node.counters().unwrap();
    a.ping(b.ip, 2).unwrap();
    assert_eq!(
        node.moved_since(&before).unwrap(),
        counts(&[("redirect_local", 4)])
    );
}

#[test]
fn malformed_frames_from_a_pod_are_passed_and_counted() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = quiet_pair(&rig);
    let mac = |text: &str| frames::mac(text);
    let ping = frames::ping_frame(
        mac(&b.mac),
        mac(&a.mac),
        &Ipv4::new(a.ip, b.ip, IPPROTO_ICMP),
    );

    let mut cut_ipv4 = frames::ethernet(mac(&b.mac), mac(&a.mac), ETH_P_IP);
    cut_ipv4.extend_from_slice(&ping[14..14 + 10]);
    let mut bad_ihl = ping.clone();
    bad_ihl[14] = 0x43;

    let before = node.counters().unwrap();
    a.inject(&cut_ipv4).unwrap();
    a.inject(&bad_ihl).unwrap();
    // Delivery is synchronous on veth, but give the softirq a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        node.moved_since(&before).unwrap(),
        counts(&[("pass_malformed", 2)])
    );
}

/// IDs of the TCX ingress programs on `ifname`, as the kernel reports them.
fn tcx_programs(node: &Node, ifname: &str) -> Vec<u32> {
    node.tcx_ingress_programs(ifname).unwrap()
}

/// The IPv4 GSO size of interface `name` in namespace `netns`.
fn gso_size(netns: &str, name: &str) -> u32 {
    let path = std::path::PathBuf::from(format!("/run/netns/{netns}"));
    pod_net::sys::netns::run_in_path(&path, || {
        let link = pod_net::sys::netdev::link_by_name(name)?.expect("the interface");
        Ok(pod_net::sys::netdev::ipv4_gso_max_size(link.index, None)?.expect("IPv4 BIG TCP"))
    })
    .unwrap()
}

/// `load --big-tcp on` gives registered pods 192 KiB GSO/GRO on both
/// ends of their veth (and new pods as they are added), TCP still flows
/// through the fast path, `status` checks it, and `off` gives the kernel's
/// default back.
#[test]
fn big_tcp_is_given_to_pods_and_taken_back() {
    require_root!();
    let rig = one_node_two_pods();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    node.pod_net(&["load"]).unwrap();
    node.register(a).unwrap();
    let loaded = node.pod_net(&["load", "--big-tcp", "on"]).unwrap();
    assert!(
        loaded.contains("BIG TCP: on (pods' IPv4 GSO/GRO up to 192 KiB)"),
        "{loaded}"
    );
    node.register(b).unwrap();
    for pod in [a, b] {
        assert_eq!(
            gso_size(&node.netns, &pod.host_veth),
            192 * 1024,
            "{}",
            pod.host_veth
        );
        assert_eq!(gso_size(&pod.netns, "eth0"), 192 * 1024, "{}", pod.netns);
    }
    let status = node.pod_net(&["status"]).unwrap();
    assert!(status.contains("BIG TCP on"), "{status}");

    let (a, b) = quiet_pair(&rig);
    let before = node.counters().unwrap();
    let _server = b.iperf3_server(&[]).unwrap();
    let json = a.iperf3_client(b.ip, &["-n", "64M"]).unwrap();
    assert!(json["end"]["sum_sent"]["bytes"].as_u64().unwrap() >= 64 << 20);
    let delta = node.moved_since(&before).unwrap();
    assert_eq!(delta.keys().collect::<Vec<_>>(), ["redirect_local"]);

    // A pod whose end lost it is a problem for status.
    let path = std::path::PathBuf::from(format!("/run/netns/{}", a.netns));
    pod_net::sys::netns::run_in_path(&path, || {
        let link = pod_net::sys::netdev::link_by_name("eth0")?.expect("eth0");
        pod_net::sys::netdev::set_ipv4_gso_gro_max(link.index, 65536)
    })
    .unwrap();
    let status = output_of(&mut node.pod_net_command(&["status"])).unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!(
            "BIG TCP is on, but the pod's end of {} has an IPv4 GSO size of 65536",
            a.host_veth
        )),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    node.pod_net(&["load", "--big-tcp", "off"]).unwrap();
    for pod in [a, b] {
        assert_eq!(gso_size(&node.netns, &pod.host_veth), 65536);
        assert_eq!(gso_size(&pod.netns, "eth0"), 65536);
    }
    assert!(node.pod_net(&["status"]).unwrap().contains("BIG TCP off"));
}

/// `load --attach tc`: each pod veth gets pod-net's `cls_bpf` filter and
/// no TCX link, the fast path counts exactly as with TCX, `pod del` and
/// `unload` take the filters away, and a veth with an `ingress` qdisc (which
/// leaves no room for clsact) is refused in one line with nothing stored.
#[test]
fn tc_filters_carry_the_fast_path_and_go_with_del_and_unload() {
    require_root!();
    let rig = one_node_two_pods();
    let node = rig.node(1);
    let output = node.pod_net(&["load", "--attach", "tc"]).unwrap();
    assert!(
        output.contains("attach: tc (cls_bpf filters on clsact qdiscs)"),
        "{output}"
    );
    node.register(rig.pod(1, 1)).unwrap();
    node.register(rig.pod(1, 2)).unwrap();
    let (a, b) = quiet_pair(&rig);
    for pod in [a, b] {
        let (name, _) = node.tc_filter(&pod.host_veth).unwrap().expect("a filter");
        assert_eq!(name, "pod_egress");
        assert!(tcx_programs(node, &pod.host_veth).is_empty());
    }
    assert!(
        node.pod_net(&["status"])
            .unwrap()
            .contains("attach:    tc\n")
    );

    let before = node.counters().unwrap();
    a.ping(b.ip, 3).unwrap();
    assert_eq!(
        node.moved_since(&before).unwrap(),
        counts(&[("redirect_local", 6)])
    );

    node.pod_net(&["pod", "del", "--ip", &b.ip.to_string()])
        .unwrap();
    assert_eq!(node.tc_filter(&b.host_veth).unwrap(), None);
    assert!(node.tc_filter(&a.host_veth).unwrap().is_some());

    // An ingress qdisc takes clsact's place: the add is refused.
    node.exec(&["tc", "qdisc", "del", "dev", &b.host_veth, "clsact"])
        .unwrap();
    node.exec(&["tc", "qdisc", "add", "dev", &b.host_veth, "ingress"])
        .unwrap();
    assert_pod_add_refused(
        node,
        b,
        &format!(
            "{} needs a clsact qdisc, as this node attaches with tc filters (an `ingress` qdisc \
             takes its place)",
            b.host_veth
        ),
    );
    let pods = node.pod_net(&["pod", "list"]).unwrap();
    assert!(!pods.contains(&b.ip.to_string()), "{pods}");

    // Another tool's filter where pod-net's would go (here classic BPF that
    // accepts everything) is refused, not replaced.
    node.exec(&["tc", "qdisc", "del", "dev", &b.host_veth, "ingress"])
        .unwrap();
    node.exec(&["tc", "qdisc", "add", "dev", &b.host_veth, "clsact"])
        .unwrap();
    node.exec(&[
        "tc",
        "filter",
        "add",
        "dev",
        &b.host_veth,
        "ingress",
        "pref",
        "1",
        "handle",
        "1",
        "bpf",
        "bytecode",
        "1,6 0 0 4294967295,",
    ])
    .unwrap();
    assert_pod_add_refused(
        node,
        b,
        &format!(
            "{} has another tc filter at priority 1, handle 1 (\"\"); pod-net will not replace it",
            b.host_veth
        ),
    );
    let filters = node
        .exec(&["tc", "filter", "show", "dev", &b.host_veth, "ingress"])
        .unwrap();
    assert!(
        filters.contains("handle 0x1") && !filters.contains("pod_egress"),
        "{filters}"
    );

    let output = node.pod_net(&["unload"]).unwrap();
    assert!(output.contains("1 attachment(s) removed"), "{output}");
    assert_eq!(node.tc_filter(&a.host_veth).unwrap(), None);
    a.ping(b.ip, 2).unwrap();
}

/// `pod add` of `pod` fails with exit 1 and one line that contains `needle`.
fn assert_pod_add_refused(node: &Node, pod: &Pod, needle: &str) {
    let refused = output_of(&mut node.pod_add_command(pod)).unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}
