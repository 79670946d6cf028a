//! `cargo xtask bench cluster`: an agent joining through etcd a cluster
//! whose etcd already holds 1,000 and 10,000 leases (written directly),
//! and 10,000 beside 1,000 oversized garbage records, against `pod-net
//! apply` of the same entries; then how long a lease written to a running
//! agent's etcd takes to be programmed, how long a burst of them takes
//! to be caught up with, and the agent's memory.
use std::{
    fmt::Write as _,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use pod_net_tests::{
    Rig, RigSpec,
    cluster::{AGENT_LOG_EACH_CHANGE, Agent, Etcd, synthetic_lease},
};

use super::report::{Report, Row, Summary};

/// (leases, oversized garbage records beside them).
const SIZES: [(u32, u32); 3] = [(1_000, 0), (10_000, 0), (10_000, 1_000)];
/// A garbage record's size: twice what the agent keeps of a value.
const GARBAGE_BYTES: usize = 128 * 1024;
/// New leases written one by one to a running agent.
const LATENCY_SAMPLES: u32 = 200;
/// New leases written back to back (far faster than one at a time can
/// be programmed at 10,000), each in a revision of its own.
const BURST: u32 = 200;
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;

/// One size's figures.
struct Figures {
    size: u32,
    garbage: u32,
    agent_cold_start: Vec<f64>,
    apply: Vec<f64>,
    /// Per written lease, seconds until programmed (including etcdctl's run).
    new_lease: Vec<f64>,
    /// etcdctl put alone, seconds.
    put_alone: Vec<f64>,
    /// A burst of [`BURST`] leases, one revision each: seconds from its
    /// first write to its last lease programmed.
    burst: Vec<f64>,
    /// Agent peak RSS, KiB.
    peak_rss_kib: Vec<f64>,
}

pub fn run(rounds: usize) -> Result<Vec<Report>> {
    let rig = Rig::build(&RigSpec {
        nodes: 3,
        pods_per_node: 0,
        ..RigSpec::default()
    })?;
    let mut etcd = Etcd::start(&rig)?;
    let mut figures = Vec::new();
    for (size, garbage) in SIZES {
        let mut size_figures = Figures {
            size,
            garbage,
            agent_cold_start: Vec::new(),
            apply: Vec::new(),
            new_lease: Vec::new(),
            put_alone: Vec::new(),
            burst: Vec::new(),
            peak_rss_kib: Vec::new(),
        };
        for round in 0..rounds {
            println!(
                "bench cluster: {size} leases, {garbage} garbage records, round {}",
                round + 1
            );
            etcd.restart(true)?;
            self::round(&rig, &etcd, round == 0, &mut size_figures)?;
        }
        figures.push(size_figures);
    }
    Ok(vec![report(&figures, rounds)])
}

/// Waits (bounded) until `agent`'s log has `count` lines containing `needle`.
pub(super) fn wait_log(agent: &Agent, needle: &str, count: usize, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while agent.log_lines(needle) < count {
        if start.elapsed() > limit {
            bail!("no {needle:?} in the agent's log after {limit:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// What the agent logs (at debug level) as it programs a new node.
pub(super) const NODE_ADDED: &str = ": + node ";

/// Restarts `agent` logging each change as it makes it, and waits until
/// it says `following` again: the new-peer latencies are read from those
/// lines (the INFO ones sum up churn over 10 s). The join before it is
/// timed with the default log.
pub(super) fn log_each_change(agent: &mut Agent, following: &str) -> Result<()> {
    let lines = agent.log_lines(following);
    AGENT_LOG_EACH_CHANGE.clone_into(&mut agent.log_filter);
    agent.restart()?;
    wait_log(agent, following, lines + 1, Duration::from_mins(5))
}

fn round(rig: &Rig, etcd: &Etcd, first: bool, figures: &mut Figures) -> Result<()> {
    let size = figures.size;
    let (node, apply_node) = (rig.node(1), rig.node(2));
    for node in [node, apply_node] {
        let _ = node.pod_net(&["unload"]);
    }
    etcd.put_config(CONFIG)?;
    let leases: Vec<(String, String)> = (0..size).map(synthetic_lease).collect();
    etcd.put_many(&leases)?;
    // Garbage sorts after the leases ("g" > "1"), in pages of its own.
    let garbage = "x".repeat(GARBAGE_BYTES);
    for index in 0..figures.garbage {
        etcd.put_many(&[(
            format!("/coreos.com/network/subnets/garbage-{index:05}"),
            garbage.clone(),
        )])?;
    }

    // Cold start: from spawning the agent to all leases programmed.
    let dir = rig.scratch_dir()?.join(format!("agent-{size}"));
    let _ = fs::remove_dir_all(&dir);
    let started = Instant::now();
    let mut agent = Agent::start(
        node,
        &dir,
        &Etcd::endpoint(),
        &["--metrics-addr", "127.0.0.1:0"],
    )?;
    wait_log(
        &agent,
        &format!("following {size} other node(s)"),
        1,
        Duration::from_mins(5),
    )?;
    figures
        .agent_cold_start
        .push(started.elapsed().as_secs_f64());
    figures.peak_rss_kib.push(peak_rss_kib(&agent)?);

    if figures.garbage == 0 {
        log_each_change(&mut agent, &format!("following {size} other node(s)"))?;
        let mut index = size;
        if first {
            new_leases(&agent, etcd, &mut index, figures)?;
        }
        // A burst: the agent catches up in batches, not a lease at a time.
        let burst: Vec<(String, String)> = (index..index + BURST).map(synthetic_lease).collect();
        let programmed = agent.log_lines(NODE_ADDED);
        let started = Instant::now();
        etcd.put_each(&burst)?;
        wait_log(
            &agent,
            NODE_ADDED,
            programmed + burst.len(),
            Duration::from_mins(2),
        )?;
        figures.burst.push(started.elapsed().as_secs_f64());
    }
    drop(agent);

    // The baseline: the same entries in one `pod-net apply`.
    apply_node.load_on_underlay(&[])?;
    let file = rig.scratch_dir()?.join(format!("nodes-{size}.toml"));
    fs::write(&file, apply_file(&leases))?;
    let started = Instant::now();
    apply_node.pod_net(&["apply", "-f", &file.display().to_string()])?;
    figures.apply.push(started.elapsed().as_secs_f64());
    Ok(())
}

/// Leases written to the running agent's etcd one at a time, from lease
/// `index` on, each timed until programmed.
fn new_leases(agent: &Agent, etcd: &Etcd, index: &mut u32, figures: &mut Figures) -> Result<()> {
    for _ in 0..LATENCY_SAMPLES {
        let (key, value) = synthetic_lease(*index);
        *index += 1;
        let programmed = agent.log_lines(NODE_ADDED);
        let started = Instant::now();
        etcd.put(&key, &value)?;
        let put = started.elapsed().as_secs_f64();
        wait_log(agent, NODE_ADDED, programmed + 1, Duration::from_secs(30))?;
        figures.new_lease.push(started.elapsed().as_secs_f64());
        figures.put_alone.push(put);
    }
    Ok(())
}

fn apply_file(leases: &[(String, String)]) -> String {
    let mut text = String::new();
    for (key, value) in leases {
        let cidr = key
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .replace("-24", "/24");
        let attrs: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
        let _ = write!(
            text,
            "[[nodes]]\ncidr = \"{cidr}\"\nnode_ip = \"{}\"\nvtep_mac = \"{}\"\n\n",
            attrs["PublicIP"].as_str().unwrap_or_default(),
            attrs["BackendData"]["VtepMAC"].as_str().unwrap_or_default()
        );
    }
    text
}

/// The agent's peak resident memory (`VmHWM`).
fn peak_rss_kib(agent: &Agent) -> Result<f64> {
    #[expect(clippy::cast_precision_loss, reason = "KiB of one process")]
    Ok(agent.memory_kib("VmHWM")? as f64)
}

pub(super) fn percentile(samples: &[f64], percent: usize) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = (sorted.len() * percent).div_ceil(100).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

fn report(figures: &[Figures], rounds: usize) -> Report {
    let mut rows = Vec::new();
    let mut notes = vec![
        "Cold start: from spawning `pod-net agent --etcd-endpoints` (which loads the datapath, \
         leases a subnet and lists) to its log saying it follows every lease; baseline: one \
         `pod-net apply -f` of the same remote nodes on a loaded node."
            .to_owned(),
    ];
    for size in figures {
        let n = size.size;
        let what = if size.garbage == 0 {
            format!("{n} leases")
        } else {
            format!(
                "{n} leases + {} records of {} KiB",
                size.garbage,
                GARBAGE_BYTES / 1024
            )
        };
        rows.push(Row {
            figure: format!("join {what}"),
            unit: "s".into(),
            higher_is_better: false,
            paths: vec![
                ("agent".into(), Summary::of(size.agent_cold_start.clone())),
                ("apply".into(), Summary::of(size.apply.clone())),
            ],
        });
        rows.push(Row {
            figure: format!("agent peak RSS, {what}"),
            unit: "MiB".into(),
            higher_is_better: false,
            paths: vec![(
                "agent".into(),
                Summary::of(size.peak_rss_kib.iter().map(|kib| kib / 1024.0).collect()),
            )],
        });
        if !size.burst.is_empty() {
            rows.push(Row {
                figure: format!("burst of {BURST} leases programmed, following {n}"),
                unit: "s".into(),
                higher_is_better: false,
                paths: vec![("agent".into(), Summary::of(size.burst.clone()))],
            });
        }
        if !size.new_lease.is_empty() {
            let ms = |samples: &[f64]| samples.iter().map(|s| s * 1000.0).collect::<Vec<_>>();
            let (new, put) = (ms(&size.new_lease), ms(&size.put_alone));
            let _ = writeln!(
                notes[0],
                "\nNew lease on a running agent following {n}: p50 {:.1} ms, p99 {:.1} ms over \
                 {} leases (from starting `etcdctl put` to the agent's debug line saying it \
                 programmed the node, the agent restarted with that line on after its join; \
                 `etcdctl put` alone: p50 {:.1} ms).",
                percentile(&new, 50),
                percentile(&new, 99),
                new.len(),
                percentile(&put, 50)
            );
        }
    }
    notes.push(format!(
        "Burst: {BURST} new leases written back to back by one curl of etcd's JSON gateway, \
         each in a revision of its own, from its start to the agent's debug line saying it \
         programmed the last; the agent takes in what has arrived as one update."
    ));
    notes.push(
        "All in one rig: etcd 3.4 in the switch namespace (data on tmpfs), the agent in node 1, \
         apply in node 2. Synthetic leases point at 172.16.x.y (programmed, never sent to)."
            .into(),
    );
    Report {
        title: "Cluster: joining through etcd".into(),
        rounds,
        subject: "agent".into(),
        baselines: vec!["apply".into()],
        ratios: Vec::new(),
        rows,
        notes,
    }
}
