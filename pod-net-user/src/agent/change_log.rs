//! What the agent says it programmed. A batch after a quiet spell is one
//! line at once; the batches that follow within [`SUMMARY_WINDOW`] are
//! summed into one line when the window ends. So one lease change shows at
//! once, and a store churning 20 leases a second (one batch each) costs a
//! line every 10 s, not 20 lines a second (about 8 MB of log an hour).
//! Each change is at debug level (`RUST_LOG=debug`) as it is made.
use std::time::Duration;

use log::{debug, info};
use tokio::time::Instant;

use crate::ops::apply::Change;

/// How long batches that follow a logged one are summed before their line.
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(10);

/// The batches held back, and when the next line may be written.
#[derive(Debug, Default)]
pub struct ChangeLog {
    /// The end of the last line's window: a batch before it is held.
    window_end: Option<Instant>,
    held: Option<Held>,
}

/// Batches programmed within a window, not yet logged.
#[derive(Debug)]
struct Held {
    changes: usize,
    batches: usize,
    /// The latest batch's count of other nodes and store revision.
    peers: usize,
    revision: Option<i64>,
}

impl ChangeLog {
    /// Takes in one batch of `changes` programmed from `source` (the
    /// store's name), leaving `peers` other nodes, at the store's
    /// `revision` when known. Logs each change at debug level, and the
    /// batch now unless a window is open.
    pub fn programmed(
        &mut self,
        source: &str,
        changes: &[Change],
        peers: usize,
        revision: Option<i64>,
    ) {
        for change in changes {
            debug!("{source}: {change}");
        }
        if let Some(line) = self.take_batch(source, changes.len(), peers, revision, Instant::now())
        {
            info!("{line}");
        }
    }

    /// When the held batches are due to be logged (`None`: none held).
    #[must_use]
    pub fn due(&self) -> Option<Instant> {
        self.held.as_ref().and(self.window_end)
    }

    /// Logs the held batches if their window has ended.
    pub fn flush(&mut self, source: &str) {
        if let Some(line) = self.take_due(source, Instant::now()) {
            info!("{line}");
        }
    }

    /// The line for a batch of `count` changes at `now`, or `None` when it
    /// is held (or empty).
    fn take_batch(
        &mut self,
        source: &str,
        count: usize,
        peers: usize,
        revision: Option<i64>,
        now: Instant,
    ) -> Option<String> {
        if count == 0 {
            return None;
        }
        if self.window_end.is_some_and(|end| now < end) {
            let held = self.held.get_or_insert(Held {
                changes: 0,
                batches: 0,
                peers,
                revision: None,
            });
            held.changes += count;
            held.batches += 1;
            held.peers = peers;
            held.revision = revision.or(held.revision);
            return None;
        }
        // A quiet spell ended; anything still held belongs before this.
        let earlier = self.take_held(source);
        self.window_end = Some(now + SUMMARY_WINDOW);
        let line = line(source, count, None, peers, revision);
        Some(earlier.map_or_else(|| line.clone(), |earlier| format!("{earlier}; then {line}")))
    }

    /// The held batches' line, once their window ended at `now`.
    fn take_due(&mut self, source: &str, now: Instant) -> Option<String> {
        if self.due().is_none_or(|due| now < due) {
            return None;
        }
        // Churn goes on: the next batches are summed for a window too.
        self.window_end = Some(now + SUMMARY_WINDOW);
        self.take_held(source)
    }

    fn take_held(&mut self, source: &str) -> Option<String> {
        self.held.take().map(|held| {
            line(
                source,
                held.changes,
                Some(held.batches),
                held.peers,
                held.revision,
            )
        })
    }
}

/// `etcd: 3 change(s) programmed[ in N batch(es) within 10 s], P other
/// node(s)[ at revision R]`.
fn line(
    source: &str,
    changes: usize,
    batches: Option<usize>,
    peers: usize,
    revision: Option<i64>,
) -> String {
    let over = batches.map_or_else(String::new, |batches| {
        format!(
            " in {batches} batch(es) within {} s",
            SUMMARY_WINDOW.as_secs()
        )
    });
    let at = revision.map_or_else(String::new, |revision| format!(" at revision {revision}"));
    format!("{source}: {changes} change(s) programmed{over}, {peers} other node(s){at}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_batch_after_quiet_is_one_line_at_once() {
        let mut log = ChangeLog::default();
        let now = Instant::now();
        assert_eq!(
            log.take_batch("etcd", 3, 5, Some(42), now).as_deref(),
            Some("etcd: 3 change(s) programmed, 5 other node(s) at revision 42")
        );
        assert_eq!(log.due(), None);
        // A quiet window later, the next batch is at once again.
        let later = now + SUMMARY_WINDOW;
        assert_eq!(
            log.take_batch("etcd", 1, 6, None, later).as_deref(),
            Some("etcd: 1 change(s) programmed, 6 other node(s)")
        );
        assert_eq!(log.take_batch("etcd", 0, 6, None, later), None);
    }

    #[test]
    fn churn_is_one_line_per_window_and_every_change_is_counted() {
        let mut log = ChangeLog::default();
        let start = Instant::now();
        let mut lines = Vec::new();
        // 20 batches of one change a second for 30 s, the loop flushing
        // whenever a line is due (as its select does).
        for tick in 0..600_u32 {
            let now = start + SECOND * tick / 20;
            if let Some(line) = log.take_due("etcd", now) {
                lines.push(line);
            }
            let revision = i64::from(tick) + 100;
            if let Some(line) = log.take_batch("etcd", 1, 300, Some(revision), now) {
                lines.push(line);
            }
        }
        let end = start + 30 * SECOND;
        assert_eq!(log.due(), Some(end));
        lines.extend(log.take_due("etcd", end));
        assert_eq!(log.due(), None);
        assert_eq!(
            lines,
            [
                "etcd: 1 change(s) programmed, 300 other node(s) at revision 100",
                "etcd: 199 change(s) programmed in 199 batch(es) within 10 s, 300 other node(s) \
                 at revision 299",
                "etcd: 200 change(s) programmed in 200 batch(es) within 10 s, 300 other node(s) \
                 at revision 499",
                "etcd: 200 change(s) programmed in 200 batch(es) within 10 s, 300 other node(s) \
                 at revision 699",
            ]
        );
    }

    #[test]
    fn held_batches_come_out_before_a_later_batch_if_not_flushed() {
        let mut log = ChangeLog::default();
        let start = Instant::now();
        assert!(log.take_batch("flannel", 2, 2, None, start).is_some());
        assert_eq!(log.take_batch("flannel", 1, 3, None, start + SECOND), None);
        assert_eq!(log.due(), Some(start + SUMMARY_WINDOW));
        // Not yet due.
        assert_eq!(log.take_due("flannel", start + 2 * SECOND), None);
        assert_eq!(
            log.take_batch("flannel", 4, 7, None, start + 11 * SECOND)
                .as_deref(),
            Some(
                "flannel: 1 change(s) programmed in 1 batch(es) within 10 s, 3 other node(s); \
                 then flannel: 4 change(s) programmed, 7 other node(s)"
            )
        );
        assert_eq!(log.due(), None);
    }
}
