//! Processes the rig starts, and where the binaries it runs are.
use std::{
    path::{Path, PathBuf},
    process::Child,
};

use anyhow::{Context as _, Result, bail};

/// A running [`super::Pod::ping_flood`].
pub struct PingFlood {
    pub(super) child: Child,
}

impl PingFlood {
    /// Waits for the flood to end: (transmitted, received, ping's output).
    pub fn finish(self) -> Result<(u64, u64, String)> {
        let output = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = text
            .lines()
            .find(|line| line.contains("packets transmitted"))
            .with_context(|| format!("no summary in {text}"))?;
        let mut numbers = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse::<u64>().ok());
        let (Some(sent), Some(received)) = (numbers.next(), numbers.next()) else {
            bail!("cannot read {line:?}");
        };
        Ok((sent, received, text))
    }
}

/// A process started in a namespace, killed on drop.
pub struct Background {
    pub(super) child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        // The whole group: the process and anything it forked.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the group this guard's spawn created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the `pod-net` binary is: `$POD_NET_BIN`, or next to the running
/// executable (target/<profile>/ for xtask, its parent for test binaries in
/// target/<profile>/deps/).
#[must_use]
pub fn pod_net_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("POD_NET_BIN") {
        return PathBuf::from(path);
    }
    sibling_binary("pod-net")
}

/// A workspace binary beside `POD_NET_BIN` (the bench's release build),
/// else next to the running executable, or its bare name.
#[must_use]
pub fn sibling_binary(name: &str) -> PathBuf {
    let pod_net_dir = std::env::var_os("POD_NET_BIN")
        .and_then(|path| PathBuf::from(path).parent().map(Path::to_path_buf));
    let exe = std::env::current_exe().unwrap_or_default();
    pod_net_dir
        .into_iter()
        .chain(exe.ancestors().skip(1).take(2).map(Path::to_path_buf))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
