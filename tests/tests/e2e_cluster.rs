//! A cluster without hand-written node lists: `pod-net agent
//! --etcd-endpoints` on every node, a real etcd in the rig's switch
//! namespace, flannel's schema. No `node add` anywhere.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::{AtomicBool, AtomicU8, Ordering},
    time::Duration,
};

use pod_net_tests::{
    Node, Rig, RigSpec,
    cluster::{
        Agent, CONFIG, ClusterPod, Etcd, PREFIX, SOON, TlsFiles, agent_dir, cluster_metric, entry,
        flood, flood_result, lease_key, lease_value, ping, pod_via_conflist, remote_nodes, rig,
        start, store_status, synthetic_lease, synthetic_peer, tunnel_prefixes, tunnel_routes,
        wait_modes, wait_programmed,
    },
    require_root, wait_for,
};

#[test]
fn three_agents_lease_distinct_subnets_and_pods_reach_each_other_through_encap() {
    require_root!();
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
            let before = nodes[from_index].counter("encap").unwrap();
            ping(from, to.ip, 5).unwrap();
            assert!(
                nodes[from_index].counter("encap").unwrap() - before >= 5,
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
        let before = nodes[index].counter("encap").unwrap();
        ping(pod, late.ip, 3).unwrap();
        assert!(nodes[index].counter("encap").unwrap() - before >= 3);
    }
    drop(agents);
    drop(fourth);
    drop(etcd);
}

