//! `cargo xtask bench cross-node`: flannel-style kernel VXLAN (bridge,
//! `flannel.1`, routes, neighbour and FDB entries) against pod-net's BPF
//! VXLAN, and flannel-style host-gw (kernel routes via the peer node)
//! against pod-net's direct routing (`node add --direct`), and the same
//! flannel nodes and pods with pod-net loaded beside `flannel.1`
//! (`load --beside-flannel`), pod to pod across nodes, round-robin in one
//! run on one rig.
use anyhow::Result;
use pod_net_tests::{Node, Rig, RigSpec};

use super::{
    BenchOptions,
    beside::{self, BESIDE, BESIDE_FLANNEL, beside_flannel, flannel_alone},
    compare::{self, Path},
    report::{Goal, Report},
    settings, testrun,
};

const KERNEL_VXLAN: &str = "kernel VXLAN";
const POD_NET_VXLAN: &str = "pod-net VXLAN";
const POD_NET_DIRECT: &str = "pod-net direct";
const HOST_GW: &str = "host-gw";
const HOST_TO_HOST: &str = "host to host";
const POD_NET_VXLAN_BIG: &str = "pod-net VXLAN, BIG TCP";
const POD_NET_DIRECT_BIG: &str = "pod-net direct, BIG TCP";
/// Reload arguments of the pod-net variants.
const NO_XDP: &str = "--no-xdp";
const BIG_OFF: &str = "--big-tcp=off";
const BIG_ON: &str = "--big-tcp=on";

pub fn run(options: &BenchOptions) -> Result<Report> {
    // Six nodes on one switch, pods at flannel's VXLAN MTU of 1450 on
    // every path (the same MTU for all, so no path wins by its MTU): nodes
    // 1 and 2 run flannel-style kernel VXLAN, 5 and 6 flannel-style
    // host-gw, 3 and 4 pod-net. pod-net's variants (VXLAN with and without
    // the XDP receive path, direct routing) are the same two pods,
    // reloaded and their node entries switched before each sample.
    let rig = Rig::build(&RigSpec {
        nodes: 6,
        pods_per_node: 1,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })?;
    let (n1, n2, n3, n4, n5, n6) = (
        rig.node(1),
        rig.node(2),
        rig.node(3),
        rig.node(4),
        rig.node(5),
        rig.node(6),
    );
    // BIG TCP's super-packets cross the switch whole (see the method).
    rig.switch_passes_gso_up_to(192 * 1024)?;
    n1.flannel_style(&[(n2, n2.flannel_vtep_mac())])?;
    n2.flannel_style(&[(n1, n1.flannel_vtep_mac())])?;
    n5.host_gw_style(&[n6])?;
    n6.host_gw_style(&[n5])?;
    n3.load_cross_node()?;
    n4.load_cross_node()?;
    n3.add_peer(n4, None)?;
    n4.add_peer(n3, None)?;
    let pods = (rig.pod(3, 1), rig.pod(4, 1));
    let pod_net_nodes = || vec![n3, n4];
    let flannel_pods = (rig.pod(1, 1), rig.pod(2, 1));
    // The hosts themselves over the same underlay: nodes 5 and 6 have no
    // BPF program on their eth0.
    let hosts = (n5.host_end()?, n6.host_end()?);
    let paths = [
        Path::new(HOST_TO_HOST, &hosts.0, &hosts.1),
        flannel_alone(
            Path::new(KERNEL_VXLAN, flannel_pods.0, flannel_pods.1),
            &[n1, n2],
        ),
        beside_flannel(
            Path::variant(BESIDE_FLANNEL, flannel_pods, vec![n1, n2], BESIDE),
            &[n1, n2],
        ),
        entries(
            Path::variant(POD_NET_VXLAN, pods, pod_net_nodes(), &[NO_XDP, BIG_OFF]),
            (n3, n4),
            false,
        ),
        entries(
            Path::variant("pod-net XDP", pods, pod_net_nodes(), &["--xdp", BIG_OFF]),
            (n3, n4),
            false,
        ),
        entries(
            Path::variant(POD_NET_VXLAN_BIG, pods, pod_net_nodes(), &[NO_XDP, BIG_ON]),
            (n3, n4),
            false,
        ),
        Path::new(HOST_GW, rig.pod(5, 1), rig.pod(6, 1)),
        entries(
            Path::variant(POD_NET_DIRECT, pods, pod_net_nodes(), &[NO_XDP, BIG_OFF]),
            (n3, n4),
            true,
        ),
        entries(
            Path::variant(POD_NET_DIRECT_BIG, pods, pod_net_nodes(), &[NO_XDP, BIG_ON]),
            (n3, n4),
            true,
        ),
    ];
    let measured = compare::sample_round_robin(&paths, options)?;
    let test_run = testrun::ns_per_packet()?;
    let mut report = Report {
        title: "Cross node: pod to pod, VXLAN and direct routing, beside flannel, and the hosts"
            .into(),
        rounds: options.rounds,
        subject: POD_NET_VXLAN.into(),
        baselines: vec![KERNEL_VXLAN.into()],
        ratios: vec![
            (BESIDE_FLANNEL.into(), KERNEL_VXLAN.into()),
            (POD_NET_DIRECT.into(), HOST_TO_HOST.into()),
            (POD_NET_DIRECT.into(), HOST_GW.into()),
            (POD_NET_DIRECT.into(), POD_NET_VXLAN.into()),
            (POD_NET_VXLAN_BIG.into(), POD_NET_VXLAN.into()),
            (POD_NET_DIRECT_BIG.into(), POD_NET_DIRECT.into()),
        ],
        rows: compare::rows(&paths, &measured.samples),
        notes: vec![
            test_run.describe(&["encap", "decap", "pass_not_ip"]),
            compare::METHOD.into(),
            settings::describe(&rig)?,
            "Six nodes on one switch bridge; pods at MTU 1450 (flannel's VXLAN MTU) on every \
             path. \"host to host\" is nodes 5 and 6 themselves, eth0 to eth0 at MTU 1500 over \
             the same switch, with no program on either: the limit a pod path can approach. host-gw is flannel's host-gw backend in kernel routes (`<peer pod CIDR> via \
             <peer node IP> dev eth0`, the bridge as usual). The pod-net rows are the same two \
             pods: before each sample the bench reloads pod-net in place (`load --xdp` or \
             `--no-xdp`, `--big-tcp on` or `off`) on both nodes and replaces each node's entry \
             for the other (`node del`, then `node add`, with `--direct` for pod-net direct). \
             BIG TCP: IPv4 GSO/GRO up to 192 KiB on the pods' veths, against the kernel's 64 KiB. \
             \"flannel + pod-net\" is the kernel VXLAN nodes and pods with pod-net loaded beside \
             their flannel.1 (`load --beside-flannel --no-xdp --big-tcp=off`, the remote entries \
             read from flannel.1's routes, neighbours and FDB, each pod added); for \"kernel \
             VXLAN\" pod-net is unloaded from them first."
                .into(),
        ],
    };
    report.notes.extend(measured.notes());
    for (issue, goals) in [
        (13, goals()),
        (23, beside_flannel_goals()),
        (24, host_goals()),
    ] {
        report
            .notes
            .push(format!("Goals of issue {issue} (printed, not asserted):"));
        for goal in &goals {
            let line = report.goal_line(goal);
            report.notes.push(format!("- {line}"));
        }
    }
    Ok(report)
}

