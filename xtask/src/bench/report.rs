//! Summaries of repeated samples, ratios against a baseline measured in the
//! same run, and the JSON and Markdown that `cargo xtask bench` writes.
use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Median and range of one figure over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    #[must_use]
    pub fn of(samples: Vec<f64>) -> Self {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }
}

/// One row of a comparison table: a figure for each path.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub figure: String,
    pub unit: String,
    /// Whether bigger is better (throughput) or smaller is (latency, ns).
    pub higher_is_better: bool,
    pub paths: Vec<(String, Summary)>,
}

impl Row {
    fn median(&self, path: &str) -> Option<f64> {
        self.paths
            .iter()
            .find(|(name, _)| name == path)
            .map(|(_, summary)| summary.median)
    }
}

/// A benchmark's result: rows, and which paths ratios are taken against.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub title: String,
    pub rounds: usize,
    pub subject: String,
    pub baselines: Vec<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    /// `subject / baseline` of the medians for one row.
    #[must_use]
    pub fn ratio(&self, row: &Row, baseline: &str) -> Option<f64> {
        Some(row.median(&self.subject)? / row.median(baseline)?)
    }

    #[must_use]
    pub fn to_markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        let path_names: Vec<String> = self
            .rows
            .first()
            .map(|row| row.paths.iter().map(|(name, _)| name.clone()).collect())
            .unwrap_or_default();
        let _ = write!(out, "| figure |");
        for name in &path_names {
            let _ = write!(out, " {name} |");
        }
        for baseline in &self.baselines {
            let _ = write!(out, " {} / {baseline} |", self.subject);
        }
        out.push('\n');
        out.push_str("|---|");
        for _ in path_names.iter().chain(&self.baselines) {
            out.push_str("---|");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "| {} ({}) |", row.figure, row.unit);
            for (_, summary) in &row.paths {
                let _ = write!(
                    out,
                    " {} ({}–{}) |",
                    short(summary.median),
                    short(summary.min),
                    short(summary.max)
                );
            }
            for baseline in &self.baselines {
                match self.ratio(row, baseline) {
                    Some(ratio) => {
                        let _ = write!(out, " {ratio:.2}× |");
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\nMedian (min–max) of {} rounds, all paths measured in the same run, interleaved.",
            self.rounds
        );
        for note in &self.notes {
            let _ = writeln!(out, "{note}");
        }
        out
    }

    /// Writes `<dir>/<name>.json` and `<dir>/<name>.md`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{name}.json"));
        fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let markdown = dir.join(format!("{name}.md"));
        fs::write(&markdown, self.to_markdown())
            .with_context(|| format!("writing {}", markdown.display()))?;
        println!("bench: wrote {} and {}", json.display(), markdown.display());
        Ok(())
    }
}

/// Three significant-ish digits.
fn short(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert!((Summary::of(vec![3.0, 1.0, 2.0]).median - 2.0).abs() < 1e-9);
        assert!((Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median - 2.5).abs() < 1e-9);
        let report = Report {
            title: "t".into(),
            rounds: 3,
            subject: "pod-net".into(),
            baselines: vec!["bridge".into()],
            rows: vec![Row {
                figure: "TCP".into(),
                unit: "Gbit/s".into(),
                higher_is_better: true,
                paths: vec![
                    ("bridge".into(), Summary::of(vec![10.0])),
                    ("pod-net".into(), Summary::of(vec![12.0])),
                ],
            }],
            notes: vec![],
        };
        assert!((report.ratio(&report.rows[0], "bridge").unwrap() - 1.2).abs() < 1e-9);
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| TCP (Gbit/s) | 10.0 (10.0–10.0) | 12.0 (12.0–12.0) | 1.20× |")
        );
    }
}
