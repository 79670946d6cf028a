//! Cluster membership, in flannel's schema so pod-net and flannel nodes
//! share one network: `pod-net agent --etcd-endpoints ... --iface ...`
//! joins through etcd (`etcd`), `--kube-subnet-mgr` through the Kubernetes
//! API (`kube`).
//!
//! [`join`] settles this node's subnet (an etcd lease, or the Node's
//! podCIDR), loads the datapath, and writes `subnet.env` and the CNI
//! conflist. [`Member::follow`] then lists and watches the store and keeps
//! the remote-node entries (BPF maps and the kernel path) equal to what
//! `admission` makes of the other nodes' leases, through the same bulk
//! diff as `apply`. It keeps this node's own lease as it wrote it, and
//! rides out the store going away: the datapath keeps what it has. What
//! the agent sees is on its status `board`.
mod admission;
mod backoff;
pub mod board;
pub mod conflist;
pub mod etcd;
pub mod flannel;
mod follow;
#[cfg(test)]
mod follow_tests;
pub mod kube;
mod layout;
mod lease;
#[cfg(test)]
mod memory;
pub mod store;
pub mod subnet_env;
mod target;

use std::{net::Ipv4Addr, path::PathBuf};

use log::info;
use thiserror::Error;

use self::{
    board::StatusBoard,
    etcd::{EtcdOptions, TlsError},
    flannel::NetworkConfig,
    kube::KubeOptions,
    layout::Layout,
    lease::OwnLease,
    store::StoreError,
    target::NodeFiles,
};
pub use self::{follow::follow, target::DatapathTarget};
use crate::{
    datapath::pins::PinDir,
    lifecycle::{
        load::{self, LoadOptions},
        underlay::UnderlayOptions,
    },
    mac::MacAddr,
    sys::{files, netdev},
};

/// What `pod-net agent` was told about the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The underlay interface, by name or by one of its IPv4 addresses.
    pub iface: String,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub cni_conflist: Option<PathBuf>,
    pub store: StoreOptions,
}

/// Which store the cluster lives in.
#[derive(Clone, Debug)]
pub enum StoreOptions {
    Etcd(EtcdOptions),
    Kube(KubeOptions),
}

impl StoreOptions {
    /// The store, as log lines and `status` name it.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Etcd(_) => "etcd",
            Self::Kube(_) => "kubernetes",
        }
    }
}

/// Failures that retrying does not fix: the agent stops with one line.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--iface {0}: no such interface")]
    NoInterface(String),
    #[error("--iface {0}: no interface has this address")]
    NoInterfaceWithAddress(Ipv4Addr),
    #[error("--iface {0} has no IPv4 address; give --public-ip")]
    NoAddress(String),
    #[error("no free subnet left in {min}..={max} (/{len}): the pool is full")]
    PoolFull {
        min: Ipv4Addr,
        max: Ipv4Addr,
        len: u8,
    },
    #[error("loading the datapath: {0:#}")]
    Load(anyhow::Error),
    #[error("reading --iface {iface}: {source:#}")]
    Netdev {
        iface: String,
        source: anyhow::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no lease of this node ({0}) to release")]
    NothingToRelease(String),
    /// Kubernetes settings or this node's Node (see `kube`).
    #[error("{0}")]
    Kube(String),
}

