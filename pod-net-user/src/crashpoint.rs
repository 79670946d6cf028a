//! Fault injection for the crash-safety tests: with
//! `POD_NET_CRASH_AT=<point>` in its environment, a process kills itself
//! with SIGKILL when it reaches `<point>`, the same as an operator's
//! `kill -9` or the OOM killer at the worst moment.
//!
//! Only in builds with the `crashpoints` feature, which the tests turn on:
//! in any other build each point is nothing at all.
//!
//! The points sit between two writes that belong together, where a crash
//! leaves the half-done state `pod-net gc` repairs.

pub const POD_ADD_ATTACHED: &str = "pod-add-attached";
pub const POD_DEL_REMOVED: &str = "pod-del-removed";
pub const APPLY_CHANGED: &str = "apply-changed";
pub const LOAD_REPLACED: &str = "load-replaced";
/// A bulk kernel change (the routes, neighbour and FDB entries of many
/// remote entries) after its first window of requests is acknowledged,
/// with more to go: the maps already written (or cleared), the kernel
/// part way.
pub const NETLINK_PARTIAL: &str = "netlink-partial";

/// Dies here, by SIGKILL, when `POD_NET_CRASH_AT` names `point`.
#[cfg(feature = "crashpoints")]
pub fn here(point: &str) {
    use rustix::process::{Signal, getpid, kill_process};
    if std::env::var_os("POD_NET_CRASH_AT").is_some_and(|wanted| wanted == point) {
        // SIGKILL cannot be caught, so no destructor, flush or unlock
        // runs, as in a real crash.
        let _ = kill_process(getpid(), Signal::KILL);
    }
}

/// Nothing: this build has no crash points.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn here(_point: &str) {}
