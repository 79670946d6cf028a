//! Hitless upgrade: `pod-net load` over a loaded datapath, twenty times,
//! while pods ping each other as fast as a bounded flood goes, on one node
//! and across nodes. Not one packet may be lost.
use std::{process::Stdio, thread, time::Duration};

use pod_net_tests::{Pod, Rig, RigSpec, privileges::require_root};

/// Starts `count` pings from `from` to `to`, 2 ms apart.
fn flood(from: &Pod, to: &Pod, count: u32) -> std::process::Child {
    let count = count.to_string();
    from.command(&[
        "ping",
        "-n",
        "-q",
        "-i",
        "0.002",
        "-c",
        &count,
        "-W",
        "1",
        &to.ip.to_string(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// (transmitted, received) from ping's summary.
fn summary(child: std::process::Child) -> (u64, u64, String) {
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = text
        .lines()
        .find(|line| line.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary in {text}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect();
    (numbers[0], numbers[1], text)
}

#[test]
fn twenty_reloads_under_a_ping_flood_lose_nothing() {
    if !require_root("twenty_reloads_under_a_ping_flood_lose_nothing") {
        return;
    }
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 2,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })
    .unwrap();
    rig.pod_net_mesh().unwrap();
    let (a, b, c) = (rig.pod(1, 1), rig.pod(1, 2), rig.pod(2, 1));
    // Warm up ARP and neighbours so the floods measure only the datapath.
    a.ping(b.ip, 1).unwrap();
    a.ping(c.ip, 1).unwrap();
    let before = rig.node(1).counters().unwrap();

    let same_node = flood(a, b, 4000);
    let cross_node = flood(a, c, 4000);
    thread::sleep(Duration::from_millis(300));
    for round in 0..20 {
        for node in rig.nodes() {
            let output = node.pod_net(&["load"]).unwrap();
            assert!(output.contains("in place"), "round {round}: {output}");
        }
    }
    let (sent, received, text) = summary(same_node);
    assert_eq!((sent, received), (4000, 4000), "same node:\n{text}");
    let (sent, received, text) = summary(cross_node);
    assert_eq!((sent, received), (4000, 4000), "cross node:\n{text}");

    // And the floods really took the fast path throughout.
    let after = rig.node(1).counters().unwrap();
    assert!(after["redirect_local"] - before["redirect_local"] >= 8000);
    assert!(after["encap"] - before["encap"] >= 4000);
    assert!(after["decap"] - before["decap"] >= 4000);
}
