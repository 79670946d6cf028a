//! Following the store: list everything under the prefix, then watch from
//! the listing's revision, and keep the remote entries (BPF maps and the
//! kernel path) equal to what [`admission`] makes of the leases. Also
//! watched: the network config (a compatible change applies, another is
//! reported) and this node's own key (written back when someone else
//! changes it).
//!
//! A record the node refuses is skipped, logged once per version, counted
//! and named in the status; it never stops the others. Memory follows the
//! live records: a skipped one costs its key and a digest.
//!
//! Store trouble is retried with a backoff that starts over once a list
//! (or a resumed watch) and a new watch have worked; meanwhile the
//! datapath forwards with the entries it has.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    time::{Duration, SystemTime},
};

use log::{error, info, warn};

use super::{
    Joined,
    admission::{self, Admission, Claim, Own},
    backoff::Backoff,
    flannel::{NetworkConfig, SchemaError, Subnet},
    lease::{self, Mended},
    store::{Change, Record, Store, StoreError, Watch as _, WatchUpdate},
    target::{Session, Target},
};
use crate::{
    agent::change_log::ChangeLog,
    node::remotes::NodeSpec,
    ops::cluster_status::{SKIPPED_SHOWN, SkippedRecord, unix_seconds},
};

/// How often a failed reconcile is tried again.
const RETRY_RECONCILE: Duration = Duration::from_secs(2);
/// How often the maps are diffed against every lease even when nothing
/// changed, undoing drift (a `node del` or `node add` by hand), and this
/// node's checks of every entry are made again.
const RESYNC: Duration = Duration::from_mins(1);

/// A subnet record as the loop keeps it.
enum Seen {
    Lease(Claim),
    /// Not a lease pod-net can use; only a digest of its value and what
    /// the status shows are kept.
    Bad {
        digest: u64,
        reason: String,
    },
}

/// What the loop knows of the store and of what it programmed.
#[derive(Default)]
struct View {
    /// The records under `subnets/`, by key.
    records: BTreeMap<String, Seen>,
    /// The store revision of `records`; 0 when they must be listed again.
    revision: i64,
    /// The entries the maps were last made to hold; `None` until a full
    /// reconcile worked (then every entry is diffed against the maps).
    programmed: Option<BTreeMap<Subnet, NodeSpec>>,
    /// The skipped records already logged and counted: key, then a digest
    /// of the version and the reason.
    reported: HashMap<String, u64>,
    /// This node's own verdict on each entry, until the next full resync.
    verdicts: HashMap<NodeSpec, Result<pod_net_common::RemoteNode, String>>,
    /// Problems the agent cannot fix itself, by topic.
    problems: BTreeMap<&'static str, String>,
    /// How many leases the last admission took.
    admitted: usize,
    /// What was programmed, for the log.
    change_log: ChangeLog,
}

/// Follows the store until the task is aborted. Never returns an error:
/// store trouble is logged and retried, and meanwhile the datapath
/// forwards with the entries it has.
pub async fn follow<S: Store>(mut joined: Joined<S>, mut target: impl Target) {
    let mut view = View::default();
    let mut backoff = Backoff::new();
    loop {
        match follow_once(&mut joined, &mut target, &mut view, &mut backoff).await {
            Ok(why) => {
                view.revision = 0;
                let delay = backoff.next();
                info!("listing again: {why} (in {delay:?})");
                tokio::time::sleep(delay).await;
            }
            Err(err) => {
                joined.board.update(|status| status.connected = false);
                let delay = backoff.next();
                warn!(
                    "{}: {err}; the datapath keeps its entries; reconnecting in {delay:?}",
                    joined.layout.store_name()
                );
                tokio::time::sleep(delay).await;
                if let Err(err) = joined.store.reconnect(&mut backoff).await {
                    error!("{err}");
                }
            }
        }
    }
}

