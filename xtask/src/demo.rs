//! `cargo xtask demo`: the main job on a rig. One node with two pods on a
//! cni0 bridge, pod-net loaded, the pods registered, ping and TCP between
//! them through the fast path, the counters, and teardown.
use anyhow::Result;
use pod_net_tests::{Rig, RigSpec};

use crate::run::{cargo, show, workspace_root};

pub fn run() -> Result<()> {
    println!("demo: building pod-net");
    show(&mut cargo(&["build", "--bins"]))?;
    // SAFETY: single-threaded here; the rig reads it to find the binary.
    unsafe {
        std::env::set_var("POD_NET_BIN", workspace_root().join("target/debug/pod-net"));
    }

    println!("demo: building a rig: 1 node, 2 pods on cni0 (10.244.1.0/24)");
    let rig = Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: 2,
        ..RigSpec::default()
    })?;
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));

    step(node, &["load"])?;
    for pod in &node.pods {
        let ip = pod.ip.to_string();
        step(node, &["pod", "add", "--ip", &ip, "--veth", &pod.host_veth])?;
    }
    step(node, &["pod", "list"])?;

    println!("\n$ ping {} -> {} (5 pings)", a.ip, b.ip);
    print!("{}", a.ping(b.ip, 5)?);

    println!("\n$ iperf3 TCP {} -> {} (3 s)", a.ip, b.ip);
    let _server = b.iperf3_server(&[])?;
    let report = a.iperf3_client(b.ip, &["-t", "3"])?;
    let gbits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_default()
        / 1e9;
    println!("received {gbits:.1} Gbit/s");

    let host_veth = node.link_packets(&b.host_veth)?;
    let pod_eth0 = b.eth0_packets()?;
    println!(
        "\nbridge bypass: {}'s eth0 received {} packets; its host veth {} transmitted {}",
        b.ip, pod_eth0.rx, b.host_veth, host_veth.tx
    );

    step(node, &["stats"])?;
    step(node, &["status"])?;
    println!("\ndemo: tearing the rig down");
    drop(rig);
    Ok(())
}

/// Runs and prints one `pod-net` command on `node`.
fn step(node: &pod_net_tests::Node, args: &[&str]) -> Result<()> {
    println!("\n$ pod-net {}", args.join(" "));
    print!("{}", node.pod_net(args)?);
    Ok(())
}
