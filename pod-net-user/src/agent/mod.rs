//! `pod-net agent`: the node daemon beside a loaded datapath. It serves
//! Prometheus `/metrics`, forwards the programs' aya-log lines to its log,
//! keeps the maps in step with `--config FILE` (at start and whenever the
//! file changes), and leaves the datapath running when it stops.

pub mod beside;
mod change_log;
pub mod cluster;
pub mod metrics_server;
pub mod throttle;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::programs::ProgramInfo;
use log::{error, info, warn};
use pod_net_common::program_names;
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use self::throttle::{Throttle, ThrottledLog};
use crate::{
    datapath::pins::PinDir,
    ops::{apply, cluster_status::status_file, gc},
};

/// How often the config file's modification time is checked.
const CONFIG_POLL: Duration = Duration::from_millis(500);
/// A config that failed is tried again after `CONFIG_POLL`, doubling up to
/// this while it keeps failing.
const CONFIG_RETRY_MAX: Duration = Duration::from_secs(8);

pub struct AgentOptions {
    /// Join a cluster through etcd or Kubernetes (which also loads the
    /// datapath).
    pub cluster: Option<cluster::ClusterOptions>,
    /// Accelerate flanneld on this node (which also loads the datapath).
    pub beside: Option<beside::BesideOptions>,
    pub config: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    /// How often to run `pod-net gc`'s repairs; `None` never.
    pub gc_interval: Option<Duration>,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(pins: PinDir, options: AgentOptions) -> Result<()> {
    // netlink-packet-route warns about every attribute newer than itself.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .init();
    match (&options.cluster, &options.beside) {
        (Some(cluster), _) => cluster.validate()?,
        (None, Some(_)) => {}
        (None, None) => pins.require_loaded()?,
    }
    // Two workers: a task stuck in a system call never stops the others
    // (`/metrics` above all).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(pins, options))
}

async fn serve(pins: PinDir, mut options: AgentOptions) -> Result<()> {
    let listener = TcpListener::bind(options.metrics_addr)
        .await
        .with_context(|| format!("listening on {}", options.metrics_addr))?;
    info!(
        "serving metrics on http://{}/metrics for {}",
        listener.local_addr()?,
        pins.root().display()
    );
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let cluster = options.cluster.take();
    let beside = options.beside.take();
    let pin_dir = pins.root().display().to_string();
    let board = match (&cluster, &beside) {
        (Some(cluster), _) => Some(cluster::board::StatusBoard::new(
            cluster.store.name(),
            &pin_dir,
            Some(status_file(&cluster.subnet_file)),
        )),
        (None, Some(beside)) => Some(cluster::board::StatusBoard::new(
            "flannel",
            &pin_dir,
            Some(beside.status_file.clone()),
        )),
        (None, None) => None,
    };
    let mut tasks = vec![tokio::spawn(metrics_server::serve(
        listener,
        metrics_server::Source {
            pins: pins.clone(),
            cluster: board.clone(),
        },
    ))];
    // Joining (or finding flanneld) loads the datapath, so what needs it
    // starts after; /metrics serves meanwhile.
    if let (Some(beside), Some(board)) = (beside, board.clone()) {
        tasks.push(tokio::spawn(board.clone().heartbeat()));
        let started = tokio::select! {
            started = beside::start(pins.clone(), beside, board) => Some(started),
            _ = terminate.recv() => None,
            _ = interrupt.recv() => None,
        };
        let Some(started) = started else {
            stopped(tasks);
            return Ok(());
        };
        tasks.push(tokio::spawn(started.follow()));
    } else if let (Some(cluster), Some(board)) = (cluster, board) {
        tasks.push(tokio::spawn(board.clone().heartbeat()));
        let joined = tokio::select! {
            joined = cluster::join(&pins, cluster, board) => Some(joined),
            _ = terminate.recv() => None,
            _ = interrupt.recv() => None,
        };
        match joined {
            Some(Ok((member, target))) => tasks.push(tokio::spawn(member.follow(target))),
            Some(Err(err)) => {
                stopped(tasks);
                return Err(err.into());
            }
            None => {
                stopped(tasks);
                return Ok(());
            }
        }
    }
    tasks.push(tokio::spawn(forward_program_logs(pins.clone())));
    if let Some(path) = options.config.clone() {
        tasks.push(tokio::spawn(reconcile_forever(pins.clone(), path)));
    }
    if let Some(interval) = options.gc_interval {
        tasks.push(tokio::spawn(repair_forever(pins.clone(), interval)));
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    stopped(tasks);
    Ok(())
}

/// Ends the agent's tasks; the datapath stays.
fn stopped(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        task.abort();
    }
    info!("stopping; the datapath keeps forwarding");
}

/// Forwards what the programs log with aya-log to this process's log.
async fn forward_program_logs(pins: PinDir) {
    let logger = ProgramInfo::from_pin(pins.program(program_names::POD_EGRESS))
        .map_err(anyhow::Error::from)
        .and_then(|info| {
            let throttled = ThrottledLog::new(throttle::WINDOW);
            aya_log::EbpfLogger::init_from_id_with_logger(info.id(), throttled)
                .map_err(anyhow::Error::from)
        });
    let logger = match logger {
        Ok(logger) => logger,
        Err(err) => {
            warn!("not forwarding program logs: {err:#}");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's descriptor, which stays
    // open and the same for as long as the AsyncFd holds the logger.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut readable = match registered {
        Ok(readable) => readable,
        Err(err) => {
            warn!("not forwarding program logs: {err}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = readable.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Applies the config file now and after every change to it. Only a
/// config applied in full counts as applied: one that failed is tried
/// again, backing off while it keeps failing, until it succeeds or the file
/// changes.
async fn reconcile_forever(pins: PinDir, path: PathBuf) {
    let mut applied: Option<SystemTime> = None;
    // The failed version's modification time, and when to try it again.
    let mut failed: Option<(SystemTime, Instant)> = None;
    let mut retry = CONFIG_POLL;
    let mut log = Throttle::new(throttle::WINDOW);
    loop {
        let modified = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .ok();
        if let Some(modified) = modified.filter(|modified| Some(*modified) != applied) {
            let due = match failed {
                Some((version, not_before)) if version == modified => Instant::now() >= not_before,
                _ => {
                    retry = CONFIG_POLL;
                    true
                }
            };
            if due {
                match reconcile(&pins, &path) {
                    Ok(()) => {
                        applied = Some(modified);
                        failed = None;
                    }
                    Err(err) => {
                        let line = format!("config {} not applied: {err:#}", path.display());
                        if let Some(line) = log.admit(&line) {
                            error!("{line}");
                        }
                        failed = Some((modified, Instant::now() + retry));
                        retry = (retry * 2).min(CONFIG_RETRY_MAX);
                    }
                }
            }
        }
        tokio::time::sleep(CONFIG_POLL).await;
    }
}

/// Repairs half-done state (a killed CNI call, a pod deleted without DEL)
/// now and every `interval`, as `pod-net gc` would.
async fn repair_forever(pins: PinDir, interval: Duration) {
    let mut log = Throttle::new(throttle::WINDOW);
    loop {
        match gc::run(&pins, false) {
            Ok(repairs) => {
                for repair in repairs {
                    warn!("gc: {repair}");
                }
            }
            Err(err) => {
                if let Some(line) = log.admit(&format!("gc failed: {err:#}")) {
                    error!("{line}");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Makes the maps match the config at `path`, logging each change.
fn reconcile(pins: &PinDir, path: &Path) -> Result<()> {
    let config = apply::read(path)?;
    let changes = apply::run(pins, &config, false)?;
    for change in &changes {
        info!("config {}: {change}", path.display());
    }
    match changes.len() {
        0 => info!("config {}: nothing to change", path.display()),
        count => info!("config {}: {count} change(s) applied", path.display()),
    }
    Ok(())
}
