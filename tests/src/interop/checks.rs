//! What the mixed-cluster tests assert: every node holding every other
//! the way its own software does, every pod reaching every other with the
//! pod-net nodes' counters predicted exactly, full-size packets and TCP,
//! healthy status and a clean flanneld log.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    time::Instant,
};

use serde_json::Value;

use super::{Meeting, Member, MixedPod, Route};
use crate::{
    cluster::{self, Etcd, PREFIX, SOON, lease_key, wait_modes, wait_programmed},
    cmd::output_of,
    interop,
    kube::ControlPlane,
    kube_cluster,
    rig::{LinkPackets, Node, Rig},
    wait_for,
};

/// flannel's network config with `DirectRouting`: the rig's nodes share
/// one L2 segment, so every peer is routed to directly.
pub const DIRECT: &str =
    r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
/// Echo requests per measured ping.
pub const PINGS: u32 = 3;
/// The counters the ping matrix predicts exactly on a pod-net node: the
/// fast path's, and those that would say a pod's packet fell back to the
/// kernel or was dropped.
pub const WATCHED: [&str; 11] = [
    "redirect_local",
    "encap",
    "decap",
    "direct_out",
    "direct_in",
    "pass_unknown_dst",
    "pass_inner_not_local",
    "pass_not_direct_peer",
    "pass_direct_unresolved",
    "drop_unknown_peer",
    "drop_spoofed",
];

/// How the network carries a packet between two nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Vxlan,
    Direct,
}

impl Mode {
    /// The reasons a pod-net node counts a packet to and from another node
    /// under.
    fn reasons(self) -> (&'static str, &'static str) {
        match self {
            Self::Vxlan => ("encap", "decap"),
            Self::Direct => ("direct_out", "direct_in"),
        }
    }
}

/// Starts pod-net agents on the `pod_net` nodes, then flanneld on the
/// `flannel` ones, then flanneld accelerated by pod-net on the
/// `accelerated` ones, each with its lease; checks each lease names its
/// node's own VTEP.
#[must_use]
pub fn start<'a>(
    rig: &'a Rig,
    meeting: &Meeting,
    pod_net: &[u8],
    flannel: &[u8],
    accelerated: &[u8],
) -> Vec<Member<'a>> {
    let mut members: Vec<Member> = pod_net
        .iter()
        .map(|index| Member::pod_net(rig, meeting, rig.node(*index)).unwrap())
        .collect();
    members.extend(
        flannel
            .iter()
            .map(|index| Member::flannel(rig, meeting, rig.node(*index)).unwrap()),
    );
    members.extend(
        accelerated
            .iter()
            .map(|index| Member::accelerated(rig, meeting, rig.node(*index), &[]).unwrap()),
    );
    for member in &members {
        assert_own_vtep(member);
    }
    members
}

/// The lease's VTEP MAC is the one of the node's own VXLAN device (for
/// pod-net, also the one it derives from the node IP).
pub fn assert_own_vtep(member: &Member) {
    let node = member.node;
    assert_eq!(
        member.vtep_mac,
        node.link_mac(&member.tunnel_device()).unwrap(),
        "node {}",
        node.index
    );
    if member.is_pod_net() {
        assert_eq!(member.vtep_mac, node.derived_vtep_mac());
    }
}

/// etcd holds exactly one lease per member, on distinct subnets, for the
/// VXLAN backend (its VNI is checked against the devices by
/// [`assert_devices`]).
pub fn assert_leases(etcd: &Etcd, members: &[&Member]) {
    let mut wanted: Vec<String> = members
        .iter()
        .map(|member| lease_key(&member.subnet))
        .collect();
    wanted.sort();
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets/")).unwrap(), wanted);
    for member in members {
        let lease: Value =
            serde_json::from_str(&etcd.get(&lease_key(&member.subnet)).unwrap().unwrap()).unwrap();
        assert_eq!(lease["BackendType"], "vxlan", "{lease}");
    }
}

