//! The datapath: its programs and maps as this build lays them out
//! (`layout`), where they are pinned (`pins`), how programs are attached
//! (`attach`, `xdp`), maps read and written in bulk (`map_batch`), and here,
//! the one handle on a loaded datapath's maps: [`Datapath`] to read them,
//! [`Locked`] (the same maps under the pin dir's lock) to change them. An
//! operation opens it once and passes it down. Loading and unloading the
//! datapath is `crate::lifecycle`'s.

pub mod attach;
pub mod layout;
pub mod map_batch;
pub mod pins;
pub mod xdp;

use std::{
    net::IpAddr,
    ops::{Deref, DerefMut},
    os::fd::{AsFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result};
use aya::maps::{
    Array, DevMapHash, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray,
    RingBuf,
};
use pod_net_common::{
    Config, Counter, Endpoint, EndpointKey, PeerNode, Reason, RemoteAddr, RemoteNode,
    event::RateLimit,
    map_table::{self, MapSpec},
};

use crate::{
    datapath::pins::{PinDir, PinDirLock},
    error::NodeError,
};

/// A `remote_nodes` key as the kernel lays it out: aya's
/// `lpm_trie::Key<RemoteAddr>`, with the byte-wise traits the batched read
/// needs.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TrieKey {
    pub prefix_len: u32,
    pub addr: RemoteAddr,
}

// SAFETY: plain `#[repr(C)]` data without padding (bytemuck's derive
// checks), as aya's `Pod` requires.
unsafe impl aya::Pod for TrieKey {}

/// A map's fill level.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// The maps of a loaded pin dir, opened from their pins.
pub struct Datapath {
    pins: PinDir,
    /// The nodes whose VXLAN is let in.
    pub peer_nodes: HashMap<MapData, [u8; 4], PeerNode>,
    pub endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    /// Capacity of `local_endpoints`, as created.
    pub endpoints_capacity: u32,
    /// Remote pods pinned to a node (/32s).
    pub remote_pods: HashMap<MapData, RemoteAddr, RemoteNode>,
    /// Capacity of `remote_pods`, as created.
    pub remote_pods_capacity: u32,
    /// Remote nodes' pod CIDRs.
    pub remotes: LpmTrie<MapData, RemoteAddr, RemoteNode>,
    /// Capacity of `remote_nodes`, as created.
    pub remotes_capacity: u32,
    pub config: Array<MapData, Config>,
    pub counters: PerCpuArray<MapData, Counter>,
}

impl Datapath {
    /// Opens the pinned maps; fails clearly when `load` has not run here.
    pub fn open(pins: &PinDir) -> Result<Self> {
        pins.require_loaded()?;
        let (endpoints, endpoints_info) = open_typed(pins, map_table::LOCAL_ENDPOINTS)?;
        let (remote_pods, remote_pods_info) = open_typed(pins, map_table::REMOTE_PODS)?;
        let (remotes, remotes_info) = open_typed(pins, map_table::REMOTE_NODES)?;
        let (config, _) = open_typed(pins, map_table::CONFIG)?;
        let (counters, _) = open_typed(pins, map_table::COUNTERS)?;
        let (peer_nodes, _) = open_typed(pins, map_table::PEER_NODES)?;
        Ok(Self {
            pins: pins.clone(),
            peer_nodes,
            endpoints,
            endpoints_capacity: endpoints_info.max_entries(),
            remote_pods,
            remote_pods_capacity: remote_pods_info.max_entries(),
            remotes,
            remotes_capacity: remotes_info.max_entries(),
            config,
            counters,
        })
    }

    /// How full each map that can fill up is. The hash maps are counted in
    /// batches (a million remote pods would be a million syscalls key by
    /// key, on every `status` and every scrape of `/metrics`).
    pub fn map_fills(&self) -> Result<Vec<MapFill>> {
        Ok(vec![
            MapFill {
                name: map_table::LOCAL_ENDPOINTS.name,
                entries: hash_len(&self.endpoints).context("counting local_endpoints")?,
                capacity: self.endpoints_capacity,
            },
            MapFill {
                name: map_table::REMOTE_PODS.name,
                entries: hash_len(&self.remote_pods).context("counting remote_pods")?,
                capacity: self.remote_pods_capacity,
            },
            MapFill {
                name: map_table::REMOTE_NODES.name,
                entries: map_batch::count::<TrieKey, RemoteNode>(self.remotes_fd())
                    .context("counting remote_nodes")?
                    .unwrap_or_else(|| self.remotes.keys().count()),
                capacity: self.remotes_capacity,
            },
        ])
    }

