//! `cargo xtask bench cross-node`: flannel-style kernel VXLAN (bridge,
//! `flannel.1`, routes, neighbour and FDB entries) against pod-net's BPF
//! VXLAN, pod to pod across nodes, round-robin in one run on one rig.
use anyhow::Result;
use pod_net_tests::{Rig, RigSpec};

use super::{
    BenchOptions,
    compare::{self, Path},
    report::Report,
    testrun,
};

pub fn run(options: &BenchOptions) -> Result<Report> {
    // Six nodes on one switch, pods at flannel's MTU of 1450: nodes 1 and 2
    // run flannel-style kernel VXLAN, 3 and 4 pod-net, 5 and 6 pod-net with
    // the XDP receive path.
    let rig = Rig::build(&RigSpec {
        nodes: 6,
        pods_per_node: 1,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })?;
    let (n1, n2, n3, n4) = (rig.node(1), rig.node(2), rig.node(3), rig.node(4));
    n1.flannel_style(&[(n2, n2.flannel_vtep_mac())])?;
    n2.flannel_style(&[(n1, n1.flannel_vtep_mac())])?;
    n3.load_cross_node()?;
    n4.load_cross_node()?;
    n3.add_peer(n4, None)?;
    n4.add_peer(n3, None)?;
    let (n5, n6) = (rig.node(5), rig.node(6));
    for (node, peer) in [(n5, n6), (n6, n5)] {
        node.load_cross_node()?;
        node.pod_net(&["load", "--xdp"])?;
        node.add_peer(peer, None)?;
    }
    let paths = [
        Path {
            name: "kernel VXLAN",
            client: rig.pod(1, 1),
            server: rig.pod(2, 1),
        },
        Path {
            name: "pod-net",
            client: rig.pod(3, 1),
            server: rig.pod(4, 1),
        },
        Path {
            name: "pod-net XDP",
            client: rig.pod(5, 1),
            server: rig.pod(6, 1),
        },
    ];
    let samples = compare::sample_round_robin(&paths, options)?;
    let test_run = testrun::ns_per_packet()?;
    Ok(Report {
        title: "Cross node: pod to pod over VXLAN".into(),
        rounds: options.rounds,
        subject: "pod-net".into(),
        baselines: vec!["kernel VXLAN".into()],
        rows: compare::rows(&paths, &samples),
        notes: vec![
            test_run.describe(&["encap", "decap", "pass_not_ip"]),
            compare::METHOD.into(),
            "Six nodes on one switch bridge; pods at MTU 1450 (flannel's). pod-net XDP adds \
             `load --xdp` on the receiving node."
                .into(),
        ],
    })
}
