//! Remote nodes: which node hosts which pod address. A single pod (a /32)
//! goes in the `remote_pods` hash, a node's pod CIDR in the `remote_nodes`
//! trie (see `pod_net_common::remote`). Every entry is also routed in the
//! kernel, its path for what the fast path leaves to it: through the tunnel
//! device, or for a direct node out of the underlay (see `crate::node::direct`).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::lpm_trie::Key;
use pod_net_common::{
    Config, RemoteAddr, RemoteNode,
    config::VXLAN_OVERHEAD,
    map_table,
    remote::{IPV4_MAPPED_PREFIX_BITS, REMOTE_F_DIRECT, REMOTE_F_VTEP_MAC, derived_vtep_mac},
};
use serde::Serialize;

use crate::{
    cidr::Cidr,
    datapath::{
        Datapath, Locked, endpoint_ip, hash_entries,
        map_batch::{self, BatchError},
    },
    error::{Capacity, NodeError},
    mac::MacAddr,
    node::{
        direct,
        overlap::HostView,
        peers,
        tunnel::{self, RemoteRoute},
    },
    sys::netdev::{self, Link},
};

/// A remote node entry as the CLI describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeSpec {
    pub cidr: Cidr,
    pub node_ip: Ipv4Addr,
    /// The node's VTEP MAC (a flannel node's `VtepMAC`); derived from the
    /// node IP when absent, which is what pod-net nodes use.
    pub vtep_mac: Option<MacAddr>,
    /// How the node is reached.
    pub mode: Mode,
}

/// How a remote node's pods are reached. One node has one mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Encapsulated in VXLAN.
    #[default]
    Vxlan,
    /// Unencapsulated, to a node on this node's L2 segment.
    Direct,
}

impl Mode {
    const fn of(node: &RemoteNode) -> Self {
        if node.flags & REMOTE_F_DIRECT != 0 {
            Self::Direct
        } else {
            Self::Vxlan
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vxlan => "vxlan",
            Self::Direct => "direct",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    Unchanged,
}

/// One remote entry, as `node list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeEntry {
    pub cidr: Cidr,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    /// Whether the VTEP MAC was given rather than derived.
    pub vtep_mac_given: bool,
    pub mode: Mode,
}

/// Adds a remote entry; the same entry again changes nothing.
pub fn add(datapath: &mut Locked, spec: &NodeSpec) -> Result<AddOutcome> {
    let config = datapath.config()?;
    let links = Links::of(&config)?;
    let checked = check(datapath, &config, &links, std::slice::from_ref(spec), &[])?;
    let value = checked.values[0];
    let route = [remote_route(spec.cidr, &value)];
    if let Some(&(_, existing)) = checked.present.first() {
        if existing != value {
            bail!(
                "{} already goes to node {}; run `pod-net node del --cidr {}` first",
                spec.cidr,
                Ipv4Addr::from(existing.node_ip),
                spec.cidr
            );
        }
        // The same entry again: make sure the kernel's side is there too.
        peers::admit(datapath, &peers_of(&route))?;
        links.add_routes(&config, &route, &checked.routed)?;
        return Ok(AddOutcome::Unchanged);
    }
    add_checked(datapath, &links, std::slice::from_ref(spec), &checked)?;
    Ok(AddOutcome::Added)
}

/// Makes the checked new entries of `specs`: the peers first, then the
/// kernel's routes, then the map entries, so a fast-path entry never exists
/// without the kernel path beside it (a reader of the maps that then reads
/// the routes finds every entry's route). Any failure takes back what was
/// done.
fn add_checked(
    datapath: &mut Locked,
    links: &Links,
    specs: &[NodeSpec],
    checked: &Checked,
) -> Result<()> {
    let cidrs: Vec<Cidr> = specs.iter().map(|spec| spec.cidr).collect();
    let routes = remote_routes(&cidrs, &checked.values);
    let new_peers = peers::admit(datapath, &peers_of(&routes))?;
    if let Err(err) = links.add_routes(&datapath.config()?, &routes, &checked.routed) {
        // Leave the node as it was.
        checked.undo(links, &routes);
        let _ = peers::remove(datapath, new_peers);
        // In a batch, the failure names one entry of many: none went in.
        return Err(if specs.len() > 1 {
            err.context("nothing was added")
        } else {
            err
        });
    }
    if let Err(failure) = insert_new(datapath, &cidrs, &checked.values) {
        checked.undo(links, &routes);
        let _ = peers::remove(datapath, new_peers);
        return Err(failure.into_error(datapath, &cidrs));
    }
    Ok(())
}

/// Adds many new entries at once (what `apply` does, which holds the lock
/// from its plan to its last change): the maps written entry after entry
/// in one go, and every route on one netlink socket. A prefix already
/// present, or a full map, fails the whole call and leaves the entries as
/// they were.
pub fn add_many(datapath: &mut Locked, specs: &[NodeSpec]) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let config = datapath.config()?;
    let links = Links::of(&config)?;
    let checked = check(datapath, &config, &links, specs, &[])?;
    if let Some((cidr, _)) = checked.present.first() {
        bail!("{cidr} already has a remote entry; nothing was added");
    }
    add_checked(datapath, &links, specs, &checked)
}

