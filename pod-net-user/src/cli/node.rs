//! `pod-net node add|del|list`: remote nodes and the pod prefixes they host.
use std::net::Ipv4Addr;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{
    cidr::Cidr,
    datapath::{Datapath, Locked, pins::PinDir},
    mac::MacAddr,
    node::remotes::{self, NodeSpec},
    ops::table,
};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Send a pod prefix (a node's pod CIDR, or one pod as /32) to a node.
    Add(NodeAddArgs),
    /// Stop sending a prefix anywhere.
    Del {
        /// The exact prefix to remove, as `node list` shows it.
        #[arg(long)]
        cidr: Cidr,
    },
    /// List the remote prefixes and their nodes.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct NodeAddArgs {
    /// The pod prefix, like 10.244.2.0/24; a /32 pins a single pod.
    #[arg(long)]
    pub cidr: Cidr,
    /// The node's underlay address.
    #[arg(long, value_name = "IPV4")]
    pub node_ip: Ipv4Addr,
    /// The node's VXLAN endpoint MAC, for nodes that check it (flannel's
    /// `VtepMAC`). pod-net nodes derive it from the node IP.
    #[arg(long, value_name = "MAC", conflicts_with = "direct")]
    pub vtep_mac: Option<MacAddr>,
    /// Route to the node without VXLAN (flannel's host-gw): it must be on
    /// one of the underlay's subnets, and route back the same way.
    #[arg(long)]
    pub direct: bool,
}

pub(super) fn run(pins: &PinDir, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Add(args) => {
            let spec = NodeSpec {
                cidr: args.cidr,
                node_ip: args.node_ip,
                vtep_mac: args.vtep_mac,
                mode: if args.direct {
                    remotes::Mode::Direct
                } else {
                    remotes::Mode::Vxlan
                },
            };
            // VXLAN is the default and goes unsaid.
            let mode = match spec.mode {
                remotes::Mode::Vxlan => "",
                remotes::Mode::Direct => " (direct)",
            };
            match remotes::add(&mut Locked::new(pins)?, &spec)? {
                remotes::AddOutcome::Added => {
                    outln!("added {} via node {}{mode}", spec.cidr, spec.node_ip);
                }
                remotes::AddOutcome::Unchanged => {
                    outln!(
                        "{} via node {}{mode} is already there",
                        spec.cidr,
                        spec.node_ip
                    );
                }
            }
        }
        NodeCommand::Del { cidr } => {
            let removed = remotes::del(&mut Locked::new(pins)?, cidr)?;
            outln!(
                "removed {} (was via node {})",
                removed.cidr,
                removed.node_ip
            );
        }
        NodeCommand::List { json } => {
            let datapath = Datapath::open(pins)?;
            let _settled = super::settled_or_warn(pins)?;
            let nodes = remotes::list(&datapath)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|node| {
                        let vtep_mac = match (node.mode, node.vtep_mac_given) {
                            (remotes::Mode::Direct, _) => "-".to_owned(),
                            (remotes::Mode::Vxlan, true) => node.vtep_mac.to_string(),
                            (remotes::Mode::Vxlan, false) => format!("{} (derived)", node.vtep_mac),
                        };
                        vec![
                            node.cidr.to_string(),
                            node.node_ip.to_string(),
                            node.mode.to_string(),
                            vtep_mac,
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    table::render(&["CIDR", "NODE IP", "MODE", "VTEP MAC"], &rows)
                );
            }
        }
    }
    Ok(())
}
