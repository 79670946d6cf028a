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
//!
//! Here: the topology (building and removing a rig). Beside it: `node` (a
//! node's namespace and the pod-net CLI driven there), `reports` (what that
//! CLI reports, parsed: counters, pods, remote entries, status problems),
//! `pod` (the traffic a pod sends), `process` (background processes and
//! where the binaries are) and `stale` (clearing the leftovers of rigs whose
//! process died).

mod node;
mod pod;
mod process;
mod reports;
mod stale;

pub use node::LinkPackets;
pub use process::{Background, PingFlood, pod_net_binary, sibling_binary};
pub use stale::clear_stale;
use stale::remove_rig;

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::run;

/// Prefix of every rig's names.
const PREFIX: &str = "pnr-";
/// Id of the long-lived rig that `cargo xtask rig up` makes.
pub const MANUAL_ID: &str = "pnr-manual";
const BPFFS: &str = "/sys/fs/bpf";
/// Where a rig's etcd keeps its data (`<rig id>-etcd`): memory, not disk.
pub const SHARED_MEMORY: &str = "/dev/shm";

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

    /// Builds a rig and loads pod-net on every node with its pods
    /// registered, same-node only (no underlay): the opening of most
    /// single-node tests.
    pub fn loaded(spec: &RigSpec) -> Result<Self> {
        let rig = Self::build(spec)?;
        for node in rig.nodes() {
            node.load_and_register()?;
        }
        Ok(rig)
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

    pub(super) fn create(&mut self, spec: &RigSpec) -> Result<()> {
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
