//! `cargo xtask bench`: pod-net against the kernel path it replaces, both
//! measured in the same run. Results go to target/bench/ as JSON and
//! Markdown. Benchmarks are not tests: nothing here asserts a timing.
mod beside;
mod cluster;
mod cluster_kube;
mod cni;
mod compare;
mod cpu;
mod cross_node;
mod generator;
mod measure;
mod profile;
mod report;
mod same_node;
mod scale;
mod settings;
mod testrun;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::run::{cargo, show, workspace_root};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    SameNode,
    CrossNode,
    Cni,
    Scale,
    Cluster,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum, default_value = "same-node")]
    pub suite: Suite,
    /// Rounds per path; each round measures every path once.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per TCP run (UDP and latency runs take 3).
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// With `cluster`: an agent joining through the Kubernetes API
    /// (`--kube-subnet-mgr`, 5,000 Nodes) beside one joining through etcd
    /// (5,000 leases), in the same run.
    #[arg(long)]
    pub kube: bool,
    /// With `same-node` and `cross-node`: record each path's last
    /// fixed-rate generator run with `perf` (into target/bench/profile/)
    /// and report busy CPU ns per packet by function.
    #[arg(long)]
    pub profile: bool,
}

pub struct BenchOptions {
    pub rounds: usize,
    /// Profile each path's last round (`--profile`).
    pub profile: bool,
    pub durations: measure::Durations,
}

/// Builds the release binaries and points the rig at them: what
/// operators run, measured. `who` says who asked.
pub fn release_binaries(who: &str) -> Result<()> {
    println!("{who}: building pod-net (release)");
    show(&mut cargo(&["build", "--release", "--bins"]))?;
    // SAFETY: called before any thread starts; the rig reads it to find
    // the binary.
    unsafe {
        std::env::set_var(
            "POD_NET_BIN",
            workspace_root().join("target/release/pod-net"),
        );
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.kube && args.suite != Suite::Cluster {
        bail!("--kube goes with the cluster bench only");
    }
    if args.profile && !matches!(args.suite, Suite::SameNode | Suite::CrossNode) {
        bail!("--profile goes with the same-node and cross-node benches only");
    }
    release_binaries("bench")?;
    let options = BenchOptions {
        rounds: args.rounds.max(1),
        profile: args.profile,
        durations: measure::Durations {
            tcp: args.seconds,
            udp: 3,
            latency: 3,
            generator: 3,
        },
    };
    let (reports, name) = match args.suite {
        Suite::SameNode => (vec![same_node::run(&options)?], "same-node"),
        Suite::CrossNode => (vec![cross_node::run(&options)?], "cross-node"),
        Suite::Cni => (vec![cni::run(options.rounds)?], "cni"),
        Suite::Scale => (scale::run(options.rounds)?, "scale"),
        Suite::Cluster if args.kube => (cluster_kube::run(options.rounds)?, "cluster-kube"),
        Suite::Cluster => (cluster::run(options.rounds)?, "cluster"),
    };
    for (index, report) in reports.iter().enumerate() {
        println!("\n{}", report.to_markdown());
        let name = if index == 0 {
            name.to_owned()
        } else {
            format!("{name}-{index}")
        };
        report.write(&workspace_root().join("target/bench"), &name)?;
    }
    Ok(())
}
