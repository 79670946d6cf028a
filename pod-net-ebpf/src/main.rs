//! pod-net's kernel side.
//!
//! Each program's entry point only wires the pieces together: parse the
//! headers, decide, act, and count the packet under exactly one reason.
#![no_std]
#![no_main]

mod counters;
mod csum;
mod decap;
mod direct;
mod egress;
mod encap;
mod events;
mod ip;
mod maps;
mod mtu;
mod nat;
mod packet;
mod parse;
mod redirect;
mod remote;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use packet::Packet;
use pod_net_common::{Config, Reason};

/// TC ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    run(&ctx, |ctx, config| {
        egress::decide_and_act(ctx, config).outcome()
    })
}

/// TC ingress of the underlay interface: VXLAN from other nodes, and
/// plain IP from direct-routing nodes' pods.
#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    run(&ctx, |ctx, config| {
        decap::decide_and_act(ctx, config).outcome()
    })
}

/// XDP on the underlay (`load --xdp`): VXLAN for local pods, before skbs.
/// It counts only what it delivers or drops; the rest goes on to TC.
#[xdp]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    run(&ctx, |ctx, config| {
        let verdict = xdp::decide_and_act(ctx, config);
        (verdict.action, verdict.reason)
    })
}

/// What the entry points share about their hook.
trait Hook: Packet {
    type Action;
    /// Hands the packet on untouched.
    const PASS: Self::Action;
    /// The interface the packet arrived on, for events.
    fn ifindex(&self) -> u32;
}

impl Hook for TcContext {
    type Action = i32;
    const PASS: i32 = aya_ebpf::bindings::TC_ACT_OK;

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of our own context.
        unsafe { (*self.skb.skb).ifindex }
    }
}

impl Hook for XdpContext {
    type Action = u32;
    const PASS: u32 = aya_ebpf::bindings::xdp_action::XDP_PASS;

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
}

/// Every program's one path: decide and act on the packet, then count it
/// under its reason (if this program owns the outcome) and, when a monitor
/// is listening, report it with the addresses as they arrived.
#[inline(always)]
fn run<C: Hook>(
    ctx: &C,
    decide_and_act: impl FnOnce(&C, &Config) -> (C::Action, Option<Reason>),
) -> C::Action {
    // Bytes are counted as the packet arrived, before any encapsulation.
    let len = ctx.len();
    // The array always has its one entry; all zeros means the defaults.
    let Some(config) = maps::CONFIG.get(0) else {
        return C::PASS;
    };
    let snapshot = if events::wanted(config) {
        events::snapshot(ctx)
    } else {
        None
    };
    let (action, reason) = decide_and_act(ctx, config);
    if let Some(reason) = reason {
        counters::count(reason, len);
        if let Some(snapshot) = snapshot {
            events::emit(config, &snapshot, reason, ctx.ifindex(), len);
        }
    }
    action
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