/// Waits until `read` returns `wanted`, and fails with what it returned
/// last if it does not within [`SOON`].
pub fn wait_equal<T: PartialEq + Debug>(what: &str, wanted: &T, mut read: impl FnMut() -> T) {
    let mut last = None;
    let result = wait_for(what, SOON, || {
        let value = read();
        let done = value == *wanted;
        last = Some(value);
        done.then_some(())
    });
    assert!(result.is_ok(), "{what}: have {last:?}, wanted {wanted:?}");
}

/// The routes with a gateway `node` has into the network (its own subnet
/// is connected, on cni0).
#[must_use]
pub fn network_routes(node: &Node) -> BTreeMap<String, Route> {
    let mut routes = interop::routes(node, &[]).unwrap();
    routes.retain(|dst, _| dst.starts_with("10.244."));
    routes
}

/// Every member holds every other one the way its own software does, and
/// nothing more: a pod-net node in its maps with the kernel path beside
/// them, a flannel node in `flannel.1`'s routes, neighbours and FDB (over
/// VXLAN) or in routes on `eth0` (direct), an accelerated node both in
/// flannel's kernel path and in pod-net's maps.
pub fn assert_programmed(members: &[&Member], mode: Mode) {
    for member in members {
        let node = member.node;
        let peers: Vec<&&Member> = members
            .iter()
            .filter(|peer| peer.node.index != node.index)
            .collect();
        let device = &member.tunnel_device();
        let what = |thing: &str| format!("node {}: {thing}", node.index);
        let wanted_routes: BTreeMap<String, Route> = peers
            .iter()
            .map(|peer| {
                let ip = peer.node.underlay_ip.to_string();
                let route = match (member.is_pod_net(), mode) {
                    // pod-net: via the node, its VTEP MAC the neighbour entry's.
                    (true, Mode::Vxlan) => Route::new(&ip, device, &["onlink"]),
                    (true, Mode::Direct) => Route::new(&ip, "eth0", &["onlink"]),
                    // flannel: via the subnet's first address on flannel.1.
                    (false, Mode::Vxlan) => Route::new(&peer.subnet_ip(), device, &["onlink"]),
                    // flannel's direct route: host-gw's.
                    (false, Mode::Direct) => Route::new(&ip, "eth0", &[]),
                };
                (peer.subnet.clone(), route)
            })
            .collect();
        let (wanted_neighbours, wanted_fdb) = match mode {
            Mode::Vxlan => (
                peers
                    .iter()
                    .map(|peer| {
                        let ip = if member.is_pod_net() {
                            peer.node.underlay_ip.to_string()
                        } else {
                            peer.subnet_ip()
                        };
                        (ip, peer.vtep_mac.clone(), vec!["PERMANENT".to_owned()])
                    })
                    .collect(),
                peers
                    .iter()
                    .map(|peer| {
                        (
                            peer.vtep_mac.clone(),
                            peer.node.underlay_ip.to_string(),
                            "permanent".to_owned(),
                        )
                    })
                    .collect(),
            ),
            Mode::Direct => (BTreeSet::new(), BTreeSet::new()),
        };
        if member.has_fast_path() {
            match mode {
                Mode::Vxlan => {
                    let entries: Vec<_> = peers.iter().map(|peer| peer.entry()).collect();
                    wait_programmed(node, &entries);
                }
                Mode::Direct => {
                    let modes: BTreeMap<String, String> = peers
                        .iter()
                        .map(|peer| (peer.subnet.clone(), "direct".to_owned()))
                        .collect();
                    wait_modes(node, &modes);
                }
            }
        }
        wait_equal(&what("routes to the peers"), &wanted_routes, || {
            network_routes(node)
        });
        wait_equal(
            &what(&format!("{device} neighbours")),
            &wanted_neighbours,
            || interop::neighbours(node, device).unwrap(),
        );
        wait_equal(&what(&format!("{device} FDB")), &wanted_fdb, || {
            interop::fdb(node, device).unwrap()
        });
    }
}

