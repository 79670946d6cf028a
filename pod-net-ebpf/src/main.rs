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
mod maps;
mod parse;
mod redirect;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    // Bytes are counted as the packet arrived, before any encapsulation.
    let len = ctx.len();
    let verdict = egress::decide_and_act(&ctx);
    counters::count(verdict.reason, len);
    verdict.action
}

/// TC ingress of the underlay interface: VXLAN from other nodes.
#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let verdict = decap::decide_and_act(&ctx);
    counters::count(verdict.reason, len);
    verdict.action
}

/// XDP on the underlay (`load --xdp`): VXLAN for local pods, before skbs.
#[xdp]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    let verdict = xdp::decide_and_act(&ctx);
    if let Some(reason) = verdict.reason {
        counters::count(reason, len);
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
