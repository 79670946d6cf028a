//! The pin dir: where `load` leaves programs, maps and links on bpffs so the
//! datapath outlives every process, and how the tools find them again.
//!
//! ```text
//! <pin-dir>/local_endpoints                    map   (bpftool map dump pinned ...)
//! <pin-dir>/remote_nodes, config, counters     maps
//! <pin-dir>/progs/<program>                    programs
//! <pin-dir>/links/<program>/if<N>-<ifname>     TCX link of <program> on ifindex N
//! <pin-dir>/pod-net-pin-dir                    marker: an empty directory
//! ```
//!
//! A pin dir is where root loads programs and deletes pins, and
//! `/sys/fs/bpf` is writable by everyone (mode 1777). So a pin dir is taken
//! only as an absolute path without `..` or symlinks, owned by root and
//! writable by no one else, never inside another pin dir; `load` creates it
//! 0700 and mounts bpffs only at `/sys/fs/bpf` itself, when nothing is
//! mounted there.
use std::{
    ffi::{CStr, CString},
    fs::{self, DirBuilder, File},
    io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use pod_net_common::program_names;
use rustix::{
    fs::FlockOperation,
    mount::{MountFlags, UnmountFlags},
};

use crate::error::NodeError;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pod-net";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";
/// The empty directory that marks a pod-net pin dir (bpffs holds only
/// directories and BPF objects, and no names with dots).
const MARKER: &str = "pod-net-pin-dir";

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// A pin dir at `root`, unchecked: for paths the program made itself.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A pin dir named by a user (a flag, a CNI config), refused unless it
    /// is safe to load into and delete from; see the module docs.
    pub fn checked(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        check_path(&root)?;
        check_owners(&root)?;
        if let Some(outer) = root.ancestors().skip(1).find(|dir| is_pin_dir(dir)) {
            bail!(
                "pin dir {} is inside pod-net pin dir {}; pick a path outside it",
                root.display(),
                outer.display()
            );
        }
        Ok(Self { root })
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

    /// The marker `load` leaves, so that `unload` never deletes in a
    /// directory that is not a pin dir.
    #[must_use]
    pub fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }

    /// Whether this is a pod-net pin dir: marked, or loaded by a version
    /// from before the marker.
    #[must_use]
    pub fn is_pin_dir(&self) -> bool {
        is_pin_dir(&self.root)
    }

    /// Creates the missing directories of the pin dir, 0700, and marks it.
    /// Refuses an existing directory with other contents. Returns the
    /// directories it created, deepest last.
    pub fn create(&self) -> Result<Vec<PathBuf>> {
        if self.root.exists() && !self.is_pin_dir() {
            let mut entries = fs::read_dir(&self.root)
                .with_context(|| format!("reading {}", self.root.display()))?
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>();
            if !entries.is_empty() {
                entries.sort();
                bail!(
                    "{} is not a pod-net pin dir (it holds {}); pick another pin dir",
                    self.root.display(),
                    entries.join(", ")
                );
            }
        }
        let mut created: Vec<PathBuf> = self
            .root
            .ancestors()
            .take_while(|dir| !dir.exists())
            .map(Path::to_path_buf)
            .collect();
        created.reverse();
        for dir in [self.marker(), self.programs_dir(), self.links_dir()] {
            if !dir.exists() {
                created.push(dir);
            }
        }
        for dir in &created {
            DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(created)
    }

    /// Whether `load` has run here: the program is pinned.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.program(program_names::POD_EGRESS).exists()
    }

    /// Fails with a clear message unless `load` has run here.
    pub fn require_loaded(&self) -> Result<()> {
        if !self.is_loaded() {
            return Err(NodeError::NotLoaded {
                pin_dir: self.root.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Takes the pin dir's exclusive lock, held until the guard drops, so
    /// concurrent CLI and CNI calls never interleave their map updates.
    pub fn lock(&self) -> Result<PinDirLock> {
        let file = File::open(&self.root)
            .with_context(|| format!("opening pin dir {} to lock it", self.root.display()))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .map_err(io::Error::from)
            .with_context(|| format!("locking pin dir {}", self.root.display()))?;
        Ok(PinDirLock { _file: file })
    }
}

impl PinDir {
    /// The pin dir's lock if it comes free within `wait`; `None` if another
    /// command holds it all that while.
    pub fn lock_within(&self, wait: std::time::Duration) -> Result<Option<PinDirLock>> {
        let file = File::open(&self.root)
            .with_context(|| format!("opening pin dir {} to lock it", self.root.display()))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(PinDirLock { _file: file })),
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(err) => {
                    return Err(io::Error::from(err))
                        .with_context(|| format!("locking pin dir {}", self.root.display()));
                }
            }
        }
    }

    /// The lock for a read between two changes: a change under way (an
    /// agent applying 10,000 leases holds it for a second or two) finishes
    /// first. Readers need it: a map walked while it is written can miss
    /// entries (the kernel's LPM trie walk skips a subtree whose node was
    /// replaced under it). `None` when a change held it for all of
    /// [`SETTLE_WAIT`]: the caller reads anyway and says so.
    pub fn settle(&self) -> Result<Option<PinDirLock>> {
        self.lock_within(SETTLE_WAIT)
    }
}

/// How long a reader waits for a change under way before it reads anyway.
pub const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Held while a command changes pinned state; the lock is released on drop
/// (closing the descriptor releases the flock, also when the process dies).
pub struct PinDirLock {
    _file: File,
}

/// Held by a running `pod-net monitor`: a lock on the pin dir's marker,
/// released when the monitor ends, however it ends. Events left on with
/// no holder were left by a monitor that died.
pub struct MonitorLock {
    _file: File,
}

impl PinDir {
    /// Takes the monitor's lock; a second monitor is refused (the two would
    /// share one ring buffer's events and turn them off under each other).
    pub fn monitor_lock(&self) -> Result<MonitorLock> {
        let file = self.open_marker()?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(MonitorLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => bail!(
                "another `pod-net monitor` runs on {}; one at a time",
                self.root.display()
            ),
            Err(err) => Err(io::Error::from(err))
                .with_context(|| format!("locking {}", self.marker().display())),
        }
    }

    /// Whether a `pod-net monitor` holds its lock now.
    pub fn monitor_running(&self) -> Result<bool> {
        let file = self.open_marker()?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
            Err(err) => Err(io::Error::from(err))
                .with_context(|| format!("locking {}", self.marker().display())),
        }
    }

    /// The marker, made first if a pin dir from before markers lacks it.
    fn open_marker(&self) -> Result<File> {
        let marker = self.marker();
        match fs::create_dir(&marker) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err).with_context(|| format!("creating {}", marker.display())),
        }
        File::open(&marker).with_context(|| format!("opening {}", marker.display()))
    }
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

