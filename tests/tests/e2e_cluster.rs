//! A cluster without hand-written node lists: `pod-net agent
//! --etcd-endpoints` on every node, a real etcd in the rig's switch
//! namespace, flannel's schema. No `node add` anywhere.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use pod_net_tests::{
    Node, Rig, RigSpec,
    cluster::{Agent, Etcd, PREFIX, lease_key, remote_nodes, wait_for},
    cni::{self, Attachment, Runtime, result_ipv4},
    privileges::require_root,
};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Bound for anything the agents should do "within seconds".
const SOON: Duration = Duration::from_secs(20);

/// `nodes` nodes with no pods, and cni0 without the rig's address: the
/// bridge plugin gives it the leased subnet's gateway.
fn rig(nodes: u8) -> Rig {
    let rig = Rig::build(&RigSpec {
        nodes,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap();
    for node in rig.nodes() {
        node.ip(&["addr", "flush", "dev", "cni0"]).unwrap();
    }
    rig
}

fn agent_dir(rig: &Rig, node: &Node) -> PathBuf {
    rig.scratch_dir()
        .unwrap()
        .join(format!("agent-n{}", node.index))
}

fn start(rig: &Rig, node: &Node, extra: &[&str]) -> Agent {
    Agent::start(node, &agent_dir(rig, node), extra).unwrap()
}

/// Waits until `node` has programmed exactly `wanted` (cidr, node ip, mac).
fn wait_programmed(node: &Node, wanted: &[(String, String, String)]) {
    let mut wanted = wanted.to_vec();
    wanted.sort();
    let mut last = Vec::new();
    let result = wait_for("the peers' leases in the maps", SOON, || {
        last = remote_nodes(node).unwrap();
        (last == wanted).then_some(())
    });
    assert!(
        result.is_ok(),
        "node {} has {last:?}, wanted {wanted:?}",
        node.index
    );
}

/// What a node's peers should program for it: (its subnet, its IP, its
/// derived VTEP MAC).
fn entry(node: &Node, subnet: &str) -> (String, String, String) {
    (
        subnet.to_owned(),
        node.underlay_ip.to_string(),
        node.derived_vtep_mac(),
    )
}

/// The routes through the tunnel device in `node`, as `ip route` prints them.
fn tunnel_routes(node: &Node) -> String {
    node.ip(&["route", "show", "dev", "pnvxlan1"])
        .unwrap_or_default()
}

fn counter(node: &Node, reason: &str) -> u64 {
    node.counters().unwrap()[reason]
}

/// A pod made through `agent`'s own conflist by the CNI runtime.
struct ClusterPod {
    attachment: Attachment,
    ip: Ipv4Addr,
}

fn pod_via_conflist(rig: &Rig, node: &Node, agent: &Agent, name: &str) -> ClusterPod {
    let ipam = rig
        .scratch_dir()
        .unwrap()
        .join(format!("ipam-n{}", node.index));
    let runtime = Runtime::new(
        node,
        agent.conflist(&ipam).unwrap(),
        cni::plugin_path().unwrap(),
    );
    let attachment = Attachment::in_sandbox(rig, name).unwrap();
    let result = runtime.add(&attachment).unwrap();
    ClusterPod {
        ip: result_ipv4(&result).unwrap(),
        attachment,
    }
}

fn ping(from: &ClusterPod, to: Ipv4Addr, count: u32) -> Result<String, anyhow::Error> {
    let count = count.to_string();
    from.attachment.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        &count,
        "-i",
        "0.1",
        "-W",
        "1",
        &to.to_string(),
    ])
}

#[test]
fn three_agents_lease_distinct_subnets_and_pods_reach_each_other_through_encap() {
    if !require_root("three_agents_lease_distinct_subnets") {
        return;
    }
    let rig = rig(4);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let nodes: Vec<&Node> = rig.nodes().iter().collect();
    let agents: Vec<Agent> = nodes[..3]
        .iter()
        .map(|node| start(&rig, node, &[]))
        .collect();
    let subnets: Vec<String> = agents
        .iter()
        .map(|agent| agent.wait_subnet(SOON).unwrap())
        .collect();
    assert_eq!(
        subnets.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{subnets:?}"
    );
    // Each lease is in etcd in flannel's exact format.
    for (node, subnet) in nodes.iter().zip(&subnets) {
        assert_eq!(
            etcd.get(&lease_key(subnet)).unwrap().unwrap(),
            format!(
                r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
                node.underlay_ip,
                node.derived_vtep_mac()
            )
        );
        // subnet.env in flannel's names: the gateway, the MTU less 50.
        let env =
            std::fs::read_to_string(&agents[usize::from(node.index) - 1].subnet_file).unwrap();
        let gateway = subnet.replace(".0/24", ".1/24");
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gateway}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            )
        );
    }
    for (index, node) in nodes[..3].iter().enumerate() {
        let others: Vec<_> = (0..3)
            .filter(|other| *other != index)
            .map(|other| entry(nodes[other], &subnets[other]))
            .collect();
        wait_programmed(node, &others);
    }

    // A pod on each node, made through that agent's own conflist.
    let pods: Vec<ClusterPod> = nodes[..3]
        .iter()
        .zip(&agents)
        .map(|(node, agent)| pod_via_conflist(&rig, node, agent, &format!("c{}", node.index)))
        .collect();
    for (pod, subnet) in pods.iter().zip(&subnets) {
        let subnet: pod_net::cidr::Cidr = subnet.parse().unwrap();
        assert!(subnet.contains(pod.ip.into()), "{} not in {subnet}", pod.ip);
    }
    for (from_index, from) in pods.iter().enumerate() {
        for (to_index, to) in pods.iter().enumerate() {
            if from_index == to_index {
                continue;
            }
            // The first ping resolves the gateway; then count.
            let _ = ping(from, to.ip, 1);
            let before = counter(nodes[from_index], "encap");
            ping(from, to.ip, 5).unwrap();
            assert!(
                counter(nodes[from_index], "encap") - before >= 5,
                "pod {} -> {} did not go through encap",
                from.ip,
                to.ip
            );
        }
    }

    // A fourth agent started later is programmed everywhere within seconds,
    // and its pod is reached from all.
    let fourth = start(&rig, nodes[3], &[]);
    let subnet = fourth.wait_subnet(SOON).unwrap();
    assert!(!subnets.contains(&subnet));
    for node in &nodes[..3] {
        wait_for("the fourth node's lease", SOON, || {
            remote_nodes(node)
                .unwrap()
                .contains(&entry(nodes[3], &subnet))
                .then_some(())
        })
        .unwrap();
    }
    let late = pod_via_conflist(&rig, nodes[3], &fourth, "c4");
    for (index, pod) in pods.iter().enumerate() {
        let _ = ping(pod, late.ip, 1);
        let before = counter(nodes[index], "encap");
        ping(pod, late.ip, 3).unwrap();
        assert!(counter(nodes[index], "encap") - before >= 3);
    }
    drop(agents);
    drop(fourth);
    drop(etcd);
}

