//! The store on the Kubernetes API (kube-rs's client): every Node is a
//! record, `nodes/<name>`, whose value is its [`NodeRecord`] and whose
//! revisions are resourceVersions. Lists go page by page at one
//! resourceVersion; a watch resumes from the last one it saw (bookmarks
//! included), and a 410 Gone means list again. Publishing a lease is a
//! merge patch of the Node's annotations through `nodes/status`, as
//! flanneld does, with the resourceVersion as its precondition. Nodes have
//! no TTL: a node leaves by deleting its annotations (`--release-lease`) or
//! when its Node is deleted.
//!
//! The calls the agent makes, which its `ClusterRole` grants: `get`, `list`
//! and `watch` on `nodes`, and `patch` on `nodes/status`. A forbidden call
//! is an error naming the verb and the resource.
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _, stream::BoxStream};
use kube::{
    Client,
    api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams},
    core::Request,
};
use log::warn;
use serde::Deserialize;

use super::node::{NodeObject, NodeRecord, created_seconds, node_key};
use crate::agent::cluster::{
    backoff::Backoff,
    store::{
        Change, LeaseGrant, Listing, Record, Store, StoreError, Value, WATCH_BATCH, Watch,
        WatchUpdate,
    },
};

/// Deadline of one call (get, patch, one page of a list).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a whole list, every page included.
const LIST_TIMEOUT: Duration = Duration::from_mins(1);
/// Nodes per page of a list.
const PAGE: u32 = 500;
/// The API server ends each watch after this long; it is opened again from
/// where it was.
const WATCH_SECONDS: u32 = 60;
/// With no event, no bookmark and no end of the watch in this long, the
/// connection is taken for dead.
const WATCH_SILENCE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 15);

const NODES: &str = "/api/v1/nodes";

/// A client of the API server.
pub struct KubeStore {
    client: Client,
}

#[derive(Deserialize)]
struct NodeList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<NodeObject>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

/// A Kubernetes error: an HTTP status and what the server said.
fn store_error(err: kube::Error, call: &str) -> StoreError {
    match err {
        kube::Error::Api(status) if status.code == 403 => StoreError::Other(format!(
            "forbidden: cannot {call} (give the agent's ServiceAccount that verb in its \
             ClusterRole): {}",
            status.message
        )),
        kube::Error::Api(status) if status.code == 401 => StoreError::Other(format!(
            "unauthorized: cannot {call}: the credentials were refused: {}",
            status.message
        )),
        kube::Error::Api(status) => StoreError::Other(format!(
            "{call}: {} {}: {}",
            status.code, status.reason, status.message
        )),
        kube::Error::HyperError(err) => StoreError::Unreachable(format!("{call}: {err}")),
        kube::Error::Service(err) => StoreError::Unreachable(format!("{call}: {err}")),
        other => StoreError::Other(format!("{call}: {other}")),
    }
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

async fn timed<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| StoreError::Timeout(limit))?
}

fn revision(resource_version: &str) -> Result<i64, StoreError> {
    resource_version.parse().map_err(|_| {
        StoreError::Other(format!(
            "resourceVersion {resource_version:?} is not a number"
        ))
    })
}

fn record(node: &NodeObject) -> Result<Record, StoreError> {
    Ok(Record {
        key: node_key(&node.metadata.name),
        value: Value::bounded(&node.record().to_bytes()),
        lease: 0,
        created: created_seconds(node.metadata.creation_timestamp.as_deref()),
        modified: revision(&node.metadata.resource_version)?,
    })
}

fn node_name(key: &str) -> Result<&str, StoreError> {
    key.strip_prefix("nodes/")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| StoreError::Other(format!("{key:?} is not a Node's key")))
}

#[allow(clippy::needless_pass_by_value)] // Used as `map_err(request_error)`.
fn request_error(err: kube::core::request::Error) -> StoreError {
    StoreError::Other(format!("building a request: {err}"))
}

impl KubeStore {
    #[must_use]
    pub const fn new(client: Client) -> Self {
        Self { client }
    }

    /// One Node as it is now, when it exists.
    pub async fn node(&self, name: &str) -> Result<Option<NodeObject>, StoreError> {
        let request = Request::new(NODES)
            .get(name, &kube::api::GetParams::default())
            .map_err(request_error)?;
        let call = async {
            match self.client.request::<NodeObject>(request).await {
                Ok(node) => Ok(Some(node)),
                Err(err) if status_code(&err) == Some(404) => Ok(None),
                Err(err) => Err(store_error(err, "get nodes")),
            }
        };
        timed(CALL_TIMEOUT, call).await
    }

