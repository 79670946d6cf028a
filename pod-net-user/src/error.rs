//! The failures that callers must tell apart, whatever path they come by.
//!
//! Each travels inside the `anyhow` chain its call site adds context to;
//! [`find`] picks it out. The CNI plugin turns them into the spec's codes
//! ("try again later" where waiting can help); the CLI prints them as any
//! other error.
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NodeError {
    /// Nothing is pinned at the pin dir yet.
    #[error("pod-net is not loaded at {} (no pinned program); run `pod-net load` first", pin_dir.display())]
    NotLoaded { pin_dir: PathBuf },
    /// A map has no room for another entry. `advice` completes the
    /// sentence: what fitted, and how to make room.
    #[error("{map} is full ({capacity} entries){advice}")]
    MapFull {
        map: &'static str,
        capacity: u32,
        advice: String,
    },
    /// The interface a pod was registered with does not exist.
    #[error("no interface named {name:?} in this network namespace")]
    NoSuchInterface { name: String },
    /// The interface exists but is no veth, so it cannot be a pod's.
    #[error("interface {name:?} is not a veth; pods attach through their host-side veth")]
    NotAVeth { name: String },
}

/// The typed failure in `error`'s chain, if there is one.
#[must_use]
pub fn find(error: &anyhow::Error) -> Option<&NodeError> {
    error.chain().find_map(|cause| cause.downcast_ref())
}
