//! `cargo xtask`: the two commands a newcomer needs (`demo`, `test`) and the
//! ones behind them.
mod bench;
mod demo;
mod demo_cluster;
mod image;
mod install;
mod peers;
mod run;
mod setup;
mod soak;
mod test;
mod toolchain;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pod_net_tests::RigSpec;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; says what it does).
    Setup,
    /// Build a veth-namespace rig, run pod-net on it, show the counters, tear down.
    Demo,
    /// Run the whole suite (setup first). CI runs this.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, say).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Keep a rig up for poking at by hand, or take it down.
    Rig {
        #[command(subcommand)]
        action: RigAction,
    },
    /// Measure pod-net against the kernel path, side by side in one run.
    Bench(bench::BenchArgs),
    /// The agent under an operator's soak: churn, etcd and agents killed,
    /// pings all along; fails on a lost ping or a node not equal to etcd.
    Soak(soak::SoakArgs),
    /// Build the OCI image archive (static binaries, FROM scratch) for
    /// `ctr images import` or `podman load`; no docker, no registry.
    Image(image::ImageArgs),
    /// Put `pod-net` on PATH and `pod-net-cni` in the CNI bin dir.
    Install {
        #[arg(long, default_value = "/usr/local/bin")]
        bin_dir: String,
        #[arg(long, default_value = "/opt/cni/bin")]
        cni_bin_dir: String,
    },
}

#[derive(Debug, Subcommand)]
enum RigAction {
    /// Build the rig `pnr-manual` (replacing an older one) and leave it up.
    Up {
        #[arg(long, default_value_t = 1)]
        nodes: u8,
        #[arg(long, default_value_t = 2)]
        pods: u8,
    },
    /// Remove the rig `pnr-manual`.
    Down,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Demo => setup::run().and_then(|()| demo::run()),
        Command::Test { args } => setup::run().and_then(|()| test::run(&args)),
        Command::Rig { action } => rig(&action),
        Command::Bench(args) => setup::run().and_then(|()| bench::run(&args)),
        Command::Soak(args) => setup::run().and_then(|()| soak::run(&args)),
        Command::Image(args) => setup::run().and_then(|()| image::run(&args)),
        Command::Install {
            bin_dir,
            cni_bin_dir,
        } => setup::run().and_then(|()| install::run(&bin_dir, &cni_bin_dir)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn rig(action: &RigAction) -> anyhow::Result<()> {
    match action {
        RigAction::Up { nodes, pods } => {
            let rig = pod_net_tests::Rig::build_manual(&RigSpec {
                nodes: *nodes,
                pods_per_node: *pods,
                ..RigSpec::default()
            })?;
            for node in rig.nodes() {
                println!(
                    "node {}: netns {} (pin dir {}), cni0 {}/24",
                    node.index,
                    node.netns,
                    node.pin_dir.display(),
                    node.gateway_ip
                );
                for pod in &node.pods {
                    println!(
                        "  pod {}: netns {}, {} on {} (host veth {})",
                        pod.index, pod.netns, pod.ip, pod.mac, pod.host_veth
                    );
                }
            }
            println!(
                "try: nsenter --net=/run/netns/{} target/debug/pod-net --pin-dir {} load",
                rig.node(1).netns,
                rig.node(1).pin_dir.display()
            );
            println!("take it down with: cargo xtask rig down");
            Ok(())
        }
        RigAction::Down => {
            pod_net_tests::Rig::remove_manual()?;
            println!("rig pnr-manual removed");
            Ok(())
        }
    }
}
