//! Doing something inside a pod's network namespace, found from the
//! namespace id the kernel gives its veth peer.
use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, RawFd},
        unix::{ffi::OsStrExt as _, fs::OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_route::{
    RouteNetlinkMessage,
    nsid::{NsidAttribute, NsidMessage},
};
use rustix::{
    fs::StatFs,
    thread::{LinkNameSpaceType, move_into_link_name_space},
};

use crate::sys::netlink;

/// `statfs` type of the namespace filesystem (`/proc/PID/ns/*` and their
/// bind mounts under `/run/netns`).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Runs `work` on a thread that has entered the namespace our namespace
/// knows as `nsid`. The calling thread never changes namespace. `hint`, a
/// namespace file the caller expects to be that one (a CNI runtime's
/// `CNI_NETNS`), is tried before the search, whose cost grows with the pods
/// on the node.
pub fn run_in<T: Send>(
    nsid: i32,
    hint: Option<&Path>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    run_in_file(&find(nsid, hint)?, work)
}

/// Opens the namespace file at `path` (like a CNI runtime's `CNI_NETNS`),
/// refusing anything that is not one, without blocking: a FIFO there would
/// hang a plain open forever.
pub fn open(path: &Path) -> Result<File> {
    // Before opening: statfs does not open the file.
    if !is_nsfs(path, || statfs_path(path))? {
        bail!("{} is not a namespace file (nsfs)", path.display());
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    // And after, for what was swapped in between.
    if !is_nsfs(path, || fstatfs(&file))? {
        bail!("{} is not a namespace file (nsfs)", path.display());
    }
    Ok(file)
}

/// Runs `work` inside the network namespace at `path` (see [`open`]).
pub fn run_in_path<T: Send>(path: &Path, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    run_in_file(&open(path)?, work)
}

fn is_nsfs(path: &Path, statfs: impl FnOnce() -> io::Result<StatFs>) -> Result<bool> {
    let stat = statfs().with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.f_type == NSFS_MAGIC)
}

fn statfs_path(path: &Path) -> io::Result<StatFs> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    Ok(rustix::fs::statfs(c_path.as_c_str())?)
}

fn fstatfs(file: &File) -> io::Result<StatFs> {
    Ok(rustix::fs::fstatfs(file)?)
}

pub fn run_in_file<T: Send>(netns: &File, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // Changes only this short-lived thread's namespace.
                move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(io::Error::from)
                    .context("entering the pod's network namespace")?;
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace worker panicked"))?
    })
}

/// Opens the network namespace with id `nsid`: tries the named ones
/// (`ip netns`, CNI runtimes) first, then every process's.
fn find(nsid: i32, hint: Option<&Path>) -> Result<File> {
    if let Some(file) = hint.and_then(|path| File::open(path).ok())
        && nsid_of(file.as_raw_fd()).ok() == Some(nsid)
    {
        return Ok(file);
    }
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    let processes = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|entry| entry.path().join("ns/net"));
    let candidates: Vec<PathBuf> = named.chain(processes).collect();
    for path in candidates {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if nsid_of(file.as_raw_fd()).ok() == Some(nsid) {
            return Ok(file);
        }
    }
    bail!("no network namespace with id {nsid} is reachable from here")
}

/// The id our namespace has for the namespace behind `fd`.
fn nsid_of(fd: RawFd) -> Result<i32> {
    let mut message = NsidMessage::default();
    let fd = u32::try_from(fd).context("negative descriptor")?;
    message.attributes.push(NsidAttribute::Fd(fd));
    let replies = netlink::get(RouteNetlinkMessage::GetNsId(message), false)
        .context("asking for a namespace id")?;
    replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewNsId(message) => Some(&message.attributes),
            _ => None,
        })
        .flatten()
        .find_map(|attribute| match attribute {
            NsidAttribute::Id(id) => Some(*id),
            _ => None,
        })
        .context("the kernel named no id")
}
