//! `cargo xtask install`: release binaries into place.
use std::{fs, path::Path};

use anyhow::{Context as _, Result};

use crate::run::{cargo, show, workspace_root};

pub fn run(bin_dir: &str, cni_bin_dir: &str) -> Result<()> {
    show(&mut cargo(&["build", "--release", "--bins"]))?;
    let release = workspace_root().join("target/release");
    copy(&release.join("pod-net"), Path::new(bin_dir))?;
    if release.join("pod-net-cni").exists() {
        copy(&release.join("pod-net-cni"), Path::new(cni_bin_dir))?;
    }
    Ok(())
}

fn copy(binary: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = binary.file_name().context("binary without a name")?;
    let target = dir.join(name);
    // Copy next to the target, then rename: a running binary is never torn.
    let staging = dir.join(format!(".{}.new", name.to_string_lossy()));
    fs::copy(binary, &staging)
        .with_context(|| format!("copying {} to {}", binary.display(), staging.display()))?;
    fs::rename(&staging, &target).with_context(|| format!("installing {}", target.display()))?;
    println!("install: {}", target.display());
    Ok(())
}
