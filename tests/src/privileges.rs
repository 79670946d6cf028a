//! Tests that need root: in CI they must run, never skip.

/// Whether the current process is root.
#[must_use]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether CI asked for every test to run (`CI=true`).
#[must_use]
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// Returns whether a privileged test may go on. Without root it says it is
/// skipping and returns false. Use it through [`require_root!`].
///
/// # Panics
/// Without root in CI: there a privileged test must run.
#[must_use]
pub fn may_run_privileged() -> bool {
    if is_root() {
        return true;
    }
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    assert!(
        !in_ci(),
        "{test} needs root (network namespaces, BPF); CI runs as root and never skips"
    );
    eprintln!("skipping {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// The first line of every privileged test: returns from the test, having
/// said so, when it may skip (not root, outside CI); fails it in CI.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privileges::may_run_privileged() {
            return;
        }
    };
}
