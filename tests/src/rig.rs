//! The veth-namespace rig: N nodes x M pods on one kernel, wired the way the
//! bridge CNI plugin wires a Kubernetes node.
//!
//! ```text
//!  node n (netns <id>-n<n>)                     pod p (netns <id>-n<n>-p<p>)
//!   cni0  bridge, 10.244.n.1/24  ── veth-p<p> ══ eth0 10.244.n.(p+1)/24, default via .1
//!   eth0  underlay 192.168.100.n/24 ══ peer node (2 nodes) or the switch bridge (3+)
//! ```
//!
//! Every name carries the rig id `pnr-<pid>-<seq>`, so rigs in parallel tests
//! never meet, and a rig whose process died is recognised and cleared by the
//! next one. Nothing is sent anywhere but between these namespaces: pods
//! have no route out of the rig, and the node namespaces have no link to the
//! host's.
use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output_of, run, run_command};

/// Prefix of every rig's names.
const PREFIX: &str = "pnr-";
/// Id of the long-lived rig that `cargo xtask rig up` makes.
pub const MANUAL_ID: &str = "pnr-manual";
const BPFFS: &str = "/sys/fs/bpf";

static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// The shape of a rig.
#[derive(Clone, Debug)]
pub struct RigSpec {
    pub nodes: u8,
    pub pods_per_node: u8,
    /// MTU of the pods' veths; the kernel default (1500) when `None`.
    pub pod_mtu: Option<u32>,
    /// MTU of the underlay links; the kernel default (1500) when `None`.
    pub underlay_mtu: Option<u32>,
    /// Dual stack: IPv6 on, and pods at `fd00:10:244:<node>::<index + 1>/64`
    /// beside their IPv4 address, gateway `fd00:10:244:<node>::1` on cni0.
    /// Off by default: link-local chatter (DAD, router solicitations, MLD)
    /// would make packet counts inexact.
    pub ipv6: bool,
}

impl Default for RigSpec {
    fn default() -> Self {
        Self {
            nodes: 1,
            pods_per_node: 2,
            pod_mtu: None,
            underlay_mtu: None,
            ipv6: false,
        }
    }
}

pub struct Rig {
    id: String,
    nodes: Vec<Node>,
    /// The switch namespace joining 3+ nodes.
    switch: Option<String>,
    keep: bool,
    /// Dual stack: sandboxes get IPv6 too.
    ipv6: bool,
}

pub struct Node {
    /// 1-based.
    pub index: u8,
    pub netns: String,
    pub pin_dir: PathBuf,
    /// 192.168.100.<index>
    pub underlay_ip: Ipv4Addr,
    /// 10.244.<index>.1
    pub gateway_ip: Ipv4Addr,
    /// `fd00:10:244:<index>::1`, in a dual-stack rig.
    pub gateway_ip6: Option<Ipv6Addr>,
    pub pods: Vec<Pod>,
}

#[derive(Clone, Debug)]
pub struct Pod {
    pub node: u8,
    /// 1-based.
    pub index: u8,
    pub netns: String,
    /// 10.244.<node>.<index + 1>
    pub ip: Ipv4Addr,
    /// `fd00:10:244:<node>::<index + 1>`, in a dual-stack rig.
    pub ip6: Option<Ipv6Addr>,
    /// The pod end's MAC, `02:00:0a:f4:<node>:<index + 1>`.
    pub mac: String,
    /// The host-side veth in the node namespace.
    pub host_veth: String,
}

impl Rig {
    /// Builds a rig with a fresh id, after clearing what crashed rigs left.
    pub fn build(spec: &RigSpec) -> Result<Self> {
        clear_stale()?;
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self::build_with_id(id, spec, false)
    }

    /// Builds the long-lived rig of `cargo xtask rig up`, replacing an older
    /// one. It survives this process; `remove_manual` takes it down.
    pub fn build_manual(spec: &RigSpec) -> Result<Self> {
        clear_stale()?;
        remove_rig(MANUAL_ID)?;
        Self::build_with_id(MANUAL_ID.to_owned(), spec, true)
    }

    /// Takes down the rig of `cargo xtask rig up`.
    pub fn remove_manual() -> Result<()> {
        remove_rig(MANUAL_ID)
    }

