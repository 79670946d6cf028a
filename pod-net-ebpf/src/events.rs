//! Drop and trace events for `pod-net monitor`. The entry points take a
//! snapshot of the addresses before acting, only when a monitor asked for
//! events; otherwise the cost is one flag test.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use pod_net_common::{
    Config, Reason,
    event::{CONFIG_F_EVENTS, CONFIG_F_EVENTS_ALL, Event},
};

use crate::{
    maps::{EVENT_LIMITS, EVENT_SCRATCH, EVENTS},
    nat,
    packet::{ETH_P_IP, ETH_P_IPV6, Packet, ptr_at},
    parse::Ip,
};

/// Proof that this CPU's `event_scratch` slot holds what the event will
/// say about the packet, taken before the packet changes.
pub struct Snapshot(());

/// Whether any events are wanted.
#[inline(always)]
pub fn wanted(config: &Config) -> bool {
    config.flags & (CONFIG_F_EVENTS | CONFIG_F_EVENTS_ALL) != 0
}

/// Takes the snapshot into this CPU's scratch slot.
#[inline(always)]
pub fn snapshot(ctx: &impl Packet) -> Option<Snapshot> {
    let event = EVENT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot; programs run to completion on it.
    let event = unsafe { &mut *event };
    *event = Event::default();
    read_headers(ctx, event);
    Some(Snapshot(()))
}

/// Reads addresses, protocol and ports, as far as the frame has them.
#[inline(always)]
fn read_headers(ctx: &impl Packet, event: &mut Event) {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let ip = match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).map(Ip::V4),
        ETH_P_IPV6 => ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN).map(Ip::V6),
        _ => None,
    };
    let Some(ip) = ip else {
        return;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    unsafe {
        match ip {
            Ip::V4(header) => {
                event.ip_version = 4;
                event.src[..4].copy_from_slice(&(*header).src_addr);
                event.dst[..4].copy_from_slice(&(*header).dst_addr);
            }
            Ip::V6(header) => {
                event.ip_version = 6;
                event.src = (*header).src_addr;
                event.dst = (*header).dst_addr;
            }
        }
    }
    event.protocol = ip.protocol();
    if let Some((src_port, dst_port)) = nat::ports(ctx, ip, EthHdr::LEN) {
        event.src_port = src_port;
        event.dst_port = dst_port;
    }
}

/// Emits the event for a packet counted under `reason`, if the monitor's
/// flags select it and the CPU's rate budget allows.
#[inline(always)]
pub fn emit(config: &Config, _taken: &Snapshot, reason: Reason, ifindex: u32, len: u32) {
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
    let Some(event) = EVENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot, filled by `snapshot`.
    let event = unsafe { &mut *event };
    event.timestamp_ns = now;
    event.reason = reason as u32;
    event.ifindex = ifindex;
    event.len = len;
    // By reference: the event is too big to copy onto the stack.
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
