//! `cargo xtask demo`: the main job on a rig. Two nodes joined by an
//! underlay, two pods on each node's cni0 bridge, pod-net loaded with VXLAN
//! on both, ping and TCP within a node (bridge bypassed) and across nodes
//! (VXLAN in BPF), then across nodes again with direct routing (the nodes
//! share the underlay's subnet), the counters, and teardown.
use anyhow::Result;
use pod_net_tests::{Node, Pod, Rig, RigSpec};

use crate::run::{cargo, show, workspace_root};

pub fn run() -> Result<()> {
    println!("demo: building pod-net");
    show(&mut cargo(&["build", "--bins"]))?;
    // SAFETY: single-threaded here; the rig reads it to find the binary.
    unsafe {
        std::env::set_var("POD_NET_BIN", workspace_root().join("target/debug/pod-net"));
    }

    println!(
        "demo: building a rig: 2 nodes (underlay 192.168.100.0/24), 2 pods each on cni0 \
         (10.244.N.0/24, MTU 1450)"
    );
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 2,
        pod_mtu: Some(1450),
        ..RigSpec::default()
    })?;
    let (node_1, node_2) = (rig.node(1), rig.node(2));
    for node in [node_1, node_2] {
        let node_ip = node.underlay_ip.to_string();
        step(node, &["load", "--underlay", "eth0", "--node-ip", &node_ip])?;
        for pod in &node.pods {
            let ip = pod.ip.to_string();
            step(node, &["pod", "add", "--ip", &ip, "--veth", &pod.host_veth])?;
        }
    }
    for (node, peer) in [(node_1, node_2), (node_2, node_1)] {
        let cidr = peer.pod_cidr();
        let node_ip = peer.underlay_ip.to_string();
        step(
            node,
            &["node", "add", "--cidr", &cidr, "--node-ip", &node_ip],
        )?;
    }
    step(node_1, &["pod", "list"])?;
    step(node_1, &["node", "list"])?;

    let (a, b, c) = (rig.pod(1, 1), rig.pod(1, 2), rig.pod(2, 1));
    traffic("same node", a, b)?;
    let host_veth = node_1.link_packets(&b.host_veth)?;
    let pod_eth0 = b.eth0_packets()?;
    println!(
        "bridge bypass: {}'s eth0 received {} packets; its host veth {} transmitted {}",
        b.ip, pod_eth0.rx, b.host_veth, host_veth.tx
    );
    traffic("across nodes, VXLAN", a, c)?;

    // The nodes share a subnet: route to each other without VXLAN.
    for (node, peer) in [(node_1, node_2), (node_2, node_1)] {
        let cidr = peer.pod_cidr();
        let node_ip = peer.underlay_ip.to_string();
        step(node, &["node", "del", "--cidr", &cidr])?;
        step(
            node,
            &[
                "node",
                "add",
                "--cidr",
                &cidr,
                "--node-ip",
                &node_ip,
                "--direct",
            ],
        )?;
    }
    step(node_1, &["node", "list"])?;
    traffic("across nodes, direct", a, c)?;

    step(node_1, &["stats"])?;
    step(node_2, &["stats"])?;
    step(node_1, &["status"])?;
    println!("\ndemo: tearing the rig down");
    drop(rig);
    crate::demo_cluster::run()
}

/// Ping and a 3-second TCP run from `client` to `server`.
fn traffic(label: &str, client: &Pod, server: &Pod) -> Result<()> {
    println!("\n$ ping {} -> {} ({label}, 5 pings)", client.ip, server.ip);
    print!("{}", client.ping(server.ip, 5)?);
    println!(
        "\n$ iperf3 TCP {} -> {} ({label}, 3 s)",
        client.ip, server.ip
    );
    let _server = server.iperf3_server(&[])?;
    let report = client.iperf3_client(server.ip, &["-t", "3"])?;
    let gbits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_default()
        / 1e9;
    println!("received {gbits:.1} Gbit/s");
    Ok(())
}

/// Runs and prints one `pod-net` command on `node`.
fn step(node: &Node, args: &[&str]) -> Result<()> {
    println!("\n$ pod-net {}   # node {}", args.join(" "), node.index);
    print!("{}", node.pod_net(args)?);
    Ok(())
}
