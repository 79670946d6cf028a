//! pod-net nodes and real flanneld v0.28.10 nodes in one cluster: one etcd
//! in flannel's schema, each node leasing its subnet there, each reading
//! the others' leases as its own. pod-net's nodes make their pods through
//! the agent's conflist, flannel's through flannel's CNI plugin; every pod
//! reaches every other, and the pod-net nodes' counters say which path
//! each packet took.
use std::time::Instant;

use pod_net_tests::{
    cluster::{self, CONFIG, Etcd, lease_key, remote_nodes},
    interop::{
        Meeting, Member, Runs,
        checks::{
            DIRECT, Mode, Shape, assert_flanneld_clean, assert_leases, assert_own_vtep,
            assert_programmed, assert_store_healthy, make_pods, mixed_cluster, mixed_kube_cluster,
            ping_every_pair, start, watched,
        },
    },
    require_root,
};

/// pod-net on nodes 1 and 2, flanneld on 3 and 4, two pods on each.
const FOUR: Shape = Shape {
    config: CONFIG,
    mode: Mode::Vxlan,
    vni: 1,
    port: 8472,
    pod_net: &[1, 2],
    flannel: &[3, 4],
    accelerated: &[],
    pods_per_node: 2,
};

#[test]
fn pod_net_and_flanneld_nodes_share_one_vxlan_network_and_every_pod_reaches_every_other() {
    require_root!();
    mixed_cluster(&FOUR);
}

#[test]
fn with_direct_routing_pod_net_and_flanneld_nodes_route_to_each_other_without_vxlan() {
    require_root!();
    mixed_cluster(&Shape {
        config: DIRECT,
        mode: Mode::Direct,
        ..FOUR
    });
}

/// flannel's `VNI` and `Port` are the cluster's, not pod-net's defaults:
/// both sides make their devices with them and speak them on the wire.
#[test]
fn a_network_with_its_own_vni_and_port_is_shared_the_same_way() {
    require_root!();
    mixed_cluster(&Shape {
        config: r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7,"Port":4789}}"#,
        vni: 7,
        port: 4789,
        pod_net: &[1],
        flannel: &[2, 3],
        pods_per_node: 1,
        ..FOUR
    });
}

