//! pod-net as a real `DaemonSet`: `kubectl apply -f deploy/kubernetes/pod-net.yaml`
//! on a cluster of real kubelets (v1.37.2, with Debian's containerd 1.6
//! and kube-proxy on every rig node, [`pod_net_tests::kubelet`]) and a
//! real control plane (apiserver, controller-manager, scheduler). The
//! agents reach the API the way pods do, through the `kubernetes`
//! Service's `ClusterIP`; test pods get their network from the agents'
//! conflist and reach each other across nodes through the fast path, and
//! keep doing so while `kubectl rollout restart` replaces every agent.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pod_net_tests::{
    Node, Rig,
    cluster::{self, rig},
    cmd::run_command,
    deploy::manifest_path,
    kube::{ControlPlane, Options},
    kubelet::{self, BUSYBOX_IMAGE, KubeletNode, test_images},
    require_root,
    runtimes::image_archive,
    wait_for,
};
use serde_json::Value;

/// Bound for the nodes to register, the `DaemonSet` to roll out and pods
/// to run (each step takes seconds; the machine may be busy).
const ROLLOUT: Duration = Duration::from_mins(3);

/// A cluster of `count` kubelet nodes; dropped nodes first, then the
/// control plane, then the rig.
struct Cluster {
    nodes: Vec<KubeletNode>,
    plane: ControlPlane,
    rig: Rig,
    started: Instant,
}

impl Cluster {
    fn start(count: u8) -> Self {
        let started = Instant::now();
        kubelet::clear_stale().unwrap();
        let rig = rig(3);
        let plane = ControlPlane::start_with(&rig, &Options::for_kubelets()).unwrap();
        let pod_net_image = image_archive().unwrap();
        let (pause, busybox) = test_images(&rig.scratch_dir().unwrap()).unwrap();
        let images = [pod_net_image.as_path(), pause.as_path(), busybox.as_path()];
        let nodes = rig.nodes()[..usize::from(count)]
            .iter()
            .map(|node| KubeletNode::start(&rig, node, &plane, &images).unwrap())
            .collect();
        let cluster = Self {
            nodes,
            plane,
            rig,
            started,
        };
        cluster.say("kubelets started");
        cluster
    }

    fn say(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// The host PID of pod `pod`'s (first) container on `node`.
    fn container_pid(&self, node: &KubeletNode, pod: &str) -> u32 {
        let json = self.json(&["get", "pod", pod]);
        let id = json["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .and_then(|id| id.strip_prefix("containerd://"))
            .unwrap()
            .to_owned();
        let tasks = run_command(&mut node.ctr(&["tasks", "ls"])).unwrap();
        tasks
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next()? == id).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no task {id} in\n{tasks}"))
    }

    fn kubelet_node(&self, name: &str) -> &KubeletNode {
        self.nodes.iter().find(|node| node.name == name).unwrap()
    }

    fn rig_node(&self, node: &KubeletNode) -> &Node {
        self.rig.node(node.index())
    }

    fn kubectl(&self, args: &[&str]) -> String {
        match self.plane.kubectl(args) {
            Ok(text) => text,
            Err(err) => panic!("{err:#}\n{}", self.diagnostics()),
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&args)).unwrap()
    }

