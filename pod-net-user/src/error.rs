//! The failures that callers must tell apart, whatever path they come by.
//!
//! Each travels inside the `anyhow` chain its call site adds context to;
//! [`find`] picks it out. The CNI plugin turns them into the spec's codes
//! ("try again later" where waiting can help); the CLI prints them as any
//! other error. A [`LoadRefusal`] names the option it refuses, not a flag:
//! the CLI and the agent take those options under flags of their own, and
//! each puts its own names in the message.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use thiserror::Error;

use crate::mac::MacAddr;

#[derive(Debug, Error)]
pub enum NodeError {
    /// Nothing is pinned at the pin dir yet.
    #[error("pod-net is not loaded at {} (no pinned program); run `pod-net load` first", pin_dir.display())]
    NotLoaded { pin_dir: PathBuf },
    /// A map has no room for another entry. `advice` completes the
    /// sentence: what fitted, and how to make room.
    #[error("{map} is full ({capacity} entries){advice}")]
    MapFull {
        map: &'static str,
        capacity: u32,
        advice: String,
    },
    /// A pinned map is not of the type or sizes this build reads: another
    /// build pinned it.
    #[error("pinned map {map} is not of this build's layout (made by another pod-net version?)")]
    LayoutMismatch {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The address is another pod's already (another veth, MAC or owner).
    /// `owner` completes the sentence: " by container <id>", or nothing.
    #[error("{ip} is already registered on ifindex {ifindex} with MAC {mac}{owner}")]
    AlreadyRegistered {
        ip: IpAddr,
        ifindex: u32,
        mac: MacAddr,
        owner: String,
    },
    /// The interface a pod was registered with does not exist.
    #[error("no interface named {name:?} in this network namespace")]
    NoSuchInterface { name: String },
    /// The interface exists but is no veth, so it cannot be a pod's.
    #[error("interface {name:?} is not a veth; pods attach through their host-side veth")]
    NotAVeth { name: String },
}

/// An option `load` refuses, checked before anything changes.
#[derive(Debug, Error)]
pub enum LoadRefusal {
    #[error("the {0} capacity must be at least 1")]
    ZeroCapacity(Capacity),
    /// A map exists with another capacity; maps cannot grow in place.
    #[error(
        "{} at {} holds up to {current} entries; it cannot be resized to {wanted} in place \
         (`pod-net unload` first, which drops its entries)",
        .capacity.map(), .path.display()
    )]
    CapacityFixed {
        capacity: Capacity,
        path: PathBuf,
        current: u32,
        wanted: u32,
    },
    #[error("the VXLAN port must not be 0")]
    ZeroVxlanPort,
    #[error("no interface named {0:?} for the underlay in this network namespace")]
    NoSuchUnderlay(String),
    #[error("the node IP {node_ip} is not an address of {ifname} (it has {has})")]
    NodeIpNotOnUnderlay {
        node_ip: Ipv4Addr,
        ifname: String,
        /// Its IPv4 addresses, or "none".
        has: String,
    },
    #[error("the XDP receive path needs an underlay")]
    XdpNeedsUnderlay,
}

/// A map capacity `load` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    Pods,
    RemotePods,
    RemoteCidrs,
}

impl Capacity {
    /// The map it sizes.
    #[must_use]
    pub fn map(self) -> &'static str {
        use pod_net_common::map_table;
        match self {
            Self::Pods => map_table::LOCAL_ENDPOINTS.name,
            Self::RemotePods => map_table::REMOTE_PODS.name,
            Self::RemoteCidrs => map_table::REMOTE_NODES.name,
        }
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pods => "pod",
            Self::RemotePods => "remote pod",
            Self::RemoteCidrs => "remote CIDR",
        })
    }
}

/// The typed failure of type `E` in `error`'s chain, if there is one.
#[must_use]
pub fn find<E: std::error::Error + Send + Sync + 'static>(error: &anyhow::Error) -> Option<&E> {
    error.chain().find_map(|cause| cause.downcast_ref())
}
