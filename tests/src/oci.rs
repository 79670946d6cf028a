//! OCI image archives written without docker, buildah or a registry: one
//! layer, for one platform, as an OCI image layout in a single tar
//! (`oci-layout`, `index.json`, `blobs/sha256/…`), which
//! `ctr -n k8s.io images import` and `podman load` take.
//!
//! The archive is deterministic: entries sorted, owned by 0:0, mtime 0, so
//! the same files give the same digests. `cargo xtask image` builds the
//! pod-net image with it; the kubelet rig builds its pause and busybox
//! images with it.
use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::frames::hex;

/// The OCI architecture of this machine (`amd64`, `arm64`).
pub fn host_architecture() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no OCI architecture name for {other} yet (x86_64 and aarch64 only)"),
    }
}

/// Reads a binary for the image, refusing one that needs a dynamic loader
/// (a `PT_INTERP` program header): the image has no libc.
pub fn read_static(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        !needs_interpreter(&bytes)
            .with_context(|| format!("{} is not a 64-bit ELF", path.display()))?,
        "{} is dynamically linked (it has an ELF interpreter); the image has no libc",
        path.display()
    );
    Ok(bytes)
}

/// Whether a little-endian ELF64 binary has a `PT_INTERP` program header.
pub fn needs_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(
        elf.get(..6) == Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]),
        "not a little-endian ELF64 file"
    );
    let u16_at = |at: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(at..at + 2).context("truncated")?.try_into()?,
        ))
    };
    let phoff = usize::try_from(u64::from_le_bytes(
        elf.get(0x20..0x28).context("truncated")?.try_into()?,
    ))?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for index in 0..phnum {
        let at = phoff + index * phentsize;
        let kind = u32::from_le_bytes(elf.get(at..at + 4).context("truncated")?.try_into()?);
        if kind == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One entry of the layer.
pub struct Entry {
    path: String,
    kind: EntryKind,
}

enum EntryKind {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

impl Entry {
    #[must_use]
    pub fn dir(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            kind: EntryKind::Dir { mode },
        }
    }

    #[must_use]
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            kind: EntryKind::File { mode, data },
        }
    }

    #[must_use]
    pub fn symlink(path: &str, target: &str) -> Self {
        Self {
            path: path.to_owned(),
            kind: EntryKind::Symlink {
                target: target.to_owned(),
            },
        }
    }
}

/// A single-layer image for one platform.
pub struct Image {
    /// The full reference (`docker.io/library/pod-net:dev`), as the
    /// runtimes name the image they import.
    pub reference: String,
    /// The OCI architecture (`amd64`).
    pub architecture: &'static str,
    pub entries: Vec<Entry>,
    /// The config's `Env` (`PATH=...`).
    pub env: Vec<String>,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
    /// The config's `Labels`.
    pub labels: Value,
    /// The one history entry's `created_by`.
    pub created_by: String,
}

/// What [`Image::archive`] made.
pub struct Archive {
    pub bytes: Vec<u8>,
    pub layer_size: usize,
    pub manifest_digest: String,
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

impl Image {
    /// The OCI image layout of this image, as one tar.
    pub fn archive(&self) -> Result<Archive> {
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": {
                "Env": self.env,
                "Cmd": self.cmd,
                "WorkingDir": "/",
                "Labels": self.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": self.created_by}],
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = digest(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": {"architecture": self.architecture, "os": "linux"},
                "annotations": {
                    // containerd's import names the image after this one;
                    "io.containerd.image.name": self.reference,
                    // podman's load after this one.
                    "org.opencontainers.image.ref.name": self.reference,
                },
            }],
        }))?;

        let mut outer = Vec::new();
        {
            let mut tar = TarWriter::new(&mut outer);
            tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            tar.file("index.json", 0o644, &index)?;
            tar.dir("blobs/", 0o755)?;
            tar.dir("blobs/sha256/", 0o755)?;
            let mut blobs = [&layer, &config, &manifest];
            blobs.sort_by_key(|blob| digest(blob));
            for blob in blobs {
                let name = format!("blobs/sha256/{}", hex(&Sha256::digest(blob)));
                tar.file(&name, 0o644, blob)?;
            }
            tar.finish()?;
        }
        Ok(Archive {
            bytes: outer,
            layer_size: layer.len(),
            manifest_digest,
        })
    }

    /// The root filesystem as an uncompressed tar, entries in path order.
    pub fn layer(&self) -> Result<Vec<u8>> {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut layer = Vec::new();
        {
            let mut tar = TarWriter::new(&mut layer);
            for entry in entries {
                match &entry.kind {
                    EntryKind::Dir { mode } => tar.dir(&entry.path, *mode)?,
                    EntryKind::File { mode, data } => tar.file(&entry.path, *mode, data)?,
                    EntryKind::Symlink { target } => tar.symlink(&entry.path, target)?,
                }
            }
            tar.finish()?;
        }
        Ok(layer)
    }
}

