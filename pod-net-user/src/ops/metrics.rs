//! The Prometheus text exposition of pod-net's counters and map fill
//! levels, shared by `pod-net stats --prometheus` and the agent's
//! `/metrics`.
use std::fmt::Write as _;

use anyhow::Result;

use crate::datapath::{Datapath, pins::PinDir};

/// Everything `/metrics` serves, read from the pinned maps now.
pub fn render(pins: &PinDir) -> Result<String> {
    let datapath = Datapath::open(pins)?;
    let totals = datapath.counter_totals()?;
    let maps = datapath.map_fills()?;
    let mut out = String::new();
    family(
        &mut out,
        ("pod_net_packets_total", "counter"),
        "Packets the pod-net programs handled, by the one reason each was counted under.",
        totals
            .iter()
            .map(|(reason, counter)| (("reason", reason.name()), counter.packets)),
    );
    family(
        &mut out,
        ("pod_net_bytes_total", "counter"),
        "Bytes of those packets, as they arrived.",
        totals
            .iter()
            .map(|(reason, counter)| (("reason", reason.name()), counter.bytes)),
    );
    family(
        &mut out,
        ("pod_net_map_entries", "gauge"),
        "Entries in a pod-net map.",
        maps.iter()
            .map(|map| (("map", map.name), map.entries as u64)),
    );
    family(
        &mut out,
        ("pod_net_map_capacity", "gauge"),
        "Capacity of a pod-net map (max_entries).",
        maps.iter()
            .map(|map| (("map", map.name), u64::from(map.capacity))),
    );
    let suppressed = "pod_net_events_suppressed_total";
    header(
        &mut out,
        (suppressed, "counter"),
        "Monitor events not emitted: over the rate limit or the ring buffer full.",
    );
    let _ = writeln!(out, "{suppressed} {}", datapath.events_suppressed()?);
    Ok(out)
}

/// One metric family: its HELP and TYPE lines, then a sample per label
/// value. The format allows one HELP per family, so what each reason means
/// is in `pod-net stats --explain` instead.
fn family<'a>(
    out: &mut String,
    (name, kind): (&str, &str),
    help: &str,
    samples: impl Iterator<Item = ((&'a str, &'a str), u64)>,
) {
    header(out, (name, kind), help);
    for ((label, value), sample) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {sample}");
    }
}

/// A family's HELP and TYPE lines.
fn header(out: &mut String, (name, kind): (&str, &str), help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
