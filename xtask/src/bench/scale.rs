//! `cargo xtask bench scale`: does a big node in a big cluster slow the
//! fast path down, how long does `apply` take for 100k remote pods, and
//! how much memory do the maps take?
//!
//! - ns/packet under `BPF_PROG_TEST_RUN`: the same cases against an
//!   instance with the handful of entries they need and one holding 64k
//!   local endpoints, 1M remote pod /32s and 10k remote CIDRs (the
//!   `testrun-bench --scale` example), sample by sample in turn. Goal:
//!   under 10 % slower.
//! - `pod-net apply` of 100k remote pod /32s, add and remove, against the
//!   kernel-only equivalent: the same routes, neighbours and FDB entries
//!   through `ip -batch` (what a flannel-style node programs).
//! - `bytes_memlock` of each map at each size.
use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result};
use pod_net_common::map_table::{self, MapSpec};
use pod_net_tests::{Node, Rig, RigSpec, cmd::run_command};
use serde_json::Value;

use super::{
    report::{Report, Row, Summary},
    testrun,
};

/// Remote pods in the apply benchmark, spread over this many nodes.
const APPLY_PODS: u32 = 100_000;
const APPLY_NODES: u32 = 50;

/// The maps that grow with a node and a cluster.
const SIZED_MAPS: [MapSpec; 3] = [
    map_table::LOCAL_ENDPOINTS,
    map_table::REMOTE_PODS,
    map_table::REMOTE_NODES,
];

const SMALL: &str = "10 entries";
const BIG: &str = "64k local + 1M pods + 10k CIDRs";

pub fn run(rounds: usize) -> Result<Vec<Report>> {
    let mut test_run = Vec::new();
    for _ in 0..rounds {
        test_run.push(scale_test_run()?);
    }
    let (apply, apply_memlock) = apply_rounds(rounds)?;
    Ok(vec![
        test_run_report(&test_run, rounds)?,
        apply_report(&apply, rounds),
        memory_report(&test_run, &apply_memlock)?,
    ])
}

/// One run of the example: timings per size and case, memlock per size.
fn scale_test_run() -> Result<Value> {
    testrun::run_example(&["--scale"])
}

fn test_run_report(runs: &[Value], rounds: usize) -> Result<Report> {
    // case -> size -> every sample of every run
    let mut samples: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for run in runs {
        for (size, key) in [(SMALL, "small"), (BIG, "big")] {
            let cases = run["timings"][key]
                .as_object()
                .with_context(|| format!("no {key} timings"))?;
            for (case, values) in cases {
                let values = values.as_array().context("timings are not a list")?;
                samples
                    .entry(case.clone())
                    .or_default()
                    .entry(size)
                    .or_default()
                    .extend(values.iter().filter_map(Value::as_f64));
            }
        }
    }
    let rows = samples
        .into_iter()
        .map(|(case, by_size)| Row {
            figure: case,
            unit: "ns/packet".into(),
            higher_is_better: false,
            paths: [SMALL, BIG]
                .iter()
                .map(|size| {
                    let values = by_size.get(size).cloned().unwrap_or_default();
                    ((*size).to_owned(), Summary::of(values))
                })
                .collect(),
        })
        .collect();
    let fill: Vec<String> = runs
        .iter()
        .filter_map(|run| run["fill_seconds"].as_f64())
        .map(|seconds| format!("{seconds:.1} s"))
        .collect();
    Ok(Report {
        title: "Scale: ns/packet with a big node's maps".into(),
        rounds,
        subject: BIG.into(),
        baselines: vec![SMALL.into()],
        ratios: Vec::new(),
        rows,
        notes: vec![
            "BPF_PROG_TEST_RUN, one-packet runs on fresh copies, averaged over 20,000 runs \
             per sample, 5 samples per run, both instances in turn; the goal is a ratio under \
             1.10. encap goes to a node CIDR (the trie), encap_pinned_pod to one of the 1M /32s \
             (the remote_pods hash)."
                .into(),
            format!(
                "Filling the big instance entry by entry took {} per run.",
                fill.join(", ")
            ),
        ],
    })
}

/// Wall times (seconds) of each path per figure, and memlock after adding.
type ApplyFigures = BTreeMap<(&'static str, &'static str), Vec<f64>>;

