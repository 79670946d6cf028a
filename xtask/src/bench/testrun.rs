//! ns/packet of the programs under `BPF_PROG_TEST_RUN`, from the
//! `testrun-bench` example (it links the eBPF object, which xtask must not).
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use super::report::Summary;
use crate::run::cargo;

pub struct TestRunFigures {
    pub rounds: usize,
    pub cases: BTreeMap<String, Summary>,
}

impl TestRunFigures {
    /// One line on `cases`, for the report notes.
    #[must_use]
    pub fn describe(&self, cases: &[&str]) -> String {
        let figures = cases
            .iter()
            .filter_map(|case| {
                self.cases
                    .get(*case)
                    .map(|summary| format!("{case} {:.0} ns", summary.median))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "BPF_PROG_TEST_RUN, median of {} samples of one-packet runs on fresh copies \
             (programs rewrite their packet, so repeats would time their own output): {figures}. \
             pass_not_ip is close to the fixed cost of a single test run.",
            self.rounds
        )
    }
}

/// Runs the `testrun-bench` example with `args`; its JSON output.
pub fn run_example<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T> {
    let mut command = cargo(&[
        "run",
        "--quiet",
        "--release",
        "--package",
        "pod-net-tests",
        "--example",
        "testrun-bench",
        "--",
    ]);
    let output = command
        .args(args)
        .output()
        .context("running the testrun-bench example")?;
    anyhow::ensure!(
        output.status.success(),
        "testrun-bench {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("parsing testrun-bench output")
}

pub fn ns_per_packet() -> Result<TestRunFigures> {
    let cases: BTreeMap<String, Vec<f64>> = run_example(&[])?;
    let rounds = cases.values().map(Vec::len).max().unwrap_or(0);
    Ok(TestRunFigures {
        rounds,
        cases: cases
            .into_iter()
            .map(|(case, samples)| (case, Summary::of(samples)))
            .collect(),
    })
}
