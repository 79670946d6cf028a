//! `pod-net apply -f FILE`: a node's pods and remote nodes declared in TOML
//! or JSON, reconciled into the maps. What the file lacks is added, what
//! it no longer holds is removed, and the difference is printed. A file
//! that does not parse or validate changes nothing.
//!
//! The order: take the pin dir lock (the one handle on the datapath), then
//! validate the whole file, plan and make the changes under it, so two
//! applies (or an apply and the agent) never plan from the same state.
//!
//! The plan covers the kernel's side of the remote entries too: what an
//! interrupted command left out of step (see `tunnel_sync`) is mended
//! first, so a second apply after a crash converges.
//!
//! Pods owned by a CNI runtime (those with a container ID) are the
//! runtime's; apply leaves them alone.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use pod_net_common::endpoint::ENDPOINT_F_NO_BYPASS;
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::{
    cidr::Cidr,
    crashpoint,
    datapath::{Datapath, Locked, endpoint_ip, pins::PinDir},
    mac::MacAddr,
    node::{
        endpoints::{self, PodSpec},
        remotes::{self, Mode, NodeSpec},
        tunnel,
        tunnel_sync::{self, Fix},
    },
    sys::netdev,
};

/// The file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default)]
    pub pods: Vec<PodConfig>,
    #[serde(default, deserialize_with = "node_specs")]
    pub nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    #[serde(deserialize_with = "canonical_ip")]
    pub ip: IpAddr,
    pub veth: String,
    #[serde(default, deserialize_with = "optional_from_str")]
    pub mac: Option<MacAddr>,
    /// Keep the pod on the kernel path (`pod add --no-bypass`).
    #[serde(default)]
    pub no_bypass: bool,
}

/// A `[[nodes]]` entry as the file spells it: a [`NodeSpec`] once read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeInFile {
    #[serde(deserialize_with = "from_str")]
    cidr: Cidr,
    node_ip: Ipv4Addr,
    #[serde(default, deserialize_with = "optional_from_str")]
    vtep_mac: Option<MacAddr>,
    /// Route to the node without VXLAN (`node add --direct`).
    #[serde(default)]
    direct: bool,
}

fn node_specs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<NodeSpec>, D::Error> {
    let nodes = Vec::<NodeInFile>::deserialize(deserializer)?;
    Ok(nodes
        .into_iter()
        .map(|node| NodeSpec {
            cidr: node.cidr,
            node_ip: node.node_ip,
            vtep_mac: node.vtep_mac,
            mode: if node.direct {
                Mode::Direct
            } else {
                Mode::Vxlan
            },
        })
        .collect())
}

fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(D::Error::custom)
}

fn optional_from_str<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    from_str(deserializer).map(Some)
}

/// An IP address; IPv4-mapped IPv6 is the IPv4 address it stands for.
fn canonical_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    IpAddr::deserialize(deserializer).map(|ip| ip.to_canonical())
}

/// Reads and parses `path` (TOML, or JSON when it starts with `{`). The
/// error names the line and the field.
pub fn read(path: &Path) -> Result<NodeConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not a valid node config", path.display()))
}

/// Parses a node config from text.
pub fn parse(text: &str) -> Result<NodeConfig> {
    if text.trim_start().starts_with('{') {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let line = err.inner().line();
            anyhow::anyhow!("line {line}, field {}: {}", err.path(), err.inner())
        })
    } else {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| anyhow::anyhow!("{}", one_line(&err.to_string())))?;
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let line = err
                .inner()
                .span()
                .map(|span| text[..span.start].lines().count().max(1));
            match line {
                Some(line) => anyhow::anyhow!(
                    "line {line}, field {}: {}",
                    err.path(),
                    err.inner().message()
                ),
                None => anyhow::anyhow!("field {}: {}", err.path(), err.inner().message()),
            }
        })
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One change apply makes (or would make).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    AddPod(PodConfig),
    RemovePod {
        ip: IpAddr,
    },
    AddNode(NodeSpec),
    RemoveNode {
        cidr: Cidr,
    },
    /// The tunnel device out of step with the remote entries.
    Tunnel {
        device: String,
        fix: Fix,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddPod(pod) => write!(f, "+ pod {} on {}", pod.ip, pod.veth),
            Self::RemovePod { ip } => write!(f, "- pod {ip}"),
            Self::AddNode(node) => match node.mode {
                Mode::Vxlan => write!(f, "+ node {} via {}", node.cidr, node.node_ip),
                Mode::Direct => write!(f, "+ node {} via {} (direct)", node.cidr, node.node_ip),
            },
            Self::RemoveNode { cidr } => write!(f, "- node {cidr}"),
            Self::Tunnel { device, fix } => write!(f, "{fix} on {device}"),
        }
    }
}

