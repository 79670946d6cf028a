//! pod-net's kernel side.
//!
//! Each program's entry point only wires the pieces together: parse the
//! headers, decide, act, and count the packet under exactly one reason.
#![no_std]
#![no_main]

mod counters;
mod csum;
mod decap;
mod egress;
mod encap;
mod events;
mod ip;
mod maps;
mod nat;
mod parse;
mod redirect;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use pod_net_common::Config;

/// TC ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    run_tc(&ctx, egress::decide_and_act)
}

/// TC ingress of the underlay interface: VXLAN from other nodes.
#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    run_tc(&ctx, decap::decide_and_act)
}

/// Decides and acts on one packet, then counts it under its one reason
/// and, when a monitor is listening, reports it.
#[inline(always)]
fn run_tc(ctx: &TcContext, decide_and_act: fn(&TcContext, &Config) -> verdict::Verdict) -> i32 {
    // Bytes are counted as the packet arrived, before any encapsulation.
    let len = ctx.len();
    // The array always has its one entry; all zeros means the defaults.
    let Some(config) = maps::CONFIG.get(0) else {
        return aya_ebpf::bindings::TC_ACT_OK as i32;
    };
    let snapshot = if events::wanted(config) {
        events::snapshot(ctx)
    } else {
        None
    };
    let verdict = decide_and_act(ctx, config);
    counters::count(verdict.reason, len);
    if let Some(snapshot) = snapshot {
        // SAFETY: reading a field of our own context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        events::emit(config, &snapshot, verdict.reason, ifindex, len);
    }
    verdict.action
}

/// XDP on the underlay (`load --xdp`): VXLAN for local pods, before skbs.
#[xdp]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let Some(config) = maps::CONFIG.get(0) else {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    };
    let snapshot = if events::wanted(config) {
        events::snapshot(&ctx)
    } else {
        None
    };
    let verdict = xdp::decide_and_act(&ctx, config);
    if let Some(reason) = verdict.reason {
        counters::count(reason, len);
        if let Some(snapshot) = snapshot {
            events::emit(config, &snapshot, reason, ctx.ingress_ifindex() as u32, len);
        }
    }
    verdict.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
