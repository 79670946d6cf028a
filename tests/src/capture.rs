//! Packet captures in a rig namespace with tshark, read back as parsed
//! fields, so tests assert on what was on the wire rather than on counters.
use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::run_command;

/// A running tshark capture, stopped on drop.
pub struct Capture {
    child: Child,
    netns: String,
    file: PathBuf,
    seconds: u32,
}

impl Capture {
    /// Starts tshark on `iface` in namespace `netns` with the capture
    /// filter `filter`, writing `file` for `seconds`, and returns once it
    /// captures.
    pub fn start(
        netns: &str,
        iface: &str,
        filter: &str,
        file: &Path,
        seconds: u32,
    ) -> Result<Self> {
        let path = file.to_str().context("capture path is not UTF-8")?;
        let duration = format!("duration:{seconds}");
        let child = in_netns(
            netns,
            &[
                "tshark", "-q", "-i", iface, "-f", filter, "-w", path, "-a", &duration,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so that drop also stops the dumpcap it runs.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting tshark on {iface} in {netns}"))?;
        let mut capture = Self {
            child,
            netns: netns.to_owned(),
            file: file.to_owned(),
            seconds,
        };
        // dumpcap creates the file once it captures; give it a moment more
        // to have the filter in place.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !file.exists() {
            if let Some(status) = capture.child.try_wait()? {
                bail!("tshark on {iface} in {netns} exited early ({status})");
            }
            if Instant::now() > deadline {
                bail!("tshark on {iface} in {netns} never started capturing");
            }
            sleep(Duration::from_millis(50));
        }
        sleep(Duration::from_millis(300));
        Ok(capture)
    }

    /// Waits for the capture to end and returns one line per packet that
    /// matches `display_filter` (all when empty): `fields`, tab-separated
    /// (`tshark -T fields`).
    pub fn fields(mut self, display_filter: &str, fields: &[&str]) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(u64::from(self.seconds) + 10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("tshark in {} failed ({status})", self.netns);
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("tshark in {} did not stop", self.netns);
            }
            sleep(Duration::from_millis(100));
        }
        let path = self.file.to_str().context("capture path is not UTF-8")?;
        let mut args = vec!["tshark", "-r", path, "-T", "fields"];
        for field in fields {
            args.extend(["-e", field]);
        }
        if !display_filter.is_empty() {
            args.extend(["-Y", display_filter]);
        }
        let text = run_command(&mut in_netns(&self.netns, &args))?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            // SAFETY: kill(2) on the group this capture's spawn created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn in_netns(netns: &str, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .args(args);
    command
}
