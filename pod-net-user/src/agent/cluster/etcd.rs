//! The store on etcd v3 (the `etcd-client` crate), tuned for etcd 3.4:
//! gRPC keep-alive no tighter than 5 s (3.4 drops faster pingers), and a
//! deadline on every unary call, so a hung etcd is noticed instead of
//! waited on forever.
use std::{path::PathBuf, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use thiserror::Error;

use super::store::{Change, LeaseGrant, Listing, Record, Store, StoreError, Watch, WatchUpdate};

/// gRPC keep-alive: a ping every 10 s, the connection dead after 5 s
/// without an answer.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(5));
/// Deadline of one unary call (get, put, grant, ...).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A connection to etcd.
pub struct Etcd {
    client: Client,
}

fn store_error(err: etcd_client::Error) -> StoreError {
    match err {
        etcd_client::Error::TransportError(err) => StoreError::Unreachable(err.to_string()),
        etcd_client::Error::GRpcStatus(status) => {
            StoreError::Other(format!("{:?}: {}", status.code(), status.message()))
        }
        other => StoreError::Other(other.to_string()),
    }
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
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let client = timed(Client::connect(endpoints, Some(options))).await?;
        let mut etcd = Self { client };
        timed(etcd.client.status()).await?;
        Ok(etcd)
    }
}

fn record(kv: &etcd_client::KeyValue) -> Record {
    Record {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
    }
}

/// A prefix watch.
pub struct EtcdWatch {
    stream: WatchStream,
}

impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<WatchUpdate, StoreError> {
        loop {
            let Some(response) = self.stream.message().await.map_err(store_error)? else {
                return Err(StoreError::Unreachable("the watch stream ended".into()));
            };
            if response.canceled() {
                // A compacted start revision arrives as a cancel after
                // "created", with the compaction's revision.
                let why = if response.compact_revision() > 0 {
                    format!("compacted up to revision {}", response.compact_revision())
                } else {
                    format!("cancelled: {}", response.cancel_reason())
                };
                return Ok(WatchUpdate::Lost(why));
            }
            if response.created() && response.events().is_empty() {
                continue;
            }
            // The last event's revision, not the header's: etcd may send a
            // catch-up batch stamped with the current revision while more
            // events are still to come, and a resume must not skip them.
            let revision = response
                .events()
                .iter()
                .filter_map(|event| event.kv().map(etcd_client::KeyValue::mod_revision))
                .max()
                .unwrap_or_else(|| {
                    response
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision)
                });
            let changes = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    Some(match event.event_type() {
                        EventType::Put => Change::Put(record(kv)),
                        EventType::Delete => Change::Delete {
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                        },
                    })
                })
                .collect();
            return Ok(WatchUpdate::Changes { changes, revision });
        }
    }
}

impl Store for Etcd {
    type Watch = EtcdWatch;

    async fn get(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        let response = timed(self.client.get(key, None)).await?;
        Ok(response.kvs().first().map(record))
    }

    async fn list(&mut self, prefix: &str) -> Result<Listing, StoreError> {
        let response = timed(
            self.client
                .get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        Ok(Listing {
            records: response.kvs().iter().map(record).collect(),
            revision: response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
        })
    }

    async fn watch(&mut self, prefix: &str, revision: i64) -> Result<EtcdWatch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let stream = timed(self.client.watch(prefix, Some(options))).await?;
        Ok(EtcdWatch { stream })
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
        expected: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, lease_option(lease))]);
        Ok(timed(self.client.txn(txn)).await?.succeeded())
    }

    async fn delete_if(&mut self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(timed(self.client.txn(txn)).await?.succeeded())
    }
}

fn lease_option(lease: i64) -> Option<PutOptions> {
    (lease != 0).then(|| PutOptions::new().with_lease(lease))
}