impl ClusterOptions {
    /// Checks what can be checked before anything starts (the interface,
    /// the store's settings, the directories written to), so a mistake
    /// there is one line and nothing else.
    pub fn validate(&self) -> Result<(), ClusterError> {
        underlay(self)?;
        match &self.store {
            StoreOptions::Etcd(etcd) => {
                etcd.tls.load()?;
            }
            StoreOptions::Kube(kube) => {
                kube.validate()?;
            }
        }
        let files = [Some(&self.subnet_file), self.cni_conflist.as_ref()];
        for path in files.into_iter().flatten() {
            files::check_dir_of(path).map_err(|source| ClusterError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Everything `join` settled, for `follow`: the store it follows, and
/// this node as the store knows it.
pub struct Joined<S> {
    layout: Layout,
    store: S,
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    lease: OwnLease,
    board: StatusBoard,
}

/// A joined node, whichever its store.
pub enum Member {
    // Boxed: a store's client is large.
    Etcd(Box<Joined<etcd::Etcd>>),
    Kube(Box<Joined<kube::KubeStore>>),
}

impl Member {
    /// Follows the store until the task is aborted (see [`follow`]).
    pub async fn follow(self, target: DatapathTarget) {
        match self {
            Self::Etcd(joined) => follow(*joined, target).await,
            Self::Kube(joined) => follow(*joined, target).await,
        }
    }
}

/// Joins the cluster: settles this node's subnet, loads the datapath on
/// `--iface`, and writes `subnet.env` and the conflist. Waits (with
/// backoff) while the store is unreachable or not ready; fails on what
/// waiting cannot fix. `board` shows how far it got. Returns the store to
/// follow, and the datapath to program.
pub async fn join(
    pins: &PinDir,
    options: ClusterOptions,
    board: StatusBoard,
) -> Result<(Member, DatapathTarget), ClusterError> {
    match &options.store {
        StoreOptions::Etcd(etcd) => {
            let etcd = etcd.clone();
            let (joined, target) = etcd::join(pins, &options, &etcd, board).await?;
            Ok((Member::Etcd(Box::new(joined)), target))
        }
        StoreOptions::Kube(kube) => {
            let kube = kube.clone();
            let (joined, target) = kube::join(pins, &options, &kube, board).await?;
            Ok((Member::Kube(Box::new(joined)), target))
        }
    }
}

/// `pod-net agent --release-lease`: removes this node's lease, as a node
/// leaving the cluster does, and says which. The datapath is left as it is.
pub async fn release(options: &ClusterOptions) -> Result<String, ClusterError> {
    let underlay = underlay(options)?;
    match &options.store {
        StoreOptions::Etcd(etcd) => etcd::release(etcd, underlay.public_ip)
            .await
            .map(|subnet| format!("the lease on {subnet}")),
        StoreOptions::Kube(kube) => kube::release(kube).await,
    }
}

/// The underlay as `--iface` and `--public-ip` give it.
struct Underlay {
    /// The interface's name.
    name: String,
    /// This node's address for the others.
    public_ip: Ipv4Addr,
    mtu: u32,
}

/// The underlay. `--iface` names the interface, or gives one of its
/// addresses (as flanneld's does); this node's address is `--public-ip`,
/// else that address, else the interface's first IPv4 one.
fn underlay(options: &ClusterOptions) -> Result<Underlay, ClusterError> {
    let netdev_error = |source| ClusterError::Netdev {
        iface: options.iface.clone(),
        source,
    };
    let given_ip: Option<Ipv4Addr> = options.iface.parse().ok();
    let link = match given_ip {
        Some(ip) => {
            let index = netdev::all_addresses()
                .map_err(netdev_error)?
                .into_iter()
                .find(|address| address.ip == ip)
                .map(|address| address.index)
                .ok_or(ClusterError::NoInterfaceWithAddress(ip))?;
            netdev::link_by_index(index)
                .map_err(netdev_error)?
                .ok_or(ClusterError::NoInterfaceWithAddress(ip))?
        }
        None => netdev::link_by_name(&options.iface)
            .map_err(netdev_error)?
            .ok_or_else(|| ClusterError::NoInterface(options.iface.clone()))?,
    };
    let public_ip = match options.public_ip.or(given_ip) {
        Some(ip) => ip,
        None => netdev::ipv4_addresses(link.index)
            .map_err(netdev_error)?
            .first()
            .copied()
            .ok_or_else(|| ClusterError::NoAddress(options.iface.clone()))?,
    };
    Ok(Underlay {
        name: link.name,
        public_ip,
        mtu: link.mtu,
    })
}

/// Loads (or reloads) the datapath on the underlay for `config`, with
/// `node_ip` as this node's VXLAN address; the VTEP MAC it got.
fn load_datapath(
    pins: &PinDir,
    underlay: &Underlay,
    node_ip: Ipv4Addr,
    config: &NetworkConfig,
) -> Result<MacAddr, ClusterError> {
    info!(
        "network {}, VXLAN VNI {} port {}{}",
        config.network,
        config.vni,
        config.port,
        if config.direct_routing {
            ", direct routing on the underlay's subnets"
        } else {
            ""
        }
    );
    let load = LoadOptions {
        underlay: Some(UnderlayOptions {
            ifname: underlay.name.clone(),
            node_ip,
            vni: config.vni,
            vxlan_port: config.port,
            beside_flannel: false,
        }),
        ..LoadOptions::default()
    };
    let report = load::load(pins, &load).map_err(ClusterError::Load)?;
    info!(
        "datapath {} at {}",
        if report.replaced {
            "reloaded"
        } else {
            "loaded"
        },
        pins.root().display()
    );
    Ok(report
        .underlay
        .as_ref()
        .map(|underlay| underlay.vtep_mac)
        .unwrap_or_default())
}

/// Writes this node's files for its subnet, and returns the datapath the
/// follow loop programs.
fn settle(
    pins: &PinDir,
    options: &ClusterOptions,
    underlay: &Underlay,
    config: &NetworkConfig,
    lease: &OwnLease,
    board: &StatusBoard,
) -> Result<DatapathTarget, ClusterError> {
    board.update(|status| {
        status.subnet = Some(lease.subnet.to_string());
        status.lease_expiry = lease.expiry();
    });
    let target = DatapathTarget {
        pins: pins.clone(),
        files: NodeFiles {
            subnet_file: options.subnet_file.clone(),
            cni_conflist: options.cni_conflist.clone(),
            subnet: lease.subnet,
            underlay_mtu: underlay.mtu,
        },
    };
    target.files.write(pins, config)?;
    Ok(target)
}