/// `per_node` pods on each member, made by its own network plugin, named
/// `<tag>-n<node>p<index>`.
#[must_use]
pub fn make_pods<'a>(
    rig: &Rig,
    members: &[&Member<'a>],
    per_node: u8,
    tag: &str,
) -> Vec<MixedPod<'a>> {
    let mut pods = Vec::new();
    for member in members {
        for index in 1..=per_node {
            let name = format!("{tag}-n{}p{index}", member.node.index);
            let pod = member.pod(rig, &name).unwrap();
            assert!(
                in_subnet(pod.ip, &member.subnet),
                "{name}: {} not in {}",
                pod.ip,
                member.subnet
            );
            pods.push(pod);
        }
    }
    pods
}

/// Whether `ip` lies in `subnet` (`a.b.c.d/len`).
fn in_subnet(ip: std::net::Ipv4Addr, subnet: &str) -> bool {
    let Some((network, len)) = subnet.split_once('/') else {
        return false;
    };
    let (Ok(network), Ok(len)) = (network.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network) & mask
}

/// The [`WATCHED`] counts of `node`.
#[must_use]
pub fn watched(node: &Node) -> BTreeMap<&'static str, u64> {
    let counters = node.counters().unwrap();
    WATCHED
        .iter()
        .map(|reason| (*reason, counters.get(*reason).copied().unwrap_or(0)))
        .collect()
}

/// What [`PINGS`] echo requests from a pod on node `from` to one on node
/// `to`, and their replies, add to the [`WATCHED`] counters of pod-net
/// node `node`.
#[must_use]
pub fn expected(node: u8, from: u8, to: u8, mode: Mode) -> BTreeMap<&'static str, u64> {
    let mut counts: BTreeMap<&'static str, u64> =
        WATCHED.iter().map(|reason| (*reason, 0)).collect();
    let pings = u64::from(PINGS);
    let (out, into) = mode.reasons();
    if from == to {
        if node == from {
            *counts.get_mut("redirect_local").unwrap() += 2 * pings;
        }
    } else if node == from || node == to {
        // Requests one way, replies the other.
        *counts.get_mut(out).unwrap() += pings;
        *counts.get_mut(into).unwrap() += pings;
    }
    counts
}

/// What [`PINGS`] echo requests from a pod on node `from` to one on node
/// `to`, and their replies, add to `flannel.1`'s (received, sent) packets
/// on flannel node `node`: both, over VXLAN, when `node` is one end and
/// the other end is another node.
#[must_use]
pub fn expected_on_flannel(node: u8, from: u8, to: u8, mode: Mode) -> (u64, u64) {
    let pings = u64::from(PINGS);
    if mode == Mode::Vxlan && from != to && (node == from || node == to) {
        (pings, pings)
    } else {
        (0, 0)
    }
}

/// `from` pings `to` ([`PINGS`] echo requests, of `size` bytes with
/// don't-fragment when given); every request and reply arrives and lands
/// exactly where [`expected`] says in the pod-net nodes' counters, and
/// where [`expected_on_flannel`] says on the flannel nodes' `flannel.1`.
pub fn assert_pair(
    members: &[&Member],
    from: &MixedPod,
    to: &MixedPod,
    mode: Mode,
    size: Option<u32>,
) {
    let pair = format!(
        "{} {} -> {} {} ({} bytes)",
        from.name,
        from.ip,
        to.name,
        to.ip,
        size.map_or_else(|| "56".to_owned(), |size| size.to_string())
    );
    // The first reply resolves the neighbours on the way (and waits for a
    // flanneld still programming its peers).
    let first = wait_for(&format!("a first reply {pair}"), SOON, || {
        from.ping(to.ip, 1)
            .ok()
            .filter(|(_, received)| *received == 1)
    });
    assert!(first.is_ok(), "{pair}: no reply");
    let before: Vec<_> = members.iter().map(|member| watched_on(member)).collect();
    let (sent, received) = match size {
        Some(size) => from.df_ping(to.ip, PINGS, size).unwrap(),
        None => from.ping(to.ip, PINGS).unwrap(),
    };
    assert_eq!(
        (sent, received),
        (u64::from(PINGS), u64::from(PINGS)),
        "{pair}"
    );
    for (member, before) in members.iter().zip(before) {
        let node = member.node.index;
        match (watched_on(member), before) {
            (Watched::PodNet(after), Watched::PodNet(before)) => assert_eq!(
                moved(&after, &before),
                expected(node, from.node, to.node, mode),
                "{pair}: the counters of pod-net node {node}"
            ),
            (Watched::Flannel(after), Watched::Flannel(before)) => assert_eq!(
                (after.rx - before.rx, after.tx - before.tx),
                expected_on_flannel(node, from.node, to.node, mode),
                "{pair}: {} (received, sent) on flannel node {node}",
                member.tunnel_device()
            ),
            (
                Watched::Accelerated(after, after_packets),
                Watched::Accelerated(before, before_packets),
            ) => {
                assert_eq!(
                    moved(&after, &before),
                    expected(node, from.node, to.node, mode),
                    "{pair}: the counters of accelerated node {node}"
                );
                // The fast path goes around flannel's device both ways.
                assert_eq!(
                    (
                        after_packets.rx - before_packets.rx,
                        after_packets.tx - before_packets.tx
                    ),
                    (0, 0),
                    "{pair}: {} (received, sent) on accelerated node {node}",
                    member.tunnel_device()
                );
            }
            _ => unreachable!(),
        }
    }
}

