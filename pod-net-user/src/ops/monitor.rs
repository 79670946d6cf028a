//! `pod-net monitor`: turns events on, prints them as they come, and turns
//! them off again on Ctrl-C, SIGTERM, or when its reader goes away. One
//! monitor at a time runs on a pin dir, holding a lock that tells `status`
//! and `gc` whether events that are on still have a reader.
use std::{
    collections::HashMap,
    io::Write as _,
    net::IpAddr,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use pod_net_common::{
    Reason,
    event::{CONFIG_F_EVENTS, CONFIG_F_EVENTS_ALL, Event},
};
use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    time::{ClockId, clock_gettime},
};

use crate::{
    datapath::{Datapath, Locked, pins::PinDir},
    sys::netdev,
};

/// What to watch.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    /// Fast-path packets too, not only what leaves the fast path.
    pub all: bool,
    /// Events per second per CPU before the rate limit holds them back.
    pub rate: u32,
    /// Print JSON lines instead of text.
    pub json: bool,
    /// Stop after this many events (scripts and tests); forever if `None`.
    pub count: Option<u64>,
}

/// Runs until Ctrl-C, SIGTERM, `count` events or a reader that goes away
/// (then the error is the broken pipe, for the caller to end quietly).
/// The events go off again however it ends, short of SIGKILL: a monitor
/// holds a lock while it runs, and `gc` turns off events no monitor holds.
pub fn run(pins: &PinDir, options: &MonitorOptions) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    pins.require_loaded()?;
    let _running = pins.monitor_lock()?;
    let datapath = Datapath::open(pins)?;
    let mut ring = datapath.events()?;
    let suppressed_before = datapath.events_suppressed()?;
    let events = EventsOn::turn_on(pins, options)?;
    let streamed = stream(&mut ring, options, &stop);
    // Stop the programs from producing events.
    events.turn_off()?;
    let suppressed = datapath
        .events_suppressed()?
        .saturating_sub(suppressed_before);
    if suppressed > 0 {
        eprintln!("pod-net: {suppressed} event(s) held back by the rate limit");
    }
    streamed.map_err(Into::into)
}

/// Events turned on; turned off when dropped (a panic, an early return).
struct EventsOn<'a> {
    pins: Option<&'a PinDir>,
}

impl<'a> EventsOn<'a> {
    fn turn_on(pins: &'a PinDir, options: &MonitorOptions) -> Result<Self> {
        set_events(pins, Some(options))?;
        Ok(Self { pins: Some(pins) })
    }

    fn turn_off(mut self) -> Result<()> {
        self.pins
            .take()
            .map_or(Ok(()), |pins| set_events(pins, None))
    }
}

impl Drop for EventsOn<'_> {
    fn drop(&mut self) {
        if let Some(pins) = self.pins.take() {
            let _ = set_events(pins, None);
        }
    }
}

fn stream(
    ring: &mut RingBuf<MapData>,
    options: &MonitorOptions,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let clock = Clock::new();
    let mut names = netdev::link_names().unwrap_or_default();
    let mut seen = 0u64;
    let mut stdout = std::io::stdout().lock();
    while !stop.load(Ordering::Relaxed) {
        while let Some(item) = ring.next() {
            let Some(event) =
                bytemuck::try_from_bytes::<Event>(&item[..size_of::<Event>().min(item.len())])
                    .ok()
                    .copied()
            else {
                continue;
            };
            if !names.contains_key(&event.ifindex) {
                names = netdev::link_names().unwrap_or_default();
            }
            let line = format!("{}\n", format_event(&event, &clock, &names, options.json));
            // A reader that stops reading must not keep us from Ctrl-C.
            if !wait_writable(&stdout, stop) {
                return Ok(());
            }
            stdout.write_all(line.as_bytes())?;
            stdout.flush()?;
            seen += 1;
            if options.count.is_some_and(|count| seen >= count) {
                return Ok(());
            }
        }
        wait_readable(&ring, Duration::from_millis(200));
    }
    Ok(())
}

/// Waits until `out` takes a line without blocking; `false` if told to
/// stop first. (A pipe that polls writable has room for a line of an
/// event: less than a page.)
fn wait_writable(out: &impl AsFd, stop: &AtomicBool) -> bool {
    let timeout = Timespec::try_from(Duration::from_millis(200)).ok();
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let mut fds = [PollFd::new(out, PollFlags::OUT)];
        // An error (EINTR from a signal) just looks again; a closed reader
        // polls as an error, which the write then reports.
        if poll(&mut fds, timeout.as_ref()).is_ok_and(|ready| ready > 0) {
            return true;
        }
    }
}

