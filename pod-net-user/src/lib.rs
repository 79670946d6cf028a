//! pod-net's userspace: loading the datapath, telling it about pods and
//! other nodes, operating it, and the node agent. One folder per concern:
//!
//! - `datapath`: the programs and maps, loaded and pinned on bpffs, and
//!   typed handles on the maps;
//! - `node`: what the datapath and the kernel's path beside it know of this
//!   node's pods and of other nodes (VXLAN, direct routing, BIG TCP);
//! - `sys`: thin interfaces to the kernel (rtnetlink, interfaces,
//!   namespaces);
//! - `ops`: operating a node: `apply`, `gc`, `status`, `stats`, metrics and
//!   the event monitor;
//! - `agent`: the node daemon, and joining a cluster through etcd;
//! - `cni`: the chained CNI plugin;
//! - `cli`: the command line, which owns flag names and rendering.
//!
//! What the binaries and the tests call is public: the three front ends
//! (`cli`, `cni`, `agent`), the typed failures (`error`), and the parsers
//! and kernel helpers the tests drive directly. `datapath` and `node` are
//! reached only through those front ends and `ops`.

pub mod agent;
pub mod cidr;
pub mod cli;
pub mod cni;
pub mod crashpoint;
pub(crate) mod datapath;
pub mod error;
pub(crate) mod lifecycle;
pub mod mac;
pub(crate) mod node;
pub mod ops;
pub mod sys;

/// The eBPF object built from `pod-net-ebpf`, embedded at build time.
#[must_use]
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod-net-ebpf"))
}
