//! `apply` under stress: killed (SIGKILL) in the middle of 10,000 remote
//! entries, given a file that fails validation, run four times at once;
//! and the tunnel device deleted by hand. Each time the maps and the
//! kernel's side (routes, neighbours and FDB entries on `pnvxlan1`) end up
//! in step with each other and with the file, `status` says when they are
//! not, and `gc` or the next `apply` or `load` mends it.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use pod_net::{cidr::Cidr, crashpoint};
use pod_net_tests::{Node, Pod, Rig, RigSpec, cmd::output_of, require_root, wait_until};
use serde_json::Value;

const DEVICE: &str = "pnvxlan1";
/// How long to wait for an agent or monitor to act on its own.
const WAIT: Duration = Duration::from_secs(30);

fn rig(pods_per_node: u8, ipv6: bool) -> Rig {
    Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node,
        ipv6,
        ..RigSpec::default()
    })
    .unwrap()
}

/// `load` with node 1's underlay, registering no pod.
fn load(node: &Node) {
    node.load_on_underlay(&[]).unwrap();
}

/// A remote entry as a file lists it.
#[derive(Clone, Debug)]
struct Remote {
    cidr: Cidr,
    node_ip: Ipv4Addr,
}

fn remote(cidr: &str, node_ip: [u8; 4]) -> Remote {
    Remote {
        cidr: cidr.parse().unwrap(),
        node_ip: node_ip.into(),
    }
}

/// `count` single remote pods in 10.96.0.0/16 spread over nodes .2 to .5,
/// and node 2's pod CIDRs (IPv4 and IPv6).
fn many_remotes(count: u16) -> Vec<Remote> {
    let mut remotes: Vec<Remote> = (0..count)
        .map(|index| {
            let [high, low] = index.to_be_bytes();
            let node = 2 + (low % 4);
            remote(&format!("10.96.{high}.{low}/32"), [192, 168, 100, node])
        })
        .collect();
    remotes.push(remote("10.244.2.0/24", [192, 168, 100, 2]));
    remotes.push(remote("fd00:10:244:2::/64", [192, 168, 100, 2]));
    remotes
}

fn write_file(path: &Path, pods: &[&Pod], remotes: &[Remote]) {
    let pods = pods.iter().map(|pod| {
        format!(
            "[[pods]]\nip = \"{}\"\nveth = \"{}\"\n",
            pod.ip, pod.host_veth
        )
    });
    let nodes = remotes.iter().map(|remote| {
        format!(
            "[[nodes]]\ncidr = \"{}\"\nnode_ip = \"{}\"\n",
            remote.cidr, remote.node_ip
        )
    });
    std::fs::write(path, pods.chain(nodes).collect::<String>()).unwrap();
}

fn derived_mac(node_ip: Ipv4Addr) -> String {
    let [a, b, c, d] = node_ip.octets();
    format!("0e:6e:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn link_local(node_ip: Ipv4Addr) -> IpAddr {
    let [a, b, c, d] = node_ip.octets();
    let (high, low) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, high, low).into()
}

/// The kernel's side of the remote entries, as iproute2 shows it.
#[derive(Debug, Default, PartialEq, Eq)]
struct KernelSide {
    /// (prefix, next hop), without the kernel's own routes.
    routes: BTreeSet<(Cidr, IpAddr)>,
    /// Permanent neighbours: (address, MAC).
    neighbours: BTreeSet<(IpAddr, String)>,
    /// FDB: (MAC, destination).
    fdb: BTreeSet<(String, IpAddr)>,
}

fn json(node: &Node, program: &str, args: &[&str]) -> Vec<Value> {
    let mut full = vec![program, "-j"];
    full.extend_from_slice(args);
    let text = node.exec(&full).unwrap();
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {value}"))
}

fn kernel_side(node: &Node) -> KernelSide {
    let mut side = KernelSide::default();
    for (family, host_bits) in [("-4", "/32"), ("-6", "/128")] {
        for route in json(node, "ip", &[family, "route", "show", "dev", DEVICE]) {
            if route["protocol"] == "kernel" {
                continue;
            }
            let mut dst = field(&route, "dst").to_owned();
            if !dst.contains('/') {
                dst += host_bits;
            }
            let via = field(&route, "gateway").parse().unwrap();
            side.routes.insert((dst.parse().unwrap(), via));
        }
        let neighbours = json(
            node,
            "ip",
            &[family, "neigh", "show", "dev", DEVICE, "nud", "permanent"],
        );
        for neighbour in neighbours {
            side.neighbours.insert((
                field(&neighbour, "dst").parse().unwrap(),
                field(&neighbour, "lladdr").to_owned(),
            ));
        }
    }
    for entry in json(node, "bridge", &["fdb", "show", "dev", DEVICE]) {
        side.fdb.insert((
            field(&entry, "mac").to_owned(),
            field(&entry, "dst").parse().unwrap(),
        ));
    }
    side
}

