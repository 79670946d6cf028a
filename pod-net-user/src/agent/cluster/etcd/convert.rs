//! etcd's answers in the store's terms: its key-values as [`Record`]s,
//! its errors as [`StoreError`]s.
use crate::agent::cluster::store::{Record, StoreError, Value, bounded_key};

/// A key-value as the store keeps it (a key or value too big is bounded).
pub(super) fn record(kv: &etcd_client::KeyValue) -> Record {
    Record {
        key: bounded_key(kv.key()),
        value: Value::bounded(kv.value()),
        lease: kv.lease(),
        created: kv.create_revision(),
        modified: kv.mod_revision(),
    }
}

/// A failed call, as the follow loop tells them apart.
pub(super) fn store_error(err: etcd_client::Error) -> StoreError {
    match err {
        etcd_client::Error::TransportError(err) => StoreError::Unreachable(err.to_string()),
        etcd_client::Error::GRpcStatus(status) => {
            StoreError::Other(format!("{:?}: {}", status.code(), status.message()))
        }
        other => StoreError::Other(other.to_string()),
    }
}