    /// Every Node `params` selects, at one resourceVersion.
    async fn list_nodes(&self, params: ListParams) -> Result<Listing, StoreError> {
        let list = async {
            let mut listing = Listing::default();
            let mut token: Option<String> = None;
            loop {
                let mut page = params.clone().limit(PAGE);
                if let Some(token) = &token {
                    page = page.continue_token(token);
                }
                let request = Request::new(NODES).list(&page).map_err(request_error)?;
                let call = self.client.request::<NodeList>(request);
                let nodes = timed(CALL_TIMEOUT, async {
                    call.await.map_err(|err| store_error(err, "list nodes"))
                })
                .await?;
                if token.is_none() {
                    listing.revision = revision(&nodes.metadata.resource_version)?;
                }
                for node in &nodes.items {
                    listing.records.push(record(node)?);
                }
                match nodes
                    .metadata
                    .continue_token
                    .filter(|token| !token.is_empty())
                {
                    Some(next) => token = Some(next),
                    None => return Ok(listing),
                }
            }
        };
        timed(LIST_TIMEOUT, list).await
    }
    /// Makes the lease annotations of Node `name` those of `record`,
    /// reading it again when it changed under the patch.
    pub async fn publish(&self, name: &str, record: &NodeRecord) -> Result<(), StoreError> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let node = self
                .node(name)
                .await?
                .ok_or_else(|| StoreError::Other(format!("node {name} is not registered")))?;
            if node.record().annotations == record.annotations {
                return Ok(());
            }
            let modified = revision(&node.metadata.resource_version)?;
            if self.patch_lease(&node_key(name), modified, record).await? {
                return Ok(());
            }
        }
        Err(StoreError::Other(format!(
            "node {name} changed under each of {ATTEMPTS} patches"
        )))
    }

    /// Sets the lease annotations of the Node at `key` to `record`'s if
    /// it is still at `modified`; whether it was (a Node changed since, or
    /// gone, is not).
    async fn patch_lease(
        &self,
        key: &str,
        modified: i64,
        record: &NodeRecord,
    ) -> Result<bool, StoreError> {
        let name = node_name(key)?;
        let body = serde_json::json!({
            "metadata": {
                "resourceVersion": modified.to_string(),
                "annotations": record.annotations_patch(),
            }
        });
        let request = Request::new(NODES)
            .patch_subresource(
                "status",
                name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .map_err(request_error)?;
        let call = async {
            match self.client.request::<serde::de::IgnoredAny>(request).await {
                Ok(_) => Ok(true),
                Err(err) if matches!(status_code(&err), Some(404 | 409)) => Ok(false),
                Err(err) => Err(store_error(err, "patch nodes/status")),
            }
        };
        timed(CALL_TIMEOUT, call).await
    }
}

impl Store for KubeStore {
    type Watch = NodeWatch;

