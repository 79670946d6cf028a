//! Thin interfaces to the kernel: rtnetlink requests (`netlink`),
//! interfaces and addresses (`netdev`), network namespaces (`netns`), the
//! TC hook as netlink filters (`tc`), and files written and read safely
//! where others may plant things (`files`).

pub mod files;
pub mod netdev;
pub mod netlink;
pub mod netns;
pub mod tc;
