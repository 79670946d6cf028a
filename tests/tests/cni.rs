//! pod-net-cni driven like a container runtime drives it: chained after
//! Debian's reference `bridge` and `ptp` plugins with `host-local` IPAM,
//! with libcni's semantics (see `pod_net_tests::cni`).
use std::{path::PathBuf, thread};

use pod_net_tests::{
    Node, Rig, RigSpec,
    cni::{self, Attachment, Runtime, bridge_conflist, ptp_conflist, result_ipv4},
    require_root,
    rig::sibling_binary,
};
use serde_json::{Value, json};

fn empty_node() -> Rig {
    Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .expect("build rig")
}

fn plugin_path() -> Vec<PathBuf> {
    cni::plugin_path().unwrap()
}

fn attachment(rig: &Rig, name: &str) -> Attachment {
    Attachment::in_sandbox(rig, name).unwrap()
}

fn bridge_runtime<'a>(rig: &'a Rig, node: &'a Node) -> Runtime<'a> {
    let ipam = rig.scratch_dir().unwrap().join("ipam");
    Runtime::new(
        node,
        bridge_conflist("10.244.1.0/24", &ipam, &node.pin_dir),
        plugin_path(),
    )
}

/// pod-net-cni alone, as a runtime would call it, with `env` and `config`.
fn call(node: &Node, env: &[(&str, String)], config: &Value) -> Result<String, cni::CniFailure> {
    cni::run_plugin(
        node,
        &sibling_binary("pod-net-cni"),
        env,
        config.to_string().as_bytes(),
    )
    .map_err(|err| {
        cni::failure(&err)
            .cloned()
            .unwrap_or_else(|| panic!("{err:#}"))
    })
}

