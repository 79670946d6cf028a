//! The TC hook as it was before TCX, over rtnetlink: a `clsact` qdisc and
//! one direct-action `cls_bpf` filter on its ingress, at pod-net's own
//! priority and handle (what `tc filter add dev X ingress prio 1 handle 1
//! bpf da` makes, and what Cilium falls back to). Creating it takes no RCU
//! grace period, where a TCX link waits for one (`load --attach tc`).
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use anyhow::{Context as _, Result};
use netlink_packet_core::{DefaultNla, Nla as _, NlasIterator};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption},
};

use crate::sys::netlink::{self, NLM_F_CREATE};

/// The priority of pod-net's filter. TCX programs run before every
/// filter; among filters, the lowest number runs first.
pub const PRIORITY: u16 = 1;
/// The handle of pod-net's filter within its priority.
const HANDLE: u32 = 1;

// From include/uapi/linux/pkt_cls.h.
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const ETH_P_ALL: u16 = 0x0003;
const BPF_KIND: &str = "bpf";
const CLSACT_KIND: &str = "clsact";

/// The BPF filter at pod-net's priority and handle on an interface's
/// ingress, as the kernel reports it: pod-net's, or another tool's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// What the filter was named when attached (pod-net: the program's;
    /// empty for a classic BPF filter).
    pub name: String,
}

/// Adds a `clsact` qdisc to `ifindex` unless it has one.
pub fn ensure_clsact(ifindex: u32) -> Result<()> {
    let mut message = TcMessage::with_index(index(ifindex));
    message.header.handle = TcHandle::from(0xffff_0000);
    message.header.parent = TcHandle::CLSACT;
    message
        .attributes
        .push(TcAttribute::Kind(CLSACT_KIND.to_owned()));
    match netlink::change(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE,
    ) {
        // EEXIST: it has one already. (An `ingress` qdisc takes the same
        // slot and fails here: clsact is what pod-net needs.)
        Err(err) if err.raw_os_error() != Some(libc::EEXIST) => {
            Err(err).with_context(|| format!("adding a clsact qdisc to ifindex {ifindex}"))
        }
        _ => Ok(()),
    }
}

/// Points pod-net's filter on `ifindex`'s ingress at `program`: creates it,
/// or swaps the program in the existing one atomically (no packet meets
/// an empty hook). The interface must have a clsact qdisc.
pub fn set_filter(ifindex: u32, program: BorrowedFd<'_>, name: &str) -> Result<()> {
    let fd = u32::try_from(program.as_raw_fd()).context("program fd out of range")?;
    let mut nul_terminated = name.as_bytes().to_vec();
    nul_terminated.push(0);
    let mut message = filter_message(ifindex);
    message
        .attributes
        .push(TcAttribute::Kind(BPF_KIND.to_owned()));
    message.attributes.push(TcAttribute::Options(vec![
        TcOption::Other(DefaultNla::new(TCA_BPF_FD, fd.to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_BPF_NAME, nul_terminated)),
        TcOption::Other(DefaultNla::new(
            TCA_BPF_FLAGS,
            TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes().to_vec(),
        )),
    ]));
    // NLM_F_CREATE without NLM_F_EXCL: create, or change the filter that
    // has this handle (cls_bpf swaps its program under RCU).
    netlink::change(RouteNetlinkMessage::NewTrafficFilter(message), NLM_F_CREATE)
        .with_context(|| format!("setting the {name} tc filter on ifindex {ifindex}"))
}

/// The BPF filter at pod-net's priority and handle on `ifindex`'s ingress,
/// if there is one (`None` too when the interface has no clsact qdisc or
/// is gone).
pub fn filter(ifindex: u32) -> Result<Option<Filter>> {
    let replies = match netlink::get(
        RouteNetlinkMessage::GetTrafficFilter(TcMessage::from_parts(
            filter_message(ifindex).header,
            Vec::new(),
        )),
        true,
    ) {
        Ok(replies) => replies,
        Err(err) if gone(&err) => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("listing tc filters of ifindex {ifindex}"));
        }
    };
    Ok(replies.iter().find_map(|reply| match reply {
        RouteNetlinkMessage::NewTrafficFilter(message)
            if u32::from(message.header.handle) == HANDLE
                && message.header.info >> 16 == u32::from(PRIORITY) =>
        {
            bpf_filter(message)
        }
        _ => None,
    }))
}

/// Removes pod-net's filter from `ifindex`; the qdisc stays, as others may
/// use it. Returns whether there was one.
pub fn delete_filter(ifindex: u32) -> Result<bool> {
    match netlink::change(
        RouteNetlinkMessage::DelTrafficFilter(filter_message(ifindex)),
        0,
    ) {
        Ok(()) => Ok(true),
        Err(err) if gone(&err) => Ok(false),
        Err(err) => {
            Err(err).with_context(|| format!("deleting the tc filter of ifindex {ifindex}"))
        }
    }
}

/// No such filter, qdisc or interface.
fn gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
    )
}

fn filter_message(ifindex: u32) -> TcMessage {
    let mut message = TcMessage::with_index(index(ifindex));
    message.header.handle = TcHandle::from(HANDLE);
    message.header.parent = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: TcHandle::MIN_INGRESS,
    };
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    message
}

fn bpf_filter(message: &TcMessage) -> Option<Filter> {
    let mut is_bpf = false;
    let mut options = None;
    for attribute in &message.attributes {
        match attribute {
            TcAttribute::Kind(kind) => is_bpf = kind == BPF_KIND,
            // netlink-packet-route does not know cls_bpf: its options come
            // as one raw nested attribute.
            TcAttribute::Options(nested) => options = nested.first(),
            _ => {}
        }
    }
    let TcOption::Other(raw) = options? else {
        return None;
    };
    if !is_bpf {
        return None;
    }
    let mut value = vec![0; raw.value_len()];
    raw.emit_value(&mut value);
    let mut name = String::new();
    for nla in NlasIterator::new(&value[..]).flatten() {
        if nla.kind() == TCA_BPF_NAME {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .clone_into(&mut name);
        }
    }
    Some(Filter { name })
}

fn index(ifindex: u32) -> i32 {
    i32::try_from(ifindex).unwrap_or(i32::MAX)
}
