//! Real flanneld v0.28.10 (setup's Go build) on rig nodes, and pods made
//! with flannel's CNI plugin: the peers pod-net shares a network with, and
//! the kernel path it accelerates. No pod-net here.
use std::{collections::BTreeSet, net::Ipv4Addr, time::Instant};

use pod_net_tests::{
    Node, Rig,
    cluster::{self, CONFIG, Etcd, SOON, lease_key},
    cni::{Attachment, Runtime, result_ipv4},
    flanneld::{self, Flanneld},
    kube::ControlPlane,
    require_root,
};

/// A pod made through `flanneld`'s conflist on `node`.
struct FlannelPod<'a> {
    runtime: Runtime<'a>,
    attachment: Attachment,
    ip: Ipv4Addr,
}

impl Drop for FlannelPod<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.del(&self.attachment);
    }
}

fn pod<'a>(rig: &Rig, node: &'a Node, flanneld: &Flanneld, name: &str) -> FlannelPod<'a> {
    let runtime = Runtime::new(node, flanneld.conflist(), flanneld::plugin_path().unwrap());
    let attachment = Attachment::in_sandbox(rig, name).unwrap();
    let result = runtime.add(&attachment).unwrap();
    FlannelPod {
        ip: result_ipv4(&result).unwrap(),
        runtime,
        attachment,
    }
}

fn ping(from: &FlannelPod, to: Ipv4Addr) -> anyhow::Result<String> {
    from.attachment.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "3",
        "-i",
        "0.1",
        "-W",
        "1",
        &to.to_string(),
    ])
}

/// `10.244.N.0/24` → whether `ip` is in it.
fn in_subnet(ip: Ipv4Addr, subnet: &str) -> bool {
    let (network, len) = subnet.split_once('/').unwrap();
    let network: Ipv4Addr = network.parse().unwrap();
    let len: u32 = len.parse().unwrap();
    let mask = u32::MAX << (32 - len);
    u32::from(ip) & mask == u32::from(network)
}

/// Asserts `node`'s `flannel.1` is flannel's VXLAN device: VNI 1, port
/// 8472, on the node's underlay address, MTU 1450.
fn assert_flannel_vxlan(node: &Node) {
    let link = flanneld::vxlan_device(node).unwrap();
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{link}");
    assert_eq!(data["id"], 1, "{link}");
    assert_eq!(data["port"], 8472, "{link}");
    assert_eq!(data["local"], node.underlay_ip.to_string(), "{link}");
    assert_eq!(link["mtu"], 1450, "{link}");
}

/// Pods on two flannel nodes answer each other both ways, through
/// `flannel.1` on both sides.
fn assert_pods_ping_through_vxlan(nodes: [&Node; 2], pods: [&FlannelPod; 2]) {
    let before: Vec<_> = nodes
        .iter()
        .map(|node| node.link_packets("flannel.1").unwrap())
        .collect();
    for (from, to) in [(pods[0], pods[1]), (pods[1], pods[0])] {
        if let Err(err) = ping(from, to.ip) {
            panic!("{} -> {}: {err:#}", from.ip, to.ip);
        }
    }
    for (node, before) in nodes.iter().zip(before) {
        let after = node.link_packets("flannel.1").unwrap();
        // 3 requests out and 3 replies back each way, at least.
        assert!(
            after.tx - before.tx >= 6 && after.rx - before.rx >= 6,
            "node {}: flannel.1 {before:?} -> {after:?}",
            node.index
        );
    }
}

