//! What a cluster agent tells `status` and `/metrics` about its store: the
//! agent writes it (beside its subnet file, and into its `/metrics`), and
//! `status`, another process, reads it back. The file carries the agent's
//! pid and a heartbeat, so a file left by an agent that is gone or hung is
//! not taken for the truth.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// The default of `pod-net status --cluster-status`: beside the default
/// subnet file.
pub const DEFAULT_STATUS_FILE: &str = "/run/pod-net/cluster-status.json";

/// How often a running agent writes its status even when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A status older than this comes from an agent that stopped writing it.
pub const SILENT_AFTER: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());
/// How many skipped records the status names (all are counted).
pub const SKIPPED_SHOWN: usize = 50;

/// Where a cluster agent publishes its status: beside its subnet file.
#[must_use]
pub fn status_file(subnet_file: &Path) -> PathBuf {
    subnet_file.with_file_name("cluster-status.json")
}

/// One record the agent skips, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    pub key: String,
    pub reason: String,
}

/// What `status` and `/metrics` can show about the store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The store's kind, as `status` names it (`etcd`).
    #[serde(default)]
    pub store: String,
    pub connected: bool,
    /// Seconds since the epoch of the last complete list or watch update.
    pub last_sync: Option<u64>,
    /// The store revision the maps reflect.
    pub revision: i64,
    pub peers: usize,
    pub subnet: Option<String>,
    /// Seconds since the epoch when our lease runs out unless renewed;
    /// `None` for a permanent reservation.
    pub lease_expiry: Option<u64>,
    /// Record versions skipped as malformed, foreign or refused, ever.
    pub skipped_records: u64,
    /// The records skipped now (the first [`SKIPPED_SHOWN`] by key).
    #[serde(default)]
    pub skipped: Vec<SkippedRecord>,
    /// How many records are skipped now.
    #[serde(default)]
    pub skipped_now: usize,
    /// Something about the network config or this node's own lease that
    /// the agent cannot fix by itself.
    #[serde(default)]
    pub problems: Vec<String>,
    /// How many times this node's lease was rewritten by someone else and
    /// written back.
    #[serde(default)]
    pub own_lease_restored: u64,
    /// Seconds since the epoch when this was last written.
    #[serde(default)]
    pub updated: u64,
    /// The agent's process, so `status` can tell whether it still runs.
    #[serde(default)]
    pub pid: u32,
    /// The agent's pin dir: `status` shows a store only for its own.
    #[serde(default)]
    pub pin_dir: String,
}

/// Whether the agent that wrote a status still speaks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Its process is gone.
    Gone,
    /// Its process is there but wrote nothing for this long.
    Silent(Duration),
}