/// How far each of the [`WATCHED`] counters moved from `before` to `after`.
fn moved(
    after: &BTreeMap<&'static str, u64>,
    before: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(reason, count)| (*reason, count - before[reason]))
        .collect()
}

/// What [`assert_pair`] reads on a node before and after.
pub enum Watched {
    /// A pod-net node's [`WATCHED`] counters.
    PodNet(BTreeMap<&'static str, u64>),
    /// A flannel node's `flannel.1` packets.
    Flannel(LinkPackets),
    /// An accelerated node's: both.
    Accelerated(BTreeMap<&'static str, u64>, LinkPackets),
}

#[must_use]
pub fn watched_on(member: &Member) -> Watched {
    let packets = || member.node.link_packets(&member.tunnel_device()).unwrap();
    if member.is_pod_net() {
        Watched::PodNet(watched(member.node))
    } else if member.is_accelerated() {
        Watched::Accelerated(watched(member.node), packets())
    } else {
        Watched::Flannel(packets())
    }
}

/// Every pod pings every other pod ([`assert_pair`]).
pub fn ping_every_pair(members: &[&Member], pods: &[MixedPod], mode: Mode) {
    let mut pairs = 0;
    for from in pods {
        for to in pods {
            if from.name != to.name {
                assert_pair(members, from, to, mode, None);
                pairs += 1;
            }
        }
    }
    assert_eq!(pairs, pods.len() * (pods.len() - 1));
}

/// The biggest echo payload the pods' MTU (1450: flannel's `FLANNEL_MTU`
/// and the agent's conflist alike) takes whole: 1450 - 20 - 8. Over VXLAN
/// that is a full 1500-byte packet on the underlay.
pub const FULL_SIZE: u32 = 1422;

/// Underlay and neighbour traffic a pod-net node sees beside the pods'
/// (etcd's TCP, ARP): not part of what a transfer between pods moves.
pub const BACKGROUND: [&str; 3] = ["pass_not_vxlan", "pass_not_ip", "pass_multicast"];

/// Beside the small pings: between the first pods of two nodes with
/// pod-net on either end, full-size echo requests with don't-fragment go
/// and come back exactly as the small ones; and 8 MB of TCP go each way
/// between a pod-net pod and a flannel pod, with the pod-net node counting
/// packets both ways on the fast path and under no other reason.
pub fn assert_full_size_and_tcp(members: &[&Member], pods: &[MixedPod], mode: Mode) {
    let firsts: Vec<&MixedPod> = members
        .iter()
        .filter_map(|member| pods.iter().find(|pod| pod.node == member.node.index))
        .collect();
    let pod_net = |pod: &MixedPod| {
        members
            .iter()
            .any(|member| member.node.index == pod.node && member.has_fast_path())
    };
    for from in &firsts {
        for to in &firsts {
            if from.node != to.node && (pod_net(from) || pod_net(to)) {
                assert_pair(members, from, to, mode, Some(FULL_SIZE));
            }
        }
    }
    let ours = firsts.iter().find(|pod| pod_net(pod)).unwrap();
    let theirs = firsts.iter().find(|pod| !pod_net(pod)).unwrap();
    let node = members
        .iter()
        .find(|member| member.node.index == ours.node)
        .unwrap()
        .node;
    let (out, into) = mode.reasons();
    for (client, server) in [(ours, theirs), (theirs, ours)] {
        let before = node.counters().unwrap();
        client.tcp_transfer(server, "8M").unwrap();
        let mut moved = node.moved_since(&before).unwrap();
        moved.retain(|reason, _| !BACKGROUND.contains(&reason.as_str()));
        let reasons: Vec<&str> = moved.keys().map(String::as_str).collect();
        let mut wanted = vec![out, into];
        wanted.sort_unstable();
        assert_eq!(
            reasons, wanted,
            "TCP {} -> {}: pod-net node {} counted {moved:?}",
            client.ip, server.ip, node.index
        );
    }
}

/// flanneld on a flannel member logged no error and ignored no lease:
/// every pod-net lease was one it could use.
pub fn assert_flanneld_clean(member: &Member) {
    let Some(log) = member.flanneld_log() else {
        return;
    };
    for line in log.lines() {
        let error = line.starts_with('E') && line[1..].starts_with(|c: char| c.is_ascii_digit());
        assert!(
            !error && !line.contains("ignoring"),
            "node {}: flanneld logged {line:?}",
            member.node.index
        );
    }
}

/// `pod-net status` on a pod-net member is healthy, following etcd (or,
/// accelerated, flanneld) with `peers` peers and skipping no record.
pub fn assert_store_healthy(member: &Member, peers: usize) {
    let node = member.node;
    let agent = member.agent().unwrap();
    let file = agent.subnet_file.with_file_name("cluster-status.json");
    let file = file.to_str().unwrap();
    let mut last = Value::Null;
    let published = wait_for("the agent's status to count its peers", SOON, || {
        let output =
            output_of(&mut node.pod_net_command(&["status", "--json", "--cluster-status", file]))
                .unwrap();
        last = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.success() && last["store"]["peers"] == peers).then_some(())
    });
    assert!(published.is_ok(), "node {}: {last:#}", node.index);
    assert_eq!(last["problems"], serde_json::json!([]), "{last:#}");
    let store = &last["store"];
    let kind = if member.is_accelerated() {
        "flannel"
    } else {
        member.store
    };
    assert_eq!(store["store"], kind, "{last:#}");
    assert_eq!(store["connected"], true, "{last:#}");
    assert_eq!(store["subnet"], member.subnet.as_str(), "{last:#}");
    assert_eq!(store["skipped_now"], 0, "{last:#}");
    assert_eq!(store["skipped_records"], 0, "{last:#}");
    assert_eq!(store["skipped"], serde_json::json!([]), "{last:#}");
    assert_eq!(store["problems"], serde_json::json!([]), "{last:#}");
    // And in words.
    let (text, healthy) = cluster::store_status_of(node, agent);
    assert!(healthy, "{text}");
    assert!(!text.contains("skipped"), "{text}");
    assert!(
        text.contains(&format!("store:     {kind} connected, revision "))
            && text.contains(&format!(", {peers} peer(s), subnet {},", member.subnet)),
        "{text}"
    );
}

/// The shape of a mixed cluster.
pub struct Shape<'a> {
    /// flannel's network config.
    pub config: &'a str,
    pub mode: Mode,
    /// The VNI and UDP port `config` gives its VXLAN devices.
    pub vni: u64,
    pub port: u64,
    /// The nodes running pod-net, flanneld, and flanneld accelerated by
    /// pod-net (a rig of their number).
    pub pod_net: &'a [u8],
    pub flannel: &'a [u8],
    pub accelerated: &'a [u8],
    pub pods_per_node: u8,
}