/// What pod-net writes for `remotes`: a route each, and per node its
/// neighbour (and its IPv6 next hop's, with IPv6 prefixes) and FDB entry.
fn expected(remotes: &[Remote]) -> KernelSide {
    let mut side = KernelSide::default();
    for remote in remotes {
        let mac = derived_mac(remote.node_ip);
        let via = match remote.cidr.addr {
            IpAddr::V4(_) => remote.node_ip.into(),
            IpAddr::V6(_) => link_local(remote.node_ip),
        };
        side.routes.insert((remote.cidr, via));
        side.neighbours.insert((remote.node_ip.into(), mac.clone()));
        if remote.cidr.addr.is_ipv6() {
            side.neighbours.insert((via, mac.clone()));
        }
        side.fdb.insert((mac, remote.node_ip.into()));
    }
    side
}

/// `node list`, as (prefix, node IP).
fn node_list(node: &Node) -> BTreeSet<(Cidr, Ipv4Addr)> {
    let text = node.pod_net(&["node", "list", "--json"]).unwrap();
    let entries: Value = serde_json::from_str(&text).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                field(entry, "cidr").parse().unwrap(),
                field(entry, "node_ip").parse().unwrap(),
            )
        })
        .collect()
}

/// The entries `status --json` counts in `map` (whatever its health).
fn map_entries(node: &Node, map: &str) -> u64 {
    let status = node.pod_net_output(&["status", "--json"]).unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|fill| fill["name"] == map)
        .unwrap_or_else(|| panic!("no {map} in {status}"))["entries"]
        .as_u64()
        .unwrap()
}

fn listed(remotes: &[Remote]) -> BTreeSet<(Cidr, Ipv4Addr)> {
    remotes
        .iter()
        .map(|remote| (remote.cidr, remote.node_ip))
        .collect()
}

const GC_HINT: &str = "run `pod-net gc` (`--dry-run` shows the plan)";

/// `needs repair: <first> on pnvxlan1: <reason> (and <n - 1> more like it)`.
fn repair_problem(first: &str, reason: &str, count: usize) -> (String, String) {
    let more = if count > 1 {
        format!(" (and {} more like it)", count - 1)
    } else {
        String::new()
    };
    (
        format!("needs repair: {first} on {DEVICE}: {reason}{more}"),
        GC_HINT.to_owned(),
    )
}

/// What an add killed mid-routes leaves, as `status` names it: the peers
/// let in first, and one line per kind of orphan for thousands of routes.
fn assert_orphans_are_named(node: &Node, side: &KernelSide) {
    let routes: Vec<&(Cidr, IpAddr)> = side.routes.iter().collect();
    let (neighbour, fdb) = (
        side.neighbours.iter().next().unwrap(),
        side.fdb.iter().next().unwrap(),
    );
    let peers = (2..=5).map(|host| {
        (
            format!("needs repair: remove 192.168.100.{host} from peer_nodes: no remote entry sends to it"),
            GC_HINT.to_owned(),
        )
    });
    assert_eq!(
        node.problems().unwrap(),
        peers
            .chain([
                repair_problem(
                    &format!("- route {} via {}", routes[0].0, routes[0].1),
                    "no remote entry has this route",
                    routes.len()
                ),
                repair_problem(
                    &format!("- neighbour {} lladdr {}", neighbour.0, neighbour.1),
                    "no remote entry uses it",
                    side.neighbours.len()
                ),
                repair_problem(
                    &format!("- fdb {} dst {}", fdb.0, fdb.1),
                    "no remote entry uses it",
                    side.fdb.len()
                ),
            ])
            .collect::<Vec<_>>()
    );
}

