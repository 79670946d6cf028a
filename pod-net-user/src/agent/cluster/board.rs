//! The agent's [`ClusterStatus`], shared with `/metrics` and written to its
//! file for `pod-net status`. The file is written by a thread of its own,
//! latest version first, so no file (a full disk, a FIFO planted where it
//! goes) ever holds up the agent's loop or its `/metrics`.
use std::{
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

use log::warn;

use crate::ops::cluster_status::{ClusterStatus, HEARTBEAT, unix_seconds};
use crate::sys::files::write_atomically;

/// The status, and the version waiting to be written.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    status: Mutex<ClusterStatus>,
    /// The newest JSON not yet written; the writer takes it.
    pending: Mutex<Option<Vec<u8>>>,
    wake: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatusBoard {
    /// A board for the agent of `pin_dir` following a store of `kind`,
    /// written to `file` when given.
    #[must_use]
    pub fn new(kind: &str, pin_dir: &str, file: Option<PathBuf>) -> Self {
        let board = Self {
            inner: Arc::new(Inner {
                status: Mutex::new(ClusterStatus {
                    store: kind.to_owned(),
                    pin_dir: pin_dir.to_owned(),
                    pid: std::process::id(),
                    ..ClusterStatus::default()
                }),
                pending: Mutex::new(None),
                wake: Condvar::new(),
            }),
        };
        if let Some(file) = file {
            let inner = Arc::clone(&board.inner);
            let spawned = std::thread::Builder::new()
                .name("status-file".into())
                .spawn(move || write_forever(&inner, &file));
            if let Err(err) = spawned {
                warn!("not writing the cluster status file: {err}");
            }
        }
        board.update(|_| {});
        board
    }

    /// Changes the status and hands the new version to the writer.
    pub fn update(&self, change: impl FnOnce(&mut ClusterStatus)) {
        let json = {
            let mut status = lock(&self.inner.status);
            change(&mut status);
            status.updated = unix_seconds(SystemTime::now());
            serde_json::to_vec_pretty(&*status)
        };
        if let Ok(json) = json {
            *lock(&self.inner.pending) = Some(json);
            self.inner.wake.notify_one();
        }
    }

    /// The status as it is now.
    #[must_use]
    pub fn snapshot(&self) -> ClusterStatus {
        lock(&self.inner.status).clone()
    }

    /// Writes the status every [`HEARTBEAT`], so a reader can tell a
    /// running agent from one that stopped.
    pub async fn heartbeat(self) {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            self.update(|_| {});
        }
    }
}

fn write_forever(inner: &Inner, file: &std::path::Path) {
    let mut said = false;
    loop {
        let json = {
            let mut pending = lock(&inner.pending);
            loop {
                if let Some(json) = pending.take() {
                    break json;
                }
                pending = inner
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        match write_atomically(file, &json) {
            Ok(()) => said = false,
            // Once per failure run: `/metrics` has it all the same.
            Err(err) if !said => {
                warn!("writing {}: {err}", file.display());
                said = true;
            }
            Err(_) => {}
        }
    }
}