#[test]
fn deleted_and_expired_leases_leave_the_maps_and_routes_of_every_peer() {
    require_root!();
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
        let neighbours = node.ip(&["neigh", "show", "dev", "pnvxlan1"]).unwrap();
        assert!(neighbours.contains("02:aa:00:00:00:77"), "{neighbours}");
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
        let neighbours = node.ip(&["neigh", "show", "dev", "pnvxlan1"]).unwrap();
        assert!(!neighbours.contains("02:aa:00:00:00:77"), "{neighbours}");
        assert!(
            !neighbours.contains(&nodes[2].derived_vtep_mac()),
            "{neighbours}"
        );
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
    require_root!();
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

/// Two agents (nodes 1 and 2 of a 3-node rig) with a pod each, made
/// through their conflists, that already reach each other.
struct TwoNodeCluster {
    agents: Vec<Agent>,
    subnets: Vec<String>,
    pods: Vec<ClusterPod>,
    // Dropped last: etcd, then the rig.
    etcd: Etcd,
    rig: Rig,
}

fn two_node_cluster() -> TwoNodeCluster {
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let agents: Vec<Agent> = rig.nodes()[..2]
        .iter()
        .map(|node| start(&rig, node, &[]))
        .collect();
    let subnets: Vec<String> = agents
        .iter()
        .map(|agent| agent.wait_subnet(SOON).unwrap())
        .collect();
    for (index, node) in rig.nodes()[..2].iter().enumerate() {
        let other = 1 - index;
        wait_programmed(node, &[entry(rig.node(other as u8 + 1), &subnets[other])]);
    }
    let pods: Vec<ClusterPod> = rig.nodes()[..2]
        .iter()
        .zip(&agents)
        .map(|(node, agent)| pod_via_conflist(&rig, node, agent, &format!("c{}", node.index)))
        .collect();
    ping(&pods[0], pods[1].ip, 2).unwrap();
    TwoNodeCluster {
        agents,
        subnets,
        pods,
        etcd,
        rig,
    }
}

#[test]
fn a_sigkilled_agent_restarts_on_the_same_subnet_without_losing_a_packet() {
    require_root!();
    let mut cluster = two_node_cluster();
    let node_1 = cluster.rig.node(1);
    // A lease node 1 programs, deleted while its agent is down.
    let gone = lease_key("10.244.250.0/24");
    cluster
        .etcd
        .put(
            &gone,
            r#"{"PublicIP":"192.168.100.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:77"}}"#,
        )
        .unwrap();
    wait_for("the extra lease on node 1", SOON, || {
        remote_nodes(node_1).unwrap().len().eq(&2).then_some(())
    })
    .unwrap();
    let lease_before = cluster.etcd.get(&lease_key(&cluster.subnets[0])).unwrap();

    let flood = flood(&cluster.pods[0], cluster.pods[1].ip, 2000);
    std::thread::sleep(Duration::from_millis(500));
    cluster.agents[0].kill();
    cluster.etcd.etcdctl(&["del", &gone]).unwrap();
    std::fs::remove_file(&cluster.agents[0].subnet_file).unwrap();
    cluster.agents[0].restart().unwrap();
    // Same subnet, found by its PublicIP in etcd (subnet.env was removed).
    assert_eq!(
        cluster.agents[0].wait_subnet(SOON).unwrap(),
        cluster.subnets[0]
    );
    assert_eq!(
        cluster.etcd.get(&lease_key(&cluster.subnets[0])).unwrap(),
        lease_before
    );
    // The restarted agent converges to etcd: the deleted lease is gone.
    wait_programmed(node_1, &[entry(cluster.rig.node(2), &cluster.subnets[1])]);
    let (sent, received) = flood_result(flood);
    assert_eq!((sent, received), (2000, 2000));
    assert_eq!(
        cluster
            .etcd
            .keys(&format!("{PREFIX}/subnets/"))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn etcd_killed_under_a_ping_flood_loses_nothing_and_an_empty_etcd_gets_the_leases_back() {
    require_root!();
    let mut cluster = two_node_cluster();
    let node_1 = cluster.rig.node(1);
    // 12 s of pings at the least; etcd is away for 10 of them.
    let flood = flood(&cluster.pods[0], cluster.pods[1].ip, 6000);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        cluster_metric(node_1, "store_connected").as_deref(),
        Some("1")
    );
    cluster.etcd.kill();
    let killed = std::time::Instant::now();
    // /metrics tells the store is gone, while the datapath goes on.
    wait_for("/metrics to show etcd gone", Duration::from_secs(9), || {
        (cluster_metric(node_1, "store_connected").as_deref() == Some("0")).then_some(())
    })
    .unwrap();
    let status = store_status(node_1, &cluster.agents[0]);
    assert!(
        status.contains("store:     etcd NOT connected")
            && status.contains("the agent is not connected to the cluster store"),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed()));
    assert!(cluster.agents.iter_mut().all(Agent::running));
    cluster.etcd.restart(false).unwrap();
    let (sent, received) = flood_result(flood);
    assert_eq!((sent, received), (6000, 6000));

    // Back with its data: the agents follow again.
    let late = (
        "10.244.250.0/24".to_owned(),
        "192.168.100.77".to_owned(),
        "02:aa:00:00:00:77".to_owned(),
    );
    cluster
        .etcd
        .put(
            &lease_key(&late.0),
            r#"{"PublicIP":"192.168.100.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:77"}}"#,
        )
        .unwrap();
    wait_programmed(
        node_1,
        &[
            entry(cluster.rig.node(2), &cluster.subnets[1]),
            late.clone(),
        ],
    );
    wait_for("/metrics to show etcd back", SOON, || {
        (cluster_metric(node_1, "store_connected").as_deref() == Some("1")
            && cluster_metric(node_1, "peers").as_deref() == Some("2"))
        .then_some(())
    })
    .unwrap();
    let status = store_status(node_1, &cluster.agents[0]);
    assert!(
        status.contains("store:     etcd connected, revision ") && status.contains("2 peer(s)"),
        "{status}"
    );

    // Compaction past everything the watches have seen is survived.
    for round in 0..20 {
        cluster
            .etcd
            .put("/unrelated/churn", &round.to_string())
            .unwrap();
    }
    let status = cluster
        .etcd
        .etcdctl(&["endpoint", "status", "--write-out", "json"])
        .unwrap();
    let revision = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]
        ["header"]["revision"]
        .as_i64()
        .unwrap();
    cluster
        .etcd
        .etcdctl(&["compact", &revision.to_string()])
        .unwrap();
    cluster.etcd.etcdctl(&["del", &lease_key(&late.0)]).unwrap();
    wait_programmed(node_1, &[entry(cluster.rig.node(2), &cluster.subnets[1])]);

    // Restarted empty: every agent writes its lease again, same subnet.
    cluster.etcd.restart(true).unwrap();
    for subnet in &cluster.subnets {
        wait_for("a lease written again", SOON, || {
            cluster.etcd.get(&lease_key(subnet)).unwrap()
        })
        .unwrap();
    }
    ping(&cluster.pods[0], cluster.pods[1].ip, 3).unwrap();
    ping(&cluster.pods[1], cluster.pods[0].ip, 3).unwrap();
}

