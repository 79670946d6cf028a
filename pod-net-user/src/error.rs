//! The failures that callers must tell apart, whatever path they come by.
//!
//! Each travels inside the `anyhow` chain its call site adds context to;
//! [`find`] picks it out. The CNI plugin turns them into the spec's codes
//! ("try again later" where waiting can help). The messages here name
//! options, capacities and maps, never one of the CLI's flags: the CLI
//! (`cli::error_line`) words a [`LoadRefusal`], a full map and an address
//! already taken with its own flags and commands, and the agent, which
//! takes the same options under other flags, keeps these words.
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
    /// A map has no room for what was asked: `size` entries hold it. Of a
    /// batch, `fitted` says how many of how many would have fitted (none
    /// went in). Maps cannot grow in place, so the way out is a reload.
    #[error(
        "{} is full ({size} entries){}; remove stale entries, or unload and load again with a \
         larger {capacity} capacity",
        .capacity.map(), fitted_clause(*.fitted)
    )]
    MapFull {
        capacity: Capacity,
        size: u32,
        fitted: Option<(usize, usize)>,
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

/// How much of a batch would have fitted into a full map, as a clause.
#[must_use]
pub fn fitted_clause(fitted: Option<(usize, usize)>) -> String {
    fitted.map_or_else(String::new, |(fit, wanted)| {
        format!(": {fit} of the {wanted} new entries fit, so none were added")
    })
}

/// The typed failure of type `E` in `error`'s chain, if there is one.
#[must_use]
pub fn find<E: std::error::Error + Send + Sync + 'static>(error: &anyhow::Error) -> Option<&E> {
    error.chain().find_map(|cause| cause.downcast_ref())
}
