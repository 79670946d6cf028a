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
    // Four nodes on one switch, pods at flannel's MTU of 1450: nodes 1 and
    // 2 run flannel-style kernel VXLAN, 3 and 4 pod-net, measured with and
    // without the XDP receive path on the same pods (reloaded in place).
    let rig = Rig::build(&RigSpec {
        nodes: 4,
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
    let pods = (rig.pod(3, 1), rig.pod(4, 1));
    let paths = [
        Path::new("kernel VXLAN", rig.pod(1, 1), rig.pod(2, 1)),
        Path::variant("pod-net", pods, vec![n3, n4], &["--no-xdp"]),
        Path::variant("pod-net XDP", pods, vec![n3, n4], &["--xdp"]),
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
            "Four nodes on one switch bridge; pods at MTU 1450 (flannel's). pod-net XDP is the \
             same two pods after `load --xdp` on both nodes (reloaded in place before each \
             sample)."
                .into(),
        ],
    })
}