#[test]
fn malformed_config_leases_and_foreign_backends_are_logged_once_and_skipped() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(r#"{"Network":"#).unwrap();
    let node = rig.node(1);
    let mut agent = start(&rig, node, &[]);
    let config_key = format!("{PREFIX}/config");
    wait_for("the bad config logged", SOON, || {
        (agent.log_lines("skipping") > 0).then_some(())
    })
    .unwrap();
    // It keeps waiting (polling each second) and says it once.
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.running());
    assert_eq!(agent.log_lines("skipping"), 1, "{}", agent.log_text());
    assert_eq!(
        agent.log_lines(&format!("skipping {config_key}: not JSON")),
        1
    );
    assert!(!agent.subnet_file.exists());

    etcd.put_config(CONFIG).unwrap();
    let subnet = agent.wait_subnet(SOON).unwrap();
    let bad = [
        ("10.244.250.0-24", "not json"),
        (
            "10.244.251.0-24",
            r#"{"PublicIP":"192.168.100.51","BackendType":"host-gw"}"#,
        ),
        (
            "no-subnet-here",
            r#"{"PublicIP":"192.168.100.52","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:52"}}"#,
        ),
        (
            "10.244.253.0-24",
            r#"{"PublicIP":"192.168.100.53","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"not-a-mac"}}"#,
        ),
    ];
    for (name, value) in bad {
        etcd.put(&format!("{PREFIX}/subnets/{name}"), value)
            .unwrap();
    }
    // The same bad value again is not news.
    etcd.put(&format!("{PREFIX}/subnets/10.244.250.0-24"), "not json")
        .unwrap();
    // A good lease after them: once it is programmed, the bad ones were seen.
    let sentinel = (
        "10.244.252.0/24".to_owned(),
        "192.168.100.60".to_owned(),
        "02:aa:00:00:00:60".to_owned(),
    );
    etcd.put(
        &lease_key(&sentinel.0),
        r#"{"PublicIP":"192.168.100.60","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:60"}}"#,
    )
    .unwrap();
    wait_programmed(node, &[sentinel]);
    let log = agent.log_text();
    for (name, _) in bad {
        assert_eq!(
            agent.log_lines(&format!("skipping {PREFIX}/subnets/{name}")),
            1,
            "{log}"
        );
    }
    assert!(
        log.contains(r#"backend type "host-gw", not vxlan"#),
        "{log}"
    );
    assert_eq!(agent.log_lines("skipping"), 5, "{log}");
    // Nothing else changed: our lease and the agent are still there.
    assert!(etcd.get(&lease_key(&subnet)).unwrap().is_some());
    assert!(agent.running());
}

