//! What the pod-net CLI reports on a node, parsed from its `--json`
//! output: counters, pods, remote entries and status problems.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::cmd::output_of;

use super::Node;

impl Node {
    /// Packet counts per reason, from `pod-net stats --json`.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .counted_all()?
            .into_iter()
            .map(|(name, (packets, _))| (name, packets))
            .collect())
    }

    /// Packets counted under `reason`.
    pub fn counter(&self, reason: &str) -> Result<u64> {
        self.counted(reason).map(|(packets, _)| packets)
    }

    /// Packets and bytes counted under `reason`.
    pub fn counted(&self, reason: &str) -> Result<(u64, u64)> {
        self.counted_all()?
            .remove(reason)
            .with_context(|| format!("no counter {reason}"))
    }

    /// Packets counted under `reason` since the `before` snapshot of
    /// [`Node::counters`].
    pub fn counted_since(&self, before: &BTreeMap<String, u64>, reason: &str) -> Result<u64> {
        Ok(self.counter(reason)? - before.get(reason).copied().unwrap_or(0))
    }

    /// Every reason that moved since the `before` snapshot, with how far.
    pub fn moved_since(&self, before: &BTreeMap<String, u64>) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .counters()?
            .into_iter()
            .filter_map(|(name, count)| {
                let delta = count - before.get(&name).copied().unwrap_or(0);
                (delta != 0).then_some((name, delta))
            })
            .collect())
    }

    /// Packets and bytes per reason.
    fn counted_all(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let text = self.pod_net(&["stats", "--json"])?;
        let json: serde_json::Value =
            serde_json::from_str(&text).context("parsing pod-net stats --json")?;
        let counters = json["counters"]
            .as_object()
            .context("stats --json has no counters object")?;
        counters
            .iter()
            .map(|(name, value)| {
                let count = |field: &str| {
                    value[field]
                        .as_u64()
                        .with_context(|| format!("{name} has no {field} count"))
                };
                Ok((name.clone(), (count("packets")?, count("bytes")?)))
            })
            .collect()
    }

    /// The addresses `pod list --json` shows, in its order (by address).
    pub fn pod_ips(&self) -> Result<Vec<String>> {
        self.json_list(&["pod", "list", "--json"], |pod| string(pod, "ip"))
    }

    /// `node list --json` as CIDR -> mode (`vxlan` or `direct`).
    pub fn remote_modes(&self) -> Result<BTreeMap<String, String>> {
        self.json_list(&["node", "list", "--json"], |entry| {
            Ok((string(entry, "cidr")?, string(entry, "mode")?))
        })
        .map(|modes| modes.into_iter().collect())
    }

    /// `status --json`'s problems as (what, hint); fails unless the exit
    /// status agrees (0 with none, 1 with some).
    pub fn problems(&self) -> Result<Vec<(String, String)>> {
        let output = output_of(&mut self.pod_net_command(&["status", "--json"]))?;
        let status: Value =
            serde_json::from_slice(&output.stdout).context("parsing status --json")?;
        let problems = status["problems"]
            .as_array()
            .context("status --json has no problems array")?
            .iter()
            .map(|problem| Ok((string(problem, "what")?, string(problem, "hint")?)))
            .collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(
            output.status.code() == Some(i32::from(!problems.is_empty())),
            "status exited {:?} with problems {problems:?}",
            output.status
        );
        Ok(problems)
    }

    /// Each element of the JSON array `pod-net args..` prints, through `item`.
    fn json_list<T>(&self, args: &[&str], item: impl Fn(&Value) -> Result<T>) -> Result<Vec<T>> {
        let text = self.pod_net(args)?;
        let list: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing pod-net {args:?}"))?;
        list.as_array()
            .with_context(|| format!("pod-net {args:?} printed no array: {text}"))?
            .iter()
            .map(item)
            .collect()
    }
}

/// A string field of a JSON object.
fn string(object: &Value, field: &str) -> Result<String> {
    object[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no string {field} in {object}"))
}