/// After a reconnect: whether the watch can go on from where it stopped.
/// Not if the store went back in time or lost our lease (an etcd restarted
/// empty): then everything is listed again.
async fn can_resume<S: Store>(joined: &mut Joined<S>, view: &View) -> Result<bool, StoreError> {
    if view.revision == 0 {
        return Ok(false);
    }
    let key = joined.lease.key.clone();
    let own = joined.store.list(&key).await?;
    Ok(own.revision >= view.revision
        && own
            .records
            .iter()
            .any(|record| record.key == key && record.value.bytes() == Some(&joined.lease.value)))
}

/// A list (unless the watch can resume), then a watch from there, until
/// the watch is lost (`Ok`, with why) or the store fails (`Err`).
async fn follow_once<S: Store>(
    joined: &mut Joined<S>,
    target: &mut impl Target,
    view: &mut View,
    backoff: &mut Backoff,
) -> Result<String, StoreError> {
    let prefix = joined.layout.watched();
    let mut reconciled = true;
    if can_resume(joined, view).await? {
        info!("resuming the watch at revision {}", view.revision + 1);
    } else {
        let listing = joined.store.list(&prefix).await?;
        if let Some(config_key) = joined.layout.config_key() {
            let config = listing
                .records
                .iter()
                .find(|record| record.key == config_key);
            config_changed(joined, target, view, &config_key, config);
        }
        let mended = lease::ensure(&mut joined.store, &mut joined.lease, &listing).await?;
        note_mended(joined, mended);
        view.records.clear();
        for record in &listing.records {
            seen(joined, view, record);
        }
        view.revision = listing.revision;
        view.programmed = None;
        view.verdicts.clear();
        reconciled = program(joined, target, view, view.revision);
        info!(
            "following {} other node(s) under {prefix} from revision {} ({} record(s) skipped)",
            view.admitted,
            view.revision,
            view.reported.len()
        );
    }
    let mut watch = joined.store.watch(&prefix, view.revision + 1).await?;
    // Listed (or resumed) and watching: a healthy connection, whatever
    // comes next.
    backoff.reset();
    joined.board.update(|status| status.connected = true);
    let mut renew_at = tokio::time::Instant::now() + joined.lease.renew_interval();
    let mut resync_at = tokio::time::Instant::now() + RESYNC;
    loop {
        tokio::select! {
            update = watch.next() => match update? {
                WatchUpdate::Lost(why) => return Ok(why),
                WatchUpdate::Changes { changes, revision } => {
                    if let Some(why) = changed(joined, target, view, changes).await? {
                        return Ok(why);
                    }
                    view.revision = view.revision.max(revision);
                    reconciled = program(joined, target, view, revision);
                }
            },
            () = tokio::time::sleep_until(renew_at), if joined.lease.id != 0 => {
                if !joined.store.keep_alive(joined.lease.id).await? {
                    return Ok(format!("our store lease {:x} expired", joined.lease.id));
                }
                joined.board.update(|status| status.lease_expiry = joined.lease.expiry());
                renew_at = tokio::time::Instant::now() + joined.lease.renew_interval();
            },
            () = tokio::time::sleep(RETRY_RECONCILE), if !reconciled => {
                view.programmed = None;
                reconciled = program(joined, target, view, 0);
            },
            () = sleep_until_some(view.change_log.due()) => {
                view.change_log.flush(joined.layout.store_name());
            },
            () = tokio::time::sleep_until(resync_at) => {
                view.programmed = None;
                view.verdicts.clear();
                reconciled = program(joined, target, view, 0);
                resync_at = tokio::time::Instant::now() + RESYNC;
            },
        }
    }
}

