//! `cargo xtask image`: pod-net as an OCI image archive, built without
//! docker, buildah or a registry.
//!
//! The image is `FROM scratch` with one layer:
//!
//! | path | what |
//! |---|---|
//! | `/usr/local/bin/pod-net` | the loader CLI and agent, static-pie (glibc, `+crt-static`) |
//! | `/usr/local/bin/pod-net-cni` | the CNI plugin the init container copies to the host, static-pie |
//! | `/bin/busybox` and `/bin/{sh,cp,mv,…}` | Debian's `busybox-static`: the init container's shell |
//! | `/tmp` | mode 1777 |
//!
//! The archive is an OCI image layout in a tar (`oci-layout`, `index.json`,
//! `blobs/sha256/…`: the manifest, the config and the uncompressed layer),
//! which `ctr -n k8s.io images import` and `podman load` take. It is
//! deterministic: entries sorted, owned by 0:0, mtime 0, so the same
//! binaries and revision give the same digests.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::run::{cargo, show, workspace_root};

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image's name (a Kubernetes `image:` of `pod-net:dev` finds it
    /// as `docker.io/library/pod-net:dev` in containerd).
    #[arg(long, default_value = "pod-net:dev")]
    pub tag: String,
    /// Where to write the archive [default: <target dir>/image/<name>_<tag>.oci.tar].
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Debian's `busybox-static` installs its binary here.
const BUSYBOX: &str = "/bin/busybox";
/// The busybox applets the image links (the init container's script, and
/// a shell for `kubectl exec` when debugging).
const APPLETS: &[&str] = &["cat", "cp", "ls", "mkdir", "mv", "rm", "sh"];
/// The image's PATH.
const PATH: &str = "/usr/local/bin:/bin";

pub fn run(args: &ImageArgs) -> Result<()> {
    let started = Instant::now();
    let reference = normalize(&args.tag)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| default_output(&args.tag));
    let (triple, architecture) = target()?;

    println!("image: building static pod-net and pod-net-cni ({triple}, +crt-static, release)");
    show(
        cargo(&["build", "--release", "--bins", "-p", "pod-net-user"])
            .args(["--target", triple])
            // Only the target's artifacts: build scripts and proc macros
            // stay dynamic, and the eBPF build (a bpf target) is unaffected.
            .env(
                format!(
                    "CARGO_TARGET_{}_RUSTFLAGS",
                    triple.to_uppercase().replace('-', "_")
                ),
                "-C target-feature=+crt-static",
            ),
    )?;
    let release = target_dir().join(triple).join("release");
    let pod_net = read_static(&release.join("pod-net"))?;
    let pod_net_cni = read_static(&release.join("pod-net-cni"))?;
    let busybox = read_static(Path::new(BUSYBOX)).context(
        "the init container's shell comes from Debian's busybox-static: run `cargo xtask setup`",
    )?;
    smoke_test(&release.join("pod-net"))?;

    let mut entries = vec![
        Entry::dir("bin/", 0o755),
        Entry::file("bin/busybox", 0o755, busybox),
        Entry::dir("tmp/", 0o1777),
        Entry::dir("usr/", 0o755),
        Entry::dir("usr/local/", 0o755),
        Entry::dir("usr/local/bin/", 0o755),
        Entry::file("usr/local/bin/pod-net", 0o755, pod_net),
        Entry::file("usr/local/bin/pod-net-cni", 0o755, pod_net_cni),
    ];
    entries.extend(
        APPLETS
            .iter()
            .map(|applet| Entry::symlink(&format!("bin/{applet}"), "busybox")),
    );
    let image = Image {
        reference,
        architecture,
        entries,
        labels: labels(),
    };
    let archive = image.archive()?;
    if let Some(dir) = output.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let staging = output.with_extension("tar.partial");
    fs::write(&staging, &archive.bytes)
        .with_context(|| format!("writing {}", staging.display()))?;
    fs::rename(&staging, &output).with_context(|| format!("writing {}", output.display()))?;

    println!(
        "image: wrote {} ({:.1} MiB; layer {:.1} MiB) in {:.1} s",
        output.display(),
        mib(archive.bytes.len()),
        mib(archive.layer_size),
        started.elapsed().as_secs_f64()
    );
    println!(
        "image: {} manifest {}",
        image.reference, archive.manifest_digest
    );
    println!("load it on a node with one of:");
    println!("  ctr -n k8s.io images import {}", output.display());
    println!("  podman load -i {}", output.display());
    Ok(())
}