/// Under the pin dir lock, validates `config`, plans the changes that make
/// the node match it and (unless `dry_run`) makes them. Returns the
/// changes. A file that fails validation changes nothing.
pub fn run(pins: &PinDir, config: &NodeConfig, dry_run: bool) -> Result<Vec<Change>> {
    run_scoped(&mut Locked::new(pins)?, config, Scope::Everything, dry_run)
}

/// As [`run`] for remote nodes alone, on the caller's locked datapath: the
/// node list comes from a cluster store, and the pods, which are the
/// runtime's and the operator's, are left as they are.
pub fn run_nodes(datapath: &mut Locked, nodes: Vec<NodeSpec>) -> Result<Vec<Change>> {
    let config = NodeConfig {
        pods: Vec::new(),
        nodes,
    };
    run_scoped(datapath, &config, Scope::NodesOnly, false)
}

/// Makes exactly these node changes (what one cluster-store update says)
/// on the caller's locked datapath, without diffing every entry: the added
/// entries get `node add`'s checks (against this node and the entries that
/// stay) as they go in, which is the one full pass per update. Returns the
/// changes made.
pub fn change_nodes(
    datapath: &mut Locked,
    removed: &[Cidr],
    added: Vec<NodeSpec>,
) -> Result<Vec<Change>> {
    let changes: Vec<Change> = removed
        .iter()
        .map(|&cidr| Change::RemoveNode { cidr })
        .chain(added.into_iter().map(Change::AddNode))
        .collect();
    execute(datapath, &changes)?;
    Ok(changes)
}

/// What a config speaks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Everything,
    NodesOnly,
}

fn run_scoped(
    datapath: &mut Locked,
    config: &NodeConfig,
    scope: Scope,
    dry_run: bool,
) -> Result<Vec<Change>> {
    validate(datapath, config)?;
    let changes = plan(datapath, config, scope)?;
    if !dry_run {
        execute(datapath, &changes)?;
    }
    Ok(changes)
}

/// The changes that make the node match `config` (validated), read under
/// the lock: first what mends the tunnel device, then the map changes.
fn plan(datapath: &Datapath, config: &NodeConfig, scope: Scope) -> Result<Vec<Change>> {
    let mut changes: Vec<Change> = tunnel_sync::plan_if_loaded(datapath)?
        .into_iter()
        .map(|(device, fix)| Change::Tunnel { device, fix })
        .collect();

    if scope == Scope::Everything {
        changes.extend(plan_pods(datapath, config)?);
    }
    changes.extend(plan_nodes(datapath, config)?);
    Ok(changes)
}

/// A local entry as apply compares it with a `[[pods]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodState {
    /// The host veth's name; empty when the entry's ifindex names no
    /// interface in this namespace.
    pub veth: String,
    pub mac: MacAddr,
    pub no_bypass: bool,
    /// The container ID of the CNI runtime that registered it; empty for
    /// pods added by hand or by apply.
    pub owner: String,
}

/// Pods: the maps' entries as [`PodState`]s, diffed by [`diff_pods`].
fn plan_pods(datapath: &Datapath, config: &NodeConfig) -> Result<Vec<Change>> {
    let names = netdev::link_names()?;
    let current: BTreeMap<IpAddr, PodState> = datapath
        .endpoint_entries()?
        .into_iter()
        .map(|(key, endpoint)| {
            let state = PodState {
                veth: names.get(&endpoint.ifindex).cloned().unwrap_or_default(),
                mac: MacAddr(endpoint.mac),
                no_bypass: endpoint.flags & ENDPOINT_F_NO_BYPASS != 0,
                owner: endpoints::owner(&endpoint).0,
            };
            (endpoint_ip(&key), state)
        })
        .collect();
    diff_pods(&current, &config.pods)
}

