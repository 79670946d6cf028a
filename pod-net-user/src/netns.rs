//! Doing something inside a pod's network namespace, found from the
//! namespace id the kernel gives its veth peer.
use std::{
    fs::{self, File},
    os::fd::{AsRawFd as _, RawFd},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use netlink_packet_route::{
    RouteNetlinkMessage,
    nsid::{NsidAttribute, NsidMessage},
};

use crate::netlink;

/// Runs `work` on a thread that has entered the namespace our namespace
/// knows as `nsid`. The calling thread never changes namespace.
pub fn run_in<T: Send>(nsid: i32, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    run_in_file(&find(nsid)?, work)
}

/// Runs `work` inside the network namespace at `path` (like a CNI
/// runtime's `CNI_NETNS`).
pub fn run_in_path<T: Send>(
    path: &std::path::Path,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let netns = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    run_in_file(&netns, work)
}

fn run_in_file<T: Send>(netns: &File, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor we hold open; it changes
                // only this short-lived thread's namespace.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("entering the pod's network namespace");
                }
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace worker panicked"))?
    })
}

/// Opens the network namespace with id `nsid`: tries the named ones
/// (`ip netns`, CNI runtimes) first, then every process's.
fn find(nsid: i32) -> Result<File> {
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