/// Points existing entries at new values (a lease whose node, VTEP MAC or
/// mode changed), make before break: the new nodes' peer, neighbour and
/// FDB entries first, then each route replaced in place, then each map
/// entry overwritten; only then goes what the old values alone used. So no
/// prefix is ever without its route or its entry, where removing and
/// adding would leave it to the kernel's other routes in between. A
/// failure puts the old routes and values back.
pub fn replace_many(datapath: &mut Locked, specs: &[NodeSpec]) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let config = datapath.config()?;
    let links = Links::of(&config)?;
    let cidrs: Vec<Cidr> = specs.iter().map(|spec| spec.cidr).collect();
    let mut current: HashMap<Cidr, RemoteNode> = entries(datapath)?.into_iter().collect();
    let old: Vec<RemoteNode> = cidrs
        .iter()
        .map(|cidr| {
            current
                .get(cidr)
                .copied()
                .with_context(|| format!("no remote node entry for {cidr} to replace"))
        })
        .collect::<Result<_>>()?;
    let checked = check(datapath, &config, &links, specs, &cidrs)?;
    let routes = remote_routes(&cidrs, &checked.values);
    let old_routes = remote_routes(&cidrs, &old);
    let new_peers = peers::admit(datapath, &peers_of(&routes))?;
    let replaced = links
        .add_routes(&config, &routes, &checked.routed)
        .and_then(|()| overwrite(datapath, &cidrs, &checked.values));
    if let Err(err) = replaced {
        // Put back what was there (the routes replaced in place again).
        let _ = overwrite(datapath, &cidrs, &old);
        let _ = links.add_routes(&config, &old_routes, &checked.routed);
        let _ = peers::remove(datapath, new_peers);
        return Err(if specs.len() > 1 {
            err.context("nothing was replaced")
        } else {
            err
        });
    }
    // What only the old values used: their nodes' neighbour and FDB
    // entries, and peers that no entry names any more.
    current.extend(cidrs.iter().copied().zip(checked.values.iter().copied()));
    let remaining: Vec<RemoteRoute> = current
        .iter()
        .map(|(cidr, node)| remote_route(*cidr, node))
        .collect();
    let (gone, restore) = gone_nodes(&old_routes, &remaining);
    links.remove_routes(&[], &gone)?;
    links.set_nodes(&restore)?;
    let still_peers = peers_of(&remaining);
    let gone_peers: BTreeSet<Ipv4Addr> = peers_of(&old_routes)
        .into_iter()
        .filter(|node_ip| !still_peers.contains(node_ip))
        .collect();
    peers::remove(datapath, gone_peers)
}

/// The nodes of `routes` that `peer_nodes` must hold: those sending VXLAN.
fn peers_of(routes: &[RemoteRoute]) -> BTreeSet<Ipv4Addr> {
    routes
        .iter()
        .filter(|route| !route.direct)
        .map(|route| route.node_ip)
        .collect()
}

/// The route of each `cidrs[i] -> values[i]`.
fn remote_routes(cidrs: &[Cidr], values: &[RemoteNode]) -> Vec<RemoteRoute> {
    cidrs
        .iter()
        .zip(values)
        .map(|(cidr, value)| remote_route(*cidr, value))
        .collect()
}

/// Checks new entries without changing anything: against this node (see
/// [`crate::node::overlap`]) and against the entries already there, less `replaced`
/// (which the caller removes or replaces). One node IP has one
/// VTEP MAC and one mode, and one VTEP MAC one node IP; a node IP must not
/// lie inside a remote prefix, or the tunnel would carry its own underlay;
/// a direct node must be on an underlay subnet.
pub fn validate(datapath: &Datapath, specs: &[NodeSpec], replaced: &[Cidr]) -> Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let config = datapath.config()?;
    check(datapath, &config, &Links::of(&config)?, specs, replaced).map(drop)
}

/// What [`check`] learnt: the values to store, and what to undo with.
struct Checked {
    values: Vec<RemoteNode>,
    /// The new entries' prefixes already in the maps, with their values.
    present: Vec<(Cidr, RemoteNode)>,
    /// Prefixes pod-net routes already (replaced, not created).
    routed: BTreeSet<Cidr>,
    /// Node IPs the entries already there use.
    known_nodes: HashSet<[u8; 4]>,
}

