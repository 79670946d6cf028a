//! `cargo xtask bench same-node`: a direct veth pair (the physical limit),
//! the Linux bridge (the path pod-net replaces) and the pod-net fast path,
//! measured round-robin in one run on one rig.
use anyhow::Result;
use pod_net_tests::{Rig, RigSpec};

use super::{
    BenchOptions,
    compare::{self, Path},
    report::Report,
    testrun,
};

pub fn run(options: &BenchOptions) -> Result<Report> {
    // Node 1 stays a plain bridge node; node 2 runs pod-net as loaded by
    // default; node 3 runs it without the per-packet NAT check.
    let rig = Rig::build(&RigSpec {
        nodes: 3,
        pods_per_node: 2,
        ..RigSpec::default()
    })?;
    let (direct_a, direct_b) = rig.direct_pair()?;
    rig.node(2).load_and_register()?;
    rig.node(3).pod_net(&["load", "--nat-check", "off"])?;
    rig.node(3).load_and_register()?;
    let paths = [
        Path {
            name: "direct veth",
            client: &direct_a,
            server: &direct_b,
        },
        Path {
            name: "bridge",
            client: rig.pod(1, 1),
            server: rig.pod(1, 2),
        },
        Path {
            name: "pod-net",
            client: rig.pod(2, 1),
            server: rig.pod(2, 2),
        },
        Path {
            name: "pod-net, NAT check off",
            client: rig.pod(3, 1),
            server: rig.pod(3, 2),
        },
    ];
    let samples = compare::sample_round_robin(&paths, options)?;
    let test_run = testrun::ns_per_packet()?;
    Ok(Report {
        title: "Same node: pod to pod".into(),
        rounds: options.rounds,
        subject: "pod-net".into(),
        baselines: vec!["bridge".into(), "direct veth".into()],
        rows: compare::rows(&paths, &samples),
        notes: vec![
            test_run.describe(&[
                "redirect_local",
                "redirect_local_tcp",
                "redirect_local_tcp (NAT check off)",
                "pass_unknown_dst_tcp",
                "pass_unknown_dst_tcp (NAT check off)",
                "pass_not_ip",
            ]),
            compare::METHOD.into(),
            "\"NAT check off\" is `load --nat-check off`: no lookup of kube-proxy-NATed flows \
             per packet (only for nodes without Services through iptables)."
                .into(),
        ],
    })
}
