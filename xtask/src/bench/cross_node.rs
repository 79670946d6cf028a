//! `cargo xtask bench cross-node`: flannel-style kernel VXLAN (bridge,
//! `flannel.1`, routes, neighbour and FDB entries) against pod-net's BPF
//! VXLAN, and flannel-style host-gw (kernel routes via the peer node)
//! against pod-net's direct routing (`node add --direct`), pod to pod
//! across nodes, round-robin in one run on one rig.
use anyhow::Result;
use pod_net_tests::{Node, Rig, RigSpec};

use super::{
    BenchOptions,
    compare::{self, Path},
    report::{Goal, Report},
    testrun,
};

const POD_NET_VXLAN: &str = "pod-net VXLAN";
const POD_NET_DIRECT: &str = "pod-net direct";
const HOST_GW: &str = "host-gw";
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
    let paths = [
        Path::new("kernel VXLAN", rig.pod(1, 1), rig.pod(2, 1)),
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
    let samples = compare::sample_round_robin(&paths, options)?;
    let test_run = testrun::ns_per_packet()?;
    let mut report = Report {
        title: "Cross node: pod to pod, VXLAN and direct routing".into(),
        rounds: options.rounds,
        subject: POD_NET_VXLAN.into(),
        baselines: vec!["kernel VXLAN".into()],
        ratios: vec![
            (POD_NET_DIRECT.into(), HOST_GW.into()),
            (POD_NET_DIRECT.into(), POD_NET_VXLAN.into()),
            (POD_NET_VXLAN_BIG.into(), POD_NET_VXLAN.into()),
            (POD_NET_DIRECT_BIG.into(), POD_NET_DIRECT.into()),
        ],
        rows: compare::rows(&paths, &samples),
        notes: vec![
            test_run.describe(&["encap", "decap", "pass_not_ip"]),
            compare::METHOD.into(),
            "Six nodes on one switch bridge; pods at MTU 1450 (flannel's VXLAN MTU) on every \
             path. host-gw is flannel's host-gw backend in kernel routes (`<peer pod CIDR> via \
             <peer node IP> dev eth0`, the bridge as usual). The pod-net rows are the same two \
             pods: before each sample the bench reloads pod-net in place (`load --xdp` or \
             `--no-xdp`, `--big-tcp on` or `off`) on both nodes and replaces each node's entry \
             for the other (`node del`, then `node add`, with `--direct` for pod-net direct). \
             BIG TCP: IPv4 GSO/GRO up to 192 KiB on the pods' veths, against the kernel's 64 KiB."
                .into(),
        ],
    };
    let goals = goals();
    report
        .notes
        .push("Goals of issue 13 (printed, not asserted):".into());
    for goal in &goals {
        let line = report.goal_line(goal);
        report.notes.push(format!("- {line}"));
    }
    Ok(report)
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
