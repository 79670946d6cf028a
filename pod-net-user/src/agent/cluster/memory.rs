//! An in-memory store with etcd's semantics as the follow loop uses them:
//! revisions, prefix lists, watches from a revision (with the history
//! since, or a loss past a compaction), leases whose keys go when they do,
//! and compare-and-swap by revision. For the follow loop's unit tests;
//! flannel's `pkg/subnet/etcd/mock_registry.go` is the anchor.
//!
//! A test keeps a clone to change the store under a running loop (as
//! another node or an operator would), compact it, and take it down and
//! bring it back.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{
    backoff::Backoff,
    store::{Change, LeaseGrant, Listing, Record, Store, StoreError, Value, Watch, WatchUpdate},
};

#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    records: BTreeMap<String, Record>,
    revision: i64,
    /// Every change with its revision, for watches from an old revision.
    history: Vec<(i64, Change)>,
    /// Revisions up to this one are forgotten.
    compacted: i64,
    leases: HashMap<i64, Duration>,
    next_lease: i64,
    down: bool,
    watches: Vec<(String, UnboundedSender<Result<WatchUpdate, StoreError>>)>,
    /// When each reconnect attempt found the store (tokio's clock).
    reconnects: Vec<tokio::time::Instant>,
    lists: usize,
}

impl State {
    fn check_up(&self) -> Result<(), StoreError> {
        if self.down {
            return Err(StoreError::Unreachable("the memory store is down".into()));
        }
        Ok(())
    }

    /// Makes `change` at a new revision and tells the watches.
    fn commit(&mut self, change: Change) {
        self.revision += 1;
        let revision = self.revision;
        match &change {
            Change::Put(record) => {
                self.records.insert(record.key.clone(), record.clone());
            }
            Change::Delete { key } => {
                self.records.remove(key);
            }
        }
        self.watches.retain(|(prefix, sender)| {
            !change.key().starts_with(prefix.as_str())
                || sender
                    .send(Ok(WatchUpdate::Changes {
                        changes: vec![change.clone()],
                        revision,
                    }))
                    .is_ok()
        });
        self.history.push((revision, change));
    }

    fn put(&mut self, key: &str, value: &[u8], lease: i64) {
        let created = self
            .records
            .get(key)
            .map_or(self.revision + 1, |record| record.created);
        self.commit(Change::Put(Record {
            key: key.to_owned(),
            value: Value::bounded(value),
            lease,
            created,
            modified: self.revision + 1,
        }));
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a test does to the store, as another writer would.
impl MemoryStore {
    pub fn put(&self, key: &str, value: &str) {
        lock(&self.state).put(key, value.as_bytes(), 0);
    }

    pub fn delete(&self, key: &str) {
        let mut state = lock(&self.state);
        if state.records.contains_key(key) {
            state.commit(Change::Delete {
                key: key.to_owned(),
            });
        }
    }

    /// The value at `key`, if any.
    pub fn value(&self, key: &str) -> Option<Value> {
        lock(&self.state)
            .records
            .get(key)
            .map(|record| record.value.clone())
    }

    /// Forgets the history up to now: a watch from before must list again.
    pub fn compact(&self) {
        let mut state = lock(&self.state);
        state.compacted = state.revision;
        state.history.clear();
    }

    /// Takes the store down (every call fails, every watch ends) or brings
    /// it back.
    pub fn set_down(&self, down: bool) {
        let mut state = lock(&self.state);
        state.down = down;
        if down {
            for (_, sender) in state.watches.drain(..) {
                let _ = sender.send(Err(StoreError::Unreachable("connection lost".into())));
            }
        }
    }

    /// When the reconnects found the store up or down, in order.
    pub fn reconnects(&self) -> Vec<tokio::time::Instant> {
        lock(&self.state).reconnects.clone()
    }

    /// How many lists the store answered.
    pub fn lists(&self) -> usize {
        lock(&self.state).lists
    }
}

pub struct MemoryWatch {
    updates: UnboundedReceiver<Result<WatchUpdate, StoreError>>,
}

impl Watch for MemoryWatch {
    async fn next(&mut self) -> Result<WatchUpdate, StoreError> {
        self.updates
            .recv()
            .await
            .unwrap_or_else(|| Err(StoreError::Unreachable("the watch ended".into())))
    }
}

impl Store for MemoryStore {
    type Watch = MemoryWatch;

    async fn reconnect(&mut self, backoff: &mut Backoff) -> Result<(), StoreError> {
        loop {
            let up = {
                let mut state = lock(&self.state);
                state.reconnects.push(tokio::time::Instant::now());
                !state.down
            };
            if up {
                return Ok(());
            }
            tokio::time::sleep(backoff.next()).await;
        }
    }

    async fn get(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        let state = lock(&self.state);
        state.check_up()?;
        Ok(state.records.get(key).cloned())
    }

    async fn list(&mut self, prefix: &str) -> Result<Listing, StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        state.lists += 1;
        Ok(Listing {
            records: state
                .records
                .range(prefix.to_owned()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(_, record)| record.clone())
                .collect(),
            revision: state.revision,
        })
    }

    async fn watch(&mut self, prefix: &str, revision: i64) -> Result<MemoryWatch, StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        let (sender, updates) = unbounded_channel();
        if revision <= state.compacted {
            let why = format!("compacted up to revision {}", state.compacted);
            let _ = sender.send(Ok(WatchUpdate::Lost(why)));
            return Ok(MemoryWatch { updates });
        }
        for (at, change) in &state.history {
            if *at >= revision && change.key().starts_with(prefix) {
                let _ = sender.send(Ok(WatchUpdate::Changes {
                    changes: vec![change.clone()],
                    revision: *at,
                }));
            }
        }
        state.watches.push((prefix.to_owned(), sender));
        Ok(MemoryWatch { updates })
    }

    async fn grant(&mut self, ttl: Duration) -> Result<LeaseGrant, StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(id, ttl);
        Ok(LeaseGrant { id, ttl })
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<bool, StoreError> {
        let state = lock(&self.state);
        state.check_up()?;
        Ok(state.leases.contains_key(&lease))
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        state.leases.remove(&lease);
        let gone: Vec<String> = state
            .records
            .values()
            .filter(|record| record.lease == lease)
            .map(|record| record.key.clone())
            .collect();
        for key in gone {
            state.commit(Change::Delete { key });
        }
        Ok(())
    }

    async fn put_if_absent(
        &mut self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        if state.records.contains_key(key) {
            return Ok(false);
        }
        state.put(key, value, lease);
        Ok(true)
    }

    async fn replace(
        &mut self,
        key: &str,
        modified: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        if state.records.get(key).map(|record| record.modified) != Some(modified) {
            return Ok(false);
        }
        state.put(key, value, lease);
        Ok(true)
    }

    async fn delete_if(&mut self, key: &str, modified: i64) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        state.check_up()?;
        if state.records.get(key).map(|record| record.modified) != Some(modified) {
            return Ok(false);
        }
        state.commit(Change::Delete {
            key: key.to_owned(),
        });
        Ok(true)
    }
}
