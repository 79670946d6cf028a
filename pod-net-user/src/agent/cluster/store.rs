//! The cluster store as the membership loop sees it: list, watch from a
//! revision, leases, put-if-absent. etcd is the first implementation
//! (`etcd.rs`); a Kubernetes Node watcher is meant to be the second.
use std::time::Duration;

use thiserror::Error;

/// Why a store call failed. Every variant means "try again later": the
/// datapath keeps what it has meanwhile.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store unreachable: {0}")]
    Unreachable(String),
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    #[error("store: {0}")]
    Other(String),
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    /// The store lease it is attached to; 0 for none (a reservation).
    pub lease: i64,
}

/// Every record under a prefix, as of `revision`.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub records: Vec<Record>,
    pub revision: i64,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Record),
    Delete { key: String },
}

/// What a watch delivers next.
#[derive(Debug)]
pub enum WatchUpdate {
    /// Changes, the last of them made at `revision`: a watch resumed at
    /// `revision + 1` misses none.
    Changes { changes: Vec<Change>, revision: i64 },
    /// The watch can no longer follow (its start was compacted, or the
    /// store cancelled it): list again, then watch again.
    Lost(String),
}

/// A running watch.
pub trait Watch {
    /// The next update; an error when the connection is gone.
    fn next(&mut self) -> impl Future<Output = Result<WatchUpdate, StoreError>>;
}

/// A store lease (etcd's): keys attached to it vanish when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: i64,
    pub ttl: Duration,
}

pub trait Store {
    type Watch: Watch;

    /// One record, if present.
    fn get(&mut self, key: &str) -> impl Future<Output = Result<Option<Record>, StoreError>>;
    /// Every record whose key starts with `prefix`.
    fn list(&mut self, prefix: &str) -> impl Future<Output = Result<Listing, StoreError>>;
    /// Changes under `prefix` from `revision` on (inclusive).
    fn watch(
        &mut self,
        prefix: &str,
        revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, StoreError>>;
    fn grant(&mut self, ttl: Duration) -> impl Future<Output = Result<LeaseGrant, StoreError>>;
    /// Renews a lease for its whole TTL again; `false` when it no longer
    /// exists (expired, revoked, or the store lost it).
    fn keep_alive(&mut self, lease: i64) -> impl Future<Output = Result<bool, StoreError>>;
    fn revoke(&mut self, lease: i64) -> impl Future<Output = Result<(), StoreError>>;
    /// Writes `key` only if it does not exist; whether it was written.
    fn put_if_absent(
        &mut self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> impl Future<Output = Result<bool, StoreError>>;
    /// Writes `key` only if it holds exactly `expected` (a compare-and-swap
    /// on our own record); whether it was written.
    fn replace(
        &mut self,
        key: &str,
        expected: &[u8],
        value: &[u8],
        lease: i64,
    ) -> impl Future<Output = Result<bool, StoreError>>;
    /// Deletes `key` if it holds exactly `expected`.
    fn delete_if(
        &mut self,
        key: &str,
        expected: &[u8],
    ) -> impl Future<Output = Result<bool, StoreError>>;
}