    /// Logs of every node and the control plane, for failures.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            text.push_str(&node.log_tails(25));
        }
        for (name, log) in self.plane.logs() {
            let lines: Vec<&str> = log.lines().collect();
            let _ = write!(
                text,
                "--- {name}:\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
        text.push_str(
            &self
                .plane
                .kubectl(&["get", "pods", "-A", "-o", "wide"])
                .unwrap_or_default(),
        );
        let names = self
            .plane
            .kubectl(&["-n", "pod-net", "get", "pods", "-o", "name"])
            .unwrap_or_default();
        for pod in names.lines() {
            for previous in ["--previous=false", "--previous=true"] {
                let log = self
                    .plane
                    .kubectl(&[
                        "-n",
                        "pod-net",
                        "logs",
                        pod,
                        "--all-containers",
                        "--tail=20",
                        previous,
                    ])
                    .unwrap_or_else(|err| format!("{err:#}"));
                let _ = write!(text, "--- {pod} {previous}:\n{log}\n");
            }
        }
        text.push_str(
            &self
                .plane
                .kubectl(&["get", "events", "-A"])
                .unwrap_or_default(),
        );
        text
    }

    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let result = wait_for(what, ROLLOUT, || check().then_some(()));
        if let Err(err) = result {
            panic!("{err:#}\n{}", self.diagnostics());
        }
        self.say(what);
    }

    /// The Nodes' podCIDRs, by name, once every node registered and has one.
    fn wait_pod_cidrs(&self) -> BTreeMap<String, String> {
        let mut cidrs = BTreeMap::new();
        self.wait("every node registered with a podCIDR", || {
            cidrs = self
                .nodes
                .iter()
                .filter_map(|node| {
                    let cidr = self.plane.pod_cidr(&node.name).ok()??;
                    Some((node.name.clone(), cidr))
                })
                .collect();
            cidrs.len() == self.nodes.len()
        });
        cidrs
    }

    /// The `DaemonSet`'s pods by node, once each is Ready.
    fn wait_daemonset(&self) -> BTreeMap<String, String> {
        let mut pods = BTreeMap::new();
        self.wait("a ready pod-net pod on every node", || {
            let list = self.json(&["-n", "pod-net", "get", "pods", "-l", "k8s-app=pod-net"]);
            pods = ready_pods(&list);
            pods.len() == self.nodes.len()
        });
        pods
    }

    /// Creates a busybox pod on each node, and a second one on the first
    /// node; (node name, pod name, pod IP) once they run, by node.
    fn start_test_pods(&self) -> Vec<(String, String, Ipv4Addr)> {
        let first = &self.nodes[0].name;
        let wanted: Vec<(String, &str)> = self
            .nodes
            .iter()
            .map(|node| (format!("pinger-{}", node.name), node.name.as_str()))
            .chain([(format!("pinger-{first}-b"), first.as_str())])
            .collect();
        for (name, node) in &wanted {
            let pod = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "pinger"}},
                "spec": {
                    "nodeName": node,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "busybox",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                    }],
                },
            });
            self.plane.apply(&pod.to_string()).unwrap();
        }
        let mut pods = Vec::new();
        self.wait("the test pods running", || {
            let list = self.json(&["get", "pods", "-l", "app=pinger"]);
            pods = ready(&list)
                .filter_map(|pod| {
                    Some((
                        pod["spec"]["nodeName"].as_str()?.to_owned(),
                        pod["metadata"]["name"].as_str()?.to_owned(),
                        pod["status"]["podIP"].as_str()?.parse().ok()?,
                    ))
                })
                .collect();
            pods.len() == wanted.len()
        });
        pods.sort();
        pods
    }
}

/// The ready pods of a pod list.
fn ready(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| is_ready(pod))
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition["type"] == "Ready" && condition["status"] == "True")
        })
}