/// Takes in one watch update; `Some(why)` when the loop must list again.
async fn changed<S: Store>(
    joined: &mut Joined<S>,
    target: &mut impl Target,
    view: &mut View,
    changes: Vec<Change>,
) -> Result<Option<String>, StoreError> {
    let config_key = joined.layout.config_key();
    for change in changes {
        let key = change.key().to_owned();
        if Some(&key) == config_key.as_ref() {
            let record = match &change {
                Change::Put(record) => Some(record),
                Change::Delete { .. } => None,
            };
            config_changed(joined, target, view, &key, record);
            continue;
        }
        match change {
            Change::Delete { .. } if key == joined.lease.key => {
                return Ok(Some(format!("our lease {key} was deleted")));
            }
            Change::Put(record) if key == joined.lease.key => {
                let mended = lease::restore(&mut joined.store, &mut joined.lease, &record).await?;
                note_mended(joined, mended);
            }
            Change::Put(record) => seen(joined, view, &record),
            Change::Delete { key } => {
                view.records.remove(&key);
            }
        }
    }
    Ok(None)
}

/// Files a record that may be a lease (others are not the loop's
/// business; a record that stopped being a lease is forgotten).
fn seen<S>(joined: &Joined<S>, view: &mut View, record: &Record) {
    if !joined.layout.may_hold_lease(&record.key) || record.key == joined.lease.key {
        return;
    }
    let parsed = match record.value.bytes() {
        None => Err(format!(
            "a value of {} bytes, over the {} a lease can be",
            record.value.len(),
            super::store::MAX_VALUE_BYTES
        )),
        Some(bytes) => joined
            .layout
            .peer(&record.key, bytes, joined.config.vni)
            .map_err(|err| reason(&err)),
    };
    let seen = match parsed {
        Ok(None) => {
            view.records.remove(&record.key);
            return;
        }
        Ok(Some(peer)) => Seen::Lease(Claim {
            key: record.key.clone(),
            created: record.created,
            peer,
        }),
        Err(reason) => Seen::Bad {
            digest: record.value.digest(),
            reason,
        },
    };
    view.records.insert(record.key.clone(), seen);
}

/// A schema error without the key it names (the status shows them apart).
fn reason(err: &SchemaError) -> String {
    match err {
        SchemaError::Json { reason, .. } => format!("not JSON in flannel's schema: {reason}"),
        SchemaError::Invalid { reason, .. } => reason.clone(),
        SchemaError::ForeignBackend { found, .. } => format!("backend type {found:?}, not vxlan"),
        SchemaError::Key { .. } => {
            "not a subnet key (expected <prefix>/subnets/A.B.C.D-LEN[&IPV6-LEN])".to_owned()
        }
    }
}

/// Records what happened to our own key.
fn note_mended<S>(joined: &Joined<S>, mended: Mended) {
    joined.board.update(|status| {
        status.lease_expiry = joined.lease.expiry();
        if mended == Mended::Restored {
            status.own_lease_restored += 1;
        }
    });
}

/// A change of `<prefix>/config` (`None`: deleted). A change that keeps
/// this node's VNI, port, subnet length and subnet applies at once;
/// another one needs the agent restarted, and says so until it is or the
/// config is back.
fn config_changed<S>(
    joined: &mut Joined<S>,
    target: &mut impl Target,
    view: &mut View,
    key: &str,
    record: Option<&Record>,
) {
    let running = &joined.config;
    let keeps = format!(
        "the agent keeps the config it started with (Network {}, /{} subnets, VNI {}, port {})",
        running.network, running.subnet_len, running.vni, running.port
    );
    let parsed = match record {
        None => Err(format!("{key} was deleted; {keeps}")),
        Some(record) => match record.value.bytes() {
            None => Err(format!(
                "{key} is {} bytes, too big to be a config; {keeps}",
                record.value.len()
            )),
            Some(bytes) => {
                NetworkConfig::parse(key, bytes).map_err(|err| format!("{err}; {keeps}"))
            }
        },
    };
    let problem = match parsed {
        Err(problem) => Some(problem),
        Ok(new) if new == *running => None,
        Ok(new) => {
            if let Some(why) = incompatible(running, &new, joined.lease.subnet) {
                Some(format!(
                    "{key} changed {why}: restart the agent to take it; {keeps}"
                ))
            } else {
                info!(
                    "{key} changed to Network {}, SubnetMin {}, SubnetMax {}, DirectRouting {}; \
                     applied",
                    new.network, new.subnet_min, new.subnet_max, new.direct_routing
                );
                if let Err(err) = target.config_changed(&new) {
                    error!("{err:#}");
                }
                joined.config = new;
                view.programmed = None;
                None
            }
        }
    };
    set_problem(joined, view, "config", problem);
}

