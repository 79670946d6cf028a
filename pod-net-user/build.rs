//! Builds the eBPF crate (the pinned nightly, bpf target, bpf-linker) and
//! leaves the object in `OUT_DIR`, where `ebpf_object()` embeds it.
use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("pod-net-user has no parent directory"))?
        .join("pod-net-ebpf");
    let toolchain = ebpf_toolchain(&ebpf_dir.join("ebpf-toolchain.txt"))?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The nested cargo's progress lines would each become a build warning.
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "pod-net-ebpf",
            root_dir: ebpf_dir,
            ..Package::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}

/// The pinned channel of `ebpf-toolchain.txt` when rustup has it, else
/// plain `nightly`: `cargo xtask setup` installs the pinned one unless
/// `nightly` is that same compiler.
fn ebpf_toolchain(pin_file: &Path) -> anyhow::Result<String> {
    println!("cargo:rerun-if-changed={}", pin_file.display());
    let text = std::fs::read_to_string(pin_file)
        .with_context(|| format!("reading {}", pin_file.display()))?;
    let channel = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "channel")
        .map(|(_, value)| value.trim().to_owned())
        .with_context(|| format!("{} names no channel", pin_file.display()))?;
    let installed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line.starts_with(&channel))
        });
    Ok(if installed {
        channel
    } else {
        "nightly".to_owned()
    })
}