fn is_pin_dir(dir: &Path) -> bool {
    dir.join(MARKER).is_dir() || dir.join("progs").join(program_names::POD_EGRESS).exists()
}

/// An absolute path with no `.` or `..` and no symlink on the way: what
/// the text says is where the pins go.
fn check_path(root: &Path) -> Result<()> {
    if !root.is_absolute() {
        bail!("pin dir {} is not an absolute path", root.display());
    }
    if root
        .components()
        .any(|part| matches!(part, Component::ParentDir | Component::CurDir))
    {
        bail!("pin dir {} contains `..` or `.`", root.display());
    }
    for dir in root.ancestors() {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => bail!(
                "pin dir {} goes through the symlink {}; name the real directory",
                root.display(),
                dir.display()
            ),
            Ok(meta) if !meta.is_dir() => {
                bail!(
                    "pin dir {}: {} is not a directory",
                    root.display(),
                    dir.display()
                );
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("inspecting {}", dir.display())),
        }
    }
    Ok(())
}

/// The pin dir and its parents up to the bpffs mount belong to us and are
/// writable by no one else, so no one else can swap what they hold.
fn check_owners(root: &Path) -> Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    for dir in root.ancestors() {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let is_mount_root = dir
            .parent()
            .and_then(|parent| fs::metadata(parent).ok())
            .is_none_or(|parent| parent.dev() != meta.dev());
        if is_mount_root {
            if dir == root {
                bail!(
                    "pin dir {} is the root of a filesystem; use a directory below it",
                    root.display()
                );
            }
            break;
        }
        if meta.uid() != euid {
            bail!(
                "pin dir {}: {} is owned by uid {}, not by uid {euid} running pod-net",
                root.display(),
                dir.display(),
                meta.uid()
            );
        }
        // A sticky directory of ours above the pin dir (/tmp, /sys/fs/bpf)
        // lets others add names but not move ours.
        let sticky_parent = dir != root && meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky_parent {
            bail!(
                "pin dir {}: {} is writable by group or others (mode {:o})",
                root.display(),
                dir.display(),
                meta.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// Whether `path` lies on a bpf filesystem.
pub fn is_on_bpffs(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))?;
    let stat = rustix::fs::statfs(c_path.as_c_str())
        .map_err(io::Error::from)
        .with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.f_type == BPF_FS_MAGIC)
}

