//! Cluster membership: `pod-net agent --etcd-endpoints ... --iface ...`
//! joins a cluster through etcd, in flannel's schema.
//!
//! [`join`] leases this node a subnet, loads the datapath, and writes
//! `subnet.env` and the CNI conflist. [`follow`] then lists and watches the
//! other nodes' leases and keeps the remote-node entries (BPF maps and the
//! kernel path) equal to them, through the same bulk diff as `apply`. It
//! renews the lease, takes it again if the store lost it, and rides out
//! the store going away: the datapath keeps what it has.
pub mod conflist;
pub mod etcd;
mod files;
pub mod flannel;
pub mod store;
pub mod subnet_env;

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use log::{error, info, warn};
use serde::Serialize;
use thiserror::Error;

use self::{
    etcd::{Etcd, TlsError, TlsFiles},
    flannel::{LeaseAttrs, NetworkConfig, Peer, SchemaError, Subnet},
    store::{Change, Listing, Record, Store, StoreError, Watch as _, WatchUpdate},
};
use crate::{
    cidr::Cidr,
    datapath::{
        Datapath,
        loader::{self, LoadOptions},
        pins::PinDir,
        underlay::UnderlayOptions,
    },
    node::direct,
    ops::apply::{self, RemoteConfig},
    sys::netdev,
};

/// flanneld's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// Backoff between attempts while the store is unreachable.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
/// How often a failed reconcile is tried again.
const RETRY_RECONCILE: Duration = Duration::from_secs(2);
/// How often the maps are diffed against every lease even when nothing
/// changed, undoing drift (a `node del` or `node add` by hand).
const RESYNC: Duration = Duration::from_mins(1);
/// Attempts at taking a subnet before giving up on a round of races.
const ACQUIRE_ATTEMPTS: usize = 64;

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

/// Where a cluster agent publishes its [`ClusterStatus`] for `pod-net
/// status`, another process: beside its subnet file.
#[must_use]
pub fn status_file(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name("cluster-status.json")
}

/// The default of `pod-net status --cluster-status`: beside the default
/// subnet file.
pub const DEFAULT_STATUS_FILE: &str = "/run/pod-net/cluster-status.json";

/// What `status` and `/metrics` can show about the store.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub connected: bool,
    /// Seconds since the epoch of the last complete list or watch update.
    pub last_sync: Option<u64>,
    /// The store revision the maps reflect.
    pub revision: i64,
    pub peers: usize,
    pub subnet: Option<String>,
    /// Seconds since the epoch when our lease runs out unless renewed;
    /// `None` for a permanent reservation.
    pub lease_expiry: Option<u64>,
    /// Records skipped as malformed or foreign.
    pub skipped_records: u64,
    /// Seconds since the epoch when this was last written to its file.
    #[serde(default)]
    pub updated: u64,
    /// The agent's pin dir: `status` shows a store only for its own.
    #[serde(default)]
    pub pin_dir: String,
    /// Where it is published, if anywhere.
    #[serde(skip)]
    file: Option<PathBuf>,
}

impl ClusterStatus {
    /// The Prometheus text exposition of the store's state, for the
    /// agent's `/metrics`.
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = write!(
                    out,
                    "# HELP pod_net_cluster_{name} {help}\n# TYPE pod_net_cluster_{name} {kind}\n\
                     pod_net_cluster_{name} {value}\n"
                );
            }
        };
        gauge(
            "store_connected",
            "Whether the agent is connected to the cluster store.",
            "gauge",
            Some(u8::from(self.connected).to_string()),
        );
        gauge(
            "last_sync_timestamp_seconds",
            "When the maps last matched the store.",
            "gauge",
            self.last_sync.map(|time| time.to_string()),
        );
        gauge(
            "store_revision",
            "The store revision the maps reflect.",
            "gauge",
            Some(self.revision.to_string()),
        );
        gauge(
            "peers",
            "Other nodes programmed from the store.",
            "gauge",
            Some(self.peers.to_string()),
        );
        gauge(
            "lease_expiry_timestamp_seconds",
            "When this node's lease runs out unless renewed.",
            "gauge",
            self.lease_expiry.map(|time| time.to_string()),
        );
        gauge(
            "skipped_records_total",
            "Store records skipped as malformed or foreign.",
            "counter",
            Some(self.skipped_records.to_string()),
        );
        out
    }
}

