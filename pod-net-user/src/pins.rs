//! The pin dir: where `load` leaves programs, maps and links on bpffs so the
//! datapath outlives every process, and how the tools find them again.
//!
//! ```text
//! <pin-dir>/local_endpoints                    map   (bpftool map dump pinned ...)
//! <pin-dir>/remote_nodes, config, counters     maps
//! <pin-dir>/progs/<program>                    programs
//! <pin-dir>/links/<program>/if<N>-<ifname>     TCX link of <program> on ifindex N
//! ```
use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use pod_net_common::program_names;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pod-net";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
pub const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    #[must_use]
    pub fn programs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    #[must_use]
    pub fn program(&self, name: &str) -> PathBuf {
        self.programs_dir().join(name)
    }

    #[must_use]
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Where the links of `program` are pinned.
    #[must_use]
    pub fn program_links_dir(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    /// Pin path of `program`'s link on `ifindex`. The index makes a
    /// recreated interface with the same name a different pin; the name is
    /// for people.
    #[must_use]
    pub fn link(&self, program: &str, ifindex: u32, ifname: &str) -> PathBuf {
        self.program_links_dir(program)
            .join(format!("if{ifindex}-{ifname}"))
    }

    /// The pinned links of `program`, as (ifindex, ifname, path).
    pub fn pinned_links(&self, program: &str) -> Result<Vec<PinnedLinkEntry>> {
        let dir = self.program_links_dir(program);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
        };
        let mut links = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let name = entry.file_name();
            let Some((ifindex, ifname)) = name.to_str().and_then(parse_link_name) else {
                continue;
            };
            links.push(PinnedLinkEntry {
                ifindex,
                ifname: ifname.to_owned(),
                path: entry.path(),
            });
        }
        links.sort_by_key(|link| link.ifindex);
        Ok(links)
    }

    /// The pinned link of `program` on `ifindex`, if any.
    pub fn pinned_link(&self, program: &str, ifindex: u32) -> Result<Option<PinnedLinkEntry>> {
        Ok(self
            .pinned_links(program)?
            .into_iter()
            .find(|link| link.ifindex == ifindex))
    }

    /// Whether `load` has run here: the program is pinned.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.program(program_names::POD_EGRESS).exists()
    }

    /// Fails with a clear message unless `load` has run here.
    pub fn require_loaded(&self) -> Result<()> {
        if !self.is_loaded() {
            bail!(
                "pod-net is not loaded at {} (no pinned program); run `pod-net load` first",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Takes the pin dir's exclusive lock, held until the guard drops, so
    /// concurrent CLI and CNI calls never interleave their map updates.
    pub fn lock(&self) -> Result<PinDirLock> {
        let file = File::open(&self.root)
            .with_context(|| format!("opening pin dir {} to lock it", self.root.display()))?;
        // SAFETY: flock on a valid descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("locking pin dir {}", self.root.display()));
        }
        Ok(PinDirLock { _file: file })
    }
}

/// Held while a command changes pinned state; the lock is released on drop
/// (closing the descriptor releases the flock, also when the process dies).
pub struct PinDirLock {
    _file: File,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLinkEntry {
    pub ifindex: u32,
    pub ifname: String,
    pub path: PathBuf,
}

fn parse_link_name(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("if")?;
    let (index, ifname) = rest.split_once('-')?;
    Some((index.parse().ok()?, ifname))
}

/// Whether `path` lies on a bpf filesystem.
pub fn is_on_bpffs(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type == BPF_FS_MAGIC)
}

/// Makes sure the pin dir can be created on bpffs, mounting bpffs at
/// /sys/fs/bpf when that is where the pin dir lives and nothing is mounted.
/// Returns whether it mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<bool> {
    let existing = pin_dir
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or_else(|| Path::new("/"));
    if is_on_bpffs(existing)? {
        return Ok(false);
    }
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if !pin_dir.starts_with(mount_point) {
        bail!(
            "pin dir {} is not on a bpf filesystem; use a path under {BPFFS_MOUNT_POINT}",
            pin_dir.display()
        );
    }
    fs::create_dir_all(mount_point).with_context(|| format!("creating {BPFFS_MOUNT_POINT}"))?;
    let target = CString::new(BPFFS_MOUNT_POINT)?;
    let fstype = CString::new("bpf")?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {BPFFS_MOUNT_POINT}"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        let pins = PinDir::new("/sys/fs/bpf/x");
        let path = pins.link("pod_egress", 17, "veth-a1");
        assert!(path.starts_with("/sys/fs/bpf/x/links/pod_egress"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "if17-veth-a1");
        assert_eq!(parse_link_name(name), Some((17, "veth-a1")));
        assert_eq!(parse_link_name("ifx-veth"), None);
        assert_eq!(parse_link_name("other"), None);
    }
}
