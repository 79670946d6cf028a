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
    // Node 1 stays a plain bridge node; node 2 runs pod-net, reloaded in
    // place before each sample as the variant measured (same pods, same
    // veths, same CPUs: only the program's settings differ).
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 2,
        ..RigSpec::default()
    })?;
    let (direct_a, direct_b) = rig.direct_pair()?;
    let node_2 = rig.node(2);
    node_2.load_and_register()?;
    let pods = (rig.pod(2, 1), rig.pod(2, 2));
    let paths = [
        Path::new("direct veth", &direct_a, &direct_b),
        Path::new("bridge", rig.pod(1, 1), rig.pod(1, 2)),
        Path::variant(
            "pod-net",
            pods,
            vec![node_2],
            &["--nat-check", "on", "--big-tcp=off"],
        ),
        Path::variant(
            "pod-net, NAT check off",
            pods,
            vec![node_2],
            &["--nat-check", "off", "--big-tcp=off"],
        ),
        Path::variant(
            "pod-net, BIG TCP",
            pods,
            vec![node_2],
            &["--nat-check", "on", "--big-tcp=on"],
        ),
    ];
    let samples = compare::sample_round_robin(&paths, options)?;
    let test_run = testrun::ns_per_packet()?;
    Ok(Report {
        title: "Same node: pod to pod".into(),
        rounds: options.rounds,
        subject: "pod-net".into(),
        baselines: vec!["bridge".into(), "direct veth".into()],
        ratios: vec![("pod-net, BIG TCP".into(), "pod-net".into())],
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
             per packet (only for nodes without Services through iptables). \"BIG TCP\" is `load \
             --big-tcp on`: IPv4 GSO/GRO up to 192 KiB on both ends of the pods' veths, against \
             the kernel's 64 KiB. The pod-net rows are the same two pods, reloaded in place before \
             each sample."
                .into(),
        ],
    })
}
