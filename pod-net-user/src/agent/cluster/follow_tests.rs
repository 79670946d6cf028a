//! The follow loop against the in-memory store, on tokio's paused clock:
//! its list, watch, compaction, relist, reconnect and skip paths, and what
//! it does about this node's own lease and a changed network config,
//! without etcd or a datapath. (The end-to-end tests run the same loop
//! against a real etcd and kernel.)
use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use pod_net_common::RemoteNode;

use super::{
    Joined,
    board::StatusBoard,
    flannel::{LeaseAttrs, NetworkConfig},
    follow,
    kube::node::NodeRecord,
    layout::Layout,
    lease::OwnLease,
    memory::MemoryStore,
    store::Value,
    target::{Session, Target},
};
use crate::{
    cidr::Cidr,
    mac::MacAddr,
    node::remotes::{Mode, NodeSpec},
    ops::{apply::Change, cluster_status::ClusterStatus},
};

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const OWN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

fn key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{subnet}")
}

/// A lease of node `192.168.100.HOST`, with a VTEP MAC of its own.
fn lease(host: u8) -> String {
    LeaseAttrs::vxlan(
        Ipv4Addr::new(192, 168, 100, host),
        1,
        MacAddr([0x0e, 0, 0, 0, 0, host]),
    )
    .to_json()
}

/// What the loop programmed, as the datapath would hold it.
#[derive(Default)]
struct Recorded {
    entries: BTreeMap<Cidr, NodeSpec>,
    reconciles: usize,
    changes: usize,
    /// Node IPs this "node" refuses, as its host checks would.
    refused: HashSet<Ipv4Addr>,
    direct_subnets: Vec<Cidr>,
    configs: Vec<NetworkConfig>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Recorded>>);

impl Recorder {
    fn get(&self) -> MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
    /// How many full reconciles and changes the loop made.
    fn counts(&self) -> (usize, usize) {
        let recorded = self.get();
        (recorded.reconciles, recorded.changes)
    }

    /// The programmed prefixes and their nodes.
    fn entries(&self) -> Vec<(String, Ipv4Addr, Mode)> {
        self.get()
            .entries
            .values()
            .map(|spec| (spec.cidr.to_string(), spec.node_ip, spec.mode))
            .collect()
    }
}

impl Target for Recorder {
    fn session(&mut self) -> anyhow::Result<Box<dyn Session + '_>> {
        Ok(Box::new(self.clone()))
    }

    fn config_changed(&mut self, config: &NetworkConfig) -> anyhow::Result<()> {
        self.get().configs.push(config.clone());
        Ok(())
    }
}

impl Session for Recorder {
    fn direct_subnets(&mut self) -> anyhow::Result<Vec<Cidr>> {
        Ok(self.get().direct_subnets.clone())
    }

    fn judge(&mut self, specs: &[&NodeSpec]) -> anyhow::Result<Vec<Result<RemoteNode, String>>> {
        let recorded = self.get();
        Ok(specs
            .iter()
            .map(|spec| {
                if recorded.refused.contains(&spec.node_ip) {
                    return Err(format!("node IP {} is refused here", spec.node_ip));
                }
                Ok(RemoteNode {
                    node_ip: spec.node_ip.octets(),
                    flags: 0,
                    vtep_mac: spec.vtep_mac.map_or([0; 6], |mac| mac.0),
                    pad: [0; 2],
                })
            })
            .collect())
    }

    fn change(&mut self, removed: &[Cidr], added: Vec<NodeSpec>) -> anyhow::Result<Vec<Change>> {
        let mut recorded = self.get();
        recorded.changes += 1;
        let mut changes = Vec::new();
        for cidr in removed {
            recorded.entries.remove(cidr);
            changes.push(Change::RemoveNode { cidr: *cidr });
        }
        for spec in added {
            recorded.entries.insert(spec.cidr, spec.clone());
            changes.push(Change::AddNode(spec));
        }
        Ok(changes)
    }