    fn build_with_id(id: String, spec: &RigSpec, keep: bool) -> Result<Self> {
        if spec.nodes == 0 || spec.nodes > 200 || spec.pods_per_node > 200 {
            bail!("a rig has 1..=200 nodes of 0..=200 pods");
        }
        let mut rig = Self {
            id,
            nodes: Vec::new(),
            switch: None,
            keep,
            ipv6: spec.ipv6,
        };
        // Tear down what was built so far if any step fails.
        rig.create(spec)?;
        Ok(rig)
    }

    fn create(&mut self, spec: &RigSpec) -> Result<()> {
        for index in 1..=spec.nodes {
            let node = Node::create(&self.id, index, spec)?;
            self.nodes.push(node);
        }
        self.create_underlay(spec)?;
        Ok(())
    }

    fn create_underlay(&mut self, spec: &RigSpec) -> Result<()> {
        let mtu = spec.underlay_mtu.map(|mtu| mtu.to_string());
        match self.nodes.as_slice() {
            [] | [_] => return Ok(()),
            [a, b] => {
                run(
                    "ip",
                    [
                        "-n", &a.netns, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "eth0", "netns", &b.netns,
                    ],
                )?;
            }
            nodes => {
                let switch = format!("{}-sw", self.id);
                add_netns(&switch, spec)?;
                self.switch = Some(switch.clone());
                run(
                    "ip",
                    ["-n", &switch, "link", "add", "br0", "type", "bridge"],
                )?;
                run("ip", ["-n", &switch, "link", "set", "br0", "up"])?;
                for node in nodes {
                    let port = format!("n{}", node.index);
                    run(
                        "ip",
                        [
                            "-n",
                            &switch,
                            "link",
                            "add",
                            &port,
                            "type",
                            "veth",
                            "peer",
                            "name",
                            "eth0",
                            "netns",
                            &node.netns,
                        ],
                    )?;
                    if let Some(mtu) = &mtu {
                        run("ip", ["-n", &switch, "link", "set", &port, "mtu", mtu])?;
                    }
                    run(
                        "ip",
                        ["-n", &switch, "link", "set", &port, "master", "br0", "up"],
                    )?;
                }
            }
        }
        for node in &self.nodes {
            if let Some(mtu) = &mtu {
                run("ip", ["-n", &node.netns, "link", "set", "eth0", "mtu", mtu])?;
            }
            let address = format!("{}/24", node.underlay_ip);
            run(
                "ip",
                ["-n", &node.netns, "addr", "add", &address, "dev", "eth0"],
            )?;
            run("ip", ["-n", &node.netns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The switch namespace joining a rig of 3+ nodes (no address of its
    /// own until a test gives it one, as the etcd helper does).
    #[must_use]
    pub fn switch(&self) -> Option<&str> {
        self.switch.as_deref()
    }

    /// Lets the switch carry GSO packets up to `size` whole, as a network of
    /// BIG TCP-capable NICs would: a veth port keeps the kernel's 64 KiB and
    /// would segment bigger ones in software, which no real switch does.
    pub fn switch_passes_gso_up_to(&self, size: u32) -> Result<()> {
        let Some(switch) = &self.switch else {
            return Ok(());
        };
        let probe = sibling_binary("pod-net-probe");
        let size = size.to_string();
        for node in &self.nodes {
            let port = format!("n{}", node.index);
            run(
                "nsenter",
                [
                    &format!("--net=/run/netns/{switch}"),
                    "--",
                    probe.to_str().unwrap_or("pod-net-probe"),
                    "gso-max",
                    port.as_str(),
                    size.as_str(),
                ],
            )?;
        }
        Ok(())
    }

    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index` (1-based).
    ///
    /// # Panics
    /// If the rig has no such node.
    #[must_use]
    pub fn node(&self, index: u8) -> &Node {
        &self.nodes[usize::from(index) - 1]
    }

    /// Pod `pod` on node `node` (both 1-based).
    ///
    /// # Panics
    /// If the rig has no such pod.
    #[must_use]
    pub fn pod(&self, node: u8, pod: u8) -> &Pod {
        &self.node(node).pods[usize::from(pod) - 1]
    }

    /// Every pod of every node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|node| node.pods.iter())
    }

    /// Loads pod-net with the underlay on every node, registers every pod,
    /// and tells every node where every other node's pods are.
    pub fn pod_net_mesh(&self) -> Result<()> {
        for node in &self.nodes {
            node.load_cross_node()?;
        }
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|peer| peer.index != node.index) {
                node.add_peer(peer, None)?;
            }
        }
        Ok(())
    }

    /// An empty network namespace named `<rig id>-<name>` (lo up), the way
    /// a container runtime makes a sandbox before calling CNI. Returns its
    /// path. Torn down with the rig.
    pub fn sandbox(&self, name: &str) -> Result<String> {
        let netns = format!("{}-{name}", self.id);
        let spec = RigSpec {
            ipv6: self.ipv6,
            ..RigSpec::default()
        };
        add_netns(&netns, &spec)?;
        run("ip", ["-n", netns.as_str(), "link", "set", "lo", "up"])?;
        Ok(format!("/run/netns/{netns}"))
    }

    /// A scratch directory for this rig (IPAM state, captures), removed
    /// with the rig.
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(&self.id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Two namespaces joined by a bare veth pair, 10.99.0.1 and .2: the
    /// physical limit a pod path is measured against. Torn down with the rig.
    pub fn direct_pair(&self) -> Result<(Pod, Pod)> {
        let spec = RigSpec::default();
        let ends: Vec<Pod> = (1..=2u8)
            .map(|index| Pod {
                node: 0,
                index,
                netns: format!("{}-d{index}", self.id),
                ip: Ipv4Addr::new(10, 99, 0, index),
                ip6: None,
                mac: format!("02:00:0a:63:00:{index:02x}"),
                host_veth: String::new(),
            })
            .collect();
        for end in &ends {
            add_netns(&end.netns, &spec)?;
        }
        let (a, b) = (&ends[0], &ends[1]);
        a.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.netns,
        ])?;
        for end in &ends {
            end.ip(&["link", "set", "lo", "up"])?;
            end.ip(&["link", "set", "eth0", "address", &end.mac])?;
            end.ip(&["addr", "add", &format!("{}/24", end.ip), "dev", "eth0"])?;
            end.ip(&["link", "set", "eth0", "up"])?;
        }
        Ok((ends[0].clone(), ends[1].clone()))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !self.keep
            && let Err(err) = remove_rig(&self.id)
        {
            eprintln!("rig {}: teardown failed: {err:#}", self.id);
        }
    }
}

impl Node {
    fn create(rig_id: &str, index: u8, spec: &RigSpec) -> Result<Self> {
        let netns = format!("{rig_id}-n{index}");
        let node = Self {
            index,
            pin_dir: Path::new(BPFFS).join(&netns),
            underlay_ip: Ipv4Addr::new(192, 168, 100, index),
            gateway_ip: Ipv4Addr::new(10, 244, index, 1),
            gateway_ip6: spec.ipv6.then(|| pod_ip6(index, 1)),
            pods: Vec::new(),
            netns,
        };
        add_netns(&node.netns, spec)?;
        node.ip(&["link", "set", "lo", "up"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // Like the bridge CNI plugin's cni0, minus multicast snooping: its
        // IGMP reports would land in the pods and spoil exact packet counts.
        node.ip(&[
            "link",
            "add",
            "cni0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        // A fixed MAC, as on a real node: otherwise the bridge takes its
        // lowest port's, and it moves as pods come and go.
        let bridge_mac = format!("02:bb:00:00:00:{index:02x}");
        node.ip(&["link", "set", "cni0", "address", &bridge_mac])?;
        let gateway = format!("{}/24", node.gateway_ip);
        node.ip(&["addr", "add", &gateway, "dev", "cni0"])?;
        if let Some(gateway) = node.gateway_ip6 {
            node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            let gateway = format!("{gateway}/64");
            node.ip(&["addr", "add", &gateway, "dev", "cni0", "nodad"])?;
        }
        node.ip(&["link", "set", "cni0", "up"])?;
        let mut node = node;
        for pod_index in 1..=spec.pods_per_node {
            let pod = node.create_pod(pod_index, spec)?;
            node.pods.push(pod);
        }
        Ok(node)
    }

    fn create_pod(&self, index: u8, spec: &RigSpec) -> Result<Pod> {
        let host_octet = index
            .checked_add(1)
            .context("pod index does not fit an address")?;
        let pod = Pod {
            node: self.index,
            index,
            netns: format!("{}-p{index}", self.netns),
            ip: Ipv4Addr::new(10, 244, self.index, host_octet),
            ip6: spec.ipv6.then(|| pod_ip6(self.index, host_octet)),
            mac: format!("02:00:0a:f4:{:02x}:{host_octet:02x}", self.index),
            host_veth: format!("veth-p{index}"),
        };
        add_netns(&pod.netns, spec)?;
        self.plug(&pod, spec.pod_mtu, None)?;
        Ok(pod)
    }

    /// Gives `pod` a new veth pair, deleting the old one, with the host end
    /// at `ifindex` when given: a sandbox whose interface was recreated, on
    /// purpose at an index the kernel has handed out before.
    pub fn replug(&self, pod: &Pod, ifindex: Option<u32>) -> Result<()> {
        if self.ip(&["link", "show", &pod.host_veth]).is_ok() {
            self.ip(&["link", "del", &pod.host_veth])?;
        }
        self.plug(pod, None, ifindex)
    }

    fn plug(&self, pod: &Pod, mtu: Option<u32>, ifindex: Option<u32>) -> Result<()> {
        let index = ifindex.map(|index| index.to_string());
        let mut add = vec!["link", "add", pod.host_veth.as_str()];
        if let Some(index) = &index {
            add.extend(["index", index.as_str()]);
        }
        add.extend(["type", "veth", "peer", "name", "eth0", "netns", &pod.netns]);
        self.ip(&add)?;
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            self.ip(&["link", "set", &pod.host_veth, "mtu", &mtu])?;
            pod.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        }
        self.ip(&["link", "set", &pod.host_veth, "master", "cni0", "up"])?;
        pod.ip(&["link", "set", "lo", "up"])?;
        pod.ip(&["link", "set", "eth0", "address", &pod.mac])?;
        let address = format!("{}/24", pod.ip);
        pod.ip(&["addr", "add", &address, "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        let gateway = self.gateway_ip.to_string();
        pod.ip(&["route", "add", "default", "via", &gateway])?;
        if let (Some(ip6), Some(gateway)) = (pod.ip6, self.gateway_ip6) {
            let address = format!("{ip6}/64");
            pod.ip(&["-6", "addr", "add", &address, "dev", "eth0", "nodad"])?;
            let gateway = gateway.to_string();
            pod.ip(&["-6", "route", "add", "default", "via", &gateway])?;
        }
        Ok(())
    }

    /// `ip -n <node> args..`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run("ip", ["-n", self.netns.as_str()].iter().chain(args))
    }

    /// Sets a sysctl inside the node namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs a command in the node namespace, failing unless it exits 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.command(args))
    }

    /// A command that will run in the node namespace. `nsenter` rather than
    /// `ip netns exec`, which would remount /sys and hide bpffs.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .args(args);
        command
    }

    /// `pod-net --pin-dir <this node's> args..` in the node namespace; fails
    /// unless it exits 0.
    pub fn pod_net(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.pod_net_command(args))
    }

    /// The `pod-net` command for this node, to inspect its exit status.
    #[must_use]
    pub fn pod_net_command(&self, args: &[&str]) -> Command {
        let binary = pod_net_binary();
        let pin_dir = self.pin_dir.to_string_lossy().into_owned();
        let mut full: Vec<&str> = vec![binary.to_str().unwrap_or("pod-net"), "--pin-dir", &pin_dir];
        full.extend_from_slice(args);
        self.command(&full)
    }

    /// Loads pod-net on this node and registers every pod.
    pub fn load_and_register(&self) -> Result<()> {
        self.pod_net(&["load"])?;
        for pod in &self.pods {
            self.register(pod)?;
        }
        Ok(())
    }

    /// Loads pod-net with this node's underlay (`eth0`, 192.168.100.N) and
    /// registers every pod.
    pub fn load_cross_node(&self) -> Result<()> {
        let node_ip = self.underlay_ip.to_string();
        self.pod_net(&["load", "--underlay", "eth0", "--node-ip", &node_ip])?;
        for pod in &self.pods {
            self.register(pod)?;
        }
        Ok(())
    }

    /// This node's pod CIDR, 10.244.N.0/24.
    #[must_use]
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// `fd00:10:244:<index>::/64`, in a dual-stack rig.
    #[must_use]
    pub fn pod_cidr6(&self) -> Option<String> {
        self.gateway_ip6
            .map(|_| format!("{}/64", pod_ip6(self.index, 0)))
    }

    /// The VTEP MAC pod-net derives for this node (`0e:6e:` + its IP).
    #[must_use]
    pub fn derived_vtep_mac(&self) -> String {
        let [a, b, c, d] = self.underlay_ip.octets();
        format!("0e:6e:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }

    /// `pod-net node add` for `peer`'s pod CIDR, with `vtep_mac` when the
    /// peer checks inner MACs (a flannel node).
    pub fn add_peer(&self, peer: &Node, vtep_mac: Option<&str>) -> Result<String> {
        let node_ip = peer.underlay_ip.to_string();
        let mut output = String::new();
        for cidr in std::iter::once(peer.pod_cidr()).chain(peer.pod_cidr6()) {
            let mut args = vec!["node", "add", "--cidr", &cidr, "--node-ip", &node_ip];
            if let Some(mac) = vtep_mac {
                args.extend(["--vtep-mac", mac]);
            }
            output.push_str(&self.pod_net(&args)?);
        }
        Ok(output)
    }

    /// `pod-net node add --direct` for `peer`'s pod CIDRs (the IPv6 one too
    /// in a dual-stack rig): sent to it unencapsulated over the underlay.
    pub fn add_direct_peer(&self, peer: &Node) -> Result<String> {
        let node_ip = peer.underlay_ip.to_string();
        let mut output = String::new();
        for cidr in std::iter::once(peer.pod_cidr()).chain(peer.pod_cidr6()) {
            output.push_str(&self.pod_net(&[
                "node",
                "add",
                "--cidr",
                &cidr,
                "--node-ip",
                &node_ip,
                "--direct",
            ])?);
        }
        Ok(output)
    }

    /// `pod-net pod add` for one pod.
    /// `pod-net pod add` of `pod`'s IPv4 address on its host veth, to run
    /// where a test looks at the exit code and stderr itself.
    #[must_use]
    pub fn pod_add_command(&self, pod: &Pod) -> Command {
        let ip = pod.ip.to_string();
        self.pod_net_command(&["pod", "add", "--ip", &ip, "--veth", &pod.host_veth])
    }

    pub fn register(&self, pod: &Pod) -> Result<String> {
        let mut output = String::new();
        for ip in std::iter::once(IpAddr::from(pod.ip)).chain(pod.ip6.map(IpAddr::from)) {
            let ip = ip.to_string();
            output.push_str(&self.pod_net(&[
                "pod",
                "add",
                "--ip",
                &ip,
                "--veth",
                &pod.host_veth,
            ])?);
        }
        Ok(output)
    }

    /// Packet counts per reason, from `pod-net stats --json`.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .counted_all()?
            .into_iter()
            .map(|(name, (packets, _))| (name, packets))
            .collect())
    }

    /// Packets counted under `reason`.
    pub fn counter(&self, reason: &str) -> Result<u64> {
        self.counted(reason).map(|(packets, _)| packets)
    }

    /// Packets and bytes counted under `reason`.
    pub fn counted(&self, reason: &str) -> Result<(u64, u64)> {
        self.counted_all()?
            .remove(reason)
            .with_context(|| format!("no counter {reason}"))
    }

    /// Packets counted under `reason` since the `before` snapshot of
    /// [`Node::counters`].
    pub fn counted_since(&self, before: &BTreeMap<String, u64>, reason: &str) -> Result<u64> {
        Ok(self.counter(reason)? - before.get(reason).copied().unwrap_or(0))
    }

    /// Every reason that moved since the `before` snapshot, with how far.
    pub fn moved_since(&self, before: &BTreeMap<String, u64>) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .counters()?
            .into_iter()
            .filter_map(|(name, count)| {
                let delta = count - before.get(&name).copied().unwrap_or(0);
                (delta != 0).then_some((name, delta))
            })
            .collect())
    }

    /// Packets and bytes per reason.
    fn counted_all(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let text = self.pod_net(&["stats", "--json"])?;
        let json: serde_json::Value =
            serde_json::from_str(&text).context("parsing pod-net stats --json")?;
        let counters = json["counters"]
            .as_object()
            .context("stats --json has no counters object")?;
        counters
            .iter()
            .map(|(name, value)| {
                let count = |field: &str| {
                    value[field]
                        .as_u64()
                        .with_context(|| format!("{name} has no {field} count"))
                };
                Ok((name.clone(), (count("packets")?, count("bytes")?)))
            })
            .collect()
    }

    /// IDs of the TCX ingress programs on an interface of the node, as the
    /// kernel reports them.
    pub fn tcx_ingress_programs(&self, ifname: &str) -> Result<Vec<u32>> {
        let binary = sibling_binary("pod-net-probe");
        let text = self.exec(&[binary.to_str().unwrap_or("pod-net-probe"), "tcx", ifname])?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))
    }

