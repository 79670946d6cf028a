//! Per-reason, per-CPU packet and byte counters.
use pod_net_common::Reason;

use crate::maps::COUNTERS;

/// Counts one packet of `len` bytes under `reason`.
#[inline(always)]
pub fn count(reason: Reason, len: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and a program
        // runs to completion without preemption on it.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(len);
        }
    }
}
