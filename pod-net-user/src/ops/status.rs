//! `pod-net status`: is the datapath whole, and does it match the node?
//! Each problem comes with a hint; any problem makes the exit code non-zero
//! so the command can serve as a health probe.
use std::{fmt::Write as _, net::Ipv4Addr, path::Path, time::SystemTime};

use anyhow::{Context as _, Result};
use aya::programs::ProgramInfo;
use pod_net_common::{
    Config, Endpoint, EndpointKey,
    event::{CONFIG_F_BIG_TCP, CONFIG_F_NO_ANTI_SPOOF, CONFIG_F_NO_NAT_CHECK},
    program_names,
};
use serde::Serialize;

use crate::{
    datapath::{
        Datapath, MapFill,
        attach::{self, AttachMode},
        endpoint_ip,
        layout::PROGRAMS,
        pins::{PinDir, is_on_bpffs},
    },
    lifecycle::underlay::underlay_summary,
    mac::MacAddr,
    node::{
        big_tcp,
        direct::{self, RouteFix},
        endpoints, flannel, remotes, tunnel,
    },
    ops::cluster_status::{ClusterStatus, Liveness},
    ops::gc::{self, Repair},
    sys::{
        files::read_regular,
        netdev::{self, Link, LinkKind},
    },
};

/// The most a cluster status file can be (it names at most 50 records).
const STATUS_FILE_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, Serialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent yes/no facts, serialized as such"
)]
pub struct Status {
    pub pin_dir: String,
    pub healthy: bool,
    pub loaded: bool,
    pub programs: Vec<ProgramStatus>,
    pub underlay: Option<UnderlayStatus>,
    /// Pod packets with a source IP not theirs are dropped.
    pub anti_spoofing: bool,
    /// Replies of flows the kernel may have NATed go to the kernel.
    pub nat_check: bool,
    /// Pods get IPv4 BIG TCP (`load --big-tcp on`).
    pub big_tcp: bool,
    /// How the TC programs are attached (`load --attach`): tcx or tc.
    pub attach: &'static str,
    pub pods: usize,
    pub maps: Vec<MapFill>,
    /// The cluster store, as the agent last published it.
    pub store: Option<ClusterStatus>,
    /// Whether the agent that published it is gone or silent.
    pub store_stale: bool,
    /// Another command was changing the maps all the while `status` looked:
    /// what it saw may be between two states.
    pub converging: bool,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub id: Option<u32>,
    pub attachments: usize,
}

#[derive(Debug, Serialize)]
pub struct UnderlayStatus {
    pub interface: String,
    pub node_ip: String,
    pub vni: u32,
    pub vxlan_port: u16,
    pub vtep_mac: MacAddr,
    pub tunnel_device: String,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub what: String,
    pub hint: String,
}

impl Status {
    /// Adds what a cluster agent published in `file` (nothing when there is
    /// no such file: no agent follows a store here). A store the agent is
    /// not connected to is a problem, as is an agent that is gone or
    /// silent (its file is then stale) and whatever the agent reports it
    /// cannot fix; the datapath forwards all the same. Records the agent
    /// skips are shown, and are not a problem of this node.
    pub fn add_store(&mut self, file: &Path) -> Result<()> {
        let Some(text) = read_regular(file, STATUS_FILE_LIMIT)
            .with_context(|| format!("reading {}", file.display()))?
        else {
            return Ok(());
        };
        let store: ClusterStatus = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a cluster status", file.display()))?;
        // Another node's agent (several share one machine in tests).
        if store.pin_dir != self.pin_dir {
            return Ok(());
        }
        let file = file.display();
        match store.liveness(SystemTime::now()) {
            Liveness::Running => {
                if !store.connected {
                    self.problem(
                        "the agent is not connected to the cluster store",
                        "the datapath keeps forwarding with the entries it has; the agent \
                         reconnects with backoff (see its log)",
                    );
                }
                for problem in &store.problems {
                    self.problem(
                        format!("the agent: {problem}"),
                        "see the agent's log; the datapath keeps forwarding with the entries \
                         it has",
                    );
                }
            }
            Liveness::Gone => {
                self.store_stale = true;
                self.problem(
                    format!(
                        "the agent (pid {}) that wrote {file} is gone: what it says of the store \
                         is stale",
                        store.pid
                    ),
                    "the datapath keeps forwarding with the entries it has; start the agent \
                     again to follow the store",
                );
            }
            Liveness::Silent(age) => {
                self.store_stale = true;
                self.problem(
                    format!(
                        "the agent (pid {}) has not written {file} for {} s: it may be hung",
                        store.pid,
                        age.as_secs()
                    ),
                    "see its log; the datapath keeps forwarding with the entries it has",
                );
            }
        }
        self.healthy = self.problems.is_empty();
        self.store = Some(store);
        Ok(())
    }

