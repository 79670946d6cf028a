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
    /// Further `(subject, baseline)` ratio columns, after `subject` against
    /// each baseline: for a report with two subjects.
    pub ratios: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// A target ratio (from an issue) to print beside a result, never to
/// assert: `subject / baseline` of `figure`'s medians should be better by
/// at least `better_by` (strictly, when `strictly`). Better is higher or
/// lower as the row says.
pub struct Goal {
    pub subject: &'static str,
    pub baseline: &'static str,
    pub figure: &'static str,
    pub better_by: f64,
    pub strictly: bool,
}

impl Report {
    /// `subject / baseline` of the medians for one row.
    #[must_use]
    pub fn ratio_of(row: &Row, subject: &str, baseline: &str) -> Option<f64> {
        Some(row.median(subject)? / row.median(baseline)?)
    }

    /// Every ratio column: the subject against each baseline, then the
    /// further pairs.
    fn ratio_columns(&self) -> Vec<(&str, &str)> {
        self.baselines
            .iter()
            .map(|baseline| (self.subject.as_str(), baseline.as_str()))
            .chain(
                self.ratios
                    .iter()
                    .map(|(subject, baseline)| (subject.as_str(), baseline.as_str())),
            )
            .collect()
    }

    /// One line saying where a result stands against `goal`.
    #[must_use]
    pub fn goal_line(&self, goal: &Goal) -> String {
        let Some(row) = self.rows.iter().find(|row| row.figure == goal.figure) else {
            return format!("goal: no figure {:?} in this report", goal.figure);
        };
        // Lower is better: the goal is a ceiling on the ratio.
        let (relation, bound) = match (row.higher_is_better, goal.strictly) {
            (true, false) => ("≥", goal.better_by),
            (true, true) => (">", goal.better_by),
            (false, false) => ("≤", 1.0 / goal.better_by),
            (false, true) => ("<", 1.0 / goal.better_by),
        };
        let head = format!(
            "goal: {} / {}, {}: {relation} {bound:.2}×",
            goal.subject, goal.baseline, row.figure
        );
        match Self::ratio_of(row, goal.subject, goal.baseline) {
            Some(ratio) => {
                let met = match relation {
                    "≥" => ratio >= bound,
                    ">" => ratio > bound,
                    "≤" => ratio <= bound,
                    _ => ratio < bound,
                };
                let verdict = if met { "met" } else { "NOT met" };
                format!("{head}; measured {ratio:.2}×, {verdict}")
            }
            None => format!("{head}; not measured"),
        }
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
        let columns = self.ratio_columns();
        for (subject, baseline) in &columns {
            let _ = write!(out, " {subject} / {baseline} |");
        }
        out.push('\n');
        out.push_str("|---|");
        for _ in 0..path_names.len() + columns.len() {
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
            for (subject, baseline) in &columns {
                match Self::ratio_of(row, subject, baseline) {
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
        self.write_every_round(&mut out, &path_names);
        out
    }

    /// The same table with every round's sample, in the order measured:
    /// a median hides a bad round, and this shows it.
    fn write_every_round(&self, out: &mut String, path_names: &[String]) {
        let _ = write!(out, "\nEvery round:\n\n| figure |");
        for name in path_names {
            let _ = write!(out, " {name} |");
        }
        out.push_str("\n|---|");
        for _ in path_names {
            out.push_str("---|");
        }
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "| {} ({}) |", row.figure, row.unit);
            for (_, summary) in &row.paths {
                let samples: Vec<String> = summary.samples.iter().copied().map(short).collect();
                let _ = write!(out, " {} |", samples.join(", "));
            }
            out.push('\n');
        }
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
            ratios: vec![],
            rows: vec![Row {
                figure: "TCP".into(),
                unit: "Gbit/s".into(),
                higher_is_better: true,
                paths: vec![
                    ("bridge".into(), Summary::of(vec![10.0, 9.5, 10.5])),
                    ("pod-net".into(), Summary::of(vec![12.0, 12.0, 12.0])),
                ],
            }],
            notes: vec![],
        };
        assert!(
            (Report::ratio_of(&report.rows[0], "pod-net", "bridge").unwrap() - 1.2).abs() < 1e-9
        );
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| TCP (Gbit/s) | 10.0 (9.50–10.5) | 12.0 (12.0–12.0) | 1.20× |")
        );
        // Every round, in the order measured.
        assert!(
            markdown.contains("| TCP (Gbit/s) | 10.0, 9.50, 10.5 | 12.0, 12.0, 12.0 |\n"),
            "{markdown}"
        );
    }

    #[test]
    fn further_ratio_columns_and_goals() {
        let row = |figure: &str, higher_is_better: bool, values: [f64; 3]| Row {
            figure: figure.into(),
            unit: "u".into(),
            higher_is_better,
            paths: ["a", "b", "c"]
                .iter()
                .zip(values)
                .map(|(name, value)| ((*name).into(), Summary::of(vec![value])))
                .collect(),
        };
        let report = Report {
            title: "t".into(),
            rounds: 1,
            subject: "a".into(),
            baselines: vec!["b".into()],
            ratios: vec![("c".into(), "b".into())],
            rows: vec![
                row("TCP", true, [10.0, 8.0, 12.0]),
                row("latency", false, [10.0, 8.0, 9.0]),
            ],
            notes: vec![],
        };
        let markdown = report.to_markdown();
        assert!(
            markdown
                .contains("| figure | a | b | c | a / b | c / b |\n|---|---|---|---|---|---|\n")
        );
        assert!(markdown.contains("| 1.25× | 1.50× |"), "{markdown}");
        let goal = |figure, better_by, strictly| Goal {
            subject: "c",
            baseline: "b",
            figure,
            better_by,
            strictly,
        };
        assert_eq!(
            report.goal_line(&goal("TCP", 1.2, false)),
            "goal: c / b, TCP: ≥ 1.20×; measured 1.50×, met"
        );
        assert_eq!(
            report.goal_line(&goal("latency", 1.0, true)),
            "goal: c / b, latency: < 1.00×; measured 1.12×, NOT met"
        );
        assert!(
            report
                .goal_line(&goal("nope", 1.0, false))
                .contains("no figure")
        );
    }
}