#[test]
fn two_flanneld_nodes_lease_distinct_subnets_and_their_pods_ping_each_other() {
    require_root!();
    let started = Instant::now();
    let rig = cluster::rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let nodes = [rig.node(1), rig.node(2)];
    let mut daemons: Vec<Flanneld> = nodes
        .iter()
        .map(|node| Flanneld::start_etcd(&rig, node, &Etcd::endpoint(), &[]).unwrap())
        .collect();
    let subnets: Vec<String> = daemons
        .iter_mut()
        .map(|daemon| daemon.wait_subnet(SOON).unwrap())
        .collect();
    eprintln!("leased {subnets:?} after {:?}", started.elapsed());
    assert_ne!(subnets[0], subnets[1]);

    for ((node, daemon), subnet) in nodes.iter().zip(&daemons).zip(&subnets) {
        assert!(
            subnet.starts_with("10.244.") && subnet.ends_with(".0/24"),
            "{subnet}"
        );
        // subnet.env in flannel's words: the network, the gateway, the
        // underlay MTU less VXLAN's 50 bytes.
        assert_eq!(
            daemon.subnet_env().unwrap(),
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                subnet.replace(".0/24", ".1")
            )
        );
        // The lease in etcd names the node and its VTEP.
        let lease: serde_json::Value =
            serde_json::from_str(&etcd.get(&lease_key(subnet)).unwrap().unwrap()).unwrap();
        assert_eq!(lease["PublicIP"], node.underlay_ip.to_string(), "{lease}");
        assert_eq!(lease["BackendType"], "vxlan", "{lease}");
        assert_eq!(lease["BackendData"]["VNI"], 1, "{lease}");
        assert_eq!(
            lease["BackendData"]["VtepMAC"],
            node.link_mac("flannel.1").unwrap(),
            "{lease}"
        );
        assert_flannel_vxlan(node);
    }
    assert_eq!(
        etcd.keys(&format!("{}/subnets/", cluster::PREFIX))
            .unwrap()
            .len(),
        2
    );

    let pods = [
        pod(&rig, nodes[0], &daemons[0], "f1"),
        pod(&rig, nodes[1], &daemons[1], "f2"),
    ];
    for (pod, subnet) in pods.iter().zip(&subnets) {
        assert!(in_subnet(pod.ip, subnet), "{} not in {subnet}", pod.ip);
    }
    // flanneld programs its peers as it learns them: wait for the route.
    for (node, other) in nodes.iter().zip(subnets.iter().rev()) {
        pod_net_tests::wait_until("the peer's route on flannel.1", SOON, || {
            node.ip(&["route", "show", other.as_str()])
                .is_ok_and(|routes| routes.contains("dev flannel.1"))
        })
        .unwrap();
    }
    assert_pods_ping_through_vxlan(nodes, [&pods[0], &pods[1]]);

    // Killed and started again, flanneld keeps its lease, and the pods
    // still reach each other.
    let old_pid = daemons[0].pid();
    daemons[0].restart().unwrap();
    assert_ne!(daemons[0].pid(), old_pid);
    assert_eq!(daemons[0].wait_subnet(SOON).unwrap(), subnets[0]);
    assert_pods_ping_through_vxlan(nodes, [&pods[0], &pods[1]]);
    drop(pods);
    for daemon in &mut daemons {
        assert!(daemon.stop().is_some_and(|took| took.as_secs() < 10));
    }
    eprintln!("done after {:?}", started.elapsed());
}

/// kube-flannel's `ClusterRole` and its binding to `flannel` in
/// `kube-flannel`.
const FLANNEL_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: flannel
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [nodes/status]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: flannel
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: flannel
subjects:
- kind: ServiceAccount
  name: flannel
  namespace: kube-flannel
"#;

#[test]
fn flanneld_in_kube_mode_takes_the_node_pod_cidr_and_publishes_its_vtep() {
    require_root!();
    let started = Instant::now();
    let rig = cluster::rig(3);
    let plane = ControlPlane::start(&rig).unwrap();
    let kubeconfig = plane
        .service_account_kubeconfig("kube-flannel", "flannel", FLANNEL_RBAC)
        .unwrap();
    let names = ["node-1", "node-2"];
    let nodes = [rig.node(1), rig.node(2)];
    for name in names {
        plane.register_node(name, &[]).unwrap();
    }
    let cidrs: Vec<String> = names
        .iter()
        .map(|name| plane.wait_pod_cidr(name).unwrap())
        .collect();
    let mut daemons: Vec<Flanneld> = nodes
        .iter()
        .zip(names)
        .map(|(node, name)| Flanneld::start_kube(&rig, node, name, &kubeconfig, &[]).unwrap())
        .collect();
    for (daemon, cidr) in daemons.iter_mut().zip(&cidrs) {
        assert_eq!(&daemon.wait_subnet(SOON).unwrap(), cidr);
    }
    eprintln!("flanneld took {cidrs:?} after {:?}", started.elapsed());
    for (node, name) in nodes.iter().zip(names) {
        assert_flannel_vxlan(node);
        let mac = node.link_mac("flannel.1").unwrap();
        let underlay = node.underlay_ip.to_string();
        pod_net_tests::wait_until("flannel's annotations", SOON, || {
            let annotations = &plane.node(name).unwrap()["metadata"]["annotations"];
            annotations["flannel.alpha.coreos.com/public-ip"] == underlay.as_str()
        })
        .unwrap();
        let annotations = &plane.node(name).unwrap()["metadata"]["annotations"];
        assert_eq!(
            annotations["flannel.alpha.coreos.com/backend-type"],
            "vxlan"
        );
        assert_eq!(
            annotations["flannel.alpha.coreos.com/kube-subnet-manager"],
            "true"
        );
        let backend: serde_json::Value = serde_json::from_str(
            annotations["flannel.alpha.coreos.com/backend-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(backend, serde_json::json!({"VNI": 1, "VtepMAC": mac}));
    }
    let pods = [
        pod(&rig, nodes[0], &daemons[0], "k1"),
        pod(&rig, nodes[1], &daemons[1], "k2"),
    ];
    for (node, other) in nodes.iter().zip(cidrs.iter().rev()) {
        pod_net_tests::wait_until("the peer's route on flannel.1", SOON, || {
            node.ip(&["route", "show", other.as_str()])
                .is_ok_and(|routes| routes.contains("dev flannel.1"))
        })
        .unwrap();
    }
    assert_pods_ping_through_vxlan(nodes, [&pods[0], &pods[1]]);
    let distinct: BTreeSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 2);
    eprintln!("done after {:?}", started.elapsed());
}
