//! pod-net's userspace: loading the datapath, registering pods, and
//! reporting what the programs do.

pub mod agent;
pub mod apply;
pub mod attach;
pub mod big_tcp;
pub mod cidr;
pub mod cli;
pub mod cluster;
pub mod cni;
pub mod crashpoint;
pub mod datapath;
pub mod direct;
pub mod endpoints;
pub mod error;
pub mod gc;
pub mod loader;
pub mod mac;
pub mod map_batch;
pub mod metrics;
pub mod metrics_server;
pub mod monitor;
pub mod netdev;
pub mod netlink;
pub mod netns;
pub mod overlap;
pub mod peers;
pub mod pins;
pub mod remotes;
pub mod stats;
pub mod status;
pub mod table;
pub mod throttle;
pub mod tunnel;
pub mod tunnel_sync;
pub mod xdp;

/// The eBPF object built from `pod-net-ebpf`, embedded at build time.
#[must_use]
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod-net-ebpf"))
}
