//! Where a path's time goes (`cargo xtask bench … --profile`): `perf
//! record` samples every CPU during one extra fixed-rate generator run per
//! path, after its last round, and each function's samples become
//! nanoseconds per delivered packet, by function and by group. Two paths
//! side by side then show what one pays for and the other does not. A
//! recording dropped unfinished ends with its own `sleep`.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use pod_net_tests::cmd::run_command;

/// Samples per second per CPU: a prime, so that sampling does not beat
/// with a periodic timer.
const FREQUENCY_HZ: u32 = 997;
/// Functions listed per path.
const TOP: usize = 14;
/// Symbols of an idle CPU, left out of the cost of a packet.
const IDLE: [&str; 5] = [
    "pv_native_safe_halt",
    "default_idle",
    "cpuidle_enter_state",
    "do_idle",
    "intel_idle",
];

/// A `perf record` running over the whole machine.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts recording into `data` for `window`.
    pub fn start(data: &Path, window: Duration) -> Result<Self> {
        if let Some(dir) = data.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let frequency = FREQUENCY_HZ.to_string();
        let seconds = format!("{:.3}", window.as_secs_f64());
        let child = Command::new("perf")
            .args(["record", "-q", "-a", "-F", &frequency, "-o"])
            .arg(data)
            .args(["--", "sleep", &seconds])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (Debian's linux-perf)")?;
        Ok(Self {
            child,
            data: data.to_owned(),
        })
    }

    /// Waits for the recording and turns it into a profile of `packets`.
    pub fn finish(mut self, packets: u64) -> Result<Profile> {
        let status = self.child.wait().context("waiting for perf record")?;
        if !status.success() {
            bail!("perf record into {} failed ({status})", self.data.display());
        }
        let report = run_command(Command::new("perf").args([
            "report",
            "-i",
            self.data.to_str().context("non-UTF-8 path")?,
            "--stdio",
            "--no-children",
            "-n",
            "--sort",
            "sym",
        ]))?;
        Ok(Profile::of(&report, packets))
    }
}

/// The groups a function's time is billed to, so that two paths' profiles
/// can be set side by side: what a pod path adds to the hosts' own lies in
/// the first five. A symbol in none of them goes to [`REST`].
const GROUPS: [&str; 5] = [
    "eBPF programs",
    "BPF map lookups",
    "FIB lookups",
    "redirects",
    "devices and receive passes",
];
const REST: &str = "the rest";

/// Which of [`GROUPS`] `symbol` is billed to, by the kernel's names.
fn group_of(symbol: &str) -> &'static str {
    const MAP_LOOKUPS: [&str; 7] = [
        "htab_map_hash",
        "lookup_nulls_elem_raw",
        "lookup_elem_raw",
        "trie_lookup_elem",
        "__htab_map_lookup_elem",
        "htab_lru_map_lookup_elem",
        "bpf_map_lookup_elem",
    ];
    const REDIRECTS: [&str; 9] = [
        "skb_do_redirect",
        "veth_peer_dev",
        "bpf_redirect",
        "bpf_redirect_peer",
        "bpf_redirect_neigh",
        "__bpf_redirect",
        "bpf_out_neigh_v4",
        "xdp_do_redirect",
        "dev_map_enqueue",
    ];
    const DEVICES: [&str; 13] = [
        "veth_xmit",
        "veth_poll",
        "veth_xdp_rcv",
        "__dev_queue_xmit",
        "dev_hard_start_xmit",
        "validate_xmit_skb",
        "netif_skb_features",
        "__netif_receive_skb_core",
        "net_rx_action",
        "process_backlog",
        "enqueue_to_backlog",
        "__netif_rx",
        "__build_skb_around",
    ];
    // The kernel suffixes some names (`.constprop.0`, `.isra.0`).
    let base = symbol.split('.').next().unwrap_or(symbol);
    if symbol.starts_with("bpf_prog_") {
        GROUPS[0]
    } else if MAP_LOOKUPS.contains(&base) {
        GROUPS[1]
    } else if base.starts_with("fib_") || base.contains("fib_lookup") {
        GROUPS[2]
    } else if REDIRECTS.contains(&base) {
        GROUPS[3]
    } else if DEVICES.contains(&base) {
        GROUPS[4]
    } else {
        REST
    }
}

/// Busy CPU time per delivered packet, by function.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Profile {
    /// The costliest functions first: (symbol, ns per packet).
    pub functions: Vec<(String, f64)>,
    /// Every busy sample billed to [`GROUPS`] and the rest, in ns per
    /// packet.
    pub groups: Vec<(&'static str, f64)>,
    /// Every busy sample, in ns per packet.
    pub busy_ns_per_packet: f64,
}