    fn problem(&mut self, what: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem {
            what: what.into(),
            hint: hint.into(),
        });
    }
}

/// Checks `pins` against the running system.
pub fn check(pins: &PinDir) -> Result<Status> {
    let mut status = Status {
        pin_dir: pins.root().display().to_string(),
        healthy: false,
        loaded: false,
        programs: Vec::new(),
        underlay: None,
        anti_spoofing: false,
        nat_check: false,
        big_tcp: false,
        attach: AttachMode::default().name(),
        pods: 0,
        maps: Vec::new(),
        store: None,
        store_stale: false,
        converging: false,
        problems: Vec::new(),
    };
    let bpffs = pins
        .root()
        .ancestors()
        .find(|dir| dir.exists())
        .is_some_and(|dir| is_on_bpffs(dir).unwrap_or(false));
    if !bpffs {
        status.problem(
            format!("{} is not on a mounted bpf filesystem", status.pin_dir),
            "run `pod-net load`, which mounts bpffs at /sys/fs/bpf",
        );
        return Ok(finish(status));
    }
    if !pins.is_loaded() {
        status.problem(
            format!("pod-net is not loaded at {}", status.pin_dir),
            "run `pod-net load`",
        );
        return Ok(finish(status));
    }
    status.loaded = true;
    // The maps and the kernel path seen between changes, not in the middle
    // of one; past the wait, read as they are (and said so).
    let settled = pins.settle()?;
    status.converging = settled.is_none();
    for name in PROGRAMS {
        status.programs.push(ProgramStatus {
            name,
            id: ProgramInfo::from_pin(pins.program(name))
                .ok()
                .map(|info| info.id()),
            attachments: attach::attachments(pins, name)?.len(),
        });
    }

    let datapath = Datapath::open(pins)?;
    let config = datapath.config()?;
    status.anti_spoofing = config.flags & CONFIG_F_NO_ANTI_SPOOF == 0;
    status.nat_check = config.flags & CONFIG_F_NO_NAT_CHECK == 0;
    status.big_tcp = config.flags & CONFIG_F_BIG_TCP != 0;
    status.attach = AttachMode::of(&config).name();
    let entries = datapath.endpoint_entries()?;
    status.pods = entries.len();
    for map in datapath.map_fills()? {
        fill(&mut status, map);
    }
    check_pods(&entries, &mut status)?;
    if config.flags & CONFIG_F_BIG_TCP != 0 {
        check_big_tcp(&entries, &mut status)?;
    }
    check_repairs(&datapath, &mut status)?;
    check_underlay(pins, &config, &mut status)?;
    check_direct(&datapath, &config, &mut status)?;
    if config.beside_flannel() {
        check_beside_flannel(&datapath, &config, &mut status)?;
    }
    Ok(finish(status))
}

