//! ns/packet of the programs under `BPF_PROG_TEST_RUN`, per decision, as
//! JSON for `cargo xtask bench`. Not a test: timings are never asserted.
//!
//! Test run repeats a program on the same skb without restoring it, so a
//! program that rewrites its packet (all of pod-net's fast paths do) would
//! be timed on its own output from the second run on. Each sample is
//! therefore one run on a fresh copy; the kernel's per-run time excludes
//! the syscall around it.
//!
//! With `--scale`, the same cases run against two instances, one with the
//! handful of entries the cases need and one filled to a big node in a big
//! cluster (64k local endpoints, 1M remote /32s, 10k remote CIDRs),
//! sample by sample in turn so both see the same machine. It also reports
//! each map's memory (bpftool's `bytes_memlock`).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use anyhow::Context as _;
use pod_net_common::{
    event::CONFIG_F_NO_NAT_CHECK,
    map_table,
    program_names::{POD_EGRESS, UNDERLAY_INGRESS},
};
use pod_net_tests::{
    frames::{self, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4},
    testrun::{Harness, LOOPBACK_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, endpoint},
};
use serde_json::{Value, json};

const RUNS_PER_SAMPLE: u32 = 20_000;
const SAMPLES: usize = 5;

const NODE_1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_2: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
/// In a remote node's /24.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
/// A pod pinned to its node by a /32 (in the big instance, one of 1M).
const PINNED: Ipv4Addr = Ipv4Addr::new(10, 64, 100, 100);
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 3];
const GATEWAY: [u8; 6] = [2, 0xee, 0, 0, 0, 1];

/// The big instance: what the issue calls a big node in a big cluster.
const BIG_LOCAL: u32 = 65_000;
const BIG_PINNED: u32 = 1_000_000;
const BIG_CIDRS: u32 = 10_000;

struct Case {
    name: &'static str,
    program: &'static str,
    frame: Vec<u8>,
    expected: u32,
}

