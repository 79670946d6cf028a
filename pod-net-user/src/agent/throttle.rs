//! Rate limits for the agent's log: a line that keeps repeating (an accept
//! error in a loop, a client timing out again and again) is written once per
//! window, with a count of the copies held back, so a misbehaving peer
//! cannot fill the disk through the log.
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The agent's window: a repeated line is written at most once a minute.
pub const WINDOW: Duration = Duration::from_mins(1);

/// Distinct lines remembered per throttle; past this the memory is reset
/// (lines never carry peer-chosen text, so this is only a backstop).
const MAX_REMEMBERED: usize = 64;

/// Holds back repeats of the same line within `window`.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    /// Per line: when it was last written, and the repeats held back since.
    seen: HashMap<String, (Instant, u64)>,
}

impl Throttle {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: HashMap::new(),
        }
    }

    /// The line to write now, with the number of its repeats held back
    /// appended, or `None` to hold this one back.
    pub fn admit(&mut self, line: &str) -> Option<String> {
        self.admit_at(line, Instant::now())
    }

    fn admit_at(&mut self, line: &str, now: Instant) -> Option<String> {
        if let Some((written, held)) = self.seen.get_mut(line)
            && now.duration_since(*written) < self.window
        {
            *held += 1;
            return None;
        }
        if self.seen.len() >= MAX_REMEMBERED && !self.seen.contains_key(line) {
            self.seen.clear();
        }
        let held = self
            .seen
            .insert(line.to_owned(), (now, 0))
            .map_or(0, |(_, held)| held);
        Some(if held == 0 {
            line.to_owned()
        } else {
            format!("{line} (repeated {held} more time(s) since it was last logged)")
        })
    }
}

/// A `log::Log` that passes records on to the process's logger, holding
/// back repeats: for lines the agent does not write itself (the programs'
/// aya-log lines, which packets can trigger).
pub struct ThrottledLog(Mutex<Throttle>);

impl ThrottledLog {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self(Mutex::new(Throttle::new(window)))
    }
}

impl log::Log for ThrottledLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = record.args().to_string();
        let admitted = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&line);
        if let Some(line) = admitted {
            log::logger().log(
                &log::Record::builder()
                    .args(format_args!("{line}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_within_the_window_and_counted_after() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit_at("a", start).as_deref(), Some("a"));
        for second in 1..=3 {
            let at = start + Duration::from_secs(second);
            assert_eq!(throttle.admit_at("a", at), None);
        }
        // Another line is not held back by the first.
        let at = start + Duration::from_secs(4);
        assert_eq!(throttle.admit_at("b", at).as_deref(), Some("b"));
        let later = start + Duration::from_secs(10);
        assert_eq!(
            throttle.admit_at("a", later).as_deref(),
            Some("a (repeated 3 more time(s) since it was last logged)")
        );
        assert_eq!(throttle.admit_at("a", later), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut throttle = Throttle::new(Duration::from_secs(10));
        let now = Instant::now();
        for index in 0..1000 {
            assert!(throttle.admit_at(&index.to_string(), now).is_some());
        }
        assert!(throttle.seen.len() <= MAX_REMEMBERED);
    }
}
