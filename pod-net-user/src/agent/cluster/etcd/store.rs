//! The store on etcd v3 (the `etcd-client` crate), tuned for etcd 3.4:
//! gRPC keep-alive no tighter than 5 s (3.4 drops faster pingers), and a
//! deadline on every call, so a hung etcd is noticed instead of waited on
//! forever. Lists go page by page at one revision and watches take big
//! revisions in fragments (`watch`), so no answer has to fit one gRPC
//! message whatever the records hold.
use std::{path::PathBuf, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use thiserror::Error;

use super::{
    convert::{record, store_error},
    watch::EtcdWatch,
};
use crate::agent::cluster::backoff::Backoff;
use crate::agent::cluster::store::{LeaseGrant, Listing, Record, Store, StoreError, Value};

/// gRPC keep-alive: a ping every 10 s, the connection dead after 5 s
/// without an answer.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));
/// Deadline of one unary call (get, put, grant, ...).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a whole list, every page included.
const LIST_TIMEOUT: Duration = Duration::from_mins(1);

/// flanneld's TLS flags.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Bad TLS settings: these do not get better by retrying.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--etcd-certfile and --etcd-keyfile go together")]
    HalfIdentity,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// Reads the files now, so a wrong path is one clear error at start.
    pub fn load(&self) -> Result<Option<TlsOptions>, TlsError> {
        if self.is_empty() {
            return Ok(None);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err(TlsError::HalfIdentity),
        }
        Ok(Some(tls))
    }
}

/// A connection to etcd, and where to make it again.
pub struct Etcd {
    client: Client,
    endpoints: Vec<String>,
    tls: Option<TlsOptions>,
}

async fn timed<T>(
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

impl Etcd {
    /// Connects and checks that etcd answers (`Client::connect` alone does
    /// not talk to the server).
    pub async fn connect(
        endpoints: &[String],
        tls: Option<TlsOptions>,
    ) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_keep_alive(KEEP_ALIVE.0, KEEP_ALIVE.1)
            .with_keep_alive_while_idle(true)
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT);
        if let Some(tls) = tls.clone() {
            options = options.with_tls(tls);
        }
        let client = timed(Client::connect(endpoints, Some(options))).await?;
        let mut etcd = Self {
            client,
            endpoints: endpoints.to_vec(),
            tls,
        };
        timed(etcd.client.status()).await?;
        Ok(etcd)
    }

    /// Connects, retrying with `backoff` until etcd answers.
    pub async fn connect_retrying(
        endpoints: &[String],
        tls: Option<TlsOptions>,
        backoff: &mut Backoff,
    ) -> Self {
        loop {
            // Boxed: the client's connect future is large.
            match Box::pin(Self::connect(endpoints, tls.clone())).await {
                Ok(store) => return store,
                Err(err) => {
                    let delay = backoff.next();
                    log::warn!("etcd {}: {err}; retrying in {delay:?}", endpoints.join(","));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Whether a call failed because its answer did not fit one gRPC message.
fn too_large(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted)
            && status.message().contains("too large"))
}

/// Whether a read at a fixed revision failed because it was compacted.
fn compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("compacted"))
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// The key right after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Records per page of a list. Halved while a page is too big for one gRPC
/// message (hostile records can be megabytes each), doubled back after.
const PAGE: i64 = 1000;
/// Lists started again when their revision was compacted under them.
const LIST_ATTEMPTS: usize = 3;

impl Etcd {
    /// One list at one revision, page by page.
    async fn list_once(&mut self, prefix: &str) -> Result<Listing, etcd_client::Error> {
        let end = prefix_end(prefix.as_bytes());
        let mut listing = Listing::default();
        let mut from = prefix.as_bytes().to_vec();
        let mut limit = PAGE;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if listing.revision > 0 {
                options = options.with_revision(listing.revision);
            }
            let response = match self.client.get(from.clone(), Some(options.clone())).await {
                Ok(response) => response,
                Err(err) if too_large(&err) && limit > 1 => {
                    limit /= 2;
                    continue;
                }
                Err(err) if too_large(&err) => {
                    // One record over a whole message: keep its key only.
                    let response = self
                        .client
                        .get(from.clone(), Some(options.with_keys_only()))
                        .await?;
                    let Some(kv) = response.kvs().first() else {
                        return Err(err);
                    };
                    listing.records.push(Record {
                        value: Value::Dropped {
                            len: MAX_MESSAGE_BYTES,
                        },
                        ..record(kv)
                    });
                    from = successor(kv.key());
                    continue;
                }
                Err(err) => return Err(err),
            };
            if listing.revision == 0 {
                listing.revision = response
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision);
            }
            listing.records.extend(response.kvs().iter().map(record));
            match response.kvs().last() {
                Some(last) if response.more() => from = successor(last.key()),
                _ => return Ok(listing),
            }
            limit = (limit * 2).min(PAGE);
        }
    }
}

