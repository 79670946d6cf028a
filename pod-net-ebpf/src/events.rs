//! Drop and trace events for `pod-net monitor`. The entry points take a
//! snapshot of the addresses before acting, only when a monitor asked for
//! events; otherwise the cost is one flag test.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use pod_net_common::{
    Config, Reason,
    event::{CONFIG_F_EVENTS, CONFIG_F_EVENTS_ALL, Event},
};

use crate::{
    maps::{EVENT_LIMITS, EVENTS},
    parse::{ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, Packet, ptr_at},
};

/// What the event will say about the packet, taken before it changes.
#[derive(Clone, Copy, Default)]
pub struct Snapshot {
    event: Event,
}

/// Whether any events are wanted.
#[inline(always)]
pub fn wanted(config: &Config) -> bool {
    config.flags & (CONFIG_F_EVENTS | CONFIG_F_EVENTS_ALL) != 0
}

/// Reads addresses, protocol and ports, as far as the frame has them.
#[inline(always)]
pub fn snapshot(ctx: &impl Packet) -> Snapshot {
    let mut event = Event::default();
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Snapshot { event };
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return Snapshot { event };
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Snapshot { event };
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = unsafe { &*ip };
    event.ip_version = 4;
    event.protocol = ip.proto;
    event.src[..4].copy_from_slice(&ip.src_addr);
    event.dst[..4].copy_from_slice(&ip.dst_addr);
    if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP {
        let l4 = EthHdr::LEN + usize::from(ip.vihl & 0x0f) * 4;
        if let Some(ports) = ptr_at::<[u8; 4]>(ctx, l4) {
            // SAFETY: bounds-checked by `ptr_at`.
            let ports = unsafe { *ports };
            event.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            event.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    Snapshot { event }
}

/// Emits the event for a packet counted under `reason`, if the monitor's
/// flags select it and the CPU's rate budget allows.
#[inline(always)]
pub fn emit(config: &Config, snapshot: &Snapshot, reason: Reason, ifindex: u32, len: u32) {
    let fast_path = matches!(
        reason,
        Reason::RedirectLocal | Reason::Encap | Reason::Decap
    );
    if fast_path && config.flags & CONFIG_F_EVENTS_ALL == 0 {
        return;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_budget(now, u64::from(config.event_cost_ns)) {
        return;
    }
    let mut event = snapshot.event;
    event.timestamp_ns = now;
    event.reason = reason as u32;
    event.ifindex = ifindex;
    event.len = len;
    if EVENTS.output(event, 0).is_err()
        && let Some(limit) = EVENT_LIMITS.get_ptr_mut(0)
    {
        // SAFETY: this CPU's own slot.
        unsafe { (*limit).suppressed += 1 };
    }
}

/// Token bucket in nanoseconds: refills with time, one event costs
/// `cost_ns`, and at most a tenth of a second's worth is saved up.
#[inline(always)]
fn take_budget(now: u64, cost_ns: u64) -> bool {
    let Some(limit) = EVENT_LIMITS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's own slot; programs run to completion on it.
    let limit = unsafe { &mut *limit };
    let cap = 100_000_000u64.max(cost_ns);
    let earned = now.saturating_sub(limit.last_ns).min(cap);
    limit.last_ns = now;
    limit.budget_ns = (limit.budget_ns + earned).min(cap);
    if limit.budget_ns < cost_ns {
        limit.suppressed += 1;
        return false;
    }
    limit.budget_ns -= cost_ns;
    true
}
