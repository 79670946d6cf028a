//! Waiting for something a test cannot be told about: bounded polling.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// Polls `check` every 100 ms until it returns `Some`, for up to `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if start.elapsed() > limit {
            bail!("gave up after {limit:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 100 ms until it holds, for up to `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    wait_for(what, limit, || check().then_some(()))
}
