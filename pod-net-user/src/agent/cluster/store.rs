//! The cluster store as the membership loop sees it: list, watch from a
//! revision, leases, put-if-absent, and reconnecting after a failure. etcd
//! is the real implementation (`etcd.rs`); an in-memory one (`memory.rs`)
//! drives the follow loop's unit tests.
//!
//! The store is untrusted input. A store bounds what it hands over: a
//! value over [`MAX_VALUE_BYTES`] (or a key over [`MAX_KEY_BYTES`]) is
//! dropped as it arrives, leaving its size, so a hostile record costs the
//! agent no more memory than a lease does.
use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    time::Duration,
};

use thiserror::Error;

use super::backoff::Backoff;

/// The largest value kept. A flannel lease is about 150 bytes, its network
/// config a few hundred.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The longest key kept as it is; a longer one is named by its start and
/// a digest (see [`bounded_key`]).
pub const MAX_KEY_BYTES: usize = 512;

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

/// A record's value as the store handed it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Kept(Vec<u8>),
    /// Over [`MAX_VALUE_BYTES`]: only its size was kept.
    Dropped {
        len: usize,
    },
}

impl Value {
    /// Keeps `bytes` unless they are over the limit.
    #[must_use]
    pub fn bounded(bytes: &[u8]) -> Self {
        if bytes.len() > MAX_VALUE_BYTES {
            Self::Dropped { len: bytes.len() }
        } else {
            Self::Kept(bytes.to_vec())
        }
    }

    /// The bytes, when they were kept.
    #[must_use]
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Kept(bytes) => Some(bytes),
            Self::Dropped { .. } => None,
        }
    }

    /// Its size in bytes, kept or not.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Kept(bytes) => bytes.len(),
            Self::Dropped { len } => *len,
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A digest that tells two versions of a record apart.
    #[must_use]
    pub fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash_into(&mut hasher);
        hasher.finish()
    }

    fn hash_into(&self, hasher: &mut DefaultHasher) {
        match self {
            Self::Kept(bytes) => bytes.hash(hasher),
            Self::Dropped { len } => len.hash(hasher),
        }
    }
}

/// The key as the agent keeps it: as it is up to [`MAX_KEY_BYTES`], else
/// its start and a digest of the whole (the same for the key's put and its
/// delete, so one names the other).
#[must_use]
pub fn bounded_key(key: &[u8]) -> String {
    if key.len() <= MAX_KEY_BYTES {
        return String::from_utf8_lossy(key).into_owned();
    }
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    format!(
        "{}… ({} bytes, digest {:016x})",
        String::from_utf8_lossy(&key[..64]),
        key.len(),
        hasher.finish()
    )
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Value,
    /// The store lease it is attached to; 0 for none (a reservation).
    pub lease: i64,
    /// The revision that created the key: of two claims on one subnet, the
    /// older stands.
    pub created: i64,
    /// The revision of its last change, which a compare-and-swap names.
    pub modified: i64,
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

impl Change {
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Put(record) => &record.key,
            Self::Delete { key } => key,
        }
    }
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
/// Updates already received are handed over together, up to this many.
pub const WATCH_BATCH: usize = 1024;

pub trait Watch {
    /// The next update; an error when the connection is gone.
    fn next(&mut self) -> impl Future<Output = Result<WatchUpdate, StoreError>> + Send;
}

/// A store lease (etcd's): keys attached to it vanish when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: i64,
    pub ttl: Duration,
}

pub trait Store: Send {
    type Watch: Watch + Send;

    /// Connects again after a failure, retrying with `backoff` until the
    /// store answers.
    fn reconnect(
        &mut self,
        backoff: &mut Backoff,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One record, if present.
    fn get(&mut self, key: &str)
    -> impl Future<Output = Result<Option<Record>, StoreError>> + Send;
    /// Every record whose key starts with `prefix`, as of one revision.
    fn list(&mut self, prefix: &str) -> impl Future<Output = Result<Listing, StoreError>> + Send;
    /// Changes under `prefix` from `revision` on (inclusive).
    fn watch(
        &mut self,
        prefix: &str,
        revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
    fn grant(
        &mut self,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseGrant, StoreError>> + Send;
    /// Renews a lease for its whole TTL again; `false` when it no longer
    /// exists (expired, revoked, or the store lost it).
    fn keep_alive(&mut self, lease: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn revoke(&mut self, lease: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes `key` only if it does not exist; whether it was written.
    fn put_if_absent(
        &mut self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes `key` only if it is still as last changed at `modified` (a
    /// compare-and-swap); whether it was written.
    fn replace(
        &mut self,
        key: &str,
        modified: i64,
        value: &[u8],
        lease: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes `key` if it is still as last changed at `modified`.
    fn delete_if(
        &mut self,
        key: &str,
        modified: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_keys_over_the_limits_are_not_kept() {
        assert_eq!(Value::bounded(b"{}"), Value::Kept(b"{}".to_vec()));
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        assert_eq!(
            Value::bounded(&big),
            Value::Dropped {
                len: MAX_VALUE_BYTES + 1
            }
        );
        assert_eq!(Value::bounded(&big).bytes(), None);
        assert_ne!(
            Value::bounded(&big).digest(),
            Value::bounded(&big[1..]).digest()
        );

        assert_eq!(
            bounded_key(b"/p/subnets/10.0.0.0-24"),
            "/p/subnets/10.0.0.0-24"
        );
        let long = [b"/p/subnets/".as_slice(), &[b'a'; 2000]].concat();
        let named = bounded_key(&long);
        assert!(named.len() < 150, "{named}");
        assert!(named.contains("(2011 bytes, digest "), "{named}");
        // The same key always gets the same name (its delete finds its put).
        assert_eq!(named, bounded_key(&long));
        let mut other = long.clone();
        other[1500] = b'b';
        assert_ne!(named, bounded_key(&other));
    }
}