/// The pod changes that turn `current` into `wanted` (validated: no IP
/// twice). Keyed by IP; an entry whose veth, MAC or `no_bypass` differs is
/// replaced (removed, then added). A pod a CNI runtime registered is the
/// runtime's: left alone, and refused when `wanted` names its IP.
fn diff_pods(current: &BTreeMap<IpAddr, PodState>, wanted: &[PodConfig]) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    let by_ip: BTreeMap<IpAddr, &PodConfig> = wanted.iter().map(|pod| (pod.ip, pod)).collect();
    // A pod a CNI runtime registered is the runtime's: the file cannot
    // take its address (found here, before anything changes).
    for (ip, state) in current {
        if !state.owner.is_empty() && by_ip.contains_key(ip) {
            bail!(
                "pod {ip} is registered by container {}; the file cannot take it over \
                 (remove it from the file, or the container first)",
                state.owner
            );
        }
    }
    let mine: BTreeMap<IpAddr, &PodState> = current
        .iter()
        .filter(|(_, state)| state.owner.is_empty())
        .map(|(ip, state)| (*ip, state))
        .collect();
    let same = |pod: &PodConfig, state: &PodState| {
        pod.veth == state.veth
            && pod.mac.is_none_or(|wanted| wanted == state.mac)
            && pod.no_bypass == state.no_bypass
    };
    for (ip, state) in &mine {
        if !by_ip.get(ip).is_some_and(|pod| same(pod, state)) {
            changes.push(Change::RemovePod { ip: *ip });
        }
    }
    for pod in wanted {
        if !mine.get(&pod.ip).is_some_and(|state| same(pod, state)) {
            changes.push(Change::AddPod(pod.clone()));
        }
    }

    Ok(changes)
}

/// Remote nodes: the maps' entries, diffed by [`diff_nodes`].
fn plan_nodes(datapath: &Datapath, config: &NodeConfig) -> Result<Vec<Change>> {
    let current: BTreeMap<Cidr, remotes::NodeEntry> = remotes::list(datapath)?
        .into_iter()
        .map(|entry| (entry.cidr, entry))
        .collect();
    Ok(diff_nodes(&current, &config.nodes))
}

/// The remote node changes that turn `current` into `wanted` (validated:
/// no prefix twice). Keyed by exact prefix; an entry whose node IP, mode
/// or VTEP MAC (given, or derived from the node IP) differs is replaced.
#[must_use]
fn diff_nodes(current: &BTreeMap<Cidr, remotes::NodeEntry>, wanted: &[NodeSpec]) -> Vec<Change> {
    let mut changes = Vec::new();
    let same = |entry: &remotes::NodeEntry, node: &NodeSpec| {
        entry.node_ip == node.node_ip
            && entry.mode == node.mode
            && match node.vtep_mac {
                Some(mac) => entry.vtep_mac_given && entry.vtep_mac == mac,
                None => !entry.vtep_mac_given,
            }
    };
    let by_cidr: BTreeMap<Cidr, &NodeSpec> = wanted.iter().map(|node| (node.cidr, node)).collect();
    for (cidr, entry) in current {
        if !by_cidr.get(cidr).is_some_and(|node| same(entry, node)) {
            changes.push(Change::RemoveNode { cidr: *cidr });
        }
    }
    for node in wanted {
        if !current
            .get(&node.cidr)
            .is_some_and(|entry| same(entry, node))
        {
            changes.push(Change::AddNode(node.clone()));
        }
    }
    changes
}

