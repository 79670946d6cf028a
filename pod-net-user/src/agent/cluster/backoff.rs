//! The wait between attempts at a store that keeps failing: doubling from
//! 0.2 s to 5 s, and from 0.2 s again once a connection works, so every
//! outage starts with a quick retry.
use std::time::Duration;

/// The first wait and the longest.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Waits that double while the store keeps failing, from the first again
/// once a connection works.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    #[must_use]
    pub const fn new() -> Self {
        Self { next: BACKOFF.0 }
    }

    /// How long to wait before the next attempt.
    pub fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF.1);
        delay
    }

    pub const fn reset(&mut self) {
        self.next = BACKOFF.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new();
        let waits: Vec<u128> = (0..7).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(200));
    }
}