#[test]
fn sigkill_mid_apply_of_10k_entries_then_status_gc_and_apply_converge() {
    require_root!();
    let rig = rig(0, true);
    let node = rig.node(1);
    load(node);
    let file = rig.scratch_dir().unwrap().join("nodes.toml");
    let path = file.to_str().unwrap();
    let remotes = many_remotes(10_000);
    write_file(&file, &[], &remotes);
    let want = expected(&remotes);

    // Killed after the first batch of kernel requests. The kernel's side
    // goes in first (neighbours and FDB entries, then routes), the map
    // entries last: no entry yet, and only some of the routes.
    node.run_until_killed(&["apply", "-f", path], crashpoint::NETLINK_PARTIAL)
        .unwrap();
    assert_eq!(node_list(node), BTreeSet::new());
    assert_eq!(
        (
            map_entries(node, "remote_pods"),
            map_entries(node, "remote_nodes")
        ),
        (0, 0)
    );
    let side = kernel_side(node);
    assert_eq!(side.neighbours, want.neighbours);
    assert_eq!(side.fdb, want.fdb);
    assert!(side.routes.is_subset(&want.routes));
    assert!(
        !side.routes.is_empty() && side.routes.len() < 1000,
        "{} routes",
        side.routes.len()
    );

    assert_orphans_are_named(node, &side);

    // apply again takes the orphans back, then adds every entry.
    let output = node.pod_net(&["apply", "-f", path]).unwrap();
    let lines: Vec<&str> = output.lines().collect();
    let count = |prefix: &str| lines.iter().filter(|line| line.starts_with(prefix)).count();
    assert_eq!(count("- route "), side.routes.len(), "{output}");
    assert_eq!(count("+ node "), remotes.len());
    let changes = side.routes.len() + side.neighbours.len() + side.fdb.len() + remotes.len();
    assert_eq!(
        lines.last(),
        Some(&format!("{changes} change(s) applied").as_str())
    );
    assert_eq!(lines.len(), changes + 1);
    assert_eq!(node_list(node), listed(&remotes));
    assert_eq!(kernel_side(node), want);
    assert_eq!(node.problems().unwrap(), []);
    assert_eq!(
        node.pod_net(&["apply", "-f", path]).unwrap(),
        "0 change(s) applied\n"
    );

    // Nodes .4 and .5 leave; killed while their routes go: the entries are
    // gone, most routes and every neighbour and FDB entry of theirs not.
    let kept: Vec<Remote> = remotes
        .iter()
        .filter(|remote| remote.node_ip.octets()[3] <= 3)
        .cloned()
        .collect();
    write_file(&file, &[], &kept);
    node.run_until_killed(&["apply", "-f", path], crashpoint::NETLINK_PARTIAL)
        .unwrap();
    assert_eq!(node_list(node), listed(&kept));
    let side = kernel_side(node);
    let kept_side = expected(&kept);
    let stale: Vec<&(Cidr, IpAddr)> = side.routes.difference(&kept_side.routes).collect();
    assert!(side.routes.is_superset(&kept_side.routes));
    assert!(stale.len() > 4000, "{} stale routes", stale.len());
    let gone = [
        Ipv4Addr::new(192, 168, 100, 4),
        Ipv4Addr::new(192, 168, 100, 5),
    ];
    assert_eq!(
        node.problems().unwrap(),
        [
            repair_problem(
                &format!("- route {} via {}", stale[0].0, stale[0].1),
                "no remote entry has this route",
                stale.len()
            ),
            repair_problem(
                &format!("- neighbour {} lladdr {}", gone[0], derived_mac(gone[0])),
                "no remote entry uses it",
                2
            ),
            repair_problem(
                &format!("- fdb {} dst {}", derived_mac(gone[0]), gone[0]),
                "no remote entry uses it",
                2
            ),
        ]
    );

    // gc removes exactly what no entry explains.
    let repairs: Vec<Value> =
        serde_json::from_str(&node.pod_net(&["gc", "--json"]).unwrap()).unwrap();
    let kinds: Vec<(String, String)> = repairs
        .iter()
        .map(|repair| {
            (
                field(repair, "repair").to_owned(),
                field(repair, "fix").to_owned(),
            )
        })
        .collect();
    let count = |fix: &str| kinds.iter().filter(|(_, kind)| kind == fix).count();
    assert!(kinds.iter().all(|(repair, _)| repair == "tunnel"));
    assert_eq!(
        (
            count("remove_route"),
            count("remove_neighbour"),
            count("remove_fdb")
        ),
        (stale.len(), 2, 2)
    );
    assert_eq!(kinds.len(), stale.len() + 4);
    assert_eq!(kernel_side(node), kept_side);
    assert_eq!(node_list(node), listed(&kept));
    assert_eq!(node.problems().unwrap(), []);
    assert_eq!(node.pod_net(&["gc"]).unwrap(), "0 repair(s) made\n");
    assert_eq!(
        node.pod_net(&["apply", "-f", path]).unwrap(),
        "0 change(s) applied\n"
    );
}

