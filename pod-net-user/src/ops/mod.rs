//! Operating a node: making it match a file (`apply`), repairing half-done
//! state (`gc`), checking it (`status`), and watching what the programs do
//! (`stats`, `metrics`, `monitor`), with plain-text tables (`table`), and
//! what a cluster agent reports about its store (`cluster_status`), and
//! chaining the CNI plugin into another network's conflist (`cni_chain`).

pub mod apply;
pub mod cluster_status;
pub mod cni_chain;
pub mod gc;
pub mod metrics;
pub mod monitor;
pub mod stats;
pub mod status;
pub mod table;
