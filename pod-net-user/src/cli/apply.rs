//! `pod-net apply -f FILE`: the maps made to match a node config.
use std::{io::Write as _, path::PathBuf};

use anyhow::Result;
use clap::Args;

use crate::{datapath::pins::PinDir, ops::apply};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The node config: `[[pods]]` (`ip`, `veth`, `mac`) and `[[nodes]]` (`cidr`,
    /// `node_ip`, `vtep_mac`).
    #[arg(short = 'f', long = "file", value_name = "NODE_CONFIG")]
    pub file: PathBuf,
    /// Print the changes without making them.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(pins: &PinDir, args: &ApplyArgs) -> Result<()> {
    let config = apply::read(&args.file)?;
    let changes = apply::run(pins, &config, args.dry_run)?;
    print_changes(&changes, args.dry_run)
}

/// `apply`'s changes, a line each, and their count. A cluster's worth of
/// lines goes out buffered, not one write per line.
fn print_changes(changes: &[apply::Change], dry_run: bool) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for change in changes {
        writeln!(out, "{change}")?;
    }
    if dry_run {
        writeln!(
            out,
            "{} change(s) (dry run: nothing changed)",
            changes.len()
        )?;
    } else {
        writeln!(out, "{} change(s) applied", changes.len())?;
    }
    out.flush()?;
    Ok(())
}