    /// The BPF filter at priority 1, handle 1 on an interface's tc ingress
    /// (where `load --attach tc` puts pod-net's), as `tc -j filter show`
    /// reports it: (name, program ID).
    pub fn tc_filter(&self, ifname: &str) -> Result<Option<(String, u64)>> {
        let text = self.exec(&["tc", "-j", "filter", "show", "dev", ifname, "ingress"])?;
        let filters: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))?;
        Ok(filters
            .as_array()
            .into_iter()
            .flatten()
            .filter(|filter| filter["pref"] == 1 && filter["kind"] == "bpf")
            .find(|filter| filter["options"]["handle"] == "0x1")
            .and_then(|filter| {
                let options = &filter["options"];
                Some((
                    options["bpf_name"].as_str()?.to_owned(),
                    options["prog"]["id"].as_u64()?,
                ))
            }))
    }

    /// The MAC of an interface in the node namespace.
    pub fn link_mac(&self, ifname: &str) -> Result<String> {
        let text = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let json: serde_json::Value =
            serde_json::from_str(&text).context("parsing ip -j output")?;
        json[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {ifname} in {text}"))
    }

    /// RX and TX packet counters of an interface in the node namespace.
    pub fn link_packets(&self, ifname: &str) -> Result<LinkPackets> {
        link_packets(&self.command(&["ip", "-j", "-s", "link", "show", "dev", ifname]))
    }
}