/// Turns events on (with the options' level and rate) or off.
fn set_events(pins: &PinDir, options: Option<&MonitorOptions>) -> Result<()> {
    let mut datapath = Locked::new(pins)?;
    write_events(&mut datapath, options)
}

/// Whether the programs produce events now.
pub fn events_on(datapath: &Datapath) -> Result<bool> {
    Ok(datapath.config()?.flags & (CONFIG_F_EVENTS | CONFIG_F_EVENTS_ALL) != 0)
}

/// Turns events off, under the caller's pin dir lock (`gc`'s repair of
/// events a dead monitor left on).
pub fn turn_off_events(datapath: &mut Datapath) -> Result<()> {
    write_events(datapath, None)
}

fn write_events(datapath: &mut Datapath, options: Option<&MonitorOptions>) -> Result<()> {
    let mut config = datapath.config()?;
    config.flags &= !(CONFIG_F_EVENTS | CONFIG_F_EVENTS_ALL);
    config.event_cost_ns = 0;
    if let Some(options) = options {
        config.flags |= CONFIG_F_EVENTS;
        if options.all {
            config.flags |= CONFIG_F_EVENTS_ALL;
        }
        config.event_cost_ns = 1_000_000_000 / options.rate.max(1);
    }
    datapath.set_config(config)
}

fn wait_readable(fd: &impl AsFd, timeout: Duration) {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).ok();
    // Any outcome just returns, EINTR (a signal) too: the caller looks again.
    let _ = poll(&mut fds, timeout.as_ref());
}

/// Turns the programs' monotonic timestamps into wall-clock time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn new() -> Self {
        let now = clock_gettime(ClockId::Monotonic);
        let monotonic = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
        let realtime = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos().cast_signed());
        Self {
            offset_ns: realtime - monotonic,
        }
    }

    /// `HH:MM:SS.mmm` (UTC) for a monotonic timestamp.
    fn format(&self, monotonic_ns: u64) -> String {
        let wall = i128::from(monotonic_ns) + self.offset_ns;
        let millis = (wall / 1_000_000).rem_euclid(86_400_000);
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            millis / 3_600_000,
            millis / 60_000 % 60,
            millis / 1000 % 60,
            millis % 1000
        )
    }
}

fn format_event(event: &Event, clock: &Clock, names: &HashMap<u32, String>, json: bool) -> String {
    let reason = Reason::from_code(event.reason).map_or("unknown", Reason::name);
    let interface = names
        .get(&event.ifindex)
        .cloned()
        .unwrap_or_else(|| format!("ifindex {}", event.ifindex));
    let (src, dst) = match event.ip_version {
        4 => (
            Some(IpAddr::from(
                <[u8; 4]>::try_from(&event.src[..4]).unwrap_or_default(),
            )),
            Some(IpAddr::from(
                <[u8; 4]>::try_from(&event.dst[..4]).unwrap_or_default(),
            )),
        ),
        6 => (Some(IpAddr::from(event.src)), Some(IpAddr::from(event.dst))),
        _ => (None, None),
    };
    let protocol = match event.protocol {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "icmpv6".to_owned(),
        0 => String::new(),
        other => format!("proto {other}"),
    };
    if json {
        return serde_json::json!({
            "time": clock.format(event.timestamp_ns),
            "reason": reason,
            "interface": interface,
            "ifindex": event.ifindex,
            "len": event.len,
            "protocol": protocol,
            "src": src.map(|ip| ip.to_string()),
            "dst": dst.map(|ip| ip.to_string()),
            "src_port": event.src_port,
            "dst_port": event.dst_port,
        })
        .to_string();
    }
    let endpoint = |ip: Option<IpAddr>, port: u16| match (ip, port) {
        (Some(ip), 0) => ip.to_string(),
        (Some(ip), port) => format!("{ip}:{port}"),
        (None, _) => "-".to_owned(),
    };
    format!(
        "{} {reason:<20} {interface:<12} {} -> {} {protocol} len {}",
        clock.format(event.timestamp_ns),
        endpoint(src, event.src_port),
        endpoint(dst, event.dst_port),
        event.len
    )
}
