//! Builds the eBPF crate (nightly, bpf target, bpf-linker) and leaves the
//! object in `OUT_DIR`, where `ebpf_object()` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("pod-net-user has no parent directory"))?
        .join("pod-net-ebpf");
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
        Toolchain::Nightly,
    )
}