impl Checked {
    /// Takes back the kernel side of a failed add: the routes it created
    /// and the neighbour and FDB entries of nodes that were new.
    fn undo(&self, links: &Links, routes: &[RemoteRoute]) {
        let created: Vec<RemoteRoute> = routes
            .iter()
            .filter(|route| !self.routed.contains(&route.cidr))
            .copied()
            .collect();
        let new_nodes: BTreeSet<tunnel::GoneNode> = routes
            .iter()
            .filter(|route| !route.direct && !self.known_nodes.contains(&route.node_ip.octets()))
            .map(|route| tunnel::GoneNode {
                node_ip: route.node_ip,
                vtep_mac: route.vtep_mac,
                last: true,
            })
            .collect();
        let new_nodes: Vec<tunnel::GoneNode> = new_nodes.into_iter().collect();
        let _ = links.remove_routes(&created, &new_nodes);
    }
}

fn check(
    datapath: &Datapath,
    config: &Config,
    links: &Links,
    specs: &[NodeSpec],
    replaced: &[Cidr],
) -> Result<Checked> {
    // In a batch, an error about a node IP names the entry.
    let many = specs.len() > 1;
    let at = |spec: &NodeSpec, error: anyhow::Error| {
        if many {
            error.context(spec.cidr.to_string())
        } else {
            error
        }
    };
    let values = specs
        .iter()
        .map(|spec| node_value(spec, config).map_err(|error| at(spec, error)))
        .collect::<Result<Vec<_>>>()?;

    let host = HostChecks::read(datapath, links)?;
    for spec in specs {
        host.check_direct(spec).map_err(|error| at(spec, error))?;
    }
    for spec in specs {
        host.view.check_prefix(spec.cidr)?;
        host.view
            .check_node_ip(spec.node_ip)
            .map_err(|error| at(spec, error))?;
    }

    let replaced: HashSet<Cidr> = replaced.iter().copied().collect();
    let new_cidrs: HashSet<Cidr> = specs.iter().map(|spec| spec.cidr).collect();
    let current: Vec<(Cidr, RemoteNode)> = entries(datapath)?
        .into_iter()
        .filter(|(cidr, _)| !replaced.contains(cidr))
        .collect();
    let mut index = NodeIndex::default();
    let mut present = Vec::new();
    for (cidr, node) in &current {
        if new_cidrs.contains(cidr) {
            // An entry being added again is no conflict with itself.
            present.push((*cidr, *node));
        } else {
            index.insert(*cidr, node);
        }
    }
    for (spec, value) in specs.iter().zip(&values) {
        index.admit(spec, value)?;
    }
    Ok(Checked {
        values,
        present,
        routed: host
            .routes
            .iter()
            .filter(|route| route.is_pod_nets())
            .map(|route| route.cidr)
            .collect(),
        known_nodes: current.iter().map(|(_, node)| node.node_ip).collect(),
    })
}

/// This node as the checks of a new entry see it, read once: its
/// addresses, routes, pods and underlay. The checks need no other entry.
pub struct HostChecks {
    view: HostView,
    routes: Vec<tunnel::KernelRoute>,
    addresses: Vec<netdev::HostAddress>,
    underlay: Link,
}

impl HostChecks {
    /// Reads the node.
    pub fn new(datapath: &Datapath) -> Result<Self> {
        let config = datapath.config()?;
        Self::read(datapath, &Links::of(&config)?)
    }

    fn read(datapath: &Datapath, links: &Links) -> Result<Self> {
        let mut routes = tunnel::main_routes()?;
        if !links.owned {
            // flanneld's routes to other nodes are the kernel path the
            // entries stand beside, not routes in their way.
            routes.retain(|route| !links.is_flannels(route));
        }
        let pods = datapath
            .endpoint_entries()?
            .iter()
            .map(|(key, _)| endpoint_ip(key))
            .collect();
        let addresses = netdev::all_addresses()?;
        Ok(Self {
            view: HostView::new(
                addresses.clone(),
                routes.clone(),
                pods,
                netdev::link_names()?,
            ),
            routes,
            addresses,
            underlay: links.underlay.clone(),
        })
    }

    /// Refuses an entry this node cannot take, whatever the other entries:
    /// a prefix over its own addresses, pods or routes, a node IP that is
    /// not another machine's, a direct node off the underlay's subnets.
    pub fn check(&self, spec: &NodeSpec) -> Result<()> {
        self.check_direct(spec)?;
        self.view.check_prefix(spec.cidr)?;
        self.view.check_node_ip(spec.node_ip)
    }

    /// A direct node must be on one of the underlay's subnets.
    fn check_direct(&self, spec: &NodeSpec) -> Result<()> {
        if spec.mode == Mode::Direct {
            direct::check_on_link(&self.underlay, &self.addresses, spec.node_ip)?;
        }
        Ok(())
    }
}

