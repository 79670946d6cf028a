//! One measurement between two pods: iperf3 TCP, iperf3 UDP 64-byte pps,
//! sockperf UDP ping-pong latency, sockperf TCP request/response, and the
//! packet generator's maximum rate and CPU per packet.
use std::{thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::Pod;

use super::{cpu::CpuTimes, generator};

/// Seconds each traffic run lasts.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub tcp: u32,
    pub udp: u32,
    pub latency: u32,
    /// Each of the generator's two runs (full speed, fixed rate).
    pub generator: u32,
}

/// One sample of every figure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub tcp_gbps: f64,
    /// TCP throughput per CPU busy during the run: throughput here is CPU
    /// bound, and this figure shrugs off idle time the scheduler leaves.
    pub tcp_gbps_per_busy_cpu: f64,
    pub udp_kpps: f64,
    pub latency_p50_us: f64,
    /// TCP request/response (sockperf ping-pong over TCP, 64 bytes).
    pub tcp_rr: TcpRr,
    pub generator: generator::GeneratorFigures,
}

/// One TCP transaction after another: a request, its response.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpRr {
    pub transactions_per_second: f64,
    /// One-way latency, as sockperf reports it (half a transaction).
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn sample(client: &Pod, server: &Pod, durations: Durations) -> Result<Sample> {
    let busy_before = CpuTimes::read()?;
    let tcp_gbps = tcp_gbps(client, server, durations.tcp)?;
    let busy_cpus = CpuTimes::read()?.busy_cpus_since(&busy_before);
    Ok(Sample {
        tcp_gbps,
        tcp_gbps_per_busy_cpu: tcp_gbps / busy_cpus.max(0.01),
        udp_kpps: udp_64b_kpps(client, server, durations.udp)?,
        latency_p50_us: latency_p50_us(client, server, durations.latency)?,
        tcp_rr: tcp_rr(client, server, durations.latency)?,
        generator: generator::measure(client, server, durations.generator)?,
    })
}

/// Seconds iperf3 runs before it starts counting (`--omit`), on every path
/// alike: TCP's slow start and the first ARP and cache misses stay out.
const WARM_UP_SECONDS: &str = "1";

/// Received TCP throughput of one iperf3 stream.
fn tcp_gbps(client: &Pod, server: &Pod, seconds: u32) -> Result<f64> {
    let _server = server.iperf3_server(&[])?;
    let seconds = seconds.to_string();
    let report = client.iperf3_client(server.ip, &["-t", &seconds, "--omit", WARM_UP_SECONDS])?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .context("iperf3 report has no received rate")
}

/// Packets per second that arrive when one iperf3 UDP stream sends 64-byte
/// datagrams as fast as it can.
fn udp_64b_kpps(client: &Pod, server: &Pod, seconds: u32) -> Result<f64> {
    let _server = server.iperf3_server(&[])?;
    let seconds = seconds.to_string();
    let report = client.iperf3_client(
        server.ip,
        &[
            "-u",
            "-b",
            "0",
            "-l",
            "64",
            "-t",
            &seconds,
            "--omit",
            WARM_UP_SECONDS,
        ],
    )?;
    let sum = &report["end"]["sum"];
    let packets = sum["packets"].as_f64().context("no UDP packet count")?;
    let lost = sum["lost_packets"].as_f64().context("no UDP loss count")?;
    let elapsed = sum["seconds"].as_f64().context("no UDP duration")?;
    Ok((packets - lost) / elapsed / 1e3)
}

/// Median one-way latency of sockperf's UDP ping-pong (64-byte messages).
fn latency_p50_us(client: &Pod, server: &Pod, seconds: u32) -> Result<f64> {
    let output = sockperf_ping_pong(client, server, seconds, &[])?;
    parse_sockperf_percentile(&output, "50.000")
}

/// sockperf's ping-pong over TCP: transactions per second, and the median
/// and 99th percentile of one transaction's one-way latency.
fn tcp_rr(client: &Pod, server: &Pod, seconds: u32) -> Result<TcpRr> {
    let output = sockperf_ping_pong(client, server, seconds, &["--tcp"])?;
    Ok(TcpRr {
        transactions_per_second: parse_sockperf_rate(&output)?,
        p50_us: parse_sockperf_percentile(&output, "50.000")?,
        p99_us: parse_sockperf_percentile(&output, "99.000")?,
    })
}

fn sockperf_ping_pong(client: &Pod, server: &Pod, seconds: u32, extra: &[&str]) -> Result<String> {
    let address = server.ip.to_string();
    let mut server_args = vec!["sockperf", "server", "-i", &address, "-p", "11111"];
    server_args.extend_from_slice(extra);
    let _server = server.spawn(&server_args)?;
    // Give the server a moment to bind (and, for TCP, to listen).
    thread::sleep(Duration::from_millis(300));
    let seconds = seconds.to_string();
    let mut client_args = vec![
        "sockperf",
        "ping-pong",
        "-i",
        &address,
        "-p",
        "11111",
        "-t",
        &seconds,
        "-m",
        "64",
    ];
    client_args.extend_from_slice(extra);
    client.exec(&client_args)
}

fn parse_sockperf_percentile(output: &str, percentile: &str) -> Result<f64> {
    let marker = format!("percentile {percentile} =");
    for line in output.lines() {
        if let Some(rest) = line.split(marker.as_str()).nth(1) {
            return rest
                .trim()
                .parse()
                .with_context(|| format!("sockperf percentile in {line:?}"));
        }
    }
    bail!("no {percentile} percentile in sockperf output: {output}")
}

/// Round trips per second: `ReceivedMessages` over `RunTime` of the valid
/// part of the run.
fn parse_sockperf_rate(output: &str) -> Result<f64> {
    let line = output
        .lines()
        .find(|line| line.contains("[Valid Duration]"))
        .with_context(|| format!("no valid duration in sockperf output: {output}"))?;
    let field = |name: &str| -> Result<f64> {
        line.split(name)
            .nth(1)
            .and_then(|rest| {
                rest.trim_start()
                    .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .next()
            })
            .and_then(|number| number.parse().ok())
            .with_context(|| format!("no {name} in {line:?}"))
    };
    Ok(field("ReceivedMessages=")? / field("RunTime=")?.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sockperf_percentiles_and_rate() {
        let output = "sockperf: [Valid Duration] RunTime=2.990 sec; SentMessages=89700; \
                      ReceivedMessages=89700\n\
                      sockperf: ---> percentile 99.000 =   31.250\n\
                      sockperf: ---> percentile 75.000 =   15.529\n\
                      sockperf: ---> percentile 50.000 =   13.740\n";
        assert!((parse_sockperf_percentile(output, "50.000").unwrap() - 13.74).abs() < 1e-9);
        assert!((parse_sockperf_percentile(output, "99.000").unwrap() - 31.25).abs() < 1e-9);
        assert!((parse_sockperf_rate(output).unwrap() - 30_000.0).abs() < 1e-6);
        assert!(parse_sockperf_percentile("nothing", "50.000").is_err());
        assert!(parse_sockperf_rate("nothing").is_err());
    }
}