impl Pod {
    /// `ip -n <pod> args..`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run("ip", ["-n", self.netns.as_str()].iter().chain(args))
    }

    /// A command that will run in the pod namespace.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).args(args);
        command
    }

    /// Runs a command in the pod, failing unless it exits 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.command(args))
    }

    /// Sends `count` pings to `target` (0.1 s apart, 1 s deadline each) and
    /// fails unless all are answered.
    pub fn ping(&self, target: impl Into<IpAddr>, count: u32) -> Result<String> {
        let count = count.to_string();
        let target = target.into().to_string();
        self.exec(&[
            "ping", "-n", "-q", "-c", &count, "-i", "0.1", "-W", "1", &target,
        ])
    }

    /// One ping to `target` with don't-fragment and `size` bytes of
    /// payload, its output whether or not it was answered (1 s deadline).
    pub fn df_ping(&self, target: impl Into<IpAddr>, size: u32) -> Result<std::process::Output> {
        let size = size.to_string();
        let target = target.into().to_string();
        output_of(&mut self.command(&[
            "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", &size, &target,
        ]))
    }

    /// Starts `count` pings to `target`, 2 ms apart (1 s deadline each): a
    /// bounded flood to run while something changes under it.
    pub fn ping_flood(&self, target: Ipv4Addr, count: u32) -> Result<PingFlood> {
        let count = count.to_string();
        let target = target.to_string();
        let child = self
            .command(&[
                "ping", "-n", "-q", "-i", "0.002", "-c", &count, "-W", "1", &target,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting ping in {}", self.netns))?;
        Ok(PingFlood { child })
    }

    /// Starts a background process in the pod; it is killed when the guard
    /// drops.
    pub fn spawn(&self, args: &[&str]) -> Result<Background> {
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that drop reaches what it forks
            // (trafgen runs its senders in child processes).
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", self.netns))?;
        Ok(Background { child })
    }

    /// Sends `frame` raw out of the pod's `eth0` (`AF_PACKET`), bypassing
    /// the pod's stack: how tests put malformed frames on the wire.
    pub fn inject(&self, frame: &[u8]) -> Result<()> {
        let hex = crate::frames::hex(frame);
        let binary = sibling_binary("pod-net-probe");
        self.exec(&[
            binary.to_str().unwrap_or("pod-net-probe"),
            "inject",
            "eth0",
            &hex,
        ])
        .map(drop)
    }

    /// Pins `other`'s addresses (IPv4, and IPv6 in a dual-stack rig) in
    /// this pod's neighbour table, so no ARP or neighbour discovery runs
    /// during a test that counts packets exactly.
    pub fn pin_neighbour(&self, other: &Pod) -> Result<()> {
        let addresses = std::iter::once(IpAddr::from(other.ip)).chain(other.ip6.map(IpAddr::from));
        for ip in addresses {
            let ip = ip.to_string();
            self.ip(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &other.mac,
                "nud",
                "permanent",
                "dev",
                "eth0",
            ])?;
        }
        Ok(())
    }

    /// Waits (up to 5 s) until something in the pod listens on TCP `port`.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        let filter = format!("sport = :{port}");
        for _ in 0..100 {
            if !self.exec(&["ss", "-Hltn", &filter])?.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("nothing listens on port {port} in {}", self.netns)
    }

    /// Starts an iperf3 server in the pod (one test, then it exits) and
    /// waits until it listens.
    pub fn iperf3_server(&self, extra: &[&str]) -> Result<Background> {
        let mut args = vec!["iperf3", "-s", "-1"];
        args.extend_from_slice(extra);
        let server = self.spawn(&args)?;
        self.wait_listening(5201)?;
        Ok(server)
    }

    /// Runs an iperf3 client against `server` with `extra` arguments and
    /// returns its JSON report, failing on any error iperf3 reports.
    pub fn iperf3_client(
        &self,
        server: impl Into<IpAddr>,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        let server = server.into().to_string();
        let mut args = vec!["iperf3", "-c", server.as_str(), "-J"];
        args.extend_from_slice(extra);
        // iperf3 -J can exit 0 with an "error" in the report.
        let text = self.exec(&args)?;
        let report: serde_json::Value =
            serde_json::from_str(&text).context("parsing iperf3 -J output")?;
        if let Some(error) = report.get("error") {
            bail!("iperf3 failed: {error}");
        }
        Ok(report)
    }

    /// RX and TX packet counters of the pod's `eth0`.
    pub fn eth0_packets(&self) -> Result<LinkPackets> {
        link_packets(&self.command(&["ip", "-j", "-s", "link", "show", "dev", "eth0"]))
    }
}

