//! Bad input to the `pod-net` CLI: one clear line naming what was wrong, a
//! non-zero exit, and nothing half-written or lost.
use std::process::Output;

use pod_net_tests::{Rig, RigSpec, cmd::output_of, require_root};

fn rig() -> Rig {
    Rig::build(&RigSpec::default()).expect("build rig")
}

/// Two nodes on one switch, no pods: for the underlay's refusals.
fn two_nodes_without_pods() -> Rig {
    Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .expect("build rig")
}

/// Asserts a failed run: exit code, and a single stderr line containing
/// `needle`.
fn assert_fails(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

fn assert_one_line_error(output: &Output, needle: &str) {
    assert_fails(output, 1, needle);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("pod-net: error: "), "{stderr:?}");
}

#[test]
fn commands_on_a_pin_dir_that_was_never_loaded() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let pod = rig.pod(1, 1);
    let ip = pod.ip.to_string();
    for args in [
        vec!["pod", "list"],
        vec!["pod", "add", "--ip", &ip, "--veth", &pod.host_veth],
        vec!["pod", "del", "--ip", &ip],
        vec!["stats"],
    ] {
        assert_one_line_error(
            &node.pod_net_output(&args).unwrap(),
            "pod-net is not loaded at",
        );
    }
    assert_one_line_error(
        &node.pod_net_output(&["unload"]).unwrap(),
        "is not loaded at",
    );
    let status = node.pod_net_output(&["status"]).unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stdout).contains("not loaded"));
    assert!(
        !node.pin_dir.exists(),
        "a failed command created the pin dir"
    );
}

#[test]
fn pod_add_with_bad_interfaces_leaves_no_state() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let ip = rig.pod(1, 1).ip.to_string();

    let missing = node
        .pod_net_output(&["pod", "add", "--ip", &ip, "--veth", "nosuch0"])
        .unwrap();
    assert_one_line_error(&missing, "no interface named \"nosuch0\"");
    let bridge = node
        .pod_net_output(&["pod", "add", "--ip", &ip, "--veth", "cni0"])
        .unwrap();
    assert_one_line_error(&bridge, "interface \"cni0\" is not a veth");

    assert!(node.pod_ips().unwrap().is_empty());
    assert!(node.pinned_links("pod_egress").unwrap().is_empty());
}

#[test]
fn malformed_values_are_named() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let veth = rig.pod(1, 1).host_veth.as_str();

    let bad_ip = node
        .pod_net_output(&["pod", "add", "--ip", "10.244.1.300", "--veth", veth])
        .unwrap();
    assert_fails(&bad_ip, 2, "invalid value '10.244.1.300' for '--ip <IP>'");
    let bad_mac = node
        .pod_net_output(&[
            "pod",
            "add",
            "--ip",
            "10.244.1.2",
            "--veth",
            veth,
            "--mac",
            "02:00:zz:00:00:01",
        ])
        .unwrap();
    assert_fails(&bad_mac, 2, "invalid MAC address \"02:00:zz:00:00:01\"");
    let multicast_mac = node
        .pod_net_output(&[
            "pod",
            "add",
            "--ip",
            "10.244.1.2",
            "--veth",
            veth,
            "--mac",
            "01:00:5e:00:00:01",
        ])
        .unwrap();
    assert_one_line_error(
        &multicast_mac,
        "pod MAC 01:00:5e:00:00:01 is not a unicast address",
    );
    let long_id = "x".repeat(65);
    let long = node
        .pod_net_output(&[
            "pod",
            "add",
            "--ip",
            "10.244.1.2",
            "--veth",
            veth,
            "--id",
            &long_id,
        ])
        .unwrap();
    assert_one_line_error(&long, "is longer than 64 bytes");
    assert!(node.pod_ips().unwrap().is_empty());
    assert!(node.pinned_links("pod_egress").unwrap().is_empty());
}

#[test]
fn a_full_map_refuses_the_next_pod_and_keeps_the_others() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    node.pod_net(&["load", "--max-pods", "1"]).unwrap();
    node.register(a).unwrap();

    let full = output_of(&mut node.pod_add_command(b)).unwrap();
    assert_one_line_error(
        &full,
        "local_endpoints is full (1 entries); remove stale entries, or `pod-net unload` and load \
         again with a larger --max-pods",
    );
    assert_eq!(node.pod_ips().unwrap(), [a.ip.to_string()]);
    // The attach made for B was rolled back.
    assert!(node.tcx_ingress_programs(&b.host_veth).unwrap().is_empty());
    assert_eq!(node.tcx_ingress_programs(&a.host_veth).unwrap().len(), 1);
    assert_eq!(node.pinned_links("pod_egress").unwrap().len(), 1);

    let resize = node.pod_net_output(&["load", "--max-pods", "8"]).unwrap();
    assert_one_line_error(&resize, "cannot be resized to --max-pods 8 in place");
    assert_eq!(node.pod_ips().unwrap(), [a.ip.to_string()]);
}