/// The rules between entries, checked as each one goes in: one node IP
/// has one VTEP MAC and one mode, one VTEP MAC one node IP, and no node IP
/// lies inside a remote prefix (the tunnel would carry its own underlay).
/// An entry that breaks a rule is refused and leaves the index as it was,
/// so the entries already in always stand.
#[derive(Debug, Default)]
pub struct NodeIndex {
    mac_of: HashMap<[u8; 4], ([u8; 6], Cidr)>,
    mode_of: HashMap<[u8; 4], (Mode, Cidr)>,
    node_of: HashMap<[u8; 6], ([u8; 4], Cidr)>,
    /// IPv4 prefixes, and the lengths among them.
    prefixes: HashSet<Cidr>,
    lengths: BTreeSet<u8>,
    /// Node IPs, sorted.
    node_ips: BTreeSet<IpAddr>,
}

impl NodeIndex {
    /// Takes an entry as it is, unchecked (one already stored).
    pub fn insert(&mut self, cidr: Cidr, node: &RemoteNode) {
        self.mac_of
            .entry(node.node_ip)
            .or_insert((node.vtep_mac, cidr));
        self.mode_of
            .entry(node.node_ip)
            .or_insert((Mode::of(node), cidr));
        self.node_of
            .entry(node.vtep_mac)
            .or_insert((node.node_ip, cidr));
        if cidr.addr.is_ipv4() {
            self.prefixes.insert(cidr);
            self.lengths.insert(cidr.prefix_len);
        }
        self.node_ips.insert(IpAddr::from(node.node_ip));
    }

    /// Checks `spec` (stored as `value`) against the entries in, and takes
    /// it if it breaks no rule.
    pub fn admit(&mut self, spec: &NodeSpec, value: &RemoteNode) -> Result<()> {
        let mac = MacAddr(value.vtep_mac);
        if let Some((other, cidr)) = self.mode_of.get(&value.node_ip)
            && *other != spec.mode
        {
            bail!(
                "node {} is already reached by {other} (for {cidr}); one node has one mode, so \
                 {} cannot go to it by {}",
                spec.node_ip,
                spec.cidr,
                spec.mode
            );
        }
        if let Some((other, cidr)) = self.mac_of.get(&value.node_ip)
            && *other != value.vtep_mac
        {
            bail!(
                "node {} already has VTEP MAC {} (for {cidr}); one node has one VTEP MAC, so \
                 {} cannot use {mac}",
                spec.node_ip,
                MacAddr(*other),
                spec.cidr
            );
        }
        if let Some((other, cidr)) = self.node_of.get(&value.vtep_mac)
            && *other != value.node_ip
        {
            bail!(
                "VTEP MAC {mac} is already node {}'s (for {cidr}); {} via node {} needs \
                 another one",
                Ipv4Addr::from(*other),
                spec.cidr,
                spec.node_ip
            );
        }
        let own = spec.cidr.addr.is_ipv4().then_some(spec.cidr);
        let inside = self
            .lengths
            .iter()
            .chain(own.as_ref().map(|cidr| &cidr.prefix_len))
            .map(|&len| Cidr::masked(spec.node_ip.into(), len))
            .find(|cidr| self.prefixes.contains(cidr) || Some(*cidr) == own);
        if let Some(cidr) = inside {
            bail!(
                "node IP {} lies inside the remote prefix {cidr}: the tunnel cannot carry its \
                 own underlay",
                spec.node_ip
            );
        }
        let first_from = self.node_ips.range(spec.cidr.addr..).next();
        if let Some(node_ip) = first_from.filter(|ip| spec.cidr.contains(**ip)) {
            bail!(
                "{} contains node IP {node_ip}: the tunnel cannot carry its own underlay",
                spec.cidr
            );
        }
        self.insert(spec.cidr, value);
        Ok(())
    }
}

/// Removes the entry for exactly `cidr`. Afterwards traffic to it is no
/// longer encapsulated, and the kernel answers it as unroutable.
pub fn del(datapath: &mut Locked, cidr: Cidr) -> Result<NodeEntry> {
    let mut removed = del_many(datapath, &[cidr])?;
    removed
        .pop()
        .with_context(|| format!("no remote node entry for {cidr}"))
}

