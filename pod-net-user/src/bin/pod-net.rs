//! `pod-net`: the loader CLI.
use std::process::ExitCode;

use clap::Parser as _;
use pod_net::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            // One line naming what was wrong, the causes after colons.
            eprintln!("pod-net: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