/// Ready pods of a pod list, by node: (node name, pod name).
fn ready_pods(list: &Value) -> BTreeMap<String, String> {
    ready(list)
        .filter_map(|pod| {
            Some((
                pod["spec"]["nodeName"].as_str()?.to_owned(),
                pod["metadata"]["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Pings sent from each test pod to each other pod (0.2 s apart).
const PINGS: u64 = 3;

#[test]
fn the_daemonset_runs_pod_net_on_every_kubelet_and_pods_reach_each_other_over_the_fast_path() {
    require_root!();
    let cluster = Cluster::start(3);
    let cidrs = cluster.wait_pod_cidrs();
    let manifest = manifest_path();
    cluster.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    cluster.say("applied the manifest");
    let agents = cluster.wait_daemonset();
    assert_eq!(
        agents.keys().collect::<Vec<_>>(),
        cidrs.keys().collect::<Vec<_>>(),
        "one agent per node"
    );

    check_agents(&cluster, &cidrs);
    let pods = cluster.start_test_pods();
    check_test_pods(&cluster, &cidrs, &pods);
    ping_across_nodes(&cluster, &pods);
    ping_on_one_node(&cluster, &pods);
    rolling_update_under_pings(&cluster, &agents, &pods);
    // Nothing restarted meanwhile: the kubelets' liveness probes (the
    // agent's /metrics) passed and no agent exited.
    let list = cluster.json(&["-n", "pod-net", "get", "pods", "-l", "k8s-app=pod-net"]);
    for pod in list["items"].as_array().unwrap() {
        for container in pod["status"]["containerStatuses"].as_array().unwrap() {
            assert_eq!(
                container["restartCount"], 0,
                "{}: {container}",
                pod["metadata"]["name"]
            );
        }
    }
}

/// Each agent pinned its datapath on its node's bpffs (through the
/// Bidirectional volume) and programmed every other node's podCIDR.
fn check_agents(cluster: &Cluster, cidrs: &BTreeMap<String, String>) {
    for node in &cluster.nodes {
        let datapath = node.datapath(cluster.rig_node(node));
        // The readiness probe ran `pod-net status` in the agent's container;
        // the same from the node, with the agent's cluster-status.json.
        let status_file = node.run_pod_net().join("cluster-status.json");
        let status = datapath
            .pod_net_output(&["status", "--cluster-status", status_file.to_str().unwrap()])
            .unwrap();
        assert!(
            status.status.success(),
            "{}: {}{}",
            node.name,
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        let expected: BTreeMap<String, String> = cidrs
            .iter()
            .filter(|(name, _)| **name != node.name)
            .map(|(_, cidr)| (cidr.clone(), "vxlan".to_owned()))
            .collect();
        cluster.wait(&format!("{} programs the other nodes", node.name), || {
            datapath.remote_modes().ok() == Some(expected.clone())
        });
        let subnet = std::fs::read_to_string(node.run_pod_net().join("subnet.env")).unwrap();
        assert!(
            subnet.contains(&format!("FLANNEL_SUBNET={}", gateway(&cidrs[&node.name]))),
            "{}: {subnet}",
            node.name
        );
    }
}

/// The runtime ran the agent's conflist (bridge, host-local, then
/// pod-net-cni, which the init container installed), so each test pod's
/// address is from its node's podCIDR and is in its node's datapath.
fn check_test_pods(
    cluster: &Cluster,
    cidrs: &BTreeMap<String, String>,
    pods: &[(String, String, Ipv4Addr)],
) {
    for (node_name, pod, ip) in pods {
        let cidr = &cidrs[node_name];
        assert!(contains(cidr, *ip), "{pod} has {ip}, not in {cidr}");
    }
    for node in &cluster.nodes {
        let datapath = node.datapath(cluster.rig_node(node));
        let mut expected: Vec<Ipv4Addr> = pods
            .iter()
            .filter(|(name, _, _)| *name == node.name)
            .map(|(_, _, ip)| *ip)
            .collect();
        expected.sort();
        let mut listed: Vec<Ipv4Addr> = datapath
            .pod_ips()
            .unwrap()
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, expected, "{}'s datapath", node.name);
    }
    cluster.say("pods registered in their nodes' datapaths");
}

/// Every pod pings every pod on the other nodes: each ping and its reply
/// are encapsulated by the sender's node and decapsulated by the
/// receiver's, in BPF (the counters say so; the third node sees none).
fn ping_across_nodes(cluster: &Cluster, pods: &[(String, String, Ipv4Addr)]) {
    let datapaths: Vec<Node> = cluster
        .nodes
        .iter()
        .map(|node| node.datapath(cluster.rig_node(node)))
        .collect();
    for (from_node, from, _) in pods {
        for (to_node, to, to_ip) in pods {
            if from_node == to_node {
                continue;
            }
            let before: Vec<_> = datapaths.iter().map(|d| d.counters().unwrap()).collect();
            ping_pod(cluster, from, to, *to_ip);
            for (node, datapath) in cluster.nodes.iter().zip(&datapaths) {
                let moved = datapath
                    .moved_since(&before[usize::from(node.index()) - 1])
                    .unwrap();
                let encap = moved.get("encap").copied().unwrap_or(0);
                let decap = moved.get("decap").copied().unwrap_or(0);
                if node.name == *from_node || node.name == *to_node {
                    // Requests one way, replies the other.
                    assert!(
                        encap >= PINGS && decap >= PINGS,
                        "{from} -> {to}: {} counted {moved:?}",
                        node.name
                    );
                } else {
                    assert_eq!((encap, decap), (0, 0), "{}: {moved:?}", node.name);
                }
            }
        }
    }
    cluster.say("every pod reached every other node's pod through the fast path");
    for (node, datapath) in cluster.nodes.iter().zip(&datapaths) {
        eprintln!("{}: {:?}", node.name, datapath.counters().unwrap());
    }
}

/// Pod `from` pings pod `to` at `to_ip` ([`PINGS`] requests, 0.2 s apart)
/// through `kubectl exec`, and every one is answered.
fn ping_pod(cluster: &Cluster, from: &str, to: &str, to_ip: Ipv4Addr) {
    let out = cluster.kubectl(&[
        "exec",
        from,
        "--",
        "ping",
        "-c",
        &PINGS.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        &to_ip.to_string(),
    ]);
    assert!(
        out.contains(&format!("{PINGS} packets received")),
        "{from} -> {to}: {out}"
    );
}

/// The two pods on the first node ping each other: each ping and reply is
/// redirected from one pod's veth into the other's in BPF, and nothing is
/// encapsulated anywhere.
fn ping_on_one_node(cluster: &Cluster, pods: &[(String, String, Ipv4Addr)]) {
    let node = &cluster.nodes[0];
    let on_node: Vec<_> = pods
        .iter()
        .filter(|(name, _, _)| *name == node.name)
        .collect();
    let [(_, from, _), (_, to, to_ip)] = on_node[..] else {
        panic!("{} runs {on_node:?}", node.name);
    };
    let datapaths: Vec<Node> = cluster
        .nodes
        .iter()
        .map(|node| node.datapath(cluster.rig_node(node)))
        .collect();
    let before: Vec<_> = datapaths.iter().map(|d| d.counters().unwrap()).collect();
    ping_pod(cluster, from, to, *to_ip);
    for (index, datapath) in datapaths.iter().enumerate() {
        let moved = datapath.moved_since(&before[index]).unwrap();
        let count = |reason: &str| moved.get(reason).copied().unwrap_or(0);
        assert_eq!((count("encap"), count("decap")), (0, 0), "{moved:?}");
        if index == 0 {
            assert!(
                count("redirect_local") >= 2 * PINGS,
                "{from} -> {to}: {moved:?}"
            );
        }
    }
    cluster.say("the pods of one node reached each other through the fast path");
}

/// `kubectl rollout restart`: the kubelets replace the agents one node at
/// a time (maxUnavailable 1) while a pod on node-1 pings a pod on node-2
/// every 50 ms. The datapath is pinned and needs no agent, so nothing is
/// lost, and the fast path carries the pings throughout.
fn rolling_update_under_pings(
    cluster: &Cluster,
    old_agents: &BTreeMap<String, String>,
    pods: &[(String, String, Ipv4Addr)],
) {
    let (from_node, from, _) = &pods[0];
    let (_, to, to_ip) = pods.iter().find(|(node, _, _)| node != from_node).unwrap();
    let sender = cluster.kubelet_node(from_node);
    let datapath = sender.datapath(cluster.rig_node(sender));
    let before = datapath.counters().unwrap();
    let pid = cluster.container_pid(sender, from);
    // In the pod's network namespace, from the host: SIGINT ends it with
    // its summary once the rollout is done.
    let ping = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["--", "ping", "-n", "-q", "-i", "0.05", "-W", "1"])
        .arg(to_ip.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cluster.kubectl(&["-n", "pod-net", "rollout", "restart", "daemonset/pod-net"]);
    cluster.say("rollout restart");
    let mut agents = BTreeMap::new();
    cluster.wait("every agent replaced and ready", || {
        let list = cluster.json(&["-n", "pod-net", "get", "pods", "-l", "k8s-app=pod-net"]);
        let all = list["items"].as_array().map_or(0, Vec::len);
        agents = ready_pods(&list);
        all == cluster.nodes.len()
            && agents.len() == cluster.nodes.len()
            && agents
                .values()
                .all(|pod| !old_agents.values().any(|old| old == pod))
    });
    // A last agent's first sync, then the summary.
    std::thread::sleep(Duration::from_secs(1));
    let ping_pid = i32::try_from(ping.id()).unwrap();
    // SAFETY: kill(2) of our own child, not yet reaped (nsenter execs ping).
    unsafe { libc::kill(ping_pid, libc::SIGINT) };
    let output = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let (sent, received) =
        cluster::ping_counts(&text).unwrap_or_else(|| panic!("no summary in {text}"));
    assert!(sent > 100, "{from} -> {to}: {text}");
    // SIGINT does not wait for the reply to the last ping, if it is in
    // flight; every other one is answered.
    assert!(
        received + 1 >= sent,
        "{from} -> {to} during the rollout: {text}"
    );
    let moved = datapath.moved_since(&before).unwrap();
    assert!(
        moved.get("encap").copied().unwrap_or(0) >= sent
            && moved.get("decap").copied().unwrap_or(0) >= received,
        "{from_node} counted {moved:?} for {sent} pings"
    );
    cluster.say(&format!(
        "rolled out under {sent} pings from {from} to {to}, {received} answered, all in BPF"
    ));
}

/// An IPv4 CIDR's network and prefix length.
fn parse_cidr(cidr: &str) -> (u32, u32) {
    let (net, len) = cidr.split_once('/').unwrap();
    (
        u32::from(net.parse::<Ipv4Addr>().unwrap()),
        len.parse().unwrap(),
    )
}

fn contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let (net, len) = parse_cidr(cidr);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == net
}

/// The first address of `cidr` (`10.244.1.0/24` gives `10.244.1.1/24`).
fn gateway(cidr: &str) -> String {
    let (net, len) = parse_cidr(cidr);
    format!("{}/{len}", Ipv4Addr::from(net + 1))
}