#[test]
fn full_remote_maps_refuse_and_keep_the_others() {
    require_root!();
    let rig = two_nodes_without_pods();
    let node = rig.node(1);
    node.load_on_underlay(&["--max-remote-pods", "1", "--max-remote-cidrs", "2"])
        .unwrap();
    let kernel_routes = || node.ip(&["route", "show", "dev", "pnvxlan1"]).unwrap();
    let remote_cidrs = || node.remote_modes().unwrap().into_keys().collect::<Vec<_>>();
    let add = |cidr: &str| {
        node.pod_net_output(&["node", "add", "--cidr", cidr, "--node-ip", "192.168.100.2"])
            .unwrap()
    };
    assert!(add("10.244.2.0/24").status.success());

    // apply's bulk write: a pod /32 and two CIDRs are new, and only one
    // CIDR has room. Nothing is added, in either map or the kernel.
    let file = rig.scratch_dir().unwrap().join("nodes.toml");
    let entry = |cidr: &str| format!("[[nodes]]\ncidr = \"{cidr}\"\nnode_ip = \"192.168.100.2\"\n");
    std::fs::write(
        &file,
        [
            entry("10.244.2.0/24"),
            entry("10.244.3.0/24"),
            entry("10.244.4.7/32"),
            entry("10.244.5.0/24"),
        ]
        .concat(),
    )
    .unwrap();
    let routes_before = kernel_routes();
    let full = node
        .pod_net_output(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
    assert_one_line_error(
        &full,
        "remote_nodes is full (2 entries): 1 of the 2 new entries fit, so none were added; \
         remove stale entries, or `pod-net unload` and load again with a larger \
         --max-remote-cidrs",
    );
    assert_eq!(remote_cidrs(), ["10.244.2.0/24"]);
    assert_eq!(kernel_routes(), routes_before);

    // One at a time: each map takes what fits, and names itself when full.
    assert!(add("10.244.3.0/24").status.success());
    assert_one_line_error(
        &add("10.244.6.0/24"),
        "remote_nodes is full (2 entries); remove stale entries, or `pod-net unload` and load \
         again with a larger --max-remote-cidrs",
    );
    assert!(add("10.244.4.7/32").status.success());
    assert_one_line_error(
        &add("10.244.4.8/32"),
        "remote_pods is full (1 entries); remove stale entries, or `pod-net unload` and load \
         again with a larger --max-remote-pods",
    );
    assert_eq!(
        remote_cidrs(),
        ["10.244.2.0/24", "10.244.3.0/24", "10.244.4.7/32"]
    );
    let routes = kernel_routes();
    assert!(routes.contains("10.244.4.7 via 192.168.100.2"), "{routes}");
    assert!(
        !routes.contains("10.244.4.8") && !routes.contains("10.244.6.0"),
        "{routes}"
    );

    let resize = node
        .pod_net_output(&["load", "--max-remote-pods", "8"])
        .unwrap();
    assert_one_line_error(&resize, "cannot be resized to --max-remote-pods 8 in place");
}

#[test]
fn conflicting_and_unknown_pods_change_nothing() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    node.load_and_register().unwrap();
    let before = node.pod_net(&["pod", "list", "--json"]).unwrap();

    // A's address claimed from B's veth.
    let conflict = node
        .pod_net_output(&[
            "pod",
            "add",
            "--ip",
            &a.ip.to_string(),
            "--veth",
            &b.host_veth,
        ])
        .unwrap();
    assert_one_line_error(&conflict, "is already registered on ifindex");
    // The library says whose it is; the CLI adds how to free it.
    assert!(
        String::from_utf8_lossy(&conflict.stderr).ends_with(&format!(
            " with MAC {}; run `pod-net pod del --ip {}` first\n",
            a.mac, a.ip
        )),
        "{conflict:?}"
    );
    let unknown = node
        .pod_net_output(&["pod", "del", "--ip", "10.244.1.99"])
        .unwrap();
    assert_one_line_error(&unknown, "no pod with IP 10.244.1.99 is registered");
    let unknown_id = node
        .pod_net_output(&["pod", "del", "--id", "nope"])
        .unwrap();
    assert_one_line_error(&unknown_id, "no pod with container ID \"nope\"");

    assert_eq!(node.pod_net(&["pod", "list", "--json"]).unwrap(), before);
    // Registering the same pod again is a no-op.
    let again = node.register(a).unwrap();
    assert!(again.contains("already registered"), "{again}");
    assert_eq!(node.pod_net(&["pod", "list", "--json"]).unwrap(), before);
}

