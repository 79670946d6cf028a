//! `pod-net load` and `pod-net unload`: putting the datapath on bpffs and
//! taking it off again.
//!
//! `load` pins programs and maps and exits; the pinned TCX links keep the
//! programs attached with no process running. Loading over a loaded pin dir
//! keeps the maps with their entries and swaps the program inside every
//! existing link (`bpf_link_update`), so traffic never stops.
use std::{
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    EbpfLoader,
    maps::MapData,
    programs::{
        Program,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use pod_net_common::{
    Config,
    config::VXLAN_OVERHEAD,
    event::{CONFIG_F_BIG_TCP, CONFIG_F_NO_ANTI_SPOOF, CONFIG_F_NO_NAT_CHECK},
    map_table::{self, MapSpec},
    program_names,
    remote::derived_vtep_mac,
};

use crate::{
    crashpoint,
    datapath::{
        Datapath, attach,
        pins::{PinDir, PinDirLock, ensure_bpffs, unmount_bpffs},
        xdp,
    },
    ebpf_object,
    mac::MacAddr,
    node::{
        big_tcp, direct, peers, remotes,
        tunnel::{self, TunnelSpec},
        tunnel_sync,
    },
    sys::netdev::{self, Link},
};

/// Every program in the object.
pub const PROGRAMS: [&str; 3] = [
    program_names::POD_EGRESS,
    program_names::UNDERLAY_INGRESS,
    program_names::UNDERLAY_XDP,
];

/// The maps `load` pins, as this build lays them out.
fn pinned_maps() -> impl Iterator<Item = &'static MapSpec> {
    map_table::ALL.iter().filter(|map| map.pinned)
}

/// The cross-node settings: where VXLAN goes in and out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayOptions {
    pub ifname: String,
    pub node_ip: Ipv4Addr,
    pub vni: u32,
    pub vxlan_port: u16,
}

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
    /// Existing links switched to the new programs.
    pub links_updated: usize,
    /// The underlay in use after this load, if any.
    pub underlay: Option<UnderlaySummary>,
    /// Whether the XDP receive path is on after this load.
    pub xdp: bool,
    pub anti_spoofing: bool,
    pub nat_check: bool,
    pub big_tcp: bool,
    /// Things that work but will hurt (MTU mismatches).
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct UnderlaySummary {
    pub ifname: String,
    pub node_ip: Ipv4Addr,
    pub vni: u32,
    pub vxlan_port: u16,
    pub vtep_mac: MacAddr,
    pub tunnel_device: String,
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Loads (or reloads) the datapath into `pins`.
pub fn load(pins: &PinDir, options: &LoadOptions) -> Result<LoadReport> {
    if options.big_tcp == Some(true) && !netdev::has_ipv4_big_tcp()? {
        bail!("this kernel has no IPv4 BIG TCP (it came with Linux 6.3)");
    }
    if options.max_pods == Some(0) {
        bail!("--max-pods must be at least 1");
    }
    for (flag, value) in [
        ("--max-remote-pods", options.max_remote_pods),
        ("--max-remote-cidrs", options.max_remote_cidrs),
    ] {
        if value == Some(0) {
            bail!("{flag} must be at least 1");
        }
    }
    // Everything the underlay needs is checked before anything changes.
    let underlay = options
        .underlay
        .as_ref()
        .map(|underlay| resolve_underlay(underlay).map(|link| (underlay, link)))
        .transpose()?;
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
    let (lock, (replaced, links_updated)) = loaded?;
    if let Some((underlay, link)) = &underlay {
        enable_underlay(pins, underlay, link)?;
        // A tunnel device deleted by hand comes back empty: give it the
        // remote entries' routes, neighbours and FDB entries again. Direct
        // routes go with the underlay's link when it flaps: put them back.
        tunnel_sync::sync(pins, &lock)?;
        let direct_routes = remotes::direct_routes(&Datapath::open(pins)?)?;
        direct::execute(link, &direct::plan(link, &direct_routes)?)?;
    }
    let mut datapath = Datapath::open(pins)?;
    let mut config = datapath.config()?;
    for (wanted, off_flag) in [
        (options.anti_spoofing, CONFIG_F_NO_ANTI_SPOOF),
        (options.nat_check, CONFIG_F_NO_NAT_CHECK),
    ] {
        match wanted {
            Some(true) => config.flags &= !off_flag,
            Some(false) => config.flags |= off_flag,
            None => {}
        }
    }
    match options.big_tcp {
        Some(true) => config.flags |= CONFIG_F_BIG_TCP,
        Some(false) => config.flags &= !CONFIG_F_BIG_TCP,
        None => {}
    }
    if let Some(on) = options.big_tcp {
        let size = if on {
            big_tcp::BIG_SIZE
        } else {
            big_tcp::DEFAULT_SIZE
        };
        if let Some(link) = loaded_underlay(pins)? {
            big_tcp::set_underlay(&link, size)?;
        }
        big_tcp::set_all(&datapath, size)?;
    }
    datapath
        .config
        .set(0, config, 0)
        .context("writing config")?;
    if let Some(wanted) = options.xdp {
        xdp::set(pins, &datapath, &config, wanted)?;
    }
    Ok(LoadReport {
        mounted_bpffs,
        replaced,
        links_updated,
        underlay: underlay_summary(&config),
        xdp: xdp::is_on(pins)?,
        anti_spoofing: config.flags & CONFIG_F_NO_ANTI_SPOOF == 0,
        nat_check: config.flags & CONFIG_F_NO_NAT_CHECK == 0,
        big_tcp: config.flags & CONFIG_F_BIG_TCP != 0,
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
/// returning with the pin dir locked; on failure, removes what it created.
fn load_on_bpffs(pins: &PinDir, options: &LoadOptions) -> Result<(PinDirLock, (bool, usize))> {
    let new_dirs = pins.create()?;
    let new_map_pins: Vec<PathBuf> = pinned_maps()
        .map(|map| pins.map(map.name))
        .filter(|path| !path.exists())
        .collect();
    let result = (|| {
        let lock = pins.lock()?;
        check_pinned_layouts(pins)?;
        check_pinned_capacity(pins, options)?;
        if let Some(underlay) = &options.underlay {
            check_same_underlay(pins, underlay)?;
        }
        let loaded = load_programs(pins, options)?;
        if new_map_pins.contains(&pins.map(map_table::PEER_NODES.name)) {
            // An upgrade from a build without `peer_nodes`: its remote
            // entries' nodes must stay peers, or their VXLAN is dropped.
            peers::sync(pins, &remotes::peer_flags(&Datapath::open(pins)?)?)?;
        }
        Ok((lock, loaded))
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

/// The underlay interface, if it exists and carries `node_ip`.
fn resolve_underlay(options: &UnderlayOptions) -> Result<Link> {
    if options.vni > MAX_VNI {
        bail!("VNI {} is out of range (0..={MAX_VNI})", options.vni);
    }
    if options.vxlan_port == 0 {
        bail!("--vxlan-port must not be 0");
    }
    let Some(link) = netdev::link_by_name(&options.ifname)? else {
        bail!(
            "no interface named {:?} for --underlay in this network namespace",
            options.ifname
        );
    };
    let addresses = netdev::ipv4_addresses(link.index)?;
    if !addresses.contains(&options.node_ip) {
        bail!(
            "--node-ip {} is not an address of {} (it has {})",
            options.node_ip,
            options.ifname,
            if addresses.is_empty() {
                "none".to_owned()
            } else {
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    if link.mtu <= VXLAN_OVERHEAD + 68 {
        bail!("{} has MTU {}, too small for VXLAN", link.name, link.mtu);
    }
    Ok(link)
}

/// Refuses to switch an already configured underlay in place.
fn check_same_underlay(pins: &PinDir, wanted: &UnderlayOptions) -> Result<()> {
    if !pins.is_loaded() {
        return Ok(());
    }
    let config = Datapath::open(pins)?.config()?;
    let Some(current) = underlay_summary(&config) else {
        return Ok(());
    };
    if current.ifname != wanted.ifname
        || current.node_ip != wanted.node_ip
        || current.vni != wanted.vni
        || current.vxlan_port != wanted.vxlan_port
    {
        bail!(
            "already loaded with --underlay {} --node-ip {} --vni {} --vxlan-port {}; \
             `pod-net unload` first to change them",
            current.ifname,
            current.node_ip,
            current.vni,
            current.vxlan_port
        );
    }
    Ok(())
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
    let mut links_updated = 0;
    for name in PROGRAMS {
        let program_path = pins.program(name);
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no {name} program"))?;
        if program_path.exists() {
            replaced = true;
            links_updated += switch_links(pins, name, program)?;
            crashpoint::here(crashpoint::LOAD_REPLACED);
        }
        pin_replacing(program, &program_path)?;
    }
    Ok((replaced, links_updated))
}

/// Points every pinned link of `name` at `program`, atomically per link.
fn switch_links(pins: &PinDir, name: &str, program: &mut Program) -> Result<usize> {
    let mut updated = 0;
    for entry in pins.pinned_links(name)? {
        if netdev::link_by_index(entry.ifindex)?.is_none() {
            // The interface is gone and its link with it: drop the stale pin.
            remove_pin(&entry.path)?;
            continue;
        }
        let pinned = PinnedLink::from_pin(&entry.path)
            .with_context(|| format!("opening pinned link {}", entry.path.display()))?;
        let link = FdLink::from(pinned);
        let not_ours = || format!("{} is not a {name} link", entry.path.display());
        match program {
            Program::SchedClassifier(program) => program
                .attach_to_link(SchedClassifierLink::try_from(link).with_context(not_ours)?)
                .map(drop),
            Program::Xdp(program) => program
                .attach_to_link(XdpLink::try_from(link).with_context(not_ours)?)
                .map(drop),
            _ => bail!("{name} is neither TC nor XDP"),
        }
        .with_context(|| format!("updating the program in {}", entry.path.display()))?;
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

/// Writes the node settings, creates the kernel's tunnel device and attaches
/// the decapsulating program to the underlay.
fn enable_underlay(pins: &PinDir, options: &UnderlayOptions, link: &Link) -> Result<()> {
    let vtep_mac = MacAddr(derived_vtep_mac(options.node_ip.octets()));
    tunnel::ensure_device(&TunnelSpec {
        vni: options.vni,
        port: options.vxlan_port,
        underlay: link,
        node_ip: options.node_ip,
        vtep_mac,
    })?;
    let mut datapath = Datapath::open(pins)?;
    let current = datapath.config()?;
    let config = Config {
        node_ip: options.node_ip.octets(),
        underlay_ifindex: link.index,
        vni: options.vni,
        vxlan_port: options.vxlan_port,
        vtep_mac: vtep_mac.0,
        // A monitor may be listening: keep its settings.
        ..current
    };
    datapath
        .config
        .set(0, config, 0)
        .context("writing config")?;
    attach::attach(pins, program_names::UNDERLAY_INGRESS, link)?;
    Ok(())
}

/// What `config` says about the underlay, if pod-net has one.
#[must_use]
pub fn underlay_summary(config: &Config) -> Option<UnderlaySummary> {
    if !config.has_underlay() {
        return None;
    }
    let ifname = netdev::link_by_index(config.underlay_ifindex)
        .ok()
        .flatten()
        .map_or_else(
            || format!("(ifindex {})", config.underlay_ifindex),
            |link| link.name,
        );
    Some(UnderlaySummary {
        ifname,
        node_ip: Ipv4Addr::from(config.node_ip),
        vni: config.vni,
        vxlan_port: config.vxlan_port,
        vtep_mac: MacAddr(config.vtep_mac),
        tunnel_device: tunnel::device_name(config.vni),
    })
}

/// Pods whose MTU leaves no room for VXLAN on this underlay.
fn mtu_warnings(datapath: &Datapath, config: &Config) -> Result<Vec<String>> {
    if !config.has_underlay() {
        return Ok(Vec::new());
    }
    let overhead = remotes::tunnel_overhead(datapath)?;
    let mut warnings = Vec::new();
    for (_, endpoint) in datapath.endpoint_entries()? {
        if let Some(warning) = pod_mtu_warning(config, overhead, endpoint.ifindex)? {
            warnings.push(warning);
        }
    }
    warnings.dedup();
    Ok(warnings)
}

/// A warning when the pod behind `veth_ifindex` has an MTU that, plus the
/// `overhead` its packets get between nodes (see
/// [`remotes::tunnel_overhead`]), exceeds the underlay MTU.
pub fn pod_mtu_warning(
    config: &Config,
    overhead: u32,
    veth_ifindex: u32,
) -> Result<Option<String>> {
    if !config.has_underlay() {
        return Ok(None);
    }
    let (Some(underlay), Some(veth)) = (
        netdev::link_by_index(config.underlay_ifindex)?,
        netdev::link_by_index(veth_ifindex)?,
    ) else {
        return Ok(None);
    };
    let pod_mtu = netdev::veth_peer(&veth)?.map_or(veth.mtu, |peer| peer.mtu);
    if overhead == 0 {
        return Ok((pod_mtu > underlay.mtu).then(|| {
            format!(
                "pod behind {} has MTU {pod_mtu}, more than {}'s MTU {}: packets to direct \
                 nodes over {} bytes take the kernel's path (ICMP fragmentation needed or \
                 fragments). Set the pod MTU to {}",
                veth.name, underlay.name, underlay.mtu, underlay.mtu, underlay.mtu
            )
        }));
    }
    Ok((pod_mtu + VXLAN_OVERHEAD > underlay.mtu).then(|| {
        format!(
            "pod behind {} has MTU {pod_mtu}; with VXLAN's {VXLAN_OVERHEAD} bytes that exceeds \
             {}'s MTU {}, so cross-node packets over {} bytes take the kernel's path \
             (ICMP fragmentation needed or fragments). Set the pod MTU to {}",
            veth.name,
            underlay.name,
            underlay.mtu,
            underlay.mtu - VXLAN_OVERHEAD,
            underlay.mtu - VXLAN_OVERHEAD
        )
    }))
}

/// The underlay of the datapath loaded at `pins`, if any.
fn loaded_underlay(pins: &PinDir) -> Result<Option<Link>> {
    if !pins.is_loaded() {
        return Ok(None);
    }
    let config = Datapath::open(pins)?.config()?;
    if !config.has_underlay() {
        return Ok(None);
    }
    netdev::link_by_index(config.underlay_ifindex)
}

/// Refuses pinned maps whose layout differs from this build's.
fn check_pinned_layouts(pins: &PinDir) -> Result<()> {
    for map in pinned_maps() {
        let path = pins.map(map.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let entries_differ = !map.resizable && info.max_entries() != map.capacity;
        if info.key_size() as usize != map.key_size
            || info.value_size() as usize != map.value_size
            || entries_differ
        {
            bail!(
                "pinned map {} has key/value size {}/{} and {} entries, but this build expects \
                 {}/{}{}; it was made by another pod-net version. Run `pod-net unload` with that \
                 version first (this drops its entries)",
                path.display(),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                map.key_size,
                map.value_size,
                if map.resizable {
                    String::new()
                } else {
                    format!(" and {} entries", map.capacity)
                },
            );
        }
    }
    Ok(())
}

/// Refuses a `--max-*` capacity that differs from an existing map's: a map
/// cannot grow in place.
fn check_pinned_capacity(pins: &PinDir, options: &LoadOptions) -> Result<()> {
    for (map, flag, wanted) in [
        (
            map_table::LOCAL_ENDPOINTS.name,
            "--max-pods",
            options.max_pods,
        ),
        (
            map_table::REMOTE_PODS.name,
            "--max-remote-pods",
            options.max_remote_pods,
        ),
        (
            map_table::REMOTE_NODES.name,
            "--max-remote-cidrs",
            options.max_remote_cidrs,
        ),
    ] {
        let Some(wanted) = wanted else {
            continue;
        };
        let path = pins.map(map);
        if !path.exists() {
            continue;
        }
        let capacity = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?
            .max_entries();
        if capacity != wanted {
            bail!(
                "{map} at {} holds up to {capacity} entries; it cannot be resized to {flag} \
                 {wanted} in place (`pod-net unload` first, which drops its entries)",
                path.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct UnloadReport {
    pub links_removed: usize,
    pub tunnel_device: Option<String>,
}

/// Detaches everything, deletes the tunnel device and removes the pin dir.
/// Traffic falls back to the kernel path (the bridge) as the links go.
pub fn unload(pins: &PinDir) -> Result<UnloadReport> {
    if !pins.root().exists() {
        bail!(
            "pod-net is not loaded at {} (no such pin dir)",
            pins.root().display()
        );
    }
    if !pins.is_pin_dir() {
        bail!(
            "{} is not a pod-net pin dir (no pod-net-pin-dir marker, no pinned pod_egress); \
             nothing was removed",
            pins.root().display()
        );
    }
    let _lock = pins.lock()?;
    let mut report = UnloadReport::default();
    let config = if pins.is_loaded() {
        Datapath::open(pins)?.config().ok()
    } else {
        None
    };
    for program in PROGRAMS {
        for link in pins.pinned_links(program)? {
            remove_pin(&link.path)?;
            report.links_removed += 1;
        }
    }
    if let Some(config) = config.filter(Config::has_underlay) {
        if let Some(underlay) = netdev::link_by_index(config.underlay_ifindex)? {
            direct::remove_all_routes(&underlay)?;
            direct::remove_link_local(&underlay, Ipv4Addr::from(config.node_ip))?;
        }
        let device = tunnel::device_name(config.vni);
        // Reported only when there was one here to delete.
        if netdev::link_by_name(&device)?.is_some() {
            tunnel::remove_device(config.vni)?;
            report.tunnel_device = Some(device);
        }
    }
    for program in PROGRAMS {
        remove_pin(&pins.program(program))?;
    }
    for map in pinned_maps() {
        remove_pin(&pins.map(map.name))?;
    }
    let mut dirs: Vec<PathBuf> = PROGRAMS
        .iter()
        .map(|program| pins.program_links_dir(program))
        .collect();
    dirs.extend([
        pins.links_dir(),
        pins.programs_dir(),
        pins.marker(),
        pins.root().to_path_buf(),
    ]);
    for dir in dirs {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "removing {} (does it hold pins of another tool?)",
                        dir.display()
                    )
                });
            }
        }
    }
    Ok(report)
}

fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing pin {}", path.display())),
    }
}