#[test]
fn a_kernel_vxlan_flannel_node_with_a_handwritten_lease_is_reached_both_ways() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 3,
        pods_per_node: 1,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })
    .unwrap();
    let (pod_net_node, flannel_node) = (rig.node(1), rig.node(2));
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    // flannel's side: kernel VXLAN pointing at node 1's VTEP MAC, and its
    // lease as flanneld writes it.
    flannel_node
        .flannel_style(&[(pod_net_node, pod_net_node.derived_vtep_mac())])
        .unwrap();
    etcd.put(
        &lease_key(&flannel_node.pod_cidr()),
        &format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            flannel_node.underlay_ip,
            flannel_node.flannel_vtep_mac()
        ),
    )
    .unwrap();
    // Node 1 ran before on 10.244.1.0/24 (the rig's pods are there): its
    // subnet.env from then makes it take that subnet again.
    let dir = agent_dir(&rig, pod_net_node);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let agent = start(&rig, pod_net_node, &[]);
    wait_for("node 1's lease", SOON, || {
        etcd.get(&lease_key(&pod_net_node.pod_cidr())).unwrap()
    })
    .unwrap();
    assert_eq!(agent.wait_subnet(SOON).unwrap(), pod_net_node.pod_cidr());
    // What the flannel node needs of ours: PublicIP and VtepMAC.
    assert_eq!(
        etcd.get(&lease_key(&pod_net_node.pod_cidr()))
            .unwrap()
            .unwrap(),
        format!(
            r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            pod_net_node.underlay_ip,
            pod_net_node.derived_vtep_mac()
        )
    );
    wait_programmed(
        pod_net_node,
        &[(
            flannel_node.pod_cidr(),
            flannel_node.underlay_ip.to_string(),
            flannel_node.flannel_vtep_mac(),
        )],
    );
    pod_net_node.register(rig.pod(1, 1)).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(2, 1));
    let before = pod_net_node.counters().unwrap();
    a.ping(b.ip, 3).unwrap();
    b.ping(a.ip, 3).unwrap();
    let after = pod_net_node.counters().unwrap();
    assert!(after["encap"] - before["encap"] >= 6);
    assert!(after["decap"] - before["decap"] >= 6);

    // Remote nodes are etcd's, pods are not: a lease written later leaves
    // the pod added by hand alone, and so does the full diff a restarted
    // agent makes, which removes the remote node added by hand.
    pod_net_node
        .pod_net(&[
            "node",
            "add",
            "--cidr",
            "10.244.99.0/24",
            "--node-ip",
            "192.168.100.99",
        ])
        .unwrap();
    let flannel_entry = (
        flannel_node.pod_cidr(),
        flannel_node.underlay_ip.to_string(),
        flannel_node.flannel_vtep_mac(),
    );
    let by_hand = (
        "10.244.99.0/24".to_owned(),
        "192.168.100.99".to_owned(),
        "0e:6e:c0:a8:64:63".to_owned(),
    );
    let extra = (
        "10.244.250.0/24".to_owned(),
        "192.168.100.77".to_owned(),
        "02:aa:00:00:00:77".to_owned(),
    );
    etcd.put(
        &lease_key(&extra.0),
        r#"{"PublicIP":"192.168.100.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:77"}}"#,
    )
    .unwrap();
    wait_programmed(
        pod_net_node,
        &[flannel_entry.clone(), by_hand, extra.clone()],
    );
    let mut agent = agent;
    agent.restart().unwrap();
    wait_programmed(pod_net_node, &[flannel_entry, extra]);
    let pods = pod_net_node.pod_net(&["pod", "list", "--json"]).unwrap();
    assert!(pods.contains(&format!("\"{}\"", a.ip)), "{pods}");
    a.ping(b.ip, 2).unwrap();
    drop(agent);
    drop(etcd);
}

/// Runs `pod-net agent args..` on `node` to its end (bounded: every case
/// here fails before talking to any etcd).
fn agent_output(node: &Node, args: &[&str]) -> std::process::Output {
    let mut full = vec!["agent"];
    full.extend_from_slice(args);
    node.pod_net_command(&full).output().unwrap()
}

