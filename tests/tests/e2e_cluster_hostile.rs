//! The cluster store as hostile input: records the node must refuse, ones
//! too big to list at once, another writer on this node's own lease, a
//! changed network config; files planted where the agent writes; and what
//! `status` and `/metrics` say meanwhile. One bad record must never stop
//! the others, and nothing in the store may steer a node outside its
//! network.
use std::{fs, os::unix::fs::symlink, path::Path, time::Duration};

use pod_net_tests::{
    Node,
    cluster::{
        Agent, CONFIG, Etcd, PREFIX, SOON, agent_dir, cluster_metric, entry, lease_key,
        lease_value, remote_nodes, rig, start, store_status_of, tunnel_routes, wait_programmed,
    },
    require_root, wait_for,
};

/// A lease for a node that is never sent to (programmed only): subnet
/// `cidr`, node `192.168.100.HOST` with a VTEP MAC of its own.
fn fake(cidr: &str, host: u8) -> (String, String, String) {
    (
        cidr.to_owned(),
        format!("192.168.100.{host}"),
        format!("0e:00:00:00:aa:{host:02x}"),
    )
}

fn put_lease(etcd: &Etcd, lease: &(String, String, String)) {
    etcd.put(&lease_key(&lease.0), &lease_value(&lease.1, &lease.2))
        .unwrap();
}

fn subnets_key(name: &str) -> String {
    format!("{PREFIX}/subnets/{name}")
}

/// Waits until the agent's `/metrics` on `node` shows `value` for `name`.
fn wait_metric(node: &Node, name: &str, value: &str) {
    let mut last = None;
    let result = wait_for(&format!("{name} {value}"), SOON, || {
        last = cluster_metric(node, name);
        (last.as_deref() == Some(value)).then_some(())
    });
    assert!(result.is_ok(), "{name} is {last:?}, wanted {value}");
}

