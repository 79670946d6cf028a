//! `pod-net unload`: detaching everything, deleting the tunnel device and
//! pod-net's routes on the underlay, and removing the pin dir.
use std::{fs, io, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use pod_net_common::Config;

use super::underlay::owns_tunnel;
use crate::{
    datapath::{
        Datapath, attach,
        layout::{PROGRAMS, pinned_maps},
        pins::{PinDir, remove_pin},
    },
    node::{direct, tunnel},
    sys::netdev,
};

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
        for attachment in attach::attachments(pins, program)? {
            attach::remove(&attachment)?;
            report.links_removed += 1;
        }
    }
    // The underlay's routes and the tunnel device are another pin dir's
    // when its datapath owns them (a second load is refused, but a pin dir
    // from before owners were recorded may still be around).
    let config = match config.filter(Config::has_underlay) {
        Some(config) if !owns_tunnel(pins, &config)? => None,
        config => config,
    };
    if let Some(config) = config {
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
