//! `pod-net agent --beside-flannel`: pod-net as an accelerator on a node
//! where flanneld runs and owns the lease, `subnet.env`, `flannel.<VNI>`
//! and its routes, neighbour and FDB entries. The agent takes no lease and
//! writes none of flanneld's files or kernel state: it loads the datapath
//! beside flanneld's device (its underlay, VNI, port and MAC), and keeps the
//! remote entries equal to the nodes flanneld programmed into the kernel
//! (`node::flannel`), looked at twice a second.
//!
//! Why flanneld's kernel state, not its store: it is exactly what flannel
//! forwards with, so the fast path never disagrees with the path it
//! accelerates; a lease flanneld refused never reaches the maps; it needs
//! no credentials, and is the same whatever store flanneld uses (etcd or
//! the Kubernetes API). What it costs is up to half a second before a new
//! node is on the fast path; flannel's own path carries it meanwhile.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use log::{error, info, warn};

use super::{
    change_log::ChangeLog,
    cluster::{
        board::StatusBoard,
        subnet_env::{self, SubnetEnv},
    },
};
use crate::{
    cidr::Cidr,
    datapath::{Locked, pins::PinDir},
    lifecycle::{
        load::{self, LoadOptions},
        underlay::{self, UnderlayOptions},
    },
    mac::MacAddr,
    node::{flannel, remotes::NodeSpec, tunnel},
    ops::{
        apply,
        cluster_status::{SKIPPED_SHOWN, SkippedRecord, unix_seconds},
        cni_chain::{self, Outcome},
    },
    sys::netdev,
};

/// Where flanneld writes its `subnet.env`.
pub const DEFAULT_FLANNEL_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Where the entries come from, as the log names it.
const SOURCE: &str = "flannel";
/// How often flanneld's state is read.
const POLL: Duration = Duration::from_millis(500);
/// How often every entry is diffed against the maps even when flanneld's
/// state did not change (undoing a `node del` by hand).
const RESYNC: Duration = Duration::from_mins(1);

/// What `pod-net agent --beside-flannel` was told.
#[derive(Clone, Debug)]
pub struct BesideOptions {
    /// flanneld's VXLAN device, when not the only `flannel.<VNI>`.
    pub flannel_device: Option<String>,
    /// flanneld's `subnet.env`: the network and this node's subnet.
    pub subnet_file: PathBuf,
    /// Where the agent writes its status for `pod-net status`.
    pub status_file: PathBuf,
    /// flannel's conflist, kept chaining `pod-net-cni` (flannel's pod
    /// writes it afresh whenever it starts).
    pub chain: Option<PathBuf>,
}

/// flanneld's side as the agent last loaded against it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Flannel {
    env: SubnetEnv,
    underlay: UnderlayOptions,
    /// flanneld's device, by ifindex and MAC: a device flanneld made again
    /// means loading again (the MAC the fast path encapsulates with).
    device: (u32, MacAddr),
}

/// Reads flanneld's side: its `subnet.env` and its device.
fn flannel(options: &BesideOptions) -> Result<Flannel> {
    let env = subnet_env::read(&options.subnet_file).with_context(|| {
        format!(
            "flanneld's {} is not there (or not readable) yet: is flanneld running?",
            options.subnet_file.display()
        )
    })?;
    let underlay = underlay::beside_flannel(options.flannel_device.as_deref())?;
    let name = tunnel::flannel_device_name(underlay.vni);
    let device = netdev::link_by_name(&name)?
        .with_context(|| format!("{name} went away while it was read"))?;
    Ok(Flannel {
        env,
        underlay,
        device: (device.index, device.mac.unwrap_or_default()),
    })
}

/// The loop's memory between rounds.
#[derive(Default)]
struct State {
    loaded: Option<Flannel>,
    /// The entries the maps were last made to hold.
    programmed: Option<Vec<NodeSpec>>,
    refused: BTreeMap<Cidr, String>,
    /// The last problem said, so it is said once.
    said: Option<String>,
    resync_at: Option<tokio::time::Instant>,
    /// What was programmed, for the log.
    change_log: ChangeLog,
}

/// The agent beside flanneld, once the datapath is loaded.
pub struct Beside {
    pins: PinDir,
    options: BesideOptions,
    board: StatusBoard,
    state: State,
}

/// Waits for flanneld (its `subnet.env` and device) and loads the datapath
/// beside it, saying once what it waits for.
pub async fn start(pins: PinDir, options: BesideOptions, board: StatusBoard) -> Beside {
    let mut beside = Beside {
        pins,
        options,
        board,
        state: State::default(),
    };
    while beside.state.loaded.is_none() {
        beside.round();
        tokio::time::sleep(POLL).await;
    }
    beside
}

impl Beside {
    /// Keeps the fast path beside flanneld until the task is aborted.
    /// flanneld going away (a restart) is waited out, the datapath
    /// forwarding with the entries it has.
    pub async fn follow(mut self) {
        loop {
            self.round();
            tokio::time::sleep(POLL).await;
        }
    }

