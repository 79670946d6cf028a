//! Flows the kernel may NAT (see `pod_net_common::nat`): remembering the
//! pod end of flows that went to the kernel, and spotting their replies.
use pod_net_common::nat::NatFlowKey;

use crate::{
    ip::{Addr, Ip},
    maps::NAT_FLOWS,
    packet::{IPPROTO_TCP, IPPROTO_UDP, Packet, ptr_at},
};

/// Source and destination ports of a TCP or UDP packet whose network
/// header `ip` starts at `ip_offset`, unless it is a later fragment (no
/// ports there).
#[inline(always)]
pub fn ports(ctx: &impl Packet, ip: Ip, ip_offset: usize) -> Option<(u16, u16)> {
    let protocol = ip.protocol();
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP || ip.is_later_fragment() {
        return None;
    }
    let ports = ptr_at::<[u8; 4]>(ctx, ip_offset + ip.header_len())?;
    // SAFETY: bounds-checked by `ptr_at`.
    let ports = unsafe { *ports };
    Some((
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ))
}

#[inline(always)]
fn key(addr: Addr, port: u16, protocol: u8) -> NatFlowKey {
    NatFlowKey {
        addr: addr.bytes,
        port,
        protocol,
        family: addr.family,
    }
}

/// Remembers the pod end (`addr`, `port`) of a flow the kernel takes. A
/// lookup refreshes an existing entry's age; only new flows write.
#[inline(always)]
pub fn remember_client(addr: Addr, port: u16, protocol: u8) {
    let key = key(addr, port, protocol);
    if NAT_FLOWS.get_ptr(key).is_none() {
        let _ = NAT_FLOWS.insert(key, 1, 0);
    }
}

/// Whether a packet to (`addr`, `port`) answers a flow the kernel took.
#[inline(always)]
pub fn is_reply_to_nat_client(addr: Addr, port: u16, protocol: u8) -> bool {
    NAT_FLOWS.get_ptr(key(addr, port, protocol)).is_some()
}