#[test]
fn a_pin_dir_off_bpffs_is_refused() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let dir = std::env::temp_dir().join(format!("{}-not-bpffs", rig.id()));
    let output = output_of(
        node.command(&[
            pod_net_tests::rig::pod_net_binary().to_str().unwrap(),
            "--pin-dir",
            dir.to_str().unwrap(),
            "load",
        ])
        .env_clear(),
    )
    .unwrap();
    assert_one_line_error(&output, "is not on a bpf filesystem");
    assert!(!dir.exists());
}

/// clap's usage errors are one line like every other error (clap's own
/// take three and more), with clap's exit status 2; `--help` and
/// `--version` still print in full and succeed. Parsing only: no rig.
#[test]
fn usage_errors_are_one_line_and_help_still_works() {
    let run = |args: &[&str]| {
        output_of(std::process::Command::new(pod_net_tests::rig::pod_net_binary()).args(args))
            .unwrap()
    };
    for (args, line) in [
        (
            &["pod", "add", "--ip", "10.244.1.300", "--veth", "v"][..],
            "invalid value '10.244.1.300' for '--ip <IP>': invalid IP address syntax",
        ),
        (
            &["pod", "add", "--veth", "v"],
            "the following required arguments were not provided: --ip <IP>",
        ),
        (&["frob"], "unrecognized subcommand 'frob'"),
        (
            &["pod"],
            "'pod-net pod' requires a subcommand but one was not provided \
             [subcommands: add, del, list, help]",
        ),
        (
            &["stats", "--json", "--prometheus"],
            "the argument '--json' cannot be used with '--prometheus'",
        ),
        (
            &["pod", "list", "--bogus"],
            "unexpected argument '--bogus' found",
        ),
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            format!("pod-net: error: {line}\n"),
            "{args:?}"
        );
        assert!(output.stdout.is_empty(), "{args:?}");
    }

    let help = run(&["pod", "add", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Usage: pod-net pod add [OPTIONS] --ip <IP> --veth <HOST_IFNAME>"),
        "{text}"
    );
    assert!(help.stderr.is_empty());
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        format!("pod-net {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// A pod cannot take over the node's own addresses (the gateway, above
/// all), nor claim one its interface does not have.
#[test]
fn pod_add_refuses_the_nodes_addresses_and_ones_the_pod_lacks() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    node.pod_net(&["load"]).unwrap();
    let add = |ip: &str, veth: &str| {
        node.pod_net_output(&["pod", "add", "--ip", ip, "--veth", veth])
            .unwrap()
    };

    let gateway = node.gateway_ip.to_string();
    assert_one_line_error(
        &add(&gateway, &a.host_veth),
        &format!("pod-net: error: {gateway} is an address of this node (on cni0), not a pod's"),
    );
    assert_one_line_error(
        &add("10.244.1.77", &a.host_veth),
        &format!(
            "pod-net: error: 10.244.1.77 is not configured on the pod's interface eth0 \
             (behind {}); add it there first",
            a.host_veth
        ),
    );
    // B's address through A's veth: A does not have it.
    assert_one_line_error(
        &add(&b.ip.to_string(), &a.host_veth),
        &format!("{} is not configured on the pod's interface eth0", b.ip),
    );
    assert!(node.pod_ips().unwrap().is_empty());
    assert!(node.pinned_links("pod_egress").unwrap().is_empty());
    // Pods still reach their gateway, and the real addresses register.
    a.ping(node.gateway_ip, 1).unwrap();
    node.register(a).unwrap();
    assert_eq!(node.pod_ips().unwrap(), [a.ip.to_string()]);
}

/// `--big-tcp on` over an underlay that cannot send 192 KiB GSO packets (a
/// bridge, say) is refused before anything is loaded; with no underlay, or
/// a capable one, it is taken, and the underlay gets the size too.
#[test]
fn big_tcp_needs_an_underlay_that_sends_big_packets() {
    require_root!();
    let rig = rig();
    let node = rig.node(1);
    node.ip(&["link", "add", "name", "bru", "type", "bridge"])
        .unwrap();
    node.ip(&["addr", "add", "192.168.50.1/24", "dev", "bru"])
        .unwrap();
    node.ip(&["link", "set", "bru", "up"]).unwrap();
    let refused = node
        .pod_net_output(&[
            "load",
            "--underlay",
            "bru",
            "--node-ip",
            "192.168.50.1",
            "--big-tcp",
            "on",
        ])
        .unwrap();
    assert_one_line_error(
        &refused,
        "the underlay bru sends GSO packets of at most 65536 bytes, so BIG TCP pods' packets \
         to other nodes would be segmented in software; BIG TCP needs 196608",
    );
    assert!(!node.pin_dir.exists(), "nothing was loaded");
    node.pod_net(&["load", "--big-tcp", "on"]).unwrap();
}

/// Each option `load` refuses gets the CLI's own flag in its one line (the
/// library names options, not flags), and nothing is loaded.
#[test]
fn load_refusals_name_the_flag_and_load_nothing() {
    require_root!();
    let rig = two_nodes_without_pods();
    let node = rig.node(1);
    let underlay = ["--underlay", "eth0", "--node-ip", "192.168.100.1"];
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--max-pods", "0"], "--max-pods must be at least 1"),
        (
            vec!["--max-remote-cidrs", "0"],
            "--max-remote-cidrs must be at least 1",
        ),
        (
            vec!["--underlay", "nosuch0", "--node-ip", "192.168.100.1"],
            "no interface named \"nosuch0\" for --underlay in this network namespace",
        ),
        (
            vec!["--underlay", "eth0", "--node-ip", "192.168.100.9"],
            "--node-ip 192.168.100.9 is not an address of eth0 (it has 192.168.100.1)",
        ),
        (
            [&underlay[..], &["--vxlan-port", "0"]].concat(),
            "--vxlan-port must not be 0",
        ),
        (
            vec!["--xdp"],
            "--xdp needs an underlay: load with --underlay IFACE --node-ip IPV4",
        ),
    ];
    for (extra, message) in cases {
        let args = [&["load"][..], &extra].concat();
        let refused = node.pod_net_output(&args).unwrap();
        assert_one_line_error(&refused, message);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(stderr.trim_end(), format!("pod-net: error: {message}"));
        assert!(!node.pin_dir.join("progs").exists(), "{args:?} loaded");
    }
}

