//! `pod-net agent`: the node daemon beside a loaded datapath. It serves
//! Prometheus `/metrics`, forwards the programs' aya-log lines to its log,
//! keeps the maps in step with `--config FILE` (at start and whenever the
//! file changes), and leaves the datapath running when it stops.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::programs::ProgramInfo;
use log::{error, info, warn};
use pod_net_common::program_names;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, unix::AsyncFd},
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
};

use crate::{apply, cluster, gc, metrics, pins::PinDir};

/// How often the config file's modification time is checked.
const CONFIG_POLL: Duration = Duration::from_millis(500);

pub struct AgentOptions {
    /// Join a cluster through etcd (which also loads the datapath).
    pub cluster: Option<cluster::ClusterOptions>,
    pub config: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    /// How often to run `pod-net gc`'s repairs; `None` never.
    pub gc_interval: Option<Duration>,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(pins: PinDir, mut options: AgentOptions) -> Result<()> {
    // netlink-packet-route warns about every attribute newer than itself.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,netlink_packet_route=error"),
    )
    .init();
    let cluster = options.cluster.take();
    if cluster.is_none() {
        pins.require_loaded()?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Joining loads the datapath, so it comes before everything else.
        let joined = match cluster {
            Some(cluster) => Some(cluster::join(&pins, cluster).await?),
            None => None,
        };
        serve(pins, options, joined).await
    })
}

async fn serve(pins: PinDir, options: AgentOptions, joined: Option<cluster::Joined>) -> Result<()> {
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
    let logs = tokio::spawn(forward_program_logs(pins.clone()));
    let reconcile = options
        .config
        .clone()
        .map(|path| tokio::spawn(reconcile_forever(pins.clone(), path)));
    let repair = options
        .gc_interval
        .map(|interval| tokio::spawn(repair_forever(pins.clone(), interval)));
    let membership = joined.map(|joined| tokio::spawn(cluster::follow(pins.clone(), joined)));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let pins = pins.clone();
                    tokio::spawn(async move {
                        if let Err(err) = answer(stream, &pins).await {
                            warn!("metrics request: {err:#}");
                        }
                    });
                }
                Err(err) => warn!("accept: {err}"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    logs.abort();
    for task in [reconcile, repair, membership].into_iter().flatten() {
        task.abort();
    }
    info!("stopping; the datapath keeps forwarding");
    Ok(())
}

/// A minimal HTTP/1.1 exchange: `GET /metrics` gets the exposition, any
/// other path 404.
async fn answer(mut stream: TcpStream, pins: &PinDir) -> Result<()> {
    let mut request = vec![0u8; 4096];
    let mut read = 0;
    // Read until the end of the headers (or a full buffer).
    while read < request.len() {
        let n = stream.read(&mut request[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        if request[..read]
            .windows(4)
            .any(|window| window == b"\r\n\r\n")
        {
            break;
        }
    }
    let head = String::from_utf8_lossy(&request[..read]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = if path == "/metrics" {
        match metrics::render(pins) {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4", text),
            Err(err) => (
                "500 Internal Server Error",
                "text/plain",
                format!("{err:#}\n"),
            ),
        }
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Forwards what the programs log with aya-log to this process's log.
async fn forward_program_logs(pins: PinDir) {
    let logger = ProgramInfo::from_pin(pins.program(program_names::POD_EGRESS))
        .map_err(anyhow::Error::from)
        .and_then(|info| aya_log::EbpfLogger::init_from_id(info.id()).map_err(anyhow::Error::from));
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

/// Applies the config file now and after every change to it.
async fn reconcile_forever(pins: PinDir, path: PathBuf) {
    let mut applied: Option<SystemTime> = None;
    loop {
        let modified = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .ok();
        if modified.is_some() && modified != applied {
            reconcile(&pins, &path);
            applied = modified;
        }
        tokio::time::sleep(CONFIG_POLL).await;
    }
}

/// Repairs half-done state (a killed CNI call, a pod deleted without DEL)
/// now and every `interval`, as `pod-net gc` would.
async fn repair_forever(pins: PinDir, interval: Duration) {
    loop {
        match gc::run(&pins, false) {
            Ok(repairs) => {
                for repair in repairs {
                    warn!("gc: {repair}");
                }
            }
            Err(err) => error!("gc failed: {err:#}"),
        }
        tokio::time::sleep(interval).await;
    }
}

fn reconcile(pins: &PinDir, path: &Path) {
    let result = apply::read(path)
        .and_then(|config| apply::plan(pins, &config))
        .and_then(|changes| {
            for change in &changes {
                info!("config {}: {change}", path.display());
            }
            apply::execute(pins, &changes).map(|()| changes.len())
        });
    match result {
        Ok(0) => info!("config {}: nothing to change", path.display()),
        Ok(count) => info!("config {}: {count} change(s) applied", path.display()),
        Err(err) => error!("config {} not applied: {err:#}", path.display()),
    }
}
