//! Flows the kernel may NAT (see `pod_net_common::nat`): remembering the
//! pod end of flows that went to the kernel, and spotting their replies.
use network_types::ip::Ipv4Hdr;
use pod_net_common::{endpoint::FAMILY_IPV4, nat::NatFlowKey};

use crate::{
    maps::NAT_FLOWS,
    parse::{IPPROTO_TCP, IPPROTO_UDP, Packet, ptr_at},
};

const IP_OFFSET_MASK: u16 = 0x1fff;

/// Source and destination ports of a TCP or UDP packet whose IPv4 header
/// starts at `ip_offset`, unless it is a later fragment (no ports there).
#[inline(always)]
pub fn ports(ctx: &impl Packet, ip: &Ipv4Hdr, ip_offset: usize) -> Option<(u16, u16)> {
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return None;
    }
    if u16::from_be_bytes(ip.frags) & IP_OFFSET_MASK != 0 {
        return None;
    }
    let l4 = ip_offset + usize::from(ip.vihl & 0x0f) * 4;
    let ports = ptr_at::<[u8; 4]>(ctx, l4)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let ports = unsafe { *ports };
    Some((
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ))
}

#[inline(always)]
fn key(addr: [u8; 4], port: u16, protocol: u8) -> NatFlowKey {
    let mut key = NatFlowKey {
        port,
        protocol,
        family: FAMILY_IPV4,
        ..NatFlowKey::default()
    };
    key.addr[..4].copy_from_slice(&addr);
    key
}

/// Remembers the pod end (`addr`, `port`) of a flow the kernel takes. A
/// lookup refreshes an existing entry's age; only new flows write.
#[inline(always)]
pub fn remember_client(addr: [u8; 4], port: u16, protocol: u8) {
    let key = key(addr, port, protocol);
    if NAT_FLOWS.get_ptr(&key).is_none() {
        let _ = NAT_FLOWS.insert(&key, 1, 0);
    }
}

/// Whether a packet to (`addr`, `port`) answers a flow the kernel took.
#[inline(always)]
pub fn is_reply_to_nat_client(addr: [u8; 4], port: u16, protocol: u8) -> bool {
    NAT_FLOWS.get_ptr(&key(addr, port, protocol)).is_some()
}
