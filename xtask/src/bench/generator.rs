//! The path's own capacity, not a socket benchmark's: `trafgen` (from
//! netsniff-ng) writes 60-byte UDP frames (64 on a wire, with the FCS) from
//! one pod through a packet mmap ring, with no socket or UDP stack work per
//! packet, and the receiving pod's `eth0` counts what arrives.
use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::{Pod, rig::Background};

use super::cpu::CpuTimes;

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
}

pub fn measure(client: &Pod, server: &Pod, seconds: u32) -> Result<GeneratorFigures> {
    let config = frame_config(client, server)?;
    let max = run(client, server, &config, None, seconds)?;
    let fixed = run(client, server, &config, Some(FIXED_RATE_PPS), seconds)?;
    #[expect(clippy::cast_precision_loss, reason = "packet counts fit f64 well")]
    Ok(GeneratorFigures {
        max_kpps: max.packets as f64 / max.elapsed.as_secs_f64() / 1e3,
        cpu_ns_per_packet: fixed.busy_cpu_ns / (fixed.packets.max(1) as f64),
    })
}

struct Run {
    packets: u64,
    elapsed: Duration,
    busy_cpu_ns: f64,
}

/// Runs trafgen for `seconds` after a short warm-up, counting what the
/// server's `eth0` receives in that window.
fn run(
    client: &Pod,
    server: &Pod,
    config: &ConfigFile,
    rate_pps: Option<u32>,
    seconds: u32,
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
    thread::sleep(Duration::from_millis(500));
    let (rx_before, cpu_before, start) =
        (server.eth0_packets()?.rx, CpuTimes::read()?, Instant::now());
    thread::sleep(Duration::from_secs(u64::from(seconds)));
    let (rx_after, cpu_after, elapsed) = (
        server.eth0_packets()?.rx,
        CpuTimes::read()?,
        start.elapsed(),
    );
    drop(generator);
    let packets = rx_after.saturating_sub(rx_before);
    if packets == 0 {
        bail!(
            "trafgen from {} reached {} with no packet",
            client.netns,
            server.netns
        );
    }
    Ok(Run {
        packets,
        elapsed,
        busy_cpu_ns: cpu_after.busy_ns_since(&cpu_before),
    })
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
