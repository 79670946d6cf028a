//! Registering pods on this node: the `local_endpoints` entries and the
//! program attachment on each pod's host veth, kept in step.
use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::MapError;
use pod_net_common::{
    Endpoint, EndpointKey,
    endpoint::{CONTAINER_ID_LEN, ENDPOINT_F_NO_BYPASS, IFNAME_LEN},
    event::CONFIG_F_BIG_TCP,
    program_names,
};
use serde::Serialize;

use crate::{
    crashpoint,
    datapath::{
        Datapath, Locked,
        attach::{self, AttachMode, Attached},
        endpoint_ip, endpoint_key, is_missing_key, xdp,
    },
    error::{Capacity, NodeError},
    mac::MacAddr,
    node::{big_tcp, mtu, remotes},
    sys::{
        netdev::{self, Link},
        netns,
    },
};

/// A pod to register, as the CLI or the CNI plugin describes it.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub ip: IpAddr,
    pub veth: String,
    /// The pod's MAC; read from the veth peer when absent.
    pub mac: Option<MacAddr>,
    pub container_id: String,
    pub pod_ifname: String,
    /// Overwrite an entry another owner left for this IP. CNI ADD does: the
    /// IP was just allocated to this pod, so any older entry is stale.
    pub replace: bool,
    /// Keep the pod's traffic on the kernel path (`ENDPOINT_F_NO_BYPASS`).
    pub no_bypass: bool,
    /// The pod's network namespace file, when the caller knows it (CNI's
    /// `CNI_NETNS`): tried first wherever `add` enters the pod's namespace.
    pub pod_netns: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    /// The same entry was already there, and the program attached.
    Unchanged,
}

/// What `add` did, and what it noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub outcome: AddOutcome,
    /// Set when the pod's MTU plus VXLAN exceeds the underlay's.
    pub mtu_warning: Option<String>,
}

/// One registered pod address, as `pod list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodEntry {
    pub ip: IpAddr,
    pub ifindex: u32,
    /// Current name of `ifindex`, if the interface still exists.
    pub veth: Option<String>,
    pub mac: MacAddr,
    pub gateway_mac: MacAddr,
    pub container_id: String,
    pub pod_ifname: String,
    /// Registered with `--no-bypass`: the kernel path carries its traffic.
    pub no_bypass: bool,
}

/// Registers `spec`: resolves the veth and MACs, attaches the program, and
/// stores the entry. Adding the same pod again changes nothing.
pub fn add(datapath: &mut Locked, spec: &PodSpec) -> Result<Added> {
    refuse_node_address(spec.ip)?;
    add_checked(datapath, spec)
}

/// Why registering a pod's addresses failed, and at which address.
#[derive(Debug)]
pub enum PodAddError {
    /// The address is one of the node's own: nothing was registered.
    NodeAddress { ip: IpAddr, error: anyhow::Error },
    /// Registering `ip` failed (the addresses before it are registered).
    Register { ip: IpAddr, error: anyhow::Error },
}

/// Registers every address of one pod (a dual-stack pod has two), under
/// one lock. All of them are checked against the node's own addresses
/// before the first is registered, so that refusal leaves nothing behind.
pub fn add_pod(datapath: &mut Locked, specs: &[PodSpec]) -> Result<Vec<Added>, PodAddError> {
    for spec in specs {
        refuse_node_address(spec.ip)
            .map_err(|error| PodAddError::NodeAddress { ip: spec.ip, error })?;
    }
    specs
        .iter()
        .map(|spec| {
            add_checked(datapath, spec)
                .map_err(|error| PodAddError::Register { ip: spec.ip, error })
        })
        .collect()
}