/// `sha256:<hex>`, as OCI descriptors name blobs.
#[must_use]
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// A tar writer whose entries carry no host facts: 0:0, mtime 0, ustar.
struct TarWriter<'a> {
    builder: tar::Builder<&'a mut Vec<u8>>,
}

impl<'a> TarWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            builder: tar::Builder::new(out),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size);
        header
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder
            .append_data(&mut header, path, data)
            .with_context(|| format!("adding {path} to a tar"))
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .with_context(|| format!("adding {path} to a tar"))
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut header, path, target)
            .with_context(|| format!("adding {path} to a tar"))
    }

    fn finish(&mut self) -> Result<()> {
        self.builder.finish().context("finishing a tar")
    }
}

/// Writes `image`'s archive to `path` (through a staging file renamed over
/// it, so a reader never sees half an archive); what was written.
pub fn write(image: &Image, path: &Path) -> Result<Archive> {
    let archive = image.archive()?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let staging = path.with_extension("tar.partial");
    fs::write(&staging, &archive.bytes)
        .with_context(|| format!("writing {}", staging.display()))?;
    fs::rename(&staging, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Image {
        Image {
            reference: "docker.io/library/t:1".into(),
            architecture: "amd64",
            entries: vec![
                Entry::file("usr/local/bin/x", 0o755, b"x".to_vec()),
                Entry::dir("usr/", 0o755),
                Entry::symlink("bin/sh", "busybox"),
            ],
            env: vec!["PATH=/bin".into()],
            cmd: vec!["/bin/sh".into()],
            labels: json!({}),
            created_by: "test".into(),
        }
    }

    #[test]
    fn the_archive_is_deterministic_and_names_its_blobs_by_digest() {
        let first = tiny().archive().unwrap();
        let second = tiny().archive().unwrap();
        assert_eq!(first.bytes, second.bytes);

        let mut archive = tar::Archive::new(&first.bytes[..]);
        let mut names = Vec::new();
        let mut index = Value::Null;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            assert_eq!(entry.header().mtime().unwrap(), 0);
            assert_eq!(entry.header().uid().unwrap(), 0);
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if let Some(hex_name) = name.strip_prefix("blobs/sha256/")
                && !hex_name.is_empty()
            {
                assert_eq!(hex(&Sha256::digest(&data)), hex_name);
            }
            if name == "index.json" {
                index = serde_json::from_slice(&data).unwrap();
            }
            names.push(name);
        }
        assert_eq!(
            &names[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        assert_eq!(names.len(), 7, "{names:?}");
        let manifest = &index["manifests"][0];
        assert_eq!(manifest["digest"], first.manifest_digest.as_str());
        assert_eq!(
            manifest["annotations"]["io.containerd.image.name"],
            "docker.io/library/t:1"
        );
    }

    #[test]
    fn the_layer_is_sorted_and_owned_by_root() {
        let layer = tiny().layer().unwrap();
        let mut archive = tar::Archive::new(&layer[..]);
        let listed: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    entry.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("bin/sh".to_owned(), 0o777),
                ("usr/".to_owned(), 0o755),
                ("usr/local/bin/x".to_owned(), 0o755)
            ]
        );
    }

    #[test]
    fn a_dynamic_binary_is_refused() {
        // This test binary is linked dynamically (no +crt-static).
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(needs_interpreter(&own).unwrap());
        assert!(needs_interpreter(b"#!/bin/sh\n").is_err());
    }
}
