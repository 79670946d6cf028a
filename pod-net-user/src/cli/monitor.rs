//! `pod-net monitor`: the programs' events as they come.
use anyhow::Result;
use clap::Args;

use crate::{datapath::pins::PinDir, ops::monitor};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Also report fast-path packets (`redirect_local`, `encap`, `decap`).
    #[arg(long)]
    pub all: bool,
    /// Events per second per CPU before the rate limit holds them back.
    #[arg(long, value_name = "N", default_value_t = pod_net_common::event::DEFAULT_EVENTS_PER_SECOND)]
    pub rate: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

pub(super) fn run(pins: &PinDir, args: &MonitorArgs) -> Result<()> {
    monitor::run(
        pins,
        &monitor::MonitorOptions {
            all: args.all,
            rate: args.rate,
            json: args.json,
            count: args.count,
        },
    )
}