/// A process started in a namespace, killed on drop.
/// A running [`Pod::ping_flood`].
pub struct PingFlood {
    child: Child,
}

impl PingFlood {
    /// Waits for the flood to end: (transmitted, received, ping's output).
    pub fn finish(self) -> Result<(u64, u64, String)> {
        let output = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = text
            .lines()
            .find(|line| line.contains("packets transmitted"))
            .with_context(|| format!("no summary in {text}"))?;
        let mut numbers = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse::<u64>().ok());
        let (Some(sent), Some(received)) = (numbers.next(), numbers.next()) else {
            bail!("cannot read {line:?}");
        };
        Ok((sent, received, text))
    }
}

pub struct Background {
    child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        // The whole group: the process and anything it forked.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the group this guard's spawn created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Packet counters of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkPackets {
    pub rx: u64,
    pub tx: u64,
}

fn link_packets(command: &Command) -> Result<LinkPackets> {
    let mut command = clone_command(command);
    let text = run_command(&mut command)?;
    let json: serde_json::Value = serde_json::from_str(&text).context("parsing ip -j output")?;
    let stats = &json[0]["stats64"];
    let number = |direction: &str| {
        stats[direction]["packets"]
            .as_u64()
            .with_context(|| format!("no {direction} packets in {text}"))
    };
    Ok(LinkPackets {
        rx: number("rx")?,
        tx: number("tx")?,
    })
}