/// Membership changes across the two kinds of node: pod-net nodes 1 and 2
/// with flanneld node 3; node 3 leaves (flanneld stopped, its lease
/// deleted) and is dropped by the pod-net nodes; flanneld node 4 joins
/// later and is programmed both ways, its pod reached; then pod-net node 2
/// leaves (agent stopped, `--release-lease`) and is dropped by flanneld
/// and pod-net alike.
#[test]
fn nodes_leaving_are_dropped_and_a_flannel_node_joining_is_added_and_reached() {
    require_root!();
    let started = Instant::now();
    let rig = cluster::rig(4);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let mut members = start(&rig, &Meeting::Etcd(&etcd), &[1, 2], &[3], &[]);
    {
        let all: Vec<&Member> = members.iter().collect();
        assert_programmed(&all, Mode::Vxlan);
        let pods = make_pods(&rig, &all, 1, "before");
        ping_every_pair(&all, &pods, Mode::Vxlan);
    }

    // Node 3 leaves, its pod still there: flanneld stops, its lease goes.
    let stranded = members[2].pod(&rig, "stranded").unwrap();
    let gone = (
        members[2].subnet.clone(),
        members[2].vtep_mac.clone(),
        members[2].node.underlay_ip.to_string(),
    );
    // (Stopping, flanneld logs its cancelled watch as an error.)
    assert_flanneld_clean(&members[2]);
    let flanneld = members[2].flanneld().unwrap();
    assert!(flanneld.stop().is_some());
    etcd.etcdctl(&["del", &lease_key(&gone.0)]).unwrap();
    let left = Instant::now();
    let staying: Vec<&Member> = members[..2].iter().collect();
    // The pod-net nodes hold only each other, in the maps and the kernel
    // path alike (assert_programmed is exact).
    assert_programmed(&staying, Mode::Vxlan);
    eprintln!("node 3 dropped {:?} after its lease went", left.elapsed());
    for member in &staying {
        let node = member.node;
        let entries = remote_nodes(node).unwrap();
        assert!(
            entries
                .iter()
                .all(|(cidr, ip, _)| *cidr != gone.0 && *ip != gone.2),
            "{entries:?}"
        );
        let routes = cluster::tunnel_routes(node);
        assert!(!routes.contains(&gone.0), "{routes}");
        let fdb = node
            .exec(&["bridge", "fdb", "show", "dev", &member.tunnel_device()])
            .unwrap();
        assert!(!fdb.contains(&gone.1), "{fdb}");
        let neighbours = node
            .ip(&["neigh", "show", "dev", &member.tunnel_device()])
            .unwrap();
        assert!(!neighbours.contains(&gone.1), "{neighbours}");
    }
    // A pod-net pod's packets for the stranded pod take no fast path now.
    let probe = members[0].pod(&rig, "probe").unwrap();
    let before = watched(members[0].node);
    let (sent, received) = probe.ping(stranded.ip, 2).unwrap();
    assert_eq!((sent, received), (2, 0));
    let after = watched(members[0].node);
    assert_eq!(after["encap"], before["encap"]);
    assert_eq!(after["pass_unknown_dst"] - before["pass_unknown_dst"], 2);
    drop(stranded);

    // Node 4 joins later: programmed everywhere, programming everyone, and
    // its pods are reached both ways.
    let joined = Instant::now();
    drop(staying);
    members.push(Member::flannel(&rig, &Meeting::Etcd(&etcd), rig.node(4)).unwrap());
    assert_own_vtep(&members[3]);
    let cluster_now: Vec<&Member> = [&members[0], &members[1], &members[3]].into();
    assert_leases(&etcd, &cluster_now);
    assert_programmed(&cluster_now, Mode::Vxlan);
    eprintln!("node 4 programmed {:?} after it started", joined.elapsed());
    let pods = make_pods(&rig, &cluster_now, 1, "after");
    ping_every_pair(&cluster_now, &pods, Mode::Vxlan);
    for member in &members[..2] {
        assert_store_healthy(member, 2);
    }
    assert_flanneld_clean(&members[3]);
    drop(probe);
    drop(pods);

    // And the other way: a pod-net node that leaves (its agent stopped,
    // its lease released) is dropped by flanneld as by pod-net.
    let released = Instant::now();
    if let Runs::PodNet(agent) = &mut members[1].runs {
        agent.kill();
    }
    let output = members[1]
        .node
        .pod_net_command(&[
            "agent",
            "--etcd-endpoints",
            &Etcd::endpoint(),
            "--iface",
            "eth0",
            "--release-lease",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("released the lease on {}\n", members[1].subnet)
    );
    let remaining: Vec<&Member> = [&members[0], &members[3]].into();
    assert_leases(&etcd, &remaining);
    assert_programmed(&remaining, Mode::Vxlan);
    eprintln!(
        "node 2 dropped {:?} after its agent stopped",
        released.elapsed()
    );
    assert_flanneld_clean(&members[3]);
    drop(members);
    eprintln!("done after {:?}", started.elapsed());
}

/// The same in kube mode: a pod-net agent (`--kube-subnet-mgr`, the
/// manifest's service account), flanneld (`--kube-subnet-mgr`) and
/// flanneld accelerated by pod-net meet through a real kube-apiserver,
/// each reading the others' Node annotations as its own.
#[test]
fn in_kube_mode_pod_net_flanneld_and_accelerated_nodes_share_one_network() {
    require_root!();
    mixed_kube_cluster(&Shape {
        pod_net: &[1],
        flannel: &[2],
        accelerated: &[3],
        ..FOUR
    });
}
