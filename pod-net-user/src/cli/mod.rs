//! The `pod-net` command line, a file per command: its arguments, what it
//! runs and how it prints (`load` with `unload`, `pod`, `node`, `agent`,
//! `apply`, `status`, `stats`, `monitor`, `gc`), with the typed failures in
//! the CLI's own words (`errors`). Names follow the design's CLI contract:
//! scripts and tests depend on them.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::datapath::pins::{DEFAULT_PIN_DIR, PinDir, PinDirLock, SETTLE_WAIT};

/// `print!` and `println!` that hand a failed write back with `?`: a
/// reader that went away (`pod-net pod list | head -1`) ends the command
/// quietly (see [`is_broken_pipe`]) instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => { std::io::Write::write_fmt(&mut std::io::stdout(), format_args!($($arg)*))? };
}
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout();
        std::io::Write::write_fmt(&mut stdout, format_args!($($arg)*))?;
        std::io::Write::write_all(&mut stdout, b"\n")?;
    }};
}

/// The pin dir's lock for a list read between two changes (see
/// [`PinDir::settle`]); past the wait, a warning that the list is read as
/// it is, mid-change.
fn settled_or_warn(pins: &PinDir) -> Result<Option<PinDirLock>> {
    let settled = pins.settle()?;
    if settled.is_none() {
        eprintln!(
            "pod-net: warning: a change held {} for {} s; listing the maps as they are (run \
             again for a list between changes)",
            pins.root().display(),
            SETTLE_WAIT.as_secs()
        );
    }
    Ok(settled)
}

/// Whether `err` is a write to a stdout whose reader went away. The command
/// then ends as coreutils do: quietly, by the SIGPIPE it would have died of
/// (see [`end_by_sigpipe`]).
#[must_use]
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process by SIGPIPE, the shell's usual status for a writer
/// whose reader left (141); exit status 141 should the signal not end it.
#[must_use]
pub fn end_by_sigpipe() -> ExitCode {
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    ExitCode::from(141)
}

mod agent;
mod apply;
mod cni;
mod errors;
mod gc;
mod load;
mod monitor;
mod node;
mod pod;
mod stats;
mod status;

pub use errors::error_line;

#[derive(Debug, Parser)]
#[command(
    name = "pod-net",
    version,
    about = "eBPF fast path for Kubernetes-style pod networking"
)]
pub struct Cli {
    /// Where programs, maps and links are pinned (one pin dir per node).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and pin the datapath (again, to upgrade it in place), then exit.
    Load(load::LoadArgs),
    /// Detach every program and remove the pin dir; traffic falls back to the kernel path.
    Unload,
    /// Check the datapath against the node; exits non-zero on any problem.
    Status(status::StatusArgs),
    /// Register, remove and list the pods on this node.
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Add, remove and list remote nodes and the pod prefixes they host.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Packet and byte counters per reason.
    Stats(stats::StatsArgs),
    /// Stream drop and trace events until Ctrl-C.
    Monitor(monitor::MonitorArgs),
    /// Make the maps match a node config file (TOML or JSON).
    Apply(apply::ApplyArgs),
    /// Run the node daemon: /metrics, program logs, config reconciling.
    Agent(Box<agent::AgentArgs>),
    /// Repair half-done state: entries of vanished pods, pods without the program, orphan attachments.
    Gc(gc::GcArgs),
    /// Chain pod-net-cni into another network's conflist (flannel's), or take it out.
    #[command(subcommand)]
    Cni(cni::CniCommand),
}

/// Parses `args` (the program name first). A missing subcommand is an
/// error like any other rather than a help screen on stderr, so every usage
/// error can be told in one line by [`usage_error_line`].
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    fn no_help_on_missing(command: clap::Command) -> clap::Command {
        command
            .arg_required_else_help(false)
            .mut_subcommands(no_help_on_missing)
    }
    let mut matches = no_help_on_missing(Cli::command()).try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// clap's error as one line: its message, with the argument list or tip
/// that follows it joined on; without the usage block and the pointer to
/// `--help`.
#[must_use]
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let parts: Vec<String> = rendered
        .split("\n\n")
        .map(str::trim)
        .filter(|block| {
            !block.is_empty()
                && !block.starts_with("Usage:")
                && !block.starts_with("For more information")
        })
        .map(|block| {
            block
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let line = parts.join("; ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

/// Runs one command, printing its output; errors go back to `main`.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let pins = PinDir::checked(&cli.pin_dir)?;
    match cli.command {
        Command::Load(args) => load::run(&pins, &args)?,
        Command::Unload => load::run_unload(&pins)?,
        Command::Status(args) => return status::run(&pins, &args),
        Command::Pod(command) => pod::run(&pins, command)?,
        Command::Node(command) => node::run(&pins, command)?,
        Command::Stats(args) => stats::run(&pins, &args)?,
        Command::Monitor(args) => monitor::run(&pins, &args)?,
        Command::Apply(args) => apply::run(&pins, &args)?,
        Command::Agent(args) => agent::run(pins, *args)?,
        Command::Gc(args) => gc::run(&pins, &args)?,
        Command::Cni(command) => cni::run(&pins, command)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_of_every_command_says_what_it_is_for() {
        fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                undocumented(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "pod-net", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
