//! The agent's `/metrics` endpoint: HTTP/1.1 through hyper, built so that
//! clients that connect and then do nothing cannot take the agent down.
//!
//! - Every client has [`HEADER_TIMEOUT`] to send its request headers, and
//!   no connection lives past [`CONNECTION_DEADLINE`].
//! - At most [`MAX_CONNECTIONS`] connections (fewer under a low descriptor
//!   limit) are open at once; a new one closes the oldest (and waits until
//!   it is closed), so a scraper still gets through while idle connections
//!   pile up, and they never use up the descriptors the rest of the agent
//!   needs.
//! - Accept errors back off instead of spinning; when descriptors run out
//!   anyway (EMFILE), the oldest connection is closed to give one back.
//!   Repeated log lines are throttled.
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::warn;
use rustix::process::{Resource, getrlimit};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::AbortHandle,
};

use crate::{
    agent::{
        cluster::board::StatusBoard,
        throttle::{self, Throttle},
    },
    datapath::pins::PinDir,
    ops::metrics,
};

/// How long a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this, whatever its client does (one that
/// sends its request but never reads the answer, say).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The most connections open at once, whatever the descriptor limit.
pub const MAX_CONNECTIONS: usize = 64;
/// The fewest, however low the descriptor limit is.
const MIN_CONNECTIONS: usize = 4;
/// Accept errors wait this long, doubling up to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What `/metrics` shows: the datapath's counters and maps, and the
/// cluster store's state when the agent follows one.
#[derive(Clone)]
pub struct Source {
    pub pins: PinDir,
    pub cluster: Option<StatusBoard>,
}

impl Source {
    fn render(&self) -> anyhow::Result<String> {
        // A cluster agent serves from its first second, before it has
        // loaded the datapath (etcd may be away): the store's state alone.
        let mut exposition = match (&self.cluster, self.pins.is_loaded()) {
            (Some(_), false) => String::new(),
            _ => metrics::render(&self.pins)?,
        };
        if let Some(board) = &self.cluster {
            exposition.push_str(&board.snapshot().to_prometheus());
        }
        Ok(exposition)
    }
}

/// Serves `/metrics` for `source` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, source: Source) {
    // A permit per open connection, given back when its task is gone and
    // with it the socket.
    let slots = Arc::new(Semaphore::new(connection_cap()));
    let open: Arc<Mutex<Open>> = Arc::default();
    let log = Arc::new(Mutex::new(Throttle::new(throttle::WINDOW)));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(err) => {
                warn_throttled(&log, &format!("accepting a /metrics connection: {err}"));
                if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // Out of descriptors: give one back, so the connections
                    // waiting to be accepted (a scraper among them) move on.
                    let oldest = lock(&open).connections.pop_front();
                    if let Some((_, task)) = oldest {
                        task.abort();
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            slot
        } else {
            // Full: close the oldest connection and wait until it is gone,
            // so no more than the cap (and this one) are ever open.
            let oldest = lock(&open).connections.pop_front();
            if let Some((_, task)) = oldest {
                task.abort();
            }
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            slot
        };
        let mut guard = lock(&open);
        let id = guard.next_id;
        guard.next_id += 1;
        let departure = Departure {
            id,
            open: Arc::clone(&open),
            _slot: slot,
        };
        // The task cannot finish (and unlist itself) before it is listed:
        // its departure needs this lock.
        let task = tokio::spawn(connection(
            stream,
            source.clone(),
            departure,
            Arc::clone(&log),
        ));
        guard.connections.push_back((id, task.abort_handle()));
    }
}

/// The open connections, oldest first, by id.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: VecDeque<(u64, AbortHandle)>,
}

/// Unlists a connection and frees its slot when its task ends, however it
/// ends.
struct Departure {
    id: u64,
    open: Arc<Mutex<Open>>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Departure {
    fn drop(&mut self) {
        lock(&self.open)
            .connections
            .retain(|(id, _)| *id != self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn warn_throttled(log: &Mutex<Throttle>, line: &str) {
    if let Some(line) = lock(log).admit(line) {
        warn!("{line}");
    }
}

/// A quarter of the descriptor limit, between `MIN_CONNECTIONS` and
/// `MAX_CONNECTIONS`: the rest stays for maps, netlink and the config.
fn connection_cap() -> usize {
    // No soft limit (RLIM_INFINITY) is as many as there can be.
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// One client: HTTP/1.1 with the header timeout, within the deadline.
async fn connection(
    stream: TcpStream,
    source: Source,
    _departure: Departure,
    log: Arc<Mutex<Throttle>>,
) {
    let service = service_fn(move |request| {
        let response = respond(&source, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    // One request per connection: no idle kept-alive connections to hold
    // a slot, and the deadline never cuts a second request short.
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let error = match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
        Ok(Ok(())) => return,
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("open longer than {CONNECTION_DEADLINE:?}"),
    };
    warn_throttled(&log, &format!("/metrics client dropped: {error}"));
}

/// `GET` or `HEAD /metrics` gets the exposition; another path 404, another
/// method 405.
fn respond<B>(source: &Source, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if request.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "try /metrics\n".into());
    }
    match source.render() {
        Ok(exposition) => {
            let mut response = text(StatusCode::OK, exposition);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
