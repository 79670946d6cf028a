//! Cluster membership: `pod-net agent --etcd-endpoints ... --iface ...`
//! joins a cluster through etcd, in flannel's schema.
//!
//! [`join`] leases this node a subnet (`lease`), loads the datapath, and
//! writes `subnet.env` and the CNI conflist. [`follow`] then lists and
//! watches the store and keeps the remote-node entries (BPF maps and the
//! kernel path) equal to what `admission` makes of the other nodes'
//! leases, through the same bulk diff as `apply`. It renews the lease,
//! writes it back if the store lost it or someone changed it, and rides out
//! the store going away: the datapath keeps what it has. What the agent
//! sees is on its status `board`.
mod admission;
mod backoff;
pub mod board;
pub mod conflist;
pub mod etcd;
pub mod flannel;
mod follow;
#[cfg(test)]
mod follow_tests;
mod lease;
#[cfg(test)]
mod memory;
pub mod store;
pub mod subnet_env;
mod target;

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use log::{info, warn};
use thiserror::Error;

use self::{
    backoff::Backoff,
    board::StatusBoard,
    etcd::{Etcd, TlsError, TlsFiles},
    flannel::{LeaseAttrs, LeaseKey, NetworkConfig, SchemaError, Subnet},
    lease::OwnLease,
    store::{Store, StoreError},
    target::NodeFiles,
};
pub use self::{follow::follow, target::DatapathTarget};
use crate::{
    datapath::pins::PinDir,
    lifecycle::{
        load::{self, LoadOptions},
        underlay::UnderlayOptions,
    },
    sys::{files, netdev},
};

/// flanneld's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// What `pod-net agent` was told about the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub iface: String,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub cni_conflist: Option<PathBuf>,
    pub lease_ttl: Duration,
    pub tls: TlsFiles,
}

/// Failures that retrying does not fix: the agent stops with one line.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--iface {0}: no such interface")]
    NoInterface(String),
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
    NothingToRelease(Ipv4Addr),
}

