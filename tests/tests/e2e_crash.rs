//! Crash safety: SIGKILL at the worst moment of a CNI ADD, an `apply`, a
//! `pod del`, a `load` and the agent. Each time the pods that were fully
//! registered keep forwarding, `status` names the half-done state, and the
//! next command (or `pod-net gc`) repairs it.
//!
//! The kills are deterministic: `POD_NET_CRASH_AT=<point>` makes the
//! process SIGKILL itself there (see `pod_net::crashpoint`).
use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Child, Stdio},
    thread,
    time::Duration,
};

use pod_net::crashpoint;
use pod_net_tests::{
    Node, Pod, Rig, RigSpec,
    cni::{self, Attachment, Runtime, bridge_conflist, result_ipv4},
    require_root,
};
use serde_json::Value;

const CRASH_AT: &str = "POD_NET_CRASH_AT";

fn rig(pods_per_node: u8) -> Rig {
    Rig::build(&RigSpec {
        nodes: 1,
        pods_per_node,
        ..RigSpec::default()
    })
    .unwrap()
}

/// The one problem status reports, which must be a repair gc makes.
fn the_repair_status_reports(node: &Node) -> String {
    let problems = node.problems().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (what, hint) = &problems[0];
    assert!(hint.contains("pod-net gc"), "{hint}");
    what.strip_prefix("needs repair: ")
        .unwrap_or_else(|| panic!("not a repair: {what}"))
        .to_owned()
}