/// Removes the entries for exactly these prefixes, all or none: a prefix
/// with no entry fails the call before anything changes. The map entries
/// go first, then the kernel's routes, so no fast-path entry outlives its
/// kernel path.
pub fn del_many(datapath: &mut Locked, cidrs: &[Cidr]) -> Result<Vec<NodeEntry>> {
    if cidrs.is_empty() {
        return Ok(Vec::new());
    }
    let config = datapath.config()?;
    let mut current: HashMap<Cidr, RemoteNode> = entries(datapath)?.into_iter().collect();
    let mut removed = Vec::with_capacity(cidrs.len());
    for &cidr in cidrs {
        let node = current
            .remove(&cidr)
            .with_context(|| format!("no remote node entry for {cidr}"))?;
        removed.push((cidr, node));
    }
    if let Err((done, error)) = delete(datapath, cidrs) {
        // Put back what went, so the call changes nothing.
        let was: HashMap<Cidr, RemoteNode> = removed.iter().copied().collect();
        let (cidrs, values): (Vec<Cidr>, Vec<RemoteNode>) = done
            .iter()
            .filter_map(|cidr| was.get(cidr).map(|node| (*cidr, *node)))
            .unzip();
        let _ = insert_new(datapath, &cidrs, &values);
        return Err(error.context("removing remote entries"));
    }
    // A node stops being a peer with its last prefix (each node once: a
    // node's 10,000 pods are one peer).
    let still_used: HashSet<[u8; 4]> = current.values().map(|node| node.node_ip).collect();
    let gone_peers: BTreeSet<Ipv4Addr> = removed
        .iter()
        .filter(|(_, node)| !still_used.contains(&node.node_ip))
        .map(|(_, node)| Ipv4Addr::from(node.node_ip))
        .collect();
    peers::remove(datapath, gone_peers)?;
    if let Ok(links) = Links::of(&config) {
        let routes: Vec<RemoteRoute> = removed
            .iter()
            .map(|(cidr, node)| remote_route(*cidr, node))
            .collect();
        let remaining: Vec<RemoteRoute> = current
            .iter()
            .map(|(cidr, node)| remote_route(*cidr, node))
            .collect();
        let (gone, restore) = gone_nodes(&routes, &remaining);
        links.remove_routes(&routes, &gone)?;
        // A node left with another MAC (entries from before one node IP
        // had one MAC) gets its neighbour entry back.
        links.set_nodes(&restore)?;
    }
    Ok(removed
        .iter()
        .map(|(cidr, node)| node_entry(*cidr, node))
        .collect())
}

/// The (node, VTEP MAC) pairs of VXLAN `removed` that no `remaining` entry
/// uses, and the remaining entries of those nodes that are still in use,
/// whose neighbour and FDB entries must be set again. Direct nodes have
/// neither.
fn gone_nodes(
    removed: &[RemoteRoute],
    remaining: &[RemoteRoute],
) -> (Vec<tunnel::GoneNode>, Vec<RemoteRoute>) {
    let removed: Vec<&RemoteRoute> = removed.iter().filter(|route| !route.direct).collect();
    let remaining: Vec<&RemoteRoute> = remaining.iter().filter(|route| !route.direct).collect();
    let pairs: HashSet<(Ipv4Addr, [u8; 6])> = remaining
        .iter()
        .map(|route| (route.node_ip, route.vtep_mac.0))
        .collect();
    let nodes: HashSet<Ipv4Addr> = remaining.iter().map(|route| route.node_ip).collect();
    let gone: BTreeSet<tunnel::GoneNode> = removed
        .iter()
        .filter(|route| !pairs.contains(&(route.node_ip, route.vtep_mac.0)))
        .map(|route| tunnel::GoneNode {
            node_ip: route.node_ip,
            vtep_mac: route.vtep_mac,
            last: !nodes.contains(&route.node_ip),
        })
        .collect();
    let still_used: HashSet<Ipv4Addr> = gone
        .iter()
        .filter(|node| !node.last)
        .map(|node| node.node_ip)
        .collect();
    let restore = remaining
        .iter()
        .filter(|route| still_used.contains(&route.node_ip))
        .map(|route| **route)
        .collect();
    (gone.into_iter().collect(), restore)
}

/// Which map holds a prefix: one pod's address goes in `remote_pods`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Pods,
    Cidrs,
}

impl Table {
    fn of(cidr: Cidr) -> Self {
        if cidr.is_single_address() {
            Self::Pods
        } else {
            Self::Cidrs
        }
    }

    const fn map_name(self) -> &'static str {
        match self {
            Self::Pods => map_table::REMOTE_PODS.name,
            Self::Cidrs => map_table::REMOTE_NODES.name,
        }
    }

    /// The capacity `load` sizes it by.
    const fn load_capacity(self) -> Capacity {
        match self {
            Self::Pods => Capacity::RemotePods,
            Self::Cidrs => Capacity::RemoteCidrs,
        }
    }

    /// The map, for the batched calls.
    fn fd(self, datapath: &Datapath) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Pods => datapath.remote_pods_fd(),
            Self::Cidrs => datapath.remotes_fd(),
        }
    }

    fn capacity(self, datapath: &Datapath) -> u32 {
        match self {
            Self::Pods => datapath.remote_pods_capacity,
            Self::Cidrs => datapath.remotes_capacity,
        }
    }
}

/// Why [`insert_new`] stopped; it has undone what it wrote.
enum InsertFailure {
    /// `cidrs[index]` is already there.
    Exists(usize),
    /// A map filled up at `cidrs[index]`.
    Full {
        table: Table,
        index: usize,
    },
    Other(anyhow::Error),
}

