//! `pod-net stats`: the per-reason counters, summed over CPUs.
use std::collections::BTreeMap;

use anyhow::Result;
use pod_net_common::{Counter, Reason};
use serde::Serialize;

use crate::{datapath::Datapath, pins::PinDir, table};

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

    #[must_use]
    pub fn get(&self, reason: Reason) -> Counter {
        self.0
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, counter)| *counter)
            .unwrap_or_default()
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

    #[must_use]
    pub fn to_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|(reason, counter)| {
                vec![
                    reason.name().to_owned(),
                    counter.packets.to_string(),
                    counter.bytes.to_string(),
                ]
            })
            .collect();
        table::render(&["REASON", "PACKETS", "BYTES"], &rows)
    }
}
