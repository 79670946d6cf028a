//! Hitless upgrade: `pod-net load` over a loaded datapath, twenty times,
//! while pods ping each other as fast as a bounded flood goes, on one node
//! and across nodes. Not one packet may be lost.
use std::{thread, time::Duration};

use pod_net_tests::{Rig, RigSpec, cmd::output_of, require_root};

/// Two meshed nodes: pods 1 and 2 on node 1, pod 1 on node 2.
fn two_meshed_nodes() -> Rig {
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 2,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })
    .unwrap();
    rig.pod_net_mesh().unwrap();
    rig
}

/// Runs `change` while node 1's first pod floods its neighbour and the
/// pod on node 2 with `count` pings each, and checks that not one was lost
/// and that the floods took the fast path throughout.
fn lose_nothing_while(rig: &Rig, count: u32, change: impl FnOnce()) {
    let (a, b, c) = (rig.pod(1, 1), rig.pod(1, 2), rig.pod(2, 1));
    // Warm up ARP and neighbours so the floods measure only the datapath.
    a.ping(b.ip, 1).unwrap();
    a.ping(c.ip, 1).unwrap();
    let before = rig.node(1).counters().unwrap();

    let same_node = a.ping_flood(b.ip, count).unwrap();
    let cross_node = a.ping_flood(c.ip, count).unwrap();
    thread::sleep(Duration::from_millis(300));
    change();
    let (sent, received, text) = same_node.finish().unwrap();
    assert_eq!(
        (sent, received),
        (u64::from(count), u64::from(count)),
        "same node:\n{text}"
    );
    let (sent, received, text) = cross_node.finish().unwrap();
    assert_eq!(
        (sent, received),
        (u64::from(count), u64::from(count)),
        "cross node:\n{text}"
    );

    let after = rig.node(1).counters().unwrap();
    let moved = |reason: &str| after[reason] - before[reason];
    assert!(moved("redirect_local") >= 2 * u64::from(count));
    assert!(moved("encap") >= u64::from(count));
    assert!(moved("decap") >= u64::from(count));
}

/// `pod-net load` with `args` on every node, in place.
fn reload_all(rig: &Rig, args: &[&str], round: usize) {
    for node in rig.nodes() {
        let output = node.pod_net(args).unwrap();
        assert!(output.contains("in place"), "round {round}: {output}");
    }
}

#[test]
fn twenty_reloads_under_a_ping_flood_lose_nothing() {
    require_root!();
    let rig = two_meshed_nodes();
    lose_nothing_while(&rig, 4000, || {
        for round in 0..20 {
            reload_all(&rig, &["load"], round);
        }
    });
}

/// `load --attach tc` and back, and reloads in either mode, under the same
/// floods: every switch attaches the new way before it detaches the old,
/// and a reload swaps the program inside each tc filter as it does inside
/// each TCX link. Not one packet may be lost.
#[test]
fn attach_switches_and_tc_reloads_under_a_ping_flood_lose_nothing() {
    require_root!();
    let rig = two_meshed_nodes();
    // The first switch to tc gives each interface a clsact qdisc, and the
    // kernel stops an interface's transmit queues for a moment to graft
    // one: a packet sent out eth0 then can be dropped (the README says
    // so). The qdiscs stay once made, so the switches below meet none.
    reload_all(&rig, &["load", "--attach", "tc"], 0);
    reload_all(&rig, &["load", "--attach", "tcx"], 0);
    lose_nothing_while(&rig, 3000, || {
        for round in 0..4 {
            for args in [
                &["load", "--attach", "tc"][..],
                &["load"],
                &["load", "--attach", "tcx"],
            ] {
                reload_all(&rig, args, round);
            }
        }
        reload_all(&rig, &["load", "--attach", "tc"], 4);
    });

    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    // Every attachment is a filter running the pinned program now, and no
    // TCX link or pin is left.
    let node = rig.node(1);
    let status: serde_json::Value =
        serde_json::from_str(&node.pod_net(&["status", "--json"]).unwrap()).unwrap();
    assert_eq!(status["attach"], "tc");
    assert_eq!(status["healthy"], true, "{status}");
    let program_id = |name: &str| {
        status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|program| program["name"] == name)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    for (ifname, program) in [
        (a.host_veth.as_str(), "pod_egress"),
        (b.host_veth.as_str(), "pod_egress"),
        ("eth0", "underlay_ingress"),
    ] {
        assert_eq!(
            node.tc_filter(ifname).unwrap(),
            Some((program.to_owned(), program_id(program))),
            "{ifname}"
        );
        assert!(
            node.tcx_ingress_programs(ifname).unwrap().is_empty(),
            "{ifname}"
        );
    }
    for program in ["pod_egress", "underlay_ingress"] {
        let links = node.pinned_links(program).unwrap();
        assert!(links.is_empty(), "{program}: {links:?}");
    }
}

/// A pinned map this build cannot read (another version's layout) is
/// refused by name, and kept with its entries: never silently dropped.
#[test]
fn a_map_of_another_layout_is_refused_and_kept() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    // A pin dir another pod-net version made: marked, with its own map.
    std::fs::create_dir_all(node.pin_dir.join("pod-net-pin-dir")).unwrap();
    let map = node.pin_dir.join("local_endpoints");
    let map = map.to_str().unwrap();
    let bpftool = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        pod_net_tests::cmd::run("bpftool", &args).unwrap()
    };
    bpftool(&format!(
        "map create {map} type hash key 8 value 16 entries 16 name local_endpoints"
    ));
    let entry = "key 1 2 3 4 5 6 7 8 value 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9";
    bpftool(&format!("map update pinned {map} {entry}"));
    let before = bpftool(&format!("-j map dump pinned {map}"));

    let output = output_of(&mut node.pod_net_command(&["load"])).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("pinned map {map} has key/value size 8/16"))
            && stderr.contains("another pod-net version"),
        "{stderr}"
    );
    // Nothing replaced, nothing loaded: the old map and its entry stand.
    assert_eq!(bpftool(&format!("-j map dump pinned {map}")), before);
    assert!(!node.pin_dir.join("progs").exists());
}

/// A pinned map swapped after load for one of the same sizes but another
/// type (what a mixed-version upgrade could leave): the commands that read
/// it name it in one line.
#[test]
fn a_map_swapped_for_another_type_is_named_by_the_commands_that_read_it() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: 1,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let counters = pod_net_common::map_table::COUNTERS;
    let pin = node.pin_dir.join(counters.name);
    std::fs::remove_file(&pin).unwrap();
    // A plain array where this build pins a per-CPU one: the sizes agree.
    pod_net_tests::cmd::run(
        "bpftool",
        [
            "map",
            "create",
            pin.to_str().unwrap(),
            "type",
            "array",
            "key",
            &counters.key_size.to_string(),
            "value",
            &counters.value_size.to_string(),
            "entries",
            &counters.capacity.to_string(),
            "name",
            counters.name,
        ],
    )
    .unwrap();

    let wanted = "pinned map counters is not of this build's layout (made by another pod-net \
                  version?)";
    for args in [
        &["stats"][..],
        &["status"],
        &[
            "pod",
            "add",
            "--ip",
            &rig.pod(1, 1).ip.to_string(),
            "--veth",
            "veth-p1",
        ],
    ] {
        let output = node.pod_net_output(args).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("pod-net: error: {wanted}: ")),
            "{args:?}: {stderr}"
        );
    }
    assert!(node.pod_ips().unwrap_err().to_string().contains(wanted));
}
