//! `pod-net stats`: the counters, as a table, JSON or Prometheus text.
use anyhow::Result;
use clap::Args;

use crate::{
    datapath::pins::PinDir,
    ops::{
        metrics,
        stats::{self, Totals},
    },
};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the counters as JSON.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// The Prometheus text exposition format.
    #[arg(long)]
    pub prometheus: bool,
    /// Refresh every SECS seconds with rates per second, until Ctrl-C.
    #[arg(long, value_name = "SECS", conflicts_with_all = ["json", "prometheus"])]
    pub watch: Option<u64>,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Add a column saying what each reason means.
    #[arg(long, conflicts_with_all = ["json", "prometheus", "watch"])]
    pub explain: bool,
}

pub(super) fn run(pins: &PinDir, args: &StatsArgs) -> Result<()> {
    if let Some(seconds) = args.watch {
        stats::watch(pins, seconds, args.count)?;
    } else if args.prometheus {
        out!("{}", metrics::render(pins)?);
    } else if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&Totals::read(pins)?.to_json())?
        );
    } else {
        out!("{}", Totals::read(pins)?.to_table(args.explain));
    }
    Ok(())
}
