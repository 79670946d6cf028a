//! Files other programs read while we write them (a container runtime
//! reads the conflist at any moment): written whole or not at all.
use std::{fs, io, path::Path};

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`, creating the directory if needed. A reader sees the old file or
/// the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".tmp.{}", std::process::id()));
    let temporary = path.with_file_name(temporary);
    let written = fs::write(&temporary, bytes)
        .and_then(|()| fs::File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Whether `path` already holds exactly `bytes` (no rewrite needed).
#[must_use]
pub fn holds(path: &Path, bytes: &[u8]) -> bool {
    fs::read(path).is_ok_and(|current| current == bytes)
}
