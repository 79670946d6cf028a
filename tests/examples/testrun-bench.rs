//! ns/packet of the programs under `BPF_PROG_TEST_RUN`, per decision, as
//! JSON for `cargo xtask bench`. Not a test: timings are never asserted.
//!
//! Test run repeats a program on the same skb without restoring it, so a
//! program that rewrites its packet (all of pod-net's fast paths do) would
//! be timed on its own output from the second run on. Each sample is
//! therefore one run on a fresh copy; the kernel's per-run time excludes
//! the syscall around it.
#[path = "../harness/testrun.rs"]
mod testrun;

use std::{collections::BTreeMap, net::Ipv4Addr};

use pod_net_common::program_names::{POD_EGRESS, UNDERLAY_INGRESS};
use pod_net_tests::frames::{self, IPPROTO_ICMP, IPPROTO_UDP, Ipv4};
use testrun::{Harness, TC_ACT_OK, TC_ACT_REDIRECT, endpoint};

const RUNS_PER_SAMPLE: u32 = 20_000;
const SAMPLES: usize = 5;

fn main() -> anyhow::Result<()> {
    let node_1 = Ipv4Addr::new(192, 168, 100, 1);
    let node_2 = Ipv4Addr::new(192, 168, 100, 2);
    let a = Ipv4Addr::new(10, 244, 1, 2);
    let b = Ipv4Addr::new(10, 244, 1, 3);
    let remote = Ipv4Addr::new(10, 244, 2, 7);
    let mac_a = [2, 0, 0x0a, 0xf4, 1, 2];
    let mac_b = [2, 0, 0x0a, 0xf4, 1, 3];
    let gateway = [2, 0xee, 0, 0, 0, 1];
    let mut harness = Harness::new()?;
    harness.set_underlay(node_1, 1, 8472)?;
    harness.add_endpoint(a, endpoint(41, mac_a, gateway))?;
    harness.add_endpoint(b, endpoint(42, mac_b, gateway))?;
    harness.add_remote(Ipv4Addr::new(10, 244, 2, 0), 24, node_2, None)?;

    let from_remote = frames::ping_frame(
        [0x0e, 0x6e, 192, 168, 100, 1],
        [0x0e, 0x6e, 192, 168, 100, 2],
        &Ipv4::new(remote, b, IPPROTO_ICMP),
    );
    let cases = [
        (
            "redirect_local",
            POD_EGRESS,
            frames::ping_frame(mac_b, mac_a, &Ipv4::new(a, b, IPPROTO_ICMP)),
            TC_ACT_REDIRECT,
        ),
        (
            "encap",
            POD_EGRESS,
            frames::ping_frame(gateway, mac_a, &Ipv4::new(a, remote, IPPROTO_ICMP)),
            TC_ACT_REDIRECT,
        ),
        (
            "decap",
            UNDERLAY_INGRESS,
            frames::vxlan_frame(
                ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
                &Ipv4::new(node_2, node_1, IPPROTO_UDP),
                (50000, 8472),
                1,
                &from_remote,
            ),
            TC_ACT_REDIRECT,
        ),
        (
            "pass_unknown_dst",
            POD_EGRESS,
            frames::ping_frame(
                gateway,
                mac_a,
                &Ipv4::new(a, Ipv4Addr::new(10, 250, 9, 9), IPPROTO_ICMP),
            ),
            TC_ACT_OK,
        ),
        (
            "pass_not_ip",
            POD_EGRESS,
            frames::arp_request(mac_a, a, b),
            TC_ACT_OK,
        ),
    ];
    let mut results = BTreeMap::new();
    for (name, program, frame, expected) in &cases {
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            let mut total_ns = 0u128;
            for _ in 0..RUNS_PER_SAMPLE {
                let run = harness.run_program(program, frame, 1)?;
                anyhow::ensure!(run.action == *expected, "{name}: action {}", run.action);
                total_ns += run.duration_ns;
            }
            let average = total_ns / u128::from(RUNS_PER_SAMPLE);
            samples.push(f64::from(u32::try_from(average).unwrap_or(u32::MAX)));
        }
        results.insert(*name, samples);
    }
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}
