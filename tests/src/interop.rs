//! A mixed cluster: `pod-net agent` on some rig nodes and a real flanneld
//! (v0.28.10, [`crate::flanneld`]) on others, sharing one flannel-schema
//! etcd ([`crate::cluster::Etcd`]). Each node's pods are made the way that
//! node's own network plugin makes them: through the agent's conflist
//! (bridge, host-local, pod-net-cni) on a pod-net node, through flannel's
//! CNI plugin on a flannel node.
//!
//! Beside that, what a flannel node's kernel holds for its peers, parsed
//! from `ip -j` and `bridge -j`: the routes, the neighbour entries and the
//! FDB entries of its VXLAN device, and its routes on the underlay.
pub mod checks;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    cluster::{self, Agent, Etcd, SOON, lease_key},
    cmd::{output_of, run_command},
    cni::{self, Attachment, Runtime, result_ipv4},
    flanneld::{self, Flanneld},
    kube::ControlPlane,
    kube_cluster,
    rig::{Node, Rig},
    wait::{wait_for, wait_until},
};

/// What runs on a node of a mixed cluster.
pub enum Runs {
    PodNet(Agent),
    Flannel(Flanneld),
    /// flanneld, with `pod-net agent --beside-flannel` accelerating it.
    Accelerated(Flanneld, Agent),
}

/// A node of a mixed cluster, once it has its lease.
pub struct Member<'a> {
    pub node: &'a Node,
    pub runs: Runs,
    /// Its subnet, `10.244.N.0/24`.
    pub subnet: String,
    /// The VTEP MAC its lease publishes (`BackendData.VtepMAC`).
    pub vtep_mac: String,
    /// The VNI its lease publishes (`BackendData.VNI`).
    pub vni: u64,
    /// The store its lease is in, as `pod-net status` names it.
    pub store: &'static str,
}

/// Where the nodes of a mixed cluster meet: flannel's etcd schema, or its
/// kube schema (`--kube-subnet-mgr`), the Nodes registered beforehand.
pub enum Meeting<'a> {
    Etcd(&'a Etcd),
    Kube {
        plane: &'a ControlPlane,
        /// The deploy manifest's service account, for pod-net's agents
        /// (flanneld runs as the admin).
        agents: PathBuf,
    },
}

impl Meeting<'_> {
    /// The store's name in `pod-net status`.
    #[must_use]
    pub fn store_name(&self) -> &'static str {
        match self {
            Self::Etcd(_) => "etcd",
            Self::Kube { .. } => "kubernetes",
        }
    }
}

impl<'a> Member<'a> {
    /// Starts `pod-net agent` on `node`, joining through `meeting`, and
    /// waits for its lease.
    pub fn pod_net(rig: &Rig, meeting: &Meeting, node: &'a Node) -> Result<Self> {
        let agent = match meeting {
            Meeting::Etcd(_) => {
                Agent::start(node, &cluster::agent_dir(rig, node), &Etcd::endpoint(), &[])?
            }
            Meeting::Kube { agents, .. } => {
                kube_cluster::start_agent(rig, node, agents, kube_cluster::NET_CONF, &[])?
            }
        };
        let subnet = agent.wait_subnet(SOON)?;
        Self::leased(meeting, node, Runs::PodNet(agent), subnet)
    }

    /// Starts flanneld on `node`, joining through `meeting`, and waits for
    /// its lease.
    pub fn flannel(rig: &Rig, meeting: &Meeting, node: &'a Node) -> Result<Self> {
        let mut daemon = match meeting {
            Meeting::Etcd(_) => Flanneld::start_etcd(rig, node, &Etcd::endpoint(), &[])?,
            Meeting::Kube { plane, .. } => Flanneld::start_kube(
                rig,
                node,
                &kube_cluster::node_name(node),
                &plane.admin_kubeconfig(),
                &[],
            )?,
        };
        let subnet = daemon.wait_subnet(SOON)?;
        Self::leased(meeting, node, Runs::Flannel(daemon), subnet)
    }

    /// Starts flanneld on `node` as [`Self::flannel`] does, then `pod-net
    /// agent --beside-flannel` (with `extra` flags) chaining pod-net-cni
    /// into flannel's conflist, and waits for the datapath and the chain.
    pub fn accelerated(
        rig: &Rig,
        meeting: &Meeting,
        node: &'a Node,
        extra: &[&str],
    ) -> Result<Self> {
        let member = Self::flannel(rig, meeting, node)?;
        let Runs::Flannel(daemon) = member.runs else {
            unreachable!("Self::flannel runs flanneld");
        };
        let agent = accelerate(rig, node, &daemon, extra)?;
        Ok(Self {
            runs: Runs::Accelerated(daemon, agent),
            ..member
        })
    }

