//! `cargo xtask soak [--minutes 5] [--churn 20]`: the agent under an
//! operator's soak, on a 3-node rig with etcd in its switch namespace.
//! Two pods per node through the agents' conflists ping the other nodes'
//! pods all along; fake leases are put and deleted at `--churn` a second;
//! etcd is killed (SIGKILL) four times and restarted with its data after
//! 5 s; each agent is killed once and restarted, one of them after a
//! compaction made while it was down.
//!
//! It runs the release build, as the benches do. What it reports is what
//! an operator checks: pings lost, each agent's memory, descriptors and
//! log volume, the waits before each reconnect, and how soon every node's
//! entries and routes equal etcd's leases once churn stops. It fails when a ping is lost, a node does not converge,
//! or an agent's first reconnect wait after an outage is not the first
//! step of the backoff.
use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pod_net_tests::{
    Node, Rig,
    cluster::{
        Agent, ClusterPod, Etcd, PREFIX, agent_dir, ping_counts, pod_via_conflist, remote_nodes,
        synthetic_lease, try_rig, tunnel_prefixes,
    },
};

/// The fake leases in 10/8, the rig's nodes' own in 11/8.
const CONFIG: &str =
    r#"{"Network":"10.0.0.0/7","SubnetMin":"11.0.0.0","Backend":{"Type":"vxlan"}}"#;
/// Fake leases churned (each put, then deleted, then put again).
const FAKE_LEASES: u32 = 300;
/// How long etcd stays down each time.
const OUTAGE: Duration = Duration::from_secs(5);
/// Pings between pods, per pair.
const PING_INTERVAL: &str = "0.05";
/// The backoff's first wait, as the agent logs it.
const FIRST_WAIT: &str = "reconnecting in 200ms";

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long the soak runs.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Fake lease changes a second.
    #[arg(long, default_value_t = 20)]
    churn: u32,
}

/// A fault, at a share of the soak's length.
#[derive(Clone, Copy, Debug)]
enum Fault {
    EtcdDown,
    AgentKilled(usize),
    AgentDownAcrossCompaction(usize),
}

const FAULTS: [(f64, Fault); 7] = [
    (0.15, Fault::EtcdDown),
    (0.25, Fault::AgentKilled(1)),
    (0.40, Fault::EtcdDown),
    (0.50, Fault::AgentDownAcrossCompaction(2)),
    (0.65, Fault::EtcdDown),
    (0.75, Fault::AgentKilled(0)),
    (0.85, Fault::EtcdDown),
];

/// One agent's figures, sampled every 10 s.
#[derive(Default)]
struct Samples {
    rss_kib: Vec<u64>,
    fds: Vec<usize>,
}

