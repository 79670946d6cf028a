//! `cargo xtask bench same-node`: a direct veth pair (the physical limit),
//! the Linux bridge (the path pod-net replaces) and the pod-net fast path,
//! measured round-robin in one run on one rig.
use anyhow::Result;
use pod_net_tests::{Pod, Rig, RigSpec};

use super::{
    BenchOptions,
    measure::{self, Sample},
    report::{Report, Row, Summary},
    testrun,
};

const PATHS: [&str; 3] = ["direct veth", "bridge", "pod-net"];

pub fn run(options: &BenchOptions) -> Result<Report> {
    // Node 1 stays a plain bridge node; node 2 runs pod-net.
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 2,
        ..RigSpec::default()
    })?;
    let (direct_a, direct_b) = rig.direct_pair()?;
    rig.node(2).load_and_register()?;
    let pairs: [(&Pod, &Pod); 3] = [
        (&direct_a, &direct_b),
        (rig.pod(1, 1), rig.pod(1, 2)),
        (rig.pod(2, 1), rig.pod(2, 2)),
    ];

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); PATHS.len()];
    for round in 0..options.rounds {
        // Rotate the order so no path always runs first (or last).
        for offset in 0..PATHS.len() {
            let path = (round + offset) % PATHS.len();
            let (client, server) = pairs[path];
            let sample = measure::sample(client, server, options.durations)?;
            println!(
                "bench: round {}/{} {:<11} TCP {:>5.1} Gbit/s  UDP-64B {:>5.0} kpps  p50 {:>5.1} µs",
                round + 1,
                options.rounds,
                PATHS[path],
                sample.tcp_gbps,
                sample.udp_kpps,
                sample.latency_p50_us
            );
            samples[path].push(sample);
        }
    }
    let redirect = testrun::ns_per_packet()?;

    let row = |figure: &str, unit: &str, higher_is_better: bool, get: fn(&Sample) -> f64| Row {
        figure: figure.into(),
        unit: unit.into(),
        higher_is_better,
        paths: PATHS
            .iter()
            .zip(&samples)
            .map(|(path, samples)| {
                (
                    (*path).to_owned(),
                    Summary::of(samples.iter().map(get).collect()),
                )
            })
            .collect(),
    };
    let mut notes = vec![format!(
        "Test run (BPF_PROG_TEST_RUN, {} runs × 1M): pod_egress {}.",
        redirect.rounds,
        redirect.describe()
    )];
    notes.push(
        "TCP: one iperf3 stream; UDP: one iperf3 stream of 64-byte datagrams, packets that \
         arrived per second; latency: sockperf UDP ping-pong, median one-way."
            .into(),
    );
    Ok(Report {
        title: "Same node: pod to pod".into(),
        rounds: options.rounds,
        subject: "pod-net".into(),
        baselines: vec!["bridge".into(), "direct veth".into()],
        rows: vec![
            row("TCP throughput", "Gbit/s", true, |s| s.tcp_gbps),
            row("TCP per busy CPU", "Gbit/s", true, |s| {
                s.tcp_gbps_per_busy_cpu
            }),
            row("UDP 64 B", "kpps", true, |s| s.udp_kpps),
            row("latency p50", "µs", false, |s| s.latency_p50_us),
        ],
        notes,
    })
}