/// Why this node cannot follow `new` without a restart, if it cannot.
fn incompatible(running: &NetworkConfig, new: &NetworkConfig, own: Subnet) -> Option<String> {
    if new.vni != running.vni {
        return Some(format!("VNI {} to {}", running.vni, new.vni));
    }
    if new.port != running.port {
        return Some(format!("port {} to {}", running.port, new.port));
    }
    if new.subnet_len != running.subnet_len {
        return Some(format!(
            "SubnetLen {} to {}",
            running.subnet_len, new.subnet_len
        ));
    }
    if !new.holds(own) {
        return Some(format!(
            "Network {} to {}, which does not hold this node's subnet {own}",
            running.network, new.network
        ));
    }
    None
}

/// Sets (or with `None` clears) one problem, saying so when it changes.
fn set_problem<S>(
    joined: &Joined<S>,
    view: &mut View,
    topic: &'static str,
    problem: Option<String>,
) {
    let changed = match &problem {
        Some(problem) => view.problems.get(topic) != Some(problem),
        None => view.problems.contains_key(topic),
    };
    if !changed {
        return;
    }
    if let Some(problem) = problem {
        error!("{problem}");
        view.problems.insert(topic, problem);
    } else {
        info!("{topic}: the problem is gone");
        view.problems.remove(topic);
    }
    let problems: Vec<String> = view.problems.values().cloned().collect();
    joined
        .board
        .update(|status| status.problems.clone_from(&problems));
}

/// Makes the remote entries what the leases admit, and reports the records
/// skipped, all on one locked handle on the datapath. Whether the maps now
/// match (a failure is logged, and retried by the caller with a full
/// reconcile).
fn program<S>(
    joined: &Joined<S>,
    target: &mut impl Target,
    view: &mut View,
    revision: i64,
) -> bool {
    let judged = target.session().and_then(|mut session| {
        let admission = admit(&mut *session, joined, view)?;
        Ok((session, admission))
    });
    let (mut session, admission) = match judged {
        Ok(judged) => judged,
        Err(err) => {
            error!("reading this node to check the leases: {err:#}");
            return false;
        }
    };
    report_skipped(joined, view, &admission);
    view.admitted = admission.entries.len();
    let wanted: BTreeMap<Subnet, NodeSpec> = admission
        .entries
        .into_iter()
        .map(|(subnet, (_, spec))| (subnet, spec))
        .collect();
    let result = match &view.programmed {
        Some(programmed) => {
            let removed: Vec<_> = programmed
                .iter()
                .filter(|(subnet, spec)| wanted.get(subnet) != Some(spec))
                .map(|(_, spec)| spec.cidr)
                .collect();
            let added: Vec<NodeSpec> = wanted
                .iter()
                .filter(|(subnet, spec)| programmed.get(subnet) != Some(spec))
                .map(|(_, spec)| spec.clone())
                .collect();
            session.change(&removed, added).or_else(|err| {
                // The maps drifted from what we last made them: diff all.
                warn!("{err:#}; reconciling every entry");
                session.reconcile(wanted.values().cloned().collect())
            })
        }
        None => session.reconcile(wanted.values().cloned().collect()),
    };
    match result {
        Ok(changes) => {
            view.change_log.programmed(
                joined.layout.store_name(),
                &changes,
                wanted.len(),
                (revision > 0).then_some(revision),
            );
            joined.board.update(|status| {
                status.peers = wanted.len();
                status.last_sync = Some(unix_seconds(SystemTime::now()));
                if revision > 0 {
                    status.revision = revision;
                }
            });
            view.programmed = Some(wanted);
            true
        }
        Err(err) => {
            error!("programming the peers' leases: {err:#}");
            view.programmed = None;
            false
        }
    }
}