    fn reconcile(&mut self, all: Vec<NodeSpec>) -> anyhow::Result<Vec<Change>> {
        let mut recorded = self.get();
        recorded.reconciles += 1;
        recorded.entries = all.iter().map(|spec| (spec.cidr, spec.clone())).collect();
        Ok(all.into_iter().map(Change::AddNode).collect())
    }
}

/// A store holding the network config and this node's lease (a
/// reservation on 10.244.1.0/24), and the loop's view of this node.
fn cluster() -> (MemoryStore, Joined<MemoryStore>, StatusBoard) {
    let store = MemoryStore::default();
    store.put(&format!("{PREFIX}/config"), CONFIG);
    let own = lease(1);
    store.put(&key("10.244.1.0-24"), &own);
    let board = StatusBoard::new("memory", "/sys/fs/bpf/test", None);
    let joined = Joined {
        layout: Layout::Etcd {
            prefix: PREFIX.to_owned(),
        },
        store: store.clone(),
        config: NetworkConfig::parse("config", CONFIG.as_bytes()).unwrap(),
        public_ip: OWN_IP,
        lease: OwnLease {
            subnet: "10.244.1.0/24".parse().unwrap(),
            key: key("10.244.1.0-24"),
            id: 0,
            ttl: Duration::ZERO,
            value: own.into_bytes(),
        },
        board: board.clone(),
    };
    (store, joined, board)
}

/// Waits (on the paused clock, so no real time passes) until `check`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("30 s (paused) and still not: {what}");
}

fn status(board: &StatusBoard) -> ClusterStatus {
    board.snapshot()
}

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, host)
}

