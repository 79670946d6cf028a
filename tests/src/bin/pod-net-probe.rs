//! `pod-net-probe`: the kernel's view, for tests, without going through
//! pod-net itself.
//!
//! - `pod-net-probe inject IFACE HEX` sends one raw Ethernet frame out of
//!   IFACE, exactly as given (malformed frames on a pod's wire).
//! - `pod-net-probe tcx IFACE` prints the IDs of the TCX ingress programs on
//!   IFACE as a JSON array (`BPF_PROG_QUERY`; Debian's bpftool 7.1 predates
//!   TCX in `net show`).
//! - `pod-net-probe get HOST:PORT PATH` prints the body of an HTTP GET
//!   (the agent's `/metrics`, from inside its namespace).
//! - `pod-net-probe send-udp FROM_IP TO_IP:PORT HEX` sends one UDP datagram
//!   with that payload through the namespace's own stack (`FROM_IP` 0.0.0.0:
//!   any source), as any process in a pod or on a node could.
//! - `pod-net-probe gso-max IFACE SIZE` sets IFACE's IPv4 GSO and GRO
//!   maximum (`IFLA_GSO_IPV4_MAX_SIZE`, `IFLA_GRO_IPV4_MAX_SIZE`), which
//!   Debian's iproute2 6.1 cannot: the rig's switch passing BIG TCP on.
#![expect(
    clippy::cast_possible_wrap,
    reason = "ifindex and sockaddr sizes are small"
)]
use std::{ffi::CString, process::ExitCode};

use aya::programs::{SchedClassifier, tc::TcAttachType};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.as_slice() {
        [_, command, iface, hex] if command == "inject" => {
            decode_hex(hex).and_then(|frame| inject(iface, &frame))
        }
        [_, command, iface] if command == "tcx" => tcx_ingress(iface),
        [_, command, address, path] if command == "get" => http_get(address, path),
        [_, command, from, to, hex] if command == "send-udp" => {
            decode_hex(hex).and_then(|payload| send_udp(from, to, &payload))
        }
        [_, command, iface, size] if command == "gso-max" => size
            .parse()
            .map_err(|err| format!("size {size:?}: {err}"))
            .and_then(|size| set_gso_max(iface, size)),
        _ => Err(
            "usage: pod-net-probe inject IFACE HEX | tcx IFACE | get HOST:PORT PATH \
                  | send-udp FROM_IP TO_IP:PORT HEX | gso-max IFACE SIZE"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pod-net-probe: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One `RTM_NEWLINK` request on a netlink socket, and its acknowledgement.
fn set_gso_max(iface: &str, size: u32) -> Result<(), String> {
    const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
    const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
    let name = CString::new(iface).map_err(|err| err.to_string())?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {iface}"));
    }
    let mut body = Vec::new();
    // struct ifinfomsg: family, pad, type, index, flags, change.
    body.extend_from_slice(&[0, 0, 0, 0]);
    body.extend_from_slice(&(index as i32).to_ne_bytes());
    body.extend_from_slice(&[0; 8]);
    for kind in [IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE] {
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(&size.to_ne_bytes());
    }
    let mut request = Vec::new();
    request.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
    request.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    request.extend_from_slice(&flags.to_ne_bytes());
    request.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    request.extend_from_slice(&body);
    // SAFETY: plain socket calls on buffers that outlive them; the
    // descriptor is closed before returning.
    let error = unsafe {
        let socket = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let sent = libc::send(socket, request.as_ptr().cast(), request.len(), 0);
        let mut reply = [0u8; 1024];
        let got = libc::recv(socket, reply.as_mut_ptr().cast(), reply.len(), 0);
        libc::close(socket);
        if sent < 0 || got < 20 {
            return Err("netlink exchange failed".into());
        }
        i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]])
    };
    if error == 0 {
        Ok(())
    } else {
        Err(format!(
            "{iface}: {}",
            std::io::Error::from_raw_os_error(-error)
        ))
    }
}

fn send_udp(from: &str, to: &str, payload: &[u8]) -> Result<(), String> {
    let socket =
        std::net::UdpSocket::bind((from, 0)).map_err(|err| format!("bind {from}: {err}"))?;
    socket
        .send_to(payload, to)
        .map_err(|err| format!("send to {to}: {err}"))?;
    Ok(())
}

fn http_get(address: &str, path: &str) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).map_err(|err| err.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| err.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|err| err.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    print!("{body}");
    Ok(())
}

fn tcx_ingress(iface: &str) -> Result<(), String> {
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
        .map_err(|err| format!("query {iface}: {err}"))?;
    let ids: Vec<u32> = programs
        .iter()
        .map(aya::programs::ProgramInfo::id)
        .collect();
    println!("{ids:?}");
    Ok(())
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|err| err.to_string()))
        .collect()
}

fn inject(iface: &str, frame: &[u8]) -> Result<(), String> {
    let name = CString::new(iface).map_err(|err| err.to_string())?;
    // SAFETY: plain libc calls on a socket this function owns and closes.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(format!("no interface {iface}"));
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if sent < 0 {
            return Err(error.to_string());
        }
    }
    Ok(())
}