#[test]
fn hostile_leases_are_skipped_counted_and_named_while_every_other_lease_is_programmed() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let (n1, n2, n3) = (rig.node(1), rig.node(2), rig.node(3));
    let a1 = start(&rig, n1, &[]);
    let a2 = start(&rig, n2, &[]);
    let s1 = a1.wait_subnet(SOON).unwrap();
    let s2 = a2.wait_subnet(SOON).unwrap();
    let leaving = fake("10.244.240.0/24", 40);
    put_lease(&etcd, &leaving);
    wait_programmed(n1, &[entry(n2, &s2), leaving.clone()]);

    let n3_lease = lease_value(&n3.underlay_ip.to_string(), &n3.derived_vtep_mac());
    let s2_host = s2.trim_end_matches("0/24");
    // (key, value, why it is skipped)
    let hostile: Vec<(String, String, String)> = vec![
        (
            subnets_key("10.244.241.0-24"),
            lease_value("127.0.0.1", "0e:00:00:00:f1:01"),
            "node IP 127.0.0.1 is not a unicast address (loopback)".into(),
        ),
        (
            subnets_key("10.244.242.0-24"),
            lease_value("0.0.0.0", "0e:00:00:00:f1:02"),
            "node IP 0.0.0.0 is not a unicast address (\"this network\")".into(),
        ),
        (
            subnets_key("10.244.243.0-24"),
            lease_value("224.0.0.5", "0e:00:00:00:f1:03"),
            "node IP 224.0.0.5 is not a unicast address (multicast)".into(),
        ),
        (
            subnets_key("10.244.244.0-24"),
            lease_value("192.168.100.255", "0e:00:00:00:f1:04"),
            "node IP 192.168.100.255 is the broadcast address of 192.168.100.0/24 (on eth0)".into(),
        ),
        (
            subnets_key("192.168.100.0-24"),
            lease_value("192.168.100.45", "0e:00:00:00:f1:05"),
            "192.168.100.0/24 is not a /24 of Network 10.244.0.0/16".into(),
        ),
        (
            subnets_key("127.0.0.0-8"),
            lease_value("192.168.100.46", "0e:00:00:00:f1:06"),
            "127.0.0.0/8 is not a /24 of Network 10.244.0.0/16".into(),
        ),
        (
            subnets_key("10.96.0.0-12"),
            lease_value("192.168.100.47", "0e:00:00:00:f1:07"),
            "10.96.0.0/12 is not a /24 of Network 10.244.0.0/16".into(),
        ),
        (
            subnets_key(&format!("{s2_host}9-32")),
            lease_value("192.168.100.48", "0e:00:00:00:f1:08"),
            format!("{s2_host}9/32 is not a /24 of Network 10.244.0.0/16"),
        ),
        (
            subnets_key("10.244.245.0-24"),
            lease_value(&n2.underlay_ip.to_string(), "0e:00:00:00:f1:09"),
            format!(
                "node {} already has VTEP MAC {} (for {s2}); one node has one VTEP MAC, so \
                 10.244.245.0/24 cannot use 0e:00:00:00:f1:09",
                n2.underlay_ip,
                n2.derived_vtep_mac()
            ),
        ),
        (
            format!("{}&fd00:10:244::-64", lease_key(&s2)),
            n3_lease.clone(),
            format!(
                "claims {s2}, which {} holds (node {}, an older lease)",
                lease_key(&s2),
                n2.underlay_ip
            ),
        ),
        (
            format!("{}&fd00:10:245::-64", lease_key(&s1)),
            n3_lease,
            format!("claims {s1}, this node's subnet ({})", lease_key(&s1)),
        ),
    ];
    for (key, value, _) in &hostile {
        etcd.put(key, value).unwrap();
    }
    // A node leaves and another joins behind them: both are programmed.
    etcd.etcdctl(&["del", &lease_key(&leaving.0)]).unwrap();
    let joining = fake("10.244.246.0/24", 49);
    put_lease(&etcd, &joining);
    wait_programmed(n1, &[entry(n2, &s2), joining.clone()]);
    let routes = tunnel_routes(n1);
    for cidr in [&s2, &joining.0] {
        assert!(routes.contains(cidr.as_str()), "{routes}");
    }
    assert_eq!(routes.lines().count(), 2, "{routes}");

    // Each skipped record is logged once (a failing reconcile would say it
    // again every 2 s), counted, and named by `status`, which stays ok.
    std::thread::sleep(Duration::from_secs(3));
    for (key, _, why) in &hostile {
        assert_eq!(
            a1.log_lines(&format!("skipping {key}: {why}")),
            1,
            "{key}: {why}\n{}",
            a1.log_text()
        );
    }
    let count = hostile.len().to_string();
    wait_metric(n1, "skipped_records_total", &count);
    wait_metric(n1, "skipped_records", &count);
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(healthy, "{status}");
    for (key, _, why) in &hostile {
        assert!(
            status.contains(&format!("skipped:   {key}: {why}")),
            "{key}: {status}"
        );
    }

    // The key that named n2's subnet again goes: n2 keeps its subnet on
    // every node, at once (no resync).
    etcd.etcdctl(&["del", &hostile[9].0]).unwrap();
    wait_metric(n1, "skipped_records", &(hostile.len() - 1).to_string());
    assert!(remote_nodes(n1).unwrap().contains(&entry(n2, &s2)));
    let n3_entries = remote_nodes(n2).unwrap();
    assert!(
        n3_entries
            .iter()
            .all(|(_, node_ip, _)| *node_ip != n3.underlay_ip.to_string()),
        "{n3_entries:?}"
    );
    assert!(remote_nodes(n2).unwrap().contains(&entry(n1, &s1)));
}