fn main() -> anyhow::Result<()> {
    let scale = std::env::args().any(|arg| arg == "--scale");
    let cases = cases();
    let small = instance()?;
    if !scale {
        // Also the TCP cases on an instance loaded with --nat-check off:
        // what the per-packet NAT check costs.
        let mut nat_off = instance()?;
        nat_off.set_flags(CONFIG_F_NO_NAT_CHECK)?;
        let mut results = BTreeMap::new();
        for case in &cases {
            let mut runs = vec![(case.name.to_owned(), &small)];
            if case.name.ends_with("_tcp") {
                runs.push((format!("{} (NAT check off)", case.name), &nat_off));
            }
            for (name, harness) in runs {
                let samples = (0..SAMPLES)
                    .map(|_| sample(harness, case))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                results.insert(name, samples);
            }
        }
        println!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }

    let mut big = instance()?;
    let started = Instant::now();
    fill(&mut big)?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let mut timings: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for _ in 0..SAMPLES {
        for case in &cases {
            for (size, harness) in [("small", &small), ("big", &big)] {
                let ns = sample(harness, case)?;
                timings
                    .entry(size)
                    .or_default()
                    .entry(case.name)
                    .or_default()
                    .push(ns);
            }
        }
    }
    // The maps that grow with a node and a cluster, by name.
    let sized_maps = [
        map_table::LOCAL_ENDPOINTS,
        map_table::REMOTE_PODS,
        map_table::REMOTE_NODES,
    ];
    let memory = |harness: &Harness| -> anyhow::Result<Value> {
        let mut maps = serde_json::Map::new();
        for map in sized_maps {
            let bytes = memlock(harness.map_id(map.name)?)?;
            maps.insert(map.name.to_owned(), json!(bytes));
        }
        Ok(Value::Object(maps))
    };
    let entries = |counts: [u32; 3]| -> Value {
        sized_maps
            .iter()
            .zip(counts)
            .map(|(map, count)| (map.name.to_owned(), json!(count)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let report = json!({
        "timings": timings,
        "memlock": {"small": memory(&small)?, "big": memory(&big)?},
        "entries": {
            "small": entries([2, 1, 1]),
            "big": entries([BIG_LOCAL + 2, BIG_PINNED + 1, BIG_CIDRS + 1]),
        },
        "fill_seconds": fill_seconds,
    });
    println!("{report}");
    Ok(())
}

/// A fresh instance with what the cases need: two local pods, a remote
/// node's /24 and one pinned /32.
fn instance() -> anyhow::Result<Harness> {
    let mut harness = Harness::new()?;
    harness.set_underlay(NODE_1, 1, 8472)?;
    // A sends, from the interface test run uses, so anti-spoofing (on, as
    // by default) checks it and lets it through.
    harness.add_endpoint(A, endpoint(LOOPBACK_IFINDEX, MAC_A, GATEWAY))?;
    harness.add_endpoint(B, endpoint(42, MAC_B, GATEWAY))?;
    harness.add_remote(Ipv4Addr::new(10, 244, 2, 0), 24, NODE_2, None)?;
    harness.add_remote(PINNED, 32, NODE_2, None)?;
    Ok(harness)
}

/// Fills `harness` around the cases' entries: local pods in 10.200/16 and
/// up, /32s from 10.64.0.0 (spread over 250 nodes), /24s from 10.128.0.0.
fn fill(harness: &mut Harness) -> anyhow::Result<()> {
    for index in 0..BIG_LOCAL {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + index);
        harness.add_endpoint(ip, endpoint(100 + index, MAC_B, GATEWAY))?;
    }
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    for index in (0..=BIG_PINNED).filter(|&index| Ipv4Addr::from(base + index) != PINNED) {
        let node = Ipv4Addr::new(192, 168, 101, u8::try_from(index % 250)? + 1);
        harness.add_remote(Ipv4Addr::from(base + index), 32, node, None)?;
    }
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    for index in 0..BIG_CIDRS {
        let node = Ipv4Addr::new(192, 168, 102, u8::try_from(index % 250)? + 1);
        harness.add_remote(Ipv4Addr::from(base + (index << 8)), 24, node, None)?;
    }
    Ok(())
}

fn cases() -> Vec<Case> {
    let from_remote = frames::ping_frame(
        [0x0e, 0x6e, 192, 168, 100, 1],
        [0x0e, 0x6e, 192, 168, 100, 2],
        &Ipv4::new(REMOTE, B, IPPROTO_ICMP),
    );
    let to = |dst: Ipv4Addr, dst_mac| {
        frames::ping_frame(dst_mac, MAC_A, &Ipv4::new(A, dst, IPPROTO_ICMP))
    };
    vec![
        Case {
            name: "redirect_local",
            program: POD_EGRESS,
            frame: to(B, MAC_B),
            expected: TC_ACT_REDIRECT,
        },
        Case {
            name: "redirect_local_tcp",
            program: POD_EGRESS,
            frame: frames::tcp_syn_frame(
                (MAC_B, MAC_A),
                &Ipv4::new(A, B, IPPROTO_TCP),
                (40000, 5201),
            ),
            expected: TC_ACT_REDIRECT,
        },
        Case {
            // To a Service IP: the kernel may NAT it, so the NAT check
            // remembers the flow.
            name: "pass_unknown_dst_tcp",
            program: POD_EGRESS,
            frame: frames::tcp_syn_frame(
                (GATEWAY, MAC_A),
                &Ipv4::new(A, Ipv4Addr::new(10, 96, 0, 10), IPPROTO_TCP),
                (40000, 443),
            ),
            expected: TC_ACT_OK,
        },
        Case {
            name: "encap",
            program: POD_EGRESS,
            frame: to(REMOTE, GATEWAY),
            expected: TC_ACT_REDIRECT,
        },
        Case {
            name: "encap_pinned_pod",
            program: POD_EGRESS,
            frame: to(PINNED, GATEWAY),
            expected: TC_ACT_REDIRECT,
        },
        Case {
            name: "decap",
            program: UNDERLAY_INGRESS,
            frame: frames::vxlan_frame(
                ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
                &Ipv4::new(NODE_2, NODE_1, IPPROTO_UDP),
                (50000, 8472),
                1,
                &from_remote,
            ),
            expected: TC_ACT_REDIRECT,
        },
        Case {
            name: "pass_unknown_dst",
            program: POD_EGRESS,
            frame: to(Ipv4Addr::new(10, 250, 9, 9), GATEWAY),
            expected: TC_ACT_OK,
        },
        Case {
            name: "pass_not_ip",
            program: POD_EGRESS,
            frame: frames::arp_request(MAC_A, A, B),
            expected: TC_ACT_OK,
        },
    ]
}

/// The average kernel time of one run, over `RUNS_PER_SAMPLE` single runs.
fn sample(harness: &Harness, case: &Case) -> anyhow::Result<f64> {
    let mut total_ns = 0u128;
    for _ in 0..RUNS_PER_SAMPLE {
        let run = harness.run_program(case.program, &case.frame, 1)?;
        anyhow::ensure!(
            run.action == case.expected,
            "{}: action {}",
            case.name,
            run.action
        );
        total_ns += run.duration_ns;
    }
    let average = total_ns / u128::from(RUNS_PER_SAMPLE);
    Ok(f64::from(u32::try_from(average).unwrap_or(u32::MAX)))
}

/// bpftool's view of a map's memory.
fn memlock(id: u32) -> anyhow::Result<u64> {
    let text = pod_net_tests::cmd::run("bpftool", ["-j", "map", "show", "id", &id.to_string()])?;
    let info: Value = serde_json::from_str(&text)?;
    info["bytes_memlock"]
        .as_u64()
        .with_context(|| format!("no bytes_memlock in {text}"))
}