/// Direct routing needs the underlay to forward (see
/// [`direct::forwarding_off`]).
fn check_direct(datapath: &Datapath, config: &Config, status: &mut Status) -> Result<()> {
    let routes = remotes::direct_routes(datapath)?;
    if routes.is_empty() || !config.has_underlay() {
        return Ok(());
    }
    let Some(underlay) = netdev::link_by_index(config.underlay_ifindex)? else {
        return Ok(());
    };
    for key in direct::forwarding_off(&underlay, &routes) {
        status.problem(
            format!("{key} is 0: packets from direct nodes' pods are not forwarded"),
            format!("`sysctl -w {key}=1`"),
        );
    }
    Ok(())
}

/// Records a map's fill level, and a problem past 90 %.
fn fill(status: &mut Status, map: MapFill) {
    let MapFill {
        name,
        entries,
        capacity,
    } = map;
    if u64::try_from(entries).unwrap_or(u64::MAX) * 10 >= u64::from(capacity) * 9 {
        status.problem(
            format!("{name} is {entries} of {capacity} entries full"),
            "remove stale entries or load with a larger map",
        );
    }
    status.maps.push(map);
}

/// Every registered veth still has the MACs its entries hold. (Entries
/// whose veth is gone, and missing or orphan attachments, are gc's repairs.)
/// With BIG TCP on, every pod's veth pair has it (a pod plugged in again
/// by hand, say, has the kernel's default).
fn check_big_tcp(entries: &[(EndpointKey, Endpoint)], status: &mut Status) -> Result<()> {
    let mut veths: Vec<u32> = entries
        .iter()
        .map(|(_, endpoint)| endpoint.ifindex)
        .collect();
    veths.sort_unstable();
    veths.dedup();
    for ifindex in veths {
        let Some(veth) = netdev::link_by_index(ifindex)? else {
            continue;
        };
        let ends = [
            (ifindex, None, veth.name.clone()),
            (
                veth.peer_index.unwrap_or_default(),
                veth.peer_netnsid,
                format!("the pod's end of {}", veth.name),
            ),
        ];
        for (index, netnsid, what) in ends {
            if let Some(size) = netdev::ipv4_gso_max_size(index, netnsid)?
                && size < big_tcp::BIG_SIZE
            {
                status.problem(
                    format!("BIG TCP is on, but {what} has an IPv4 GSO size of {size}"),
                    "run `pod-net load --big-tcp on` again",
                );
            }
        }
    }
    Ok(())
}

fn check_pods(entries: &[(EndpointKey, Endpoint)], status: &mut Status) -> Result<()> {
    for (key, endpoint) in entries {
        let ip = endpoint_ip(key);
        let Some(link) =
            netdev::link_by_index(endpoint.ifindex)?.filter(|link| link.kind == LinkKind::Veth)
        else {
            continue;
        };
        let reregister =
            format!("re-register the pod: `pod-net pod del --ip {ip}`, then `pod add`");
        if let Ok(Some(peer)) = netdev::veth_peer(&link)
            && let Some(mac) = peer.mac
            && mac.0 != endpoint.mac
        {
            status.problem(
                format!(
                    "pod {ip}: stored MAC {} but the pod's interface has {mac}",
                    MacAddr(endpoint.mac)
                ),
                reregister.clone(),
            );
        }
        if let Ok(gateway) = endpoints::gateway_mac(&link)
            && gateway.0 != endpoint.gateway_mac
        {
            status.problem(
                format!(
                    "pod {ip}: stored gateway MAC {} but the pod's gateway now has {gateway}",
                    MacAddr(endpoint.gateway_mac)
                ),
                format!("give the bridge a fixed MAC, and {reregister}"),
            );
        }
    }
    Ok(())
}

/// Half-done state: whatever `pod-net gc` would repair is a problem.
fn check_repairs(datapath: &Datapath, status: &mut Status) -> Result<()> {
    let (batched, others): (Vec<Repair>, Vec<Repair>) = gc::plan(datapath)?
        .into_iter()
        .partition(Repair::is_batched);
    for repair in others {
        status.problem(format!("needs repair: {repair}"), GC_HINT);
    }
    check_batched_repairs(&batched, status);
    Ok(())
}

