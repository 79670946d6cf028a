//! Pod MTUs against the underlay: a pod whose packets, plus what they grow
//! by between nodes, do not fit the underlay works, but its big packets
//! take the kernel's path. `load` and `pod add` warn about them.
use anyhow::Result;
use pod_net_common::{Config, config::VXLAN_OVERHEAD};

use crate::{datapath::Datapath, node::remotes, sys::netdev};

/// Pods whose MTU leaves no room for VXLAN on this underlay.
pub fn mtu_warnings(datapath: &Datapath, config: &Config) -> Result<Vec<String>> {
    if !config.has_underlay() {
        return Ok(Vec::new());
    }
    let overhead = remotes::tunnel_overhead(datapath)?;
    let mut warnings = Vec::new();
    for (_, endpoint) in datapath.endpoint_entries()? {
        if let Some(warning) = pod_mtu_warning(config, || Ok(overhead), endpoint.ifindex)? {
            warnings.push(warning);
        }
    }
    warnings.dedup();
    Ok(warnings)
}

/// A warning when the pod behind `veth_ifindex` has an MTU that, plus the
/// `overhead` its packets get between nodes (see
/// [`remotes::tunnel_overhead`]), exceeds the underlay MTU. `overhead` is
/// asked only for a pod MTU with no room for VXLAN: it reads every remote
/// entry, which a CNI ADD should not pay for a pod that fits either way.
pub fn pod_mtu_warning(
    config: &Config,
    overhead: impl FnOnce() -> Result<u32>,
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
    if pod_mtu + VXLAN_OVERHEAD <= underlay.mtu {
        return Ok(None);
    }
    if overhead()? == 0 {
        return Ok((pod_mtu > underlay.mtu).then(|| {
            format!(
                "pod behind {} has MTU {pod_mtu}, more than {}'s MTU {}: packets to direct \
                 nodes over {} bytes take the kernel's path (ICMP fragmentation needed or \
                 fragments). Set the pod MTU to {}",
                veth.name, underlay.name, underlay.mtu, underlay.mtu, underlay.mtu
            )
        }));
    }
    Ok(Some(format!(
        "pod behind {} has MTU {pod_mtu}; with VXLAN's {VXLAN_OVERHEAD} bytes that exceeds \
             {}'s MTU {}, so cross-node packets over {} bytes take the kernel's path \
             (ICMP fragmentation needed or fragments). Set the pod MTU to {}",
        veth.name,
        underlay.name,
        underlay.mtu,
        underlay.mtu - VXLAN_OVERHEAD,
        underlay.mtu - VXLAN_OVERHEAD
    )))
}
