//! The pinned nightly of the eBPF build, as `pod-net-ebpf/ebpf-toolchain.txt`
//! names it (pod-net-user's build script reads the same file).
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::run::workspace_root;

pub struct EbpfToolchain {
    /// `nightly-YYYY-MM-DD`, as rustup names it.
    pub channel: String,
    /// The commit date its rustc reports.
    pub commit_date: String,
}

impl EbpfToolchain {
    pub fn pinned() -> Result<Self> {
        let path = workspace_root().join("pod-net-ebpf/ebpf-toolchain.txt");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let field = |name: &str| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(key, _)| key.trim() == name)
                .map(|(_, value)| value.trim().to_owned())
                .with_context(|| format!("{} has no `{name} = ...` line", path.display()))
        };
        Ok(Self {
            channel: field("channel")?,
            commit_date: field("commit-date")?,
        })
    }

    /// Whether rustup has the pinned channel under its own name.
    pub fn installed(&self) -> bool {
        Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .is_ok_and(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .any(|line| line.starts_with(&self.channel))
            })
    }

    /// Whether a toolchain called plain `nightly` is the pinned compiler.
    pub fn is_plain_nightly(&self) -> bool {
        Command::new("rustup")
            .args(["run", "nightly", "rustc", "-V"])
            .output()
            .is_ok_and(|output| {
                output.status.success()
                    && String::from_utf8_lossy(&output.stdout)
                        .contains(&format!(" {})", self.commit_date))
            })
    }

    /// The toolchain to build with: the pinned channel when installed,
    /// else `nightly` (which setup made sure is the same compiler).
    pub fn name(&self) -> String {
        if self.installed() {
            self.channel.clone()
        } else {
            "nightly".to_owned()
        }
    }
}