/// The Rust target to build for and its OCI architecture name.
fn target() -> Result<(&'static str, &'static str)> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(("x86_64-unknown-linux-gnu", "amd64")),
        "aarch64" => Ok(("aarch64-unknown-linux-gnu", "arm64")),
        other => bail!("no image build for {other} yet (x86_64 and aarch64 only)"),
    }
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the
/// workspace root, as cargo takes it here) or `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace_root().join("target"),
        |dir| workspace_root().join(dir),
    )
}

fn default_output(tag: &str) -> PathBuf {
    let file: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    target_dir().join("image").join(format!("{file}.oci.tar"))
}

/// A reference as containerd (and so the kubelet) names it: `pod-net:dev`
/// is `docker.io/library/pod-net:dev`, a missing tag is `latest`.
pub fn normalize(tag: &str) -> Result<String> {
    ensure!(
        !tag.is_empty()
            && !tag.contains('@')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c)),
        "{tag:?} is not an image name (like pod-net:dev or registry.example:5000/pod-net:v1)"
    );
    let (first, _) = tag.split_once('/').unwrap_or(("", tag));
    let with_host = if first.contains('.') || first.contains(':') || first == "localhost" {
        tag.to_owned()
    } else if first.is_empty() {
        format!("docker.io/library/{tag}")
    } else {
        format!("docker.io/{tag}")
    };
    let last = with_host.rsplit('/').next().unwrap_or_default();
    Ok(if last.contains(':') {
        with_host
    } else {
        format!("{with_host}:latest")
    })
}

/// Reads a binary for the image, refusing one that needs a dynamic loader
/// (a `PT_INTERP` program header): the image has no libc.
fn read_static(path: &Path) -> Result<Vec<u8>> {
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
fn needs_interpreter(elf: &[u8]) -> Result<bool> {
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

/// The static binary runs with nothing around it: no environment, no libc.
fn smoke_test(pod_net: &Path) -> Result<()> {
    let output = Command::new(pod_net)
        .arg("--version")
        .env_clear()
        .output()
        .with_context(|| format!("running {} --version", pod_net.display()))?;
    ensure!(
        output.status.success(),
        "{} --version failed: {}",
        pod_net.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The image's labels: what it is and which commit it was built from.
fn labels() -> Value {
    let mut labels = json!({
        "org.opencontainers.image.title": "pod-net",
        "org.opencontainers.image.description": "eBPF fast path for Kubernetes-style pod networking",
        "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
    });
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    if let Some(revision) = revision {
        labels["org.opencontainers.image.revision"] = Value::String(revision);
    }
    labels
}

fn mib(bytes: usize) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a size for people to read")]
    let bytes = bytes as f64;
    bytes / (1024.0 * 1024.0)
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
    fn dir(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            kind: EntryKind::Dir { mode },
        }
    }

    fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            kind: EntryKind::File { mode, data },
        }
    }

    fn symlink(path: &str, target: &str) -> Self {
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
    /// The full reference (`docker.io/library/pod-net:dev`).
    reference: String,
    /// The OCI architecture (`amd64`).
    architecture: &'static str,
    entries: Vec<Entry>,
    labels: Value,
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
    fn archive(&self) -> Result<Archive> {
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": {
                "Env": [format!("PATH={PATH}")],
                "Cmd": ["/usr/local/bin/pod-net", "--help"],
                "WorkingDir": "/",
                "Labels": self.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "cargo xtask image"}],
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
    fn layer(&self) -> Result<Vec<u8>> {
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
fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_containerd_does() {
        assert_eq!(
            normalize("pod-net:dev").unwrap(),
            "docker.io/library/pod-net:dev"
        );
        assert_eq!(
            normalize("pod-net").unwrap(),
            "docker.io/library/pod-net:latest"
        );
        assert_eq!(
            normalize("me/pod-net:v1").unwrap(),
            "docker.io/me/pod-net:v1"
        );
        assert_eq!(
            normalize("localhost:5000/pod-net").unwrap(),
            "localhost:5000/pod-net:latest"
        );
        assert_eq!(
            normalize("registry.example/net/pod-net:v2").unwrap(),
            "registry.example/net/pod-net:v2"
        );
        assert!(normalize("").is_err());
        assert!(normalize("pod net").is_err());
        assert!(normalize("pod-net@sha256:00").is_err());
    }

    fn tiny() -> Image {
        Image {
            reference: "docker.io/library/t:1".into(),
            architecture: "amd64",
            entries: vec![
                Entry::file("usr/local/bin/x", 0o755, b"x".to_vec()),
                Entry::dir("usr/", 0o755),
                Entry::symlink("bin/sh", "busybox"),
            ],
            labels: json!({}),
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
