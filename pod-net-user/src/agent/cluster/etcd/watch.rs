//! A prefix watch on etcd, as [`Watch`] updates of whole revisions.
//!
//! A revision too big for one gRPC message comes in fragments (the watch
//! asks for them); whatever else has already arrived goes in the same
//! update, so a loop that fell behind catches up in bigger updates, not in
//! more of them. Everything taken from the stream is kept in the watch,
//! not in [`Watch::next`]'s future: the follow loop's `select!` drops that
//! future whenever a timer fires first, and nothing taken may go with it.
use etcd_client::{EventType, WatchResponse, WatchStream};
use futures_util::FutureExt as _;

use super::convert::{record, store_error};
use crate::agent::cluster::store::{
    Change, StoreError, WATCH_BATCH, Watch, WatchUpdate, bounded_key,
};

/// A prefix watch.
pub struct EtcdWatch {
    stream: WatchStream,
    revisions: Revisions,
}

impl EtcdWatch {
    pub(super) fn new(stream: WatchStream) -> Self {
        Self {
            stream,
            revisions: Revisions::default(),
        }
    }
}

impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<WatchUpdate, StoreError> {
        let mut taken = 0;
        loop {
            // The only await: cancelled here, nothing is lost.
            let message = if !self.revisions.has_update() {
                self.stream.message().await
            } else if taken < WATCH_BATCH
                && let Some(message) = self.stream.message().now_or_never()
            {
                message
            } else {
                return Ok(self.revisions.take_update());
            };
            let Some(response) = message.map_err(store_error)? else {
                return Err(StoreError::Unreachable("the watch stream ended".into()));
            };
            taken += 1;
            if let Some(why) = self.revisions.take_in(&response) {
                return Ok(WatchUpdate::Lost(why));
            }
        }
    }
}

/// The changes taken from the stream and not yet handed over.
#[derive(Debug, Default)]
struct Revisions {
    /// Whole revisions, and the last one's number; `None` until one is
    /// whole (a progress notice with no changes is one too).
    whole: Option<(Vec<Change>, i64)>,
    /// The fragments of the revision still arriving, and its number.
    fragments: Vec<Change>,
    fragments_revision: i64,
}

impl Revisions {
    /// Takes in one response; why the watch is lost, if it is.
    fn take_in(&mut self, response: &WatchResponse) -> Option<String> {
        if response.canceled() {
            // A compacted start revision arrives as a cancel after
            // "created", with the compaction's revision.
            return Some(if response.compact_revision() > 0 {
                format!("compacted up to revision {}", response.compact_revision())
            } else {
                format!("cancelled: {}", response.cancel_reason())
            });
        }
        if response.created() && response.events().is_empty() {
            return None;
        }
        // The last event's revision, not the header's: etcd may send a
        // catch-up batch stamped with the current revision while more
        // events are still to come, and a resume must not skip them.
        let revision = response
            .events()
            .iter()
            .filter_map(|event| event.kv().map(etcd_client::KeyValue::mod_revision))
            .max()
            .unwrap_or_else(|| {
                response
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision)
            });
        self.fragments_revision = self.fragments_revision.max(revision);
        self.fragments
            .extend(response.events().iter().filter_map(|event| {
                let kv = event.kv()?;
                Some(match event.event_type() {
                    EventType::Put => Change::Put(record(kv)),
                    EventType::Delete => Change::Delete {
                        key: bounded_key(kv.key()),
                    },
                })
            }));
        if !response.0.fragment {
            let (changes, revision) = self.whole.get_or_insert_with(|| (Vec::new(), 0));
            changes.append(&mut self.fragments);
            *revision = (*revision).max(std::mem::take(&mut self.fragments_revision));
        }
        None
    }

    fn has_update(&self) -> bool {
        self.whole.is_some()
    }

    /// The whole revisions taken in so far, as one update.
    fn take_update(&mut self) -> WatchUpdate {
        let (changes, revision) = self.whole.take().unwrap_or_default();
        WatchUpdate::Changes { changes, revision }
    }
}

#[cfg(test)]
mod tests {
    use etcd_client::proto::{PbEvent, PbKeyValue, PbResponseHeader, PbWatchResponse};

    use super::*;

    /// A response with a put of each `(key, mod revision)`.
    fn response(puts: &[(&str, i64)], fragment: bool) -> WatchResponse {
        WatchResponse(PbWatchResponse {
            header: Some(PbResponseHeader {
                revision: 99,
                ..PbResponseHeader::default()
            }),
            events: puts
                .iter()
                .map(|(key, revision)| PbEvent {
                    kv: Some(PbKeyValue {
                        key: key.as_bytes().to_vec(),
                        value: b"v".to_vec(),
                        mod_revision: *revision,
                        create_revision: *revision,
                        ..PbKeyValue::default()
                    }),
                    ..PbEvent::default()
                })
                .collect(),
            fragment,
            ..PbWatchResponse::default()
        })
    }

    fn keys(update: WatchUpdate) -> (Vec<String>, i64) {
        match update {
            WatchUpdate::Changes { changes, revision } => (
                changes
                    .iter()
                    .map(|change| change.key().to_owned())
                    .collect(),
                revision,
            ),
            WatchUpdate::Lost(why) => panic!("lost: {why}"),
        }
    }

    #[test]
    fn a_revision_in_fragments_is_one_update_and_its_fragments_wait_in_the_watch() {
        let mut revisions = Revisions::default();
        assert_eq!(
            revisions.take_in(&response(&[("/a", 7), ("/b", 7)], true)),
            None
        );
        // Between fragments (where a dropped `next` used to lose them),
        // nothing is ready and nothing is gone.
        assert!(!revisions.has_update());
        assert_eq!(revisions.take_in(&response(&[("/c", 7)], false)), None);
        assert!(revisions.has_update());
        assert_eq!(
            keys(revisions.take_update()),
            (vec!["/a".into(), "/b".into(), "/c".into()], 7)
        );
        assert!(!revisions.has_update());
    }

    #[test]
    fn revisions_already_arrived_go_in_one_update_at_the_last_ones_number() {
        let mut revisions = Revisions::default();
        for (key, revision) in [("/a", 5), ("/b", 6), ("/c", 8)] {
            assert_eq!(
                revisions.take_in(&response(&[(key, revision)], false)),
                None
            );
        }
        // The start of a revision still arriving stays behind.
        assert_eq!(revisions.take_in(&response(&[("/d", 9)], true)), None);
        assert_eq!(
            keys(revisions.take_update()),
            (vec!["/a".into(), "/b".into(), "/c".into()], 8)
        );
        assert!(!revisions.has_update());
        assert_eq!(revisions.take_in(&response(&[("/e", 9)], false)), None);
        assert_eq!(
            keys(revisions.take_update()),
            (vec!["/d".into(), "/e".into()], 9)
        );
    }

    #[test]
    fn a_progress_notice_is_an_update_at_the_headers_revision_and_a_cancel_loses_the_watch() {
        let mut revisions = Revisions::default();
        assert_eq!(revisions.take_in(&response(&[], false)), None);
        assert_eq!(keys(revisions.take_update()), (vec![], 99));
        let mut cancel = response(&[], false);
        cancel.0.canceled = true;
        cancel.0.compact_revision = 42;
        assert_eq!(
            revisions.take_in(&cancel).as_deref(),
            Some("compacted up to revision 42")
        );
    }
}
