//! `cargo xtask bench cni`: how long `pod-net-cni` alone takes for ADD and
//! DEL, as a runtime would call it (process start included), over 200 pods
//! on one node. The goal is p99 <= 10 ms.
use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::{Node, Pod, Rig, RigSpec};
use serde_json::json;

use super::report::{Report, Row, Summary};
use crate::run::workspace_root;

const PODS: u8 = 200;

/// The ways `load --attach` can attach `pod_egress`: TCX is the default and
/// the baseline.
const TCX: &str = "pod-net-cni, --attach tcx";
const TC: &str = "pod-net-cni, --attach tc";
const MODES: [(&str, &str); 2] = [(TCX, "tcx"), (TC, "tc")];

pub fn run(rounds: usize) -> Result<Report> {
    let rig = Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: PODS,
        ..RigSpec::default()
    })?;
    let node = rig.node(1);
    node.pod_net(&["load"])?;
    let plugin = workspace_root().join("target/release/pod-net-cni");
    let netns = File::open(format!("/run/netns/{}", node.netns))?;
    let pin_dir = node.pin_dir.display().to_string();

    // Both modes on the same pods, in turn within each round: reloading
    // with --attach between them (hitless) is all that differs.
    let mut adds = vec![Vec::new(); MODES.len()];
    let mut dels = vec![Vec::new(); MODES.len()];
    for _ in 0..rounds {
        for (index, (_, mode)) in MODES.iter().enumerate() {
            node.pod_net(&["load", "--attach", mode])?;
            let (round_adds, round_dels) = add_and_del_all(node, &netns, &plugin, &pin_dir)?;
            adds[index].extend(round_adds);
            dels[index].extend(round_dels);
        }
    }
    let row = |figure: &str, samples: &[Vec<f64>]| {
        let p99: Vec<String> = MODES
            .iter()
            .zip(samples)
            .map(|((_, mode), samples)| format!("{mode} {:.2}", percentile(samples, 99)))
            .collect();
        Row {
            figure: format!("{figure} (p99 ms: {})", p99.join(", ")),
            unit: "ms".into(),
            higher_is_better: false,
            paths: MODES
                .iter()
                .zip(samples)
                .map(|((path, _), samples)| ((*path).into(), Summary::of(samples.clone())))
                .collect(),
        }
    };
    Ok(Report {
        title: format!("CNI: pod-net-cni alone, {PODS} pods"),
        rounds,
        subject: TC.into(),
        baselines: vec![TCX.into()],
        ratios: Vec::new(),
        rows: vec![row("ADD", &adds), row("DEL", &dels)],
        notes: vec![format!(
            "Wall time of one plugin process per call (start, netlink, namespace entry, map \
             update, attach or detach), {} calls each per mode; median (min–max) and p99. \
             --attach tcx makes a TCX link (which waits for an RCU grace period); --attach tc \
             a cls_bpf filter on a clsact qdisc over netlink.",
            adds[0].len()
        )],
    })
}

/// ADD then DEL of every pod, as a runtime would call the plugin: the wall
/// time of each call, in ms.
fn add_and_del_all(
    node: &Node,
    netns: &File,
    plugin: &std::path::Path,
    pin_dir: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    // Time the plugin from a thread inside the node's namespace, so the
    // child it starts is there too and no nsenter is timed.
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(Vec<f64>, Vec<f64>)> {
                // SAFETY: setns changes only this thread's namespace.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                let (mut adds, mut dels) = (Vec::new(), Vec::new());
                for pod in &node.pods {
                    adds.push(call(plugin, "ADD", pod, pin_dir)?);
                }
                for pod in &node.pods {
                    dels.push(call(plugin, "DEL", pod, pin_dir)?);
                }
                Ok((adds, dels))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
    })
}

fn call(plugin: &std::path::Path, command: &str, pod: &Pod, pin_dir: &str) -> Result<f64> {
    let sandbox = format!("/run/netns/{}", pod.netns);
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "pod-net-cni",
        "pinDir": pin_dir,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0"},
                {"name": pod.host_veth},
                {"name": "eth0", "mac": pod.mac, "sandbox": sandbox}
            ],
            "ips": [{"address": format!("{}/24", pod.ip), "interface": 2}]
        }
    });
    let started = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("bench-{}", pod.index))
        .env("CNI_NETNS", &sandbox)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pod-net-cni")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(config.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    let elapsed: Duration = started.elapsed();
    if !output.status.success() {
        bail!(
            "pod-net-cni {command} failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(elapsed.as_secs_f64() * 1e3)
}

/// The sample at `percent` percent of the sorted samples (nearest rank).
fn percentile(samples: &[f64], percent: usize) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = (sorted.len().saturating_sub(1) * percent).div_ceil(100);
    sorted.get(index).copied().unwrap_or(f64::NAN)
}
