//! The BPF maps. BTF-defined so `bpftool map dump` prints field names; the
//! loader pins them under the pin dir with the same names.
use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray},
    macros::btf_map,
};
use pod_net_common::{Counter, Endpoint, EndpointKey, reason::REASON_COUNT};

/// Default capacity; `pod-net load` can override it before the map exists.
pub const LOCAL_ENDPOINTS_MAX: usize = 65536;

/// Pod IP -> the pod's host veth and MACs, for pods on this node.
#[btf_map(name = "local_endpoints")]
pub static LOCAL_ENDPOINTS: HashMap<EndpointKey, Endpoint, LOCAL_ENDPOINTS_MAX> = HashMap::new();

/// Packets and bytes per reason, per CPU.
#[btf_map(name = "counters")]
pub static COUNTERS: PerCpuArray<Counter, REASON_COUNT> = PerCpuArray::new();
