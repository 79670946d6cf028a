//! A cluster joined through the Kubernetes API: `pod-net agent
//! --kube-subnet-mgr` on every node against a real kube-apiserver and
//! kube-controller-manager (node IPAM) in the rig, with the credentials the
//! deploy manifest gives the agent. Subnets are the Nodes' podCIDRs; each
//! node publishes its VXLAN endpoint in flannel's annotations.
use std::{collections::BTreeMap, time::Duration};

use pod_net_tests::{
    Node, Rig,
    cluster::{
        Agent, ClusterPod, SOON, agent_dir, cluster_metric, entry, flood, flood_result, ping,
        pod_via_conflist, remote_nodes, rig, store_status, store_status_of, tunnel_routes,
        wait_modes, wait_programmed,
    },
    deploy,
    kube::ControlPlane,
    kube_cluster::{
        NET_CONF, PREFIX, agent_kubeconfig, flannel_annotations, lease_annotations, node_name,
        register, register_with, start_agent,
    },
    require_root,
    runtimes::{Podman, image_archive},
    wait_for,
};

/// A lease entry of a node that is not in the rig (only its entry is
/// checked): (podCIDR, public IP, VTEP MAC).
fn outside_entry(cidr: &str, public_ip: &str, mac: &str) -> (String, String, String) {
    (cidr.to_owned(), public_ip.to_owned(), mac.to_owned())
}

/// The first `count` nodes of `rig`, registered, each with an agent and a
/// pod made through the agent's conflist.
struct KubeCluster {
    pods: Vec<ClusterPod>,
    agents: Vec<Agent>,
    cidrs: Vec<String>,
    kubeconfig: std::path::PathBuf,
    // Dropped last: the control plane, then the rig.
    plane: ControlPlane,
    rig: Rig,
}

impl KubeCluster {
    fn start(count: usize, net_conf: &str) -> Self {
        let rig = rig(3);
        let plane = ControlPlane::start(&rig).unwrap();
        let kubeconfig = agent_kubeconfig(&plane).unwrap();
        let nodes: Vec<&Node> = rig.nodes()[..count].iter().collect();
        let cidrs = register(&plane, &nodes).unwrap();
        let agents: Vec<Agent> = nodes
            .iter()
            .map(|node| start_agent(&rig, node, &kubeconfig, net_conf, &[]).unwrap())
            .collect();
        for (agent, cidr) in agents.iter().zip(&cidrs) {
            assert_eq!(agent.wait_subnet(SOON).unwrap(), *cidr);
        }
        let pods = nodes
            .iter()
            .zip(&agents)
            .map(|(node, agent)| pod_via_conflist(&rig, node, agent, &format!("k{}", node.index)))
            .collect();
        Self {
            pods,
            agents,
            cidrs,
            kubeconfig,
            plane,
            rig,
        }
    }

    fn node(&self, index: usize) -> &Node {
        &self.rig.nodes()[index]
    }

    /// The entries node `index` must have for the other agents' nodes.
    fn peers_of(&self, index: usize) -> Vec<(String, String, String)> {
        (0..self.agents.len())
            .filter(|other| *other != index)
            .map(|other| entry(self.node(other), &self.cidrs[other]))
            .collect()
    }
}

