//! `cargo xtask test`: lints, then every test, privileged ones included.
use std::process::Command;

use anyhow::Result;

use crate::{
    run::{cargo, show, workspace_root},
    toolchain::EbpfToolchain,
};

pub fn run(extra: &[String]) -> Result<()> {
    println!("test: cargo fmt --check");
    show(&mut cargo(&["fmt", "--all", "--check"]))?;
    println!("test: cargo clippy");
    show(&mut cargo(&[
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("test: cargo clippy for the eBPF crate (bpf target, nightly)");
    show(&mut ebpf_clippy(&EbpfToolchain::pinned()?.name()))?;
    // The rig tests run the pod-net binary; build it before they look for
    // it, with the crash points the crash-safety tests set off.
    println!("test: building the binaries (with crash points)");
    show(&mut cargo(&[
        "build",
        "--bins",
        "--features",
        "pod-net-user/crashpoints",
    ]))?;
    println!("test: cargo test");
    let mut test = cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "pod-net-ebpf",
        "--no-fail-fast",
    ]);
    if !extra.is_empty() {
        test.arg("--").args(extra);
    }
    show(&mut test)
}

/// Clippy over the kernel programs, built the way aya-build builds them
/// (the pinned nightly, the bpf target, core from source), in a target dir of its own.
fn ebpf_clippy(toolchain: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", toolchain, "cargo", "clippy", "-p", "pod-net-ebpf"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
        .current_dir(workspace_root())
        // The outer cargo's settings are for the host toolchain.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    command
}
