//! The second half of `cargo xtask demo`: three nodes join through etcd,
//! with no `node add` anywhere. etcd runs in the rig's switch namespace;
//! each node's agent leases a subnet, writes `subnet.env` and a conflist,
//! and programs the others; pods made through those conflists by a CNI
//! runtime ping across nodes through the BPF encap path.
use std::time::Duration;

use anyhow::{Context as _, Result};
use pod_net_tests::{
    cluster::{Agent, Etcd, PREFIX, try_rig},
    cni::{self, Attachment, Runtime, result_ipv4},
};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

pub fn run() -> Result<()> {
    println!("\ndemo: a cluster through etcd: 3 nodes, no node add");
    // cni0 without an address: the bridge plugin gives it the leased
    // subnet's gateway.
    let rig = try_rig(3)?;
    let etcd = Etcd::start(&rig)?;
    println!("\n$ etcdctl put {PREFIX}/config '{CONFIG}'   # etcd in the switch namespace");
    etcd.put_config(CONFIG)?;
    let scratch = rig.scratch_dir()?;
    let mut agents = Vec::new();
    for node in rig.nodes() {
        let dir = scratch.join(format!("n{}", node.index));
        println!(
            "$ pod-net agent --etcd-endpoints {} --iface eth0 --subnet-file {}/subnet.env \
             --cni-conflist {}/10-pod-net.conflist &   # node {}",
            Etcd::endpoint(),
            dir.display(),
            dir.display(),
            node.index
        );
        agents.push(Agent::start(node, &dir, &Etcd::endpoint(), &[])?);
    }
    for (node, agent) in rig.nodes().iter().zip(&agents) {
        let subnet = agent.wait_subnet(Duration::from_secs(30))?;
        println!("node {}: leased {subnet}", node.index);
    }
    println!("\n$ etcdctl get --prefix {PREFIX}/subnets/");
    print!(
        "{}",
        etcd.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")])?
    );
    println!("\n$ cat {}   # node 1", agents[0].subnet_file.display());
    print!("{}", std::fs::read_to_string(&agents[0].subnet_file)?);

    let node_1 = rig.node(1);
    pod_net_tests::wait_for(
        "node 1 to program both peers",
        Duration::from_secs(30),
        || {
            pod_net_tests::cluster::remote_nodes(node_1)
                .ok()
                .filter(|nodes| nodes.len() == 2)
        },
    )?;
    println!("\n$ pod-net node list   # node 1");
    print!("{}", node_1.pod_net(&["node", "list"])?);

    // A pod on nodes 1 and 3, each through its agent's conflist.
    let mut pods = Vec::new();
    for index in [1, 3] {
        let node = rig.node(index);
        let agent = &agents[usize::from(index) - 1];
        let ipam = scratch.join(format!("ipam-n{index}"));
        let runtime = Runtime::new(node, agent.conflist(&ipam)?, cni::plugin_path()?);
        let attachment = Attachment::in_sandbox(&rig, &format!("demo{index}"))?;
        let ip = result_ipv4(&runtime.add(&attachment)?)?;
        println!("CNI ADD through node {index}'s conflist: pod {ip}");
        pods.push((attachment, ip));
    }
    let ((from, _), (_, to)) = (&pods[0], &pods[1]);
    let target = to.to_string();
    // One ping first resolves the pod's gateway; then count.
    let _ = from.exec(&["ping", "-c", "1", "-W", "1", &target]);
    let encap_before = node_1.counters()?["encap"];
    println!("\n$ ping {to}   # from node 1's pod, 5 pings");
    print!(
        "{}",
        from.exec(&[
            "ping", "-n", "-q", "-c", "5", "-i", "0.1", "-W", "1", &target
        ])
        .context("pinging across nodes")?
    );
    println!(
        "node 1 encapsulated {} packets in BPF",
        node_1.counters()?["encap"] - encap_before
    );
    println!("\ndemo: stopping the agents and etcd, tearing the rig down");
    drop(agents);
    drop(etcd);
    drop(rig);
    Ok(())
}
