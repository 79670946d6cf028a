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
    #[must_use]
    pub fn describe(&self) -> String {
        self.cases
            .iter()
            .map(|(case, summary)| format!("{case} {:.1} ns/packet", summary.median))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn ns_per_packet() -> Result<TestRunFigures> {
    let output = cargo(&[
        "run",
        "--quiet",
        "--release",
        "--package",
        "pod-net-tests",
        "--example",
        "testrun-bench",
    ])
    .output()
    .context("running the testrun-bench example")?;
    anyhow::ensure!(
        output.status.success(),
        "testrun-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cases: BTreeMap<String, Vec<f64>> =
        serde_json::from_slice(&output.stdout).context("parsing testrun-bench output")?;
    let rounds = cases.values().map(Vec::len).max().unwrap_or(0);
    Ok(TestRunFigures {
        rounds,
        cases: cases
            .into_iter()
            .map(|(case, samples)| (case, Summary::of(samples)))
            .collect(),
    })
}
