//! ns/packet of `pod_egress` under `BPF_PROG_TEST_RUN`, per decision, as
//! JSON for `cargo xtask bench`. Not a test: timings are never asserted.
#[path = "../harness/testrun.rs"]
mod testrun;

use std::{collections::BTreeMap, net::Ipv4Addr};

use pod_net_tests::frames::{self, IPPROTO_ICMP, Ipv4};
use testrun::{Harness, TC_ACT_OK, TC_ACT_REDIRECT, endpoint};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let a = Ipv4Addr::new(10, 244, 1, 2);
    let b = Ipv4Addr::new(10, 244, 1, 3);
    let mac_a = [2, 0, 0x0a, 0xf4, 1, 2];
    let mac_b = [2, 0, 0x0a, 0xf4, 1, 3];
    let gateway = [2, 0xee, 0, 0, 0, 1];
    let mut harness = Harness::new()?;
    harness.add_endpoint(b, endpoint(42, mac_b, gateway))?;

    let cases = [
        (
            "redirect_local",
            frames::ping_frame(mac_b, mac_a, &Ipv4::new(a, b, IPPROTO_ICMP)),
            TC_ACT_REDIRECT,
        ),
        (
            "pass_unknown_dst",
            frames::ping_frame(
                gateway,
                mac_a,
                &Ipv4::new(a, Ipv4Addr::new(10, 244, 9, 9), IPPROTO_ICMP),
            ),
            TC_ACT_OK,
        ),
        ("pass_not_ip", frames::arp_request(mac_a, a, b), TC_ACT_OK),
    ];
    let mut results = BTreeMap::new();
    for (name, frame, expected) in &cases {
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let run = harness.run_repeated(frame, REPEAT)?;
            anyhow::ensure!(run.action == *expected, "{name}: action {}", run.action);
            samples.push(f64::from(
                u32::try_from(run.duration_ns).unwrap_or(u32::MAX),
            ));
        }
        results.insert(*name, samples);
    }
    println!("{}", serde_json::to_string(&results)?);
    Ok(())
}