    async fn reconnect(&mut self, backoff: &mut Backoff) -> Result<(), StoreError> {
        // The client reconnects by itself: wait until a cheap call works.
        // Each new error is logged once, not at every retry.
        let mut said = None;
        loop {
            match self.list_nodes(ListParams::default().limit(1)).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    let delay = backoff.next();
                    let line = err.to_string();
                    if said.as_ref() != Some(&line) {
                        warn!("kubernetes: {line}; retrying (every {delay:?} and up)");
                        said = Some(line);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn get(&mut self, key: &str) -> Result<Option<Record>, StoreError> {
        let name = node_name(key)?;
        self.node(name).await?.as_ref().map(record).transpose()
    }

    async fn list(&mut self, prefix: &str) -> Result<Listing, StoreError> {
        match prefix.strip_prefix("nodes/") {
            Some("") => self.list_nodes(ListParams::default()).await,
            // One Node, as of now (the follow loop's look at its own).
            Some(name) => {
                self.list_nodes(ListParams::default().fields(&format!("metadata.name={name}")))
                    .await
            }
            None => Err(StoreError::Other(format!(
                "{prefix:?}: the API server lists nodes/ only"
            ))),
        }
    }

    async fn watch(&mut self, prefix: &str, revision: i64) -> Result<NodeWatch, StoreError> {
        if prefix != "nodes/" {
            return Err(StoreError::Other(format!(
                "{prefix:?}: the API server watches nodes/ only"
            )));
        }
        let mut watch = NodeWatch {
            client: self.client.clone(),
            // A watch from a resourceVersion sends what came after it.
            last: revision - 1,
            stream: None,
            lost: None,
        };
        // Opened now, so that a refusal (403) is this call's error.
        watch.lost = watch.open().await?;
        Ok(watch)
    }

    async fn grant(&mut self, _ttl: Duration) -> Result<LeaseGrant, StoreError> {
        // Nodes have no TTL: a lease lasts as long as its Node.
        Ok(LeaseGrant {
            id: 0,
            ttl: Duration::ZERO,
        })
    }

    async fn keep_alive(&mut self, _lease: i64) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn revoke(&mut self, _lease: i64) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_if_absent(
        &mut self,
        key: &str,
        _value: &[u8],
        _lease: i64,
    ) -> Result<bool, StoreError> {
        // Absent means the Node is: the kubelet registers it, not pod-net.
        Err(StoreError::Other(format!(
            "{} is not registered in the API server (deleted?); waiting for the kubelet to \
             register it again",
            node_name(key)?
        )))
    }

    async fn replace(
        &mut self,
        key: &str,
        modified: i64,
        value: &[u8],
        _lease: i64,
    ) -> Result<bool, StoreError> {
        let record: NodeRecord = serde_json::from_slice(value)
            .map_err(|err| StoreError::Other(format!("{key}: not a Node record: {err}")))?;
        self.patch_lease(key, modified, &record).await
    }

    async fn delete_if(&mut self, key: &str, modified: i64) -> Result<bool, StoreError> {
        self.patch_lease(key, modified, &NodeRecord::default())
            .await
    }
}

/// A watch of every Node.
pub struct NodeWatch {
    client: Client,
    /// The last resourceVersion seen (of an event or a bookmark).
    last: i64,
    stream: Option<BoxStream<'static, kube::Result<WatchEvent<NodeObject>>>>,
    /// Why it could not start where it was asked to (410 Gone).
    lost: Option<String>,
}

/// What one watch event comes to.
enum Event {
    Change(Change),
    /// A bookmark: only the resourceVersion moved.
    Progress,
    Lost(String),
}

impl NodeWatch {
    /// Opens the watch from `last`; `Some(why)` when it cannot start there.
    async fn open(&mut self) -> Result<Option<String>, StoreError> {
        // Bookmarks are on by default: a quiet cluster still moves `last`.
        let params = WatchParams::default().timeout(WATCH_SECONDS);
        let request = Request::new(NODES)
            .watch(&params, &self.last.to_string())
            .map_err(request_error)?;
        let opened = tokio::time::timeout(
            CALL_TIMEOUT,
            self.client.request_events::<NodeObject>(request),
        )
        .await
        .map_err(|_| StoreError::Timeout(CALL_TIMEOUT))?;
        match opened {
            Ok(stream) => {
                self.stream = Some(stream.boxed());
                Ok(None)
            }
            Err(err) if status_code(&err) == Some(410) => {
                Ok(Some(format!("resourceVersion {} is gone", self.last)))
            }
            Err(err) => Err(store_error(err, "watch nodes")),
        }
    }

    fn take(&mut self, item: kube::Result<WatchEvent<NodeObject>>) -> Result<Event, StoreError> {
        let event = match item {
            Ok(event) => event,
            Err(err) if status_code(&err) == Some(410) => {
                return Ok(Event::Lost(format!("the watch expired: {err}")));
            }
            Err(err) => return Err(store_error(err, "watch nodes")),
        };
        let (node, deleted) = match event {
            WatchEvent::Added(node) | WatchEvent::Modified(node) => (node, false),
            WatchEvent::Deleted(node) => (node, true),
            WatchEvent::Bookmark(bookmark) => {
                self.last = revision(&bookmark.metadata.resource_version)?;
                return Ok(Event::Progress);
            }
            WatchEvent::Error(status) if status.code == 410 => {
                return Ok(Event::Lost(format!(
                    "the watch expired: {}",
                    status.message
                )));
            }
            WatchEvent::Error(status) => {
                return Err(StoreError::Other(format!(
                    "watch nodes: {} {}: {}",
                    status.code, status.reason, status.message
                )));
            }
        };
        let record = record(&node)?;
        self.last = record.modified;
        Ok(Event::Change(if deleted {
            Change::Delete { key: record.key }
        } else {
            Change::Put(record)
        }))
    }
}

impl Watch for NodeWatch {
    async fn next(&mut self) -> Result<WatchUpdate, StoreError> {
        if let Some(lost) = self.lost.take() {
            return Ok(WatchUpdate::Lost(lost));
        }
        loop {
            if self.stream.is_none()
                && let Some(lost) = self.open().await?
            {
                return Ok(WatchUpdate::Lost(lost));
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let first = match tokio::time::timeout(WATCH_SILENCE, stream.next()).await {
                Err(_) => {
                    self.stream = None;
                    return Err(StoreError::Timeout(WATCH_SILENCE));
                }
                // The server ended this watch (its timeout): open the next.
                Ok(None) => {
                    self.stream = None;
                    continue;
                }
                Ok(Some(item)) => item,
            }; // Whatever else has arrived goes in the same update.
            let mut items = vec![first];
            let mut ended = false;
            while items.len() < WATCH_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(item)) => items.push(item),
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            if ended {
                self.stream = None;
            }
            let mut changes = Vec::new();
            for item in items {
                match self.take(item)? {
                    Event::Change(change) => changes.push(change),
                    Event::Progress => {}
                    Event::Lost(why) => {
                        self.stream = None;
                        return Ok(WatchUpdate::Lost(why));
                    }
                }
            }
            if !changes.is_empty() {
                return Ok(WatchUpdate::Changes {
                    changes,
                    revision: self.last,
                });
            }
        }
    }
}