    /// The member, with its lease as `meeting` holds it, which must name
    /// its node and `subnet`.
    fn leased(meeting: &Meeting, node: &'a Node, runs: Runs, subnet: String) -> Result<Self> {
        let (public_ip, backend, what) = match meeting {
            Meeting::Etcd(etcd) => {
                let key = lease_key(&subnet);
                let text = etcd.get(&key)?.with_context(|| format!("no {key}"))?;
                let lease: Value =
                    serde_json::from_str(&text).with_context(|| format!("{key}: {text}"))?;
                (
                    lease["PublicIP"].clone(),
                    lease["BackendData"].clone(),
                    text,
                )
            }
            Meeting::Kube { plane, .. } => {
                let name = kube_cluster::node_name(node);
                let cidr = plane.pod_cidr(&name)?;
                if cidr.as_deref() != Some(subnet.as_str()) {
                    bail!("Node {name} has podCIDR {cidr:?}, its subnet.env {subnet}");
                }
                let annotations = kube_cluster::flannel_annotations(plane, &name)?;
                let backend = annotations
                    .get("backend-data")
                    .and_then(|data| serde_json::from_str(data).ok())
                    .unwrap_or(Value::Null);
                let public_ip = annotations
                    .get("public-ip")
                    .map_or(Value::Null, |ip| Value::from(ip.as_str()));
                (public_ip, backend, format!("{annotations:?}"))
            }
        };
        if public_ip != node.underlay_ip.to_string().as_str() {
            bail!(
                "the lease of {subnet} does not name node {}: {what}",
                node.index
            );
        }
        let vtep_mac = backend["VtepMAC"]
            .as_str()
            .with_context(|| format!("the lease of {subnet} has no VtepMAC: {what}"))?
            .to_owned();
        let vni = backend["VNI"]
            .as_u64()
            .with_context(|| format!("the lease of {subnet} has no VNI: {what}"))?;
        Ok(Self {
            node,
            runs,
            subnet,
            vtep_mac,
            vni,
            store: meeting.store_name(),
        })
    }

    /// Whether pod-net runs here on its own: its lease, its `pnvxlan`.
    #[must_use]
    pub fn is_pod_net(&self) -> bool {
        matches!(self.runs, Runs::PodNet(_))
    }

    /// Whether pod-net accelerates flanneld here.
    #[must_use]
    pub fn is_accelerated(&self) -> bool {
        matches!(self.runs, Runs::Accelerated(..))
    }

    /// Whether pod-net's datapath carries this node's pods (and counts).
    #[must_use]
    pub fn has_fast_path(&self) -> bool {
        !matches!(self.runs, Runs::Flannel(_))
    }

    /// The agent, where pod-net runs.
    #[must_use]
    pub fn agent(&self) -> Option<&Agent> {
        match &self.runs {
            Runs::PodNet(agent) | Runs::Accelerated(_, agent) => Some(agent),
            Runs::Flannel(_) => None,
        }
    }

    /// The agent, where pod-net runs.
    pub fn agent_mut(&mut self) -> Option<&mut Agent> {
        match &mut self.runs {
            Runs::PodNet(agent) | Runs::Accelerated(_, agent) => Some(agent),
            Runs::Flannel(_) => None,
        }
    }

    /// flanneld's log so far, where flanneld runs.
    #[must_use]
    pub fn flanneld_log(&self) -> Option<String> {
        match &self.runs {
            Runs::Flannel(daemon) | Runs::Accelerated(daemon, _) => Some(daemon.log_text()),
            Runs::PodNet(_) => None,
        }
    }

    /// flanneld, where it runs.
    pub fn flanneld(&mut self) -> Option<&mut Flanneld> {
        match &mut self.runs {
            Runs::Flannel(daemon) | Runs::Accelerated(daemon, _) => Some(daemon),
            Runs::PodNet(_) => None,
        }
    }

    /// The VXLAN device this node's own kernel path uses: pod-net's
    /// `pnvxlan<VNI>` or flannel's `flannel.<VNI>`.
    #[must_use]
    pub fn tunnel_device(&self) -> String {
        if self.is_pod_net() {
            format!("pnvxlan{}", self.vni)
        } else {
            format!("flannel.{}", self.vni)
        }
    }

    /// What a pod-net peer programs for this node over VXLAN: (subnet,
    /// node IP, VTEP MAC), as [`cluster::remote_nodes`] lists it.
    #[must_use]
    pub fn entry(&self) -> (String, String, String) {
        (
            self.subnet.clone(),
            self.node.underlay_ip.to_string(),
            self.vtep_mac.clone(),
        )
    }

    /// The first address of its subnet (flannel's next hop for it on
    /// `flannel.1`).
    #[must_use]
    pub fn subnet_ip(&self) -> String {
        self.subnet
            .split_once('/')
            .map_or_else(String::new, |(ip, _)| ip.to_owned())
    }

