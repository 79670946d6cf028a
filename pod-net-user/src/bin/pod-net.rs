//! `pod-net`: the loader CLI.
use std::process::ExitCode;

use clap::error::ErrorKind;
use pod_net::cli;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            err.exit()
        }
        Err(err) => {
            // A usage error: one line too, with clap's exit status.
            eprintln!("pod-net: error: {}", cli::usage_error_line(&err));
            return ExitCode::from(2);
        }
    };
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) if cli::is_broken_pipe(&err) => cli::end_by_sigpipe(),
        Err(err) => {
            // One line naming what was wrong, the causes after colons.
            eprintln!("pod-net: error: {}", cli::error_line(&err));
            ExitCode::FAILURE
        }
    }
}
