//! `pod-net stats`: the per-reason counters, summed over CPUs.
use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use pod_net_common::{Counter, Reason};
use serde::Serialize;

use crate::{
    datapath::{Datapath, pins::PinDir},
    ops::table,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Counter totals keyed by stable reason name, in code order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals(pub Vec<(Reason, Counter)>);

impl Totals {
    pub fn read(pins: &PinDir) -> Result<Self> {
        Ok(Self(Datapath::open(pins)?.counter_totals()?))
    }

    /// `{"counters": {"redirect_local": {"packets": .., "bytes": ..}, ..}}`
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let counters: BTreeMap<&str, ReasonCount> = self
            .0
            .iter()
            .map(|(reason, counter)| {
                (
                    reason.name(),
                    ReasonCount {
                        packets: counter.packets,
                        bytes: counter.bytes,
                    },
                )
            })
            .collect();
        serde_json::json!({ "counters": counters })
    }

    /// The counters as a table; with `explain`, a last column says what
    /// each reason means (from `reason.rs`).
    #[must_use]
    pub fn to_table(&self, explain: bool) -> String {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|(reason, counter)| {
                let mut row = vec![
                    reason.name().to_owned(),
                    counter.packets.to_string(),
                    counter.bytes.to_string(),
                ];
                if explain {
                    row.push(reason.help().trim().to_owned());
                }
                row
            })
            .collect();
        let headers: &[&str] = if explain {
            &["REASON", "PACKETS", "BYTES", "MEANING"]
        } else {
            &["REASON", "PACKETS", "BYTES"]
        };
        table::render(headers, &rows)
    }
}

/// `stats --watch`: the counters with packets and bytes per second over the
/// last interval, redrawn in place on a terminal, until Ctrl-C or `count`
/// refreshes.
pub fn watch(pins: &PinDir, seconds: u64, count: Option<u64>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let interval = Duration::from_secs(seconds.max(1));
    let redraw = std::io::stdout().is_terminal();
    let mut previous = (Instant::now(), Totals::read(pins)?);
    let mut shown = 0;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|count| shown < count) {
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100).min(interval));
        }
        let now = (Instant::now(), Totals::read(pins)?);
        let elapsed = now.0.duration_since(previous.0).as_secs_f64().max(1e-9);
        let rows: Vec<Vec<String>> = now
            .1
            .0
            .iter()
            .zip(&previous.1.0)
            .map(|((reason, counter), (_, before))| {
                #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
                let rate = |now: u64, then: u64| format!("{:.0}", (now - then) as f64 / elapsed);
                vec![
                    reason.name().to_owned(),
                    counter.packets.to_string(),
                    rate(counter.packets, before.packets),
                    rate(counter.bytes, before.bytes),
                ]
            })
            .collect();
        // A reader that went away ends the watch (the caller ends quietly).
        let mut stdout = std::io::stdout().lock();
        if redraw {
            // Home and clear: refresh in place.
            write!(stdout, "\x1b[H\x1b[2J")?;
        }
        write!(
            stdout,
            "{}",
            table::render(&["REASON", "PACKETS", "PKT/S", "BYTES/S"], &rows)
        )?;
        writeln!(stdout)?;
        stdout.flush()?;
        previous = now;
        shown += 1;
    }
    Ok(())
}
