//! Where the admitted leases go: this node's datapath and its kernel path
//! (`DatapathTarget`), or, in the follow loop's unit tests, a recorder. A
//! round of programming is one [`Session`]: the datapath is opened and
//! locked once for it.
use std::path::PathBuf;

use anyhow::Result;
use pod_net_common::RemoteNode;

use super::{conflist, flannel::NetworkConfig, flannel::Subnet, subnet_env};
use crate::{
    cidr::Cidr,
    datapath::{Locked, pins::PinDir},
    node::{
        direct,
        remotes::{self, HostChecks, NodeSpec},
    },
    ops::apply::{self, Change},
    sys::netdev,
};

/// What the follow loop programs and rewrites.
pub trait Target: Send {
    /// Opens one round of programming.
    fn session(&mut self) -> Result<Box<dyn Session + '_>>;
    /// The network config changed in a way this node follows: rewrites
    /// what derives from it (`subnet.env`, the conflist).
    fn config_changed(&mut self, config: &NetworkConfig) -> Result<()>;
}

/// One round of programming.
pub trait Session {
    /// The underlay's subnets: peers on them are routed to directly when
    /// the network asks for `DirectRouting`.
    fn direct_subnets(&mut self) -> Result<Vec<Cidr>>;
    /// This node's verdict on each of `specs`: the value to store, or why
    /// not (its address, its routes, its pods; see `remotes::HostChecks`).
    fn judge(&mut self, specs: &[&NodeSpec]) -> Result<Vec<Result<RemoteNode, String>>>;
    /// Removes and adds exactly these entries.
    fn change(&mut self, removed: &[Cidr], added: Vec<NodeSpec>) -> Result<Vec<Change>>;
    /// Makes the remote entries exactly `all`, diffing every one.
    fn reconcile(&mut self, all: Vec<NodeSpec>) -> Result<Vec<Change>>;
}

/// The files a joined node writes for its runtime and flannel's tools.
#[derive(Clone, Debug)]
pub struct NodeFiles {
    pub subnet_file: PathBuf,
    pub cni_conflist: Option<PathBuf>,
    pub subnet: Subnet,
    pub underlay_mtu: u32,
}

impl NodeFiles {
    /// Writes `subnet.env` and (when asked for) the conflist for `config`.
    pub fn write(&self, pins: &PinDir, config: &NetworkConfig) -> Result<(), super::ClusterError> {
        let write_error = |path: &PathBuf| {
            let path = path.display().to_string();
            move |source| super::ClusterError::Write { path, source }
        };
        subnet_env::write(&self.subnet_file, config, self.subnet, self.underlay_mtu)
            .map_err(write_error(&self.subnet_file))?;
        log::info!("wrote {}", self.subnet_file.display());
        if let Some(path) = &self.cni_conflist {
            let mtu = subnet_env::pod_mtu(self.underlay_mtu);
            let conflist = conflist::render(config, self.subnet, mtu, pins.root());
            conflist::write(path, &conflist).map_err(write_error(path))?;
            log::info!("wrote {}", path.display());
        }
        Ok(())
    }
}

/// The real thing: the pinned datapath and the kernel's path beside it.
pub struct DatapathTarget {
    pub pins: PinDir,
    pub files: NodeFiles,
}

impl Target for DatapathTarget {
    fn session(&mut self) -> Result<Box<dyn Session + '_>> {
        Ok(Box::new(DatapathSession {
            datapath: Locked::new(&self.pins)?,
        }))
    }

    fn config_changed(&mut self, config: &NetworkConfig) -> Result<()> {
        Ok(self.files.write(&self.pins, config)?)
    }
}

struct DatapathSession {
    datapath: Locked,
}

impl Session for DatapathSession {
    fn direct_subnets(&mut self) -> Result<Vec<Cidr>> {
        // Read afresh each round: an address change on the underlay is
        // followed.
        let underlay = self.datapath.config()?.underlay_ifindex;
        Ok(direct::subnets(underlay, &netdev::all_addresses()?))
    }

    fn judge(&mut self, specs: &[&NodeSpec]) -> Result<Vec<Result<RemoteNode, String>>> {
        let loaded = self.datapath.config()?;
        // One read of the node (its routes, addresses, pods) for them all.
        let host = HostChecks::new(&self.datapath)?;
        Ok(specs
            .iter()
            .map(|spec| {
                host.check(spec)
                    .and_then(|()| remotes::node_value(spec, &loaded))
                    .map_err(|err| format!("{err:#}"))
            })
            .collect())
    }

    fn change(&mut self, removed: &[Cidr], added: Vec<NodeSpec>) -> Result<Vec<Change>> {
        apply::change_nodes(&mut self.datapath, removed, added)
    }

    fn reconcile(&mut self, all: Vec<NodeSpec>) -> Result<Vec<Change>> {
        apply::run_nodes(&mut self.datapath, all)
    }
}