/// `load --beside-flannel` needs flanneld's one VXLAN device: with none,
/// with two, or with a device that is not `flannel.<VNI>`, it says so in
/// one line and loads nothing. `cni chain` refuses a conflist it cannot
/// read or that is not a conflist, and leaves the file as it was.
#[test]
fn beside_flannel_and_cni_chain_refusals_name_what_is_wrong_and_change_nothing() {
    require_root!();
    let rig = two_nodes_without_pods();
    let node = rig.node(1);
    let not_loaded = |node: &pod_net_tests::Node| {
        let status = node.pod_net_output(&["status"]).unwrap();
        assert!(
            String::from_utf8_lossy(&status.stdout).contains("not loaded"),
            "{status:?}"
        );
    };
    assert_one_line_error(
        &node.pod_net_output(&["load", "--beside-flannel"]).unwrap(),
        "no VXLAN device flannel.<VNI> here: is flanneld (vxlan backend) running?",
    );
    not_loaded(node);
    let vxlan = |name: &str, vni: &str| {
        node.ip(&[
            "link", "add", name, "type", "vxlan", "id", vni, "dstport", "8472", "dev", "eth0",
        ])
        .unwrap();
    };
    vxlan("vx9", "9");
    assert_one_line_error(
        &node
            .pod_net_output(&["load", "--beside-flannel", "--flannel-device", "vx9"])
            .unwrap(),
        "vx9 has VNI 9: beside flannel the device must be flanneld's flannel.9",
    );
    vxlan("flannel.1", "1");
    vxlan("flannel.7", "7");
    assert_one_line_error(
        &node.pod_net_output(&["load", "--beside-flannel"]).unwrap(),
        "several flannel devices (flannel.1, flannel.7); name one with --flannel-device",
    );
    not_loaded(node);

    let dir = rig.scratch_dir().unwrap();
    let missing = dir.join("missing.conflist");
    let output = node
        .pod_net_output(&["cni", "chain", "--conflist", missing.to_str().unwrap()])
        .unwrap();
    assert_one_line_error(&output, &format!("{}: no such file", missing.display()));
    assert!(!missing.exists());
    let not_a_conflist = dir.join("10-flannel.conflist");
    let text = r#"{"cniVersion": "0.3.1", "name": "cbr0", "type": "flannel"}"#;
    std::fs::write(&not_a_conflist, text).unwrap();
    let output = node
        .pod_net_output(&[
            "cni",
            "chain",
            "--conflist",
            not_a_conflist.to_str().unwrap(),
        ])
        .unwrap();
    assert_one_line_error(
        &output,
        &format!(
            "{}: not a CNI conflist: no \"plugins\" list",
            not_a_conflist.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&not_a_conflist).unwrap(), text);
}