/// `pod-net gc [--dry-run] --json`: the repairs, as (kind, ifindex).
fn gc(node: &Node, dry_run: bool) -> Vec<(String, u64)> {
    let mut args = vec!["gc", "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    let repairs: Vec<Value> = serde_json::from_str(&node.pod_net(&args).unwrap()).unwrap();
    repairs
        .iter()
        .map(|repair| {
            (
                repair["repair"].as_str().unwrap().to_owned(),
                repair["ifindex"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn redirects(node: &Node) -> u64 {
    node.counters().unwrap()["redirect_local"]
}

/// `from` pings `to` `count` times, every one answered on the fast path in
/// both directions: exactly 2 × count more `redirect_local`.
fn assert_fast_path(node: &Node, from: &Pod, to: &Pod, count: u32) {
    from.pin_neighbour(to).unwrap();
    to.pin_neighbour(from).unwrap();
    let before = redirects(node);
    from.ping(to.ip, count).unwrap();
    assert_eq!(redirects(node) - before, 2 * u64::from(count));
}

fn ifindex(node: &Node, ifname: &str) -> u64 {
    let text = node.ip(&["-j", "link", "show", "dev", ifname]).unwrap();
    let links: Value = serde_json::from_str(&text).unwrap();
    links[0]["ifindex"].as_u64().unwrap()
}

fn registered_ips(node: &Node) -> Vec<String> {
    let pods: Vec<Value> =
        serde_json::from_str(&node.pod_net(&["pod", "list", "--json"]).unwrap()).unwrap();
    pods.iter()
        .map(|pod| pod["ip"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sigkill_mid_cni_add_keeps_the_others_forwarding_and_del_repairs() {
    require_root!();
    let rig = rig(0);
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let ipam = rig.scratch_dir().unwrap().join("ipam");
    let runtime = Runtime::new(
        node,
        bridge_conflist("10.244.1.0/24", &ipam, &node.pin_dir),
        cni::plugin_path().unwrap(),
    );
    let attachment = |name: &str| Attachment::in_sandbox(&rig, name).unwrap();
    let (a, b, c) = (attachment("a"), attachment("b"), attachment("c"));
    let a_ip = result_ipv4(&runtime.add(&a).unwrap()).unwrap();
    let b_ip = result_ipv4(&runtime.add(&b).unwrap()).unwrap();

    // pod-net-cni dies between attaching to c's veth and storing c's entry.
    runtime
        .set_env(CRASH_AT, crashpoint::POD_ADD_ATTACHED)
        .unwrap();
    let error = runtime.add(&c).unwrap_err();
    let failure = cni::failure(&error).unwrap_or_else(|| panic!("{error:#}"));
    assert_eq!(failure.signal, Some(libc::SIGKILL), "{failure}");
    runtime.set_env(CRASH_AT, "").unwrap();

    // a and b, fully registered, still take the fast path both ways.
    let ping = |from: &Attachment, to: std::net::Ipv4Addr| {
        let to = to.to_string();
        from.exec(&["ping", "-n", "-q", "-c", "5", "-i", "0.1", "-W", "1", &to])
    };
    let before = redirects(node);
    ping(&a, b_ip).unwrap();
    assert!(redirects(node) - before >= 10);

    // status names the orphan attachment; the runtime's DEL after the
    // failed ADD is the next command, and it repairs it.
    let repair = the_repair_status_reports(node);
    assert!(
        repair.starts_with("detach pod_egress from ") && repair.contains("no pod is registered"),
        "{repair}"
    );
    runtime.del(&c).unwrap();
    assert_eq!(node.problems().unwrap(), []);

    // The retried pod gets the fast path like any other.
    let c = attachment("c2");
    runtime.add(&c).unwrap();
    let before = redirects(node);
    ping(&c, a_ip).unwrap();
    assert!(redirects(node) - before >= 10);
    assert_eq!(node.problems().unwrap(), []);
}

#[test]
fn sigkill_mid_apply_then_apply_again_completes() {
    require_root!();
    let rig = rig(4);
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let pods: Vec<&Pod> = (1..=4).map(|index| rig.pod(1, index)).collect();
    let file = rig.scratch_dir().unwrap().join("node.toml");
    let entries: Vec<String> = pods
        .iter()
        .map(|pod| {
            format!(
                "[[pods]]\nip = \"{}\"\nveth = \"{}\"",
                pod.ip, pod.host_veth
            )
        })
        .collect();
    let entries = entries.join("\n");
    std::fs::write(&file, entries).unwrap();
    let file = file.to_str().unwrap();
    node.register(pods[0]).unwrap();
    node.register(pods[1]).unwrap();

    // Killed inside the first add: attached to pod 3's veth, no entry yet.
    node.run_until_killed(&["apply", "-f", file], crashpoint::POD_ADD_ATTACHED)
        .unwrap();
    assert_fast_path(node, pods[0], pods[1], 5);
    let repair = the_repair_status_reports(node);
    assert!(
        repair.starts_with(&format!("detach pod_egress from {}", pods[2].host_veth)),
        "{repair}"
    );
    assert_eq!(registered_ips(node).len(), 2);

    // Killed between two changes: pod 3 is whole, pod 4 not started.
    node.run_until_killed(&["apply", "-f", file], crashpoint::APPLY_CHANGED)
        .unwrap();
    assert_eq!(node.problems().unwrap(), []);
    assert_eq!(registered_ips(node).len(), 3);

    // The next apply does exactly what is left.
    let output = node.pod_net(&["apply", "-f", file]).unwrap();
    assert_eq!(
        output,
        format!(
            "+ pod {} on {}\n1 change(s) applied\n",
            pods[3].ip, pods[3].host_veth
        )
    );
    assert_eq!(node.problems().unwrap(), []);
    assert_fast_path(node, pods[2], pods[3], 5);
    assert_fast_path(node, pods[0], pods[3], 5);
}

#[test]
fn gc_repairs_every_half_done_state() {
    require_root!();
    gc_repairs_every_half_done_state_attached_with("tcx");
}

#[test]
fn gc_repairs_every_half_done_state_with_tc_filters() {
    require_root!();
    gc_repairs_every_half_done_state_attached_with("tc");
}

/// Whether `ifname` has pod-net's program at its tc ingress, the `mode`
/// way (`load --attach`), and not the other way.
fn attached_as(node: &Node, ifname: &str, mode: &str) -> bool {
    let tcx = !node.tcx_ingress_programs(ifname).unwrap().is_empty();
    let filter = node.tc_filter(ifname).unwrap().is_some();
    match mode {
        "tcx" => tcx && !filter,
        _ => filter && !tcx,
    }
}

fn detached(node: &Node, ifname: &str) -> bool {
    node.tcx_ingress_programs(ifname).unwrap().is_empty()
        && node.tc_filter(ifname).unwrap().is_none()
}

fn gc_repairs_every_half_done_state_attached_with(mode: &str) {
    let rig = rig(4);
    let node = rig.node(1);
    node.load_and_register().unwrap();
    node.pod_net(&["load", "--attach", mode]).unwrap();
    let (p1, p2, p3, p4) = (rig.pod(1, 1), rig.pod(1, 2), rig.pod(1, 3), rig.pod(1, 4));
    assert_eq!(node.problems().unwrap(), []);
    assert_eq!(gc(node, false), []);

    // A del killed between removing the entry and detaching.
    let p2_index = ifindex(node, &p2.host_veth);
    node.run_until_killed(
        &["pod", "del", "--ip", &p2.ip.to_string()],
        crashpoint::POD_DEL_REMOVED,
    )
    .unwrap();
    assert!(the_repair_status_reports(node).starts_with("detach pod_egress from veth-p2"));
    let orphan = vec![("detach_orphan".to_owned(), p2_index)];
    assert_eq!(gc(node, true), orphan, "dry run");
    assert_eq!(gc(node, true), orphan, "a dry run changes nothing");
    assert_eq!(gc(node, false), orphan);
    assert_eq!(node.problems().unwrap(), []);
    assert!(detached(node, &p2.host_veth));

    // An attachment lost behind pod-net's back (its pin removed, or the
    // filter deleted).
    let p3_index = ifindex(node, &p3.host_veth);
    assert!(attached_as(node, &p3.host_veth, mode));
    if mode == "tcx" {
        let pin = node
            .pin_dir
            .join(format!("links/pod_egress/if{p3_index}-{}", p3.host_veth));
        std::fs::remove_file(&pin).unwrap();
    } else {
        node.exec(&[
            "tc",
            "filter",
            "del",
            "dev",
            &p3.host_veth,
            "ingress",
            "pref",
            "1",
            "handle",
            "1",
            "bpf",
        ])
        .unwrap();
    }
    assert!(the_repair_status_reports(node).starts_with("re-attach pod_egress to veth-p3"));
    p1.pin_neighbour(p3).unwrap();
    p3.pin_neighbour(p1).unwrap();
    let before = redirects(node);
    p1.ping(p3.ip, 5).unwrap();
    // Only p1's requests are redirected; p3's replies cross the bridge.
    assert_eq!(redirects(node) - before, 5);
    assert_eq!(gc(node, false), [("reattach".to_owned(), p3_index)]);
    assert!(attached_as(node, &p3.host_veth, mode));
    assert_fast_path(node, p1, p3, 5);

    // A pod deleted without a DEL: its entry is stale, and so is its
    // link's pin (a filter goes with the veth).
    node.ip(&["link", "del", &p3.host_veth]).unwrap();
    let stale = gc(node, true);
    let mut expected = vec![("remove_stale_entry".to_owned(), p3_index)];
    if mode == "tcx" {
        expected.push(("detach_orphan".to_owned(), p3_index));
    }
    assert_eq!(stale, expected);
    assert_eq!(gc(node, false), stale);
    assert_eq!(node.problems().unwrap(), []);
    assert!(!registered_ips(node).contains(&p3.ip.to_string()));

    // p4's veth is recreated and the kernel hands it the same ifindex: the
    // entry fits again, but the pinned link died with the old veth. status
    // must not take the pin for an attachment, and pod add re-attaches.
    let p4_index = ifindex(node, &p4.host_veth);
    node.replug(p4, Some(u32::try_from(p4_index).unwrap()))
        .unwrap();
    assert_eq!(ifindex(node, &p4.host_veth), p4_index);
    assert!(detached(node, &p4.host_veth));
    assert!(the_repair_status_reports(node).starts_with("re-attach pod_egress to veth-p4"));
    node.register(p4).unwrap();
    assert_eq!(node.problems().unwrap(), []);
    assert!(attached_as(node, &p4.host_veth, mode));
    assert_fast_path(node, p4, p1, 5);
}

#[test]
fn sigkill_mid_load_keeps_forwarding() {
    require_root!();
    let rig = rig(2);
    let node = rig.node(1);
    node.load_and_register().unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    a.ping(b.ip, 1).unwrap();
    let flood = a.ping_flood(b.ip, 1500).unwrap();
    thread::sleep(Duration::from_millis(200));
    // Killed after the links switched to the new programs, before the new
    // programs are pinned: links and pins disagree until the next load.
    node.run_until_killed(&["load"], crashpoint::LOAD_REPLACED)
        .unwrap();
    assert_eq!(node.problems().unwrap(), []);
    let output = node.pod_net(&["load"]).unwrap();
    assert!(output.contains("in place"), "{output}");
    let (sent, received, text) = flood.finish().unwrap();
    assert_eq!((sent, received), (1500, 1500), "{text}");
    assert_eq!(node.problems().unwrap(), []);
    assert_fast_path(node, a, b, 5);
}

/// Kills the agent (SIGKILL) when dropped, if the test has not already.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_repairs_on_its_own_and_a_sigkill_leaves_traffic_flowing() {
    require_root!();
    let rig = rig(3);
    let node = rig.node(1);
    node.load_and_register().unwrap();
    let (p1, p2, p3) = (rig.pod(1, 1), rig.pod(1, 2), rig.pod(1, 3));
    let mut agent = Agent(
        node.pod_net_command(&[
            "agent",
            "--metrics-addr",
            "127.0.0.1:0",
            "--gc-interval",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );

    // p3 vanishes without a DEL; the agent's periodic gc removes it.
    node.ip(&["link", "del", &p3.host_veth]).unwrap();
    let gone = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(100));
        !registered_ips(node).contains(&p3.ip.to_string())
    });
    assert!(gone, "the agent did not remove {} within 5 s", p3.ip);
    assert_eq!(node.problems().unwrap(), []);

    agent.0.kill().unwrap();
    let status = agent.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_fast_path(node, p1, p2, 5);
}