#[test]
fn bad_agent_flags_get_one_line_and_change_nothing() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    let subnet_file = rig.scratch_dir().unwrap().join("subnet.env");
    let subnet_file = subnet_file.to_str().unwrap();
    let endpoint = Etcd::endpoint();
    let base = ["--etcd-endpoints", &endpoint, "--subnet-file", subnet_file];
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--iface", "nosuch0"],
            1,
            "pod-net: error: --iface nosuch0: no such interface",
        ),
        (
            vec!["--iface", "cni0", "--etcd-cafile", "/nonexistent/ca.pem"],
            1,
            "pod-net: error: reading /nonexistent/ca.pem: No such file or directory",
        ),
        (
            vec!["--iface", "cni0", "--etcd-certfile", "/tmp/c.pem"],
            2,
            "--etcd-keyfile",
        ),
        (
            vec!["--subnet-lease-ttl", "0", "--iface", "cni0"],
            2,
            "--subnet-lease-ttl",
        ),
    ];
    for (extra, code, needle) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let output = agent_output(node, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr:?}"
        );
        if code == 1 {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
    // --iface without --etcd-endpoints, and --etcd-endpoints without --iface.
    for args in [vec!["--iface", "cni0"], vec!["--etcd-endpoints", &endpoint]] {
        let output = agent_output(node, &args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let output = agent_output(node, &["--release-lease"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(!std::path::Path::new(subnet_file).exists());
    assert!(!node.pin_dir.exists(), "the datapath was loaded");
}

#[test]
fn a_full_pool_is_one_clear_error() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.9.0","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    etcd.put(
        &lease_key("10.244.9.0/24"),
        r#"{"PublicIP":"192.168.100.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:77"}}"#,
    )
    .unwrap();
    let node = rig.node(1);
    let subnet_file = rig.scratch_dir().unwrap().join("subnet.env");
    let output = agent_output(
        node,
        &[
            "--etcd-endpoints",
            &Etcd::endpoint(),
            "--iface",
            "eth0",
            "--subnet-file",
            subnet_file.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap(),
        "pod-net: error: no free subnet left in 10.244.9.0..=10.244.9.0 (/24): the pool is full"
    );
    assert!(!subnet_file.exists());
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets/")).unwrap().len(), 1);
}

#[test]
fn agents_join_an_etcd_that_requires_tls_client_certificates() {
    require_root!();
    let rig = rig(3);
    let tls = TlsFiles::create(&rig.scratch_dir().unwrap().join("tls")).unwrap();
    let etcd = Etcd::start_tls(&rig, tls.clone()).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let flags = [
        "--etcd-cafile",
        tls.ca.to_str().unwrap(),
        "--etcd-certfile",
        tls.client_cert.to_str().unwrap(),
        "--etcd-keyfile",
        tls.client_key.to_str().unwrap(),
    ];
    let agents: Vec<Agent> = rig.nodes()[..2]
        .iter()
        .map(|node| Agent::start(node, &agent_dir(&rig, node), &etcd.url(), &flags).unwrap())
        .collect();
    let subnets: Vec<String> = agents
        .iter()
        .map(|agent| agent.wait_subnet(SOON).unwrap())
        .collect();
    wait_programmed(rig.node(1), &[entry(rig.node(2), &subnets[1])]);
    wait_programmed(rig.node(2), &[entry(rig.node(1), &subnets[0])]);

    // Without a client certificate etcd refuses; the agent keeps trying and
    // says why, writing nothing.
    let node = rig.node(3);
    let lone = Agent::start(
        node,
        &agent_dir(&rig, node),
        &etcd.url(),
        &["--etcd-cafile", tls.ca.to_str().unwrap()],
    )
    .unwrap();
    wait_for("the refusal logged", SOON, || {
        (lone.log_lines("retrying in") > 0).then_some(())
    })
    .unwrap();
    assert!(!lone.subnet_file.exists());
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets/")).unwrap().len(), 2);

    // --release-lease: node 2's agent stops (which leaves the lease), then
    // node 2 leaves; node 1 drops it.
    let mut agents = agents;
    agents[1].kill();
    let output = rig
        .node(2)
        .pod_net_command(
            &[
                &[
                    "agent",
                    "--etcd-endpoints",
                    &etcd.url(),
                    "--iface",
                    "eth0",
                    "--release-lease",
                ][..],
                &flags[..],
            ]
            .concat(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, format!("released the lease on {}\n", subnets[1]));
    assert_eq!(etcd.get(&lease_key(&subnets[1])).unwrap(), None);
    wait_programmed(rig.node(1), &[]);
}

#[test]
fn a_watch_resumed_past_a_compaction_lists_again_and_converges() {
    require_root!();
    let rig = rig(3);
    let mut etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let node = rig.node(1);
    let agent = start(&rig, node, &[]);
    agent.wait_subnet(SOON).unwrap();
    let lease = |n: u8| {
        (
            format!("10.244.{n}.0/24"),
            format!("192.168.100.{n}"),
            format!("02:aa:00:00:00:{n:02x}"),
        )
    };
    let put = |etcd: &Etcd, (subnet, ip, mac): &(String, String, String)| {
        etcd.put(
            &lease_key(subnet),
            &format!(
                r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            ),
        )
        .unwrap();
    };
    let (doomed, kept, fresh) = (lease(250), lease(251), lease(252));
    put(&etcd, &doomed);
    put(&etcd, &kept);
    wait_programmed(node, &[doomed.clone(), kept.clone()]);

    // The agent is frozen while etcd restarts (with its data), a lease goes,
    // one comes, and everything up to now is compacted: the agent's watch
    // resumes at a revision etcd no longer has.
    let pid = agent.pid().unwrap().to_string();
    pod_net_tests::cmd::run("kill", ["-STOP", pid.as_str()]).unwrap();
    etcd.restart(false).unwrap();
    etcd.etcdctl(&["del", &lease_key(&doomed.0)]).unwrap();
    put(&etcd, &fresh);
    for round in 0..5 {
        etcd.put("/unrelated/churn", &round.to_string()).unwrap();
    }
    let status = etcd
        .etcdctl(&["endpoint", "status", "--write-out", "json"])
        .unwrap();
    let revision = serde_json::from_str::<serde_json::Value>(&status).unwrap()[0]["Status"]
        ["header"]["revision"]
        .as_i64()
        .unwrap();
    etcd.etcdctl(&["compact", &revision.to_string()]).unwrap();
    pod_net_tests::cmd::run("kill", ["-CONT", pid.as_str()]).unwrap();

    wait_programmed(node, &[kept, fresh]);
    let log = agent.log_text();
    assert!(log.contains("resuming the watch at revision"), "{log}");
    assert!(
        log.contains(&format!(
            "listing again: compacted up to revision {revision}"
        )),
        "{log}"
    );
}

/// flannel's `Backend.DirectRouting`: peers on the underlay's subnet are
/// routed to directly (pods reach each other with `direct_out` and
/// `direct_in`, no VXLAN), a peer elsewhere over VXLAN.
#[test]
fn direct_routing_reaches_peers_on_the_segment_directly_and_others_over_vxlan() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    )
    .unwrap();
    // A node on another subnet, which only VXLAN can reach.
    etcd.put(
        &lease_key("10.244.77.0/24"),
        r#"{"PublicIP":"192.168.77.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:77"}}"#,
    )
    .unwrap();
    let (node_1, node_2) = (rig.node(1), rig.node(2));
    let agents = [start(&rig, node_1, &[]), start(&rig, node_2, &[])];
    let subnets: Vec<String> = agents
        .iter()
        .map(|agent| agent.wait_subnet(SOON).unwrap())
        .collect();
    let wanted = BTreeMap::from([
        ("10.244.77.0/24".to_owned(), "vxlan".to_owned()),
        (subnets[1].clone(), "direct".to_owned()),
    ]);
    wait_modes(node_1, &wanted);
    // The direct peer's route leaves by the underlay, the other's by the tunnel.
    assert_eq!(
        node_1.ip(&["route", "show", &subnets[1]]).unwrap(),
        format!(
            "{} via {} dev eth0 proto 112 onlink \n",
            subnets[1], node_2.underlay_ip
        )
    );
    assert_eq!(
        tunnel_routes(node_1),
        "10.244.77.0/24 via 192.168.77.7 proto 112 onlink \n"
    );

    let a = pod_via_conflist(&rig, node_1, &agents[0], "direct-a");
    let b = pod_via_conflist(&rig, node_2, &agents[1], "direct-b");
    let before = (
        node_1.counter("direct_out").unwrap(),
        node_2.counter("direct_in").unwrap(),
    );
    wait_for("the direct peer's pods", SOON, || ping(&a, b.ip, 1).ok()).unwrap();
    ping(&a, b.ip, 5).unwrap();
    ping(&b, a.ip, 5).unwrap();
    assert!(
        node_1.counter("direct_out").unwrap() - before.0 >= 10,
        "echo requests and replies"
    );
    assert!(node_2.counter("direct_in").unwrap() - before.1 >= 10);
    assert_eq!(
        node_1.counter("encap").unwrap(),
        0,
        "nothing went over VXLAN"
    );
}

#[test]
fn the_reconnect_backoff_starts_over_after_every_outage() {
    require_root!();
    let rig = rig(3);
    let mut etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let node = rig.node(1);
    let agent = start(&rig, node, &[]);
    agent.wait_subnet(SOON).unwrap();
    wait_for("the agent to follow", SOON, || {
        (agent.log_lines("following 0 other node(s)") == 1).then_some(())
    })
    .unwrap();
    for outage in 1..=4 {
        etcd.kill();
        wait_for("the agent to see the outage", SOON, || {
            (agent.log_lines("reconnecting in") >= outage).then_some(())
        })
        .unwrap(); // Down long enough for the retries to back off.
        std::thread::sleep(Duration::from_secs(2));
        etcd.restart(false).unwrap();
        let resumed = wait_for("the watch to resume", SOON, || {
            (agent.log_lines("resuming the watch at revision") >= outage
                && cluster_metric(node, "store_connected").as_deref() == Some("1"))
            .then_some(())
        });
        assert!(resumed.is_ok(), "{}", agent.log_text());
    }
    // Every outage starts from the first wait again, and backs off while
    // it lasts.
    let log = agent.log_text();
    let firsts: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("reconnecting in"))
        .collect();
    assert_eq!(firsts.len(), 4, "{log}");
    for line in firsts {
        assert!(line.ends_with("reconnecting in 200ms"), "{line}\n{log}");
    }
    assert_eq!(agent.log_lines("retrying in 400ms"), 4, "{log}");
}

/// The remote prefixes in `node`'s maps.
fn entry_cidrs(node: &Node) -> Vec<String> {
    remote_nodes(node)
        .unwrap()
        .into_iter()
        .map(|(cidr, _, _)| cidr)
        .collect()
}

/// A network holding the synthetic leases (10/8) and this node's (11/8).
const SYNTHETIC_CONFIG: &str =
    r#"{"Network":"10.0.0.0/7","SubnetMin":"11.0.0.0","Backend":{"Type":"vxlan"}}"#;

/// A rig of 3, its etcd with [`SYNTHETIC_CONFIG`], and node 1's agent,
/// joined.
fn synthetic_cluster() -> (Rig, Etcd, Agent) {
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(SYNTHETIC_CONFIG).unwrap();
    let agent = start(&rig, rig.node(1), &[]);
    agent.wait_subnet(SOON).unwrap();
    (rig, etcd, agent)
}

/// Synthetic lease `index` moved to another node: node IP 172.17.x.y and
/// a VTEP MAC of its own.
fn moved_lease(index: u32) -> (String, String) {
    let (subnet, ip, _) = synthetic_peer(index);
    let [_, _, high, low] = ip.octets();
    (
        lease_key(&subnet),
        lease_value(
            &format!("172.17.{high}.{low}"),
            &format!("0e:6e:ac:11:{high:02x}:{low:02x}"),
        ),
    )
}

/// What one look at the node saw: its routes, then its entries, then its
/// routes again.
struct Look {
    before: BTreeMap<String, String>,
    entries: Vec<(String, String, String)>,
    after: BTreeMap<String, String>,
}

impl Look {
    fn take(node: &Node) -> Self {
        Self {
            before: tunnel_prefixes(node),
            entries: remote_nodes(node).unwrap(),
            after: tunnel_prefixes(node),
        }
    }

    /// Entries with a route in neither read of the routes.
    fn unrouted(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(cidr, _, _)| {
                !self.before.contains_key(cidr) && !self.after.contains_key(cidr)
            })
            .map(|(cidr, _, _)| cidr.clone())
            .collect()
    }

    fn sizes(&self) -> [usize; 3] {
        [self.before.len(), self.entries.len(), self.after.len()]
    }

    /// How many entries point at a node IP starting with `prefix`.
    fn entries_via(&self, prefix: &str) -> usize {
        self.entries
            .iter()
            .filter(|(_, node_ip, _)| node_ip.starts_with(prefix))
            .count()
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const ADDING: u8 = 1;
const MOVING: u8 = 2;
const DELETING: u8 = 3;

#[test]
fn readers_never_see_an_entry_without_its_route_while_thousands_of_leases_come_move_and_go() {
    const LEASES: u32 = 20_000;
    require_root!();
    let (rig, etcd, mut agent) = synthetic_cluster();
    let node = rig.node(1);
    agent.kill();
    let leases: Vec<(String, String)> = (0..LEASES).map(synthetic_lease).collect();
    etcd.put_many(&leases).unwrap();

    // The documented order: a route goes in before its entry and out after
    // it, so an entry read between two reads of the routes is in one of
    // them, whichever way a batch goes. A lease that moves to another
    // node is replaced in place: its prefix never lacks either.
    let phase = AtomicU8::new(ADDING);
    let stop = AtomicBool::new(false);
    let all = LEASES as usize;
    let (looks, violations) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut looks: BTreeMap<u8, (usize, usize)> = BTreeMap::new();
            let mut violations = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let during = phase.load(Ordering::Relaxed);
                let look = Look::take(node);
                let whole = during == phase.load(Ordering::Relaxed);
                for cidr in look.unrouted() {
                    violations.push(format!("{cidr}: an entry without its route"));
                }
                let mid = match during {
                    MOVING => {
                        if whole && look.sizes() != [all; 3] {
                            violations.push(format!(
                                "while moving: {:?} routes, entries, routes",
                                look.sizes()
                            ));
                        }
                        look.entries_via("172.16.") > 0 && look.entries_via("172.17.") > 0
                    }
                    _ => look.sizes().iter().any(|size| *size != look.before.len()),
                };
                let seen = looks.entry(during).or_default();
                seen.0 += 1;
                seen.1 += usize::from(mid);
            }
            (looks, violations)
        });
        // The reader stops however this ends (a failed wait too).
        let stopper = StopOnDrop(&stop);
        // 20,000 leases in one batch: the restarted agent's first list.
        agent.restart().unwrap();
        let batch = Duration::from_mins(2);
        wait_for("every lease programmed", batch, || {
            (entry_cidrs(node).len() == all).then_some(())
        })
        .unwrap();
        // Every lease moved to another node, in transactions of 128.
        phase.store(MOVING, Ordering::Relaxed);
        let moved: Vec<(String, String)> = (0..LEASES).map(moved_lease).collect();
        etcd.put_many(&moved).unwrap();
        wait_for("every lease moved", batch, || {
            let entries = remote_nodes(node).unwrap();
            (entries.len() == all
                && entries
                    .iter()
                    .all(|(_, node_ip, _)| node_ip.starts_with("172.17.")))
            .then_some(())
        })
        .unwrap();
        let routes = tunnel_prefixes(node);
        assert_eq!(routes.len(), all);
        assert!(
            routes.values().all(|via| via.starts_with("172.17.")),
            "routes via their old nodes: {:?}",
            routes.iter().find(|(_, via)| !via.starts_with("172.17."))
        );
        // And out again in one watch update.
        phase.store(DELETING, Ordering::Relaxed);
        etcd.etcdctl(&["del", "--prefix", &format!("{PREFIX}/subnets/10.")])
            .unwrap();
        wait_for("every lease gone", batch, || {
            entry_cidrs(node).is_empty().then_some(())
        })
        .unwrap();
        drop(stopper);
        reader.join().unwrap()
    });
    assert!(
        violations.is_empty(),
        "{} violations, the first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    println!("looks (all, mid-batch) while adding, moving, deleting: {looks:?}");
    for during in [ADDING, MOVING, DELETING] {
        let (_, mid) = looks.get(&during).copied().unwrap_or_default();
        assert!(mid > 0, "no look saw phase {during} under way: {looks:?}");
    }
    wait_for("the routes gone too", SOON, || {
        tunnel_prefixes(node).is_empty().then_some(())
    })
    .unwrap();
    // The batches are a few log lines, none per lease.
    let log = agent.log_text();
    assert_eq!(agent.log_lines("etcd: + node"), 0, "{log}");
    assert!(log.lines().count() < 60, "{log}");
}

