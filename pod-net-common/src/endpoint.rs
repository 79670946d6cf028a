//! The local-endpoint map: pod IP -> where the pod is on this node.

/// Address family tags used in map keys.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// Key of the `local_endpoints` hash map: a pod IP.
///
/// IPv4 addresses sit in the first four bytes of `addr`, the rest zero, so
/// IPv6 fits the same key without a layout change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EndpointKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub pad: [u8; 3],
}

impl EndpointKey {
    #[must_use]
    #[expect(clippy::inline_always, reason = "eBPF code must inline it")]
    #[inline(always)]
    pub const fn ipv4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self {
            addr,
            family: FAMILY_IPV4,
            pad: [0; 3],
        }
    }

    #[must_use]
    #[expect(clippy::inline_always, reason = "eBPF code must inline it")]
    #[inline(always)]
    pub const fn ipv6(octets: [u8; 16]) -> Self {
        Self {
            addr: octets,
            family: FAMILY_IPV6,
            pad: [0; 3],
        }
    }
}

/// `Endpoint::flags`: the pod's traffic takes the kernel path (bridge,
/// iptables FORWARD, NetworkPolicy) both ways.
pub const ENDPOINT_F_NO_BYPASS: u32 = 1;

/// Length of the container ID field; longer IDs are refused.
pub const CONTAINER_ID_LEN: usize = 64;
/// Length of the pod-side interface name field (IFNAMSIZ).
pub const IFNAME_LEN: usize = 16;

/// Value of the `local_endpoints` map: one pod address on this node.
///
/// The fields the datapath reads come first; the owner fields after them
/// are only read by the tools (CNI DEL/GC match on them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Endpoint {
    /// ifindex of the pod's host-side veth; the redirect target.
    pub ifindex: u32,
    /// `ENDPOINT_F_*` bits.
    pub flags: u32,
    /// The pod's MAC (its `eth0`): destination MAC after a redirect.
    pub mac: [u8; 6],
    /// The MAC the pod knows as its gateway (the bridge's MAC, or the host
    /// veth's for ptp): source MAC after a redirect.
    pub gateway_mac: [u8; 6],
    /// Container ID that registered this address, NUL-padded.
    pub container_id: [u8; CONTAINER_ID_LEN],
    /// Interface name inside the pod (`CNI_IFNAME`), NUL-padded.
    pub pod_ifname: [u8; IFNAME_LEN],
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for EndpointKey {}
#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for Endpoint {}
