//! `cargo xtask setup`: everything a fresh Debian machine lacks for building
//! and testing pod-net. Idempotent: each step checks first and says what it
//! found or did. This is the only place that installs anything, the
//! Go-built peers of the tests included (`peers`).
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{
    peers,
    run::{show, succeeds},
    toolchain::EbpfToolchain,
};

/// Debian packages the build, the tests, the demo and the bench use.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "LLVM 22 for building bpf-linker"),
    (
        "libpolly-22-dev",
        "LLVM 22's Polly, which its link line names",
    ),
    ("bpftool", "inspecting programs and maps"),
    ("iproute2", "namespaces, veths, bridges, vxlan"),
    ("iputils-ping", "ping in rig tests"),
    ("iperf3", "TCP/UDP traffic in tests and the bench"),
    ("sockperf", "latency in the bench"),
    ("tshark", "decoding captures in interop tests"),
    (
        "containernetworking-plugins",
        "the reference CNI plugins (bridge, ptp, host-local)",
    ),
    ("ethtool", "veth offload settings"),
    ("procps", "sysctl inside namespaces"),
    (
        "iptables",
        "kube-proxy-style DNAT and FORWARD rules in tests",
    ),
    (
        "etcd-server",
        "the cluster store the agent joins through, in tests",
    ),
    (
        "etcd-client",
        "etcdctl, for writing leases by hand in tests",
    ),
    (
        "curl",
        "etcd's JSON gateway, for writing thousands of leases in the cluster bench",
    ),
    (
        "protobuf-compiler",
        "protoc, which the etcd-client crate's build needs",
    ),
    (
        "libprotobuf-dev",
        "the well-known .proto files etcd-client's protos import",
    ),
    (
        "util-linux",
        "unshare and nsenter for private mount namespaces",
    ),
    (
        "netsniff-ng",
        "trafgen, a low-overhead packet generator for the bench",
    ),
    (
        "linux-perf",
        "perf, for where a path's time goes (`bench --profile`)",
    ),
    (
        "gcc",
        "cgo, which flanneld's udp backend needs (the Go-built peers)",
    ),
    (
        "libc6-dev",
        "the static C library flanneld links, as upstream builds it",
    ),
    (
        "openssl",
        "certificates for the tests' control plane and TLS etcd",
    ),
    (
        "busybox-static",
        "the image's init shell (cargo xtask image copies /bin/busybox in)",
    ),
    (
        "containerd",
        "ctr images import and run of the image, in tests",
    ),
    ("podman", "podman load and run of the image, in tests"),
];

/// The LLVM bpf-linker must be built against.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    require_root()?;
    debian_packages()?;
    rust_toolchain()?;
    bpf_linker()?;
    bpffs()?;
    peers::run()?;
    Ok(())
}

fn require_root() -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("setup installs packages and mounts bpffs: run it as root");
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(name, _)| !is_installed(name))
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages present ({} checked)",
            PACKAGES.len()
        );
        return Ok(());
    }
    for (name, why) in PACKAGES.iter().filter(|(name, _)| missing.contains(name)) {
        println!("setup: installing {name} ({why})");
    }
    show(Command::new("apt-get").args(["update", "-q"]))?;
    show(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout) == "install ok installed")
}

fn rust_toolchain() -> Result<()> {
    let pinned = EbpfToolchain::pinned()?;
    let toolchain = if pinned.installed() {
        println!("setup: {} present", pinned.channel);
        pinned.channel.clone()
    } else if pinned.is_plain_nightly() {
        println!(
            "setup: the installed `nightly` is {} (rustc of {}); using it",
            pinned.channel, pinned.commit_date
        );
        "nightly".to_owned()
    } else {
        println!(
            "setup: installing {} (builds the eBPF crate; pinned, as a newer nightly's LLVM may \
             be one bpf-linker cannot read)",
            pinned.channel
        );
        show(Command::new("rustup").args([
            "toolchain",
            "install",
            &pinned.channel,
            "--profile",
            "minimal",
        ]))?;
        pinned.channel.clone()
    };
    let components = Command::new("rustup")
        .args([
            "component",
            "list",
            "--toolchain",
            &toolchain,
            "--installed",
        ])
        .output()
        .with_context(|| format!("listing {toolchain}'s components"))?;
    if String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        println!("setup: rust-src for {toolchain} present");
        return Ok(());
    }
    println!("setup: adding rust-src to {toolchain} (build-std=core for the bpf target)");
    show(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain]))
}

fn bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        println!("setup: bpf-linker present");
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM 22 (takes a few minutes)");
    show(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            // Debian's /usr/bin/llvm-config may be another LLVM; point the
            // build at 22 explicitly.
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

fn bpffs() -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    let mounted = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(mount_point)
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "bpf_fs");
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all(mount_point).context("creating /sys/fs/bpf")?;
    show(
        Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(mount_point),
    )
}
