//! Drop and trace events for `pod-net monitor`, through the `events` ring
//! buffer. Off unless a monitor turns them on (`Config::flags`), and
//! rate-limited per CPU so a flood cannot starve anything.

/// `Config::flags`: emit an event for every packet that leaves the fast
/// path (all `pass_*` and `drop_*` reasons).
pub const CONFIG_F_EVENTS: u32 = 1;
/// `Config::flags`: also emit events for fast-path packets.
pub const CONFIG_F_EVENTS_ALL: u32 = 2;

/// `Config::flags`: do not check that a pod's packets carry one of its
/// own registered source IPs (anti-spoofing is on unless this is set).
pub const CONFIG_F_NO_ANTI_SPOOF: u32 = 4;
/// `Config::flags`: do not hand replies of possibly NATed flows to the
/// kernel (for clusters without kube-proxy NAT between pods).
pub const CONFIG_F_NO_NAT_CHECK: u32 = 8;
/// `Config::flags`: pods get IPv4 BIG TCP as they are registered (`load
/// --big-tcp on`). A user-space setting kept with the others; the programs
/// do not read it.
pub const CONFIG_F_BIG_TCP: u32 = 16;
/// `Config::flags`: TC programs are attached as netlink `cls_bpf` filters
/// rather than TCX links (`load --attach tc`). User space only, like
/// `CONFIG_F_BIG_TCP`.
pub const CONFIG_F_TC_ATTACH: u32 = 32;
/// `Config::flags`: loaded beside flanneld (`load --beside-flannel`): the
/// kernel path (`flannel.<VNI>`, its routes, neighbour and FDB entries, and
/// the direct routes) is flanneld's; pod-net reads it and never writes it,
/// and encapsulates as `flannel.<VNI>` (its MAC). User space only.
pub const CONFIG_F_BESIDE_FLANNEL: u32 = 64;
/// One event, as the programs write it into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Event {
    /// `bpf_ktime_get_ns` (monotonic) when the packet was seen.
    pub timestamp_ns: u64,
    /// The `Reason` code the packet was counted under.
    pub reason: u32,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Packet length as it arrived.
    pub len: u32,
    /// 4, 6, or 0 when the frame was not IP (or too short to tell).
    pub ip_version: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP); 0 if unknown.
    pub protocol: u8,
    pub pad: [u8; 2],
    /// Addresses as in map keys: IPv4 in the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP ports, host order; 0 for other protocols.
    pub src_port: u16,
    pub dst_port: u16,
    pub pad2: [u8; 4],
}

/// Per-CPU token bucket for events, in nanoseconds of budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct RateLimit {
    pub budget_ns: u64,
    pub last_ns: u64,
    /// Events not emitted because the budget was spent or the ring full.
    pub suppressed: u64,
}

/// Events per second per CPU `monitor` allows unless told otherwise.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 1000;

#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for Event {}
#[cfg(feature = "user")]
// SAFETY: plain `#[repr(C)]` data with no padding.
unsafe impl aya::Pod for RateLimit {}
