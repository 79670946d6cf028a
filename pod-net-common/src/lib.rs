//! Types shared by the pod-net eBPF programs and the userspace tools.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side reads it from
//! BPF maps, the user side writes it with aya, and `bpftool` prints it with
//! field names from BTF.
#![no_std]

pub mod config;
pub mod endpoint;
pub mod event;
pub mod map_table;
pub mod nat;
pub mod reason;
pub mod remote;

pub use config::Config;
pub use endpoint::{Endpoint, EndpointKey};
pub use reason::{Counter, Reason};
pub use remote::{PeerNode, RemoteAddr, RemoteNode};

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC ingress of a pod's host-side veth: the packets the pod sends.
    pub const POD_EGRESS: &str = "pod_egress";
    /// TC ingress of the underlay interface: VXLAN from other nodes.
    pub const UNDERLAY_INGRESS: &str = "underlay_ingress";
    /// XDP on the underlay interface (`load --xdp`).
    pub const UNDERLAY_XDP: &str = "underlay_xdp";
}
