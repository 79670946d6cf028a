//! `pod-net load`: putting the datapath on bpffs.
//!
//! `load` pins programs and maps and exits; the pinned TCX links keep the
//! programs attached with no process running. Loading over a loaded pin dir
//! keeps the maps with their entries and swaps the program inside every
//! existing link (`bpf_link_update`), so traffic never stops.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    programs::{
        Program,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use pod_net_common::{
    Config,
    event::{CONFIG_F_BIG_TCP, CONFIG_F_NO_ANTI_SPOOF, CONFIG_F_NO_NAT_CHECK, CONFIG_F_TC_ATTACH},
    map_table,
};

use super::underlay::{
    UnderlayOptions, UnderlaySummary, check_owner, check_same_underlay, enable_underlay,
    loaded_underlay, resolve_underlay, underlay_link, underlay_summary,
};
use crate::{
    crashpoint,
    datapath::{
        Datapath, Locked,
        attach::{self, AttachMode, AttachmentKind},
        layout::{PROGRAMS, TC_PROGRAMS, check_pinned_capacity, check_pinned_layouts, pinned_maps},
        pins::{PinDir, ensure_bpffs, remove_pin, unmount_bpffs},
        xdp,
    },
    ebpf_object,
    error::{Capacity, LoadRefusal},
    node::{big_tcp, direct, mtu::mtu_warnings, peers, remotes, tunnel_sync},
    sys::netdev,
};

/// What `load` may change about the datapath.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Capacity of `local_endpoints` (and `pod_veths`); the build's default
    /// when `None`. An existing map keeps its size: resizing means `unload`
    /// first.
    pub max_pods: Option<u32>,
    /// Capacity of `remote_pods` (pod addresses pinned to a node), likewise.
    pub max_remote_pods: Option<u32>,
    /// Capacity of `remote_nodes` (node pod CIDRs), likewise.
    pub max_remote_cidrs: Option<u32>,
    /// Enable the cross-node path. A reload without it keeps what an
    /// earlier `load` set.
    pub underlay: Option<UnderlayOptions>,
    /// Turn the XDP receive path on the underlay on or off; `None` keeps
    /// what an earlier `load` set.
    pub xdp: Option<bool>,
    /// Drop pod packets whose source IP is not the pod's (on by default);
    /// `None` keeps the current setting.
    pub anti_spoofing: Option<bool>,
    /// Hand replies of possibly NATed flows to the kernel (on by default);
    /// `None` keeps the current setting.
    pub nat_check: Option<bool>,
    /// Give pods IPv4 BIG TCP (off by default), the registered ones at
    /// once; `None` keeps the current setting.
    pub big_tcp: Option<bool>,
    /// How TC programs are attached; `None` keeps the current way (TCX
    /// on a first load).
    pub attach: Option<AttachMode>,
}

#[derive(Debug, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one load, printed as such"
)]
pub struct LoadReport {
    pub mounted_bpffs: bool,
    /// A program was already pinned and has been replaced in place.
    pub replaced: bool,
    /// Existing attachments (TCX links, tc filters) switched to the new
    /// programs.
    pub attachments_updated: usize,
    /// The underlay in use after this load, if any.
    pub underlay: Option<UnderlaySummary>,
    /// Whether the XDP receive path is on after this load.
    pub xdp: bool,
    pub anti_spoofing: bool,
    pub nat_check: bool,
    pub big_tcp: bool,
    pub attach: AttachMode,
    /// Things that work but will hurt (MTU mismatches).
    pub warnings: Vec<String>,
}

