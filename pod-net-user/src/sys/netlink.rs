//! rtnetlink requests, synchronously: one at a time for the CLI and the CNI
//! plugin, or many pipelined on one socket for bulk changes (`apply`).
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

/// Sends a get request and returns the replies (one, or all for a dump).
pub fn get(message: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
    let flags = if dump {
        NLM_F_REQUEST | NLM_F_DUMP
    } else {
        NLM_F_REQUEST
    };
    exchange(message, flags, dump)
}

/// Sends a change request (`extra` like `NLM_F_CREATE | NLM_F_REPLACE`) and
/// waits for the kernel's acknowledgement.
pub fn change(message: RouteNetlinkMessage, extra: u16) -> io::Result<()> {
    exchange(message, NLM_F_REQUEST | NLM_F_ACK | extra, false).map(drop)
}

/// Requests in flight at once in [`change_all`]: their acknowledgements
/// must fit the socket's receive buffer.
const WINDOW: usize = 256;

/// Sends every change request (each with its extra flags) on one socket,
/// [`WINDOW`] at a time, and waits for every acknowledgement. An error
/// whose errno is in `ignore` counts as done (ENOENT when deleting what is
/// already gone). Returns the first failure, with its index.
pub fn change_all(
    messages: Vec<(RouteNetlinkMessage, u16)>,
    ignore: &[i32],
) -> Result<(), (usize, io::Error)> {
    let at_start = |error: io::Error| (0, error);
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(at_start)?;
    socket.bind_auto().map_err(at_start)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(at_start)?;
    let mut messages = messages.into_iter().enumerate().peekable();
    let mut receive = Vec::with_capacity(64 * 1024);
    while messages.peek().is_some() {
        let mut buffer = Vec::new();
        let mut pending = std::collections::BTreeSet::new();
        for (index, (payload, extra)) in messages.by_ref().take(WINDOW) {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | extra;
            // Sequence numbers start at 1: index + 1.
            header.sequence_number = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
            message.finalize();
            let start = buffer.len();
            buffer.resize(start + message.buffer_len(), 0);
            message.serialize(&mut buffer[start..]);
            pending.insert(index);
        }
        let first = pending.first().copied().unwrap_or_default();
        socket.send(&buffer, 0).map_err(|error| (first, error))?;
        let mut failure: Option<(usize, io::Error)> = None;
        while !pending.is_empty() {
            receive.clear();
            let size = socket
                .recv(&mut receive, 0)
                .map_err(|error| (first, error))?;
            let mut offset = 0;
            while offset < size {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                        .map_err(|err| {
                            (
                                first,
                                io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
                            )
                        })?;
                let length = reply.header.length as usize;
                let index = (reply.header.sequence_number as usize).saturating_sub(1);
                if let NetlinkPayload::Error(error) = reply.payload {
                    pending.remove(&index);
                    if let Some(code) = error.code
                        && !ignore.contains(&-code.get())
                        && failure.as_ref().is_none_or(|(first, _)| index < *first)
                    {
                        failure = Some((index, io::Error::from_raw_os_error(-code.get())));
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if messages.peek().is_some() {
            crate::crashpoint::here(crate::crashpoint::NETLINK_PARTIAL);
        }
    }
    Ok(())
}

fn exchange(
    payload: RouteNetlinkMessage,
    flags: u16,
    dump: bool,
) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut replies = Vec::new();
    let mut receive = Vec::with_capacity(64 * 1024);
    loop {
        receive.clear();
        let size = socket.recv(&mut receive, 0)?;
        let mut offset = 0;
        while offset < size {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(message) => replies.push(message),
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        // An ACK: the change request is done.
                        None => Ok(replies),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(replies),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
        if !dump {
            return Ok(replies);
        }
    }
}