#[test]
fn deleted_and_expired_leases_leave_the_maps_and_routes_of_every_peer() {
    if !require_root("deleted_and_expired_leases_leave_the_peers") {
        return;
    }
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let nodes: Vec<&Node> = rig.nodes().iter().collect();
    let watchers: Vec<Agent> = nodes[..2]
        .iter()
        .map(|node| start(&rig, node, &[]))
        .collect();
    let watcher_subnets: Vec<String> = watchers
        .iter()
        .map(|agent| agent.wait_subnet(SOON).unwrap())
        .collect();
    // Node 3 leases for 4 s only, renewed while it runs.
    let mut short = start(&rig, nodes[2], &["--subnet-lease-ttl", "4"]);
    let short_subnet = short.wait_subnet(SOON).unwrap();
    // A lease written by hand for a node that runs nothing (a reservation).
    let manual = (
        "10.244.250.0/24".to_owned(),
        "192.168.100.77".to_owned(),
        "02:aa:00:00:00:77".to_owned(),
    );
    etcd.put(
        &lease_key(&manual.0),
        r#"{"PublicIP":"192.168.100.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:77"}}"#,
    )
    .unwrap();
    for (index, node) in nodes[..2].iter().enumerate() {
        let other = 1 - index;
        wait_programmed(
            node,
            &[
                entry(nodes[other], &watcher_subnets[other]),
                entry(nodes[2], &short_subnet),
                manual.clone(),
            ],
        );
        assert!(tunnel_routes(node).contains("10.244.250.0/24"));
    }
    // Renewal keeps the short lease alive well past its TTL.
    std::thread::sleep(Duration::from_secs(6));
    assert!(etcd.get(&lease_key(&short_subnet)).unwrap().is_some());

    // Deleted by hand: gone from the maps, the routes, and the FDB.
    etcd.etcdctl(&["del", &lease_key(&manual.0)]).unwrap();
    // Expired: the agent is killed, nobody renews.
    short.kill();
    for (index, node) in nodes[..2].iter().enumerate() {
        let other = 1 - index;
        wait_programmed(node, &[entry(nodes[other], &watcher_subnets[other])]);
        let routes = tunnel_routes(node);
        assert!(!routes.contains("10.244.250.0/24"), "{routes}");
        assert!(!routes.contains(&short_subnet), "{routes}");
        let fdb = node
            .exec(&["bridge", "fdb", "show", "dev", "pnvxlan1"])
            .unwrap();
        assert!(!fdb.contains("02:aa:00:00:00:77"), "{fdb}");
        assert!(!fdb.contains(&nodes[2].derived_vtep_mac()), "{fdb}");
    }

    // A live agent's lease deleted by hand comes back, same subnet.
    etcd.etcdctl(&["del", &lease_key(&watcher_subnets[0])])
        .unwrap();
    wait_for("node 1's lease back", SOON, || {
        etcd.get(&lease_key(&watcher_subnets[0])).unwrap()
    })
    .unwrap();
    wait_programmed(nodes[1], &[entry(nodes[0], &watcher_subnets[0])]);
    drop(watchers);
    drop(etcd);
}

#[test]
fn eight_racing_agents_hold_eight_distinct_subnets_of_a_pool_of_eight() {
    if !require_root("eight_racing_agents") {
        return;
    }
    let rig = rig(8);
    let etcd = Etcd::start(&rig).unwrap();
    // Exactly eight subnets: every race is for the same few.
    etcd.put_config(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.8.0","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let agents: Vec<Agent> = rig
        .nodes()
        .iter()
        .map(|node| start(&rig, node, &[]))
        .collect();
    let subnets: BTreeMap<String, u8> = agents
        .iter()
        .zip(rig.nodes())
        .map(|(agent, node)| {
            (
                agent.wait_subnet(Duration::from_mins(1)).unwrap(),
                node.index,
            )
        })
        .collect();
    let expected: BTreeSet<String> = (1..=8).map(|n| format!("10.244.{n}.0/24")).collect();
    assert_eq!(subnets.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // etcd holds exactly these eight, each naming the node that wrote it.
    let keys = etcd.keys(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(keys.len(), 8, "{keys:?}");
    for (subnet, index) in &subnets {
        let value = etcd.get(&lease_key(subnet)).unwrap().unwrap();
        assert!(
            value.contains(&format!("\"PublicIP\":\"192.168.100.{index}\"")),
            "{subnet}: {value}"
        );
    }
    drop(agents);
    drop(etcd);
}