fn apply_rounds(rounds: usize) -> Result<(ApplyFigures, BTreeMap<String, u64>)> {
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 0,
        ..RigSpec::default()
    })?;
    let dir = rig.scratch_dir()?;
    let node = rig.node(1);
    node.load_on_underlay(&[])?;
    // The kernel-only side: a flannel-style vxlan device of its own.
    node.ip(&[
        "link",
        "add",
        "kvxlan9",
        "type",
        "vxlan",
        "id",
        "9",
        "dstport",
        "8472",
        "dev",
        "eth0",
        "nolearning",
    ])?;
    node.ip(&["link", "set", "kvxlan9", "up"])?;

    let inputs = apply_inputs();
    let file = |name: &str, text: &str| -> Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let config = file("pods.toml", &inputs.toml)?;
    let empty = file("empty.toml", "")?;
    let ip_add = file("ip-add.batch", &inputs.ip_add)?;
    let ip_del = file("ip-del.batch", &inputs.ip_del)?;
    let fdb_add = file("fdb-add.batch", &inputs.fdb_add)?;
    let fdb_del = file("fdb-del.batch", &inputs.fdb_del)?;

    let mut figures = ApplyFigures::new();
    let mut memlock = BTreeMap::new();
    let pod_net = |file: &str| node.pod_net_command(&["apply", "-f", file]);
    let kernel = |batch: &str, fdb: &str| {
        vec![
            node.command(&["ip", "-batch", batch]),
            node.command(&["bridge", "-batch", fdb]),
        ]
    };
    for _ in 0..rounds {
        let mut time = |figure, path, commands: Vec<std::process::Command>| -> Result<()> {
            let started = Instant::now();
            for mut command in commands {
                run_command(&mut command)?;
            }
            figures
                .entry((figure, path))
                .or_default()
                .push(started.elapsed().as_secs_f64());
            Ok(())
        };
        time("add 100k", "pod-net apply", vec![pod_net(&config)])?;
        memlock = map_memlock(node)?;
        time("remove 100k", "pod-net apply", vec![pod_net(&empty)])?;
        time("add 100k", "ip -batch", kernel(&ip_add, &fdb_add))?;
        time("remove 100k", "ip -batch", kernel(&ip_del, &fdb_del))?;
    }
    Ok((figures, memlock))
}

/// The apply file, and the same routes, neighbours and FDB entries as
/// `ip -batch` and `bridge -batch` input for the kernel-only device.
#[derive(Default)]
struct ApplyInputs {
    toml: String,
    ip_add: String,
    ip_del: String,
    fdb_add: String,
    fdb_del: String,
}

fn apply_inputs() -> ApplyInputs {
    let mut inputs = ApplyInputs::default();
    for node in 0..APPLY_NODES {
        let node_ip = node_ip(node);
        let mac = vtep_mac(node_ip);
        let _ = writeln!(
            inputs.ip_add,
            "neigh replace {node_ip} lladdr {mac} dev kvxlan9 nud permanent"
        );
        let _ = writeln!(inputs.fdb_add, "fdb append {mac} dev kvxlan9 dst {node_ip}");
        let _ = writeln!(inputs.fdb_del, "fdb del {mac} dev kvxlan9 dst {node_ip}");
    }
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    for index in 0..APPLY_PODS {
        let pod = Ipv4Addr::from(base + index);
        let node_ip = node_ip(index % APPLY_NODES);
        let _ = writeln!(
            inputs.toml,
            "[[nodes]]\ncidr = \"{pod}/32\"\nnode_ip = \"{node_ip}\""
        );
        let _ = writeln!(
            inputs.ip_add,
            "route replace {pod}/32 via {node_ip} dev kvxlan9 onlink"
        );
        let _ = writeln!(inputs.ip_del, "route del {pod}/32 dev kvxlan9");
    }
    for node in 0..APPLY_NODES {
        let _ = writeln!(inputs.ip_del, "neigh del {} dev kvxlan9", node_ip(node));
    }
    inputs
}

/// Remote node addresses: 192.168.100.10 and up (never this node's).
fn node_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 100, 10)) + index)
}