    /// A pod `name` on this node, made by this node's network plugin.
    pub fn pod(&self, rig: &Rig, name: &str) -> Result<MixedPod<'a>> {
        let (conflist, plugin_path) = match &self.runs {
            Runs::PodNet(agent) => {
                let ipam = rig
                    .scratch_dir()?
                    .join(format!("ipam-n{}", self.node.index));
                (agent.conflist(&ipam)?, cni::plugin_path()?)
            }
            Runs::Flannel(daemon) => (daemon.conflist(), flanneld::plugin_path()?),
            Runs::Accelerated(_, agent) => {
                // flannel's conflist as the agent chained it.
                let text = std::fs::read_to_string(&agent.conflist)
                    .with_context(|| format!("reading {}", agent.conflist.display()))?;
                let mut path = cni::plugin_path()?;
                path.extend(flanneld::plugin_path()?);
                (serde_json::from_str(&text)?, path)
            }
        };
        let runtime = Runtime::new(self.node, conflist, plugin_path);
        let attachment = Attachment::in_sandbox(rig, name)?;
        let result = runtime.add(&attachment)?;
        Ok(MixedPod {
            ip: result_ipv4(&result)?,
            node: self.node.index,
            name: name.to_owned(),
            runtime,
            attachment,
        })
    }
}

/// Starts `pod-net agent --beside-flannel` beside `daemon` on `node`, with
/// `extra` flags, chaining pod-net-cni into flannel's conflist (written
/// first, as kube-flannel's install step does); waits until the datapath
/// is loaded and the conflist chained.
fn accelerate(rig: &Rig, node: &Node, daemon: &Flanneld, extra: &[&str]) -> Result<Agent> {
    let dir = cluster::agent_dir(rig, node);
    std::fs::create_dir_all(&dir)?;
    let chain = dir.join("10-flannel.conflist");
    std::fs::write(&chain, serde_json::to_vec_pretty(&daemon.conflist())?)?;
    let agent = Agent::beside_flannel(node, &dir, &daemon.subnet_file, &chain, extra)?;
    wait_accelerating(node, &agent)?;
    Ok(agent)
}

/// Waits until `agent` beside flanneld has loaded the datapath and chained
/// pod-net-cni into flannel's conflist.
pub fn wait_accelerating(node: &Node, agent: &Agent) -> Result<()> {
    wait_for("the agent beside flanneld to load and chain", SOON, || {
        let chained =
            std::fs::read_to_string(&agent.conflist).is_ok_and(|text| text.contains("pod-net-cni"));
        let loaded = node
            .pod_net_command(&["status"])
            .output()
            .is_ok_and(|output| output.status.success());
        (chained && loaded).then_some(())
    })
    .with_context(|| format!("agent log:\n{}", agent.log_text()))
}

/// A pod of a mixed cluster, deleted through its plugin chain on drop.
pub struct MixedPod<'a> {
    runtime: Runtime<'a>,
    pub attachment: Attachment,
    pub ip: Ipv4Addr,
    /// Its node's index.
    pub node: u8,
    pub name: String,
}