#[tokio::test(start_paused = true)]
async fn a_list_then_the_watch_program_every_lease_and_skip_bad_records() {
    let (store, joined, board) = cluster();
    store.put(&key("10.244.2.0-24"), &lease(2));
    store.put(&key("10.244.3.0-24"), &lease(3));
    store.put(&key("10.244.9.0-24"), "not json");
    let recorder = Recorder::default();
    let task = tokio::spawn(follow(joined, recorder.clone()));

    eventually("two peers programmed", || recorder.entries().len() == 2).await;
    assert_eq!(
        recorder.entries(),
        [
            ("10.244.2.0/24".into(), ip(2), Mode::Vxlan),
            ("10.244.3.0/24".into(), ip(3), Mode::Vxlan)
        ]
    );
    assert_eq!(recorder.counts(), (1, 0));
    let now = status(&board);
    assert!(now.connected);
    assert_eq!((now.skipped_now, now.skipped_records), (1, 1));
    assert_eq!(now.skipped[0].key, key("10.244.9.0-24"));

    // Watched changes go in as changes, not full reconciles.
    store.put(&key("10.244.4.0-24"), &lease(4));
    store.delete(&key("10.244.2.0-24"));
    eventually("the watch followed", || {
        recorder.entries()
            == [
                ("10.244.3.0/24".into(), ip(3), Mode::Vxlan),
                ("10.244.4.0/24".into(), ip(4), Mode::Vxlan),
            ]
    })
    .await;
    assert_eq!(recorder.counts(), (1, 2));
    // The bad record, mended, is programmed and no longer skipped.
    store.put(&key("10.244.9.0-24"), &lease(9));
    eventually("the mended record programmed", || {
        recorder.entries().len() == 3
    })
    .await;
    assert_eq!(status(&board).skipped_now, 0);
    assert_eq!(status(&board).peers, 3);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_refused_lease_is_skipped_and_never_holds_up_the_others() {
    let (store, joined, board) = cluster();
    store.put(&key("10.244.2.0-24"), &lease(2));
    store.put(&key("10.244.3.0-24"), &lease(3));
    // Outside the network, and a node this host refuses.
    store.put(&key("10.96.0.0-12"), &lease(5));
    let recorder = Recorder::default();
    recorder.get().refused.insert(ip(3));
    let task = tokio::spawn(follow(joined, recorder.clone()));

    eventually("n2 programmed", || recorder.entries().len() == 1).await;
    eventually("both skipped", || status(&board).skipped_now == 2).await;
    let skipped = status(&board).skipped;
    assert_eq!(
        skipped
            .iter()
            .map(|record| (record.key.as_str(), record.reason.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                key("10.244.3.0-24").as_str(),
                "node IP 192.168.100.3 is refused here"
            ),
            (
                key("10.96.0.0-12").as_str(),
                "10.96.0.0/12 is not a /24 of Network 10.244.0.0/16"
            ),
        ]
    );
    // A later lease still goes in.
    store.put(&key("10.244.4.0-24"), &lease(4));
    eventually("n4 programmed", || recorder.entries().len() == 2).await;
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_watch_resumed_past_a_compaction_lists_again_and_converges() {
    let (store, joined, _board) = cluster();
    store.put(&key("10.244.2.0-24"), &lease(2));
    let recorder = Recorder::default();
    let task = tokio::spawn(follow(joined, recorder.clone()));
    eventually("n2 programmed", || recorder.entries().len() == 1).await;
    let lists = store.lists();

    // Down, changed meanwhile, compacted, and back.
    store.set_down(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.set_down(false);
    store.delete(&key("10.244.2.0-24"));
    store.put(&key("10.244.3.0-24"), &lease(3));
    store.compact();
    eventually("the new lease programmed, the gone one not", || {
        recorder.entries() == [("10.244.3.0/24".into(), ip(3), Mode::Vxlan)]
    })
    .await;
    // One list of this node's key (can the watch resume?), then the
    // whole prefix again after the compaction.
    assert_eq!(store.lists() - lists, 2);
    assert_eq!(recorder.get().reconciles, 2);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn every_outage_starts_with_the_first_wait_again() {
    let (store, joined, _board) = cluster();
    let recorder = Recorder::default();
    let task = tokio::spawn(follow(joined, recorder.clone()));
    eventually("the first list", || recorder.get().reconciles == 1).await;
    for outage in 1..=4 {
        let down_at = tokio::time::Instant::now();
        let before = store.reconnects().len();
        store.set_down(true);
        // Down long enough for the retries to back off: 0.2, 0.4, 0.8 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let attempts = store.reconnects()[before..].to_vec();
        let waits: Vec<u128> = std::iter::once(down_at)
            .chain(attempts.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800], "outage {outage}");
        store.set_down(false);
        eventually("back on the watch", || {
            store.reconnects().len() == before + 4
        })
        .await;
        // Settle on the resumed watch.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn this_nodes_lease_is_written_back_when_rewritten_or_deleted() {
    let (store, joined, board) = cluster();
    let own = joined.lease.value.clone();
    let recorder = Recorder::default();
    let task = tokio::spawn(follow(joined, recorder.clone()));
    eventually("the first list", || recorder.get().reconciles == 1).await;

    store.put(&key("10.244.1.0-24"), &lease(7));
    eventually("our lease restored", || {
        store.value(&key("10.244.1.0-24")) == Some(Value::Kept(own.clone()))
    })
    .await;
    assert_eq!(status(&board).own_lease_restored, 1);
    // Our subnet never became an entry on this node.
    assert!(recorder.entries().is_empty());

    store.delete(&key("10.244.1.0-24"));
    eventually("our lease written again", || {
        store.value(&key("10.244.1.0-24")) == Some(Value::Kept(own.clone()))
    })
    .await;
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_compatible_config_change_applies_and_another_is_a_problem_until_undone() {
    let (store, joined, board) = cluster();
    store.put(&key("10.244.2.0-24"), &lease(2));
    let recorder = Recorder::default();
    recorder.get().direct_subnets = vec!["192.168.100.0/24".parse().unwrap()];
    let task = tokio::spawn(follow(joined, recorder.clone()));
    eventually("n2 over VXLAN", || {
        recorder.entries() == [("10.244.2.0/24".into(), ip(2), Mode::Vxlan)]
    })
    .await;

    let direct = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    store.put(&format!("{PREFIX}/config"), direct);
    eventually("n2 direct", || {
        recorder.entries() == [("10.244.2.0/24".into(), ip(2), Mode::Direct)]
    })
    .await;
    let direct_routing: Vec<bool> = recorder
        .get()
        .configs
        .iter()
        .map(|config| config.direct_routing)
        .collect();
    assert_eq!(direct_routing, [true]);
    assert!(status(&board).problems.is_empty());

    store.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#,
    );
    eventually("a problem", || status(&board).problems.len() == 1).await;
    assert!(
        status(&board).problems[0].starts_with(
            "/coreos.com/network/config changed VNI 1 to 2: restart the agent to take it"
        ),
        "{:?}",
        status(&board).problems
    );
    // Nothing changed on the node.
    assert_eq!(recorder.get().configs.len(), 1);

    store.delete(&format!("{PREFIX}/config"));
    eventually("the delete reported", || {
        status(&board)
            .problems
            .first()
            .is_some_and(|problem| problem.contains("config was deleted"))
    })
    .await;
    store.put(&format!("{PREFIX}/config"), direct);
    eventually("no problem", || status(&board).problems.is_empty()).await;
    assert_eq!(
        recorder.entries(),
        [("10.244.2.0/24".into(), ip(2), Mode::Direct)]
    );
    task.abort();
}

/// A Node as the Kubernetes store hands it over: its podCIDR and, when
/// `host` is given, the lease annotations of node `192.168.100.HOST`.
fn node_record(cidr: &str, host: Option<u8>) -> String {
    let pod_cidrs = vec![cidr.to_owned()];
    let record = match host {
        Some(host) => NodeRecord::published(
            pod_cidrs,
            &LeaseAttrs::vxlan(
                Ipv4Addr::new(192, 168, 100, host),
                1,
                MacAddr([0x0e, 0, 0, 0, 0, host]),
            ),
        ),
        None => NodeRecord {
            pod_cidrs,
            ..NodeRecord::default()
        },
    };
    String::from_utf8(record.to_bytes()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn in_kubernetes_nodes_are_leases_only_while_managed_and_leaving_is_not_an_error() {
    let store = MemoryStore::default();
    let own = node_record("10.244.1.0/24", Some(1));
    store.put("nodes/n1", &own);
    store.put("nodes/n2", &node_record("10.244.2.0/24", Some(2)));
    // Joining, not managed yet: not a lease, not skipped.
    store.put("nodes/n3", &node_record("10.244.3.0/24", None));
    let board = StatusBoard::new("kubernetes", "/sys/fs/bpf/test", None);
    let joined = Joined {
        layout: Layout::Kube,
        store: store.clone(),
        config: NetworkConfig::parse("net-conf.json", CONFIG.as_bytes()).unwrap(),
        public_ip: OWN_IP,
        lease: OwnLease {
            subnet: "10.244.1.0/24".parse().unwrap(),
            key: "nodes/n1".to_owned(),
            id: 0,
            ttl: Duration::ZERO,
            value: own.into_bytes(),
        },
        board: board.clone(),
    };
    let recorder = Recorder::default();
    let task = tokio::spawn(follow(joined, recorder.clone()));
    eventually("n2 programmed", || recorder.entries().len() == 1).await;
    assert_eq!(
        recorder.entries(),
        [("10.244.2.0/24".into(), ip(2), Mode::Vxlan)]
    );
    assert_eq!(status(&board).skipped_now, 0);

    // n3 publishes its lease, and n2 takes its own away (it left).
    store.put("nodes/n3", &node_record("10.244.3.0/24", Some(3)));
    store.put("nodes/n2", &node_record("10.244.2.0/24", None));
    eventually("n3 in, n2 out", || {
        recorder.entries() == [("10.244.3.0/24".into(), ip(3), Mode::Vxlan)]
    })
    .await;
    // Annotations that are not a lease pod-net can use are skipped.
    store.put(
        "nodes/n4",
        &node_record("10.244.4.0/24", Some(4)).replace("vxlan", "host-gw"),
    );
    eventually("n4 skipped", || status(&board).skipped_now == 1).await;
    assert_eq!(status(&board).skipped[0].key, "nodes/n4");
    assert_eq!(
        status(&board).skipped[0].reason,
        "backend type \"host-gw\", not vxlan"
    );
    assert_eq!(status(&board).peers, 1);
    task.abort();
}
