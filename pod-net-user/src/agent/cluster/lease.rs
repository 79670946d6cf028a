//! This node's own lease in the store: taking a subnet the way flannel does,
//! keeping the lease alive, and writing it back when someone else changed
//! or removed it (this node's pods are on that subnet: it is not up for
//! grabs while the node runs).
use std::{net::Ipv4Addr, path::Path, time::Duration};

use log::{error, info, warn};

use super::{
    ClusterError,
    flannel::{LeaseAttrs, LeaseKey, NetworkConfig, Subnet},
    store::{Listing, Record, Store, StoreError, Value},
    subnet_env,
};
use crate::ops::cluster_status::unix_seconds;

/// Attempts at taking a subnet before giving up on a round of races.
const ACQUIRE_ATTEMPTS: usize = 64;

/// This node's lease.
#[derive(Clone, Debug)]
pub struct OwnLease {
    pub subnet: Subnet,
    /// Its full key.
    pub key: String,
    /// The store lease; 0 for a permanent reservation.
    pub id: i64,
    pub ttl: Duration,
    /// What this node writes there.
    pub value: Vec<u8>,
}

impl OwnLease {
    /// Renew at a third of the TTL: two chances more before it runs out.
    #[must_use]
    pub fn renew_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_secs(1))
    }

    /// Seconds since the epoch when it runs out unless renewed.
    #[must_use]
    pub fn expiry(&self) -> Option<u64> {
        (self.id != 0).then(|| unix_seconds(std::time::SystemTime::now() + self.ttl))
    }

    /// Whether `record` still says what this node wrote.
    fn is_ours(&self, record: &Record) -> bool {
        record.value.bytes() == Some(self.value.as_slice())
    }
}

/// Whether `record` is a lease naming `public_ip`.
fn names(record: &Record, public_ip: Ipv4Addr) -> bool {
    record
        .value
        .bytes()
        .and_then(|bytes| serde_json::from_slice::<LeaseAttrs>(bytes).ok())
        .is_some_and(|attrs| attrs.public_ip == public_ip)
}

/// Takes a subnet the way flannel does, preferring what this node's pods
/// already use: the subnet in `subnet_file` from an earlier run when its
/// lease is this node's or free, else a lease naming this node's address,
/// else a free subnet. Other leases naming this node's address are strays:
/// logged and left (the follow loop counts them). The write succeeds only
/// if the key is absent or unchanged, so racing nodes never share a
/// subnet; a lost race tries again.
pub async fn acquire(
    store: &mut impl Store,
    prefix: &str,
    subnet_file: &Path,
    ttl: Duration,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
) -> Result<OwnLease, ClusterError> {
    let value = attrs.to_json().into_bytes();
    let previous = subnet_env::previous_subnet(subnet_file).filter(|subnet| config.fits(*subnet));
    for _ in 0..ACQUIRE_ATTEMPTS {
        let listing = store.list(prefix).await?;
        let leases: Vec<(Subnet, &Record)> = listing
            .records
            .iter()
            .filter_map(|record| LeaseKey::parse(&record.key).map(|key| (key.subnet, record)))
            .collect();
        let choice = choose(&leases, previous, config, attrs.public_ip);
        for (subnet, record) in &leases {
            if !names(record, attrs.public_ip) || choice.reuses(record) {
                continue;
            }
            if config.fits(*subnet) {
                warn!(
                    "{} also names this node ({}); leaving it as a stray (a node has one \
                     subnet)",
                    record.key, attrs.public_ip
                );
            } else {
                info!(
                    "{} does not fit the network config; deleting it",
                    record.key
                );
                store.delete_if(&record.key, record.modified).await?;
            }
        }
        let (subnet, existing) = match choice {
            Choice::Reuse(subnet, record) => (subnet, Some(record)),
            Choice::Take(subnet) => (subnet, None),
            Choice::Allocate => {
                let taken: Vec<Subnet> = leases.iter().map(|(subnet, _)| *subnet).collect();
                let subnet = config.allocate(&taken).ok_or(ClusterError::PoolFull {
                    min: config.subnet_min,
                    max: config.subnet_max,
                    len: config.subnet_len,
                })?;
                (subnet, None)
            }
        };
        // A reservation (no store lease) stays one.
        let grant = match existing {
            Some(record) if record.lease == 0 => None,
            _ => Some(store.grant(ttl).await?),
        };
        let id = grant.map_or(0, |grant| grant.id);
        let key = existing.map_or_else(
            || format!("{prefix}{}", subnet.key_name()),
            |record| record.key.clone(),
        );
        let written = match existing {
            Some(record) => store.replace(&key, record.modified, &value, id).await?,
            None => store.put_if_absent(&key, &value, id).await?,
        };
        if written {
            if existing.is_some() {
                info!("reusing the lease of {} on {subnet}", attrs.public_ip);
            } else {
                info!(
                    "leased {subnet} for {} ({} s TTL)",
                    attrs.public_ip,
                    grant.map_or(0, |grant| grant.ttl.as_secs())
                );
            }
            return Ok(OwnLease {
                subnet,
                key,
                id,
                ttl: grant.map_or(Duration::ZERO, |grant| grant.ttl),
                value,
            });
        }
        // Another node was faster: give the store lease back, look again.
        if id != 0 {
            let _ = store.revoke(id).await;
        }
    }
    Err(StoreError::Other(format!(
        "no subnet after {ACQUIRE_ATTEMPTS} lost races; trying again"
    ))
    .into())
}