fn vtep_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0e:6e:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// `bytes_memlock` of each pinned map of `node` that holds entries.
fn map_memlock(node: &Node) -> Result<BTreeMap<String, u64>> {
    let mut memlock = BTreeMap::new();
    for MapSpec { name, .. } in SIZED_MAPS {
        let pin = node.pin_dir.join(name);
        let text = run_command(&mut node.command(&[
            "bpftool",
            "-j",
            "map",
            "show",
            "pinned",
            &pin.display().to_string(),
        ]))?;
        let info: Value = serde_json::from_str(&text)?;
        let bytes = info["bytes_memlock"]
            .as_u64()
            .with_context(|| format!("no bytes_memlock for {name}"))?;
        memlock.insert(name.to_owned(), bytes);
    }
    Ok(memlock)
}

fn apply_report(figures: &ApplyFigures, rounds: usize) -> Report {
    let mut rows: BTreeMap<&str, Vec<(String, Summary)>> = BTreeMap::new();
    // pod-net first in every row, as the table's columns.
    for path in ["pod-net apply", "ip -batch"] {
        for ((figure, name), samples) in figures {
            if *name == path {
                rows.entry(figure)
                    .or_default()
                    .push(((*name).to_owned(), Summary::of(samples.clone())));
            }
        }
    }
    Report {
        title: format!("Scale: apply {APPLY_PODS} remote pods"),
        rounds,
        subject: "pod-net apply".into(),
        baselines: vec!["ip -batch".into()],
        ratios: Vec::new(),
        rows: rows
            .into_iter()
            .map(|(figure, paths)| Row {
                figure: figure.into(),
                unit: "s".into(),
                higher_is_better: false,
                paths,
            })
            .collect(),
        notes: vec![format!(
            "Wall time of one `pod-net apply -f` process: {APPLY_PODS} /32s over {APPLY_NODES} \
             nodes into remote_pods plus their kernel routes, neighbours and FDB entries on \
             pnvxlan1 (add), then an empty file (remove). The baseline programs only the kernel \
             side, the same routes, neighbours and FDB entries on a vxlan device, with \
             `ip -batch`."
        )],
    }
}

fn memory_report(test_run: &[Value], applied: &BTreeMap<String, u64>) -> Result<Report> {
    let first = test_run.first().context("no test-run results")?;
    // Whole kilobytes fit an f64 exactly.
    let megabytes = |bytes: Option<u64>| {
        let kilobytes = u32::try_from(bytes.unwrap_or_default() / 1000).unwrap_or(u32::MAX);
        Summary::of(vec![f64::from(kilobytes) / 1000.0])
    };
    let rows = SIZED_MAPS
        .iter()
        .map(|&MapSpec { name: map, .. }| Row {
            figure: format!(
                "{map} ({} / {} / {} entries)",
                first["entries"]["small"][map],
                applied_entries(map),
                first["entries"]["big"][map]
            ),
            unit: "MB".into(),
            higher_is_better: false,
            paths: vec![
                (
                    SMALL.into(),
                    megabytes(first["memlock"]["small"][map].as_u64()),
                ),
                (
                    format!("apply {APPLY_PODS}"),
                    megabytes(applied.get(map).copied()),
                ),
                (BIG.into(), megabytes(first["memlock"]["big"][map].as_u64())),
            ],
        })
        .collect();
    Ok(Report {
        title: "Scale: map memory (bpftool bytes_memlock)".into(),
        rounds: 1,
        subject: BIG.into(),
        baselines: Vec::new(),
        ratios: Vec::new(),
        rows,
        notes: vec![format!(
            "At the default capacities: {} {} (preallocated, so its size does not depend on \
                 its entries), {} {} (allocated as filled, plus its bucket array), {} {} (a \
                 trie: per entry).",
            map_table::LOCAL_ENDPOINTS.name,
            map_table::LOCAL_ENDPOINTS.capacity,
            map_table::REMOTE_PODS.name,
            map_table::REMOTE_PODS.capacity,
            map_table::REMOTE_NODES.name,
            map_table::REMOTE_NODES.capacity,
        )],
    })
}

fn applied_entries(map: &str) -> u32 {
    if map == map_table::REMOTE_PODS.name {
        APPLY_PODS
    } else {
        0
    }
}
