//! A datapath's life on a node: loading it (`load`, which also upgrades it
//! in place), with the `underlay` it sets up for the cross-node path, and
//! unloading it (`unload`). Above `node`: a load puts the node's remote
//! entries back in step with the kernel; below `ops` and the front ends.

pub mod load;
pub mod underlay;
pub mod unload;
