//! Rigs left by processes that died: recognised by the PID in their names
//! and cleared by the next rig.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output_of, run};

use super::{BPFFS, PREFIX, SHARED_MEMORY};

/// Namespace names currently present.
fn netns_names() -> Result<Vec<String>> {
    let listing = run("ip", ["netns", "list"])?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Removes every namespace, process inside one, pin dir and scratch or
/// etcd data dir of rig `id`. Deleting a namespace deletes its veths, and
/// with them the peers and TCX links on them.
pub(super) fn remove_rig(id: &str) -> Result<()> {
    let ours = |name: &str| name == id || name.starts_with(&format!("{id}-"));
    // Pods first: a node's veths go with its pods' namespaces.
    let mut names: Vec<String> = netns_names()?
        .into_iter()
        .filter(|name| ours(name))
        .collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut failures = Vec::new();
    for name in &names {
        // What the rig ran inside (its etcd, agents, daemons) would outlive
        // the namespace: it goes first.
        for pid in run("ip", ["netns", "pids", name])?.split_whitespace() {
            let _ = output_of(Command::new("kill").args(["-KILL", pid]));
        }
    }
    for name in names {
        let output = output_of(Command::new("ip").args(["netns", "del", &name]))?;
        // Another clearer may have won the race; only a namespace that is
        // still there is a failure.
        if !output.status.success() && netns_names()?.contains(&name) {
            failures.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    for dir in leftover_dirs() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(ours) && entry.path().is_dir() {
                match fs::remove_dir_all(entry.path()) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error)
                            .with_context(|| format!("removing {}", entry.path().display()));
                    }
                    _ => {}
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!("could not delete namespaces {failures:?}");
    }
    Ok(())
}

/// Where a rig keeps files named by its id: its pin dirs, its scratch dir
/// and its etcd's data.
fn leftover_dirs() -> [PathBuf; 3] {
    [
        PathBuf::from(BPFFS),
        std::env::temp_dir(),
        PathBuf::from(SHARED_MEMORY),
    ]
}

/// Serializes clearing: the tests of one binary build rigs on parallel
/// threads, and two of them must not delete the same leftover at once.
static CLEARING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Clears rigs whose creating process is gone (a crashed or killed run).
pub fn clear_stale() -> Result<()> {
    let _one_at_a_time = CLEARING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut dead = std::collections::BTreeSet::new();
    let file_names = leftover_dirs().into_iter().flat_map(|dir| {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
    });
    for name in netns_names()?.into_iter().chain(file_names) {
        if let Some(id) = stale_rig_id(&name) {
            dead.insert(id);
        }
    }
    for id in dead {
        remove_rig(&id)?;
    }
    Ok(())
}

/// The rig id in `name` if it belongs to a rig whose process is dead.
fn stale_rig_id(name: &str) -> Option<String> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid: u32 = parts.next()?.parse().ok()?;
    let seq: u32 = parts.next()?.parse().ok()?;
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    (!alive).then(|| format!("{PREFIX}{pid}-{seq}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_are_parsed_from_names() {
        // PID 0 never names a live process in /proc.
        assert_eq!(stale_rig_id("pnr-0-3-n1-p2"), Some("pnr-0-3".to_owned()));
        assert_eq!(stale_rig_id("pnr-0-3"), Some("pnr-0-3".to_owned()));
        assert_eq!(stale_rig_id("pnr-manual-n1"), None);
        assert_eq!(stale_rig_id("other"), None);
        let live = format!("pnr-{}-0-n1", std::process::id());
        assert_eq!(stale_rig_id(&live), None);
    }

    /// A rig left by a dead process (PID 0 is never alive): the process
    /// inside its namespace, the namespace, and its etcd data and scratch
    /// dirs all go with the next clearing.
    #[test]
    fn a_dead_rigs_processes_and_dirs_are_cleared() {
        crate::require_root!();
        let id = "pnr-0-77";
        let etcd_data = Path::new(SHARED_MEMORY).join(format!("{id}-etcd"));
        let scratch = std::env::temp_dir().join(id);
        let _ = remove_rig(id);
        run("ip", ["netns", "add", id]).unwrap();
        let mut left = Command::new("ip")
            .args(["netns", "exec", id, "sleep", "600"])
            .spawn()
            .unwrap();
        crate::wait_until(
            "sleep in the namespace",
            std::time::Duration::from_secs(5),
            || run("ip", ["netns", "pids", id]).is_ok_and(|pids| !pids.trim().is_empty()),
        )
        .unwrap();
        fs::create_dir_all(&etcd_data).unwrap();
        fs::create_dir_all(&scratch).unwrap();

        clear_stale().unwrap();
        // Killed: it ends now, not in 600 s.
        let status = crate::wait_for(
            "the rig's process to end",
            std::time::Duration::from_secs(5),
            || left.try_wait().ok().flatten(),
        );
        if status.is_err() {
            let _ = left.kill();
        }
        assert!(!status.unwrap().success());
        assert!(!netns_names().unwrap().contains(&id.to_owned()));
        assert!(!etcd_data.exists());
        assert!(!scratch.exists());
    }
}