fn registered(node: &Node) -> Vec<(String, String, String)> {
    let text = node.pod_net(&["pod", "list", "--json"]).unwrap();
    let pods: Vec<Value> = serde_json::from_str(&text).unwrap();
    pods.iter()
        .map(|pod| {
            (
                pod["ip"].as_str().unwrap().to_owned(),
                pod["container_id"].as_str().unwrap().to_owned(),
                pod["pod_ifname"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn bridge_chain_registers_pods_that_talk_through_the_fast_path() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let runtime = bridge_runtime(&rig, node);
    let (a, b) = (attachment(&rig, "a"), attachment(&rig, "b"));
    let result_a = runtime.add(&a).unwrap();
    let result_b = runtime.add(&b).unwrap();
    // The chain's result is bridge's, passed through byte for byte.
    assert_eq!(result_a["interfaces"][0]["name"], "cni0");
    let (ip_a, ip_b) = (
        result_ipv4(&result_a).unwrap(),
        result_ipv4(&result_b).unwrap(),
    );
    let mut expected = vec![
        (ip_a.to_string(), a.container_id.clone(), "eth0".to_owned()),
        (ip_b.to_string(), b.container_id.clone(), "eth0".to_owned()),
    ];
    expected.sort();
    assert_eq!(registered(node), expected);
    runtime.check(&a).unwrap();
    runtime.check(&b).unwrap();

    // Warm up ARP, then count: every echo request and reply is redirected.
    a.exec(&["ping", "-c", "1", "-W", "1", &ip_b.to_string()])
        .unwrap();
    let before = node.counter("redirect_local").unwrap();
    a.exec(&["ping", "-c", "5", "-i", "0.1", "-W", "1", &ip_b.to_string()])
        .unwrap();
    assert_eq!(node.counter("redirect_local").unwrap() - before, 10);

    runtime.del(&b).unwrap();
    runtime.del(&a).unwrap();
    assert!(registered(node).is_empty());
    assert!(node.pinned_links("pod_egress").unwrap().is_empty());
}

#[test]
fn ptp_chain_registers_pods_that_talk_through_the_fast_path() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let ipam = rig.scratch_dir().unwrap().join("ipam");
    let runtime = Runtime::new(
        node,
        ptp_conflist("10.245.0.0/24", &ipam, &node.pin_dir),
        plugin_path(),
    );
    let (a, b) = (attachment(&rig, "a"), attachment(&rig, "b"));
    let ip_a = result_ipv4(&runtime.add(&a).unwrap()).unwrap();
    let ip_b = result_ipv4(&runtime.add(&b).unwrap()).unwrap();
    runtime.check(&a).unwrap();

    a.exec(&["ping", "-c", "1", "-W", "1", &ip_b.to_string()])
        .unwrap();
    let before = node.counter("redirect_local").unwrap();
    b.exec(&["ping", "-c", "4", "-i", "0.1", "-W", "1", &ip_a.to_string()])
        .unwrap();
    assert_eq!(node.counter("redirect_local").unwrap() - before, 8);
    runtime.del(&a).unwrap();
    runtime.del(&b).unwrap();
    assert!(registered(node).is_empty());
}

#[test]
fn del_succeeds_twice_without_netns_after_the_veth_and_without_pins() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let runtime = bridge_runtime(&rig, node);
    let a = attachment(&rig, "a");
    runtime.add(&a).unwrap();
    runtime.del(&a).unwrap();
    // Twice, now without a cached result (no prevResult at all).
    runtime.del(&a).unwrap();

    // The sandbox (and with it the veth) is gone before DEL comes.
    let b = attachment(&rig, "b");
    runtime.add(&b).unwrap();
    let netns = b.netns.clone().unwrap();
    pod_net_tests::cmd::run(
        "ip",
        ["netns", "del", netns.trim_start_matches("/run/netns/")],
    )
    .unwrap();
    let no_netns = Attachment {
        netns: None,
        ..b.clone()
    };
    runtime.del(&no_netns).unwrap();
    assert!(registered(node).is_empty());

    // Garbage prevResult, and no datapath at all: still a success.
    let garbage = json!({"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni",
        "pinDir": node.pin_dir, "prevResult": {"ips": 5, "interfaces": "x"}});
    let env = |command: &str| {
        vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", "gone".to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
        ]
    };
    call(node, &env("DEL"), &garbage).unwrap();
    node.pod_net(&["unload"]).unwrap();
    call(node, &env("DEL"), &garbage).unwrap();
}

#[test]
fn a_late_del_does_not_remove_a_new_pod_that_reused_the_ip() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    // An IPAM range of one address, so the next pod must reuse it.
    let ipam_dir = rig.scratch_dir().unwrap().join("ipam");
    let mut conflist = bridge_conflist("10.244.1.0/24", &ipam_dir, &node.pin_dir);
    conflist["plugins"][0]["ipam"]["rangeStart"] = json!("10.244.1.7");
    conflist["plugins"][0]["ipam"]["rangeEnd"] = json!("10.244.1.7");
    let runtime = Runtime::new(node, conflist.clone(), plugin_path());
    let old = attachment(&rig, "old");
    let ip = result_ipv4(&runtime.add(&old).unwrap()).unwrap();
    // The old pod's DEL reaches IPAM but not pod-net (say, the node
    // rebooted in between); a new pod gets the same IP.
    let ipam = Runtime::new(
        node,
        json!({"cniVersion": "1.0.0", "name": "podnet-bridge", "plugins": [conflist["plugins"][0].clone()]}),
        plugin_path(),
    );
    ipam.del(&old).unwrap();
    let new = attachment(&rig, "new");
    assert_eq!(result_ipv4(&runtime.add(&new).unwrap()).unwrap(), ip);
    assert_eq!(
        registered(node),
        vec![(ip.to_string(), new.container_id.clone(), "eth0".into())]
    );
    // Now the old pod's DEL arrives late.
    let old_del = json!({"cniVersion": "1.0.0", "name": "podnet-bridge", "type": "pod-net-cni", "pinDir": node.pin_dir});
    call(
        node,
        &[
            ("CNI_COMMAND", "DEL".into()),
            ("CNI_CONTAINERID", old.container_id.clone()),
            ("CNI_IFNAME", "eth0".into()),
        ],
        &old_del,
    )
    .unwrap();
    assert_eq!(
        registered(node),
        vec![(ip.to_string(), new.container_id.clone(), "eth0".into())]
    );
    runtime.check(&new).unwrap();
}