/// The changes the agent's INFO lines say it programmed, summed.
fn logged_changes(log: &str) -> usize {
    log.lines()
        .flat_map(|line| line.split("etcd: ").skip(1))
        .filter_map(|part| part.split_once(" change(s) programmed"))
        .filter_map(|(count, _)| count.parse::<usize>().ok())
        .sum()
}

#[test]
fn lease_churn_is_one_log_line_per_window_and_every_change_is_counted() {
    const LEASES: u32 = 100;
    require_root!();
    let (rig, etcd, agent) = synthetic_cluster();
    let node = rig.node(1);
    wait_for("the agent to follow", SOON, || {
        (agent.log_lines("following 0 other node(s)") == 1).then_some(())
    })
    .unwrap();
    // One lease at a time, each its own watch update: churn.
    let started = std::time::Instant::now();
    let leases: Vec<(String, String)> = (0..LEASES).map(synthetic_lease).collect();
    for (key, value) in &leases {
        etcd.put(key, value).unwrap();
    }
    for (key, _) in &leases {
        etcd.etcdctl(&["del", key]).unwrap();
    }
    let churned = started.elapsed();
    let changes = 2 * LEASES as usize;
    // The last window's line comes when it ends.
    let logged = wait_for(
        "every change in the log",
        SOON + Duration::from_secs(10),
        || (logged_changes(&agent.log_text()) >= changes).then_some(()),
    );
    let log = agent.log_text();
    assert!(logged.is_ok(), "{log}");
    assert_eq!(logged_changes(&log), changes, "{log}");
    assert!(entry_cidrs(node).is_empty());
    // A line at once, then one per 10 s window while churn lasts, then
    // the last window's; none per lease.
    let lines = agent.log_lines("change(s) programmed");
    let windows = churned.as_secs() / 10 + 2;
    assert!(
        lines as u64 <= windows,
        "{lines} lines for {changes} changes in {churned:?}\n{log}"
    );
    assert_eq!(agent.log_lines("etcd: + node"), 0, "{log}");
    println!("{changes} changes in {churned:?}: {lines} log line(s)");
}
