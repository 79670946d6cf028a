//! `pod-net gc`: repairs of half-done state.
use anyhow::Result;
use clap::Args;

use crate::{datapath::pins::PinDir, ops::gc};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print what would be repaired; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the repairs as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(pins: &PinDir, args: &GcArgs) -> Result<()> {
    let repairs = gc::run(pins, args.dry_run)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&repairs)?);
        return Ok(());
    }
    for repair in &repairs {
        outln!("{repair}");
    }
    let verb = if args.dry_run {
        "to make (dry run: nothing changed)"
    } else {
        "made"
    };
    outln!("{} repair(s) {verb}", repairs.len());
    Ok(())
}