#[test]
fn check_notices_a_pod_that_lost_its_entry() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let runtime = bridge_runtime(&rig, node);
    let a = attachment(&rig, "a");
    let ip = result_ipv4(&runtime.add(&a).unwrap()).unwrap();
    runtime.check(&a).unwrap();
    node.pod_net(&["pod", "del", "--ip", &ip.to_string()])
        .unwrap();
    let error = runtime.check(&a).unwrap_err();
    let failure = cni::failure(&error).expect("a CNI error");
    assert_eq!(failure.code, Some(100), "{failure}");
    assert!(failure.msg.contains("is not registered"), "{failure}");
}

#[test]
fn gc_removes_what_the_runtime_no_longer_has() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let runtime = bridge_runtime(&rig, node);
    let pods: Vec<Attachment> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| attachment(&rig, name))
        .collect();
    let ips: Vec<String> = pods
        .iter()
        .map(|pod| result_ipv4(&runtime.add(pod).unwrap()).unwrap().to_string())
        .collect();
    // A hand-registered entry (no container ID) is not GC's to remove.
    let gc = |key: &str, keep: &[&Attachment]| {
        let valid: Vec<Value> = keep
            .iter()
            .map(|pod| json!({"containerID": pod.container_id, "ifname": pod.ifname}))
            .collect();
        let config = json!({"cniVersion": "1.1.0", "name": "podnet-bridge", "type": "pod-net-cni",
            "pinDir": node.pin_dir, key: valid});
        call(node, &[("CNI_COMMAND", "GC".into())], &config).unwrap();
    };
    // d is still valid to the runtime, but its interface vanished without
    // a DEL: GC removes what has no veth left.
    pods[3].exec(&["ip", "link", "del", "eth0"]).unwrap();
    gc("cni.dev/valid-attachments", &[&pods[0], &pods[2], &pods[3]]);
    let left: Vec<String> = registered(node).into_iter().map(|(ip, _, _)| ip).collect();
    let mut expected = vec![ips[0].clone(), ips[2].clone()];
    expected.sort();
    assert_eq!(left, expected);
    gc("cni.dev/attachments", &[&pods[2]]);
    let left: Vec<String> = registered(node).into_iter().map(|(ip, _, _)| ip).collect();
    assert_eq!(left, vec![ips[2].clone()]);
    // Nothing half-done is left behind: no orphan attachment, no stale pin.
    assert!(
        node.pod_net_command(&["status"])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn thirty_two_parallel_adds_and_dels_leave_consistent_maps() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let runtime = bridge_runtime(&rig, node);
    let pods: Vec<Attachment> = (0..32)
        .map(|i| attachment(&rig, &format!("p{i}")))
        .collect();
    let results: Vec<Value> = thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(|| runtime.add(pod)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap().unwrap())
            .collect()
    });
    let mut expected: Vec<(String, String, String)> = pods
        .iter()
        .zip(&results)
        .map(|(pod, result)| {
            (
                result_ipv4(result).unwrap().to_string(),
                pod.container_id.clone(),
                "eth0".to_owned(),
            )
        })
        .collect();
    expected.sort();
    let mut listed = registered(node);
    listed.sort();
    assert_eq!(listed, expected);
    let status = node.pod_net(&["status"]).unwrap();
    assert!(status.contains("health:    ok"), "{status}");
    assert!(status.contains("pod_egress (id"), "{status}");

    thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(|| runtime.del(pod)))
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
    });
    assert!(registered(node).is_empty());
    assert!(node.pinned_links("pod_egress").unwrap().is_empty());
}

