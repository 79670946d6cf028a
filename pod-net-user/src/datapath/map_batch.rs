//! Batched map calls: `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH`,
//! one syscall for many entries (aya 0.14 has no batch calls). `apply`
//! reads and writes a cluster's worth of remote entries this way. Where the
//! kernel has no batch operation for a map type, each entry gets its own
//! syscall.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per lookup call: enough that a hash bucket always fits (the
/// kernel refuses a count smaller than a bucket with ENOSPC).
const LOOKUP_CHUNK: usize = 4096;
/// The kernel's ENOTSUPP (not EOPNOTSUPP): no batch operation for the map.
const ENOTSUPP: i32 = 524;

/// Fail instead of overwriting an existing entry.
pub const BPF_NOEXIST: u64 = 1;

/// A batch that stopped part way: `done` entries were written (or
/// deleted) before entry `done` failed with `error`.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub error: io::Error,
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element-command member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Every entry of a map, `LOOKUP_CHUNK` entries per syscall, in the map's
/// own order; `None` where the kernel has no batch lookup for the map
/// type, so the caller walks it key by key. Entries
/// written meanwhile may or may not be seen, as with a walk.
pub fn lookup_all<K: Pod + bytemuck::Zeroable, V: Pod + bytemuck::Zeroable>(
    map: BorrowedFd<'_>,
) -> io::Result<Option<Vec<(K, V)>>> {
    let mut entries = Vec::new();
    let supported = lookup_chunks(map, |keys: &[K], values: &[V]| {
        entries.extend(keys.iter().copied().zip(values.iter().copied()));
    })?;
    Ok(supported.then_some(entries))
}

/// How many entries a map holds, counted as [`lookup_all`] reads
/// them but without keeping them; `None` where there is no batch lookup.
pub fn count<K: Pod + bytemuck::Zeroable, V: Pod + bytemuck::Zeroable>(
    map: BorrowedFd<'_>,
) -> io::Result<Option<usize>> {
    let mut count = 0;
    let supported = lookup_chunks(map, |keys: &[K], _: &[V]| count += keys.len())?;
    Ok(supported.then_some(count))
}

/// Reads the whole map with `BPF_MAP_LOOKUP_BATCH`, handing each chunk to
/// `each`; false, having read nothing, where the kernel has no batch
/// lookup for the map type.
fn lookup_chunks<K: Pod + bytemuck::Zeroable, V: Pod + bytemuck::Zeroable>(
    map: BorrowedFd<'_>,
    each: impl FnMut(&[K], &[V]),
) -> io::Result<bool> {
    lookup_chunks_by(fd_number(map), |attr| bpf(BPF_MAP_LOOKUP_BATCH, attr), each)
}

/// [`lookup_chunks`], making each `BPF_MAP_LOOKUP_BATCH` call with `call`.
fn lookup_chunks_by<K: Pod + bytemuck::Zeroable, V: Pod + bytemuck::Zeroable>(
    map_fd: u32,
    mut call: impl FnMut(&mut BatchAttr) -> io::Result<()>,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<bool> {
    let mut keys = vec![K::zeroed(); LOOKUP_CHUNK];
    let mut values = vec![V::zeroed(); LOOKUP_CHUNK];
    let mut token = vec![0u8; token_len::<K>()];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk_len(LOOKUP_CHUNK),
            map_fd,
            ..BatchAttr::default()
        };
        let result = call(&mut attr);
        let got = (attr.count as usize).min(LOOKUP_CHUNK);
        match result {
            // A full call always carries entries; none would never end.
            Ok(()) if got == 0 => return Ok(true),
            Ok(()) => each(&keys[..got], &values[..got]),
            // On the last call the kernel says ENOENT, with what it found.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                each(&keys[..got], &values[..got]);
                return Ok(true);
            }
            Err(error) if first && error.raw_os_error() == Some(ENOTSUPP) => return Ok(false),
            Err(error) => return Err(error),
        }
        first = false;
    }
}

