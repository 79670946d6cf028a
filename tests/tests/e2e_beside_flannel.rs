//! pod-net beside a real flanneld (v0.28.10): on an accelerated node
//! flanneld owns the lease, `subnet.env`, `flannel.1` and its routes,
//! neighbours and FDB, and `pod-net agent --beside-flannel` mirrors that
//! kernel state into its maps, with pod-net-cni chained into flannel's
//! conflist. Every pod reaches every other, the accelerated nodes'
//! counters say the fast path carried it and `flannel.1` saw none of it;
//! unloading pod-net, restarting flanneld and nodes coming and going lose
//! no packet; `status` names what flanneld and the maps disagree on.
use std::time::Instant;

use pod_net_tests::{
    Rig,
    cluster::{self, CONFIG, Etcd, SOON, flood_result, lease_key, remote_nodes},
    interop::{
        self, Meeting, Member,
        checks::{
            DIRECT, Mode, Shape, assert_flanneld_clean, assert_programmed, mixed_cluster,
            ping_every_pair, start,
        },
    },
    require_root, wait_for,
};

/// Echo requests in a flood, 2 ms apart: about 4 s, long enough for
/// what the tests do during one.
const FLOOD: u32 = 2000;

/// A pod-net node (1), a flannel node (2) and two accelerated ones (3, 4),
/// two pods on each.
const ALL_KINDS: Shape = Shape {
    config: CONFIG,
    mode: Mode::Vxlan,
    vni: 1,
    port: 8472,
    pod_net: &[1],
    flannel: &[2],
    accelerated: &[3, 4],
    pods_per_node: 2,
};

#[test]
fn accelerated_flannel_nodes_carry_every_pod_on_the_fast_path_beside_flannel_and_pod_net_nodes() {
    require_root!();
    mixed_cluster(&ALL_KINDS);
}

#[test]
fn with_direct_routing_accelerated_nodes_route_directly_on_the_fast_path() {
    require_root!();
    mixed_cluster(&Shape {
        config: DIRECT,
        mode: Mode::Direct,
        pod_net: &[],
        flannel: &[3],
        accelerated: &[1, 2],
        pods_per_node: 1,
        ..ALL_KINDS
    });
}

/// flanneld on node 2 (`members[0]`) and flanneld accelerated by pod-net
/// on node 1 (`members[1]`), meeting in `etcd`, each holding the other.
fn flannel_and_accelerated<'a>(rig: &'a Rig, etcd: &Etcd) -> Vec<Member<'a>> {
    etcd.put_config(CONFIG).unwrap();
    let members = start(rig, &Meeting::Etcd(etcd), &[], &[2], &[1]);
    assert_programmed(&members.iter().collect::<Vec<_>>(), Mode::Vxlan);
    members
}

/// The fast path's (encapsulated, decapsulated) packets on `member`.
fn fast_path(member: &Member) -> (u64, u64) {
    let counters = member.node.counters().unwrap();
    let count = |reason: &str| counters.get(reason).copied().unwrap_or(0);
    (count("encap"), count("decap"))
}

/// Every echo request of `flood`, still running when called, was
/// answered.
fn assert_flood_whole(during: &str, mut flood: std::process::Child) {
    assert!(
        flood.try_wait().unwrap().is_none(),
        "{during}: the flood ended before: make FLOOD longer"
    );
    let (sent, received) = flood_result(flood);
    assert_eq!(
        (sent, received),
        (u64::from(FLOOD), u64::from(FLOOD)),
        "{during}: (sent, received)"
    );
}

