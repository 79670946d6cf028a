//! Files other programs read while we write them (a container runtime reads
//! the conflist at any moment): written whole or not at all, and never
//! through something planted beside them. The agent runs as root and its
//! directories may not all be its own, so:
//!
//! - a directory that others may write to is refused, unless it is sticky
//!   (like `/tmp`), where no one can remove or rename our files;
//! - the temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` under
//!   a name no one can guess, so a symlink or FIFO planted there makes the
//!   create fail instead of being followed or blocked on;
//! - files are read only when they are regular files, opened without
//!   blocking (a FIFO would otherwise hold the reader forever), and not
//!   through a symlink, except the operator's configuration, which a
//!   `ConfigMap` volume always presents as one.
use std::{
    fs,
    hash::{BuildHasher as _, Hasher as _},
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Names tried for a temporary file before giving up.
const TEMPORARY_ATTEMPTS: usize = 8;

/// Writes `bytes` to a new temporary file beside `path`, then renames it
/// over `path`, creating the directory if needed. A reader sees the old
/// file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    check_dir(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    for _ in 0..TEMPORARY_ATTEMPTS {
        let mut temporary = std::ffi::OsString::from(".");
        temporary.push(name);
        temporary.push(format!(".{}.{:016x}.tmp", std::process::id(), random()));
        let temporary = dir.join(temporary);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temporary);
        let mut file = match file {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        };
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temporary, path));
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        return written;
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} holds files under every temporary name tried",
            dir.display()
        ),
    ))
}

/// Checks ahead that [`write_atomically`] may write `path`: its directory,
/// if it exists already, is one no one else can plant files in.
pub fn check_dir_of(path: &Path) -> io::Result<()> {
    match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) if dir.exists() => check_dir(dir),
        _ => Ok(()),
    }
}

/// Refuses a directory that someone else could plant files in or swap
/// files out of: writable by group or others without the sticky bit.
fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by others (mode {:o}) and not sticky: anyone could swap \
                 what is written there; make it writable by its owner only",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// A number no one else can guess ahead.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The contents of `path` if it is a regular file of at most `limit`
/// bytes; `None` if there is nothing there. Never blocks on a FIFO or
/// device, and never follows a symlink at `path` itself.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    read_limited(path, limit, libc::O_NOFOLLOW)
}

/// Like [`read_regular`], but through symlinks: for configuration the
/// operator gives (`--net-config-path`), which Kubernetes mounts from a
/// `ConfigMap` as a symlink (`net-conf.json -> ..data/net-conf.json`,
/// `..data -> ..<timestamp>/`). What it ends at must still be a regular
/// file of at most `limit` bytes, and a FIFO is never blocked on.
pub fn read_config(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    read_limited(path, limit, 0)
}

fn read_limited(path: &Path, limit: u64, flags: libc::c_int) -> io::Result<Option<Vec<u8>>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {} bytes, more than the {limit} expected",
                path.display(),
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Whether `path` already holds exactly `bytes` (no rewrite needed).
#[must_use]
pub fn holds(path: &Path, bytes: &[u8]) -> bool {
    read_regular(path, bytes.len() as u64).is_ok_and(|current| current.as_deref() == Some(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    /// A FIFO at `path`, where a regular file belongs.
    fn make_fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pod-net-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn a_file_is_replaced_whole_and_nothing_is_left_beside_it() {
        let dir = scratch("whole");
        let path = dir.join("sub/subnet.env");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(holds(&path, b"two"));
        assert!(!holds(&path, b"one"));
        let names: Vec<_> = fs::read_dir(dir.join("sub")).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_or_fifo_is_never_written_through_or_blocked_on() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let path = dir.join("conflist");
        // A symlink where the file goes is replaced, not followed.
        symlink(&victim, &path).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        // A FIFO where the file goes is neither read nor opened to write.
        fs::remove_file(&path).unwrap();
        make_fifo(&path);
        assert!(!holds(&path, b"new"));
        assert!(read_regular(&path, 100).is_err());
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_config_map_file_is_read_through_its_symlinks_and_a_fifo_is_still_refused() {
        // The kubelet's layout for a ConfigMap volume.
        let dir = scratch("configmap");
        let data = dir.join("..2026_12_06_07_30_00.000000001");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("net-conf.json"), b"{}").unwrap();
        symlink(&data, dir.join("..data")).unwrap();
        let path = dir.join("net-conf.json");
        symlink("..data/net-conf.json", &path).unwrap();
        assert_eq!(
            read_config(&path, 100).unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert!(read_regular(&path, 100).is_err());
        assert!(read_config(&path, 1).is_err(), "the limit still holds");
        assert_eq!(read_config(&dir.join("missing"), 100).unwrap(), None);
        // A symlink to a FIFO is neither blocked on nor read.
        let fifo = dir.join("fifo");
        make_fifo(&fifo);
        let to_fifo = dir.join("to-fifo");
        symlink(&fifo, &to_fifo).unwrap();
        assert!(read_config(&to_fifo, 100).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        let dir = scratch("open");
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = write_atomically(&open.join("subnet.env"), b"x").unwrap_err();
        assert!(
            err.to_string()
                .contains("is writable by others (mode 777) and not sticky"),
            "{err}"
        );
        assert!(!open.join("subnet.env").exists());
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        write_atomically(&open.join("subnet.env"), b"x").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