impl Shape<'_> {
    /// The rig's nodes: one per member.
    fn nodes(&self) -> u8 {
        u8::try_from(self.pod_net.len() + self.flannel.len() + self.accelerated.len())
            .unwrap_or(u8::MAX)
    }
}

/// Every node's own VXLAN device (pod-net's `pnvxlan<VNI>`, flannel's
/// `flannel.<VNI>`) has the config's VNI and port, on the node's underlay
/// address, with an MTU 50 below the underlay's.
pub fn assert_devices(members: &[&Member], vni: u64, port: u64) {
    for member in members {
        assert_eq!(member.vni, vni);
        let device = member.tunnel_device();
        let link = interop::link_details(member.node, &device).unwrap();
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{link}");
        assert_eq!(data["id"], vni, "{link}");
        assert_eq!(data["port"], port, "{link}");
        assert_eq!(
            data["local"],
            member.node.underlay_ip.to_string().as_str(),
            "{link}"
        );
        assert_eq!(link["mtu"], 1450, "{link}");
    }
}

/// A mixed cluster of `shape` meeting in etcd: leases, devices and what
/// each node programs checked; every pod pinging every other both ways,
/// full-size pings and TCP ([`assert_full_size_and_tcp`]); status healthy;
/// flanneld without an error.
pub fn mixed_cluster(shape: &Shape) {
    let started = Instant::now();
    let rig = cluster::rig(shape.nodes());
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(shape.config).unwrap();
    exercise(&rig, &Meeting::Etcd(&etcd), shape, started);
}