impl InsertFailure {
    fn into_error(self, datapath: &Datapath, cidrs: &[Cidr]) -> anyhow::Error {
        match self {
            Self::Exists(index) => anyhow::anyhow!(
                "{} already has a remote entry; nothing was added",
                cidrs[index]
            ),
            Self::Full { table, index } => {
                let wanted = cidrs
                    .iter()
                    .filter(|cidr| Table::of(**cidr) == table)
                    .count();
                let fit = cidrs[..index]
                    .iter()
                    .filter(|cidr| Table::of(**cidr) == table)
                    .count();
                NodeError::MapFull {
                    capacity: table.load_capacity(),
                    size: table.capacity(datapath),
                    fitted: (cidrs.len() > 1).then_some((fit, wanted)),
                }
                .into()
            }
            Self::Other(error) => error,
        }
    }
}

/// Writes `cidrs[i] -> values[i]`, each into its table, refusing (with
/// `BPF_NOEXIST`) to overwrite. On any failure, removes what it wrote.
fn insert_new(
    datapath: &Datapath,
    cidrs: &[Cidr],
    values: &[RemoteNode],
) -> Result<(), InsertFailure> {
    let mut written: Vec<Cidr> = Vec::new();
    for table in [Table::Pods, Table::Cidrs] {
        let (indices, table_values): (Vec<usize>, Vec<RemoteNode>) = cidrs
            .iter()
            .zip(values)
            .enumerate()
            .filter(|(_, (cidr, _))| Table::of(**cidr) == table)
            .map(|(index, (_, value))| (index, *value))
            .unzip();
        let selected: Vec<Cidr> = indices.iter().map(|&index| cidrs[index]).collect();
        let fd = table.fd(datapath);
        let result = match table {
            Table::Pods => map_batch::insert_new(fd, &pod_keys(&selected), &table_values),
            Table::Cidrs => map_batch::insert_new(fd, &trie_keys(&selected), &table_values),
        };
        if let Err(BatchError { done, error }) = result {
            written.extend_from_slice(&selected[..done]);
            let _ = delete(datapath, &written);
            let index = indices.get(done).copied().unwrap_or_default();
            return Err(match error.raw_os_error() {
                Some(libc::EEXIST) => InsertFailure::Exists(index),
                Some(libc::ENOSPC | libc::E2BIG) => InsertFailure::Full { table, index },
                _ => InsertFailure::Other(anyhow::Error::new(error).context(format!(
                    "writing {} to {}",
                    cidrs[index],
                    table.map_name()
                ))),
            });
        }
        written.extend(selected);
    }
    Ok(())
}

/// Overwrites `cidrs[i] -> values[i]`, each in its table; every prefix
/// must be there.
fn overwrite(datapath: &Datapath, cidrs: &[Cidr], values: &[RemoteNode]) -> Result<()> {
    for table in [Table::Pods, Table::Cidrs] {
        let (selected, table_values): (Vec<Cidr>, Vec<RemoteNode>) = cidrs
            .iter()
            .zip(values)
            .filter(|(cidr, _)| Table::of(**cidr) == table)
            .map(|(cidr, value)| (*cidr, *value))
            .unzip();
        let fd = table.fd(datapath);
        let result = match table {
            Table::Pods => map_batch::overwrite(fd, &pod_keys(&selected), &table_values),
            Table::Cidrs => map_batch::overwrite(fd, &trie_keys(&selected), &table_values),
        };
        if let Err(BatchError { done, error }) = result {
            return Err(anyhow::Error::new(error).context(format!(
                "replacing {} in {}",
                selected[done],
                table.map_name()
            )));
        }
    }
    Ok(())
}

/// Deletes exactly these prefixes, each from its table. On failure,
/// returns the ones already deleted.
fn delete(datapath: &Datapath, cidrs: &[Cidr]) -> Result<(), (Vec<Cidr>, anyhow::Error)> {
    let mut deleted = Vec::new();
    for table in [Table::Pods, Table::Cidrs] {
        let selected: Vec<Cidr> = cidrs
            .iter()
            .copied()
            .filter(|cidr| Table::of(*cidr) == table)
            .collect();
        if selected.is_empty() {
            continue;
        }
        let fd = table.fd(datapath);
        let result = match table {
            Table::Pods => map_batch::delete(fd, &pod_keys(&selected)),
            Table::Cidrs => map_batch::delete(fd, &trie_keys(&selected)),
        };
        if let Err(BatchError { done, error }) = result {
            deleted.extend_from_slice(&selected[..done]);
            let error =
                anyhow::Error::new(error).context(format!("removing from {}", table.map_name()));
            return Err((deleted, error));
        }
        deleted.extend(selected);
    }
    Ok(())
}