#[test]
fn bad_input_gets_the_cni_error_code_it_should() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    let plugin = sibling_binary("pod-net-cni");
    let raw = |env: &[(&str, String)], stdin: &[u8]| {
        cni::run_plugin(node, &plugin, env, stdin)
            .map_err(|err| cni::failure(&err).cloned().unwrap())
    };
    let add_env = vec![
        ("CNI_COMMAND", "ADD".to_owned()),
        ("CNI_CONTAINERID", "c1".to_owned()),
        ("CNI_NETNS", "/run/netns/nope".to_owned()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/usr/lib/cni".to_owned()),
    ];
    let good =
        json!({"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni", "pinDir": node.pin_dir});

    let code = |result: Result<String, cni::CniFailure>| {
        let failure = result.unwrap_err();
        assert_eq!(failure.exit_code, Some(1), "{failure}");
        let error: Value = serde_json::from_str(&failure.stdout).unwrap();
        assert!(error["msg"].as_str().is_some_and(|msg| !msg.is_empty()));
        assert!(error["cniVersion"].is_string());
        failure.code.unwrap()
    };
    assert_eq!(code(raw(&add_env, b"{not json")), 6);
    assert_eq!(
        code(raw(&add_env, br#"{"name": "n", "type": "pod-net-cni"}"#)),
        7
    );
    assert_eq!(
        code(raw(
            &add_env,
            br#"{"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni", "pinDir": 5}"#
        )),
        7
    );
    assert_eq!(
        code(raw(
            &add_env,
            br#"{"cniVersion": "0.2.0", "name": "n", "type": "pod-net-cni"}"#
        )),
        1
    );
    assert_eq!(
        code(raw(&add_env, good.to_string().as_bytes())),
        7,
        "no prevResult"
    );
    assert_eq!(
        code(raw(&[], good.to_string().as_bytes())),
        4,
        "no CNI_COMMAND"
    );
    assert_eq!(
        code(raw(
            &[("CNI_COMMAND", "FROB".into())],
            good.to_string().as_bytes()
        )),
        4
    );
    let no_container: Vec<_> = add_env
        .iter()
        .filter(|(name, _)| *name != "CNI_CONTAINERID")
        .cloned()
        .collect();
    assert_eq!(code(raw(&no_container, good.to_string().as_bytes())), 4);
    // STATUS: 50 until pod-net is loaded, then fine.
    assert_eq!(
        code(raw(
            &[("CNI_COMMAND", "STATUS".into())],
            good.to_string().as_bytes()
        )),
        50
    );
    node.pod_net(&["load"]).unwrap();
    raw(
        &[("CNI_COMMAND", "STATUS".into())],
        good.to_string().as_bytes(),
    )
    .unwrap();
    let version: Value =
        serde_json::from_str(&raw(&[("CNI_COMMAND", "VERSION".into())], b"").unwrap()).unwrap();
    assert_eq!(
        version["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn add_before_pod_net_is_loaded_says_try_again_later() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    let runtime = bridge_runtime(&rig, node);
    let a = attachment(&rig, "a");
    let error = runtime.add(&a).unwrap_err();
    let failure = cni::failure(&error).expect("a CNI error");
    assert_eq!(failure.code, Some(11), "{failure}");
    assert!(failure.msg.contains("not loaded"), "{failure}");
}

/// A full `local_endpoints` is no I/O failure: pods going frees room, so
/// the runtime is told to try again later, and the map keeps its pod.
#[test]
fn add_to_a_full_node_says_try_again_later() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load", "--max-pods", "1"]).unwrap();
    let runtime = bridge_runtime(&rig, node);
    let (a, b) = (attachment(&rig, "a"), attachment(&rig, "b"));
    runtime.add(&a).unwrap();
    let error = runtime.add(&b).unwrap_err();
    let failure = cni::failure(&error).expect("a CNI error");
    assert_eq!(failure.code, Some(11), "{failure}");
    assert!(
        failure.msg.starts_with("registering 10.244.1.")
            && failure.msg.ends_with(
                ": local_endpoints is full (1 entries); remove stale entries, or unload and \
                 load again with a larger pod capacity"
            ),
        "{failure}"
    );
    assert_eq!(registered(node).len(), 1);
}

#[test]
fn dual_stack_pods_are_registered_with_both_addresses() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node: 0,
        ipv6: true,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    // host-local with an IPv4 and an IPv6 range, as a dual-stack cluster
    // configures it.
    let ipam = rig.scratch_dir().unwrap().join("ipam");
    let mut conflist = bridge_conflist("10.244.1.0/24", &ipam, &node.pin_dir);
    conflist["plugins"][0]["ipam"] = json!({
        "type": "host-local",
        "dataDir": ipam,
        "ranges": [
            [{"subnet": "10.244.1.0/24"}],
            [{"subnet": "fd00:10:244:1::/64"}],
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    });
    let runtime = Runtime::new(node, conflist, plugin_path());
    let (a, b) = (attachment(&rig, "a"), attachment(&rig, "b"));
    let ips = |result: &Value| -> Vec<String> {
        result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| {
                ip["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let a_ips = ips(&runtime.add(&a).unwrap());
    let b_ips = ips(&runtime.add(&b).unwrap());
    assert_eq!((a_ips.len(), b_ips.len()), (2, 2), "{a_ips:?} {b_ips:?}");

    // Four entries, each owned by its container.
    let mut expected: Vec<(String, String, String)> = a_ips
        .iter()
        .map(|ip| (ip.clone(), a.container_id.clone(), "eth0".to_owned()))
        .chain(
            b_ips
                .iter()
                .map(|ip| (ip.clone(), b.container_id.clone(), "eth0".to_owned())),
        )
        .collect();
    expected.sort();
    let mut got = registered(node);
    got.sort();
    assert_eq!(got, expected);
    runtime.check(&a).unwrap();

    // Both families take the fast path.
    for b_ip in &b_ips {
        let before = node.counter("redirect_local").unwrap();
        a.exec(&["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", b_ip])
            .unwrap();
        assert!(
            node.counter("redirect_local").unwrap() - before >= 6,
            "{b_ip}"
        );
    }

    runtime.del(&a).unwrap();
    runtime.del(&b).unwrap();
    assert!(registered(node).is_empty());
}

#[test]
fn a_bad_pin_dir_is_bad_config_not_try_again() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    let ipam = rig.scratch_dir().unwrap().join("ipam");
    let missing = std::env::temp_dir().join(format!("{}-no-pins", rig.id()));
    let missing_text = missing.to_str().unwrap();
    for (index, (pin_dir, why)) in [
        (
            "relative/pins",
            "pin dir relative/pins is not an absolute path".to_owned(),
        ),
        (
            "/sys/fs/bpf/../../tmp/pins",
            "pin dir /sys/fs/bpf/../../tmp/pins contains `..` or `.`".to_owned(),
        ),
        (
            "/etc/hostname",
            "pin dir /etc/hostname: /etc/hostname is not a directory".to_owned(),
        ),
        (
            missing_text,
            format!(
                "pin dir {missing_text} is not on a bpf filesystem; use a path under /sys/fs/bpf"
            ),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let runtime = Runtime::new(
            node,
            bridge_conflist("10.244.1.0/24", &ipam, std::path::Path::new(pin_dir)),
            plugin_path(),
        );
        let error = runtime
            .add(&attachment(&rig, &format!("p{index}")))
            .unwrap_err();
        let failure = cni::failure(&error).expect("a CNI error");
        assert_eq!(failure.code, Some(7), "{pin_dir}: {failure}");
        assert_eq!(failure.msg, format!("invalid network configuration: {why}"));
    }
    assert!(!missing.exists());
}

/// Runs pod-net-cni in `node` and waits at most `deadline` for it; `None`
/// when it was still running then (it is killed).
fn call_with_deadline(
    node: &Node,
    env: &[(&str, String)],
    config: &Value,
    deadline: std::time::Duration,
) -> Option<std::process::Output> {
    use std::{io::Write as _, process::Stdio};
    let mut command = node.command(&[sibling_binary("pod-net-cni").to_str().unwrap()]);
    command
        .env_clear()
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let until = std::time::Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn a_cni_netns_that_is_not_a_namespace_is_refused_without_blocking() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let fifo = rig.scratch_dir().unwrap().join("netns-fifo");
    pod_net_tests::cmd::run("mkfifo", [&fifo]).unwrap();
    let file = rig.scratch_dir().unwrap().join("netns-file");
    std::fs::write(&file, b"").unwrap();
    for netns in [&fifo, &file] {
        let netns = netns.to_str().unwrap();
        let prev = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": "10.244.1.5/24", "interface": 0}]});
        let config = json!({"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni",
            "pinDir": node.pin_dir, "prevResult": prev});
        let env = [
            ("CNI_COMMAND", "ADD".to_owned()),
            ("CNI_CONTAINERID", "c1".to_owned()),
            ("CNI_NETNS", netns.to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/usr/lib/cni".to_owned()),
        ];
        let output = call_with_deadline(node, &env, &config, std::time::Duration::from_secs(20))
            .unwrap_or_else(|| panic!("pod-net-cni blocked on CNI_NETNS={netns}"));
        assert_eq!(output.status.code(), Some(1), "{netns}");
        let error: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(error["code"], 4, "{error}");
        assert_eq!(error["msg"], format!("CNI_NETNS {netns:?} is not usable"));
        assert_eq!(
            error["details"],
            format!("{netns} is not a namespace file (nsfs)")
        );
    }
    assert!(registered(node).is_empty());
}

#[test]
fn prev_result_addresses_the_sandbox_lacks_are_refused_whole() {
    require_root!();
    let rig = empty_node();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let ipam = rig.scratch_dir().unwrap().join("ipam");
    let conflist = bridge_conflist("10.244.1.0/24", &ipam, &node.pin_dir);
    // The bridge plugin alone, for a real prevResult to tamper with.
    let bridge = Runtime::new(
        node,
        json!({"cniVersion": "1.0.0", "name": "podnet-bridge",
            "plugins": [conflist["plugins"][0].clone()]}),
        plugin_path(),
    );
    let a = attachment(&rig, "a");
    let result = bridge.add(&a).unwrap();
    let ip = result_ipv4(&result).unwrap();
    let sandbox_index = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .position(|interface| interface["name"] == "eth0" && interface["sandbox"].is_string())
        .unwrap();
    let env = vec![
        ("CNI_COMMAND", "ADD".to_owned()),
        ("CNI_CONTAINERID", a.container_id.clone()),
        ("CNI_NETNS", a.netns.clone().unwrap()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/usr/lib/cni".to_owned()),
    ];
    let config = |prev: &Value| {
        json!({"cniVersion": "1.0.0", "name": "podnet-bridge", "type": "pod-net-cni",
            "pinDir": node.pin_dir, "prevResult": prev})
    };
    // The gateway, and an address nobody configured, after the pod's own.
    for extra in ["10.244.1.1", "10.244.1.200"] {
        let mut prev = result.clone();
        prev["ips"]
            .as_array_mut()
            .unwrap()
            .push(json!({"address": format!("{extra}/24"), "interface": sandbox_index}));
        let failure = call(node, &env, &config(&prev)).unwrap_err();
        assert_eq!(failure.code, Some(7), "{failure}");
        assert_eq!(
            failure.msg,
            format!("prevResult gives {extra} to eth0, but eth0 in the sandbox does not have it")
        );
        // Nothing half-written: not even the pod's own address.
        assert!(registered(node).is_empty());
    }
    // Put on the interface too, the gateway is still the node's.
    a.exec(&["ip", "addr", "add", "10.244.1.1/32", "dev", "eth0"])
        .unwrap();
    let mut prev = result.clone();
    prev["ips"]
        .as_array_mut()
        .unwrap()
        .push(json!({"address": "10.244.1.1/24", "interface": sandbox_index}));
    let failure = call(node, &env, &config(&prev)).unwrap_err();
    assert_eq!(failure.code, Some(7), "{failure}");
    assert_eq!(
        failure.msg,
        "prevResult gives the pod 10.244.1.1, an address of this node"
    );
    assert!(registered(node).is_empty());
    a.exec(&["ip", "addr", "del", "10.244.1.1/32", "dev", "eth0"])
        .unwrap();

    call(node, &env, &config(&result)).unwrap();
    assert_eq!(
        registered(node),
        vec![(ip.to_string(), a.container_id.clone(), "eth0".to_owned())]
    );
}
