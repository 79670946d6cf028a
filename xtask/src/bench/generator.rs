//! The path's own capacity, not a socket benchmark's: `trafgen` (from
//! netsniff-ng) writes 60-byte UDP frames (64 on a wire, with the FCS) from
//! one pod through a packet mmap ring, with no socket or UDP stack work per
//! packet, and the receiving pod's `eth0` counts what arrives.
//!
//! The frames go to UDP port 9 with nothing listening, so the receiving
//! pod's UDP layer counts them a second time (`Udp: NoPorts`), after its
//! IP stack has taken them: a frame the path hands to `eth0` with a wrong
//! MAC or checksum would be counted at `eth0` and then dropped. Both counts
//! are read by one command, and the figure is `eth0`'s; how far the two
//! disagree is reported beside it.
use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::{Pod, rig::Background};

use super::{
    cpu::CpuTimes,
    profile::{Profile, Recording},
};

/// The offered rate at which CPU per packet is measured: below every
/// path's maximum here, so each path carries the same load.
pub const FIXED_RATE_PPS: u32 = 150_000;

/// What one generator run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct GeneratorFigures {
    /// Packets per second arriving at the receiver with the generator at
    /// full speed.
    pub max_kpps: f64,
    /// Machine-wide CPU time per delivered packet at [`FIXED_RATE_PPS`]
    /// (sender, path and receiver together).
    pub cpu_ns_per_packet: f64,
    /// The larger relative difference, over both runs, between the packets
    /// counted at the receiver's `eth0` and those its UDP layer took.
    pub counting_gap: f64,
}

pub fn measure(client: &Pod, server: &Pod, seconds: u32) -> Result<GeneratorFigures> {
    let config = frame_config(client, server)?;
    let max = run(client, server, &config, None, seconds, None)?;
    let fixed = run(client, server, &config, Some(FIXED_RATE_PPS), seconds, None)?;
    #[expect(clippy::cast_precision_loss, reason = "packet counts fit f64 well")]
    Ok(GeneratorFigures {
        max_kpps: max.packets as f64 / max.elapsed.as_secs_f64() / 1e3,
        cpu_ns_per_packet: fixed.busy_cpu_ns / (fixed.packets.max(1) as f64),
        counting_gap: max.counting_gap().max(fixed.counting_gap()),
    })
}

/// Where the time of one fixed-rate run goes, recorded into `data`.
pub fn profile(
    client: &Pod,
    server: &Pod,
    seconds: u32,
    data: &std::path::Path,
) -> Result<Profile> {
    let config = frame_config(client, server)?;
    run(
        client,
        server,
        &config,
        Some(FIXED_RATE_PPS),
        seconds,
        Some(data),
    )?
    .profile
    .context("the run recorded no profile")
}

struct Run {
    /// Counted at the receiver's `eth0`.
    packets: u64,
    /// Taken by the receiver's UDP layer.
    delivered: u64,
    elapsed: Duration,
    busy_cpu_ns: f64,
    profile: Option<Profile>,
}

impl Run {
    #[expect(clippy::cast_precision_loss, reason = "packet counts fit f64 well")]
    fn counting_gap(&self) -> f64 {
        self.packets.abs_diff(self.delivered) as f64 / self.packets.max(1) as f64
    }
}

/// How long each generator run goes before its window opens: every path
/// the same, so none is measured colder than another.
const WARM_UP: Duration = Duration::from_millis(500);

/// Runs trafgen for `seconds` after [`WARM_UP`], counting what the server
/// receives in that window (and profiling the machine over it into
/// `record`, if given).
fn run(
    client: &Pod,
    server: &Pod,
    config: &ConfigFile,
    rate_pps: Option<u32>,
    seconds: u32,
    record: Option<&std::path::Path>,
) -> Result<Run> {
    let config_path = config.0.to_str().context("non-UTF-8 temp path")?;
    let rate = rate_pps.map(|pps| format!("{pps}pps"));
    let mut args = vec![
        "trafgen",
        "--dev",
        "eth0",
        "--conf",
        config_path,
        "--cpus",
        "1",
    ];
    if let Some(rate) = &rate {
        args.extend(["--rate", rate]);
    }
    let generator: Background = client.spawn(&args)?;
    thread::sleep(WARM_UP);
    let window = Duration::from_secs(u64::from(seconds));
    let recording = record
        .map(|data| Recording::start(data, window))
        .transpose()?;
    let (before, cpu_before, start) = (
        ReceiverCounts::read(server)?,
        CpuTimes::read()?,
        Instant::now(),
    );
    thread::sleep(window);
    let (after, cpu_after, elapsed) = (
        ReceiverCounts::read(server)?,
        CpuTimes::read()?,
        start.elapsed(),
    );
    drop(generator);
    let packets = after.eth0_rx.saturating_sub(before.eth0_rx);
    if packets == 0 {
        bail!(
            "trafgen from {} reached {} with no packet",
            client.netns,
            server.netns
        );
    }
    Ok(Run {
        packets,
        delivered: after.udp_no_ports.saturating_sub(before.udp_no_ports),
        elapsed,
        busy_cpu_ns: cpu_after.busy_ns_since(&cpu_before),
        profile: recording
            .map(|recording| recording.finish(packets))
            .transpose()?,
    })
}