/// The leases as [`admission`] judges them, with this node's checks of
/// each entry made once and kept until the next resync.
fn admit<S>(
    session: &mut dyn Session,
    joined: &Joined<S>,
    view: &mut View,
) -> anyhow::Result<Admission> {
    let direct_subnets = if joined.config.direct_routing {
        session.direct_subnets()?
    } else {
        Vec::new()
    };
    let claims: Vec<&Claim> = view
        .records
        .values()
        .filter_map(|seen| match seen {
            Seen::Lease(claim) => Some(claim),
            Seen::Bad { .. } => None,
        })
        .collect();
    let specs: HashSet<NodeSpec> = claims
        .iter()
        .map(|claim| admission::spec(&claim.peer, &direct_subnets))
        .collect();
    view.verdicts.retain(|spec, _| specs.contains(spec));
    let unjudged: Vec<&NodeSpec> = specs
        .iter()
        .filter(|spec| !view.verdicts.contains_key(*spec))
        .collect();
    if !unjudged.is_empty() {
        let verdicts = session.judge(&unjudged)?;
        for (spec, verdict) in unjudged.into_iter().zip(verdicts) {
            view.verdicts.insert(spec.clone(), verdict);
        }
    }
    let own = Own {
        key: joined.lease.key.clone(),
        subnet: joined.lease.subnet,
        public_ip: joined.public_ip,
    };
    Ok(admission::admit(
        &joined.config,
        &own,
        &direct_subnets,
        claims,
        |spec| match view.verdicts.get(spec) {
            Some(Ok(value)) => Ok(*value),
            Some(Err(reason)) => Err(anyhow::anyhow!("{reason}")),
            None => Err(anyhow::anyhow!("not checked")),
        },
    ))
}

/// Logs each skipped record once per version and reason, counts it, and
/// names the skipped records in the status.
fn report_skipped<S>(joined: &Joined<S>, view: &mut View, admission: &Admission) {
    // Each skipped record with what tells its versions apart.
    let mut skipped: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for (key, seen) in &view.records {
        match seen {
            Seen::Bad { digest, reason } => {
                skipped.insert(key, (*digest, reason));
            }
            Seen::Lease(claim) => {
                if let Some(reason) = admission.refused.get(key) {
                    let mut hasher = DefaultHasher::new();
                    claim.peer.hash(&mut hasher);
                    skipped.insert(key, (hasher.finish(), reason));
                }
            }
        }
    }
    let mut new = 0;
    view.reported
        .retain(|key, _| skipped.contains_key(key.as_str()));
    for (key, (version, reason)) in &skipped {
        let mut hasher = DefaultHasher::new();
        (version, reason).hash(&mut hasher);
        let digest = hasher.finish();
        if view.reported.get(*key) != Some(&digest) {
            error!("skipping {key}: {reason}");
            view.reported.insert((*key).to_owned(), digest);
            new += 1;
        }
    }
    let shown: Vec<SkippedRecord> = skipped
        .iter()
        .take(SKIPPED_SHOWN)
        .map(|(key, (_, reason))| SkippedRecord {
            key: (*key).to_owned(),
            reason: (*reason).to_owned(),
        })
        .collect();
    let count = skipped.len();
    joined.board.update(|status| {
        status.skipped_records += new;
        status.skipped_now = count;
        status.skipped = shown;
    });
}

/// Sleeps until `deadline`; forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