/// The kernel's position in a map between batch lookups: a bucket index
/// (u32) for a hash map, the last key read for the maps of the generic
/// batch calls (an LPM trie). Its bytes are the kernel's to read and write.
fn token_len<K>() -> usize {
    size_of::<K>().max(size_of::<u32>())
}

/// Deletes every key in `keys`; a missing key fails with ENOENT.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let call = |attr: &mut BatchAttr| bpf(BPF_MAP_DELETE_BATCH, attr);
    batched::<K, K>(call, fd_number(map), keys, None, |index| {
        let mut attr = ElemAttr {
            map_fd: fd_number(map),
            key: std::ptr::from_ref(&keys[index]) as u64,
            ..ElemAttr::default()
        };
        bpf(BPF_MAP_DELETE_ELEM, &mut attr)
    })
}

/// Writes `keys[i] -> values[i]` for every i, failing with EEXIST on the
/// first key already present. One syscall per entry: the kernel's batch
/// update takes no `BPF_NOEXIST`.
pub fn insert_new<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    same_length(keys, values)?;
    one_by_one(keys.len(), |index| {
        update_elem(map, &keys[index], &values[index], BPF_NOEXIST)
    })
}

/// Runs a batch command (each call made with `call`) over `keys` (and
/// `values`), as many entries per call as the count field takes; where the
/// kernel has no batch call for the map type, `one` does each entry
/// instead.
fn batched<K: Pod, V: Pod>(
    mut call: impl FnMut(&mut BatchAttr) -> io::Result<()>,
    map_fd: u32,
    keys: &[K],
    values: Option<&[V]>,
    one: impl FnMut(usize) -> io::Result<()>,
) -> Result<(), BatchError> {
    let mut done = 0;
    while done < keys.len() {
        let chunk = chunk_len(keys.len() - done);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values.map_or(0, |values| values[done..].as_ptr() as u64),
            count: chunk,
            map_fd,
            ..BatchAttr::default()
        };
        match call(&mut attr) {
            Ok(()) => done += chunk as usize,
            Err(error) if done == 0 && error.raw_os_error() == Some(ENOTSUPP) => {
                return one_by_one(keys.len(), one);
            }
            Err(error) => {
                return Err(BatchError {
                    done: done + processed(&attr, chunk),
                    error,
                });
            }
        }
    }
    Ok(())
}

fn same_length<K, V>(keys: &[K], values: &[V]) -> Result<(), BatchError> {
    if keys.len() == values.len() {
        Ok(())
    } else {
        Err(BatchError {
            done: 0,
            error: io::Error::new(io::ErrorKind::InvalidInput, "one value per key"),
        })
    }
}

fn update_elem<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    key: &K,
    value: &V,
    flags: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_number(map),
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        flags,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// How many entries of a failed batch call the kernel processed. It writes
/// the count back only once it has started; an early refusal leaves the
/// request's own count, which cannot be a failure's index.
fn processed(attr: &BatchAttr, requested: u32) -> usize {
    if attr.count < requested {
        attr.count as usize
    } else {
        0
    }
}

fn one_by_one(
    count: usize,
    mut each: impl FnMut(usize) -> io::Result<()>,
) -> Result<(), BatchError> {
    for index in 0..count {
        each(index).map_err(|error| BatchError { done: index, error })?;
    }
    Ok(())
}

/// Entries per syscall: the count field is 32 bits.
fn chunk_len(left: usize) -> u32 {
    u32::try_from(left).unwrap_or(u32::MAX)
}

fn fd_number(fd: BorrowedFd<'_>) -> u32 {
    // A live descriptor is never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or_default()
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a `union bpf_attr` member laid out as the kernel
    // expects, its pointers point into slices that outlive the call, and
    // the size passed is the struct's own.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr),
            size_of::<T>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