/// Loads (or reloads) the datapath into `pins`.
pub fn load(pins: &PinDir, options: &LoadOptions) -> Result<LoadReport> {
    if options.big_tcp == Some(true) && !netdev::has_ipv4_big_tcp()? {
        bail!("this kernel has no IPv4 BIG TCP (it came with Linux 6.3)");
    }
    for (capacity, value) in [
        (Capacity::Pods, options.max_pods),
        (Capacity::RemotePods, options.max_remote_pods),
        (Capacity::RemoteCidrs, options.max_remote_cidrs),
    ] {
        if value == Some(0) {
            return Err(LoadRefusal::ZeroCapacity(capacity).into());
        }
    }
    // Everything the underlay needs is checked before anything changes.
    let underlay = options
        .underlay
        .as_ref()
        .map(|underlay| resolve_underlay(underlay).map(|link| (underlay, link)))
        .transpose()?;
    if let Some((underlay, link)) = &underlay {
        check_owner(pins, underlay, link)?;
    }
    if options.xdp == Some(true) && underlay.is_none() && loaded_underlay(pins)?.is_none() {
        return Err(LoadRefusal::XdpNeedsUnderlay.into());
    }
    if options.big_tcp == Some(true) {
        match &underlay {
            Some((_, link)) => big_tcp::check_underlay(link)?,
            None => {
                if let Some(link) = loaded_underlay(pins)? {
                    big_tcp::check_underlay(&link)?;
                }
            }
        }
    }

    let mounted_bpffs = ensure_bpffs(pins.root())?;
    let loaded = load_on_bpffs(pins, options);
    if loaded.is_err() && mounted_bpffs {
        // Leave the mounts as they were, too.
        let _ = unmount_bpffs();
    }
    // Held to the end: the settings below are part of the load.
    let (mut datapath, (replaced, attachments_updated)) = loaded?;
    if let Some((underlay, link)) = &underlay {
        enable_underlay(&mut datapath, underlay, link)?;
        // A tunnel device deleted by hand comes back empty: give it the
        // remote entries' routes, neighbours and FDB entries again. Direct
        // routes go with the underlay's link when it flaps: put them back.
        tunnel_sync::sync(&datapath)?;
        let direct_routes = remotes::direct_routes(&datapath)?;
        direct::execute(link, &direct::plan(link, &direct_routes)?)?;
    }
    let mut config = datapath.config()?;
    // Each setting as whether its flag should be set; `None` keeps it.
    for (set, flag) in [
        (options.anti_spoofing.map(|on| !on), CONFIG_F_NO_ANTI_SPOOF),
        (options.nat_check.map(|on| !on), CONFIG_F_NO_NAT_CHECK),
        (options.big_tcp, CONFIG_F_BIG_TCP),
        (
            options.attach.map(|mode| mode == AttachMode::Tc),
            CONFIG_F_TC_ATTACH,
        ),
    ] {
        match set {
            Some(true) => config.flags |= flag,
            Some(false) => config.flags &= !flag,
            None => {}
        }
    }
    if let Some(on) = options.big_tcp {
        let size = if on {
            big_tcp::BIG_SIZE
        } else {
            big_tcp::DEFAULT_SIZE
        };
        if let Some(link) = underlay_link(&config)? {
            big_tcp::set_underlay(&link, size)?;
        }
        big_tcp::set_all(&datapath, size)?;
    }
    datapath.set_config(config)?;
    if let Some(wanted) = options.xdp {
        xdp::set(pins, &datapath, &config, wanted)?;
    }
    let attach_mode = AttachMode::of(&config);
    if options.attach.is_some() {
        attach::move_all(pins, attach_mode, &TC_PROGRAMS)?;
    }
    Ok(LoadReport {
        mounted_bpffs,
        replaced,
        attachments_updated,
        underlay: underlay_summary(&config),
        xdp: xdp::is_on(pins)?,
        anti_spoofing: config.flags & CONFIG_F_NO_ANTI_SPOOF == 0,
        nat_check: config.flags & CONFIG_F_NO_NAT_CHECK == 0,
        big_tcp: config.flags & CONFIG_F_BIG_TCP != 0,
        attach: attach_mode,
        warnings: load_warnings(&datapath, &config)?,
    })
}

/// What works but will hurt: pod MTUs, and BIG TCP towards VXLAN nodes,
/// whose super-packets the kernel segments (`pass_big_gso`).
fn load_warnings(datapath: &Datapath, config: &Config) -> Result<Vec<String>> {
    let mut warnings = mtu_warnings(datapath, config)?;
    if config.flags & CONFIG_F_BIG_TCP != 0 && remotes::has_vxlan_peers(datapath)? {
        warnings.push(
            "BIG TCP with nodes reached over VXLAN: pods' super-packets to them are segmented \
             by the kernel's tunnel device (pass_big_gso), slower than without BIG TCP; it pays \
             on the same node and with direct routing"
                .to_owned(),
        );
    }
    Ok(warnings)
}