/// The same as [`mixed_cluster`], the nodes meeting through a real
/// kube-apiserver in flannel's kube schema: every node registered as a
/// Node whose podCIDR kube-controller-manager allocates, pod-net's agents
/// with the deploy manifest's service account (`--kube-subnet-mgr`),
/// flanneld with `--kube-subnet-mgr`, both with flannel's default
/// `net-conf.json` (`shape.config` is not used).
pub fn mixed_kube_cluster(shape: &Shape) {
    let started = Instant::now();
    let rig = cluster::rig(shape.nodes());
    let plane = ControlPlane::start(&rig).unwrap();
    let nodes: Vec<&Node> = rig.nodes().iter().collect();
    kube_cluster::register(&plane, &nodes).unwrap();
    let meeting = Meeting::Kube {
        plane: &plane,
        agents: kube_cluster::agent_kubeconfig(&plane).unwrap(),
    };
    exercise(&rig, &meeting, shape, started);
}

/// What [`mixed_cluster`] starts and checks, the nodes meeting through
/// `meeting` (in etcd, each lease checked too).
fn exercise(rig: &Rig, meeting: &Meeting, shape: &Shape, started: Instant) {
    let members = start(
        rig,
        meeting,
        shape.pod_net,
        shape.flannel,
        shape.accelerated,
    );
    let nodes = members.len();
    let all: Vec<&Member> = members.iter().collect();
    if let Meeting::Etcd(etcd) = meeting {
        assert_leases(etcd, &all);
    }
    assert_devices(&all, shape.vni, shape.port);
    assert_programmed(&all, shape.mode);
    eprintln!("programmed after {:?}", started.elapsed());
    let pods = make_pods(rig, &all, shape.pods_per_node, "m");
    ping_every_pair(&all, &pods, shape.mode);
    assert_full_size_and_tcp(&all, &pods, shape.mode);
    eprintln!(
        "{} pairs pinged, full-size and TCP after {:?}",
        pods.len() * (pods.len() - 1),
        started.elapsed()
    );
    for member in all.iter().filter(|member| member.has_fast_path()) {
        assert_store_healthy(member, nodes - 1);
    }
    // Nothing changed on the way.
    assert_programmed(&all, shape.mode);
    drop(pods);
    for member in &members {
        assert_flanneld_clean(member);
    }
    drop(all);
    drop(members);
    eprintln!("done after {:?}", started.elapsed());
}
