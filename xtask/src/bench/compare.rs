//! Measuring several paths round-robin in one run, and turning the samples
//! into report rows.
use anyhow::Result;
use pod_net_tests::Pod;

use super::{
    BenchOptions,
    measure::{self, Sample},
    report::{Row, Summary},
};

/// How the figures are taken, for the report notes.
pub const METHOD: &str = "TCP: one iperf3 stream; TCP per busy CPU: that throughput over the \
    CPUs busy during it; UDP: one iperf3 stream of 64-byte datagrams, packets that arrived per \
    second; latency: sockperf UDP ping-pong, median one-way.";

/// A named path: traffic from the first pod to the second.
pub struct Path<'a> {
    pub name: &'static str,
    pub client: &'a Pod,
    pub server: &'a Pod,
}

/// Samples every path once per round, rotating which goes first so none
/// always runs on a warmer (or busier) machine.
pub fn sample_round_robin(paths: &[Path<'_>], options: &BenchOptions) -> Result<Vec<Vec<Sample>>> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); paths.len()];
    for round in 0..options.rounds {
        for offset in 0..paths.len() {
            let index = (round + offset) % paths.len();
            let path = &paths[index];
            let sample = measure::sample(path.client, path.server, options.durations)?;
            println!(
                "bench: round {}/{} {:<12} TCP {:>5.1} Gbit/s  UDP-64B {:>5.0} kpps  p50 {:>5.1} µs",
                round + 1,
                options.rounds,
                path.name,
                sample.tcp_gbps,
                sample.udp_kpps,
                sample.latency_p50_us
            );
            samples[index].push(sample);
        }
    }
    Ok(samples)
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
    ]
}
