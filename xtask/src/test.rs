//! `cargo xtask test`: lints, then every test, privileged ones included.
use anyhow::Result;

use crate::run::{cargo, show};

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
    // The rig tests run the pod-net binary; build it before they look for it.
    println!("test: building the binaries");
    show(&mut cargo(&["build", "--bins"]))?;
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