/// Creates the pin dir as needed and loads the programs and maps into it,
/// returning the datapath under its pin dir's lock; on failure, removes
/// what it created.
fn load_on_bpffs(pins: &PinDir, options: &LoadOptions) -> Result<(Locked, (bool, usize))> {
    let new_dirs = pins.create()?;
    let new_map_pins: Vec<PathBuf> = pinned_maps()
        .map(|map| pins.map(map.name))
        .filter(|path| !path.exists())
        .collect();
    let result = (|| {
        let lock = pins.lock()?;
        check_pinned_layouts(pins)?;
        check_pinned_capacity(
            pins,
            &[
                (Capacity::Pods, options.max_pods),
                (Capacity::RemotePods, options.max_remote_pods),
                (Capacity::RemoteCidrs, options.max_remote_cidrs),
            ],
        )?;
        if let Some(underlay) = &options.underlay {
            check_same_underlay(pins, underlay)?;
        }
        let loaded = load_programs(pins, options)?;
        let mut datapath = Locked::under(lock, pins)?;
        if new_map_pins.contains(&pins.map(map_table::PEER_NODES.name)) {
            // An upgrade from a build without `peer_nodes`: its remote
            // entries' nodes must stay peers, or their VXLAN is dropped.
            let nodes = remotes::vxlan_nodes(&datapath)?;
            peers::sync(&mut datapath, &nodes)?;
        }
        Ok((datapath, loaded))
    })();
    if result.is_err() {
        // Leave nothing behind that this failed attempt created.
        for path in &new_map_pins {
            let _ = fs::remove_file(path);
        }
        for dir in new_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

fn load_programs(pins: &PinDir, options: &LoadOptions) -> Result<(bool, usize)> {
    let mut loader = EbpfLoader::new();
    for map in pinned_maps() {
        loader.map_pin_path(map.name, pins.map(map.name));
    }
    if let Some(max_remote_pods) = options.max_remote_pods {
        loader.map_max_entries(map_table::REMOTE_PODS.name, max_remote_pods);
    }
    if let Some(max_remote_cidrs) = options.max_remote_cidrs {
        loader.map_max_entries(map_table::REMOTE_NODES.name, max_remote_cidrs);
    }
    if let Some(max_pods) = options.max_pods {
        loader.map_max_entries(map_table::LOCAL_ENDPOINTS.name, max_pods);
        loader.map_max_entries(map_table::POD_VETHS.name, max_pods);
    }
    let mut ebpf = loader
        .load(ebpf_object())
        .context("loading the pod-net eBPF object")?;
    // Verify every program before touching any pin: a rejected program
    // must leave the previous datapath exactly as it was.
    for name in PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no {name} program"))?;
        match program {
            Program::SchedClassifier(program) => program.load(),
            Program::Xdp(program) => program.load(),
            _ => bail!("{name} is neither TC nor XDP"),
        }
        .with_context(|| format!("the kernel verifier rejected {name}"))?;
    }
    let mut replaced = false;
    let mut attachments_updated = 0;
    for name in PROGRAMS {
        let program_path = pins.program(name);
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no {name} program"))?;
        if program_path.exists() {
            replaced = true;
            attachments_updated += switch_attachments(pins, name, program)?;
            crashpoint::here(crashpoint::LOAD_REPLACED);
        }
        pin_replacing(program, &program_path)?;
    }
    Ok((replaced, attachments_updated))
}

/// Points every attachment of `name` at `program`, atomically per link or
/// filter.
fn switch_attachments(pins: &PinDir, name: &str, program: &mut Program) -> Result<usize> {
    let mut updated = 0;
    for attachment in attach::attachments(pins, name)? {
        let AttachmentKind::Tcx(path) = &attachment.kind else {
            let Program::SchedClassifier(program) = program else {
                bail!("{name} has a tc filter but is not a TC program");
            };
            attach::switch_filter(attachment.ifindex, name, program)?;
            updated += 1;
            continue;
        };
        if netdev::link_by_index(attachment.ifindex)?.is_none() {
            // The interface is gone and its link with it: drop the stale pin.
            remove_pin(path)?;
            continue;
        }
        let pinned = PinnedLink::from_pin(path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        let link = FdLink::from(pinned);
        let not_ours = || format!("{} is not a {name} link", path.display());
        match program {
            Program::SchedClassifier(program) => program
                .attach_to_link(SchedClassifierLink::try_from(link).with_context(not_ours)?)
                .map(drop),
            Program::Xdp(program) => program
                .attach_to_link(XdpLink::try_from(link).with_context(not_ours)?)
                .map(drop),
            _ => bail!("{name} is neither TC nor XDP"),
        }
        .with_context(|| format!("updating the program in {}", path.display()))?;
        updated += 1;
    }
    Ok(updated)
}

/// Pins `program` at `path`, replacing an older pin by rename so the path
/// never goes missing.
fn pin_replacing(program: &mut Program, path: &Path) -> Result<()> {
    // bpffs refuses names with dots.
    let mut staging = path.as_os_str().to_owned();
    staging.push("_staging");
    let staging = PathBuf::from(staging);
    let _ = fs::remove_file(&staging);
    match program {
        Program::SchedClassifier(program) => program.pin(&staging),
        Program::Xdp(program) => program.pin(&staging),
        _ => bail!("{} is neither TC nor XDP", path.display()),
    }
    .with_context(|| format!("pinning program at {}", staging.display()))?;
    fs::rename(&staging, path).with_context(|| format!("moving pin to {}", path.display()))
}
