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
        _ => Err(
            "usage: pod-net-probe inject IFACE HEX | tcx IFACE | get HOST:PORT PATH \
                  | send-udp FROM_IP TO_IP:PORT HEX"
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
