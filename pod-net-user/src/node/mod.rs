//! What the datapath, and the kernel's path beside it, know of this node's
//! pods (`endpoints`) and of other nodes (`remotes`, with `peers`, the
//! checks of `overlap`, the tunnel device of `tunnel` and `tunnel_sync`,
//! the underlay routes of `direct`, flanneld's kernel state as `flannel`
//! reads it), what pods' veths are given
//! (`big_tcp`), and pod MTUs against the underlay (`mtu`).

pub mod big_tcp;
pub mod direct;
pub mod endpoints;
pub mod flannel;
pub mod mtu;
pub mod overlap;
pub mod peers;
pub mod remotes;
pub mod tunnel;
pub mod tunnel_sync;
