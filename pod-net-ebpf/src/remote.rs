//! Which node hosts a pod address that is not on this node.
use aya_ebpf::maps::lpm_trie::Key;
use pod_net_common::RemoteNode;

use crate::{
    ip::Addr,
    maps::{REMOTE_NODES, REMOTE_PODS},
};

/// Prefix length of a single address in the trie (IPv4 is IPv4-mapped).
const ADDRESS_BITS: u32 = 128;

/// The node hosting remote pod address `addr`: its own entry (a /32 or
/// /128), else its node's CIDR (longest prefix over both maps, as a single
/// address is the longest prefix there is).
#[inline(always)]
pub fn node_of(addr: Addr) -> Option<&'static RemoteNode> {
    let key = addr.remote_key();
    // SAFETY: the values are only read, before anything can replace them.
    unsafe { REMOTE_PODS.get(key) }.or_else(|| REMOTE_NODES.get(&Key::new(ADDRESS_BITS, key)))
}
