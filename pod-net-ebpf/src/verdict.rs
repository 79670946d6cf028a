//! What a program returns, and the one reason it is counted under.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use pod_net_common::Reason;

pub struct Verdict {
    pub action: i32,
    pub reason: Reason,
}

impl Verdict {
    /// Hand the packet to the kernel, as it is at that point.
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self {
            action: TC_ACT_OK,
            reason,
        }
    }

    /// Drop: the packet was addressed to pod-net and is not valid.
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self {
            action: TC_ACT_SHOT,
            reason,
        }
    }

    /// The packet was redirected (the helper's return value is the action).
    #[inline(always)]
    pub const fn redirected(action: i64, reason: Reason) -> Self {
        Self {
            action: action as i32,
            reason,
        }
    }

    /// The action and the reason to count it under: a TC program owns
    /// every outcome.
    #[inline(always)]
    pub const fn outcome(self) -> (i32, Option<Reason>) {
        (self.action, Some(self.reason))
    }
}