pub type SharedStatus = Arc<Mutex<ClusterStatus>>;

fn update(status: &SharedStatus, change: impl FnOnce(&mut ClusterStatus)) {
    if let Ok(mut status) = status.lock() {
        change(&mut status);
        status.updated = unix_seconds(SystemTime::now());
        // Best effort: `/metrics` has it all the same.
        if let (Some(file), Ok(json)) = (&status.file, serde_json::to_vec_pretty(&*status)) {
            let _ = files::write_atomically(file, &json);
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// This node's lease.
#[derive(Clone, Debug)]
struct OwnLease {
    subnet: Subnet,
    /// The store lease; 0 for a permanent reservation.
    id: i64,
    ttl: Duration,
    value: Vec<u8>,
}

/// Everything `join` settled, for `follow`.
pub struct Joined {
    options: ClusterOptions,
    store: Etcd,
    config: NetworkConfig,
    public_ip: Ipv4Addr,
    attrs: LeaseAttrs,
    lease: OwnLease,
    status: SharedStatus,
}

impl Joined {
    /// The store's state as this agent sees it.
    #[must_use]
    pub fn status(&self) -> SharedStatus {
        self.status.clone()
    }
}

/// Key names under the prefix.
fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The node's public IP and the underlay's MTU.
fn underlay(options: &ClusterOptions) -> Result<(Ipv4Addr, u32, u32), ClusterError> {
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
    Ok((public_ip, link.mtu, link.index))
}

/// Logs each bad record once (per key and value) and counts it.
#[derive(Default)]
struct BadRecords(HashSet<(String, Vec<u8>)>);

impl BadRecords {
    fn report(&mut self, record: &Record, error: &SchemaError, status: &SharedStatus) {
        if self.0.insert((record.key.clone(), record.value.clone())) {
            error!("skipping {error}");
            update(status, |status| status.skipped_records += 1);
        }
    }
}

/// Connects, retrying with backoff until etcd answers.
async fn connect(options: &ClusterOptions, status: &SharedStatus) -> Result<Etcd, ClusterError> {
    let tls = options.tls.load()?;
    let mut delay = BACKOFF.0;
    loop {
        // Boxed: the client's connect future is large.
        match Box::pin(Etcd::connect(&options.endpoints, tls.clone())).await {
            Ok(store) => {
                update(status, |status| status.connected = true);
                return Ok(store);
            }
            Err(err) => {
                update(status, |status| status.connected = false);
                warn!(
                    "etcd {}: {err}; retrying in {delay:?}",
                    options.endpoints.join(",")
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Reads `<prefix>/config` until it is there and valid. A bad one is
/// logged once (until it changes), then waited out.
async fn network_config(
    store: &mut Etcd,
    options: &ClusterOptions,
    status: &SharedStatus,
) -> Result<NetworkConfig, StoreError> {
    let key = config_key(&options.prefix);
    let mut bad = BadRecords::default();
    let mut said_missing = false;
    loop {
        match store.get(&key).await? {
            Some(record) => match NetworkConfig::parse(&key, &record.value) {
                Ok(config) => return Ok(config),
                Err(err) => bad.report(&record, &err, status),
            },
            None if !said_missing => {
                warn!("{key} is not in etcd yet; waiting for it");
                said_missing = true;
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Joins the cluster: reads the network config, loads the datapath on
/// `--iface`, leases a subnet, and writes `subnet.env` and the conflist.
/// Waits (with backoff) while etcd is unreachable or the config missing or
/// bad; fails on what waiting cannot fix.
pub async fn join(pins: &PinDir, options: ClusterOptions) -> Result<Joined, ClusterError> {
    let status = SharedStatus::default();
    update(&status, |status| {
        status.file = Some(status_file(&options.subnet_file));
        status.pin_dir = pins.root().display().to_string();
    });
    let (public_ip, mtu, _) = underlay(&options)?;
    options.tls.load()?;
    let (mut store, config) = loop {
        let mut store = connect(&options, &status).await?;
        match network_config(&mut store, &options, &status).await {
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
    let report = loader::load(pins, &load).map_err(ClusterError::Load)?;
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
        match acquire(&mut store, &options, &config, &attrs).await {
            Ok(lease) => break lease,
            Err(ClusterError::Store(err)) => {
                warn!("etcd: {err}; reconnecting");
                store = connect(&options, &status).await?;
            }
            Err(err) => return Err(err),
        }
    };
    write_node_files(pins, &options, &config, lease.subnet, mtu)?;
    update(&status, |status| {
        status.subnet = Some(lease.subnet.to_string());
        status.lease_expiry = lease_expiry(&lease);
    });
    Ok(Joined {
        options,
        store,
        config,
        public_ip,
        attrs,
        lease,
        status,
    })
}

fn lease_expiry(lease: &OwnLease) -> Option<u64> {
    (lease.id != 0).then(|| unix_seconds(SystemTime::now() + lease.ttl))
}

fn write_node_files(
    pins: &PinDir,
    options: &ClusterOptions,
    config: &NetworkConfig,
    subnet: Subnet,
    underlay_mtu: u32,
) -> Result<(), ClusterError> {
    let write_error = |path: &PathBuf| {
        let path = path.display().to_string();
        move |source| ClusterError::Write { path, source }
    };
    subnet_env::write(&options.subnet_file, config, subnet, underlay_mtu)
        .map_err(write_error(&options.subnet_file))?;
    info!("wrote {}", options.subnet_file.display());
    if let Some(path) = &options.cni_conflist {
        let mtu = subnet_env::pod_mtu(underlay_mtu);
        conflist::write(path, &conflist::render(config, subnet, mtu, pins.root()))
            .map_err(write_error(path))?;
        info!("wrote {}", path.display());
    }
    Ok(())
}

/// Takes a subnet the way flannel does: this node's existing lease (same
/// `PublicIP`), else the one in `--subnet-file` from an earlier run if still
/// free, else a free one. The write succeeds only if the key is absent, so
/// racing nodes never share a subnet; a lost race tries again.
async fn acquire(
    store: &mut Etcd,
    options: &ClusterOptions,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
) -> Result<OwnLease, ClusterError> {
    let value = attrs.to_json().into_bytes();
    let prefix = subnets_prefix(&options.prefix);
    for _ in 0..ACQUIRE_ATTEMPTS {
        let listing = store.list(&prefix).await?;
        let leases: Vec<(Subnet, &Record)> = listing
            .records
            .iter()
            .filter_map(|record| Subnet::from_key(&record.key).map(|subnet| (subnet, record)))
            .collect();
        let ours = leases.iter().find(|(_, record)| {
            serde_json::from_slice::<LeaseAttrs>(&record.value)
                .is_ok_and(|existing| existing.public_ip == attrs.public_ip)
        });
        if let Some((subnet, record)) = ours {
            if config.fits(*subnet) {
                // Renew it under a fresh store lease (a reservation stays one).
                let grant = if record.lease == 0 {
                    None
                } else {
                    Some(store.grant(options.lease_ttl).await?)
                };
                let id = grant.map_or(0, |grant| grant.id);
                if store
                    .replace(&record.key, &record.value, &value, id)
                    .await?
                {
                    info!("reusing the lease of {} on {subnet}", attrs.public_ip);
                    return Ok(OwnLease {
                        subnet: *subnet,
                        id,
                        ttl: grant.map_or(Duration::ZERO, |grant| grant.ttl),
                        value,
                    });
                }
                continue;
            }
            info!(
                "{} does not fit the network config; deleting it",
                record.key
            );
            store.delete_if(&record.key, &record.value).await?;
            continue;
        }
        let taken: Vec<Subnet> = leases.iter().map(|(subnet, _)| *subnet).collect();
        let previous = subnet_env::previous_subnet(&options.subnet_file).filter(|subnet| {
            config.fits(*subnet) && !taken.iter().any(|lease| lease.overlaps(*subnet))
        });
        let subnet =
            previous
                .or_else(|| config.allocate(&taken))
                .ok_or(ClusterError::PoolFull {
                    min: config.subnet_min,
                    max: config.subnet_max,
                    len: config.subnet_len,
                })?;
        let grant = store.grant(options.lease_ttl).await?;
        let key = format!("{prefix}{}", subnet.key_name());
        if store.put_if_absent(&key, &value, grant.id).await? {
            info!(
                "leased {subnet} for {} ({} s TTL)",
                attrs.public_ip,
                grant.ttl.as_secs()
            );
            return Ok(OwnLease {
                subnet,
                id: grant.id,
                ttl: grant.ttl,
                value,
            });
        }
        // Another node was faster: give the store lease back, look again.
        let _ = store.revoke(grant.id).await;
    }
    Err(StoreError::Other(format!(
        "no subnet after {ACQUIRE_ATTEMPTS} lost races; trying again"
    ))
    .into())
}

/// What the maps were last made equal to.
#[derive(Default)]
struct View {
    peers: BTreeMap<String, Peer>,
    /// The store revision of `peers`; 0 when they must be listed again.
    revision: i64,
}

/// Follows the other nodes' leases until the task is aborted. Never
/// returns an error: store trouble is logged and retried, and meanwhile
/// the datapath forwards with the entries it has.
pub async fn follow(pins: PinDir, mut joined: Joined) {
    let mut bad = BadRecords::default();
    let mut view = View::default();
    let mut delay = BACKOFF.0;
    loop {
        match follow_once(&pins, &mut joined, &mut bad, &mut view).await {
            Ok(why) => {
                info!("listing again: {why}");
                view.revision = 0;
                delay = BACKOFF.0;
            }
            Err(err) => {
                update(&joined.status, |status| status.connected = false);
                warn!("etcd: {err}; the datapath keeps its entries; reconnecting in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF.1);
                match connect(&joined.options, &joined.status).await {
                    Ok(store) => joined.store = store,
                    Err(err) => error!("{err}"),
                }
            }
        }
    }
}

/// After a reconnect: whether the watch can go on from where it stopped.
/// Not if the store went back in time or lost our lease (an etcd restarted
/// empty): then everything is listed again.
async fn can_resume(joined: &mut Joined, view: &View) -> Result<bool, StoreError> {
    if view.revision == 0 {
        return Ok(false);
    }
    let key = own_key(joined);
    let own = joined.store.list(&key).await?;
    Ok(own.revision >= view.revision
        && own
            .records
            .iter()
            .any(|record| record.key == key && record.value == joined.lease.value))
}

fn own_key(joined: &Joined) -> String {
    format!(
        "{}{}",
        subnets_prefix(&joined.options.prefix),
        joined.lease.subnet.key_name()
    )
}

/// A list (unless the watch can resume), then a watch from there, until
/// the watch is lost (`Ok`, with why) or the store fails (`Err`).
async fn follow_once(
    pins: &PinDir,
    joined: &mut Joined,
    bad: &mut BadRecords,
    view: &mut View,
) -> Result<String, StoreError> {
    let prefix = subnets_prefix(&joined.options.prefix);
    let mut reconciled = true;
    if can_resume(joined, view).await? {
        info!("resuming the watch at revision {}", view.revision + 1);
    } else {
        let listing = joined.store.list(&prefix).await?;
        ensure_own_lease(joined, &listing).await?;
        view.peers.clear();
        for record in &listing.records {
            accept(joined, &mut view.peers, record, bad);
        }
        view.revision = listing.revision;
        reconciled = reconcile(pins, joined, &view.peers, view.revision);
        info!(
            "following {} other node(s) under {prefix} from revision {}",
            view.peers.len(),
            view.revision
        );
    }
    update(&joined.status, |status| status.connected = true);
    let mut watch = joined.store.watch(&prefix, view.revision + 1).await?;
    let own_key = own_key(joined);
    let mut renew_at = tokio::time::Instant::now() + renew_interval(&joined.lease);
    let mut resync_at = tokio::time::Instant::now() + RESYNC;
    loop {
        tokio::select! {
            update = watch.next() => match update? {
                WatchUpdate::Lost(why) => return Ok(why),
                WatchUpdate::Changes { changes, revision } => {
                    // The touched keys' peers before this update.
                    let mut before: BTreeMap<String, Option<Peer>> = BTreeMap::new();
                    for change in changes {
                        let key = match &change {
                            Change::Put(record) => record.key.clone(),
                            Change::Delete { key } => key.clone(),
                        };
                        before
                            .entry(key.clone())
                            .or_insert_with(|| view.peers.get(&key).copied());
                        match change {
                            Change::Put(record) => {
                                view.peers.remove(&record.key);
                                accept(joined, &mut view.peers, &record, bad);
                            }
                            Change::Delete { key } if key == own_key => {
                                return Ok(format!("our lease {key} was deleted"));
                            }
                            Change::Delete { key } => {
                                view.peers.remove(&key);
                            }
                        }
                    }
                    view.revision = view.revision.max(revision);
                    reconciled = if reconciled {
                        apply_update(pins, joined, &before, &view.peers, revision)
                    } else {
                        reconcile(pins, joined, &view.peers, revision)
                    };
                }
            },
            () = tokio::time::sleep_until(renew_at), if joined.lease.id != 0 => {
                if !joined.store.keep_alive(joined.lease.id).await? {
                    return Ok(format!("our store lease {:x} expired", joined.lease.id));
                }
                update(&joined.status, |status| status.lease_expiry = lease_expiry(&joined.lease));
                renew_at = tokio::time::Instant::now() + renew_interval(&joined.lease);
            },
            () = tokio::time::sleep(RETRY_RECONCILE), if !reconciled => {
                reconciled = reconcile(pins, joined, &view.peers, 0);
            },
            () = tokio::time::sleep_until(resync_at) => {
                reconciled = reconcile(pins, joined, &view.peers, 0);
                resync_at = tokio::time::Instant::now() + RESYNC;
            },
        }
    }
}

/// Renew at a third of the TTL: two chances more before it runs out.
fn renew_interval(lease: &OwnLease) -> Duration {
    (lease.ttl / 3).max(Duration::from_secs(1))
}

/// Makes sure our lease is in the listing; writes it again if the store
/// lost it (an expired store lease, an etcd restarted empty).
async fn ensure_own_lease(joined: &mut Joined, listing: &Listing) -> Result<(), StoreError> {
    let key = own_key(joined);
    let present = listing.records.iter().find(|record| record.key == key);
    match present {
        // Still ours, and its store lease alive.
        Some(record)
            if record.value == joined.lease.value
                && (joined.lease.id == 0 || joined.store.keep_alive(joined.lease.id).await?) =>
        {
            return Ok(());
        }
        Some(record) if record.value == joined.lease.value => {}
        Some(record) => {
            error!(
                "{key} now names another node ({}); keeping our subnet's entries",
                String::from_utf8_lossy(&record.value)
            );
            return Ok(());
        }
        None => {}
    }
    let grant = joined.store.grant(joined.options.lease_ttl).await?;
    let value = joined.attrs.to_json().into_bytes();
    let written = if present.is_some() {
        joined.store.replace(&key, &value, &value, grant.id).await?
    } else {
        joined.store.put_if_absent(&key, &value, grant.id).await?
    };
    if written {
        warn!(
            "our lease on {} was gone; wrote it again",
            joined.lease.subnet
        );
        joined.lease.id = grant.id;
        joined.lease.ttl = grant.ttl;
        update(&joined.status, |status| {
            status.lease_expiry = lease_expiry(&joined.lease);
        });
    } else {
        let _ = joined.store.revoke(grant.id).await;
        error!("{key} was taken by another node before we could write it again");
    }
    Ok(())
}

/// Adds the lease in `record` to `peers` if it is another node's and well
/// formed; logs and counts it once otherwise.
fn accept(
    joined: &Joined,
    peers: &mut BTreeMap<String, Peer>,
    record: &Record,
    bad: &mut BadRecords,
) {
    match Peer::parse(&record.key, &record.value, joined.config.vni) {
        Ok(peer) if peer.subnet == joined.lease.subnet || peer.public_ip == joined.public_ip => {}
        Ok(peer) if peer.subnet.overlaps(joined.lease.subnet) => {
            let error = SchemaError::Invalid {
                key: record.key.clone(),
                reason: format!("overlaps our subnet {}", joined.lease.subnet),
            };
            bad.report(record, &error, &joined.status);
        }
        Ok(peer) => {
            peers.insert(record.key.clone(), peer);
        }
        Err(error) => bad.report(record, &error, &joined.status),
    }
}

/// The remote entry for a peer: direct when `direct_subnets` (see
/// [`direct_subnets`]) holds its address, as flannel's `DirectRouting`
/// does; over VXLAN to its VTEP MAC otherwise.
fn remote(peer: &Peer, direct_subnets: &[Cidr]) -> RemoteConfig {
    let direct = direct::on_link(direct_subnets, peer.public_ip);
    RemoteConfig {
        cidr: peer.subnet.cidr(),
        node_ip: peer.public_ip,
        vtep_mac: (!direct).then_some(peer.vtep_mac),
        direct,
    }
}

/// The underlay subnets whose peers are routed to directly: none unless
/// the network config asks for `DirectRouting`. Read afresh each time, so
/// an address change on the underlay is followed.
fn direct_subnets(pins: &PinDir, joined: &Joined) -> anyhow::Result<Vec<Cidr>> {
    if !joined.config.direct_routing {
        return Ok(Vec::new());
    }
    let underlay = Datapath::open(pins)?.config()?.underlay_ifindex;
    Ok(direct::subnets(underlay, &netdev::all_addresses()?))
}

/// Makes the remote-node entries equal to `peers` with `apply`'s diff
/// against the maps. Only remote nodes: pods are the CNI runtime's and the
/// operator's. Whether it worked (a failure is logged, and retried by the
/// caller).
fn reconcile(
    pins: &PinDir,
    joined: &Joined,
    peers: &BTreeMap<String, Peer>,
    revision: i64,
) -> bool {
    let result = direct_subnets(pins, joined).and_then(|direct_subnets| {
        // One entry per subnet (flannel's dual-stack keys name a subnet twice).
        let nodes: BTreeMap<_, _> = peers
            .values()
            .map(|peer| (peer.subnet, remote(peer, &direct_subnets)))
            .collect();
        apply::run_nodes(pins, nodes.into_values().collect())
            .map(|changes| report(&changes, peers.len(), revision))
    });
    synced(joined, peers, revision, result)
}

/// Programs what one watch update changed: `before` holds the touched
/// keys' peers as they were. The same `apply::execute` as a full
/// reconcile, without diffing every entry in the maps, which at 10,000
/// nodes costs tens of milliseconds per lease. If the maps drifted (the
/// change fails), a full reconcile repairs them.
fn apply_update(
    pins: &PinDir,
    joined: &Joined,
    before: &BTreeMap<String, Option<Peer>>,
    peers: &BTreeMap<String, Peer>,
    revision: i64,
) -> bool {
    let direct_subnets = match direct_subnets(pins, joined) {
        Ok(subnets) => subnets,
        Err(err) => {
            warn!("etcd: {err:#}; reconciling every entry");
            return reconcile(pins, joined, peers, revision);
        }
    };
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for (key, old) in before {
        let new = peers.get(key);
        if old.as_ref() == new {
            continue;
        }
        if let Some(old) = old {
            removed.push(old.subnet.cidr());
        }
        if let Some(new) = new {
            added.push(remote(new, &direct_subnets));
        }
    }
    match apply::change_nodes(pins, &removed, added) {
        Ok(changes) => {
            report(&changes, peers.len(), revision);
            synced(joined, peers, revision, Ok(()))
        }
        Err(err) => {
            warn!("etcd: {err:#}; reconciling every entry");
            reconcile(pins, joined, peers, revision)
        }
    }
}

/// Says what a reconcile changed.
fn report(changes: &[apply::Change], peers: usize, revision: i64) {
    // Each change when a few; a cold start into thousands says only how many.
    if changes.len() <= 20 {
        for change in changes {
            info!("etcd: {change}");
        }
    }
    if !changes.is_empty() {
        info!(
            "etcd: {} change(s) programmed, {peers} other node(s) at revision {revision}",
            changes.len()
        );
    }
}

/// Records a reconcile's outcome in the status; whether it worked.
fn synced(
    joined: &Joined,
    peers: &BTreeMap<String, Peer>,
    revision: i64,
    result: anyhow::Result<()>,
) -> bool {
    match result {
        Ok(()) => {
            update(&joined.status, |status| {
                status.peers = peers.len();
                status.last_sync = Some(unix_seconds(SystemTime::now()));
                if revision > 0 {
                    status.revision = revision;
                }
            });
            true
        }
        Err(err) => {
            error!("programming the peers' leases: {err:#}");
            false
        }
    }
}

/// `pod-net agent --release-lease`: deletes this node's lease, as a node
/// leaving the cluster does. The datapath is left as it is.
pub async fn release(options: &ClusterOptions) -> Result<Subnet, ClusterError> {
    let (public_ip, _, _) = underlay(options)?;
    let tls = options.tls.load()?;
    let mut store = Box::pin(Etcd::connect(&options.endpoints, tls)).await?;
    let listing = store.list(&subnets_prefix(&options.prefix)).await?;
    for record in &listing.records {
        let Some(subnet) = Subnet::from_key(&record.key) else {
            continue;
        };
        let ours = serde_json::from_slice::<LeaseAttrs>(&record.value)
            .is_ok_and(|attrs| attrs.public_ip == public_ip);
        if ours {
            store.delete_if(&record.key, &record.value).await?;
            if record.lease != 0 {
                store.revoke(record.lease).await?;
            }
            return Ok(subnet);
        }
    }
    Err(ClusterError::NothingToRelease(public_ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_state_in_prometheus_text() {
        let status = ClusterStatus {
            connected: true,
            last_sync: Some(1_700_000_000),
            revision: 42,
            peers: 3,
            subnet: Some("10.244.7.0/24".into()),
            lease_expiry: None,
            skipped_records: 2,
            ..ClusterStatus::default()
        };
        let text = status.to_prometheus();
        assert!(
            text.contains("\npod_net_cluster_store_connected 1\n"),
            "{text}"
        );
        assert!(text.contains("\npod_net_cluster_last_sync_timestamp_seconds 1700000000\n"));
        assert!(text.contains("\npod_net_cluster_store_revision 42\n"));
        assert!(text.contains("\npod_net_cluster_peers 3\n"));
        assert!(text.contains("# TYPE pod_net_cluster_skipped_records_total counter\npod_net_cluster_skipped_records_total 2\n"));
        // A permanent reservation has no expiry to show.
        assert!(!text.contains("lease_expiry"));
    }
}
