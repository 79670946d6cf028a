//! `pod-net gc`: repairs what an interrupted command or a vanished pod left
//! behind, so that the maps and the attachments agree with each other and
//! with the node's interfaces.
//!
//! - An entry whose veth is gone (or whose ifindex is now something else)
//!   is removed: the pod was deleted without a DEL.
//! - A registered pod's veth without the program gets it back.
//! - A pinned link on a veth no entry uses is removed: an add that died
//!   between attaching and storing the entry, or a del between the two.
//! - A `pod_veths` (XDP) entry no pod uses is removed.
//! - `peer_nodes` is made to hold exactly the remote entries' nodes: a
//!   node add or del that died half-way leaves one too many or too few.
//! - The tunnel device is brought in step with the remote entries: a route,
//!   neighbour or FDB entry an entry needs is written again, one no entry
//!   explains is removed (see `tunnel_sync`).
//! - Events a `pod-net monitor` left on when it died are turned off.
//!
//! Everything runs under the pin dir lock, so it never races a live add.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result};
use pod_net_common::{EndpointKey, program_names};
use serde::Serialize;

use crate::{
    datapath::{
        Datapath, Locked,
        attach::{self, AttachMode},
        endpoint_ip, endpoint_key, is_missing_key,
        pins::PinDir,
        xdp,
    },
    lifecycle::underlay::underlay_link,
    node::{
        direct::{self, RouteFix},
        peers, remotes,
        tunnel_sync::{self, Fix},
    },
    ops::monitor,
    sys::netdev::{self, Link, LinkKind},
};

/// One thing gc does (or, with `--dry-run`, would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "repair", rename_all = "snake_case")]
pub enum Repair {
    /// The entry's interface is gone or is no longer a veth.
    RemoveStaleEntry { ip: IpAddr, ifindex: u32 },
    /// A registered pod's veth runs without `pod_egress`.
    Reattach { ifindex: u32, veth: String },
    /// `pod_egress` is pinned on an interface no entry uses.
    DetachOrphan { ifindex: u32, ifname: String },
    /// `pod_veths` holds an interface no entry uses.
    ForgetXdpVeth { ifindex: u32 },
    /// A node with VXLAN entries is missing from `peer_nodes`, so its VXLAN
    /// is dropped.
    AddPeer { node_ip: Ipv4Addr },
    /// `peer_nodes` holds a node no remote entry sends to.
    RemovePeer { node_ip: Ipv4Addr },
    /// The tunnel device is out of step with the remote entries.
    Tunnel {
        device: String,
        #[serde(flatten)]
        fix: Fix,
    },
    /// pod-net's routes on the underlay are out of step with the direct
    /// entries.
    Direct {
        underlay: String,
        #[serde(flatten)]
        fix: RouteFix,
    },
    /// Events are on, but no `pod-net monitor` runs to read them (one died
    /// without turning them off): every packet pays for them.
    EventsOff,
}

impl Repair {
    /// Made in one batch per link by [`execute`] (thousands after a crash).
    #[must_use]
    pub const fn is_batched(&self) -> bool {
        matches!(self, Self::Tunnel { .. } | Self::Direct { .. })
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RemoveStaleEntry { ip, ifindex } => write!(
                f,
                "remove pod {ip}: its veth (ifindex {ifindex}) no longer exists"
            ),
            Self::Reattach { veth, .. } => {
                write!(f, "re-attach pod_egress to {veth}: it has registered pods")
            }
            Self::DetachOrphan { ifindex, ifname } => write!(
                f,
                "detach pod_egress from {ifname} (ifindex {ifindex}): no pod is registered there"
            ),
            Self::ForgetXdpVeth { ifindex } => write!(
                f,
                "remove ifindex {ifindex} from pod_veths: no pod is registered there"
            ),
            Self::AddPeer { node_ip } => write!(
                f,
                "add {node_ip} to peer_nodes: remote entries send to it, but its VXLAN is dropped"
            ),
            Self::RemovePeer { node_ip } => write!(
                f,
                "remove {node_ip} from peer_nodes: no remote entry sends to it"
            ),
            Self::Tunnel { device, fix } => write!(f, "{fix} on {device}: {}", fix.reason()),
            Self::Direct { underlay, fix } => write!(f, "{fix} (on {underlay})"),
            Self::EventsOff => write!(
                f,
                "turn events off: they are on, but no `pod-net monitor` runs to read them"
            ),
        }
    }
}

/// Finds and, unless `dry_run`, makes the repairs. Returns them.
pub fn run(pins: &PinDir, dry_run: bool) -> Result<Vec<Repair>> {
    repair(&mut Locked::new(pins)?, dry_run)
}

/// [`run`] on a datapath the caller has locked (the CNI's GC holds it for
/// its own removals too).
pub fn repair(datapath: &mut Locked, dry_run: bool) -> Result<Vec<Repair>> {
    let repairs = plan(datapath)?;
    if !dry_run {
        execute(datapath, &repairs)?;
    }
    Ok(repairs)
}

