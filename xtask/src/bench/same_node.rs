//! `cargo xtask bench same-node`: a direct veth pair (the physical limit),
//! the Linux bridge (the path pod-net replaces) and the pod-net fast path,
//! and the bridge of a flannel node with pod-net beside `flannel.1`,
//! measured round-robin in one run on one rig.
use anyhow::Result;
use pod_net_tests::{Rig, RigSpec};

use super::{
    BenchOptions,
    beside::{self, BESIDE, BESIDE_FLANNEL, beside_flannel, flannel_alone},
    compare::{self, Path},
    report::Report,
    settings, testrun,
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
    let node_1 = rig.node(1);
    // Node 1 is a flannel node too (its `flannel.1` has no peers here):
    // the bridge alone, and with pod-net beside flannel.
    node_1.flannel_style(&[])?;
    let node_2 = rig.node(2);
    node_2.load_and_register()?;
    let pods = (rig.pod(2, 1), rig.pod(2, 2));
    let paths = [
        Path::new("direct veth", &direct_a, &direct_b),
        flannel_alone(Path::new(BRIDGE, rig.pod(1, 1), rig.pod(1, 2)), &[node_1]),
        beside_flannel(
            Path::variant(
                BESIDE_FLANNEL,
                (rig.pod(1, 1), rig.pod(1, 2)),
                vec![node_1],
                BESIDE,
            ),
            &[node_1],
        ),
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
    let measured = compare::sample_round_robin(&paths, options)?;
    let test_run = testrun::ns_per_packet()?;
    let mut report = Report {
        title: "Same node: pod to pod".into(),
        rounds: options.rounds,
        subject: "pod-net".into(),
        baselines: vec![BRIDGE.into(), "direct veth".into()],
        ratios: vec![
            ("pod-net, BIG TCP".into(), "pod-net".into()),
            (BESIDE_FLANNEL.into(), BRIDGE.into()),
        ],
        rows: compare::rows(&paths, &measured.samples),
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
            settings::describe(&rig)?,
            "\"NAT check off\" is `load --nat-check off`: no lookup of kube-proxy-NATed flows \
             per packet (only for nodes without Services through iptables). \"BIG TCP\" is `load \
             --big-tcp on`: IPv4 GSO/GRO up to 192 KiB on both ends of the pods' veths, against \
             the kernel's 64 KiB. The pod-net rows are the same two pods, reloaded in place before \
             each sample. \"flannel + pod-net\" is node 1's pods (the bridge row's) with pod-net \
             loaded beside its flannel.1 (`load --beside-flannel --no-xdp --big-tcp=off`, each pod \
             added); for the bridge row pod-net is unloaded from node 1 first."
                .into(),
        ],
    };
    report.notes.extend(measured.notes());
    report
        .notes
        .push("Goals of issue 23 (printed, not asserted):".into());
    for goal in beside::goals(BRIDGE, &["UDP 64 B", "generator max"]) {
        let line = report.goal_line(&goal);
        report.notes.push(format!("- {line}"));
    }
    Ok(report)
}

/// The bridge path: node 1's pods, flannel alone.
const BRIDGE: &str = "bridge";
