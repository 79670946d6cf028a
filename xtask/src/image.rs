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
//! which `ctr -n k8s.io images import` and `podman load` take, written by
//! `pod_net_tests::oci`. It is deterministic: entries sorted, owned by 0:0,
//! mtime 0, so the same binaries and revision give the same digests.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use pod_net_tests::oci;
use serde_json::{Value, json};

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
    let pod_net = oci::read_static(&release.join("pod-net"))?;
    let pod_net_cni = oci::read_static(&release.join("pod-net-cni"))?;
    let busybox = oci::read_static(Path::new(BUSYBOX)).context(
        "the init container's shell comes from Debian's busybox-static: run `cargo xtask setup`",
    )?;
    smoke_test(&release.join("pod-net"))?;

    let mut entries = vec![
        oci::Entry::dir("bin/", 0o755),
        oci::Entry::file("bin/busybox", 0o755, busybox),
        oci::Entry::dir("tmp/", 0o1777),
        oci::Entry::dir("usr/", 0o755),
        oci::Entry::dir("usr/local/", 0o755),
        oci::Entry::dir("usr/local/bin/", 0o755),
        oci::Entry::file("usr/local/bin/pod-net", 0o755, pod_net),
        oci::Entry::file("usr/local/bin/pod-net-cni", 0o755, pod_net_cni),
    ];
    entries.extend(
        APPLETS
            .iter()
            .map(|applet| oci::Entry::symlink(&format!("bin/{applet}"), "busybox")),
    );
    let image = oci::Image {
        reference,
        architecture,
        entries,
        env: vec![format!("PATH={PATH}")],
        cmd: vec!["/usr/local/bin/pod-net".to_owned(), "--help".to_owned()],
        labels: labels(),
        created_by: "cargo xtask image".to_owned(),
    };
    let archive = oci::write(&image, &output)?;

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
}
