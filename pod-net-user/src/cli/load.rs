//! `pod-net load` and `pod-net unload`: the datapath's life on this node.
use std::net::Ipv4Addr;

use anyhow::Result;
use clap::Args;
use pod_net_common::{
    config::{DEFAULT_VNI, DEFAULT_VXLAN_PORT},
    map_table::{self, MapSpec},
};

use crate::{
    datapath::{attach::AttachMode, pins::PinDir},
    lifecycle::{
        load::{self, LoadOptions, LoadReport},
        underlay::{self, UnderlayOptions},
        unload,
    },
};

/// A `--max-*` flag's help, with the default from the map table.
fn capacity_help(what: &str, map: &MapSpec) -> String {
    format!(
        "Capacity of {what}; default {}. Fixed once the map exists",
        map.capacity
    )
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[arg(long, value_name = "N", help = capacity_help(
        "the local-endpoint map (pod addresses on this node)",
        &map_table::LOCAL_ENDPOINTS,
    ))]
    pub max_pods: Option<u32>,
    #[arg(long, value_name = "N", help = capacity_help(
        "the remote-pod map (pod /32s pinned to a node)",
        &map_table::REMOTE_PODS,
    ))]
    pub max_remote_pods: Option<u32>,
    #[arg(long, value_name = "N", help = capacity_help(
        "the remote-CIDR map (nodes' pod CIDRs)",
        &map_table::REMOTE_NODES,
    ))]
    pub max_remote_cidrs: Option<u32>,
    /// The interface VXLAN to and from other nodes goes through.
    #[arg(long, value_name = "IFACE", requires = "node_ip")]
    pub underlay: Option<String>,
    /// This node's address on the underlay: the outer source of its VXLAN.
    #[arg(long, value_name = "IPV4", requires = "underlay")]
    pub node_ip: Option<Ipv4Addr>,
    /// VXLAN network identifier (flannel's default is 1).
    #[arg(long, default_value_t = DEFAULT_VNI, requires = "underlay")]
    pub vni: u32,
    /// VXLAN UDP port (flannel's default is 8472; IANA's is 4789).
    #[arg(long, default_value_t = DEFAULT_VXLAN_PORT, requires = "underlay")]
    pub vxlan_port: u16,
    /// Beside a running flanneld (vxlan backend): its flannel.<VNI> is the kernel path, and
    /// the underlay, node IP, VNI and port are that device's.
    #[arg(long, conflicts_with = "underlay")]
    pub beside_flannel: bool,
    /// flanneld's VXLAN device, when there is more than one flannel.<VNI>.
    #[arg(long, value_name = "NAME", requires = "beside_flannel")]
    pub flannel_device: Option<String>,
    /// Decapsulate on the underlay with XDP as well (off by default: see
    /// the README's benchmark). Stays on across reloads until --no-xdp.
    #[arg(long, conflicts_with = "no_xdp")]
    pub xdp: bool,
    /// Turn the XDP receive path off again.
    #[arg(long)]
    pub no_xdp: bool,
    /// Drop pod packets whose source IP is not one of the pod's (default
    /// on). Kept across reloads until changed.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub anti_spoofing: Option<bool>,
    /// Hand replies of flows the kernel may have NATed (kube-proxy) to the
    /// kernel (default on). Kept across reloads until changed.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub nat_check: Option<bool>,
    /// Give pods IPv4 BIG TCP: GSO/GRO packets up to 192 KiB on their veths
    /// (default off; Linux 6.3+). Applied to the registered pods at once and
    /// to new ones as they are added. Kept across reloads until changed.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub big_tcp: Option<bool>,
    /// How to attach the TC programs to pod veths and the underlay: tcx
    /// (default; links, which coexist with other tc users) or tc (a clsact
    /// qdisc and a `cls_bpf` filter, for kernels before 6.6 and for fast pod
    /// adds: a TCX link waits for an RCU grace period). Switching moves
    /// every attachment without a gap. Kept across reloads until changed.
    #[arg(long, value_name = "tcx|tc", value_parser = attach_mode)]
    pub attach: Option<AttachMode>,
}

fn attach_mode(text: &str) -> Result<AttachMode, String> {
    match text {
        "tcx" => Ok(AttachMode::Tcx),
        "tc" => Ok(AttachMode::Tc),
        other => Err(format!("expected tcx or tc, not {other:?}")),
    }
}

fn on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

pub(super) fn run(pins: &PinDir, args: &LoadArgs) -> Result<()> {
    let options = LoadOptions {
        max_pods: args.max_pods,
        max_remote_pods: args.max_remote_pods,
        max_remote_cidrs: args.max_remote_cidrs,
        underlay: if args.beside_flannel {
            Some(underlay::beside_flannel(args.flannel_device.as_deref())?)
        } else {
            args.underlay
                .clone()
                .zip(args.node_ip)
                .map(|(ifname, node_ip)| UnderlayOptions {
                    ifname,
                    node_ip,
                    vni: args.vni,
                    vxlan_port: args.vxlan_port,
                    beside_flannel: false,
                })
        },
        xdp: match (args.xdp, args.no_xdp) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        anti_spoofing: args.anti_spoofing,
        nat_check: args.nat_check,
        big_tcp: args.big_tcp,
        attach: args.attach,
    };
    print_load_report(pins, &load::load(pins, &options)?)
}

pub(super) fn run_unload(pins: &PinDir) -> Result<()> {
    let report = unload::unload(pins)?;
    outln!(
        "unloaded {} ({} attachment(s) removed{})",
        pins.root().display(),
        report.links_removed,
        report
            .tunnel_device
            .map(|device| format!(", {device} deleted"))
            .unwrap_or_default()
    );
    Ok(())
}

fn print_load_report(pins: &PinDir, report: &LoadReport) -> Result<()> {
    if report.mounted_bpffs {
        outln!("mounted bpffs at /sys/fs/bpf");
    }
    if report.replaced {
        outln!(
            "replaced the datapath at {} in place ({} attachment(s) updated, maps kept)",
            pins.root().display(),
            report.attachments_updated
        );
    } else {
        outln!("loaded the datapath at {}", pins.root().display());
    }
    if let Some(underlay) = &report.underlay {
        outln!(
            "cross-node: VXLAN VNI {} port {} via {} from {} (VTEP MAC {}, kernel path {})",
            underlay.vni,
            underlay.vxlan_port,
            underlay.ifname,
            underlay.node_ip,
            underlay.vtep_mac,
            underlay.tunnel_device
        );
    }
    if report.xdp {
        outln!("XDP receive path on the underlay: on");
    }
    if !report.anti_spoofing {
        outln!("anti-spoofing: off");
    }
    if !report.nat_check {
        outln!("NAT check: off (replies of kernel-NATed flows take the fast path)");
    }
    if report.big_tcp {
        outln!("BIG TCP: on (pods' IPv4 GSO/GRO up to 192 KiB)");
    }
    if report.attach == AttachMode::Tc {
        outln!("attach: tc (cls_bpf filters on clsact qdiscs)");
    }
    for warning in &report.warnings {
        eprintln!("pod-net: warning: {warning}");
    }
    Ok(())
}
