//! The one table of pod-net's maps: the name each is defined and pinned
//! under, its key and value sizes, and its default capacity. The eBPF maps
//! take their capacities from here, the loader its pins and its layout
//! check, the CLI its defaults; a test compares the built object with it.

use core::mem::size_of;

use crate::{
    Config, Counter, Endpoint, EndpointKey, PeerNode, RemoteAddr, RemoteNode,
    event::{Event, RateLimit},
    nat::NatFlowKey,
    reason::COUNTER_SLOTS,
};

/// One map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The name in the object, and the pin's file name.
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// `max_entries` by default (for a ring buffer, its size in bytes).
    pub capacity: u32,
    /// `load --max-*` may size it otherwise when it is created; the others
    /// must keep exactly `capacity`, or a pin is of another build's layout.
    pub resizable: bool,
    /// Pinned under the pin dir (per-CPU scratch space is not).
    pub pinned: bool,
}

const fn map(name: &'static str, key_size: usize, value_size: usize, capacity: u32) -> MapSpec {
    MapSpec {
        name,
        key_size,
        value_size,
        capacity,
        resizable: false,
        pinned: true,
    }
}

const fn resizable(spec: MapSpec) -> MapSpec {
    MapSpec {
        resizable: true,
        ..spec
    }
}

/// Pod IP -> the pod's host veth and MACs, for pods on this node.
pub const LOCAL_ENDPOINTS: MapSpec = resizable(map(
    "local_endpoints",
    size_of::<EndpointKey>(),
    size_of::<Endpoint>(),
    65536,
));
/// One remote pod's address -> its node (a pinned /32 or /128).
pub const REMOTE_PODS: MapSpec = resizable(map(
    "remote_pods",
    size_of::<RemoteAddr>(),
    size_of::<RemoteNode>(),
    1_048_576,
));
/// A remote node's pod CIDR -> the node (an LPM trie: the key is the prefix
/// length, then the address).
pub const REMOTE_NODES: MapSpec = resizable(map(
    "remote_nodes",
    size_of::<u32>() + size_of::<RemoteAddr>(),
    size_of::<RemoteNode>(),
    65536,
));
/// A remote node's underlay IPv4 address -> what it may send here.
pub const PEER_NODES: MapSpec = map(
    "peer_nodes",
    size_of::<[u8; 4]>(),
    size_of::<PeerNode>(),
    65536,
);
/// Host veth ifindex -> itself, the XDP path's redirect targets (a devmap
/// value is `struct bpf_devmap_val`: an ifindex, then a program fd or id).
/// Sized with `local_endpoints`.
pub const POD_VETHS: MapSpec = resizable(map(
    "pod_veths",
    size_of::<u32>(),
    2 * size_of::<u32>(),
    LOCAL_ENDPOINTS.capacity,
));
/// Node settings (index 0), written by `pod-net load`.
pub const CONFIG: MapSpec = map("config", size_of::<u32>(), size_of::<Config>(), 1);
/// Packets and bytes per reason, per CPU.
#[expect(
    clippy::cast_possible_truncation,
    reason = "64 slots, checked in reason.rs"
)]
pub const COUNTERS: MapSpec = map(
    "counters",
    size_of::<u32>(),
    size_of::<Counter>(),
    COUNTER_SLOTS as u32,
);
/// Events for `pod-net monitor` (a ring buffer of 256 KiB).
pub const EVENTS: MapSpec = map("events", 0, 0, 256 * 1024);
/// The per-CPU event rate limit.
pub const EVENT_LIMITS: MapSpec = map("event_limits", size_of::<u32>(), size_of::<RateLimit>(), 1);
/// Where a packet's event is put together, per CPU (too big for the stack).
pub const EVENT_SCRATCH: MapSpec = MapSpec {
    pinned: false,
    ..map("event_scratch", size_of::<u32>(), size_of::<Event>(), 1)
};
/// The pod end of TCP/UDP flows that went to the kernel (maybe NATed).
pub const NAT_FLOWS: MapSpec = map(
    "nat_flows",
    size_of::<NatFlowKey>(),
    size_of::<u32>(),
    65536,
);
/// aya-log's ring buffer (aya-log-ebpf defines it): pinned so the agent's
/// logger outlives reloads.
pub const AYA_LOGS: MapSpec = map("AYA_LOGS", 0, 0, 128 * 1024);

/// Every map in the object.
pub const ALL: [MapSpec; 12] = [
    LOCAL_ENDPOINTS,
    REMOTE_PODS,
    REMOTE_NODES,
    PEER_NODES,
    POD_VETHS,
    CONFIG,
    COUNTERS,
    EVENTS,
    EVENT_LIMITS,
    EVENT_SCRATCH,
    NAT_FLOWS,
    AYA_LOGS,
];