pub fn run(args: &SoakArgs) -> Result<()> {
    if args.minutes == 0 || args.churn == 0 {
        bail!("--minutes and --churn must be at least 1");
    }
    crate::bench::release_binaries("soak")?;
    let length = Duration::from_secs(args.minutes * 60);
    println!(
        "soak: {} min, {} lease changes a second, 3 nodes, 2 pods each",
        args.minutes, args.churn
    );
    // cni0 without an address: the bridge plugin gives it the leased
    // subnet's gateway.
    let rig = try_rig(3)?;
    let etcd = Mutex::new(Etcd::start(&rig)?);
    lock(&etcd).put_config(CONFIG)?;
    let mut agents = Vec::new();
    for node in rig.nodes() {
        agents.push(Agent::start(
            node,
            &agent_dir(&rig, node),
            &Etcd::endpoint(),
            &[],
        )?);
    }
    let subnets = agents
        .iter()
        .map(|agent| agent.wait_subnet(Duration::from_secs(30)))
        .collect::<Result<Vec<String>>>()?;
    let mut pods: Vec<Vec<ClusterPod>> = Vec::new();
    for (node, agent) in rig.nodes().iter().zip(&agents) {
        pods.push(
            (0..2)
                .map(|pod| pod_via_conflist(&rig, node, agent, &format!("s{}p{pod}", node.index)))
                .collect(),
        );
    }
    converge(&rig, &lock(&etcd), &subnets, Duration::from_secs(30))?;

    // Every pod pings a pod on each other node, all along.
    let pings = start_pings(&pods, length + Duration::from_secs(10))?;
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut samples: Vec<Samples> = agents.iter().map(|_| Samples::default()).collect();
    thread::scope(|scope| {
        scope.spawn(|| churn(&etcd, args.churn, &stop, &done, &failed));
        let faulted = faults_and_samples(length, started, &etcd, &mut agents, &mut samples);
        // The churn ends however the faults went.
        stop.store(true, Ordering::Relaxed);
        faulted
    })?;

    // Once churn stops, every node holds exactly etcd's leases.
    let settled = Instant::now();
    converge(&rig, &lock(&etcd), &subnets, Duration::from_secs(30))?;
    let converged = settled.elapsed();

    let (sent_all, lost) = finish_pings(pings)?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "\nsoak: {minutes:.1} min, {} lease changes ({} refused while etcd was down), \
         {sent_all} pings, {lost} lost; every node equal to etcd {} ms after churn stopped",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        converged.as_millis()
    );
    let mut wrong_waits = Vec::new();
    for ((node, agent), samples) in rig.nodes().iter().zip(&agents).zip(&samples) {
        let log = agent.log_text();
        let first_waits: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("reconnecting in"))
            .filter_map(|line| line.rsplit("; ").next())
            .collect();
        wrong_waits.extend(
            first_waits
                .iter()
                .filter(|wait| **wait != FIRST_WAIT)
                .map(|wait| format!("node {}: {wait}", node.index)),
        );
        #[expect(clippy::cast_precision_loss, reason = "bytes of a log")]
        let per_hour = log.len() as f64 / minutes * 60.0 / 1e6;
        println!(
            "node {}: VmRSS {} KiB, fds {} (first, most, last of a sample every 10 s), \
             log {per_hour:.2} MB an hour ({} lines), first waits after outages: {}",
            node.index,
            spread(&samples.rss_kib),
            spread(&samples.fds),
            log.lines().count(),
            first_waits.join(", ")
        );
    }
    if lost > 0 {
        bail!("{lost} of {sent_all} pings lost");
    }
    if !wrong_waits.is_empty() {
        bail!("a reconnect did not start at the first wait: {wrong_waits:?}");
    }
    println!("soak: passed");
    Ok(())
}