    /// One round, its problem said once.
    fn round(&mut self) {
        let (state, board) = (&mut self.state, &self.board);
        state.change_log.flush(SOURCE);
        match round(&self.pins, &self.options, state, board) {
            Ok(()) => {
                if state.said.take().is_some() {
                    info!("flanneld: the problem is gone");
                }
                board.update(|status| {
                    status.connected = true;
                    status.problems.clear();
                });
            }
            Err(err) => {
                let problem = format!("{err:#}");
                if state.said.as_ref() != Some(&problem) {
                    warn!("{problem}; the datapath keeps its entries");
                    board.update(|status| {
                        status.connected = false;
                        status.problems = vec![problem.clone()];
                    });
                    state.said = Some(problem);
                }
            }
        }
    }
}

/// One look at flanneld's state, and the maps made to match it.
fn round(
    pins: &PinDir,
    options: &BesideOptions,
    state: &mut State,
    board: &StatusBoard,
) -> Result<()> {
    let flannel = flannel(options)?;
    if let Some(conflist) = &options.chain
        && let Outcome::Chained { after } = cni_chain::chain(conflist, pins.root())?
    {
        info!(
            "chained {} into {} after {after}",
            cni_chain::PLUGIN,
            conflist.display()
        );
    }
    if state.loaded.as_ref() != Some(&flannel) {
        load_beside(pins, &flannel)?;
        board.update(|status| status.subnet = Some(flannel.env.subnet.to_string()));
        state.loaded = Some(flannel.clone());
        state.programmed = None;
    }
    let device = netdev::link_by_index(flannel.device.0)?
        .context("flanneld's device went away while it was read")?;
    let underlay_index = netdev::link_by_name(&flannel.underlay.ifname)?
        .map(|link| link.index)
        .unwrap_or_default();
    let is_flannels = flannel::other_subnet(flannel.env.network.cidr(), flannel.env.subnet.cidr());
    let mirror = flannel::read(&device, underlay_index, is_flannels)?;
    // A node flanneld is still writing keeps the entry it had.
    let mut wanted: BTreeMap<Cidr, NodeSpec> = mirror
        .specs
        .into_iter()
        .map(|spec| (spec.cidr, spec))
        .collect();
    for spec in state.programmed.iter().flatten() {
        if mirror.incomplete.contains(&spec.cidr) {
            wanted.entry(spec.cidr).or_insert_with(|| spec.clone());
        }
    }
    let wanted: Vec<NodeSpec> = wanted.into_values().collect();
    let now = tokio::time::Instant::now();
    let due = state.resync_at.is_none_or(|at| now >= at);
    if state.programmed.as_ref() == Some(&wanted) && !due {
        return Ok(());
    }
    let mut datapath = Locked::new(pins)?;
    let (admitted, refused) = flannel::admit(&datapath, &wanted)?;
    let changes = apply::run_nodes(&mut datapath, admitted.clone())?;
    state
        .change_log
        .programmed(SOURCE, &changes, admitted.len(), None);
    report_refused(state, board, refused);
    board.update(|status| {
        status.peers = admitted.len();
        status.last_sync = Some(unix_seconds(SystemTime::now()));
    });
    state.programmed = Some(wanted);
    state.resync_at = Some(now + RESYNC);
    Ok(())
}

/// Loads (or reloads in place) the datapath beside flanneld's device.
fn load_beside(pins: &PinDir, flannel: &Flannel) -> Result<()> {
    let options = LoadOptions {
        underlay: Some(flannel.underlay.clone()),
        ..LoadOptions::default()
    };
    let report = load::load(pins, &options)?;
    info!(
        "datapath {} at {} beside {} (VTEP {}) on {} {}, node subnet {}",
        if report.replaced {
            "reloaded"
        } else {
            "loaded"
        },
        pins.root().display(),
        tunnel::flannel_device_name(flannel.underlay.vni),
        flannel.device.1,
        flannel.underlay.ifname,
        flannel.underlay.node_ip,
        flannel.env.subnet
    );
    Ok(())
}

/// Logs each newly refused node once, and names them in the status.
fn report_refused(state: &mut State, board: &StatusBoard, refused: BTreeMap<Cidr, String>) {
    let mut new = 0;
    for (cidr, reason) in &refused {
        if state.refused.get(cidr) != Some(reason) {
            error!("skipping flanneld's node for {cidr}: {reason}");
            new += 1;
        }
    }
    let shown: Vec<SkippedRecord> = refused
        .iter()
        .take(SKIPPED_SHOWN)
        .map(|(cidr, reason)| SkippedRecord {
            key: cidr.to_string(),
            reason: reason.clone(),
        })
        .collect();
    let count = refused.len();
    board.update(|status| {
        status.skipped_records += new;
        status.skipped_now = count;
        status.skipped = shown;
    });
    state.refused = refused;
}