const GC_HINT: &str = "run `pod-net gc` (`--dry-run` shows the plan)";

/// The tunnel device or the underlay's routes out of step with the remote
/// entries: one problem per kind of fix, as a crash mid-`apply` (or a flap
/// of the underlay) can leave thousands.
fn check_batched_repairs(repairs: &[Repair], status: &mut Status) {
    // (kind, its first repair, how many), in the order gc makes them.
    let mut kinds: Vec<(&str, &Repair, usize)> = Vec::new();
    for repair in repairs {
        let kind = match repair {
            Repair::Tunnel { fix, .. } => fix.kind(),
            Repair::Direct {
                fix: RouteFix::Add { .. },
                ..
            } => "direct_route",
            Repair::Direct {
                fix: RouteFix::Remove { .. },
                ..
            } => "stale_direct_route",
            _ => continue,
        };
        match kinds.iter_mut().find(|(known, ..)| *known == kind) {
            Some((_, _, count)) => *count += 1,
            None => kinds.push((kind, repair, 1)),
        }
    }
    for (_, first, count) in kinds {
        let more = match count {
            1 => String::new(),
            _ => format!(" (and {} more like it)", count - 1),
        };
        status.problem(format!("needs repair: {first}{more}"), GC_HINT);
    }
}

/// The underlay exists, decapsulates, and the kernel's tunnel device is there.
fn check_underlay(pins: &PinDir, config: &Config, status: &mut Status) -> Result<()> {
    let Some(summary) = underlay_summary(config) else {
        return Ok(());
    };
    status.underlay = Some(UnderlayStatus {
        interface: summary.ifname.clone(),
        node_ip: summary.node_ip.to_string(),
        vni: summary.vni,
        vxlan_port: summary.vxlan_port,
        vtep_mac: summary.vtep_mac,
        tunnel_device: summary.tunnel_device.clone(),
    });
    let reload = if config.beside_flannel() {
        "run `pod-net load --beside-flannel` again".to_owned()
    } else {
        format!(
            "run `pod-net load --underlay {} --node-ip {}` again",
            summary.ifname, summary.node_ip
        )
    };
    match netdev::link_by_index(config.underlay_ifindex)? {
        None => status.problem(
            format!(
                "the underlay (ifindex {}) no longer exists",
                config.underlay_ifindex
            ),
            "`pod-net unload`, then load with the node's current underlay",
        ),
        Some(link) => {
            if !attach::is_attached(pins, program_names::UNDERLAY_INGRESS, &link)? {
                status.problem(
                    format!("underlay_ingress is not attached to {}", link.name),
                    reload.clone(),
                );
            }
            check_underlay_link(&link, summary.node_ip, status)?;
        }
    }
    if tunnel::kernel_device(config)?.is_none() {
        if config.beside_flannel() {
            status.problem(
                format!("flanneld's device {} is missing", summary.tunnel_device),
                "start flanneld, which makes it again (the fast path forwards what it has \
                 meanwhile)",
            );
        } else {
            status.problem(
                format!("the tunnel device {} is missing", summary.tunnel_device),
                reload,
            );
        }
    }
    Ok(())
}

/// Beside flannel, the remote entries mirror flanneld's kernel state: each
/// place they disagree is a problem (the agent is not running, or has not
/// caught up, or someone changed one side by hand).
fn check_beside_flannel(datapath: &Datapath, config: &Config, status: &mut Status) -> Result<()> {
    let Some(device) = tunnel::kernel_device(config)? else {
        return Ok(());
    };
    let entries = remotes::list(datapath)?;
    // flanneld's direct routes are judged for the entries' prefixes: the
    // network that tells the underlay's other routes apart is not here.
    let mirror = flannel::read(&device, config.underlay_ifindex, |cidr| {
        entries.iter().any(|entry| entry.cidr == cidr)
    })?;
    for line in flannel::disagreements(&entries, &mirror) {
        status.problem(
            line,
            "`pod-net agent --beside-flannel` keeps the fast path equal to flanneld's kernel \
             state: is it running?",
        );
    }
    Ok(())
}