/// The stored value for `spec`, after the checks no map can make. `apply`
/// runs it on every entry of a file before changing anything.
pub fn node_value(spec: &NodeSpec, config: &Config) -> Result<RemoteNode> {
    if let Some(mac) = spec.vtep_mac
        && (mac.is_zero() || mac.is_multicast())
    {
        bail!("VTEP MAC {mac} is not a unicast address");
    }
    if spec.node_ip == Ipv4Addr::from(config.node_ip) {
        bail!("{} is this node's own underlay address", spec.node_ip);
    }
    if spec.mode == Mode::Direct && spec.vtep_mac.is_some() {
        bail!(
            "{} goes to node {} directly, without VXLAN, so it takes no VTEP MAC",
            spec.cidr,
            spec.node_ip
        );
    }
    let vtep_mac_flag = if spec.vtep_mac.is_some() {
        REMOTE_F_VTEP_MAC
    } else {
        0
    };
    let direct_flag = match spec.mode {
        Mode::Vxlan => 0,
        Mode::Direct => REMOTE_F_DIRECT,
    };
    Ok(RemoteNode {
        node_ip: spec.node_ip.octets(),
        flags: vtep_mac_flag | direct_flag,
        vtep_mac: spec
            .vtep_mac
            .map_or_else(|| derived_vtep_mac(spec.node_ip.octets()), |mac| mac.0),
        pad: [0; 2],
    })
}

fn remote_route(cidr: Cidr, node: &RemoteNode) -> RemoteRoute {
    RemoteRoute {
        cidr,
        node_ip: Ipv4Addr::from(node.node_ip),
        vtep_mac: MacAddr(node.vtep_mac),
        direct: Mode::of(node) == Mode::Direct,
    }
}

/// The nodes the VXLAN entries send to: the peers whose VXLAN is opened.
pub fn vxlan_nodes(datapath: &Datapath) -> Result<BTreeSet<Ipv4Addr>> {
    Ok(entries(datapath)?
        .iter()
        .filter(|(_, node)| Mode::of(node) == Mode::Vxlan)
        .map(|(_, node)| Ipv4Addr::from(node.node_ip))
        .collect())
}

/// The bytes pods' packets to other nodes grow by: VXLAN's, unless every
/// remote entry is direct, when pods may use the underlay's full MTU. With
/// no entries yet, VXLAN's: the first node may well need it.
pub fn tunnel_overhead(datapath: &Datapath) -> Result<u32> {
    let entries = entries(datapath)?;
    let all_direct = !entries.is_empty()
        && entries
            .iter()
            .all(|(_, node)| Mode::of(node) == Mode::Direct);
    Ok(if all_direct { 0 } else { VXLAN_OVERHEAD })
}

/// Whether some remote entry is reached over VXLAN.
pub fn has_vxlan_peers(datapath: &Datapath) -> Result<bool> {
    Ok(entries(datapath)?
        .iter()
        .any(|(_, node)| Mode::of(node) == Mode::Vxlan))
}

/// The direct entries, as the routes pod-net keeps for them on the
/// underlay: none beside flannel, whose routes they are.
pub fn direct_routes(datapath: &Datapath) -> Result<Vec<RemoteRoute>> {
    if datapath.config()?.beside_flannel() {
        return Ok(Vec::new());
    }
    Ok(entries(datapath)?
        .iter()
        .filter(|(_, node)| Mode::of(node) == Mode::Direct)
        .map(|(cidr, node)| remote_route(*cidr, node))
        .collect())
}

/// The prefixes of every remote entry, unsorted.
pub fn cidrs(datapath: &Datapath) -> Result<Vec<Cidr>> {
    Ok(entries(datapath)?
        .into_iter()
        .map(|(cidr, _)| cidr)
        .collect())
}

/// Every remote entry, sorted by prefix.
pub fn list(datapath: &Datapath) -> Result<Vec<NodeEntry>> {
    let mut list: Vec<NodeEntry> = entries(datapath)?
        .iter()
        .map(|(cidr, node)| node_entry(*cidr, node))
        .collect();
    list.sort_by_key(|entry| entry.cidr);
    Ok(list)
}

fn node_entry(cidr: Cidr, node: &RemoteNode) -> NodeEntry {
    NodeEntry {
        cidr,
        node_ip: Ipv4Addr::from(node.node_ip),
        vtep_mac: MacAddr(node.vtep_mac),
        vtep_mac_given: node.flags & REMOTE_F_VTEP_MAC != 0,
        mode: Mode::of(node),
    }
}

/// The interfaces the kernel's routes for remote entries leave by: the
/// tunnel device for VXLAN nodes, the underlay for direct ones. Beside
/// flannel the routes, neighbour and FDB entries are flanneld's: they are
/// read, never written.
struct Links {
    tunnel: Link,
    underlay: Link,
    owned: bool,
}

impl Links {
    /// The links of a datapath loaded with an underlay.
    fn of(config: &Config) -> Result<Self> {
        if !config.has_underlay() {
            bail!(
                "pod-net was loaded without an underlay; run `pod-net load --underlay IFACE \
                 --node-ip IPV4` first"
            );
        }
        let name = tunnel::kernel_device_name(config);
        let tunnel = netdev::link_by_name(&name)?.with_context(|| {
            if config.beside_flannel() {
                format!("flanneld's device {name} is missing: is flanneld running?")
            } else {
                format!(
                    "the tunnel device {name} is missing; run `pod-net load` again to recreate it"
                )
            }
        })?;
        let underlay = netdev::link_by_index(config.underlay_ifindex)?.with_context(|| {
            format!(
                "the underlay (ifindex {}) is gone; run `pod-net load` again",
                config.underlay_ifindex
            )
        })?;
        Ok(Self {
            tunnel,
            underlay,
            owned: !config.beside_flannel(),
        })
    }