impl Profile {
    /// Reads `perf report -n --sort sym` lines (`  12.34%  567  [k] name`).
    #[expect(clippy::cast_precision_loss, reason = "sample counts fit f64 well")]
    fn of(report: &str, packets: u64) -> Self {
        let ns_per_sample = 1e9 / f64::from(FREQUENCY_HZ);
        let per_packet = |samples: u64| samples as f64 * ns_per_sample / packets.max(1) as f64;
        let mut functions: Vec<(String, u64)> = report
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                fields.next()?.strip_suffix('%')?;
                let samples = fields.next()?.parse().ok()?;
                let _kind = fields.next()?;
                let symbol = fields.collect::<Vec<_>>().join(" ");
                Some((symbol, samples))
            })
            .filter(|(symbol, _)| !IDLE.contains(&symbol.as_str()))
            .collect();
        functions.sort_by_key(|(_, samples)| std::cmp::Reverse(*samples));
        let busy = functions.iter().map(|(_, samples)| samples).sum();
        let groups = GROUPS
            .iter()
            .chain([&REST])
            .map(|&group| {
                let samples = functions
                    .iter()
                    .filter(|(symbol, _)| group_of(symbol) == group)
                    .map(|(_, samples)| samples)
                    .sum();
                (group, per_packet(samples))
            })
            .collect();
        Self {
            busy_ns_per_packet: per_packet(busy),
            groups,
            functions: functions
                .into_iter()
                .take(TOP)
                .map(|(symbol, samples)| (symbol, per_packet(samples)))
                .collect(),
        }
    }
}

/// The note for a report: each profiled path's costliest functions.
pub fn note(profiles: &[(&str, Profile)]) -> String {
    let mut out = format!(
        "Where the time goes (`--profile`: perf record -a at {FREQUENCY_HZ} Hz over the \
         generator's fixed-rate window of the last round; busy CPU ns per delivered packet, \
         idle left out):"
    );
    for (path, profile) in profiles {
        let groups: Vec<String> = profile
            .groups
            .iter()
            .map(|(group, ns)| format!("{group} {ns:.0}"))
            .collect();
        let _ = write!(
            out,
            "\n- {path}: {:.0} ns busy per packet ({}); costliest functions: ",
            profile.busy_ns_per_packet,
            groups.join(", ")
        );
        let functions: Vec<String> = profile
            .functions
            .iter()
            .map(|(symbol, ns)| format!("{symbol} {ns:.0}"))
            .collect();
        out.push_str(&functions.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_samples_into_ns_per_packet_without_idle() {
        let report = "# Overhead  Samples  Symbol\n\
            #\n\
            \x20   50.00%     997  [k] pv_native_safe_halt\n\
            \x20   30.00%     598  [k] veth_xmit\n\
            \x20   20.00%     399  [k] bpf_prog_3a5e_pod_egress\n";
        let profile = Profile::of(report, 1_000);
        // 598 samples of 1/997 s each over 1,000 packets.
        assert_eq!(profile.functions.len(), 2);
        assert_eq!(profile.functions[0].0, "veth_xmit");
        assert!((profile.functions[0].1 - 598e6 / 997.0).abs() < 1.0);
        assert!((profile.busy_ns_per_packet - 997e6 / 997.0).abs() < 1.0);
        let group = |name: &str| {
            profile
                .groups
                .iter()
                .find(|(group, _)| *group == name)
                .map(|(_, ns)| *ns)
                .unwrap()
        };
        assert!((group("eBPF programs") - 399e6 / 997.0).abs() < 1.0);
        assert!((group("devices and receive passes") - 598e6 / 997.0).abs() < 1.0);
        assert!(group("the rest").abs() < 1e-9);
    }

    #[test]
    fn bills_suffixed_kernel_names_to_their_group() {
        assert_eq!(
            group_of("__netif_receive_skb_core.constprop.0"),
            "devices and receive passes"
        );
        assert_eq!(
            group_of("validate_xmit_skb.isra.0"),
            "devices and receive passes"
        );
        assert_eq!(group_of("fib_table_lookup"), "FIB lookups");
        assert_eq!(group_of("bpf_ipv4_fib_lookup"), "FIB lookups");
        assert_eq!(group_of("htab_map_hash"), "BPF map lookups");
        assert_eq!(group_of("skb_do_redirect"), "redirects");
        assert_eq!(group_of("udp_v4_early_demux"), "the rest");
    }
}
