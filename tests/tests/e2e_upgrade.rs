//! Hitless upgrade: `pod-net load` over a loaded datapath, twenty times,
//! while pods ping each other as fast as a bounded flood goes, on one node
//! and across nodes. Not one packet may be lost.
use std::{thread, time::Duration};

use pod_net_tests::{Rig, RigSpec, privileges::require_root};

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

    let same_node = a.ping_flood(b.ip, 4000).unwrap();
    let cross_node = a.ping_flood(c.ip, 4000).unwrap();
    thread::sleep(Duration::from_millis(300));
    for round in 0..20 {
        for node in rig.nodes() {
            let output = node.pod_net(&["load"]).unwrap();
            assert!(output.contains("in place"), "round {round}: {output}");
        }
    }
    let (sent, received, text) = same_node.finish().unwrap();
    assert_eq!((sent, received), (4000, 4000), "same node:\n{text}");
    let (sent, received, text) = cross_node.finish().unwrap();
    assert_eq!((sent, received), (4000, 4000), "cross node:\n{text}");

    // And the floods really took the fast path throughout.
    let after = rig.node(1).counters().unwrap();
    assert!(after["redirect_local"] - before["redirect_local"] >= 8000);
    assert!(after["encap"] - before["encap"] >= 4000);
    assert!(after["decap"] - before["decap"] >= 4000);
}
