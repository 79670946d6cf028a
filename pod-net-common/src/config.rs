//! Node-wide settings, written by `pod-net load` into the one-entry
//! `config` array.

/// Value of the `config` map (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    /// This node's underlay IPv4 address, network order; zero when pod-net
    /// was loaded without an underlay (same-node only).
    pub node_ip: [u8; 4],
    /// ifindex of the underlay interface.
    pub underlay_ifindex: u32,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// VXLAN UDP destination port, host order.
    pub vxlan_port: u16,
    pub pad: u16,
    /// This node's VTEP MAC: the inner source MAC of what it encapsulates.
    pub vtep_mac: [u8; 6],
    pub pad2: [u8; 2],
    /// `event::CONFIG_F_*` bits.
    pub flags: u32,
    /// Budget one event costs in the per-CPU rate limit (1e9 / events per
    /// second); 0 while events are off.
    pub event_cost_ns: u32,
}

impl Config {
    #[must_use]
    pub const fn has_underlay(&self) -> bool {
        self.underlay_ifindex != 0
    }

    /// Whether flanneld owns the kernel path (see
    /// [`crate::event::CONFIG_F_BESIDE_FLANNEL`]).
    #[must_use]
    pub const fn beside_flannel(&self) -> bool {
        self.flags & crate::event::CONFIG_F_BESIDE_FLANNEL != 0
    }

    /// The UDP port a pod may not send to anything but a pod: this node's
    /// VXLAN port, or flannel's default while there is no underlay (a
    /// flannel device may be listening).
    #[must_use]
    pub const fn guarded_vxlan_port(&self) -> u16 {
        if self.has_underlay() {
            self.vxlan_port
        } else {
            DEFAULT_VXLAN_PORT
        }
    }
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// flannel's VXLAN port, pod-net's default (IANA's is 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// flannel's VXLAN network identifier, pod-net's default.
pub const DEFAULT_VNI: u32 = 1;

/// Bytes VXLAN adds in front of the inner frame: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14); the outer Ethernet header
/// takes the place of the original one.
pub const VXLAN_OVERHEAD: u32 = 50;

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for Config {}