#[test]
fn megabyte_records_neither_stop_the_list_nor_stay_in_memory() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let (n1, n2) = (rig.node(1), rig.node(2));
    let a2 = start(&rig, n2, &[]);
    let s2 = a2.wait_subnet(SOON).unwrap();
    // Four records of 1.2 MB: a list of them all is over gRPC's 4 MiB.
    let big = "x".repeat(1_200_000);
    for index in 0..4 {
        etcd.put_many(&[(subnets_key(&format!("garbage-{index}")), big.clone())])
            .unwrap();
    }
    let a1 = start(&rig, n1, &[]);
    a1.wait_subnet(SOON).unwrap();
    wait_programmed(n1, &[entry(n2, &s2)]);
    wait_metric(n1, "store_connected", "1");
    wait_metric(n1, "skipped_records_total", "4");
    assert_eq!(
        a1.log_lines("a value of 1200000 bytes, over the 65536 a lease can be"),
        4,
        "{}",
        a1.log_text()
    );

    // Forty versions of a 1.2 MB value at one key, then the key deleted:
    // the agent keeps no more than what is live.
    let before = a1.memory_kib("VmRSS").unwrap();
    for version in 0..40 {
        etcd.put_many(&[(subnets_key("garbage-x"), format!("{version}{big}"))])
            .unwrap();
    }
    let sentinel = fake("10.244.247.0/24", 50);
    put_lease(&etcd, &sentinel);
    wait_programmed(n1, &[entry(n2, &s2), sentinel]);
    wait_metric(n1, "skipped_records", "5");
    // Each version the agent saw is counted once (versions that came in
    // one watch update are one).
    let total: u64 = cluster_metric(n1, "skipped_records_total")
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=44).contains(&total), "{total}");
    etcd.etcdctl(&["del", "--prefix", &subnets_key("garbage-")])
        .unwrap();
    wait_metric(n1, "skipped_records", "0");
    let after = a1.memory_kib("VmRSS").unwrap();
    assert!(
        after < before + 16 * 1024,
        "RSS {before} KiB before, {after} KiB after 48 MB of records came and went"
    );
    assert!(
        a1.log_text().matches("reconnecting").count() == 0,
        "{}",
        a1.log_text()
    );
}

#[test]
fn a_rewritten_own_lease_is_written_back_and_reported() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let (n1, n2, n3) = (rig.node(1), rig.node(2), rig.node(3));
    let a1 = start(&rig, n1, &[]);
    let a2 = start(&rig, n2, &[]);
    let s1 = a1.wait_subnet(SOON).unwrap();
    let s2 = a2.wait_subnet(SOON).unwrap();
    wait_programmed(n2, &[entry(n1, &s1)]);
    let key = lease_key(&s1);
    let ours = etcd.get(&key).unwrap().unwrap();

    // Someone points n1's subnet at n3.
    etcd.put(
        &key,
        &lease_value(&n3.underlay_ip.to_string(), &n3.derived_vtep_mac()),
    )
    .unwrap();
    wait_for("n1's lease written back", SOON, || {
        (etcd.get(&key).unwrap().as_deref() == Some(ours.as_str())).then_some(())
    })
    .unwrap();
    // Under a live store lease, as before.
    let json = etcd.etcdctl(&["get", &key, "--write-out", "json"]).unwrap();
    let lease = serde_json::from_str::<serde_json::Value>(&json).unwrap()["kvs"][0]["lease"]
        .as_i64()
        .unwrap_or_default();
    assert_ne!(lease, 0, "{json}");
    wait_metric(n1, "own_lease_restored_total", "1");
    assert_eq!(a1.log_lines("was rewritten to say"), 1, "{}", a1.log_text());
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(healthy, "{status}");
    assert!(
        status.contains("lease:     rewritten by another writer and restored 1 time(s)"),
        "{status}"
    );
    // The peers route n1's subnet to n1 again.
    wait_programmed(n2, &[entry(n1, &s1)]);
    wait_programmed(n1, &[entry(n2, &s2)]);
}

