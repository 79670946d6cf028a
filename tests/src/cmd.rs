//! Running the commands a rig is made of, with errors that say what failed.
use std::{
    ffi::OsStr,
    io::Write as _,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `program args..`, failing with its stderr unless it exits 0.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    run_command(&mut command)
}

/// Runs a prepared command, failing with its stderr unless it exits 0.
pub fn run_command(command: &mut Command) -> Result<String> {
    let output = output_of(command)?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a prepared command and returns its output whatever the exit status.
pub fn output_of(command: &mut Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("starting {}", describe(command)))
}

/// Runs a prepared command with `input` on its stdin (a value that may be
/// bigger than one argument can be) and returns its output whatever the
/// exit status; stdout and stderr are captured.
pub fn output_with_input(command: &mut Command, input: &[u8]) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", describe(command)))?;
    child.stdin.take().context("no stdin")?.write_all(input)?;
    Ok(child.wait_with_output()?)
}

/// The command line, for messages.
#[must_use]
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Arguments for a daemon's command line, as [`std::process::Command`]
/// takes them.
#[must_use]
pub fn os_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<std::ffi::OsString> {
    args.iter().map(|arg| arg.as_ref().to_os_string()).collect()
}
