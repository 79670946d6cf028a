//! Long-running peers a test starts in a rig's namespaces (etcd,
//! kube-apiserver, kube-controller-manager, flanneld): started, stopped,
//! killed and restarted by their own PID, with a log, and recorded so that
//! the next test clears what a killed test process left running.
//!
//! Each start writes `<state dir>/<name>.pid` = `PID START_TIME` (the
//! process's start time in clock ticks, `/proc/PID/stat` field 22), under
//! [`state_root`]`/<rig id>/`. [`clear_stale`] kills only processes whose
//! PID and start time both match a record of a rig whose test process is
//! gone, so a reused PID is never hit.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Where rigs' daemons keep their records and state (tmpfs: etcd's fsyncs
/// on a disk shared with builds could outlast its deadlines).
#[must_use]
pub fn state_root() -> PathBuf {
    PathBuf::from("/dev/shm/pod-net-tests")
}

/// The state directory of rig `rig_id`'s daemons, created if needed.
pub fn state_dir(rig_id: &str) -> Result<PathBuf> {
    let dir = state_root().join(rig_id);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A process run in a network namespace (`nsenter --net`, which execs it
/// in place, so the child's PID is the daemon's). Stopped on drop.
pub struct Daemon {
    name: String,
    netns: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// A mount namespace to run in too (`nsenter --mount`), if any.
    mount_ns: Option<PathBuf>,
    log: PathBuf,
    record: PathBuf,
    child: Option<Child>,
    /// How long SIGTERM may take before SIGKILL.
    grace: Duration,
}

impl Daemon {
    /// A daemon `name` of rig `rig_id`: `program args..` in `netns`, its
    /// stdout and stderr appended to `log`. Not started yet.
    pub fn new(
        rig_id: &str,
        netns: &str,
        name: &str,
        program: &Path,
        args: Vec<OsString>,
        log: &Path,
    ) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            netns: netns.to_owned(),
            program: program.to_path_buf(),
            args,
            env: Vec::new(),
            mount_ns: None,
            log: log.to_path_buf(),
            record: state_dir(rig_id)?.join(format!("{name}.pid")),
            child: None,
            grace: Duration::from_secs(10),
        })
    }

    /// Sets `name=value` in the daemon's environment (from the next start).
    #[must_use]
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Runs the daemon in the mount namespace `ns` (a `/proc/PID/ns/mnt`
    /// or a file bound to one) as well as in its network namespace, from
    /// the next start.
    #[must_use]
    pub fn in_mount_namespace(mut self, ns: &Path) -> Self {
        self.mount_ns = Some(ns.to_path_buf());
        self
    }

    /// Starts the daemon (stopping it first if it runs).
    pub fn start(&mut self) -> Result<()> {
        self.kill();
        if let Some(dir) = self.log.parent() {
            fs::create_dir_all(dir)?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.netns));
        if let Some(ns) = &self.mount_ns {
            command.arg(format!("--mount={}", ns.display()));
        }
        let child = command
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        let pid = child.id();
        self.child = Some(child);
        // The start time is read after exec may still be under way; it is
        // the same process either way (exec keeps the PID and start time).
        let start_time = start_time(pid).unwrap_or_default();
        fs::write(&self.record, format!("{pid} {start_time}\n"))
            .with_context(|| format!("writing {}", self.record.display()))?;
        Ok(())
    }

    /// The daemon's PID while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILLs it (no goodbye to anyone) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&self.record);
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after the grace period.
    /// Returns how long it took to go (None if it was not running).
    pub fn stop(&mut self) -> Option<Duration> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on the PID of a child this guard has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        while started.elapsed() < self.grace {
            if !matches!(child.try_wait(), Ok(None)) {
                let _ = fs::remove_file(&self.record);
                return Some(started.elapsed());
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{}: still running {:?} after SIGTERM; killing it",
            self.name, self.grace
        );
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_file(&self.record);
        Some(started.elapsed())
    }

    /// Kills it and starts it again with the same command line.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start()
    }

    /// Its log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log, for error messages.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Where its log is.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // The rig's state dir goes with its last daemon (only if empty).
        if let Some(dir) = self.record.parent() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it don't.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the recorded daemons of rigs whose test process is gone (matched
/// by PID and start time), and removes those rigs' state directories.
pub fn clear_stale() -> Result<()> {
    let Ok(entries) = fs::read_dir(state_root()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !rig_process_gone(&name) {
            continue;
        }
        let dir = entry.path();
        for record in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = record.path();
            if path.extension().is_some_and(|ext| ext == "pid") {
                kill_recorded(&path);
            }
        }
        // A parallel test of this binary may have removed it first.
        match fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing {}", dir.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `rig_id` (`pnr-<pid>-<seq>`) belongs to a process that is gone.
fn rig_process_gone(rig_id: &str) -> bool {
    let Some(pid) = rig_id
        .strip_prefix("pnr-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return false;
    };
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn kill_recorded(record: &Path) {
    let Ok(text) = fs::read_to_string(record) else {
        return;
    };
    let mut fields = text.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(recorded))) = (
        fields.next().map(str::parse::<u32>),
        fields.next().map(str::parse::<u64>),
    ) else {
        return;
    };
    if start_time(pid) == Some(recorded)
        && let Ok(pid) = i32::try_from(pid)
    {
        eprintln!(
            "clearing a stale daemon: PID {pid} recorded in {}",
            record.display()
        );
        // SAFETY: kill(2) on a PID whose start time matches our record.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_read_past_the_command_name() {
        let own = start_time(std::process::id()).unwrap();
        assert!(own > 0);
        assert!(rig_process_gone("pnr-0-1"));
        assert!(!rig_process_gone(&format!("pnr-{}-1", std::process::id())));
        assert!(!rig_process_gone("pnr-manual"));
    }
}
