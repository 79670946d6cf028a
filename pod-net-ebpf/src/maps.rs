//! The BPF maps. BTF-defined so `bpftool map dump` prints field names; the
//! loader pins them under the pin dir with the same names.
use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use pod_net_common::{
    Config, Counter, Endpoint, EndpointKey, PeerNode, RemoteAddr, RemoteNode,
    event::{Event, RateLimit},
    map_table,
    nat::NatFlowKey,
    reason::COUNTER_SLOTS,
};

/// Default capacities, from the one table (`pod_net_common::map_table`);
/// `pod-net load` can size the resizable ones otherwise as it creates them.
/// The names in the attributes below must be the table's: a test compares
/// the built object with it.
const LOCAL_ENDPOINTS_MAX: usize = map_table::LOCAL_ENDPOINTS.capacity as usize;
const REMOTE_PODS_MAX: usize = map_table::REMOTE_PODS.capacity as usize;
const REMOTE_NODES_MAX: usize = map_table::REMOTE_NODES.capacity as usize;
const PEER_NODES_MAX: usize = map_table::PEER_NODES.capacity as usize;
const NAT_FLOWS_MAX: usize = map_table::NAT_FLOWS.capacity as usize;
const EVENTS_SIZE: usize = map_table::EVENTS.capacity as usize;

/// Allocate hash entries as they are added: an empty 1M-entry
/// `remote_pods` costs nothing until it fills.
const BPF_F_NO_PREALLOC: usize = 1;

/// Pod IP -> the pod's host veth and MACs, for pods on this node.
#[btf_map(name = "local_endpoints")]
pub static LOCAL_ENDPOINTS: HashMap<EndpointKey, Endpoint, LOCAL_ENDPOINTS_MAX> = HashMap::new();

/// One remote pod's address -> the node hosting it (a pinned /32).
#[btf_map(name = "remote_pods")]
pub static REMOTE_PODS: HashMap<RemoteAddr, RemoteNode, REMOTE_PODS_MAX, BPF_F_NO_PREALLOC> =
    HashMap::new();

/// A remote node's pod CIDR -> the node. Consulted after `remote_pods`.
#[btf_map(name = "remote_nodes")]
pub static REMOTE_NODES: LpmTrie<RemoteAddr, RemoteNode, REMOTE_NODES_MAX> = LpmTrie::new();

/// A remote node's underlay IPv4 address -> what it may send here. VXLAN
/// from any other source is dropped before BPF or the kernel decapsulates.
#[btf_map(name = "peer_nodes")]
pub static PEER_NODES: HashMap<[u8; 4], PeerNode, PEER_NODES_MAX> = HashMap::new();

/// Host veth ifindex -> itself: the XDP path's redirect targets.
#[btf_map(name = "pod_veths")]
pub static POD_VETHS: DevMapHash<LOCAL_ENDPOINTS_MAX> = DevMapHash::new();

/// Node settings (index 0), written by `pod-net load`.
#[btf_map(name = "config")]
pub static CONFIG: Array<Config, 1> = Array::new();

/// Packets and bytes per reason, per CPU.
#[btf_map(name = "counters")]
pub static COUNTERS: PerCpuArray<Counter, COUNTER_SLOTS> = PerCpuArray::new();

/// Events for `pod-net monitor`.
#[btf_map(name = "events")]
pub static EVENTS: RingBuf<Event, EVENTS_SIZE> = RingBuf::new();

/// Where a packet's event is put together: too big for the programs'
/// stack, and per CPU, as a program runs to completion on one.
#[btf_map(name = "event_scratch")]
pub static EVENT_SCRATCH: PerCpuArray<Event, 1> = PerCpuArray::new();

/// The per-CPU event rate limit.
#[btf_map(name = "event_limits")]
pub static EVENT_LIMITS: PerCpuArray<RateLimit, 1> = PerCpuArray::new();

/// The pod end of TCP/UDP flows that went to the kernel (maybe NATed);
/// value: unused marker.
#[btf_map(name = "nat_flows")]
pub static NAT_FLOWS: LruHashMap<NatFlowKey, u32, NAT_FLOWS_MAX> = LruHashMap::new();
