//! Measuring several paths round-robin in one run, and turning the samples
//! into report rows.
use anyhow::Result;
use pod_net_tests::{Node, Pod};

use super::{
    BenchOptions, generator,
    measure::{self, Sample},
    profile::{self, Profile},
    report::{Row, Summary},
};
use crate::run::workspace_root;

/// How the figures are taken, for the report notes.
pub const METHOD: &str = "TCP: one iperf3 stream; TCP per busy CPU: that throughput over the \
    CPUs busy during it; UDP: one iperf3 stream of 64-byte datagrams, packets that arrived per \
    second; latency: sockperf UDP ping-pong, median one-way; TCP RR: sockperf ping-pong over \
    TCP, 64-byte messages, transactions per second and one-way p50/p99; generator: trafgen \
    (netsniff-ng) sending 60-byte UDP frames from one pod, counted at the other pod's eth0, at \
    full speed (max) and at 150 kpps (machine-wide CPU time per delivered packet). Warm-up, the \
    same on every path: iperf3 omits its first second (`--omit 1`), the generator opens its \
    window 0.5 s after it starts. Every round of every path is in the JSON (`samples`); the \
    table shows medians and ranges.";

/// A named path: traffic from the first pod to the second.
pub struct Path<'a> {
    pub name: &'static str,
    pub client: &'a Pod,
    pub server: &'a Pod,
    /// `pod-net` commands run on these nodes before each of the path's
    /// samples: a variant of pod-net on shared pods (a hitless reload, node
    /// entries switched), so that variants differ only by what these change.
    pub setup: Vec<(&'a Node, Vec<String>)>,
}

impl<'a> Path<'a> {
    /// A path of its own pods.
    pub fn new(name: &'static str, client: &'a Pod, server: &'a Pod) -> Self {
        Self {
            name,
            client,
            server,
            setup: Vec::new(),
        }
    }

    /// A variant on shared pods, selected by `pod-net load reload_args` on
    /// `nodes`.
    pub fn variant(
        name: &'static str,
        (client, server): (&'a Pod, &'a Pod),
        nodes: Vec<&'a Node>,
        reload_args: &[&str],
    ) -> Self {
        let mut path = Self::new(name, client, server);
        let mut load = vec!["load"];
        load.extend_from_slice(reload_args);
        for node in nodes {
            path = path.then(node, &load);
        }
        path
    }

    /// Adds `pod-net ARGS` on `node` to the setup before each sample.
    #[must_use]
    pub fn then(mut self, node: &'a Node, args: &[&str]) -> Self {
        self.setup
            .push((node, args.iter().map(|&arg| arg.to_owned()).collect()));
        self
    }
}

/// Every path's samples, in path order, and the profiles of the last round
/// when asked for (`--profile`).
pub struct Measured {
    pub samples: Vec<Vec<Sample>>,
    pub profiles: Vec<(&'static str, Profile)>,
}

impl Measured {
    /// The notes every pod-to-pod report carries about its own run: how
    /// well the generator's two counts agreed, and where the time went.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![counting_note(&self.samples)];
        if !self.profiles.is_empty() {
            notes.push(profile::note(&self.profiles));
        }
        notes
    }
}

/// Samples every path once per round, rotating which goes first so none
/// always runs on a warmer (or busier) machine.
pub fn sample_round_robin(paths: &[Path<'_>], options: &BenchOptions) -> Result<Measured> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
    let mut profiles = Vec::new();
    for round in 0..options.rounds {
        for offset in 0..paths.len() {
            let index = (round + offset) % paths.len();
            let path = &paths[index];
            for (node, args) in &path.setup {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                node.pod_net(&args)?;
            }
            let sample = measure::sample(path.client, path.server, options.durations)?;
            println!(
                "bench: round {}/{} {:<14} TCP {:>5.1} Gbit/s  UDP-64B {:>5.0} kpps  p50 {:>5.1} µs  \
                 RR {:>6.0}/s  generator {:>5.0} kpps, {:>5.0} ns/packet, counts {:.2}% apart",
                round + 1,
                options.rounds,
                path.name,
                sample.tcp_gbps,
                sample.udp_kpps,
                sample.latency_p50_us,
                sample.tcp_rr.transactions_per_second,
                sample.generator.max_kpps,
                sample.generator.cpu_ns_per_packet,
                sample.generator.counting_gap * 100.0
            );
            samples[index].push(sample);
            if options.profile && round + 1 == options.rounds {
                profiles.push((path.name, profile_of(path, options)?));
            }
        }
    }
    Ok(Measured { samples, profiles })
}

/// One more fixed-rate generator run on `path`, recorded with perf into
/// `target/bench/profile/<path>.data`.
fn profile_of(path: &Path<'_>, options: &BenchOptions) -> Result<Profile> {
    let data = workspace_root()
        .join("target/bench/profile")
        .join(format!("{}.data", path.name.replace([' ', ',', '+'], "-")));
    let profile = generator::profile(path.client, path.server, options.durations.generator, &data)?;
    println!(
        "bench: profiled {} ({:.0} busy ns per packet) into {}",
        path.name,
        profile.busy_ns_per_packet,
        data.display()
    );
    Ok(profile)
}

/// How far the generator's two counting points (the receiver's `eth0`, its
/// UDP layer) were apart at worst, over every sample: a note, so that a
/// reader sees the capacity figure is what the pods took.
fn counting_note(samples: &[Vec<Sample>]) -> String {
    let worst = samples
        .iter()
        .flatten()
        .map(|sample| sample.generator.counting_gap)
        .fold(0.0, f64::max);
    format!(
        "Generator packets were counted twice at the receiver, at its eth0 and by its UDP layer \
         (Udp NoPorts: the frames go to port 9, where nothing listens); the two counts were at \
         most {:.2}% apart in any run.",
        worst * 100.0
    )
}

/// The standard rows (TCP, TCP per busy CPU, UDP pps, latency) over
/// `paths` and their samples.
pub fn rows(paths: &[Path<'_>], samples: &[Vec<Sample>]) -> Vec<Row> {
    let row = |figure: &str, unit: &str, higher_is_better: bool, get: fn(&Sample) -> f64| Row {
        figure: figure.into(),
        unit: unit.into(),
        higher_is_better,
        paths: paths
            .iter()
            .zip(samples)
            .map(|(path, samples)| {
                (
                    path.name.to_owned(),
                    Summary::of(samples.iter().map(get).collect()),
                )
            })
            .collect(),
    };
    vec![
        row("TCP throughput", "Gbit/s", true, |s| s.tcp_gbps),
        row("TCP per busy CPU", "Gbit/s", true, |s| {
            s.tcp_gbps_per_busy_cpu
        }),
        row("UDP 64 B", "kpps", true, |s| s.udp_kpps),
        row("latency p50", "µs", false, |s| s.latency_p50_us),
        row("TCP RR", "transactions/s", true, |s| {
            s.tcp_rr.transactions_per_second
        }),
        row("TCP RR p50", "µs", false, |s| s.tcp_rr.p50_us),
        row("TCP RR p99", "µs", false, |s| s.tcp_rr.p99_us),
        row("generator max", "kpps", true, |s| s.generator.max_kpps),
        row("CPU per packet, fixed rate", "ns", false, |s| {
            s.generator.cpu_ns_per_packet
        }),
    ]
}