/// What one gRPC message may carry (tonic's default, which etcd's own
/// clients share).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

impl Store for Etcd {
    type Watch = EtcdWatch;

    async fn reconnect(&mut self, backoff: &mut Backoff) -> Result<(), StoreError> {
        *self = Self::connect_retrying(&self.endpoints, self.tls.clone(), backoff).await;
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        let response = timed(self.client.get(key, None)).await?;
        Ok(response.kvs().first().map(record))
    }

    async fn list(&mut self, prefix: &str) -> Result<Listing, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The deadline covers the whole list: many pages of hostile
            // records must not hold the agent longer than a hung etcd would.
            match tokio::time::timeout(LIST_TIMEOUT, self.list_once(prefix)).await {
                Ok(Ok(listing)) => return Ok(listing),
                Ok(Err(err)) if compacted(&err) && attempt < LIST_ATTEMPTS => {}
                Ok(Err(err)) => return Err(store_error(err)),
                Err(_) => return Err(StoreError::Timeout(LIST_TIMEOUT)),
            }
        }
    }

    async fn watch(&mut self, prefix: &str, revision: i64) -> Result<EtcdWatch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision)
            .with_fragment();
        let stream = timed(self.client.watch(prefix, Some(options))).await?;
        Ok(EtcdWatch::new(stream))
    }

    async fn grant(&mut self, ttl: Duration) -> Result<LeaseGrant, StoreError> {
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let response = timed(self.client.lease_grant(seconds, None)).await?;
        Ok(LeaseGrant {
            id: response.id(),
            ttl: Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0)),
        })
    }

    async fn keep_alive(&mut self, lease: i64) -> Result<bool, StoreError> {
        // One renewal per stream: renewals are minutes apart.
        match tokio::time::timeout(CALL_TIMEOUT, self.client.lease_keep_alive(lease)).await {
            Ok(Ok(_)) => Ok(true),
            // The crate turns etcd's TTL-0 answer (an unknown lease) into this.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Ok(false),
            Ok(Err(err)) => Err(store_error(err)),
            Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
        }
    }

    async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        timed(self.client.lease_revoke(lease)).await.map(drop)
    }

    async fn put_if_absent(
        &mut self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, lease_option(lease))]);
        Ok(timed(self.client.txn(txn)).await?.succeeded())
    }

    async fn replace(
        &mut self,
        key: &str,
        modified: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, modified)])
            .and_then([TxnOp::put(key, value, lease_option(lease))]);
        Ok(timed(self.client.txn(txn)).await?.succeeded())
    }

    async fn delete_if(&mut self, key: &str, modified: i64) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, modified)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(timed(self.client.txn(txn)).await?.succeeded())
    }
}

fn lease_option(lease: i64) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_exactly_a_prefix() {
        assert_eq!(prefix_end(b"/p/subnets/"), b"/p/subnets0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(successor(b"/p/a"), b"/p/a\0");
    }
}