/// The repairs the node needs now. Read-only.
pub fn plan(datapath: &Datapath) -> Result<Vec<Repair>> {
    let pins = datapath.pins();
    let links: BTreeMap<u32, Link> = netdev::all_links()?
        .into_iter()
        .map(|link| (link.index, link))
        .collect();
    let mut repairs = Vec::new();
    let mut used = BTreeSet::new();
    for (key, endpoint) in datapath.endpoint_entries()? {
        match links.get(&endpoint.ifindex) {
            Some(link) if link.kind == LinkKind::Veth => {
                used.insert(endpoint.ifindex);
            }
            _ => repairs.push(Repair::RemoveStaleEntry {
                ip: endpoint_ip(&key),
                ifindex: endpoint.ifindex,
            }),
        }
    }
    // Attached, and the way `load --attach` says: a switch cut short is
    // finished here.
    let mode = AttachMode::of(&datapath.config()?);
    for ifindex in &used {
        let veth = &links[ifindex];
        if !attach::is_attached_as(pins, mode, program_names::POD_EGRESS, veth)? {
            repairs.push(Repair::Reattach {
                ifindex: *ifindex,
                veth: veth.name.clone(),
            });
        }
    }
    for orphan in attach::attachments(pins, program_names::POD_EGRESS)? {
        if !used.contains(&orphan.ifindex) {
            repairs.push(Repair::DetachOrphan {
                ifindex: orphan.ifindex,
                ifname: orphan.ifname,
            });
        }
    }
    for ifindex in datapath.pod_veths()?.keys() {
        let ifindex = ifindex.context("reading pod_veths")?;
        if !used.contains(&ifindex) {
            repairs.push(Repair::ForgetXdpVeth { ifindex });
        }
    }
    let drift = peers::drift(datapath, &remotes::vxlan_nodes(datapath)?)?;
    repairs.extend(
        drift
            .missing
            .into_iter()
            .map(|node_ip| Repair::AddPeer { node_ip }),
    );
    repairs.extend(
        drift
            .extra
            .into_iter()
            .map(|node_ip| Repair::RemovePeer { node_ip }),
    );
    let config = datapath.config()?;
    repairs.extend(
        tunnel_sync::plan_if_loaded(datapath)?
            .into_iter()
            .map(|(device, fix)| Repair::Tunnel { device, fix }),
    );
    if monitor::events_on(datapath)? && !pins.monitor_running()? {
        repairs.push(Repair::EventsOff);
    }
    if let Some(underlay) = underlay_link(&config)? {
        repairs.extend(
            direct::plan(&underlay, &remotes::direct_routes(datapath)?)?
                .into_iter()
                .map(|fix| Repair::Direct {
                    underlay: underlay.name.clone(),
                    fix,
                }),
        );
    }
    Ok(repairs)
}

fn execute(datapath: &mut Locked, repairs: &[Repair]) -> Result<()> {
    let xdp_on = xdp::is_on(datapath.pins())?;
    let mode = AttachMode::of(&datapath.config()?);
    let (mut fixes, mut route_fixes) = (Vec::new(), Vec::new());
    for repair in repairs {
        match repair {
            // Thousands at once after a crash: one batch each, below.
            Repair::Tunnel { fix, .. } => fixes.push(fix.clone()),
            Repair::Direct { fix, .. } => route_fixes.push(fix.clone()),
            _ => make(datapath, mode, xdp_on, repair).with_context(|| repair.to_string())?,
        }
    }
    let config = datapath.config()?;
    if !fixes.is_empty()
        && let Some(device) = tunnel_sync::device(&config)?
    {
        tunnel_sync::execute(&device, &fixes)
            .with_context(|| format!("mending {} ({} repair(s))", device.name, fixes.len()))?;
    }
    if !route_fixes.is_empty()
        && let Some(underlay) = underlay_link(&config)?
    {
        direct::execute(&underlay, &route_fixes).with_context(|| {
            format!(
                "mending the direct routes on {} ({} repair(s))",
                underlay.name,
                route_fixes.len()
            )
        })?;
    }
    Ok(())
}

fn make(datapath: &mut Locked, mode: AttachMode, xdp_on: bool, repair: &Repair) -> Result<()> {
    let pins = datapath.pins().clone();
    match repair {
        Repair::RemoveStaleEntry { ip, .. } => remove_entry(datapath, &endpoint_key(*ip)),
        Repair::Reattach { ifindex, .. } => {
            let veth = netdev::link_by_index(*ifindex)?
                .with_context(|| format!("ifindex {ifindex} vanished during gc"))?;
            if xdp_on {
                xdp::prepare_pod(datapath, &veth, None)?;
            }
            attach::attach(&pins, mode, program_names::POD_EGRESS, &veth).map(drop)
        }
        Repair::DetachOrphan { ifindex, .. } => {
            attach::detach_any(&pins, program_names::POD_EGRESS, *ifindex).map(drop)
        }
        Repair::ForgetXdpVeth { ifindex } => xdp::forget_pod(datapath, *ifindex),
        Repair::AddPeer { node_ip } => peers::add(datapath, [*node_ip]),
        Repair::RemovePeer { node_ip } => peers::remove(datapath, [*node_ip]),
        Repair::EventsOff => monitor::turn_off_events(datapath),
        // Made in one batch by `execute`.
        Repair::Tunnel { .. } | Repair::Direct { .. } => Ok(()),
    }
}

fn remove_entry(datapath: &mut Datapath, key: &EndpointKey) -> Result<()> {
    match datapath.endpoints.remove(key) {
        Ok(()) => Ok(()),
        Err(err) if is_missing_key(&err) => Ok(()),
        Err(err) => Err(err).context("removing from local_endpoints"),
    }
}