#[test]
fn a_stray_lease_naming_this_node_does_not_move_its_subnet_on_restart() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let n1 = rig.node(1);
    // The subnet file of an earlier run: the pods are on 10.244.50.0/24.
    let dir = agent_dir(&rig, n1);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("subnet.env"), "FLANNEL_SUBNET=10.244.50.1/24\n").unwrap();
    let mut a1 = start(&rig, n1, &[]);
    wait_for("the agent to take that subnet", SOON, || {
        (a1.log_lines("leased 10.244.50.0/24 for 192.168.100.1") == 1).then_some(())
    })
    .unwrap();
    a1.kill();
    // A stray lease naming n1, listed before its own.
    let stray = lease_key("10.244.10.0/24");
    etcd.put(
        &stray,
        &lease_value(&n1.underlay_ip.to_string(), &n1.derived_vtep_mac()),
    )
    .unwrap();
    a1.restart().unwrap();
    let joined = wait_for("the restarted agent to join", SOON, || {
        (a1.log_lines("reusing the lease of") == 1).then_some(())
    });
    assert!(joined.is_ok(), "{}", a1.log_text());
    let log = a1.log_text();
    assert!(
        log.contains("reusing the lease of 192.168.100.1 on 10.244.50.0/24"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{stray} also names this node")),
        "{log}"
    );
    assert_eq!(a1.wait_subnet(SOON).unwrap(), "10.244.50.0/24");
    wait_metric(n1, "skipped_records_total", "1");
    let (status, _) = store_status_of(n1, &a1);
    assert!(
        status.contains(&format!(
            "skipped:   {stray}: names this node's address 192.168.100.1, whose lease is \
             10.244.50.0/24"
        )),
        "{status}"
    );
}

#[test]
fn config_changes_apply_when_compatible_and_are_reported_when_not() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let (n1, n2) = (rig.node(1), rig.node(2));
    let a1 = start(&rig, n1, &[]);
    let a2 = start(&rig, n2, &[]);
    a1.wait_subnet(SOON).unwrap();
    let s2 = a2.wait_subnet(SOON).unwrap();
    wait_programmed(n1, &[entry(n2, &s2)]);
    let mode_of_s2 = || {
        let list: serde_json::Value =
            serde_json::from_str(&n1.pod_net(&["node", "list", "--json"]).unwrap()).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|node| node["cidr"] == s2.as_str())
            .map(|node| node["mode"].as_str().unwrap_or_default().to_owned())
    };

    // DirectRouting on: applies at once, n2 (on the segment) goes direct.
    let direct = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    etcd.put_config(direct).unwrap();
    wait_for("n2 routed directly", SOON, || {
        (mode_of_s2().as_deref() == Some("direct")).then_some(())
    })
    .unwrap();
    assert_eq!(a1.log_lines("/coreos.com/network/config changed to"), 1);
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(healthy, "{status}");

    // Another VNI needs the agent restarted: reported, nothing changes.
    etcd.put_config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":2,"DirectRouting":true}}"#,
    )
    .unwrap();
    wait_metric(n1, "problems", "1");
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(!healthy, "{status}");
    assert!(
        status.contains(
            "the agent: /coreos.com/network/config changed VNI 1 to 2: restart the agent to \
             take it; the agent keeps the config it started with"
        ),
        "{status}"
    );
    assert_eq!(mode_of_s2().as_deref(), Some("direct"));

    // Deleted: reported the same way.
    etcd.etcdctl(&["del", &format!("{PREFIX}/config")]).unwrap();
    wait_for("the deleted config reported", SOON, || {
        store_status_of(n1, &a1)
            .0
            .contains("/coreos.com/network/config was deleted")
            .then_some(())
    })
    .unwrap();

    // Back as it runs: the problem is gone.
    etcd.put_config(direct).unwrap();
    wait_metric(n1, "problems", "0");
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(healthy, "{status}");
    assert_eq!(mode_of_s2().as_deref(), Some("direct"));
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    pod_net_tests::cmd::run("mkfifo", [path.to_str().unwrap()]).unwrap();
}