/// Issue 24: pod-net direct ≥ 0.95× the hosts' own TCP and 64-byte packet
/// rates (iperf3 and the generator), at ≤ 1.1× their CPU per packet.
fn host_goals() -> Vec<Goal> {
    let goal = |figure, better_by| Goal {
        subject: POD_NET_DIRECT,
        baseline: HOST_TO_HOST,
        figure,
        better_by,
        strictly: false,
    };
    vec![
        goal("TCP throughput", 0.95),
        goal("UDP 64 B", 0.95),
        goal("generator max", 0.95),
        goal("CPU per packet, fixed rate", 1.0 / 1.1),
    ]
}

/// Issue 23: beside flannel, ≥ 1.25× flannel's 64-byte packet rate
/// (iperf3 and the generator) at ≤ 0.8× its CPU per packet.
fn beside_flannel_goals() -> Vec<Goal> {
    beside::goals(
        KERNEL_VXLAN,
        &["UDP 64 B", "generator max", "CPU per packet, fixed rate"],
    )
}

/// Before each sample, `node del` and `node add` (with `--direct` when
/// `direct`) of each pod-net node's entry for the other.
fn entries<'a>(mut path: Path<'a>, (a, b): (&'a Node, &'a Node), direct: bool) -> Path<'a> {
    for (node, peer) in [(a, b), (b, a)] {
        let cidr = peer.pod_cidr();
        let node_ip = peer.underlay_ip.to_string();
        let mut add = vec!["node", "add", "--cidr", &cidr, "--node-ip", &node_ip];
        if direct {
            add.push("--direct");
        }
        path = path
            .then(node, &["node", "del", "--cidr", &cidr])
            .then(node, &add);
    }
    path
}

/// Issue 13: direct routing ≥ 1.2× host-gw's TCP and ≥ 1.3× its 64-byte
/// UDP rate with latency no worse, and ahead of pod-net's VXLAN on all.
fn goals() -> Vec<Goal> {
    let goal = |baseline, figure, better_by, strictly| Goal {
        subject: POD_NET_DIRECT,
        baseline,
        figure,
        better_by,
        strictly,
    };
    vec![
        goal(HOST_GW, "TCP throughput", 1.2, false),
        goal(HOST_GW, "UDP 64 B", 1.3, false),
        goal(HOST_GW, "latency p50", 1.0, false),
        goal(HOST_GW, "TCP RR", 1.0, false),
        goal(POD_NET_VXLAN, "TCP throughput", 1.0, true),
        goal(POD_NET_VXLAN, "UDP 64 B", 1.0, true),
        goal(POD_NET_VXLAN, "latency p50", 1.0, true),
        goal(POD_NET_VXLAN, "TCP RR", 1.0, true),
    ]
}