fn clone_command(command: &Command) -> Command {
    let mut clone = Command::new(command.get_program());
    clone.args(command.get_args());
    clone
}

/// Where the `pod-net` binary is: `$POD_NET_BIN`, or next to the running
/// executable (target/<profile>/ for xtask, its parent for test binaries in
/// target/<profile>/deps/).
#[must_use]
pub fn pod_net_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("POD_NET_BIN") {
        return PathBuf::from(path);
    }
    sibling_binary("pod-net")
}

/// A workspace binary beside `POD_NET_BIN` (the bench's release build),
/// else next to the running executable, or its bare name.
#[must_use]
pub fn sibling_binary(name: &str) -> PathBuf {
    let pod_net_dir = std::env::var_os("POD_NET_BIN")
        .and_then(|path| PathBuf::from(path).parent().map(Path::to_path_buf));
    let exe = std::env::current_exe().unwrap_or_default();
    pod_net_dir
        .into_iter()
        .chain(exe.ancestors().skip(1).take(2).map(Path::to_path_buf))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `fd00:10:244:<node>::<host>`.
fn pod_ip6(node: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::from(node),
        0,
        0,
        0,
        u16::from(host),
    )
}

/// Creates a namespace, with IPv6 off unless the spec wants it, and then
/// without duplicate address detection: the rig's addresses are unique by
/// construction, and an address still tentative (the first second or two
/// of a link-local) delayed the first neighbour discovery across a routed
/// hop by two seconds.
fn add_netns(name: &str, spec: &RigSpec) -> Result<()> {
    run("ip", ["netns", "add", name])?;
    let setting = if spec.ipv6 {
        "accept_dad=0"
    } else {
        "disable_ipv6=1"
    };
    for key in ["all", "default"] {
        run(
            "ip",
            [
                "netns",
                "exec",
                name,
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{key}.{setting}"),
            ],
        )?;
    }
    Ok(())
}

