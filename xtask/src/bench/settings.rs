//! What the rig's kernel does to a packet besides the path under test,
//! stated in the report: a reader comparing figures from two runs (or an
//! outside measurement) needs to know whether the bridge called iptables,
//! how many rules it met, and which offloads the pods' devices had.
use anyhow::{Context as _, Result};
use pod_net_tests::{Node, Pod, Rig};

/// One note naming the kernel, the CPUs, each node's netfilter state and
/// the offloads of the pods' `eth0`.
pub fn describe(rig: &Rig) -> Result<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?;
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let nodes = rig
        .nodes()
        .iter()
        .map(netfilter)
        .collect::<Result<Vec<_>>>()?;
    let mut offloads = rig.pods().map(offloads).collect::<Result<Vec<_>>>()?;
    offloads.sort();
    offloads.dedup();
    Ok(format!(
        "Rig settings: kernel {}, {cpus} CPUs. Netfilter per node: {}. Pods' eth0 offloads: {}.",
        kernel.trim(),
        nodes.join("; "),
        offloads.join(" | "),
    ))
}

/// `node N: bridge-nf-call-iptables=V, R iptables rules, C conntrack
/// entries`.
fn netfilter(node: &Node) -> Result<String> {
    let bridge_nf = node
        .exec(&["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"])
        .map_or_else(|_| "absent".to_owned(), |value| value.trim().to_owned());
    let rules = node
        .exec(&["iptables-save"])?
        .lines()
        .filter(|line| line.starts_with("-A "))
        .count();
    let conntrack = node
        .exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
        .map_or_else(|_| "no".to_owned(), |value| value.trim().to_owned());
    Ok(format!(
        "node {}: bridge-nf-call-iptables={bridge_nf}, {rules} iptables rules, {conntrack} \
         conntrack entries",
        node.index
    ))
}

/// The offloads that decide how many packets a path handles per byte:
/// `tx-checksumming on, tso on, gso on, gro off` for a pod's `eth0`.
fn offloads(pod: &Pod) -> Result<String> {
    let features = pod.exec(&["ethtool", "-k", "eth0"])?;
    let state = |name: &str| {
        features
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_owned()
    };
    Ok([
        ("tx-checksumming", "tx-checksumming"),
        ("tcp-segmentation-offload", "tso"),
        ("generic-segmentation-offload", "gso"),
        ("generic-receive-offload", "gro"),
    ]
    .iter()
    .map(|(feature, short)| format!("{short} {}", state(feature)))
    .collect::<Vec<_>>()
    .join(", "))
}
