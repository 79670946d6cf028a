//! Joining through etcd, in flannel's etcd schema: the network config at
//! `<prefix>/config`, and a lease per node at `<prefix>/subnets/<subnet>`
//! that this node takes the way flannel does (`lease`) and keeps alive
//! under an etcd lease.
mod convert;
mod store;
mod watch;

use std::{net::Ipv4Addr, time::Duration};

use log::warn;

pub use self::store::{Etcd, TlsError, TlsFiles};
use super::{
    ClusterError, ClusterOptions, DatapathTarget, Joined,
    backoff::Backoff,
    board::StatusBoard,
    flannel::{LeaseAttrs, LeaseKey, NetworkConfig, SchemaError, Subnet},
    layout::{Layout, config_key, subnets_prefix},
    lease,
    store::{Store as _, StoreError},
};
use crate::datapath::pins::PinDir;

/// flanneld's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Where the cluster is in etcd, and how this node holds its lease.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub tls: TlsFiles,
}

/// Reads `<prefix>/config` until it is there and valid. A bad one is
/// logged once (until it changes), then waited out.
async fn network_config(
    store: &mut Etcd,
    prefix: &str,
    board: &StatusBoard,
) -> Result<NetworkConfig, StoreError> {
    let key = config_key(prefix);
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

/// Joins through etcd: reads the network config, loads the datapath,
/// leases a subnet, and writes this node's files.
pub async fn join(
    pins: &PinDir,
    options: &ClusterOptions,
    etcd: &EtcdOptions,
    board: StatusBoard,
) -> Result<(Joined<Etcd>, DatapathTarget), ClusterError> {
    let underlay = super::underlay(options)?;
    let tls = etcd.tls.load()?;
    let mut backoff = Backoff::new();
    let (mut store, config) = loop {
        let mut store = Etcd::connect_retrying(&etcd.endpoints, tls.clone(), &mut backoff).await;
        match network_config(&mut store, &etcd.prefix, &board).await {
            Ok(config) => break (store, config),
            Err(err) => warn!("etcd: {err}; reconnecting"),
        }
    };
    let vtep_mac = super::load_datapath(pins, &underlay, underlay.public_ip, &config)?;
    let attrs = LeaseAttrs::vxlan(underlay.public_ip, config.vni, vtep_mac);
    let lease = loop {
        let acquired = lease::acquire(
            &mut store,
            &subnets_prefix(&etcd.prefix),
            &options.subnet_file,
            etcd.lease_ttl,
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
    let target = super::settle(pins, options, &underlay, &config, &lease, &board)?;
    let joined = Joined {
        layout: Layout::Etcd {
            prefix: etcd.prefix.clone(),
        },
        store,
        config,
        public_ip: underlay.public_ip,
        lease,
        board,
    };
    Ok((joined, target))
}

/// Deletes the lease naming `public_ip`, as a node leaving does.
pub async fn release(etcd: &EtcdOptions, public_ip: Ipv4Addr) -> Result<Subnet, ClusterError> {
    let tls = etcd.tls.load()?;
    let mut store = Box::pin(Etcd::connect(&etcd.endpoints, tls)).await?;
    let listing = store.list(&subnets_prefix(&etcd.prefix)).await?;
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
    Err(ClusterError::NothingToRelease(public_ip.to_string()))
}
