//! One rtnetlink request at a time, synchronously: what the CLI and the CNI
//! plugin need, without an async runtime.
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