/// The underlay is up, has carrier, and still holds the node IP that VXLAN
/// leaves from and other nodes send to.
fn check_underlay_link(link: &Link, node_ip: Ipv4Addr, status: &mut Status) -> Result<()> {
    let name = &link.name;
    if !link.up {
        status.problem(
            format!("the underlay {name} is down"),
            format!("bring it up: `ip link set {name} up`"),
        );
    } else if !link.lower_up {
        status.problem(
            format!("the underlay {name} is up but has no carrier"),
            format!("check what {name} is plugged into"),
        );
    }
    if !netdev::ipv4_addresses(link.index)?.contains(&node_ip) {
        status.problem(
            format!("the node IP {node_ip} is not on the underlay {name}"),
            format!(
                "put it back (`ip addr add {node_ip}/PREFIX dev {name}`), or load with the \
                 node's address: `pod-net load --underlay {name} --node-ip IP`"
            ),
        );
    }
    Ok(())
}

fn finish(mut status: Status) -> Status {
    status.healthy = status.problems.is_empty();
    status
}

impl Status {
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pin dir:   {}", self.pin_dir);
        for program in &self.programs {
            let id = program
                .id
                .map_or_else(|| "?".to_owned(), |id| id.to_string());
            let _ = writeln!(
                out,
                "program:   {} (id {id}) on {} interface(s)",
                program.name, program.attachments
            );
        }
        if self.loaded {
            let _ = writeln!(out, "attach:    {}", self.attach);
        }
        if let Some(underlay) = &self.underlay {
            let _ = writeln!(
                out,
                "underlay:  {} {} VNI {} port {} VTEP {} (kernel path {})",
                underlay.interface,
                underlay.node_ip,
                underlay.vni,
                underlay.vxlan_port,
                underlay.vtep_mac,
                underlay.tunnel_device
            );
        } else if self.loaded {
            out.push_str("underlay:  none (same-node only)\n");
        }
        if self.loaded {
            let on = |flag: bool| if flag { "on" } else { "off" };
            let _ = writeln!(
                out,
                "checks:    anti-spoofing {}, NAT check {}, BIG TCP {}",
                on(self.anti_spoofing),
                on(self.nat_check),
                on(self.big_tcp)
            );
        }
        for map in &self.maps {
            let _ = writeln!(
                out,
                "map:       {} {}/{}",
                map.name, map.entries, map.capacity
            );
        }
        if let Some(store) = &self.store {
            let stale = if self.store_stale { "(stale) " } else { "" };
            let _ = writeln!(
                out,
                "store:     {stale}{}",
                store.describe(SystemTime::now())
            );
            for skipped in &store.skipped {
                let _ = writeln!(out, "skipped:   {}: {}", skipped.key, skipped.reason);
            }
            if store.skipped_now > store.skipped.len() {
                let _ = writeln!(
                    out,
                    "skipped:   ... and {} more",
                    store.skipped_now - store.skipped.len()
                );
            }
            if store.own_lease_restored > 0 {
                let _ = writeln!(
                    out,
                    "lease:     rewritten by another writer and restored {} time(s)",
                    store.own_lease_restored
                );
            }
        }
        if self.converging {
            out.push_str(
                "state:     converging (a change was under way all the while; run again for a \
                 settled view)\n",
            );
        }
        if self.healthy {
            out.push_str("health:    ok\n");
        } else {
            let _ = writeln!(out, "health:    {} problem(s)", self.problems.len());
            for problem in &self.problems {
                let _ = writeln!(out, "  - {}\n    hint: {}", problem.what, problem.hint);
            }
        }
        out
    }
}
