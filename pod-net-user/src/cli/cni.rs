//! `pod-net cni chain|unchain --conflist FILE`: `pod-net-cni` into another
//! network's conflist (flannel's) and out again.
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::{
    datapath::pins::PinDir,
    ops::cni_chain::{self, Outcome},
};

#[derive(Debug, Subcommand)]
pub enum CniCommand {
    /// Put pod-net-cni into a conflist, after the plugin that makes the pod's interface.
    Chain {
        /// The conflist (flannel's: /etc/cni/net.d/10-flannel.conflist).
        #[arg(long, value_name = "FILE")]
        conflist: PathBuf,
    },
    /// Take pod-net-cni out of a conflist again.
    Unchain {
        /// The conflist it was chained into.
        #[arg(long, value_name = "FILE")]
        conflist: PathBuf,
    },
}

pub(super) fn run(pins: &PinDir, command: CniCommand) -> Result<()> {
    let (path, outcome) = match command {
        CniCommand::Chain { conflist } => {
            let outcome = cni_chain::chain(&conflist, pins.root())?;
            (conflist, outcome)
        }
        CniCommand::Unchain { conflist } => {
            let outcome = cni_chain::unchain(&conflist)?;
            (conflist, outcome)
        }
    };
    let path = path.display();
    match outcome {
        Outcome::Chained { after } => {
            outln!("chained {} into {path} after {after}", cni_chain::PLUGIN);
        }
        Outcome::AlreadyChained => outln!("{path} already chains {}", cni_chain::PLUGIN),
        Outcome::Unchained => outln!("took {} out of {path}", cni_chain::PLUGIN),
        Outcome::NotChained => outln!("{path} does not chain {}", cni_chain::PLUGIN),
    }
    Ok(())
}