/// Waits out one second of the flood.
fn a_second() {
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// Accelerated node 1 and flannel node 2: what an operator does to the
/// accelerator while pods talk, under a ping flood each time.
/// - pod-net is taken away (agent stopped, `cni unchain`, `unload`): no
///   packet lost, the traffic falls back to `flannel.1`, and flanneld's
///   device, routes, neighbours, FDB and conflist are as flanneld made
///   them;
/// - pod-net comes back (the agent, which loads and chains again): no
///   packet lost, and a new pod takes the fast path;
/// - flanneld restarts under pod-net: no packet lost, and every echo
///   request and reply of the flood went through the fast path.
#[test]
fn unload_reload_and_a_flanneld_restart_lose_no_packet() {
    require_root!();
    let started = Instant::now();
    // (Node 3 only hosts the rig's switch, with etcd.)
    let rig = cluster::rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    let mut members = flannel_and_accelerated(&rig, &etcd);
    let node = rig.node(1);
    let pods = vec![
        members[1].pod(&rig, "ours").unwrap(),
        members[0].pod(&rig, "theirs").unwrap(),
    ];
    {
        let all: Vec<&Member> = members.iter().collect();
        assert_programmed(&all, Mode::Vxlan);
        ping_every_pair(&all, &pods, Mode::Vxlan);
    }
    let (ours, theirs) = (&pods[0], &pods[1]);
    let chain = members[1].agent().unwrap().conflist.clone();
    let chain = chain.to_str().unwrap();
    let device_before = interop::link_details(node, "flannel.1").unwrap();
    let flanneld_state = || {
        (
            interop::routes(node, &[]).unwrap(),
            interop::neighbours(node, "flannel.1").unwrap(),
            interop::fdb(node, "flannel.1").unwrap(),
        )
    };
    let state_before = flanneld_state();

    // pod-net taken away under a flood.
    let flood = ours.flood(theirs.ip, FLOOD).unwrap();
    a_second();
    members[1].agent_mut().unwrap().kill();
    node.pod_net(&["cni", "unchain", "--conflist", chain])
        .unwrap();
    let unchained: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chain).unwrap()).unwrap();
    let flannel_conflist = members[1].flanneld().unwrap().conflist();
    assert_eq!(
        unchained, flannel_conflist,
        "unchained, flannel's conflist is its own"
    );
    let kernel_before = node.link_packets("flannel.1").unwrap();
    let unload = node.pod_net(&["unload"]).unwrap();
    assert!(!unload.contains("flannel.1"), "{unload}");
    a_second();
    let kernel_after = node.link_packets("flannel.1").unwrap();
    // 2 ms apart: about 500 each way in that second.
    assert!(
        kernel_after.tx - kernel_before.tx > 200 && kernel_after.rx - kernel_before.rx > 200,
        "the flood did not fall back to flannel.1: {kernel_before:?} -> {kernel_after:?}"
    );
    assert_flood_whole("pod-net unloaded", flood);
    let device_after = interop::link_details(node, "flannel.1").unwrap();
    assert_eq!(device_after["ifindex"], device_before["ifindex"]);
    assert_eq!(device_after["address"], device_before["address"]);
    assert!(
        node.ip(&["link", "show", "dev", "pnvxlan1"]).is_err(),
        "pod-net made no VXLAN device of its own"
    );
    assert_eq!(flanneld_state(), state_before, "flanneld's kernel state");

    // pod-net back (the agent loads and chains again), under a flood.
    let flood = ours.flood(theirs.ip, FLOOD).unwrap();
    a_second();
    let agent = members[1].agent_mut().unwrap();
    agent.restart().unwrap();
    interop::wait_accelerating(node, agent).unwrap();
    assert_flood_whole("pod-net loaded again", flood);
    eprintln!(
        "unload and reload under a flood after {:?}",
        started.elapsed()
    );
    let late = members[1].pod(&rig, "late").unwrap();
    {
        let all: Vec<&Member> = members.iter().collect();
        assert_programmed(&all, Mode::Vxlan);
        let pods = [late, members[0].pod(&rig, "theirs-2").unwrap()];
        ping_every_pair(&all, &pods, Mode::Vxlan);
        let [late, _] = pods;
        drop(all);

        // flanneld restarted under pod-net, under a flood from the new pod.
        let before = fast_path(&members[1]);
        let flood = late.flood(theirs.ip, FLOOD).unwrap();
        a_second();
        let subnet = members[1].subnet.clone();
        let flanneld = members[1].flanneld().unwrap();
        flanneld.restart().unwrap();
        assert_eq!(flanneld.wait_subnet(SOON).unwrap(), subnet);
        assert_flood_whole("flanneld restarted", flood);
        let after = fast_path(&members[1]);
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (u64::from(FLOOD), u64::from(FLOOD)),
            "(encap, decap) of the flood across flanneld's restart"
        );
    }
    let all: Vec<&Member> = members.iter().collect();
    assert_programmed(&all, Mode::Vxlan);
    eprintln!(
        "flanneld restarted under pod-net after {:?}",
        started.elapsed()
    );
}