/// Which subnet to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice<'a> {
    /// A lease naming this node: written again as ours.
    Reuse(Subnet, &'a Record),
    /// A free subnet: written if still absent.
    Take(Subnet),
    /// A free subnet from the pool.
    Allocate,
}

impl Choice<'_> {
    fn reuses(&self, record: &Record) -> bool {
        matches!(self, Self::Reuse(_, chosen) if chosen.key == record.key)
    }
}

/// The subnet of `previous` (the subnet file's) when its lease names this
/// node or no lease overlaps it; else the first lease naming this node that
/// fits the config; else a new one.
fn choose<'a>(
    leases: &[(Subnet, &'a Record)],
    previous: Option<Subnet>,
    config: &NetworkConfig,
    public_ip: Ipv4Addr,
) -> Choice<'a> {
    if let Some(previous) = previous {
        let mut overlapping = leases
            .iter()
            .filter(|(subnet, _)| subnet.overlaps(previous));
        match (overlapping.next(), overlapping.next()) {
            (None, _) => return Choice::Take(previous),
            (Some(&(subnet, record)), None) if subnet == previous && names(record, public_ip) => {
                return Choice::Reuse(subnet, record);
            }
            _ => {}
        }
    }
    leases
        .iter()
        .find(|(subnet, record)| names(record, public_ip) && config.fits(*subnet))
        .map_or(Choice::Allocate, |&(subnet, record)| {
            Choice::Reuse(subnet, record)
        })
}

/// What [`ensure`] and [`restore`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mended {
    /// The lease was as we wrote it, and alive.
    Nothing,
    /// It was gone (an expired store lease, an etcd restarted empty) and is
    /// written again.
    Rewritten,
    /// Someone else had changed it; it is ours again.
    Restored,
    /// It changed again before we could write: the next look decides.
    Lost,
}

/// Makes sure our lease is in `listing` as we wrote it, its store lease
/// alive; writes it again if not.
pub async fn ensure(
    store: &mut impl Store,
    lease: &mut OwnLease,
    listing: &Listing,
) -> Result<Mended, StoreError> {
    if let Some(record) = listing
        .records
        .iter()
        .find(|record| record.key == lease.key)
    {
        return restore(store, lease, record).await;
    }
    let grant = store.grant(lease.ttl.max(Duration::from_secs(1))).await?;
    if store
        .put_if_absent(&lease.key, &lease.value, grant.id)
        .await?
    {
        warn!("our lease on {} was gone; wrote it again", lease.subnet);
        lease.id = grant.id;
        lease.ttl = grant.ttl;
        Ok(Mended::Rewritten)
    } else {
        let _ = store.revoke(grant.id).await;
        error!(
            "{} was taken by another writer before we could write it again",
            lease.key
        );
        Ok(Mended::Lost)
    }
}

/// Makes our key, which `record` shows as it is now, say what this node
/// wrote under a live store lease: written back over what someone else
/// wrote there, or under a fresh store lease if ours ran out.
pub async fn restore(
    store: &mut impl Store,
    lease: &mut OwnLease,
    record: &Record,
) -> Result<Mended, StoreError> {
    let alive = lease.id == 0 || store.keep_alive(lease.id).await?;
    let rewritten = !lease.is_ours(record);
    if !rewritten && alive {
        return Ok(Mended::Nothing);
    }
    if rewritten {
        error!(
            "{} was rewritten to say {}; this node serves {} and writes its lease back",
            lease.key,
            describe(&record.value),
            lease.subnet
        );
    }
    let (id, ttl) = if alive {
        (lease.id, lease.ttl)
    } else {
        let grant = store.grant(lease.ttl.max(Duration::from_secs(1))).await?;
        (grant.id, grant.ttl)
    };
    if store
        .replace(&lease.key, record.modified, &lease.value, id)
        .await?
    {
        lease.id = id;
        lease.ttl = ttl;
        if rewritten {
            Ok(Mended::Restored)
        } else {
            warn!("our lease on {} had expired; wrote it again", lease.subnet);
            Ok(Mended::Rewritten)
        }
    } else {
        if !alive {
            let _ = store.revoke(id).await;
        }
        warn!(
            "{} changed again before it could be written back",
            lease.key
        );
        Ok(Mended::Lost)
    }
}

/// A value for a log line: the text when short, else its size.
fn describe(value: &Value) -> String {
    match value.bytes() {
        Some(bytes) if bytes.len() <= 200 => String::from_utf8_lossy(bytes).into_owned(),
        Some(bytes) => format!("{} bytes", bytes.len()),
        None => format!("{} bytes", value.len()),
    }
}
