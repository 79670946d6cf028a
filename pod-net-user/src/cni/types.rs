//! The CNI types pod-net-cni reads and writes, hand-written with serde.
//!
//! Only what the plugin needs is typed; everything else stays as raw JSON.
//! `prevResult` in particular is kept verbatim and echoed back on ADD, so
//! fields this plugin does not know about pass through untouched.
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Versions this plugin speaks. 0.3.0 introduced chaining with
/// prevResult on ADD (kube-flannel's conflist still says 0.3.1); 0.4.0
/// introduced CHECK and prevResult on DEL; 1.1.0 added GC and STATUS.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The network configuration on stdin (one plugin's entry of a conflist,
/// with the runtime's additions).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Where `pod-net load` pinned the datapath.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: String,
    /// Keep this network's pods on the kernel path (bridge, iptables
    /// FORWARD, NetworkPolicy) instead of the fast path.
    #[serde(default)]
    pub no_bypass: bool,
    /// An accelerator in another plugin's chain (beside flannel): with no
    /// datapath loaded, ADD and CHECK pass and the pod keeps the kernel
    /// path, instead of failing its creation.
    #[serde(default)]
    pub optional: bool,
    /// The result of the plugins before this one, kept verbatim.
    #[serde(default)]
    pub prev_result: Option<Box<RawValue>>,
    /// GC: the attachments the runtime still has.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC before CNI 1.1 final: the same list under its older name.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
}

fn default_pin_dir() -> String {
    crate::datapath::pins::DEFAULT_PIN_DIR.to_owned()
}

/// One (container, interface) pair the runtime keeps, for GC.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The parts of a previous result this plugin reads.
#[derive(Debug, Default, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

#[derive(Debug, Deserialize)]
pub struct Interface {
    pub name: String,
    /// Set for interfaces inside the sandbox (the pod's netns path).
    #[serde(default)]
    pub sandbox: String,
}

#[derive(Debug, Deserialize)]
pub struct IpConfig {
    /// `10.244.1.5/24`
    pub address: String,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// The error object CNI defines, printed on stdout.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// Well-known error codes from the CNI specification.
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const BAD_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (100 and up): CHECK found the pod out of step.
    pub const CHECK_FAILED: u32 = 100;
}