impl MixedPod<'_> {
    /// `ip netns exec <the pod's netns> args..`.
    fn command(&self, args: &[&str]) -> Result<Command> {
        let netns = self
            .attachment
            .netns
            .as_deref()
            .context("the pod has no netns")?
            .trim_start_matches("/run/netns/");
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).args(args);
        Ok(command)
    }

    /// `ping -c count` to `to`, 50 ms apart, each reply awaited for up to
    /// 1 s: (transmitted, received) from ping's summary.
    pub fn ping(&self, to: Ipv4Addr, count: u32) -> Result<(u64, u64)> {
        self.ping_with(to, count, &[])
    }

    /// A bounded ping flood to `to`: `count` echo requests 2 ms apart, each
    /// reply awaited for up to 1 s; read it with [`cluster::flood_result`].
    pub fn flood(&self, to: Ipv4Addr, count: u32) -> Result<std::process::Child> {
        let count = count.to_string();
        let to = to.to_string();
        self.command(&[
            "ping", "-n", "-q", "-i", "0.002", "-W", "1", "-c", &count, &to,
        ])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the ping flood")
    }

    /// Like [`Self::ping`], with `size` bytes of payload and don't-fragment.
    pub fn df_ping(&self, to: Ipv4Addr, count: u32, size: u32) -> Result<(u64, u64)> {
        self.ping_with(to, count, &["-M", "do", "-s", &size.to_string()])
    }

    fn ping_with(&self, to: Ipv4Addr, count: u32, extra: &[&str]) -> Result<(u64, u64)> {
        let count = count.to_string();
        let to = to.to_string();
        let mut args = vec!["ping", "-n", "-q", "-c", &count, "-i", "0.05", "-W", "1"];
        args.extend_from_slice(extra);
        args.push(&to);
        let output = output_of(&mut self.command(&args)?)?;
        let text = String::from_utf8_lossy(&output.stdout);
        cluster::ping_counts(&text).with_context(|| {
            format!(
                "ping {to} printed no summary: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// Sends `bytes` (iperf3's `-n`, e.g. "8M") over one TCP connection to
    /// an iperf3 server in `server` (bounded: 30 s), and returns the bytes
    /// the client sent; fails unless the server reports bytes too.
    pub fn tcp_transfer(&self, server: &MixedPod, bytes: &str) -> Result<u64> {
        let mut child = server
            .command(&["iperf3", "-s", "-1"])?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        let result = (|| {
            wait_until("iperf3 listening", Duration::from_secs(5), || {
                server
                    .command(&["ss", "-Hltn", "sport = :5201"])
                    .ok()
                    .and_then(|mut command| run_command(&mut command).ok())
                    .is_some_and(|listening| !listening.trim().is_empty())
            })?;
            let target = server.ip.to_string();
            let text = run_command(
                &mut self
                    .command(&["timeout", "30", "iperf3", "-c", &target, "-n", bytes, "-J"])?,
            )?;
            let report: Value = serde_json::from_str(&text).context("parsing iperf3 -J")?;
            if let Some(error) = report.get("error") {
                bail!("iperf3 {} -> {target}: {error}", self.ip);
            }
            let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
            let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
            anyhow::ensure!(
                sent > 0 && received > 0,
                "iperf3 {} -> {target}: sent {sent}, received {received}",
                self.ip
            );
            Ok(sent)
        })();
        let _ = child.kill();
        let _ = child.wait();
        result
    }
}

impl Drop for MixedPod<'_> {
    fn drop(&mut self) {
        let _ = self.runtime.del(&self.attachment);
    }
}

/// A route with a gateway, as `ip -j route` shows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub gateway: String,
    pub dev: String,
    /// `onlink`, ...
    pub flags: Vec<String>,
}

impl Route {
    #[must_use]
    pub fn new(gateway: &str, dev: &str, flags: &[&str]) -> Self {
        Self {
            gateway: gateway.to_owned(),
            dev: dev.to_owned(),
            flags: flags.iter().map(|flag| (*flag).to_owned()).collect(),
        }
    }
}

/// The routes with a gateway `ip -j route show args..` prints in `node`,
/// by destination.
pub fn routes(node: &Node, args: &[&str]) -> Result<BTreeMap<String, Route>> {
    let mut full = vec!["-j", "route", "show"];
    full.extend_from_slice(args);
    let text = node.ip(&full)?;
    let list: Value = serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?;
    let mut routes = BTreeMap::new();
    for route in list.as_array().context("ip -j route printed no array")? {
        let (Some(dst), Some(gateway)) = (route["dst"].as_str(), route["gateway"].as_str()) else {
            continue;
        };
        routes.insert(
            dst.to_owned(),
            Route {
                gateway: gateway.to_owned(),
                dev: route["dev"].as_str().unwrap_or_default().to_owned(),
                flags: strings(&route["flags"]),
            },
        );
    }
    Ok(routes)
}

/// The strings of a JSON array (none for anything else).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The neighbour entries of `device` on `node`: (IP, MAC, states).
pub fn neighbours(node: &Node, device: &str) -> Result<BTreeSet<(String, String, Vec<String>)>> {
    let text = node.ip(&["-j", "neigh", "show", "dev", device])?;
    let list: Value = serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?;
    Ok(list
        .as_array()
        .context("ip -j neigh printed no array")?
        .iter()
        .map(|entry| {
            (
                entry["dst"].as_str().unwrap_or_default().to_owned(),
                entry["lladdr"].as_str().unwrap_or_default().to_owned(),
                strings(&entry["state"]),
            )
        })
        .collect())
}

/// The FDB entries of VXLAN `device` on `node`: (MAC, remote IP, state).
pub fn fdb(node: &Node, device: &str) -> Result<BTreeSet<(String, String, String)>> {
    let text = node.exec(&["bridge", "-j", "fdb", "show", "dev", device])?;
    let list: Value = serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?;
    Ok(list
        .as_array()
        .context("bridge -j fdb printed no array")?
        .iter()
        .map(|entry| {
            (
                entry["mac"].as_str().unwrap_or_default().to_owned(),
                entry["dst"].as_str().unwrap_or_default().to_owned(),
                entry["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// `device` on `node` as `ip -d -j link show` reports it (a VXLAN
/// device's `linkinfo.info_data` holds its id, port and local address).
pub fn link_details(node: &Node, device: &str) -> Result<Value> {
    let text = node.ip(&["-d", "-j", "link", "show", "dev", device])?;
    let links: Value = serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))?;
    Ok(links[0].clone())
}
