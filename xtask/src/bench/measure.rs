//! One measurement between two pods: iperf3 TCP, iperf3 UDP 64-byte pps,
//! sockperf UDP ping-pong latency.
use std::{thread, time::Duration};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::Pod;

/// Seconds each traffic run lasts.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub tcp: u32,
    pub udp: u32,
    pub latency: u32,
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
    })
}

/// The machine's CPU time counters (/proc/stat, first line).
struct CpuTimes {
    busy: u64,
    total: u64,
    cpus: u32,
}

impl CpuTimes {
    fn read() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        let cpus = u32::try_from(stat.lines().filter(|line| line.starts_with("cpu")).count())
            .unwrap_or(2)
            .saturating_sub(1);
        Ok(Self {
            busy: total - idle,
            total,
            cpus,
        })
    }

    /// How many CPUs were busy on average since `earlier`.
    fn busy_cpus_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        let busy = self.busy.saturating_sub(earlier.busy);
        #[expect(clippy::cast_precision_loss, reason = "jiffies fit f64 well")]
        let share = busy as f64 / total as f64;
        share * f64::from(self.cpus)
    }
}

/// Received TCP throughput of one iperf3 stream.
fn tcp_gbps(client: &Pod, server: &Pod, seconds: u32) -> Result<f64> {
    let _server = server.iperf3_server(&[])?;
    let seconds = seconds.to_string();
    let report = client.iperf3_client(server.ip, &["-t", &seconds])?;
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
    let report = client.iperf3_client(server.ip, &["-u", "-b", "0", "-l", "64", "-t", &seconds])?;
    let sum = &report["end"]["sum"];
    let packets = sum["packets"].as_f64().context("no UDP packet count")?;
    let lost = sum["lost_packets"].as_f64().context("no UDP loss count")?;
    let elapsed = sum["seconds"].as_f64().context("no UDP duration")?;
    Ok((packets - lost) / elapsed / 1e3)
}

/// Median one-way latency of sockperf's UDP ping-pong (64-byte messages).
fn latency_p50_us(client: &Pod, server: &Pod, seconds: u32) -> Result<f64> {
    let address = server.ip.to_string();
    let _server = server.spawn(&["sockperf", "server", "-i", &address, "-p", "11111"])?;
    // sockperf's server is UDP: give it a moment to bind.
    thread::sleep(Duration::from_millis(300));
    let seconds = seconds.to_string();
    let output = client.exec(&[
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
    ])?;
    parse_sockperf_p50(&output)
}

fn parse_sockperf_p50(output: &str) -> Result<f64> {
    for line in output.lines() {
        if let Some(rest) = line.split("percentile 50.000 =").nth(1) {
            return rest
                .trim()
                .parse()
                .with_context(|| format!("sockperf p50 in {line:?}"));
        }
    }
    bail!("no median in sockperf output: {output}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sockperf_median() {
        let output = "sockperf: ---> percentile 75.000 =   15.529\n\
                      sockperf: ---> percentile 50.000 =   13.740\n";
        assert!((parse_sockperf_p50(output).unwrap() - 13.74).abs() < 1e-9);
        assert!(parse_sockperf_p50("nothing").is_err());
    }
}
