//! `pod-net-cni`: the chained CNI plugin. See `pod_net::cni`.
use std::{
    io::{Read as _, Write as _},
    process::ExitCode,
};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // A runtime always sends a configuration; an unreadable stdin parses as
    // malformed and gets CNI's decode error.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = pod_net::cni::run(&pod_net::cni::Env::from_process(), &stdin);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(outcome.stdout.as_bytes());
    let _ = stdout.flush();
    ExitCode::from(outcome.exit_code)
}