#[test]
fn planted_symlinks_and_fifos_neither_redirect_nor_hang_the_agent() {
    require_root!();
    let rig = rig(3);
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    let (n1, n3) = (rig.node(1), rig.node(3));
    let mut a1 = start(&rig, n1, &[]);
    a1.wait_subnet(SOON).unwrap();
    let pid = a1.pid().unwrap();
    let status_file = a1.subnet_file.with_file_name("cluster-status.json");
    let dir = status_file.parent().unwrap().to_owned();

    // A symlink where the status file's temporary used to go (its name
    // and the agent's pid): root must not write through it.
    let victim = dir.join("victim");
    fs::write(&victim, "root's file\n").unwrap();
    let planted = dir.join(format!("cluster-status.json.tmp.{pid}"));
    symlink(&victim, &planted).unwrap();
    let first = fake("10.244.248.0/24", 51);
    put_lease(&etcd, &first);
    wait_programmed(n1, std::slice::from_ref(&first));
    wait_metric(n1, "peers", "1");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file\n");

    // A FIFO there: writing the status must not hang the agent.
    fs::remove_file(&planted).unwrap();
    mkfifo(&planted);
    let second = fake("10.244.249.0/24", 52);
    put_lease(&etcd, &second);
    wait_programmed(n1, &[first.clone(), second.clone()]);
    wait_metric(n1, "peers", "2");
    wait_for("the status file to say 2 peers", SOON, || {
        fs::read_to_string(&status_file)
            .unwrap_or_default()
            .contains("\"peers\": 2")
            .then_some(())
    })
    .unwrap();

    // A FIFO in place of the subnet file across a restart: read without
    // blocking (it is no subnet file), then replaced.
    a1.kill();
    fs::remove_file(&a1.subnet_file).unwrap();
    mkfifo(&a1.subnet_file);
    a1.restart().unwrap();
    wait_for("the agent to write its subnet file again", SOON, || {
        fs::metadata(&a1.subnet_file)
            .is_ok_and(|meta| meta.is_file())
            .then_some(())
    })
    .unwrap();
    wait_programmed(n1, &[first, second]);

    // A directory others may write to is refused before anything starts.
    let open = rig.scratch_dir().unwrap().join("open");
    fs::create_dir_all(&open).unwrap();
    pod_net_tests::cmd::run("chmod", ["0777", open.to_str().unwrap()]).unwrap();
    let output = pod_net_tests::cmd::output_of(&mut n3.pod_net_command(&[
        "agent",
        "--etcd-endpoints",
        &Etcd::endpoint(),
        "--iface",
        "eth0",
        "--subnet-file",
        open.join("subnet.env").to_str().unwrap(),
    ]))
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is writable by others (mode 777) and not sticky"),
        "{stderr}"
    );
    assert!(!n3.pin_dir.exists(), "the datapath was loaded");
}

#[test]
fn metrics_answer_from_the_first_second_and_status_knows_a_gone_agent() {
    require_root!();
    let rig = rig(3);
    let n1 = rig.node(1);
    // No etcd yet.
    let mut a1: Agent = start(&rig, n1, &[]);
    wait_metric(n1, "store_connected", "0");
    let etcd = Etcd::start(&rig).unwrap();
    etcd.put_config(CONFIG).unwrap();
    a1.wait_subnet(SOON).unwrap();
    wait_metric(n1, "store_connected", "1");
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(healthy, "{status}");
    let pid = a1.pid().unwrap();

    // The agent dies: its file stays, and no longer speaks for it.
    a1.kill();
    let (status, healthy) = store_status_of(n1, &a1);
    assert!(!healthy, "{status}");
    assert!(
        status.contains(&format!("the agent (pid {pid}) that wrote ")),
        "{status}"
    );
    assert!(status.contains("is gone: what it says of the store is stale"));
    assert!(
        status.contains("store:     (stale) etcd connected"),
        "{status}"
    );
}