/// Namespace names currently present.
fn netns_names() -> Result<Vec<String>> {
    let listing = run("ip", ["netns", "list"])?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Removes every namespace and pin dir of rig `id`. Deleting a namespace
/// deletes its veths, and with them the peers and TCX links on them.
fn remove_rig(id: &str) -> Result<()> {
    let ours = |name: &str| name == id || name.starts_with(&format!("{id}-"));
    // Pods first: a node's veths go with its pods' namespaces.
    let mut names: Vec<String> = netns_names()?
        .into_iter()
        .filter(|name| ours(name))
        .collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut failures = Vec::new();
    for name in names {
        let output = output_of(Command::new("ip").args(["netns", "del", &name]))?;
        if !output.status.success() {
            failures.push(name);
        }
    }
    for dir in [PathBuf::from(BPFFS), std::env::temp_dir()] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(ours) && entry.path().is_dir() {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
    }
    if !failures.is_empty() {
        bail!("could not delete namespaces {failures:?}");
    }
    Ok(())
}

/// Clears rigs whose creating process is gone (a crashed or killed run).
pub fn clear_stale() -> Result<()> {
    let mut dead = std::collections::BTreeSet::new();
    let bpffs_names = fs::read_dir(BPFFS)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in netns_names()?.into_iter().chain(bpffs_names) {
        if let Some(id) = stale_rig_id(&name) {
            dead.insert(id);
        }
    }
    for id in dead {
        remove_rig(&id)?;
    }
    Ok(())
}

/// The rig id in `name` if it belongs to a rig whose process is dead.
fn stale_rig_id(name: &str) -> Option<String> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid: u32 = parts.next()?.parse().ok()?;
    let seq: u32 = parts.next()?.parse().ok()?;
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    (!alive).then(|| format!("{PREFIX}{pid}-{seq}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_are_parsed_from_names() {
        // PID 0 never names a live process in /proc.
        assert_eq!(stale_rig_id("pnr-0-3-n1-p2"), Some("pnr-0-3".to_owned()));
        assert_eq!(stale_rig_id("pnr-0-3"), Some("pnr-0-3".to_owned()));
        assert_eq!(stale_rig_id("pnr-manual-n1"), None);
        assert_eq!(stale_rig_id("other"), None);
        let live = format!("pnr-{}-0-n1", std::process::id());
        assert_eq!(stale_rig_id(&live), None);
    }
}
