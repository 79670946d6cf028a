//! pod-net beside flannel in the benches: the same flannel-style nodes and
//! pods (`flannel.1` with flanneld's routes, neighbours and FDB entries),
//! measured with pod-net unloaded ("flannel alone") and loaded beside
//! `flannel.1` (`load --beside-flannel`), in the same round-robin run.
use pod_net_tests::Node;

use super::{compare::Path, report::Goal};

/// The name of the paths with pod-net beside flannel.
pub const BESIDE_FLANNEL: &str = "flannel + pod-net";

/// pod-net's reload arguments beside flannel: the TC paths only.
pub const BESIDE: &[&str] = &["--beside-flannel", "--no-xdp", "--big-tcp=off"];

/// Before each sample, pod-net unloaded from `nodes` (loaded first, so
/// that there is something to unload whatever ran before): flannel alone.
pub fn flannel_alone<'a>(mut path: Path<'a>, nodes: &[&'a Node]) -> Path<'a> {
    for node in nodes {
        path = path
            .then(node, &["load", "--beside-flannel"])
            .then(node, &["unload"]);
    }
    path
}

/// After the reload beside flannel, each node's pods added (a no-op when
/// they are registered already).
pub fn beside_flannel<'a>(mut path: Path<'a>, nodes: &[&'a Node]) -> Path<'a> {
    for node in nodes {
        for pod in &node.pods {
            let ip = pod.ip.to_string();
            path = path.then(node, &["pod", "add", "--ip", &ip, "--veth", &pod.host_veth]);
        }
    }
    path
}

/// Issue 23's goals: pod-net beside flannel at least 1.25× better than
/// `flannel` on each of `figures` (for a lower-is-better figure, at most
/// 0.8× of it).
pub fn goals(flannel: &'static str, figures: &[&'static str]) -> Vec<Goal> {
    figures
        .iter()
        .map(|figure| Goal {
            subject: BESIDE_FLANNEL,
            baseline: flannel,
            figure,
            better_by: 1.25,
            strictly: false,
        })
        .collect()
}