/// Makes sure the pin dir can be created on bpffs: its nearest existing
/// directory is on bpffs already, or the pin dir is below `/sys/fs/bpf`
/// and nothing at all is mounted there, and bpffs gets mounted there.
/// Returns whether it mounted. Expects a [`PinDir::checked`] path.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<bool> {
    if !needs_bpffs_mount(pin_dir)? {
        return Ok(false);
    }
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if is_mount_point(mount_point)? {
        bail!(
            "{BPFFS_MOUNT_POINT} has another filesystem mounted on it, not bpffs; \
             pod-net will not mount over it"
        );
    }
    rustix::mount::mount(
        "bpf",
        BPFFS_MOUNT_POINT,
        "bpf",
        MountFlags::empty(),
        None::<&CStr>,
    )
    .map_err(io::Error::from)
    .with_context(|| format!("mounting bpffs at {BPFFS_MOUNT_POINT}"))?;
    Ok(true)
}

/// Whether `pin_dir` is on bpffs already (false) or lies where `load`
/// would mount bpffs, below `/sys/fs/bpf` (true); an error for anywhere
/// else.
pub fn needs_bpffs_mount(pin_dir: &Path) -> Result<bool> {
    let existing = pin_dir
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or_else(|| Path::new("/"));
    if is_on_bpffs(existing)? {
        return Ok(false);
    }
    let mount_point = Path::new(BPFFS_MOUNT_POINT);
    if !pin_dir.starts_with(mount_point) || pin_dir == mount_point {
        bail!(
            "pin dir {} is not on a bpf filesystem; use a path under {BPFFS_MOUNT_POINT}",
            pin_dir.display()
        );
    }
    Ok(true)
}

/// Undoes [`ensure_bpffs`]'s mount after a load that failed.
pub fn unmount_bpffs() -> Result<()> {
    rustix::mount::unmount(BPFFS_MOUNT_POINT, UnmountFlags::DETACH)
        .map_err(io::Error::from)
        .with_context(|| format!("unmounting bpffs at {BPFFS_MOUNT_POINT}"))
}

/// Whether a filesystem is mounted at `dir` (it is on another device than
/// its parent, or it is `/`).
fn is_mount_point(dir: &Path) -> Result<bool> {
    let meta = fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    let Some(parent) = dir.parent() else {
        return Ok(true);
    };
    let parent =
        fs::metadata(parent).with_context(|| format!("inspecting {}", parent.display()))?;
    Ok(parent.dev() != meta.dev())
}

/// Removes one pin; one already gone is fine.
pub fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing pin {}", path.display())),
    }
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
