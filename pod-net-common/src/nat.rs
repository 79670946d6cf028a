//! Flows the kernel may NAT (kube-proxy's DNAT to a service backend).
//!
//! When a pod sends TCP or UDP to an address that is not a pod (a service
//! IP, a node port), the kernel handles it and may DNAT it. Its replies
//! must go back through conntrack to be un-NATed, so they must not take
//! the fast path. The programs remember the client end of such flows in an
//! LRU map and hand packets *to* that end to the kernel.

/// Key of the `nat_flows` LRU map: the pod's end of a flow that went to
/// the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatFlowKey {
    /// The pod's address, as in `EndpointKey`.
    pub addr: [u8; 16],
    /// The pod's port, host order.
    pub port: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub protocol: u8,
    pub family: u8,
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for NatFlowKey {}
