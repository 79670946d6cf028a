//! `pod-net pod add|del|list`: the pods on this node.
use std::net::IpAddr;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{
    datapath::{Datapath, Locked, pins::PinDir},
    mac::MacAddr,
    node::endpoints::{self, AddOutcome, PodSpec},
    ops::table,
};

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Register a pod address and attach the program to its host veth.
    Add(PodAddArgs),
    /// Remove a pod by address or by container ID.
    Del(PodDelArgs),
    /// List the registered pod addresses.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A pod address; IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address
/// it stands for, as everywhere in pod-net.
fn pod_ip(text: &str) -> Result<IpAddr, String> {
    text.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|err| err.to_string())
}

#[derive(Debug, Args)]
pub struct PodAddArgs {
    /// The pod's IP address.
    #[arg(long, value_parser = pod_ip)]
    pub ip: IpAddr,
    /// The host-side veth of the pod.
    #[arg(long, value_name = "HOST_IFNAME")]
    pub veth: String,
    /// The pod's MAC; read from the veth's peer when omitted.
    #[arg(long, value_name = "POD_MAC")]
    pub mac: Option<MacAddr>,
    /// Container ID to record as the owner.
    #[arg(long = "id", value_name = "CONTAINER_ID", default_value = "")]
    pub container_id: String,
    /// Send this pod's traffic, both ways, through the kernel (bridge,
    /// iptables FORWARD, NetworkPolicy) instead of the fast path.
    #[arg(long)]
    pub no_bypass: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PodDelArgs {
    /// The pod address to remove.
    #[arg(long, value_parser = pod_ip)]
    pub ip: Option<IpAddr>,
    /// Remove every address registered for this container.
    #[arg(long = "id", value_name = "CONTAINER_ID")]
    pub container_id: Option<String>,
}

pub(super) fn run(pins: &PinDir, command: PodCommand) -> Result<()> {
    match command {
        PodCommand::Add(args) => {
            let spec = PodSpec {
                ip: args.ip,
                veth: args.veth,
                mac: args.mac,
                container_id: args.container_id,
                pod_ifname: String::new(),
                replace: false,
                no_bypass: args.no_bypass,
                pod_netns: None,
            };
            let added = endpoints::add(&mut Locked::new(pins)?, &spec)?;
            match added.outcome {
                AddOutcome::Added => outln!("added pod {} on {}", args.ip, spec.veth),
                AddOutcome::Unchanged => {
                    outln!("pod {} on {} is already registered", args.ip, spec.veth);
                }
            }
            if let Some(warning) = added.mtu_warning {
                eprintln!("pod-net: warning: {warning}");
            }
        }
        PodCommand::Del(args) => {
            let removed = match (args.ip, args.container_id) {
                (Some(ip), _) => vec![endpoints::del_by_ip(&mut Locked::new(pins)?, ip)?],
                (None, Some(id)) => endpoints::del_by_container(&mut Locked::new(pins)?, &id)?,
                (None, None) => unreachable!("clap requires --ip or --id"),
            };
            for entry in removed {
                outln!("removed pod {}", entry.ip);
            }
        }
        PodCommand::List { json } => {
            let datapath = Datapath::open(pins)?;
            let _settled = super::settled_or_warn(pins)?;
            let pods = endpoints::list(&datapath)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&pods)?);
            } else {
                let rows: Vec<Vec<String>> = pods
                    .iter()
                    .map(|pod| {
                        vec![
                            pod.ip.to_string(),
                            pod.veth.clone().unwrap_or_else(|| "(gone)".to_owned()),
                            pod.ifindex.to_string(),
                            pod.mac.to_string(),
                            pod.gateway_mac.to_string(),
                            if pod.container_id.is_empty() {
                                "-".to_owned()
                            } else {
                                pod.container_id.clone()
                            },
                        ]
                    })
                    .collect();
                out!(
                    "{}",
                    table::render(
                        &["IP", "VETH", "IFINDEX", "MAC", "GATEWAY MAC", "CONTAINER"],
                        &rows
                    )
                );
            }
        }
    }
    Ok(())
}
