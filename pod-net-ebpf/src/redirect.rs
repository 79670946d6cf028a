//! Delivery into a pod on this node with `bpf_redirect_peer`.
use aya_ebpf::helpers::bpf_redirect_peer;
use network_types::eth::EthHdr;
use pod_net_common::{Endpoint, Reason};

use crate::verdict::Verdict;

/// Addresses the frame as the kernel would deliver it to `endpoint`: to the
/// pod's MAC, from the gateway MAC it knows. TC and XDP delivery both.
///
/// # Safety
/// `eth` must point at a bounds-checked, writable Ethernet header.
#[inline(always)]
pub unsafe fn address_to_pod(eth: *mut EthHdr, endpoint: &Endpoint) {
    // SAFETY: the caller's promise.
    unsafe {
        write_mac(&raw mut (*eth).dst_addr, endpoint.mac);
        write_mac(&raw mut (*eth).src_addr, endpoint.gateway_mac);
    }
}

/// Writes a MAC as a 4-byte and a 2-byte store: bpf-linker leaves a plain
/// 6-byte assignment as a memmove, a call to a byte-loop subprogram.
///
/// # Safety
/// `field` must point at 6 writable bytes.
#[inline(always)]
unsafe fn write_mac(field: *mut [u8; 6], mac: [u8; 6]) {
    let start = field.cast::<u8>();
    // SAFETY: the caller's promise; both stores stay inside the 6 bytes.
    unsafe {
        start
            .cast::<u32>()
            .write_unaligned(u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]));
        start
            .add(4)
            .cast::<u16>()
            .write_unaligned(u16::from_ne_bytes([mac[4], mac[5]]));
    }
}

/// Rewrites L2 for `endpoint` and redirects into its namespace.
/// `bpf_redirect_peer` keeps the MACs as they are, so the frame must already
/// look like what the kernel would deliver: addressed to the pod, from the
/// gateway it knows.
#[inline(always)]
pub fn into_pod(eth: *mut EthHdr, endpoint: &Endpoint, reason: Reason) -> Verdict {
    // SAFETY: the caller bounds-checked `eth`.
    unsafe { address_to_pod(eth, endpoint) };
    // SAFETY: a plain helper call; it only records the target.
    let action = unsafe { bpf_redirect_peer(endpoint.ifindex, 0) };
    Verdict::redirected(action, reason)
}