    /// Every `remote_nodes` entry: read in batches, or key by key where the
    /// kernel has no batch lookup for an LPM trie.
    pub fn remote_node_entries(&self) -> Result<Vec<(TrieKey, RemoteNode)>> {
        if let Some(entries) = map_batch::lookup_all(self.remotes_fd())? {
            return Ok(entries);
        }
        self.remotes
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let key = TrieKey {
                    prefix_len: key.prefix_len(),
                    addr: key.data(),
                };
                Ok((key, value))
            })
            .collect()
    }

    /// `remote_nodes`, for the batched calls.
    pub fn remotes_fd(&self) -> BorrowedFd<'_> {
        IterableMap::map(&self.remotes).fd().as_fd()
    }

    /// `remote_pods`, for the batched calls.
    pub fn remote_pods_fd(&self) -> BorrowedFd<'_> {
        IterableMap::map(&self.remote_pods).fd().as_fd()
    }

    /// Where this datapath is pinned.
    #[must_use]
    pub const fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// The XDP redirect targets, opened on demand (only the XDP path needs
    /// them).
    pub fn pod_veths(&self) -> Result<DevMapHash<MapData>> {
        open_typed(&self.pins, map_table::POD_VETHS).map(|(map, _)| map)
    }

    /// The programs' event ring buffer, opened on demand (only a monitor
    /// reads it).
    pub fn events(&self) -> Result<RingBuf<MapData>> {
        open_typed(&self.pins, map_table::EVENTS).map(|(map, _)| map)
    }

    /// Events the per-CPU rate limit held back, summed over CPUs.
    pub fn events_suppressed(&self) -> Result<u64> {
        let (limits, _): (PerCpuArray<_, RateLimit>, _) =
            open_typed(&self.pins, map_table::EVENT_LIMITS)?;
        let per_cpu = limits.get(&0, 0).context("reading event_limits")?;
        Ok(per_cpu.iter().map(|limit| limit.suppressed).sum())
    }

    /// The node settings `load` wrote.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("reading config")
    }

    /// Writes the node settings.
    pub fn set_config(&mut self, config: Config) -> Result<()> {
        self.config.set(0, config, 0).context("writing config")
    }

    /// Every local endpoint, sorted by address.
    pub fn endpoint_entries(&self) -> Result<Vec<(EndpointKey, Endpoint)>> {
        let mut entries = hash_entries(&self.endpoints).context("reading local_endpoints")?;
        entries.sort_by_key(|(key, _)| (key.family, key.addr));
        Ok(entries)
    }

    /// Counter totals over all CPUs, per reason.
    pub fn counter_totals(&self) -> Result<Vec<(Reason, Counter)>> {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = self
                    .counters
                    .get(&(reason as u32), 0)
                    .with_context(|| format!("reading counter {}", reason.name()))?;
                let total = per_cpu.iter().fold(Counter::default(), |sum, cpu| Counter {
                    packets: sum.packets + cpu.packets,
                    bytes: sum.bytes + cpu.bytes,
                });
                Ok((reason, total))
            })
            .collect()
    }
}

/// A loaded datapath under its pin dir's lock: the one value a change holds
/// from its first read to its last write, and passes down. The lock goes
/// when it is dropped.
pub struct Locked {
    datapath: Datapath,
    _lock: PinDirLock,
}

impl Locked {
    /// Takes the pin dir's lock, then opens the maps; fails clearly when
    /// `load` has not run here.
    pub fn new(pins: &PinDir) -> Result<Self> {
        pins.require_loaded()?;
        let lock = pins.lock()?;
        Self::under(lock, pins)
    }

    /// Opens the maps under a lock already held (`load` takes it before
    /// the maps exist).
    pub fn under(lock: PinDirLock, pins: &PinDir) -> Result<Self> {
        Ok(Self {
            datapath: Datapath::open(pins)?,
            _lock: lock,
        })
    }
}

impl Deref for Locked {
    type Target = Datapath;

    fn deref(&self) -> &Datapath {
        &self.datapath
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }
}

/// Every entry of a hash map: read in batches, or key by key (two syscalls
/// an entry) where the kernel has no batch lookup.
pub(crate) fn hash_entries<K, V>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>>
where
    K: aya::Pod + bytemuck::Zeroable,
    V: aya::Pod + bytemuck::Zeroable,
{
    let fd = IterableMap::map(map).fd().as_fd();
    match map_batch::lookup_all(fd)? {
        Some(entries) => Ok(entries),
        None => Ok(map.iter().collect::<Result<_, MapError>>()?),
    }
}

/// How many entries a hash map holds, counted as [`hash_entries`] reads.
fn hash_len<K, V>(map: &HashMap<MapData, K, V>) -> std::io::Result<usize>
where
    K: aya::Pod + bytemuck::Zeroable,
    V: aya::Pod + bytemuck::Zeroable,
{
    let fd = IterableMap::map(map).fd().as_fd();
    Ok(map_batch::count::<K, V>(fd)?.unwrap_or_else(|| map.keys().count()))
}

/// Whether a map call failed because the key is not there: aya says so
/// with `KeyNotFound` on lookups, but passes a delete's ENOENT through.
#[must_use]
pub fn is_missing_key(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(error) => error.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Opens the pinned map `spec` as the typed handle `T`. One whose type or
/// sizes are not `T`'s (pinned by another build) is a
/// [`NodeError::LayoutMismatch`].
fn open_typed<T>(pins: &PinDir, spec: MapSpec) -> Result<(T, MapInfo)>
where
    T: TryFrom<Map, Error = MapError>,
{
    let (map, info) = open_map(pins, spec.name)?;
    let typed = T::try_from(map).map_err(|source| NodeError::LayoutMismatch {
        map: spec.name,
        source,
    })?;
    Ok((typed, info))
}

fn open_map(pins: &PinDir, name: &str) -> Result<(Map, MapInfo)> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = data
        .info()
        .with_context(|| format!("reading info of {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    Ok((map, info))
}

/// The map key for a pod address.
#[must_use]
pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    match ip {
        IpAddr::V4(v4) => EndpointKey::ipv4(v4.octets()),
        IpAddr::V6(v6) => EndpointKey::ipv6(v6.octets()),
    }
}

/// The pod address a map key holds.
#[must_use]
pub fn endpoint_ip(key: &EndpointKey) -> IpAddr {
    if key.family == pod_net_common::endpoint::FAMILY_IPV6 {
        IpAddr::from(key.addr)
    } else {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    }
}