/// Registers `spec`, whose address is not the node's own.
fn add_checked(datapath: &mut Locked, spec: &PodSpec) -> Result<Added> {
    let ip = spec.ip;
    let container_id = fixed_field::<CONTAINER_ID_LEN>("container ID", &spec.container_id)?;
    let pod_ifname = fixed_field::<IFNAME_LEN>("pod interface name", &spec.pod_ifname)?;
    let pins = datapath.pins().clone();
    let veth = netdev::require_veth(&spec.veth)?;
    let mac = match spec.mac {
        Some(mac) => mac,
        None => peer_mac(&veth)?,
    };
    if mac.is_zero() || mac.is_multicast() {
        bail!("pod MAC {mac} is not a unicast address");
    }
    let endpoint = Endpoint {
        ifindex: veth.index,
        flags: if spec.no_bypass {
            ENDPOINT_F_NO_BYPASS
        } else {
            0
        },
        mac: mac.0,
        gateway_mac: gateway_mac(&veth)?.0,
        container_id,
        pod_ifname,
    };
    let key = endpoint_key(ip);

    let existing = match datapath.endpoints.get(&key, 0) {
        Ok(existing) => Some(existing),
        Err(MapError::KeyNotFound) => None,
        Err(err) => return Err(err).context("reading local_endpoints"),
    };
    if let Some(existing) = existing
        && existing != endpoint
        && !spec.replace
    {
        return Err(NodeError::AlreadyRegistered {
            ip,
            ifindex: existing.ifindex,
            mac: MacAddr(existing.mac),
            owner: owner_suffix(&existing),
        }
        .into());
    }
    let pod_netns = spec.pod_netns.as_deref();
    refuse_address_not_on_pod(ip, &veth, pod_netns)?;

    let config = datapath.config()?;
    let mtu_warning =
        mtu::pod_mtu_warning(&config, || remotes::tunnel_overhead(datapath), veth.index)?;
    if config.flags & CONFIG_F_BIG_TCP != 0 {
        big_tcp::set_pod(veth.index, big_tcp::BIG_SIZE, pod_netns)?;
    }
    if xdp::is_on(&pins)? {
        xdp::prepare_pod(datapath, &veth, pod_netns)?;
    }
    let mode = AttachMode::of(&config);
    let attached = attach::attach(&pins, mode, program_names::POD_EGRESS, &veth)?;
    crashpoint::here(crashpoint::POD_ADD_ATTACHED);
    if existing == Some(endpoint) {
        return Ok(Added {
            outcome: AddOutcome::Unchanged,
            mtu_warning,
        });
    }
    if let Err(err) = datapath.endpoints.insert(key, endpoint, 0) {
        if attached == Attached::New {
            // Leave the node as it was before this call.
            let _ = attach::detach(&pins, mode, program_names::POD_EGRESS, veth.index);
        }
        return Err(map_insert_error(err, datapath.endpoints_capacity));
    }
    Ok(Added {
        outcome: AddOutcome::Added,
        mtu_warning,
    })
}

/// Removes the entry for `ip`, and the attachment when no other address of
/// the pod uses that veth. Returns the removed entry.
pub fn del_by_ip(datapath: &mut Locked, ip: IpAddr) -> Result<PodEntry> {
    let key = endpoint_key(ip);
    let endpoint = match datapath.endpoints.get(&key, 0) {
        Ok(endpoint) => endpoint,
        Err(MapError::KeyNotFound) => bail!("no pod with IP {ip} is registered"),
        Err(err) => return Err(err).context("reading local_endpoints"),
    };
    remove_and_detach(datapath, &[(key, endpoint)])?;
    Ok(pod_entry(&key, &endpoint, &netdev::link_names()?))
}

/// Removes every entry registered under `container_id`. Returns them.
pub fn del_by_container(datapath: &mut Locked, container_id: &str) -> Result<Vec<PodEntry>> {
    let wanted = fixed_field::<CONTAINER_ID_LEN>("container ID", container_id)?;
    let removed = remove_matching(datapath, |endpoint| endpoint.container_id == wanted)?;
    if removed.is_empty() {
        bail!("no pod with container ID {container_id:?} is registered");
    }
    let names = netdev::link_names()?;
    Ok(removed
        .iter()
        .map(|(key, endpoint)| pod_entry(key, endpoint, &names))
        .collect())
}

/// Removes every entry `doomed` selects, detaching the program where no
/// entry is left on a veth, and returns them. Selecting nothing is not an
/// error.
pub fn remove_matching(
    datapath: &mut Locked,
    doomed: impl Fn(&Endpoint) -> bool,
) -> Result<Vec<(EndpointKey, Endpoint)>> {
    let selected: Vec<_> = datapath
        .endpoint_entries()?
        .into_iter()
        .filter(|(_, endpoint)| doomed(endpoint))
        .collect();
    remove_and_detach(datapath, &selected)?;
    Ok(selected)
}

/// The owner fields of an entry, as text.
#[must_use]
pub fn owner(endpoint: &Endpoint) -> (String, String) {
    (
        field_text(&endpoint.container_id),
        field_text(&endpoint.pod_ifname),
    )
}

/// Removes the `doomed` entries, then every `pod_egress` link on a veth no
/// entry uses any more: the doomed pods' own, and any an add that was
/// killed between attaching and storing its entry left behind.
fn remove_and_detach(datapath: &mut Locked, doomed: &[(EndpointKey, Endpoint)]) -> Result<()> {
    let pins = datapath.pins().clone();
    for (key, _) in doomed {
        match datapath.endpoints.remove(key) {
            Ok(()) => {}
            Err(err) if is_missing_key(&err) => {}
            Err(err) => return Err(err).context("removing from local_endpoints"),
        }
    }
    crashpoint::here(crashpoint::POD_DEL_REMOVED);
    let in_use: HashSet<u32> = datapath
        .endpoint_entries()?
        .iter()
        .map(|(_, endpoint)| endpoint.ifindex)
        .collect();
    let mode = AttachMode::of(&datapath.config()?);
    for (_, endpoint) in doomed {
        if !in_use.contains(&endpoint.ifindex) {
            xdp::forget_pod(datapath, endpoint.ifindex)?;
            attach::detach(&pins, mode, program_names::POD_EGRESS, endpoint.ifindex)?;
        }
    }
    // Pinned links of no pod: left by a del cut short after the entries
    // went. (A filter left that way goes with its veth, or with `gc`.)
    for link in pins.pinned_links(program_names::POD_EGRESS)? {
        if !in_use.contains(&link.ifindex) {
            attach::unpin(&pins, program_names::POD_EGRESS, link.ifindex)?;
        }
    }
    Ok(())
}

