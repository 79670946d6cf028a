//! Thin interfaces to the kernel: rtnetlink requests (`netlink`),
//! interfaces and addresses (`netdev`), network namespaces (`netns`), and
//! the TC hook as netlink filters (`tc`).

pub mod netdev;
pub mod netlink;
pub mod netns;
pub mod tc;
