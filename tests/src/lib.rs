//! Test support for pod-net: the veth-namespace rig (also behind
//! `cargo xtask rig`), command helpers, the privilege gate, frames built and
//! read back, the deployment manifest read as data, OCI image archives,
//! private container runtimes for the image, real kubelets on rig nodes,
//! and (with the `testrun` feature) the `BPF_PROG_TEST_RUN` harness.

pub mod capture;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod daemon;
pub mod decode;
pub mod deploy;
pub mod flannel;
pub mod flanneld;
pub mod frames;
pub mod interop;
pub mod kube;
pub mod kube_cluster;
pub mod kubelet;
pub mod oci;
pub mod peers;
pub mod privileges;
pub mod rig;
pub mod runtimes;
#[cfg(feature = "testrun")]
pub mod testrun;
pub mod wait;

pub use rig::{Node, Pod, Rig, RigSpec};
pub use wait::{wait_for, wait_until};