/// Every registered pod address.
pub fn list(datapath: &Datapath) -> Result<Vec<PodEntry>> {
    let names = netdev::link_names()?;
    Ok(datapath
        .endpoint_entries()?
        .iter()
        .map(|(key, endpoint)| pod_entry(key, endpoint, &names))
        .collect())
}

fn pod_entry(
    key: &EndpointKey,
    endpoint: &Endpoint,
    names: &std::collections::HashMap<u32, String>,
) -> PodEntry {
    let veth = names.get(&endpoint.ifindex).cloned();
    PodEntry {
        ip: endpoint_ip(key),
        ifindex: endpoint.ifindex,
        veth,
        mac: MacAddr(endpoint.mac),
        gateway_mac: MacAddr(endpoint.gateway_mac),
        container_id: field_text(&endpoint.container_id),
        pod_ifname: field_text(&endpoint.pod_ifname),
        no_bypass: endpoint.flags & ENDPOINT_F_NO_BYPASS != 0,
    }
}

/// Refuses `ip` when it is one of this node's own addresses (any interface
/// in the caller's namespace): a pod registered with the gateway's address
/// would take the node's traffic over.
pub fn refuse_node_address(ip: IpAddr) -> Result<()> {
    if let Some(address) = netdev::all_addresses()?
        .into_iter()
        .find(|address| address.ip == ip)
    {
        let index = address.index;
        let on = netdev::link_by_index(index)?
            .map_or_else(|| format!("ifindex {index}"), |link| link.name);
        bail!("{ip} is an address of this node (on {on}), not a pod's");
    }
    Ok(())
}

/// Refuses `ip` when the pod end of `veth` can be seen and does not have
/// it: the fast path would deliver that address's traffic to a pod that
/// does not own it.
fn refuse_address_not_on_pod(ip: IpAddr, veth: &Link, pod_netns: Option<&Path>) -> Result<()> {
    let Ok(Some(peer)) = netdev::veth_peer(veth) else {
        return Ok(());
    };
    let peer_index = peer.index;
    let on_peer = move || -> Result<Vec<IpAddr>> {
        Ok(netdev::all_addresses()?
            .into_iter()
            .filter(|address| address.index == peer_index)
            .map(|address| address.ip)
            .collect())
    };
    let addresses = match veth.peer_netnsid {
        Some(nsid) => match netns::run_in(nsid, pod_netns, on_peer) {
            Ok(addresses) => addresses,
            // Its namespace is not reachable from here: nothing to compare.
            Err(_) => return Ok(()),
        },
        None => on_peer()?,
    };
    if !addresses.contains(&ip) {
        bail!(
            "{ip} is not configured on the pod's interface {} (behind {}); add it there first",
            peer.name,
            veth.name
        );
    }
    Ok(())
}

/// The MAC of the pod end of `veth`, read across namespaces.
fn peer_mac(veth: &Link) -> Result<MacAddr> {
    let peer = netdev::veth_peer(veth)?;
    peer.and_then(|peer| peer.mac).with_context(|| {
        format!(
            "cannot read the MAC of {}'s peer (is the pod end in a namespace without an id?); pass --mac",
            veth.name
        )
    })
}

/// The MAC the pod uses as its gateway: the bridge's, when the veth is a
/// bridge port (bridge CNI plugin), else the host veth's own (ptp plugin).
pub fn gateway_mac(veth: &Link) -> Result<MacAddr> {
    let gateway = match veth.master {
        Some(master) => netdev::link_by_index(master)?
            .with_context(|| format!("the bridge of {} has vanished", veth.name))?,
        None => veth.clone(),
    };
    gateway
        .mac
        .with_context(|| format!("{} has no MAC address", gateway.name))
}

fn map_insert_error(err: MapError, capacity: u32) -> anyhow::Error {
    if let MapError::SyscallError(syscall) = &err
        && syscall.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return NodeError::MapFull {
            capacity: Capacity::Pods,
            size: capacity,
            fitted: None,
        }
        .into();
    }
    anyhow::Error::new(err).context("writing local_endpoints")
}

fn owner_suffix(endpoint: &Endpoint) -> String {
    let owner = field_text(&endpoint.container_id);
    if owner.is_empty() {
        String::new()
    } else {
        format!(" by container {owner}")
    }
}

/// Copies `text` into a NUL-padded fixed field, refusing what does not fit.
fn fixed_field<const N: usize>(what: &str, text: &str) -> Result<[u8; N]> {
    if text.len() > N {
        bail!("{what} {text:?} is longer than {N} bytes");
    }
    if text.bytes().any(|byte| byte == 0) {
        bail!("{what} {text:?} contains a NUL byte");
    }
    let mut field = [0u8; N];
    field[..text.len()].copy_from_slice(text.as_bytes());
    Ok(field)
}

fn field_text(field: &[u8]) -> String {
    let end = field
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}