/// Checks everything that can be checked without changing anything, so
/// that no change is made for a file that would fail part way.
fn validate(datapath: &Datapath, config: &NodeConfig) -> Result<()> {
    validate_entries(config, |veth| netdev::require_veth(veth).map(drop))?;
    let loaded = datapath.config()?;
    if !config.nodes.is_empty() && !loaded.has_underlay() {
        bail!(
            "the file lists remote nodes but pod-net was loaded without an underlay; \
             run `pod-net load --underlay IFACE --node-ip IPV4` first"
        );
    }
    for (index, node) in config.nodes.iter().enumerate() {
        remotes::node_value(node, &loaded)
            .with_context(|| format!("nodes[{index}] ({})", node.cidr))?;
    }
    // The file's nodes replace every current entry: check them as a whole
    // against this node's addresses, routes and pods, and each other.
    remotes::validate(datapath, &config.nodes, &remotes::cidrs(datapath)?)?;
    if !config.nodes.is_empty() && tunnel_sync::device(&loaded)?.is_none() {
        bail!(
            "the tunnel device {} is missing; run `pod-net load` again to recreate it",
            tunnel::device_name(loaded.vni)
        );
    }
    Ok(())
}

/// The checks of [`validate`] that read the file alone, pod by pod and
/// then node by node: no pod IP or node prefix twice, each pod's veth a
/// veth (`require_veth` says), each given pod MAC unicast.
fn validate_entries(config: &NodeConfig, require_veth: impl Fn(&str) -> Result<()>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (index, pod) in config.pods.iter().enumerate() {
        let at = || format!("pods[{index}] ({})", pod.ip);
        if !seen.insert(pod.ip) {
            bail!("{}: listed twice", at());
        }
        require_veth(&pod.veth).with_context(at)?;
        if let Some(mac) = pod.mac
            && (mac.is_zero() || mac.is_multicast())
        {
            bail!("{}: pod MAC {mac} is not a unicast address", at());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (index, node) in config.nodes.iter().enumerate() {
        if !seen.insert(node.cidr) {
            bail!("nodes[{index}] ({}): listed twice", node.cidr);
        }
    }
    Ok(())
}

/// Makes `changes`: the tunnel device is mended first (so the map changes
/// start from a node in step), then removals, so an IP or prefix that
/// moves is free. Remote entries go in batches (one map call and one
/// netlink socket for all of them); pods one by one, as each needs its veth
/// attached.
fn execute(datapath: &mut Locked, changes: &[Change]) -> Result<()> {
    let mut gone_nodes = Vec::new();
    let mut new_nodes = Vec::new();
    let (mut device, mut fixes) = (None, Vec::new());
    for change in changes {
        if let Change::Tunnel { device: name, fix } = change {
            device = Some(name);
            fixes.push(fix.clone());
        }
    }
    if let Some(name) = device {
        let link = netdev::link_by_name(name)?
            .with_context(|| format!("the tunnel device {name} vanished during apply"))?;
        tunnel_sync::execute(&link, &fixes)
            .with_context(|| format!("mending {name} ({} change(s))", fixes.len()))?;
    }
    for change in changes {
        match change {
            Change::RemovePod { ip } => {
                endpoints::del_by_ip(datapath, *ip).with_context(|| change.to_string())?;
                crashpoint::here(crashpoint::APPLY_CHANGED);
            }
            Change::RemoveNode { cidr } => gone_nodes.push(*cidr),
            Change::AddNode(node) => new_nodes.push(node.clone()),
            Change::AddPod(_) | Change::Tunnel { .. } => {}
        }
    }
    remotes::del_many(datapath, &gone_nodes)
        .with_context(|| format!("removing {} remote entries", gone_nodes.len()))?;
    for change in changes {
        if let Change::AddPod(pod) = change {
            let spec = PodSpec {
                ip: pod.ip,
                veth: pod.veth.clone(),
                mac: pod.mac,
                container_id: String::new(),
                pod_ifname: String::new(),
                replace: false,
                no_bypass: pod.no_bypass,
                pod_netns: None,
            };
            endpoints::add(datapath, &spec).with_context(|| change.to_string())?;
            crashpoint::here(crashpoint::APPLY_CHANGED);
        }
    }
    remotes::add_many(datapath, &new_nodes)
        .with_context(|| format!("adding {} remote entries", new_nodes.len()))
}
