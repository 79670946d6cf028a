//! The one table of counter reasons.
//!
//! Every packet a pod-net program sees is counted under exactly one reason.
//! The codes index the per-CPU `counters` array; the names are what
//! `pod-net stats`, the Prometheus labels and the docs print. Both are
//! stable: new reasons are appended, none is renumbered or renamed.

/// Per-reason counter value, one per CPU in the `counters` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for Counter {}

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $code:literal, $name:literal;)*) => {
        /// Why a packet ended where it did. `#[repr(u32)]`: the code is the
        /// index into the `counters` map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant = $code,)*
        }

        impl Reason {
            /// Every reason, in code order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable name printed by the tools.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// One line on what the reason means (its doc comment), for
            /// `pod-net stats --explain` and the README's reason table.
            #[must_use]
            pub const fn help(self) -> &'static str {
                match self {
                    $(Reason::$variant => concat!($($doc),*),)*
                }
            }

            /// The reason with this code, if any.
            #[must_use]
            pub const fn from_code(code: u32) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// Delivered to a pod on this node with `bpf_redirect_peer`, skipping the bridge.
    RedirectLocal = 0, "redirect_local";
    /// Neither IPv4 nor IPv6 (ARP, LLDP, ...): handed to the kernel untouched.
    PassNotIp = 1, "pass_not_ip";
    /// Broadcast or multicast destination MAC (for IP, after the source check): handed to the kernel.
    PassMulticast = 2, "pass_multicast";
    /// Destination IP is not a pod pod-net knows: handed to the kernel.
    PassUnknownDst = 3, "pass_unknown_dst";
    /// Truncated or invalid headers: handed to the kernel, never redirected.
    PassMalformed = 4, "pass_malformed";
    /// Routed packet with TTL <= 1: handed to the kernel, which sends ICMP time exceeded.
    PassTtlExceeded = 5, "pass_ttl_exceeded";
    /// VXLAN-encapsulated in BPF and sent to the node hosting the destination.
    Encap = 6, "encap";
    /// VXLAN from another node, decapsulated and delivered into a pod on this node.
    Decap = 7, "decap";
    /// Too big for the underlay with the don't-fragment bit: the kernel answers ICMP fragmentation needed.
    PassFragNeeded = 8, "pass_frag_needed";
    /// Too big for the underlay without don't-fragment: the kernel fragments it on its way out.
    PassFragment = 9, "pass_fragment";
    /// Underlay traffic that is not VXLAN for this node: handed to the kernel untouched.
    PassNotVxlan = 10, "pass_not_vxlan";
    /// A fragment of an outer VXLAN packet: the kernel reassembles and decapsulates it.
    PassOuterFragment = 11, "pass_outer_fragment";
    /// VXLAN whose inner destination is not a pod on this node: the kernel's tunnel device takes it.
    PassInnerNotLocal = 12, "pass_inner_not_local";
    /// VXLAN to this node's port with a VNI it does not serve: dropped.
    DropVni = 13, "drop_vni";
    /// VXLAN to this node's port with truncated or invalid headers: dropped.
    DropMalformed = 14, "drop_malformed";
    /// Making room for, or stripping, tunnel headers failed: handed to the kernel as it was.
    PassResizeFailed = 15, "pass_resize_failed";
    /// Reply of a flow the kernel may have NATed (kube-proxy): the kernel's conntrack reverses the NAT.
    PassNat = 16, "pass_nat";
    /// Source IP is not one of the sending pod's registered IPs: dropped.
    DropSpoofed = 17, "drop_spoofed";
    /// From or to a pod registered with `--no-bypass`: the kernel path (bridge, iptables) takes it.
    PassNoBypass = 18, "pass_no_bypass";
    /// IPv6 neighbour discovery (router and neighbour solicitations and advertisements, redirects): handed to the kernel.
    PassNdp = 19, "pass_ndp";
    /// IPv6 with extension headers before the transport header: handed to the kernel, which parses them.
    PassIpv6Ext = 20, "pass_ipv6_ext";
    /// IPv6 from or to a link-local address: on-link traffic the kernel bridges.
    PassLinkLocal = 21, "pass_link_local";
    /// VXLAN to this node's port, at any of its addresses, from an address that is not a node reached over VXLAN: dropped, so neither BPF nor the kernel's tunnel device decapsulates it.
    DropUnknownPeer = 22, "drop_unknown_peer";
    /// UDP from a pod to a node or other non-pod address on the VXLAN port: dropped, so nothing a pod sends is decapsulated.
    DropPodToVxlan = 23, "drop_pod_to_vxlan";
    /// Sent unencapsulated to a direct-routing node (`node add --direct`), one router hop (TTL - 1), with `bpf_redirect_neigh` out of the underlay.
    DirectOut = 24, "direct_out";
    /// Plain IP from a direct-routing node's pod, delivered into a pod on this node with `bpf_redirect_peer`.
    DirectIn = 25, "direct_in";
    /// Plain IP to a pod on this node from the underlay whose source is not a direct-routing node's pod, or whose sender MAC is not that node's: the kernel routes it, with its forwarding rules.
    PassNotDirectPeer = 26, "pass_not_direct_peer";
    /// Plain IP from a direct-routing node's pod while that node's MAC is not in the neighbour table yet, so the sender cannot be checked: the kernel routes it.
    PassDirectUnresolved = 27, "pass_direct_unresolved";
    /// A BIG TCP super-packet (`load --big-tcp on`) to a VXLAN node, too long for 16-bit outer lengths: the kernel segments it for its tunnel device.
    PassBigGso = 28, "pass_big_gso";
}

/// Number of reasons.
pub const REASON_COUNT: usize = Reason::ALL.len();

/// Slots in the `counters` map: room for reasons a later version appends,
/// so the map keeps its layout and an upgrade keeps its counts.
pub const COUNTER_SLOTS: usize = 64;
const _: () = assert!(REASON_COUNT <= COUNTER_SLOTS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_names_unique() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{} is out of order", reason.name());
            assert_eq!(Reason::from_code(*reason as u32), Some(*reason));
            assert!(!reason.help().is_empty());
        }
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn names_follow_the_naming_scheme() {
        for reason in Reason::ALL {
            let name = reason.name();
            let known_prefix = name.starts_with("pass_")
                || name.starts_with("drop_")
                || matches!(
                    name,
                    "redirect_local" | "encap" | "decap" | "direct_out" | "direct_in"
                );
            assert!(known_prefix, "{name} does not follow the scheme");
        }
    }
}