/// The receiving pod's two counting points, read at one instant.
struct ReceiverCounts {
    eth0_rx: u64,
    udp_no_ports: u64,
}

impl ReceiverCounts {
    /// One command in the pod reads both (`ip netns exec` mounts the pod's
    /// own sysfs), so that no packet arrives between the two reads.
    fn read(pod: &Pod) -> Result<Self> {
        let output = pod.exec(&[
            "cat",
            "/sys/class/net/eth0/statistics/rx_packets",
            "/proc/net/snmp",
        ])?;
        Self::parse(&output).with_context(|| format!("reading {}'s counters", pod.netns))
    }

    fn parse(output: &str) -> Result<Self> {
        let mut lines = output.lines();
        let eth0_rx = lines
            .next()
            .and_then(|line| line.trim().parse().ok())
            .context("no rx_packets count")?;
        let udp: Vec<&str> = lines.filter(|line| line.starts_with("Udp: ")).collect();
        let [names, values] = udp[..] else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        let udp_no_ports = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "NoPorts")
            .and_then(|(_, value)| value.parse().ok())
            .context("no Udp NoPorts count")?;
        Ok(Self {
            eth0_rx,
            udp_no_ports,
        })
    }
}

/// A trafgen config file, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// One UDP frame from `client` to `server`, addressed to the next hop's
/// MAC as the client's own stack would address it.
fn frame_config(client: &Pod, server: &Pod) -> Result<ConfigFile> {
    let next_hop_mac = next_hop_mac(client, server)?;
    let text = format!(
        "{{ eth(da={next_hop_mac}), ipv4(saddr={}, daddr={}, ttl=64), udp(sp=9, dp=9), \
         fill(0, 18) }}\n",
        client.ip, server.ip
    );
    let path = std::env::temp_dir().join(format!("pod-net-bench-{}.trafgen", client.netns));
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(ConfigFile(path))
}

/// The MAC the client sends to for `server`: the server's own on a shared
/// L2, else its gateway's (resolved by one ping first).
fn next_hop_mac(client: &Pod, server: &Pod) -> Result<String> {
    client.ping(server.ip, 1)?;
    let server_ip = server.ip.to_string();
    let route: serde_json::Value =
        serde_json::from_str(&client.ip(&["-j", "route", "get", &server_ip])?)
            .context("parsing ip route get")?;
    let next_hop = route[0]["gateway"]
        .as_str()
        .unwrap_or(&server_ip)
        .to_owned();
    let neighbours: serde_json::Value =
        serde_json::from_str(&client.ip(&["-j", "neigh", "show", &next_hop])?)
            .context("parsing ip neigh show")?;
    neighbours[0]["lladdr"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has no neighbour entry for {next_hop}", client.netns))
}

#[cfg(test)]
mod tests {
    use pod_net_tests::{Rig, RigSpec, require_root};

    use super::*;

    #[test]
    fn reads_both_counting_points() {
        let output = "1234\n\
            Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors\nUdp: 7 5678 0\n\
            UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        let counts = ReceiverCounts::parse(output).unwrap();
        assert_eq!((counts.eth0_rx, counts.udp_no_ports), (1234, 5678));
        assert!(ReceiverCounts::parse("1234\nIp: 1\n").is_err());
        assert!(ReceiverCounts::parse("x\nUdp: NoPorts\nUdp: 1\n").is_err());
    }

    /// The bench's capacity figure is what the receiving pod's `eth0`
    /// counts; the pod's own UDP layer must have taken those packets too,
    /// on the bridge and on pod-net's path alike.
    #[test]
    fn the_generators_two_counting_points_agree_within_2_percent() {
        require_root!();
        let rig = Rig::build(&RigSpec {
            nodes: 2,
            pods_per_node: 2,
            ..RigSpec::default()
        })
        .unwrap();
        rig.node(2).load_and_register().unwrap();
        for (path, client, server) in [
            ("bridge", rig.pod(1, 1), rig.pod(1, 2)),
            ("pod-net", rig.pod(2, 1), rig.pod(2, 2)),
        ] {
            let config = frame_config(client, server).unwrap();
            let run = run(client, server, &config, None, 2, None).unwrap();
            eprintln!(
                "{path}: eth0 counted {}, the UDP layer took {}",
                run.packets, run.delivered
            );
            assert!(run.packets > 10_000, "{path}: only {} packets", run.packets);
            assert!(
                run.counting_gap() <= 0.02,
                "{path}: eth0 counted {} packets, the UDP layer took {}",
                run.packets,
                run.delivered
            );
        }
    }
}
