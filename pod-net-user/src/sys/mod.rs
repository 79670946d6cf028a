//! Thin interfaces to the kernel: rtnetlink requests (`netlink`),
//! interfaces and addresses (`netdev`), and network namespaces (`netns`).

pub mod netdev;
pub mod netlink;
pub mod netns;