#[test]
fn three_agents_join_through_the_api_server_and_pods_reach_each_other_over_encap() {
    require_root!();
    let mut cluster = KubeCluster::start(3, NET_CONF);
    // Each node published exactly what flanneld publishes.
    for index in 0..3 {
        let node = cluster.node(index);
        let wanted: BTreeMap<String, String> = [
            (
                "backend-data",
                format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, node.derived_vtep_mac()),
            ),
            ("backend-type", "vxlan".to_owned()),
            ("kube-subnet-manager", "true".to_owned()),
            ("public-ip", node.underlay_ip.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        assert_eq!(
            flannel_annotations(&cluster.plane, &node_name(node)).unwrap(),
            wanted
        );
        wait_programmed(node, &cluster.peers_of(index));
    }
    let encap_before = cluster.node(0).counter("encap").unwrap();
    for from in &cluster.pods {
        for to in &cluster.pods {
            if from.ip != to.ip {
                ping(from, to.ip, 2).unwrap();
            }
        }
    }
    assert!(cluster.node(0).counter("encap").unwrap() - encap_before >= 8);
    let status = store_status(cluster.node(0), &cluster.agents[0]);
    assert!(
        status.contains("kubernetes connected, revision "),
        "{status}"
    );
    assert!(status.contains("2 peer(s)"), "{status}");
    assert!(
        status.contains(&format!("subnet {}", cluster.cidrs[0])),
        "{status}"
    );

    // A Node deleted: its entry and route go from every peer.
    cluster
        .plane
        .kubectl(&["delete", "node", &node_name(cluster.node(2))])
        .unwrap();
    for index in 0..2 {
        wait_programmed(
            cluster.node(index),
            &[entry(cluster.node(1 - index), &cluster.cidrs[1 - index])],
        );
        assert!(
            !tunnel_routes(cluster.node(index)).contains(&cluster.cidrs[2]),
            "{}",
            tunnel_routes(cluster.node(index))
        );
    }
    ping(&cluster.pods[0], cluster.pods[1].ip, 2).unwrap();

    // Node 2 leaves: its agent stopped, `--release-lease` takes its
    // annotations away, and node 1 forgets it (no entry, nothing skipped).
    cluster.agents[1].kill();
    let node_2 = cluster.node(1);
    let conf = agent_dir(&cluster.rig, node_2).join("net-conf.json");
    let output = node_2
        .pod_net_command(&[
            "agent",
            "--kube-subnet-mgr",
            "--kubeconfig",
            cluster.kubeconfig.to_str().unwrap(),
            "--kube-node-name",
            &node_name(node_2),
            "--net-config-path",
            conf.to_str().unwrap(),
            "--iface",
            "eth0",
            "--release-lease",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "released the annotations of node node-2\n"
    );
    assert_eq!(
        flannel_annotations(&cluster.plane, &node_name(node_2)).unwrap(),
        BTreeMap::new()
    );
    wait_programmed(cluster.node(0), &[]);
    assert_eq!(
        cluster_metric(cluster.node(0), "skipped_records").as_deref(),
        Some("0")
    );
    assert_eq!(tunnel_routes(cluster.node(0)), "");
}

#[test]
fn malformed_foreign_and_oversized_annotations_are_skipped_and_counted_and_unmanaged_nodes_ignored()
{
    require_root!();
    let cluster = KubeCluster::start(2, NET_CONF);
    for index in 0..2 {
        wait_programmed(cluster.node(index), &cluster.peers_of(index));
    }
    let with = |changes: &[(&str, String)]| {
        let mut annotations = lease_annotations("192.168.77.5", "02:aa:00:00:00:05");
        for (key, value) in changes {
            let key = format!("{PREFIX}/{key}");
            annotations.retain(|(name, _)| *name != key);
            annotations.push((key, value.clone()));
        }
        annotations
    };
    let plane = &cluster.plane;
    register_with(
        plane,
        "bad-json",
        &with(&[("backend-data", "{\"VNI\":".into())]),
    )
    .unwrap();
    register_with(
        plane,
        "foreign",
        &with(&[("backend-type", "host-gw".into())]),
    )
    .unwrap();
    register_with(
        plane,
        "wrong-vni",
        &with(&[(
            "backend-data",
            r#"{"VNI":2,"VtepMAC":"02:aa:00:00:00:05"}"#.into(),
        )]),
    )
    .unwrap();
    register_with(
        plane,
        "oversized",
        &with(&[("backend-data", "x".repeat(100 * 1024))]),
    )
    .unwrap();
    // Not leases at all: no annotations, and a node not managed.
    register_with(plane, "plain", &[]).unwrap();
    register_with(
        plane,
        "unmanaged",
        &with(&[("kube-subnet-manager", "false".into())]),
    )
    .unwrap();
    for index in 0..2 {
        let node = cluster.node(index);
        let counted = wait_for("four records skipped", SOON, || {
            (cluster_metric(node, "skipped_records").as_deref() == Some("4")).then_some(())
        });
        assert!(counted.is_ok(), "{}", cluster.agents[index].log_text());
        // The good peer stays programmed.
        assert_eq!(remote_nodes(node).unwrap(), cluster.peers_of(index));
    }
    let agent = &cluster.agents[0];
    let log = agent.log_text();
    for line in [
        "skipping nodes/bad-json: not JSON in flannel's schema: \
         flannel.alpha.coreos.com/backend-data: EOF while parsing a value at line 1 column 7",
        "skipping nodes/foreign: backend type \"host-gw\", not vxlan",
        "skipping nodes/wrong-vni: VNI 2 is not the network's 1",
        "skipping nodes/oversized: a value of ",
    ] {
        assert_eq!(
            log.lines().filter(|logged| logged.contains(line)).count(),
            1,
            "{line:?} once in:\n{log}"
        );
    }
    assert_eq!(agent.log_lines("nodes/plain"), 0, "{log}");
    assert_eq!(agent.log_lines("nodes/unmanaged"), 0, "{log}");
    let status = store_status(cluster.node(0), agent);
    assert!(status.contains("4 record(s) skipped"), "{status}");

    // Mended, a node is programmed like any other.
    let cidr = plane.pod_cidr("bad-json").unwrap().unwrap();
    plane
        .kubectl(&[
            "annotate",
            "--overwrite",
            "node",
            "bad-json",
            &format!(r#"{PREFIX}/backend-data={{"VNI":1,"VtepMAC":"02:aa:00:00:00:05"}}"#),
        ])
        .unwrap();
    let mut wanted = cluster.peers_of(0);
    wanted.push(outside_entry(&cidr, "192.168.77.5", "02:aa:00:00:00:05"));
    wait_programmed(cluster.node(0), &wanted);
    assert_eq!(
        cluster_metric(cluster.node(0), "skipped_records").as_deref(),
        Some("3")
    );
}

#[test]
fn a_restarted_agent_and_an_api_server_away_ten_seconds_lose_no_packet() {
    require_root!();
    let mut cluster = KubeCluster::start(2, NET_CONF);
    for index in 0..2 {
        wait_programmed(cluster.node(index), &cluster.peers_of(index));
    }
    ping(&cluster.pods[0], cluster.pods[1].ip, 2).unwrap();
    let name = node_name(cluster.node(0));
    let version =
        |plane: &ControlPlane| plane.node(&name).unwrap()["metadata"]["resourceVersion"].clone();
    let before = version(&cluster.plane);

    // The agent SIGKILLed and started again under a flood: the same
    // subnet, the Node untouched (nothing to publish again), no loss.
    let flooding = flood(&cluster.pods[0], cluster.pods[1].ip, 2000);
    std::thread::sleep(Duration::from_millis(500));
    cluster.agents[0].kill();
    std::fs::remove_file(&cluster.agents[0].subnet_file).unwrap();
    cluster.agents[0].restart().unwrap();
    assert_eq!(
        cluster.agents[0].wait_subnet(SOON).unwrap(),
        cluster.cidrs[0]
    );
    assert_eq!(flood_result(flooding), (2000, 2000));
    assert_eq!(version(&cluster.plane), before);
    wait_programmed(cluster.node(0), &cluster.peers_of(0));

    // The API server killed for ten seconds under a flood: the datapath
    // keeps forwarding, and the agents follow again once it is back.
    let flooding = flood(&cluster.pods[0], cluster.pods[1].ip, 6000);
    std::thread::sleep(Duration::from_millis(500));
    cluster.plane.kill_apiserver();
    std::thread::sleep(Duration::from_secs(10));
    let back = cluster.plane.start_apiserver().unwrap();
    eprintln!("the API server was back in {back:?}");
    assert_eq!(flood_result(flooding), (6000, 6000));
    let cidr = register_with(
        &cluster.plane,
        "late",
        &lease_annotations("192.168.77.9", "02:aa:00:00:00:09"),
    )
    .unwrap();
    for index in 0..2 {
        let mut wanted = cluster.peers_of(index);
        wanted.push(outside_entry(&cidr, "192.168.77.9", "02:aa:00:00:00:09"));
        wait_programmed(cluster.node(index), &wanted);
        assert_eq!(
            cluster_metric(cluster.node(index), "store_connected").as_deref(),
            Some("1")
        );
    }
    let log = cluster.agents[1].log_text();
    assert!(
        log.contains("kubernetes: ") && log.contains("the datapath keeps its entries"),
        "{log}"
    );
}

#[test]
fn direct_routing_reaches_peers_on_the_segment_directly_and_others_over_vxlan() {
    require_root!();
    let cluster = KubeCluster::start(
        2,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    );
    let far = register_with(
        &cluster.plane,
        "far",
        &lease_annotations("192.168.77.7", "02:aa:00:00:00:77"),
    )
    .unwrap();
    let node_1 = cluster.node(0);
    let wanted = BTreeMap::from([
        (far.clone(), "vxlan".to_owned()),
        (cluster.cidrs[1].clone(), "direct".to_owned()),
    ]);
    wait_modes(node_1, &wanted);
    assert_eq!(
        tunnel_routes(node_1),
        format!("{far} via 192.168.77.7 proto 112 onlink \n")
    );
    let direct_before = node_1.counter("direct_out").unwrap();
    let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
    wait_for("the direct peer's pods", SOON, || ping(a, b.ip, 1).ok()).unwrap();
    ping(a, b.ip, 5).unwrap();
    ping(b, a.ip, 5).unwrap();
    assert!(node_1.counter("direct_out").unwrap() - direct_before >= 10);
    assert_eq!(
        node_1.counter("encap").unwrap(),
        0,
        "nothing went over VXLAN"
    );
}

/// The agent's `ClusterRole` without `watch`.
const NO_WATCH: &str = r#"
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: pod-net-limited
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["nodes/status"]
  verbs: ["patch"]
---
kind: ClusterRoleBinding
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: pod-net-limited
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: pod-net-limited
subjects:
- kind: ServiceAccount
  name: agent
  namespace: pod-net-limited
"#;

#[test]
fn an_agent_waits_for_its_node_and_a_forbidden_watch_is_an_error_naming_verb_and_resource_until_granted()
 {
    require_root!();
    let rig = rig(3);
    let plane = ControlPlane::start(&rig).unwrap();
    let kubeconfig = plane
        .service_account_kubeconfig("pod-net-limited", "agent", NO_WATCH)
        .unwrap();
    let node = rig.node(1);
    // Started before its Node exists: it waits, and says so.
    let agent = start_agent(&rig, node, &kubeconfig, NET_CONF, &[]).unwrap();
    let waiting = "node node-1 is not registered yet; waiting for it";
    wait_for("the agent to wait for its Node", SOON, || {
        (agent.log_lines(waiting) == 1).then_some(())
    })
    .unwrap();
    let (status, healthy) = store_status_of(node, &agent);
    assert!(!healthy, "{status}");
    assert!(status.contains(waiting), "{status}");
    let cidr = register(&plane, &[node]).unwrap().remove(0);
    assert_eq!(agent.wait_subnet(SOON).unwrap(), cidr);
    assert_eq!(agent.log_lines(waiting), 1, "said once");
    let refused = wait_for("the refused watch", SOON, || {
        (agent.log_lines("forbidden: cannot watch nodes") > 0).then_some(())
    });
    assert!(refused.is_ok(), "{}", agent.log_text());
    assert_eq!(
        cluster_metric(node, "store_connected").as_deref(),
        Some("0")
    );
    // Backing off, not hammering the API server.
    std::thread::sleep(Duration::from_secs(5));
    let refusals = agent.log_lines("forbidden: cannot watch nodes");
    assert!(
        refusals <= 6,
        "{refusals} refusals in 5 s:\n{}",
        agent.log_text()
    );

    plane
        .apply(&NO_WATCH.replace(r#"["get", "list"]"#, r#"["get", "list", "watch"]"#))
        .unwrap();
    let far = register_with(
        &plane,
        "far",
        &lease_annotations("192.168.77.7", "02:aa:00:00:00:77"),
    )
    .unwrap();
    wait_programmed(
        node,
        &[outside_entry(&far, "192.168.77.7", "02:aa:00:00:00:77")],
    );
    let connected = wait_for("the agent connected", SOON, || {
        (cluster_metric(node, "store_connected").as_deref() == Some("1")).then_some(())
    });
    assert!(connected.is_ok(), "{}", agent.log_text());
}

#[test]
fn bad_kubernetes_flags_get_one_line_and_change_nothing() {
    require_root!();
    let rig = rig(3);
    let node = rig.node(1);
    let dir = rig.scratch_dir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = write("net-conf.json", NET_CONF);
    let host_gw = write(
        "host-gw.json",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    let kubeconfig = write("garbage.kubeconfig", "clusters: [oops");
    let subnet_file = dir.join("subnet.env");
    let base = [
        "agent",
        "--kube-subnet-mgr",
        "--iface",
        "eth0",
        "--subnet-file",
        subnet_file.to_str().unwrap(),
    ];
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["--net-config-path", &good],
            1,
            "pod-net: error: --kube-node-name (or NODE_NAME) is needed: the name of this \
             node's Node"
                .to_owned(),
        ),
        (
            vec![
                "--kube-node-name",
                "node-1",
                "--net-config-path",
                "/nonexistent/net-conf.json",
            ],
            1,
            "pod-net: error: --net-config-path /nonexistent/net-conf.json: no such file".to_owned(),
        ),
        (
            vec!["--kube-node-name", "node-1", "--net-config-path", &host_gw],
            1,
            format!(
                "pod-net: error: --net-config-path {host_gw}: backend type \"host-gw\", not vxlan"
            ),
        ),
        (
            vec![
                "--kube-node-name",
                "node-1",
                "--net-config-path",
                &good,
                "--kubeconfig",
                &kubeconfig,
            ],
            1,
            format!("pod-net: error: --kubeconfig {kubeconfig}: "),
        ),
        (
            vec![
                "--kube-node-name",
                "node-1",
                "--etcd-endpoints",
                "http://192.168.100.254:2379",
            ],
            2,
            "cannot be used with".to_owned(),
        ),
    ];
    for (extra, code, needle) in cases {
        let mut args = base.to_vec();
        args.extend(extra);
        let output = node
            .pod_net_command(&args)
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&needle),
            "{args:?}: {needle:?} not in {stderr:?}"
        );
        if code == 1 {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
        assert!(!subnet_file.exists());
        assert!(!node.pin_dir.exists(), "the datapath was loaded");
    }
    // A kubeconfig without --kube-subnet-mgr. (NODE_NAME alone is fine:
    // the DaemonSet of an etcd cluster may set it too.)
    let output = node
        .pod_net_command(&[
            "agent",
            "--kubeconfig",
            "/tmp/k",
            "--etcd-endpoints",
            "http://192.168.100.254:2379",
            "--iface",
            "eth0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    // etcd's TLS files with --kube-subnet-mgr.
    let output = node
        .pod_net_command(&[
            "agent",
            "--kube-subnet-mgr",
            "--iface",
            "eth0",
            "--etcd-cafile",
            "/tmp/ca",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

/// A process holding `node`'s network namespace, so podman can join it by
/// `/proc/PID/ns/net` (its `/run` is private); killed on drop.
struct NamespaceHolder(std::process::Child);

impl NamespaceHolder {
    fn new(node: &Node) -> Self {
        Self(
            std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", node.netns))
                .args(["sleep", "600"])
                .spawn()
                .unwrap(),
        )
    }

    fn podman_network(&self) -> String {
        format!("ns:/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for NamespaceHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a kubelet mounts at `/var/run/secrets/kubernetes.io/serviceaccount`
/// for the manifest's `ServiceAccount`: a token, the cluster's CA, the
/// namespace.
fn service_account_files(plane: &ControlPlane, dir: &std::path::Path) {
    let token = plane
        .kubectl(&[
            "create",
            "token",
            "pod-net",
            "--namespace",
            "pod-net",
            "--duration=1h",
        ])
        .unwrap();
    std::fs::write(dir.join("token"), token.trim()).unwrap();
    std::fs::copy(plane.ca_file(), dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("namespace"), "pod-net").unwrap();
}

/// The host PID of the process in `node`'s network namespace whose
/// command line is `argv`.
fn container_process(node: &Node, argv: &[String]) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let netns = std::fs::metadata(format!("/run/netns/{}", node.netns))
        .ok()?
        .ino();
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|arg| [arg.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let ns = std::fs::metadata(entry.path().join("ns/net")).ok()?.ino();
            (cmdline == wanted && ns == netns).then_some(pid)
        })
}

/// The image run as the `DaemonSet` runs it, on node 1: the agent
/// container's exact command, args and environment (`NODE_NAME` and the
/// interface from the manifest's sources), its volumes at their mount
/// paths (host sides in the rig's scratch dir; bpffs a directory of the
/// rig's on the host's bpffs), and the in-cluster service-account config
/// a kubelet mounts, with the token of the manifest's `ServiceAccount`.
#[test]
fn the_image_runs_the_daemonsets_agent_as_written_with_its_service_account() {
    require_root!();
    let rig = rig(3);
    let plane = ControlPlane::start(&rig).unwrap();
    agent_kubeconfig(&plane).unwrap(); // The manifest, applied.
    let node = rig.node(1);
    let cidr = register(&plane, &[node]).unwrap().remove(0);
    let far = register_with(
        &plane,
        "far",
        &lease_annotations("192.168.77.7", "02:aa:00:00:00:77"),
    )
    .unwrap();

    let scratch = rig.scratch_dir().unwrap();
    let host = |name: &str| {
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let documents = deploy::documents(&deploy::manifest_path()).unwrap();
    let config = deploy::config_data(&documents).unwrap();
    let (run, cni_conf, net_conf, secrets) =
        (host("run"), host("cni"), host("net-conf"), host("sa"));
    std::fs::write(net_conf.join("net-conf.json"), &config["net-conf.json"]).unwrap();
    service_account_files(&plane, &secrets);
    let bpffs = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-podman", rig.id()));
    std::fs::create_dir_all(&bpffs).unwrap();
    let pin_dir = bpffs.join("pod-net");

    let agent = deploy::agent_container().unwrap();
    let fields = BTreeMap::from([("spec.nodeName".to_owned(), node_name(node))]);
    let env = agent.environment(&fields, &config);
    let argv = agent.argv(&env);
    let podman = Podman::new(&scratch.join("podman"));
    podman.load(&image_archive().unwrap()).unwrap();
    let holder = NamespaceHolder::new(node);
    let volume = |host: &std::path::Path, path: &str| format!("{}:{path}", host.display());
    // In the foreground, as our child: each podman call has private
    // mounts (see `Podman`), so a later `podman exec` or `stop` would not
    // find this container; SIGTERM goes to it through podman's sig-proxy.
    let mut run_agent = podman.command(&["run", "--rm", "--name", "pod-net-agent"]);
    run_agent
        .args(["--privileged", "--network", &holder.podman_network()])
        .args(Podman::RUN_LIMITS)
        .args(["--volume", &volume(&bpffs, "/sys/fs/bpf")])
        .args(["--volume", &volume(&run, "/run/pod-net")])
        .args(["--volume", &volume(&cni_conf, "/etc/cni/net.d")])
        .args([
            "--volume",
            &format!("{}:/etc/kube-flannel:ro", net_conf.display()),
        ])
        .args([
            "--volume",
            &format!(
                "{}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                secrets.display()
            ),
        ])
        // What a kubelet sets for the API server's Service.
        .args(["--env", "KUBERNETES_SERVICE_HOST=192.168.100.254"])
        .args(["--env", "KUBERNETES_SERVICE_PORT=6443"]);
    for (name, value) in &env {
        run_agent.args(["--env", &format!("{name}={value}")]);
    }
    run_agent
        .args(["--entrypoint", &argv[0], "pod-net:dev"])
        .args(&argv[1..]);
    let log_path = scratch.join("podman-agent.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut container = Foreground(
        run_agent
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap(),
    );
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let subnet_env = wait_for("the agent's subnet.env", SOON, || {
        std::fs::read_to_string(run.join("subnet.env")).ok()
    });
    assert!(subnet_env.is_ok(), "{}", logs());
    let gateway = cidr.replace(".0/24", ".1/24");
    assert!(
        subnet_env
            .unwrap()
            .contains(&format!("FLANNEL_SUBNET={gateway}")),
        "{}",
        logs()
    );
    assert!(cni_conf.join("10-pod-net.conflist").exists());
    let published = flannel_annotations(&plane, &node_name(node)).unwrap();
    assert_eq!(published["public-ip"], node.underlay_ip.to_string());
    let pin = pin_dir.to_str().unwrap();
    let node_list = |node: &Node| {
        node.exec(&[
            pod_net_tests::rig::pod_net_binary().to_str().unwrap(),
            "--pin-dir",
            pin,
            "node",
            "list",
        ])
        .unwrap_or_default()
    };
    let programmed = wait_for("the far node programmed", SOON, || {
        node_list(node).contains(&far).then_some(())
    });
    assert!(programmed.is_ok(), "{}\n{}", node_list(node), logs());
    // The readiness probe, exactly as the manifest has it, run in the
    // container's namespaces (as `kubectl exec` would).
    let probe: Vec<&str> = agent.spec["readinessProbe"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    let pid = container_process(node, &argv)
        .expect("the agent's process")
        .to_string();
    let run_probe = || {
        pod_net_tests::cmd::output_of(
            std::process::Command::new("nsenter")
                .args(["--target", &pid, "--mount", "--pid", "--net", "--"])
                .args(&probe),
        )
        .unwrap()
    };
    // Retried, as the kubelet does (periodSeconds): the agent programs
    // what it listed a moment before its watch is up and it says
    // "connected".
    let _ = wait_for("the readiness probe to pass", SOON, || {
        run_probe().status.success().then_some(())
    });
    let ready = run_probe();
    let said = String::from_utf8_lossy(&ready.stdout);
    assert!(ready.status.success(), "{ready:?}\n{}", logs());
    assert!(said.contains("kubernetes connected"), "{said}");

    // The pod goes (SIGTERM); the datapath stays with its entries.
    let pid = i32::try_from(container.0.id()).unwrap();
    // SAFETY: a signal to our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopped = wait_for("the container to stop", SOON, || {
        container.0.try_wait().ok().flatten()
    });
    assert!(stopped.is_ok(), "{}", logs());
    assert!(
        logs().contains("stopping; the datapath keeps forwarding"),
        "{}",
        logs()
    );
    assert!(node_list(node).contains(&far));
    drop(holder);
}

/// A foreground `podman run`, stopped as the test stops it (SIGTERM,
/// which podman's sig-proxy passes to the container) if the test fails
/// first: otherwise the container would outlive the run, and the rig
/// and the podman state it runs from would be cleared beneath it.
struct Foreground(std::process::Child);

impl Drop for Foreground {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: a signal to our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if wait_for("the container to stop", SOON, || {
            self.0.try_wait().ok().flatten()
        })
        .is_err()
        {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The manifest passes the API server's validation and admission (a
/// server-side dry run: nothing stored), applies, and grants the agent's
/// `ServiceAccount` exactly what it uses.
#[test]
fn the_deploy_manifest_passes_a_server_dry_run_and_grants_only_what_the_agent_uses() {
    require_root!();
    let rig = rig(3);
    let plane = ControlPlane::start(&rig).unwrap();
    let manifest = std::fs::read_to_string(deploy::manifest_path()).unwrap();
    // A dry run creates nothing, so the namespaced objects need their
    // namespace first.
    plane.kubectl(&["create", "namespace", "pod-net"]).unwrap();
    let dry = plane
        .kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifest)
        .unwrap();
    assert_eq!(
        dry.lines().collect::<Vec<_>>(),
        [
            "namespace/pod-net configured (server dry run)",
            "serviceaccount/pod-net created (server dry run)",
            "clusterrole.rbac.authorization.k8s.io/pod-net created (server dry run)",
            "clusterrolebinding.rbac.authorization.k8s.io/pod-net created (server dry run)",
            "configmap/pod-net-cfg created (server dry run)",
            "daemonset.apps/pod-net created (server dry run)",
        ]
    );
    assert_eq!(
        plane
            .kubectl(&[
                "get",
                "daemonsets,configmaps,serviceaccounts",
                "-n",
                "pod-net",
                "-o",
                "name"
            ])
            .unwrap()
            .lines()
            .filter(|line| !line.contains("kube-root-ca.crt") && *line != "serviceaccount/default")
            .count(),
        0,
        "a dry run stores nothing"
    );
    plane.apply(&manifest).unwrap();
    let agent = "--as=system:serviceaccount:pod-net:pod-net";
    for (verb, resource, allowed) in [
        ("get", "nodes", "yes"),
        ("list", "nodes", "yes"),
        ("watch", "nodes", "yes"),
        ("patch", "nodes --subresource=status", "yes"),
        ("patch", "nodes", "no"),
        ("update", "nodes", "no"),
        ("delete", "nodes", "no"),
        ("create", "nodes", "no"),
        ("get", "pods", "no"),
        ("get", "secrets", "no"),
    ] {
        // `can-i` exits 1 when the answer is no.
        let mut args = vec!["auth", "can-i", verb, agent];
        args.extend(resource.split(' '));
        let output = plane
            .kubectl_output(&plane.admin_kubeconfig(), &args)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            allowed,
            "{verb} {resource}"
        );
    }
}