#[test]
fn the_tunnel_device_deleted_by_hand_comes_back_with_its_routes_on_load() {
    require_root!();
    let rig = rig(1, true);
    rig.pod_net_mesh().unwrap();
    let node = rig.node(1);
    let target = rig.pod(2, 1).ip.to_string();
    let ping = || {
        output_of(&mut node.command(&[
            "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", &target,
        ]))
        .unwrap()
        .status
        .success()
    };
    // The node itself reaches node 2's pod through the kernel's path.
    assert!(ping());
    let want = expected(&[
        remote("10.244.2.0/24", [192, 168, 100, 2]),
        remote("fd00:10:244:2::/64", [192, 168, 100, 2]),
    ]);
    assert_eq!(kernel_side(node), want);

    node.ip(&["link", "del", DEVICE]).unwrap();
    assert!(!ping());
    assert_eq!(
        node.problems().unwrap(),
        [(
            format!("the tunnel device {DEVICE} is missing"),
            "run `pod-net load --underlay eth0 --node-ip 192.168.100.1` again".to_owned()
        )]
    );

    // load, as the hint says: the device is back, and so is its content.
    load(node);
    assert_eq!(kernel_side(node), want);
    assert_eq!(node.problems().unwrap(), []);
    assert!(ping());
    assert_eq!(node.pod_net(&["gc"]).unwrap(), "0 repair(s) made\n");

    // What goes missing behind pod-net's back with the device in place is
    // named by status and put back by gc.
    node.ip(&["route", "del", "10.244.2.0/24", "dev", DEVICE])
        .unwrap();
    node.ip(&[
        "route",
        "add",
        "10.77.0.0/16",
        "via",
        "192.168.100.2",
        "dev",
        DEVICE,
        "onlink",
    ])
    .unwrap();
    assert_eq!(
        node.problems().unwrap(),
        [
            repair_problem(
                "+ route 10.244.2.0/24 via 192.168.100.2",
                "its remote entry has no route there, or one going elsewhere",
                1
            ),
            repair_problem(
                "- route 10.77.0.0/16 via 192.168.100.2",
                "no remote entry has this route",
                1
            ),
        ]
    );
    assert!(!ping());
    node.pod_net(&["gc"]).unwrap();
    assert_eq!(kernel_side(node), want);
    assert_eq!(node.problems().unwrap(), []);
    assert!(ping());
}

#[test]
fn an_apply_file_that_fails_validation_changes_nothing() {
    require_root!();
    let rig = rig(2, false);
    let node = rig.node(1);
    load(node);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let file = rig.scratch_dir().unwrap().join("node.toml");
    let path = file.to_str().unwrap();
    let remotes = [
        remote("10.244.2.0/24", [192, 168, 100, 2]),
        remote("10.244.3.0/24", [192, 168, 100, 3]),
    ];
    write_file(&file, &[a, b], &remotes);
    node.pod_net(&["apply", "-f", path]).unwrap();
    let state = || (node.pod_ips().unwrap(), node_list(node), kernel_side(node));
    let before = state();
    assert_eq!(before.0, [a.ip.to_string(), b.ip.to_string()]);
    assert_eq!(before.1, listed(&remotes));
    assert_eq!(before.2, expected(&remotes));

    // Pod b and node 3 would go first, then the own-IP entry fail.
    let bad = [
        remote("10.244.2.0/24", [192, 168, 100, 2]),
        remote("10.244.9.0/24", [192, 168, 100, 1]),
    ];
    write_file(&file, &[a], &bad);
    let output = output_of(&mut node.pod_net_command(&["apply", "-f", path])).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(state(), before);
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "pod-net: error: nodes[1] (10.244.9.0/24): 192.168.100.1 is this node's own \
         underlay address\n"
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");

    // The same for a pod the file gives a multicast MAC.
    let mut text = format!("[[pods]]\nip = \"{}\"\nveth = \"{}\"\n", a.ip, a.host_veth);
    text += "[[pods]]\nip = \"10.244.1.9\"\nveth = \"veth-p2\"\nmac = \"01:00:5e:00:00:01\"\n";
    std::fs::write(&file, text).unwrap();
    let output = output_of(&mut node.pod_net_command(&["apply", "-f", path])).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(state(), before);
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "pod-net: error: pods[1] (10.244.1.9): pod MAC 01:00:5e:00:00:01 is not a unicast \
         address\n"
    );
    assert_eq!(node.problems().unwrap(), []);

    // And for remote entries without the tunnel device to route them.
    node.ip(&["link", "del", DEVICE]).unwrap();
    write_file(&file, &[a], &remotes);
    let output = output_of(&mut node.pod_net_command(&["apply", "-f", path])).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        (node.pod_ips().unwrap(), node_list(node)),
        (before.0, before.1)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "pod-net: error: the tunnel device pnvxlan1 is missing; run `pod-net load` again to \
         recreate it\n"
    );
}