impl ClusterOptions {
    /// Checks what can be checked before anything starts (the interface,
    /// the TLS files, the directories written to), so a mistake there is
    /// one line and nothing else.
    pub fn validate(&self) -> Result<(), ClusterError> {
        underlay(self)?;
        self.tls.load()?;
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
    /// Where the network lives in the store (`<prefix>/config`,
    /// `<prefix>/subnets/`).
    prefix: String,
    store: S,
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    lease: OwnLease,
    board: StatusBoard,
}

/// Key names under the prefix.
fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The node's public IP and the underlay's MTU.
fn underlay(options: &ClusterOptions) -> Result<(Ipv4Addr, u32), ClusterError> {
    let netdev_error = |source| ClusterError::Netdev {
        iface: options.iface.clone(),
        source,
    };
    let link = netdev::link_by_name(&options.iface)
        .map_err(netdev_error)?
        .ok_or_else(|| ClusterError::NoInterface(options.iface.clone()))?;
    let public_ip = match options.public_ip {
        Some(ip) => ip,
        None => netdev::ipv4_addresses(link.index)
            .map_err(netdev_error)?
            .first()
            .copied()
            .ok_or_else(|| ClusterError::NoAddress(options.iface.clone()))?,
    };
    Ok((public_ip, link.mtu))
}

/// Reads `<prefix>/config` until it is there and valid. A bad one is
/// logged once (until it changes), then waited out.
async fn network_config(
    store: &mut Etcd,
    options: &ClusterOptions,
    board: &StatusBoard,
) -> Result<NetworkConfig, StoreError> {
    let key = config_key(&options.prefix);
    let mut said = None;
    loop {
        let problem = match store.get(&key).await? {
            Some(record) => {
                let parsed = match record.value.bytes() {
                    Some(bytes) => NetworkConfig::parse(&key, bytes),
                    None => Err(SchemaError::Invalid {
                        key: key.clone(),
                        reason: format!("{} bytes, too big to be a config", record.value.len()),
                    }),
                };
                match parsed {
                    Ok(config) => {
                        board.update(|status| status.problems.clear());
                        return Ok(config);
                    }
                    Err(err) => format!("skipping {err}"),
                }
            }
            None => format!("{key} is not in etcd yet; waiting for it"),
        };
        if said.as_ref() != Some(&problem) {
            warn!("{problem}");
            board.update(|status| status.problems = vec![problem.clone()]);
            said = Some(problem);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Joins the cluster: reads the network config, loads the datapath on
/// `--iface`, leases a subnet, and writes `subnet.env` and the conflist.
/// Waits (with backoff) while etcd is unreachable or the config missing or
/// bad; fails on what waiting cannot fix. `board` shows how far it got.
/// Returns the store to follow, and the datapath to program.
pub async fn join(
    pins: &PinDir,
    options: ClusterOptions,
    board: StatusBoard,
) -> Result<(Joined<Etcd>, DatapathTarget), ClusterError> {
    let (public_ip, underlay_mtu) = underlay(&options)?;
    let tls = options.tls.load()?;
    let mut backoff = Backoff::new();
    let (mut store, config) = loop {
        let mut store = Etcd::connect_retrying(&options.endpoints, tls.clone(), &mut backoff).await;
        match network_config(&mut store, &options, &board).await {
            Ok(config) => break (store, config),
            Err(err) => warn!("etcd: {err}; reconnecting"),
        }
    };
    info!(
        "network {} (/{} subnets in {}..={}), VXLAN VNI {} port {}",
        config.network,
        config.subnet_len,
        config.subnet_min,
        config.subnet_max,
        config.vni,
        config.port
    );
    let load = LoadOptions {
        underlay: Some(UnderlayOptions {
            ifname: options.iface.clone(),
            node_ip: public_ip,
            vni: config.vni,
            vxlan_port: config.port,
        }),
        ..LoadOptions::default()
    };
    let report = load::load(pins, &load).map_err(ClusterError::Load)?;
    let vtep_mac = report
        .underlay
        .as_ref()
        .map(|underlay| underlay.vtep_mac)
        .unwrap_or_default();
    info!(
        "datapath {} at {}",
        if report.replaced {
            "reloaded"
        } else {
            "loaded"
        },
        pins.root().display()
    );
    let attrs = LeaseAttrs::vxlan(public_ip, config.vni, vtep_mac);
    let lease = loop {
        let acquired = lease::acquire(
            &mut store,
            &subnets_prefix(&options.prefix),
            &options.subnet_file,
            options.lease_ttl,
            &config,
            &attrs,
        )
        .await;
        match acquired {
            Ok(lease) => break lease,
            Err(ClusterError::Store(err)) => {
                warn!("etcd: {err}; reconnecting");
                store.reconnect(&mut backoff).await?;
            }
            Err(err) => return Err(err),
        }
    };
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
            underlay_mtu,
        },
    };
    target.files.write(pins, &config)?;
    let joined = Joined {
        prefix: options.prefix,
        store,
        config,
        public_ip,
        lease,
        board,
    };
    Ok((joined, target))
}

/// `pod-net agent --release-lease`: deletes this node's lease, as a node
/// leaving the cluster does. The datapath is left as it is.
pub async fn release(options: &ClusterOptions) -> Result<Subnet, ClusterError> {
    let (public_ip, _) = underlay(options)?;
    let tls = options.tls.load()?;
    let mut store = Box::pin(Etcd::connect(&options.endpoints, tls)).await?;
    let listing = store.list(&subnets_prefix(&options.prefix)).await?;
    for record in &listing.records {
        let Some(key) = LeaseKey::parse(&record.key) else {
            continue;
        };
        let ours = record
            .value
            .bytes()
            .and_then(|bytes| serde_json::from_slice::<LeaseAttrs>(bytes).ok())
            .is_some_and(|attrs| attrs.public_ip == public_ip);
        if ours {
            store.delete_if(&record.key, record.modified).await?;
            if record.lease != 0 {
                store.revoke(record.lease).await?;
            }
            return Ok(key.subnet);
        }
    }
    Err(ClusterError::NothingToRelease(public_ip))
}