/// Accelerated node 1 beside flannel nodes: node 3 joins and is on the
/// fast path; node 2 leaves and its entry goes; with the agent stopped, an
/// entry removed and one added by hand are both named by `status`, and the
/// agent, back, puts flanneld's view back.
#[test]
fn flannel_nodes_coming_and_going_are_followed_and_status_names_disagreements() {
    require_root!();
    let started = Instant::now();
    let rig = cluster::rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    let mut members = flannel_and_accelerated(&rig, &etcd);

    // Node 3 joins.
    members.push(Member::flannel(&rig, &Meeting::Etcd(&etcd), rig.node(3)).unwrap());
    {
        let all: Vec<&Member> = members.iter().collect();
        assert_programmed(&all, Mode::Vxlan);
        let pods = [
            members[1].pod(&rig, "ours").unwrap(),
            members[2].pod(&rig, "joined").unwrap(),
        ];
        ping_every_pair(&all, &pods, Mode::Vxlan);
    }
    eprintln!("node 3 joined after {:?}", started.elapsed());

    // Node 2 leaves: flanneld stopped, its lease deleted.
    let gone = members[0].subnet.clone();
    members[0].flanneld().unwrap().stop();
    etcd.etcdctl(&["del", &lease_key(&gone)]).unwrap();
    let staying: Vec<&Member> = members[1..].iter().collect();
    assert_programmed(&staying, Mode::Vxlan);
    let node = rig.node(1);
    assert!(
        remote_nodes(node)
            .unwrap()
            .iter()
            .all(|(cidr, ..)| *cidr != gone),
        "node 2's entry went"
    );
    assert_flanneld_clean(&members[2]);
    eprintln!("node 2 left after {:?}", started.elapsed());

    // The agent stopped, the maps changed by hand: status names both.
    let joined = members[2].entry();
    members[1].agent_mut().unwrap().kill();
    node.pod_net(&["node", "del", "--cidr", &joined.0]).unwrap();
    let stray = "10.244.250.0/24";
    node.pod_net(&[
        "node",
        "add",
        "--cidr",
        stray,
        "--node-ip",
        &joined.1,
        "--vtep-mac",
        &joined.2,
    ])
    .unwrap();
    let status = node.pod_net_output(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success(), "{text}");
    let ip = &joined.1;
    for line in [
        format!(
            "flanneld routes {} to node {ip}, but the fast path has no entry for it",
            joined.0
        ),
        format!("{stray} goes to node {ip} in the fast path, but flanneld has no route for it"),
    ] {
        assert!(
            text.contains(&line),
            "status does not say {line:?}:\n{text}"
        );
    }

    // The agent, back, makes the maps flanneld's again.
    let agent = members[1].agent_mut().unwrap();
    agent.restart().unwrap();
    interop::wait_accelerating(node, agent).unwrap();
    let staying: Vec<&Member> = members[1..].iter().collect();
    assert_programmed(&staying, Mode::Vxlan);
    let healthy = wait_for("status to be healthy again", SOON, || {
        node.pod_net_output(&["status"])
            .ok()
            .filter(|output| output.status.success())
    });
    assert!(
        healthy.is_ok(),
        "{}",
        node.pod_net(&["status"]).unwrap_or_default()
    );
    eprintln!("done after {:?}", started.elapsed());
}