#[test]
fn four_concurrent_applies_all_succeed_and_converge() {
    require_root!();
    let rig = rig(2, false);
    let node = rig.node(1);
    load(node);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let file = rig.scratch_dir().unwrap().join("node.toml");
    let path = file.to_str().unwrap();
    let remotes: Vec<Remote> = many_remotes(3000)
        .into_iter()
        .filter(|remote| remote.cidr.addr.is_ipv4())
        .collect();
    write_file(&file, &[a, b], &remotes);

    let children: Vec<_> = (0..4)
        .map(|_| {
            node.pod_net_command(&["apply", "-f", path])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut counts: Vec<usize> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{:?}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            let last = stdout.lines().last().unwrap();
            last.strip_suffix(" change(s) applied")
                .unwrap_or_else(|| panic!("{last}"))
                .parse()
                .unwrap()
        })
        .collect();
    counts.sort_unstable();
    // One lock from plan to the last change: the first apply makes every
    // change, the others find nothing left to do.
    assert_eq!(counts, [0, 0, 0, remotes.len() + 2]);
    assert_eq!(
        node.pod_ips().unwrap(),
        [a.ip.to_string(), b.ip.to_string()]
    );
    assert_eq!(node_list(node), listed(&remotes));
    assert_eq!(kernel_side(node), expected(&remotes));
    assert_eq!(node.problems().unwrap(), []);
}

/// Kills the agent (SIGKILL) when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 10 s for `check`.
#[test]
fn the_agent_refuses_a_bad_config_before_changing_anything() {
    require_root!();
    let rig = rig(2, false);
    let node = rig.node(1);
    load(node);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let dir = rig.scratch_dir().unwrap();
    let file = dir.join("agent.toml");
    let remotes = [
        remote("10.244.2.0/24", [192, 168, 100, 2]),
        remote("10.244.3.0/24", [192, 168, 100, 3]),
    ];
    write_file(&file, &[a, b], &remotes);
    let log = dir.join("agent.log");
    let _agent = Agent(
        node.pod_net_command(&[
            "agent",
            "--config",
            file.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let state = || (node.pod_ips().unwrap(), node_list(node), kernel_side(node));
    let applied = (
        vec![a.ip.to_string(), b.ip.to_string()],
        listed(&remotes),
        expected(&remotes),
    );
    wait_until("the first config", WAIT, || state() == applied).unwrap();

    // Pod b and node 3 would go first, then the own-IP entry fail.
    write_file(
        &file,
        &[a],
        &[
            remote("10.244.2.0/24", [192, 168, 100, 2]),
            remote("10.244.9.0/24", [192, 168, 100, 1]),
        ],
    );
    let refusal = "nodes[1] (10.244.9.0/24): 192.168.100.1 is this node's own underlay address";
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the refusal", WAIT, || logged().contains("not applied")).unwrap();
    assert_eq!(state(), applied);
    assert!(logged().contains(refusal), "{}", logged());
    assert_eq!(node.problems().unwrap(), []);
}

/// More remote CIDRs than one batched read of the trie takes (4096 a
/// call): every one is listed, counted, and removed again.
#[test]
fn five_thousand_remote_cidrs_are_listed_counted_and_removed() {
    require_root!();
    let rig = rig(0, false);
    let node = rig.node(1);
    load(node);
    let file = rig.scratch_dir().unwrap().join("cidrs.toml");
    let path = file.to_str().unwrap();
    let remotes: Vec<Remote> = (0..5000u16)
        .map(|index| {
            let [high, low] = index.to_be_bytes();
            let cidr = format!("10.{}.{low}.0/24", 100 + high);
            remote(&cidr, [192, 168, 100, 2 + (low % 4)])
        })
        .collect();
    write_file(&file, &[], &remotes);
    node.pod_net(&["apply", "-f", path]).unwrap();
    assert_eq!(node_list(node), listed(&remotes));
    assert_eq!(map_entries(node, "remote_nodes"), 5000);

    write_file(&file, &[], &[]);
    node.pod_net(&["apply", "-f", path]).unwrap();
    assert!(node_list(node).is_empty());
    assert_eq!(map_entries(node, "remote_nodes"), 0);
}