#[must_use]
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl ClusterStatus {
    /// Whether the agent behind this status runs and keeps writing it.
    #[must_use]
    pub fn liveness(&self, now: SystemTime) -> Liveness {
        let alive = rustix::process::Pid::from_raw(self.pid.cast_signed()).is_some_and(|pid| {
            match rustix::process::test_kill_process(pid) {
                Ok(()) => true,
                Err(err) => err == rustix::io::Errno::PERM,
            }
        });
        if !alive {
            return Liveness::Gone;
        }
        let age = Duration::from_secs(unix_seconds(now).saturating_sub(self.updated));
        if age > SILENT_AFTER {
            Liveness::Silent(age)
        } else {
            Liveness::Running
        }
    }

    /// The Prometheus text exposition of the store's state, for the
    /// agent's `/metrics`.
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = write!(
                    out,
                    "# HELP pod_net_cluster_{name} {help}\n# TYPE pod_net_cluster_{name} {kind}\n\
                     pod_net_cluster_{name} {value}\n"
                );
            }
        };
        gauge(
            "store_connected",
            "Whether the agent is connected to the cluster store.",
            "gauge",
            Some(u8::from(self.connected).to_string()),
        );
        gauge(
            "last_sync_timestamp_seconds",
            "When the maps last matched the store.",
            "gauge",
            self.last_sync.map(|time| time.to_string()),
        );
        gauge(
            "store_revision",
            "The store revision the maps reflect.",
            "gauge",
            Some(self.revision.to_string()),
        );
        gauge(
            "peers",
            "Other nodes programmed from the store.",
            "gauge",
            Some(self.peers.to_string()),
        );
        gauge(
            "lease_expiry_timestamp_seconds",
            "When this node's lease runs out unless renewed.",
            "gauge",
            self.lease_expiry.map(|time| time.to_string()),
        );
        gauge(
            "skipped_records_total",
            "Store record versions skipped as malformed, foreign or refused.",
            "counter",
            Some(self.skipped_records.to_string()),
        );
        gauge(
            "skipped_records",
            "Store records skipped now.",
            "gauge",
            Some(self.skipped_now.to_string()),
        );
        gauge(
            "own_lease_restored_total",
            "Times this node's lease was rewritten by another writer and written back.",
            "counter",
            Some(self.own_lease_restored.to_string()),
        );
        gauge(
            "problems",
            "Problems the agent cannot fix by itself (see pod-net status).",
            "gauge",
            Some(self.problems.len().to_string()),
        );
        out
    }

    /// `etcd connected, revision 42, 3 peer(s), subnet 10.244.7.0/24, last
    /// sync 2 s ago, lease expires in 86390 s (written 1 s ago)`.
    #[must_use]
    pub fn describe(&self, now: SystemTime) -> String {
        let now = unix_seconds(now);
        let ago = |time: u64| format!("{} s ago", now.saturating_sub(time));
        let mut text = format!(
            "{} {}, revision {}, {} peer(s)",
            if self.store.is_empty() {
                "store"
            } else {
                &self.store
            },
            if self.connected {
                "connected"
            } else {
                "NOT connected"
            },
            self.revision,
            self.peers
        );
        if let Some(subnet) = &self.subnet {
            let _ = write!(text, ", subnet {subnet}");
        }
        if let Some(last_sync) = self.last_sync {
            let _ = write!(text, ", last sync {}", ago(last_sync));
        }
        if let Some(expiry) = self.lease_expiry {
            let _ = write!(text, ", lease expires in {} s", expiry.saturating_sub(now));
        }
        if self.skipped_now > 0 {
            let _ = write!(text, ", {} record(s) skipped", self.skipped_now);
        }
        let _ = write!(
            text,
            " (agent pid {}, written {})",
            self.pid,
            ago(self.updated)
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_state_in_prometheus_text() {
        let status = ClusterStatus {
            connected: true,
            last_sync: Some(1_700_000_000),
            revision: 42,
            peers: 3,
            subnet: Some("10.244.7.0/24".into()),
            lease_expiry: None,
            skipped_records: 2,
            skipped_now: 1,
            ..ClusterStatus::default()
        };
        let text = status.to_prometheus();
        assert!(
            text.contains("\npod_net_cluster_store_connected 1\n"),
            "{text}"
        );
        assert!(text.contains("\npod_net_cluster_last_sync_timestamp_seconds 1700000000\n"));
        assert!(text.contains("\npod_net_cluster_store_revision 42\n"));
        assert!(text.contains("\npod_net_cluster_peers 3\n"));
        assert!(text.contains("# TYPE pod_net_cluster_skipped_records_total counter\npod_net_cluster_skipped_records_total 2\n"));
        assert!(text.contains("\npod_net_cluster_skipped_records 1\n"));
        // A permanent reservation has no expiry to show.
        assert!(!text.contains("lease_expiry"));
    }

    #[test]
    fn a_status_speaks_for_a_running_agent_only() {
        let now = SystemTime::now();
        let mut status = ClusterStatus {
            pid: std::process::id(),
            updated: unix_seconds(now),
            ..ClusterStatus::default()
        };
        assert_eq!(status.liveness(now), Liveness::Running);
        let later = now + Duration::from_secs(45);
        assert_eq!(
            status.liveness(later),
            Liveness::Silent(Duration::from_secs(45))
        );
        // No process has PID 0 to signal, and a file from before pids
        // were written says 0.
        status.pid = 0;
        assert_eq!(status.liveness(now), Liveness::Gone);
    }
}