/// Injects [`FAULTS`] at their times and samples each agent every 10 s,
/// until `length` has passed since `started`.
fn faults_and_samples(
    length: Duration,
    started: Instant,
    etcd: &Mutex<Etcd>,
    agents: &mut [Agent],
    samples: &mut [Samples],
) -> Result<()> {
    let mut faults = FAULTS.iter().peekable();
    let mut sample_at = Duration::ZERO;
    while started.elapsed() < length {
        let now = started.elapsed();
        if now >= sample_at {
            for (agent, samples) in agents.iter().zip(samples.iter_mut()) {
                if let Some(pid) = agent.pid() {
                    samples.rss_kib.push(agent.memory_kib("VmRSS")?);
                    samples
                        .fds
                        .push(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count());
                }
            }
            sample_at += Duration::from_secs(10);
        }
        if let Some((_, fault)) = faults.next_if(|(at, _)| now >= length.mul_f64(*at)) {
            inject(*fault, etcd, agents, started)?;
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Each pod pings the pod of the same number on every other node until
/// `deadline`, in the background: (pair, ping).
fn start_pings(pods: &[Vec<ClusterPod>], deadline: Duration) -> Result<Vec<(String, Child)>> {
    let mut pings = Vec::new();
    for (from_node, from) in pods.iter().enumerate() {
        for (to_node, to) in pods.iter().enumerate() {
            if from_node == to_node {
                continue;
            }
            for (pod, target) in from.iter().zip(to) {
                let pair = format!("{} -> {}", pod.ip, target.ip);
                pings.push((pair, ping_for(pod, target, deadline)?));
            }
        }
    }
    Ok(pings)
}

/// Waits for the pings: (sent, lost), each pair that lost any said.
fn finish_pings(pings: Vec<(String, Child)>) -> Result<(u64, u64)> {
    let (mut sent_all, mut lost) = (0, 0);
    for (pair, child) in pings {
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let (sent, received) =
            ping_counts(&text).with_context(|| format!("no ping summary for {pair}: {text}"))?;
        sent_all += sent;
        lost += sent - received;
        if sent != received {
            println!("soak: {pair}: {received} of {sent} answered");
        }
    }
    Ok((sent_all, lost))
}

/// `first/most/last` of samples.
fn spread<T: Ord + Copy + Default + std::fmt::Display>(samples: &[T]) -> String {
    let first = samples.first().copied().unwrap_or_default();
    let most = samples.iter().max().copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    format!("{first}/{most}/{last}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `ping` from `from` to `to` until `deadline`, in the background.
fn ping_for(from: &ClusterPod, to: &ClusterPod, deadline: Duration) -> Result<Child> {
    let netns = from
        .attachment
        .netns
        .as_deref()
        .context("a pod without a netns")?
        .trim_start_matches("/run/netns/");
    Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "ping",
            "-n",
            "-q",
            "-i",
            PING_INTERVAL,
            "-W",
            "1",
        ])
        .arg("-w")
        .arg(deadline.as_secs().to_string())
        .arg(to.ip.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ping")
}

/// Puts and deletes the fake leases in turn at `per_second`, until `stop`.
fn churn(
    etcd: &Mutex<Etcd>,
    per_second: u32,
    stop: &AtomicBool,
    done: &AtomicU64,
    failed: &AtomicU64,
) {
    let pace = Duration::from_secs(1) / per_second;
    let mut present = BTreeSet::new();
    let mut next = Instant::now();
    for operation in 0_u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let index = u32::try_from(operation % u64::from(FAKE_LEASES)).unwrap_or_default();
        let (key, value) = synthetic_lease(index);
        let result = if present.contains(&index) {
            lock(etcd).etcdctl(&["del", &key]).map(drop)
        } else {
            lock(etcd).put(&key, &value)
        };
        match result {
            Ok(()) => {
                if !present.remove(&index) {
                    present.insert(index);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        next += pace;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn inject(fault: Fault, etcd: &Mutex<Etcd>, agents: &mut [Agent], started: Instant) -> Result<()> {
    let at = started.elapsed().as_secs();
    match fault {
        Fault::EtcdDown => {
            println!("soak: {at} s: etcd SIGKILLed for {} s", OUTAGE.as_secs());
            lock(etcd).kill();
            thread::sleep(OUTAGE);
            lock(etcd).restart(false)?;
        }
        Fault::AgentKilled(index) => {
            println!(
                "soak: {at} s: node {}'s agent SIGKILLed and restarted",
                index + 1
            );
            agents[index].restart()?;
        }
        Fault::AgentDownAcrossCompaction(index) => {
            println!(
                "soak: {at} s: node {}'s agent SIGKILLed, etcd compacted, the agent restarted",
                index + 1
            );
            agents[index].kill();
            thread::sleep(Duration::from_secs(2));
            let etcd = lock(etcd);
            let status = etcd.etcdctl(&["endpoint", "status", "--write-out", "json"])?;
            let revision = serde_json::from_str::<serde_json::Value>(&status)?[0]["Status"]
                ["header"]["revision"]
                .as_i64()
                .context("no revision in etcd's status")?;
            etcd.etcdctl(&["compact", &revision.to_string()])?;
            drop(etcd);
            agents[index].restart()?;
        }
    }
    Ok(())
}

/// Waits until every node's entries and tunnel routes are exactly the
/// other nodes' leases in etcd.
fn converge(rig: &Rig, etcd: &Etcd, own: &[String], limit: Duration) -> Result<()> {
    let keys = etcd.keys(&format!("{PREFIX}/subnets/"))?;
    let started = Instant::now();
    loop {
        let mut behind = Vec::new();
        for (node, own) in rig.nodes().iter().zip(own) {
            let (entries, routes) = node_view(node)?;
            let wanted: BTreeSet<String> = keys
                .iter()
                .filter_map(|key| key.rsplit('/').next())
                .map(|subnet| subnet.replace('-', "/"))
                .filter(|subnet| subnet != own)
                .collect();
            if entries != wanted || routes != wanted {
                behind.push(format!(
                    "node {}: {} entries, {} routes, {} leases",
                    node.index,
                    entries.len(),
                    routes.len(),
                    wanted.len()
                ));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("not equal to etcd after {limit:?}: {behind:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A node's remote prefixes, in its maps and in its tunnel routes.
fn node_view(node: &Node) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
    let entries = remote_nodes(node)?
        .into_iter()
        .map(|(cidr, _, _)| cidr)
        .collect();
    let routes = tunnel_prefixes(node).into_keys().collect();
    Ok((entries, routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_come_in_order_within_the_soak() {
        let shares: Vec<f64> = FAULTS.iter().map(|(share, _)| *share).collect();
        assert!(shares.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(shares.iter().all(|share| *share > 0.0 && *share < 1.0));
    }
}
