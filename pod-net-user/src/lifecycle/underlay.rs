//! The underlay: the interface and node IP VXLAN and direct routing leave
//! from, checked as `load` takes it, set up (the tunnel device, the config,
//! `underlay_ingress`), and the pod MTUs it leaves room for.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use pod_net_common::{
    Config,
    config::{MAX_VNI, VXLAN_OVERHEAD},
    event::CONFIG_F_BESIDE_FLANNEL,
    program_names,
    remote::derived_vtep_mac,
};

use crate::{
    datapath::{Datapath, Locked, attach, attach::AttachMode, pins::PinDir},
    error::LoadRefusal,
    mac::MacAddr,
    node::{
        flannel,
        tunnel::{self, TunnelSpec},
    },
    sys::netdev::{self, Link, LinkKind},
};

/// The cross-node settings: where VXLAN goes in and out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayOptions {
    pub ifname: String,
    pub node_ip: Ipv4Addr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// flanneld owns the kernel path: its `flannel.<VNI>` instead of a
    /// tunnel device of pod-net's (see [`beside_flannel`]).
    pub beside_flannel: bool,
}

/// The underlay of flanneld's VXLAN device, `device` or the only
/// `flannel.<VNI>` there is: its VNI, port, the interface it sends through
/// and the address it sends from, for a load beside flanneld.
pub fn beside_flannel(device: Option<&str>) -> Result<UnderlayOptions> {
    let links = netdev::all_links()?;
    let found: Vec<&Link> = links
        .iter()
        .filter(|link| link.kind == LinkKind::Vxlan)
        .filter(|link| match device {
            Some(name) => link.name == name,
            None => link.name.starts_with("flannel."),
        })
        .collect();
    let vxlan = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "no VXLAN device {} here: is flanneld (vxlan backend) running?",
            device.unwrap_or("flannel.<VNI>")
        ),
        many => bail!(
            "several flannel devices ({}); name one with --flannel-device",
            many.iter()
                .map(|link| link.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let settings = vxlan.vxlan.unwrap_or_default();
    if vxlan.name != tunnel::flannel_device_name(settings.vni) {
        bail!(
            "{} has VNI {}: beside flannel the device must be flanneld's flannel.{}",
            vxlan.name,
            settings.vni,
            settings.vni
        );
    }
    let addresses = netdev::all_addresses()?;
    // flanneld sets both; an underlay found by the address alone will do.
    let node_ip = settings
        .local
        .with_context(|| format!("{} has no local address", vxlan.name))?;
    let index = settings
        .underlay
        .or_else(|| {
            addresses
                .iter()
                .find(|address| address.ip == IpAddr::V4(node_ip))
                .map(|address| address.index)
        })
        .with_context(|| {
            format!(
                "no interface holds {}'s local address {node_ip}",
                vxlan.name
            )
        })?;
    let underlay = netdev::link_by_index(index)?
        .with_context(|| format!("{}'s underlay (ifindex {index}) is gone", vxlan.name))?;
    Ok(UnderlayOptions {
        ifname: underlay.name,
        node_ip,
        vni: settings.vni,
        vxlan_port: settings.port,
        beside_flannel: true,
    })
}

/// flanneld's device for `options` (beside flannel): it must be a VXLAN
/// device of that VNI and port, sending from the node IP.
fn flannel_device(options: &UnderlayOptions) -> Result<Link> {
    let name = tunnel::flannel_device_name(options.vni);
    let device = netdev::link_by_name(&name)?
        .filter(|link| link.kind == LinkKind::Vxlan)
        .with_context(|| format!("no VXLAN device {name}: is flanneld running?"))?;
    let settings = device.vxlan.unwrap_or_default();
    if settings.port != options.vxlan_port
        || settings.local.is_some_and(|local| local != options.node_ip)
    {
        bail!(
            "{name} sends from {} to port {}, not from {} to port {}",
            settings
                .local
                .map_or_else(|| "any address".to_owned(), |ip| ip.to_string()),
            settings.port,
            options.node_ip,
            options.vxlan_port
        );
    }
    if device.mac.is_none() {
        bail!("{name} has no MAC address");
    }
    Ok(device)
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

/// The underlay interface, if it exists and carries `node_ip`.
pub(super) fn resolve_underlay(options: &UnderlayOptions) -> Result<Link> {
    if options.vni > MAX_VNI {
        bail!("VNI {} is out of range (0..={MAX_VNI})", options.vni);
    }
    if options.vxlan_port == 0 {
        return Err(LoadRefusal::ZeroVxlanPort.into());
    }
    let Some(link) = netdev::link_by_name(&options.ifname)? else {
        return Err(LoadRefusal::NoSuchUnderlay(options.ifname.clone()).into());
    };
    let addresses = netdev::ipv4_addresses(link.index)?;
    if !addresses.contains(&options.node_ip) {
        return Err(LoadRefusal::NodeIpNotOnUnderlay {
            node_ip: options.node_ip,
            ifname: options.ifname.clone(),
            has: if addresses.is_empty() {
                "none".to_owned()
            } else {
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }
        .into());
    }
    if link.mtu <= VXLAN_OVERHEAD + 68 {
        bail!("{} has MTU {}, too small for VXLAN", link.name, link.mtu);
    }
    if options.beside_flannel {
        flannel_device(options)?;
    }
    Ok(link)
}

/// Refuses an underlay, or a tunnel device, that the datapath of another
/// loaded pin dir uses: two datapaths on one underlay would decapsulate
/// (or drop) each other's VXLAN, and unloading one would delete the
/// other's tunnel device and routes. A tunnel device's alias names the pin
/// dir it serves (see [`tunnel::owner`]).
pub(super) fn check_owner(pins: &PinDir, options: &UnderlayOptions, underlay: &Link) -> Result<()> {
    let name = tunnel::device_name(options.vni);
    for device in netdev::all_links()? {
        let Some(owner) = tunnel::owner(&device) else {
            continue;
        };
        let in_the_way = device.name == name
            || device.vxlan.and_then(|vxlan| vxlan.underlay) == Some(underlay.index);
        if in_the_way && owner != pins.root() && PinDir::new(&owner).is_loaded() {
            bail!(
                "{} is the underlay of the datapath at {} (its tunnel device {}); one underlay \
                 serves one pin dir: `pod-net --pin-dir {} unload` first, or load this one \
                 without --underlay",
                underlay.name,
                owner.display(),
                device.name,
                owner.display()
            );
        }
    }
    Ok(())
}

/// Whether this pin dir may delete the tunnel device of `config` and its
/// routes: it is the device's owner, or no loaded pin dir is. Never
/// flanneld's.
pub(super) fn owns_tunnel(pins: &PinDir, config: &Config) -> Result<bool> {
    if config.beside_flannel() {
        return Ok(false);
    }
    let Some(device) = netdev::link_by_name(&tunnel::device_name(config.vni))? else {
        return Ok(true);
    };
    Ok(tunnel::owner(&device)
        .is_none_or(|owner| owner == pins.root() || !PinDir::new(&owner).is_loaded()))
}

/// Refuses to switch an already configured underlay in place.
pub(super) fn check_same_underlay(pins: &PinDir, wanted: &UnderlayOptions) -> Result<()> {
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
        || config.beside_flannel() != wanted.beside_flannel
    {
        bail!(
            "already loaded with --underlay {} --node-ip {} --vni {} --vxlan-port {}{}; \
             `pod-net unload` first to change them",
            current.ifname,
            current.node_ip,
            current.vni,
            current.vxlan_port,
            if config.beside_flannel() {
                " beside flannel"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Writes the node settings, creates the kernel's tunnel device (beside
/// flannel: uses flanneld's, and its MAC) and attaches the decapsulating
/// program to the underlay.
pub(super) fn enable_underlay(
    datapath: &mut Locked,
    options: &UnderlayOptions,
    link: &Link,
) -> Result<()> {
    let pins = datapath.pins().clone();
    let vtep_mac = if options.beside_flannel {
        flannel_device(options)?.mac.unwrap_or_default()
    } else {
        let vtep_mac = MacAddr(derived_vtep_mac(options.node_ip.octets()));
        tunnel::ensure_device(&TunnelSpec {
            vni: options.vni,
            port: options.vxlan_port,
            underlay: link,
            node_ip: options.node_ip,
            vtep_mac,
            owner: pins.root(),
        })?;
        vtep_mac
    };
    let current = datapath.config()?;
    let flags = if options.beside_flannel {
        current.flags | CONFIG_F_BESIDE_FLANNEL
    } else {
        current.flags & !CONFIG_F_BESIDE_FLANNEL
    };
    let config = Config {
        node_ip: options.node_ip.octets(),
        underlay_ifindex: link.index,
        vni: options.vni,
        vxlan_port: options.vxlan_port,
        vtep_mac: vtep_mac.0,
        flags,
        // A monitor may be listening: keep its settings.
        ..current
    };
    datapath.set_config(config)?;
    if options.beside_flannel {
        flannel::prefill(datapath)?;
    }
    // The current way: a `load --attach` that changes it moves every
    // attachment once the config says so.
    attach::attach(
        &pins,
        AttachMode::of(&config),
        program_names::UNDERLAY_INGRESS,
        link,
    )?;
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
        tunnel_device: tunnel::kernel_device_name(config),
    })
}

/// The underlay of the datapath loaded at `pins`, if any.
pub(super) fn loaded_underlay(pins: &PinDir) -> Result<Option<Link>> {
    if !pins.is_loaded() {
        return Ok(None);
    }
    underlay_link(&Datapath::open(pins)?.config()?)
}

/// The underlay `config` names, if pod-net has one and it still exists.
pub fn underlay_link(config: &Config) -> Result<Option<Link>> {
    if !config.has_underlay() {
        return Ok(None);
    }
    netdev::link_by_index(config.underlay_ifindex)
}
