//! `pod-net status`: the datapath checked against the node, as a health
//! probe (exit 1 on any problem).
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{
    datapath::pins::PinDir,
    ops::{cluster_status::DEFAULT_STATUS_FILE, status},
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
    /// Where a cluster agent publishes the store's state (beside its
    /// --subnet-file); shown when present.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_STATUS_FILE)]
    cluster_status: PathBuf,
}

pub(super) fn run(pins: &PinDir, args: &StatusArgs) -> Result<ExitCode> {
    let mut status = status::check(pins)?;
    status.add_store(&args.cluster_status)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        out!("{}", status.to_text());
    }
    Ok(if status.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
