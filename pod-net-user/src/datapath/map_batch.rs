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
/// Fail instead of creating an entry.
const BPF_EXIST: u64 = 2;

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
    update_each(map, keys, values, BPF_NOEXIST)
}

/// Overwrites `keys[i] -> values[i]` for every i, failing with ENOENT on
/// the first key not present; each entry is replaced whole in one step
/// (there is no moment without it).
pub fn overwrite<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    update_each(map, keys, values, BPF_EXIST)
}

/// `BPF_MAP_UPDATE_ELEM` with `flags` for each entry in turn.
fn update_each<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
    flags: u64,
) -> Result<(), BatchError> {
    same_length(keys, values)?;
    one_by_one(keys.len(), |index| {
        update_elem(map, &keys[index], &values[index], flags)
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

/// What needs a map (the real calls, the kernel's own batch semantics per
/// map type, `insert_new`'s `BPF_NOEXIST`) is the privileged tests'; these
/// drive the loops with a fake kernel.
#[cfg(test)]
mod tests {
    use pod_net_common::{EndpointKey, RemoteAddr};

    use super::*;
    use crate::datapath::TrieKey;

    const FD: u32 = 42;

    fn os_error(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    /// One `BPF_MAP_LOOKUP_BATCH` call as the fake kernel saw it.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        in_batch: u64,
        out_batch: u64,
        count: u32,
        map_fd: u32,
    }

    /// A kernel's batch lookup over `entries` (u32 keys, u64 values): it
    /// fills up to `count` entries from the position in `in_batch`, writes
    /// the next position to `out_batch` and says ENOENT once the entries
    /// are exhausted, in the same call (`late` false) or in the next one,
    /// empty-handed (`late` true).
    struct FakeLookup {
        entries: Vec<(u32, u64)>,
        late: bool,
        seen: Vec<Seen>,
    }

    impl FakeLookup {
        fn new(len: u32, late: bool) -> Self {
            Self {
                entries: (0..len).map(|key| (key, u64::from(key) * 10)).collect(),
                late,
                seen: Vec::new(),
            }
        }

        fn call(&mut self, attr: &mut BatchAttr) -> io::Result<()> {
            self.seen.push(Seen {
                in_batch: attr.in_batch,
                out_batch: attr.out_batch,
                count: attr.count,
                map_fd: attr.map_fd,
            });
            let start = if attr.in_batch == 0 {
                0
            } else {
                // SAFETY: a non-zero `in_batch` points at the caller's
                // token, at least four bytes (token_len).
                unsafe { (attr.in_batch as *const u32).read_unaligned() as usize }
            };
            let take = (self.entries.len() - start).min(attr.count as usize);
            for (index, (key, value)) in self.entries[start..start + take].iter().enumerate() {
                // SAFETY: `keys` and `values` point at `count` (at least
                // `take`) entries of the caller's u32 and u64 buffers.
                unsafe {
                    (attr.keys as *mut u32).add(index).write(*key);
                    (attr.values as *mut u64).add(index).write(*value);
                }
            }
            attr.count = u32::try_from(take).unwrap();
            if take > 0 {
                let next = u32::try_from(start + take).unwrap();
                // SAFETY: `out_batch` points at the caller's token.
                unsafe { (attr.out_batch as *mut u32).write_unaligned(next) };
            }
            let exhausted = start + take == self.entries.len();
            if exhausted && (!self.late || take == 0) {
                Err(os_error(libc::ENOENT))
            } else {
                Ok(())
            }
        }
    }

    fn read_all(fake: &mut FakeLookup) -> (io::Result<bool>, Vec<(u32, u64)>, Vec<usize>) {
        let mut read = Vec::new();
        let mut chunks = Vec::new();
        let supported = lookup_chunks_by(
            FD,
            |attr| fake.call(attr),
            |keys: &[u32], values: &[u64]| {
                chunks.push(keys.len());
                read.extend(keys.iter().copied().zip(values.iter().copied()));
            },
        );
        (supported, read, chunks)
    }

    #[test]
    fn tokens_hold_a_bucket_index_or_a_key() {
        // A hash map's position is a u32 bucket index; the generic calls
        // (an LPM trie) keep the last key read.
        assert_eq!(token_len::<u8>(), 4);
        assert_eq!(token_len::<[u8; 4]>(), 4);
        assert_eq!(token_len::<u32>(), 4);
        assert_eq!(token_len::<u64>(), 8);
        assert_eq!(token_len::<RemoteAddr>(), 16);
        assert_eq!(token_len::<EndpointKey>(), size_of::<EndpointKey>());
        assert_eq!(token_len::<TrieKey>(), 20);
        assert_eq!(
            token_len::<aya::maps::lpm_trie::Key<RemoteAddr>>(),
            size_of::<TrieKey>()
        );
    }

    #[test]
    fn lookups_read_every_entry_once_in_chunks() {
        let chunk = u32::try_from(LOOKUP_CHUNK).unwrap();
        for late in [false, true] {
            for len in [0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk + 5, 3 * chunk] {
                let mut fake = FakeLookup::new(len, late);
                let (supported, read, chunks) = read_all(&mut fake);
                let name = format!("{len} entries, ENOENT late: {late}");
                assert!(supported.unwrap(), "{name}");
                assert_eq!(read, fake.entries, "{name}");
                // Full chunks, then what is left (maybe nothing).
                assert!(chunks.iter().all(|&got| got <= LOOKUP_CHUNK), "{name}");
                let calls = fake.seen.len();
                // The last chunk may be empty: the ENOENT call that comes
                // after a map ends with a whole chunk.
                let chunks_with_entries = len.div_ceil(chunk) as usize;
                let wanted_calls = if len == 0 {
                    1
                } else if late {
                    chunks_with_entries + 1
                } else {
                    chunks_with_entries
                };
                assert_eq!(calls, wanted_calls, "{name}: {chunks:?}");
                // Each call asks for a whole chunk, of the same map; the
                // first from the start, the others from where the last
                // one left off (the token it wrote).
                for (index, seen) in fake.seen.iter().enumerate() {
                    assert_eq!(seen.count, chunk, "{name}");
                    assert_eq!(seen.map_fd, FD, "{name}");
                    assert_ne!(seen.out_batch, 0, "{name}");
                    if index == 0 {
                        assert_eq!(seen.in_batch, 0, "{name}");
                    } else {
                        assert_eq!(seen.in_batch, fake.seen[0].out_batch, "{name}");
                    }
                }
            }
        }
    }

    #[test]
    fn lookup_failures() {
        // No batch lookup for the map type: nothing read, the caller walks.
        let mut calls = 0;
        let mut chunks = 0;
        let supported = lookup_chunks_by::<u32, u64>(
            FD,
            |_| {
                calls += 1;
                Err(os_error(ENOTSUPP))
            },
            |_, _| chunks += 1,
        );
        assert!(!supported.unwrap());
        assert_eq!((calls, chunks), (1, 0));

        // ENOTSUPP after a chunk was read is a failure, not a fallback.
        let mut calls = 0;
        let result = lookup_chunks_by::<u32, u64>(
            FD,
            |attr| {
                calls += 1;
                if calls == 1 {
                    attr.count = 3;
                    Ok(())
                } else {
                    Err(os_error(ENOTSUPP))
                }
            },
            |_, _| {},
        );
        assert_eq!(result.unwrap_err().raw_os_error(), Some(ENOTSUPP));

        // Any other error, first or later, is the caller's.
        for code in [libc::EPERM, libc::EINVAL, libc::ENOSPC, libc::EFAULT] {
            let result = lookup_chunks_by::<u32, u64>(FD, |_| Err(os_error(code)), |_, _| {});
            assert_eq!(result.unwrap_err().raw_os_error(), Some(code));
        }

        // A call that succeeds with nothing ends the walk.
        let mut calls = 0;
        let supported = lookup_chunks_by::<u32, u64>(
            FD,
            |attr| {
                calls += 1;
                attr.count = 0;
                Ok(())
            },
            |keys, _| assert!(keys.is_empty()),
        );
        assert!(supported.unwrap());
        assert_eq!(calls, 1);

        // A count past the buffers is never read past them.
        let mut sizes = Vec::new();
        let supported = lookup_chunks_by::<u32, u64>(
            FD,
            |attr| {
                attr.count = u32::MAX;
                Err(os_error(libc::ENOENT))
            },
            |keys, values| sizes.push((keys.len(), values.len())),
        );
        assert!(supported.unwrap());
        assert_eq!(sizes, [(LOOKUP_CHUNK, LOOKUP_CHUNK)]);
    }

    /// How a fake batch call ends: the count it writes back (`None`: the
    /// kernel refused before writing it) and its result.
    struct Reply {
        count: Option<u32>,
        error: Option<i32>,
    }

    /// One batch call's `keys`, `values`, `count` and `map_fd`.
    type Call = (u64, u64, u32, u32);

    /// Runs [`batched`] over a fake call that ends with `reply`, and a
    /// fake `one` failing at `one_fails_at`: the result, the calls, and
    /// the indices `one` was given.
    fn run_batched(
        keys: &[u32],
        values: Option<&[u64]>,
        reply: &Reply,
        one_fails_at: Option<usize>,
    ) -> (Result<(), BatchError>, Vec<Call>, Vec<usize>) {
        let mut calls = Vec::new();
        let mut ones = Vec::new();
        let result = batched(
            |attr| {
                calls.push((attr.keys, attr.values, attr.count, attr.map_fd));
                if let Some(count) = reply.count {
                    attr.count = count;
                }
                reply.error.map_or(Ok(()), |code| Err(os_error(code)))
            },
            FD,
            keys,
            values,
            |index| {
                ones.push(index);
                if one_fails_at == Some(index) {
                    Err(os_error(libc::ENOENT))
                } else {
                    Ok(())
                }
            },
        );
        (result, calls, ones)
    }

    #[test]
    fn batches_account_for_what_was_done() {
        let keys = [1u32, 2, 3, 4, 5];
        let values = [10u64, 20, 30, 40, 50];
        let key_ptr = keys.as_ptr() as u64;
        let value_ptr = values.as_ptr() as u64;

        // All in one call, keys (and values when given) from the start.
        let ok = Reply {
            count: Some(5),
            error: None,
        };
        let (result, calls, ones) = run_batched(&keys, None, &ok, None);
        assert!(result.is_ok());
        assert_eq!(calls, [(key_ptr, 0, 5, FD)]);
        assert!(ones.is_empty());
        let (result, calls, _) = run_batched(&keys, Some(&values), &ok, None);
        assert!(result.is_ok());
        assert_eq!(calls, [(key_ptr, value_ptr, 5, FD)]);

        // Nothing to do: no call at all.
        let (result, calls, ones) = run_batched(&[], None, &ok, None);
        assert!(result.is_ok() && calls.is_empty() && ones.is_empty());

        // A failure: done is what the kernel says it processed, when it
        // says so; an early refusal (the count left as asked) did nothing.
        for (count, error, done) in [
            (Some(2), libc::ENOENT, 2),
            (Some(0), libc::ENOENT, 0),
            (Some(4), libc::EFAULT, 4),
            (None, libc::EINVAL, 0),
            (Some(5), libc::EINVAL, 0),
        ] {
            let reply = Reply {
                count,
                error: Some(error),
            };
            let (result, calls, ones) = run_batched(&keys, None, &reply, None);
            let failure = result.unwrap_err();
            assert_eq!(
                (failure.done, failure.error.raw_os_error()),
                (done, Some(error)),
                "{count:?}"
            );
            assert_eq!(calls.len(), 1);
            assert!(ones.is_empty());
        }

        // No batch call for the map type: one entry at a time, stopping
        // at the first failure, which names its index.
        let unsupported = Reply {
            count: None,
            error: Some(ENOTSUPP),
        };
        let (result, calls, ones) = run_batched(&keys, None, &unsupported, None);
        assert!(result.is_ok());
        assert_eq!(calls.len(), 1);
        assert_eq!(ones, [0, 1, 2, 3, 4]);
        let (result, _, ones) = run_batched(&keys, None, &unsupported, Some(2));
        let failure = result.unwrap_err();
        assert_eq!(
            (failure.done, failure.error.raw_os_error()),
            (2, Some(libc::ENOENT))
        );
        assert_eq!(ones, [0, 1, 2]);
    }

    #[test]
    fn counts_and_chunks() {
        for (requested, written, processed_entries) in
            [(5, 5, 0), (5, 0, 0), (5, 3, 3), (5, 4, 4), (1, 0, 0)]
        {
            let attr = BatchAttr {
                count: written,
                ..BatchAttr::default()
            };
            assert_eq!(
                processed(&attr, requested),
                processed_entries,
                "{requested} {written}"
            );
        }
        assert_eq!(chunk_len(0), 0);
        assert_eq!(chunk_len(LOOKUP_CHUNK), 4096);
        assert_eq!(chunk_len(u32::MAX as usize), u32::MAX);
        assert_eq!(chunk_len(u32::MAX as usize + 1), u32::MAX);
        assert_eq!(chunk_len(usize::MAX), u32::MAX);
    }

    #[test]
    fn one_by_one_stops_at_the_first_failure() {
        let mut seen = Vec::new();
        assert!(
            one_by_one(0, |index| {
                seen.push(index);
                Ok(())
            })
            .is_ok()
        );
        assert!(seen.is_empty());
        let failure = one_by_one(4, |index| {
            seen.push(index);
            if index == 1 {
                Err(os_error(libc::EEXIST))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(
            (failure.done, failure.error.raw_os_error()),
            (1, Some(libc::EEXIST))
        );
        assert_eq!(seen, [0, 1]);
    }

    #[test]
    fn one_value_per_key() {
        assert!(same_length(&[1u32, 2], &[10u64, 20]).is_ok());
        assert!(same_length::<u32, u64>(&[], &[]).is_ok());
        let failure = same_length(&[1u32, 2], &[10u64]).unwrap_err();
        assert_eq!(failure.done, 0);
        assert_eq!(failure.error.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(failure.error.to_string(), "one value per key");
        // insert_new refuses them before any call: the descriptor is not
        // even a map's.
        let stdin = std::io::stdin();
        let failure =
            insert_new(std::os::fd::AsFd::as_fd(&stdin), &[1u32], &[10u64, 20]).unwrap_err();
        assert_eq!(
            (failure.done, failure.error.kind()),
            (0, io::ErrorKind::InvalidInput)
        );
    }
}