    /// Whether `route` is flanneld's route to another node: through its
    /// device, or via a gateway out of the underlay (`DirectRouting`).
    fn is_flannels(&self, route: &tunnel::KernelRoute) -> bool {
        route.oif == Some(self.tunnel.index)
            || (route.oif == Some(self.underlay.index) && route.gateway.is_some())
    }

    /// Sets the neighbour and FDB entries of `routes`' nodes again.
    fn set_nodes(&self, routes: &[RemoteRoute]) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        tunnel::set_nodes(&self.tunnel, routes)
    }

    /// Routes `routes` each its way. Direct IPv6 prefixes need this node's
    /// link-local stand-in on the underlay: direct peers route to theirs.
    fn add_routes(
        &self,
        config: &Config,
        routes: &[RemoteRoute],
        ours: &BTreeSet<Cidr>,
    ) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        let (direct, vxlan): (Vec<RemoteRoute>, Vec<RemoteRoute>) =
            routes.iter().partition(|route| route.direct);
        if !direct.is_empty() {
            direct::ensure_link_local(&self.underlay, Ipv4Addr::from(config.node_ip), &direct)?;
        }
        tunnel::add_routes(&self.tunnel, &vxlan, ours)?;
        direct::add_routes(&self.underlay, &direct, ours)
    }

    /// Removes the routes of `routes` each from its link, and the
    /// neighbour and FDB entries of `gone` VXLAN nodes.
    fn remove_routes(&self, routes: &[RemoteRoute], gone: &[tunnel::GoneNode]) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        let (direct, vxlan): (Vec<RemoteRoute>, Vec<RemoteRoute>) =
            routes.iter().partition(|route| route.direct);
        tunnel::remove_routes(&self.tunnel, &vxlan, gone)?;
        direct::remove_routes(&self.underlay, &direct)
    }
}

/// The trie key for a prefix (IPv4 is IPv4-mapped: 96 more bits).
fn trie_key(cidr: Cidr) -> Key<RemoteAddr> {
    let mapped_bits = if cidr.addr.is_ipv4() {
        IPV4_MAPPED_PREFIX_BITS
    } else {
        0
    };
    Key::new(mapped_bits + u32::from(cidr.prefix_len), mapped(cidr))
}

fn trie_keys(cidrs: &[Cidr]) -> Vec<Key<RemoteAddr>> {
    cidrs.iter().copied().map(trie_key).collect()
}

fn pod_keys(cidrs: &[Cidr]) -> Vec<RemoteAddr> {
    cidrs.iter().copied().map(mapped).collect()
}

/// The 16-byte form of a prefix's address (IPv4-mapped for IPv4).
fn mapped(cidr: Cidr) -> RemoteAddr {
    match cidr.addr {
        IpAddr::V4(addr) => RemoteAddr::ipv4_mapped(addr.octets()),
        IpAddr::V6(addr) => RemoteAddr {
            addr: addr.octets(),
        },
    }
}

/// Every (prefix, node) in both tables.
fn entries(datapath: &Datapath) -> Result<Vec<(Cidr, RemoteNode)>> {
    // Both maps can be big (a million pods, 65,536 CIDRs): read in batches.
    let pods = hash_entries(&datapath.remote_pods)
        .context("reading remote_pods")?
        .into_iter()
        // A single address: 128 bits, IPv4-mapped or not.
        .map(|(addr, value)| (cidr_of(128, &addr), value));
    let cidrs = datapath
        .remote_node_entries()
        .context("reading remote_nodes")?
        .into_iter()
        .map(|(key, value)| (cidr_of(key.prefix_len, &key.addr), value));
    Ok(pods.chain(cidrs).collect())
}

/// The prefix a trie key stands for. The kernel keeps prefix lengths at
/// most 128 for a 16-byte key, so they fit a `u8`.
fn cidr_of(prefix_len: u32, addr: &RemoteAddr) -> Cidr {
    let addr = &addr.addr;
    let prefix_len = u8::try_from(prefix_len).unwrap_or(u8::MAX);
    let mapped_bits = u8::try_from(IPV4_MAPPED_PREFIX_BITS).unwrap_or(u8::MAX);
    if prefix_len >= mapped_bits && addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff] {
        Cidr {
            addr: IpAddr::from([addr[12], addr[13], addr[14], addr[15]]),
            prefix_len: prefix_len - mapped_bits,
        }
    } else {
        Cidr {
            addr: IpAddr::from(*addr),
            prefix_len,
        }
    }
}
