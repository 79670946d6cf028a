//! The `pod-net` command line. Names follow the design's CLI contract:
//! scripts and tests depend on them.
use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use pod_net_common::{
    config::{DEFAULT_VNI, DEFAULT_VXLAN_PORT},
    map_table::{self, MapSpec},
};

use crate::{
    agent,
    agent::cluster::{self, ClusterOptions, etcd::TlsFiles},
    cidr::Cidr,
    datapath::{
        Datapath, Locked,
        attach::AttachMode,
        pins::{DEFAULT_PIN_DIR, PinDir},
    },
    error::{self, Capacity, LoadRefusal, NodeError},
    lifecycle::{
        load::{self, LoadOptions, LoadReport},
        underlay::UnderlayOptions,
        unload,
    },
    mac::MacAddr,
    node::{
        endpoints::{self, AddOutcome, PodSpec},
        remotes::{self, NodeSpec},
    },
    ops::{
        apply, gc, metrics, monitor,
        stats::{self, Totals},
        status, table,
    },
};

/// `print!` and `println!` that hand a failed write back with `?`: a
/// reader that went away (`pod-net pod list | head -1`) ends the command
/// quietly (see [`is_broken_pipe`]) instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => { write!(std::io::stdout(), $($arg)*)? };
}
macro_rules! outln {
    ($($arg:tt)*) => { writeln!(std::io::stdout(), $($arg)*)? };
}

/// Whether `err` is a write to a stdout whose reader went away. The command
/// then ends as coreutils do: quietly, by the SIGPIPE it would have died of
/// (see [`end_by_sigpipe`]).
#[must_use]
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process by SIGPIPE, the shell's usual status for a writer
/// whose reader left (141); exit status 141 should the signal not end it.
#[must_use]
pub fn end_by_sigpipe() -> ExitCode {
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    ExitCode::from(141)
}

#[derive(Debug, Parser)]
#[command(
    name = "pod-net",
    version,
    about = "eBPF fast path for Kubernetes-style pod networking"
)]
pub struct Cli {
    /// Where programs, maps and links are pinned (one pin dir per node).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and pin the datapath (again, to upgrade it in place), then exit.
    Load(LoadArgs),
    /// Detach every program and remove the pin dir; traffic falls back to the kernel path.
    Unload,
    /// Check the datapath against the node; exits non-zero on any problem.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// Where a cluster agent publishes the store's state (beside its
        /// --subnet-file); shown when present.
        #[arg(long, value_name = "FILE", default_value = crate::ops::cluster_status::DEFAULT_STATUS_FILE)]
        cluster_status: PathBuf,
    },
    /// Register, remove and list the pods on this node.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Add, remove and list remote nodes and the pod prefixes they host.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Packet and byte counters per reason.
    Stats(StatsArgs),
    /// Stream drop and trace events until Ctrl-C.
    Monitor(MonitorArgs),
    /// Make the maps match a node config file (TOML or JSON).
    Apply(ApplyArgs),
    /// Run the node daemon: /metrics, program logs, config reconciling.
    Agent(AgentArgs),
    /// Repair half-done state: entries of vanished pods, pods without the program, orphan attachments.
    Gc {
        /// Print what would be repaired; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the repairs as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// A node config (as for `apply -f`) to keep the maps in step with.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to serve Prometheus /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9565")]
    pub metrics_addr: std::net::SocketAddr,
    /// Run `pod-net gc`'s repairs at start and every SECS seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub gc_interval: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Joining a cluster through etcd, in flannel's schema (flanneld's flags).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// etcd to learn the other nodes from (and lease this node's subnet in).
    #[arg(
        long,
        value_name = "URL[,URL]",
        value_delimiter = ',',
        requires = "iface",
        conflicts_with = "config"
    )]
    pub etcd_endpoints: Vec<String>,
    /// The underlay interface: VXLAN goes through it; its address is this node's.
    #[arg(long, value_name = "IFACE", requires = "etcd_endpoints")]
    pub iface: Option<String>,
    /// Where the network lives in etcd (`<prefix>/config`, `<prefix>/subnets/`).
    #[arg(long, value_name = "PREFIX", default_value = crate::agent::cluster::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// This node's address for the others (default: the first IPv4 of --iface).
    #[arg(long, value_name = "IP", requires = "etcd_endpoints")]
    pub public_ip: Option<Ipv4Addr>,
    /// flannel's subnet.env, written once the subnet is leased.
    #[arg(long, value_name = "PATH", default_value = "/run/pod-net/subnet.env")]
    pub subnet_file: PathBuf,
    /// Write a CNI conflist (bridge + host-local over the subnet, then pod-net-cni) here.
    #[arg(long, value_name = "PATH", requires = "etcd_endpoints")]
    pub cni_conflist: Option<PathBuf>,
    /// TTL of this node's lease; renewed at a third of it.
    #[arg(long, value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub subnet_lease_ttl: u64,
    /// The CA (PEM) that etcd's server certificate must chain to; talks TLS to etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_endpoints")]
    pub etcd_cafile: Option<PathBuf>,
    /// This node's client certificate (PEM) for etcd's client authentication.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_endpoints", "etcd_keyfile"])]
    pub etcd_certfile: Option<PathBuf>,
    /// The private key (PEM) of --etcd-certfile.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_endpoints", "etcd_certfile"])]
    pub etcd_keyfile: Option<PathBuf>,
    /// Delete this node's lease from etcd and exit: the node leaves the cluster.
    #[arg(long, requires = "etcd_endpoints")]
    pub release_lease: bool,
}

impl ClusterArgs {
    /// The cluster settings, when --etcd-endpoints was given.
    #[must_use]
    pub fn options(&self) -> Option<ClusterOptions> {
        let iface = self.iface.clone()?;
        (!self.etcd_endpoints.is_empty()).then(|| ClusterOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            iface,
            public_ip: self.public_ip,
            subnet_file: self.subnet_file.clone(),
            cni_conflist: self.cni_conflist.clone(),
            lease_ttl: std::time::Duration::from_secs(self.subnet_lease_ttl),
            tls: TlsFiles {
                ca_file: self.etcd_cafile.clone(),
                cert_file: self.etcd_certfile.clone(),
                key_file: self.etcd_keyfile.clone(),
            },
        })
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The node config: `[[pods]]` (`ip`, `veth`, `mac`) and `[[nodes]]` (`cidr`,
    /// `node_ip`, `vtep_mac`).
    #[arg(short = 'f', long = "file", value_name = "NODE_CONFIG")]
    pub file: PathBuf,
    /// Print the changes without making them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print the counters as JSON.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// The Prometheus text exposition format.
    #[arg(long)]
    pub prometheus: bool,
    /// Refresh every SECS seconds with rates per second, until Ctrl-C.
    #[arg(long, value_name = "SECS", conflicts_with_all = ["json", "prometheus"])]
    pub watch: Option<u64>,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Add a column saying what each reason means.
    #[arg(long, conflicts_with_all = ["json", "prometheus", "watch"])]
    pub explain: bool,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Also report fast-path packets (`redirect_local`, `encap`, `decap`).
    #[arg(long)]
    pub all: bool,
    /// Events per second per CPU before the rate limit holds them back.
    #[arg(long, value_name = "N", default_value_t = pod_net_common::event::DEFAULT_EVENTS_PER_SECOND)]
    pub rate: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

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

/// Parses `args` (the program name first). A missing subcommand is an
/// error like any other rather than a help screen on stderr, so every usage
/// error can be told in one line by [`usage_error_line`].
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    fn no_help_on_missing(command: clap::Command) -> clap::Command {
        command
            .arg_required_else_help(false)
            .mut_subcommands(no_help_on_missing)
    }
    let mut matches = no_help_on_missing(Cli::command()).try_get_matches_from(args)?;
    Cli::from_arg_matches_mut(&mut matches)
}

/// clap's error as one line: its message, with the argument list or tip
/// that follows it joined on; without the usage block and the pointer to
/// `--help`.
#[must_use]
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let parts: Vec<String> = rendered
        .split("\n\n")
        .map(str::trim)
        .filter(|block| {
            !block.is_empty()
                && !block.starts_with("Usage:")
                && !block.starts_with("For more information")
        })
        .map(|block| {
            block
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let line = parts.join("; ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

/// Runs one command, printing its output; errors go back to `main`.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let pins = PinDir::checked(&cli.pin_dir)?;
    match cli.command {
        Command::Load(args) => {
            let options = LoadOptions {
                max_pods: args.max_pods,
                max_remote_pods: args.max_remote_pods,
                max_remote_cidrs: args.max_remote_cidrs,
                underlay: args.underlay.zip(args.node_ip).map(|(ifname, node_ip)| {
                    UnderlayOptions {
                        ifname,
                        node_ip,
                        vni: args.vni,
                        vxlan_port: args.vxlan_port,
                    }
                }),
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
            print_load_report(&pins, &load::load(&pins, &options)?)?;
        }
        Command::Unload => {
            let report = unload::unload(&pins)?;
            outln!(
                "unloaded {} ({} attachment(s) removed{})",
                pins.root().display(),
                report.links_removed,
                report
                    .tunnel_device
                    .map(|device| format!(", {device} deleted"))
                    .unwrap_or_default()
            );
        }
        Command::Status {
            json,
            cluster_status,
        } => {
            let mut status = status::check(&pins)?;
            status.add_store(&cluster_status)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                out!("{}", status.to_text());
            }
            if !status.healthy {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Pod(command) => run_pod(&pins, command)?,
        Command::Node(command) => run_node(&pins, command)?,
        Command::Stats(args) => {
            if let Some(seconds) = args.watch {
                stats::watch(&pins, seconds, args.count)?;
            } else if args.prometheus {
                out!("{}", metrics::render(&pins)?);
            } else if args.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&Totals::read(&pins)?.to_json())?
                );
            } else {
                out!("{}", Totals::read(&pins)?.to_table(args.explain));
            }
        }
        Command::Apply(args) => {
            let config = apply::read(&args.file)?;
            let changes = apply::run(&pins, &config, args.dry_run)?;
            print_changes(&changes, args.dry_run)?;
        }
        Command::Agent(args) if args.cluster.release_lease => {
            let options = args
                .cluster
                .options()
                .context("--release-lease needs --etcd-endpoints and --iface")?;
            let subnet = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cluster::release(&options))?;
            outln!("released the lease on {subnet}");
        }
        Command::Agent(args) => agent::run(
            pins,
            agent::AgentOptions {
                cluster: args.cluster.options(),
                config: args.config,
                metrics_addr: args.metrics_addr,
                gc_interval: (args.gc_interval > 0)
                    .then(|| std::time::Duration::from_secs(args.gc_interval)),
            },
        )?,
        Command::Gc { dry_run, json } => {
            let repairs = gc::run(&pins, dry_run)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&repairs)?);
            } else {
                for repair in &repairs {
                    outln!("{repair}");
                }
                let verb = if dry_run {
                    "to make (dry run: nothing changed)"
                } else {
                    "made"
                };
                outln!("{} repair(s) {verb}", repairs.len());
            }
        }
        Command::Monitor(args) => monitor::run(
            &pins,
            &monitor::MonitorOptions {
                all: args.all,
                rate: args.rate,
                json: args.json,
                count: args.count,
            },
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `apply`'s changes, a line each, and their count. A cluster's worth of
/// lines goes out buffered, not one write per line.
fn print_changes(changes: &[apply::Change], dry_run: bool) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for change in changes {
        writeln!(out, "{change}")?;
    }
    if dry_run {
        writeln!(
            out,
            "{} change(s) (dry run: nothing changed)",
            changes.len()
        )?;
    } else {
        writeln!(out, "{} change(s) applied", changes.len())?;
    }
    out.flush()?;
    Ok(())
}

/// An error as one line, the causes after colons (as `{:#}` prints it),
/// with the typed failures in the CLI's words: the library names options
/// and capacities, the CLI its flags and commands.
#[must_use]
pub fn error_line(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(|cause| {
            if let Some(refusal) = cause.downcast_ref::<LoadRefusal>() {
                load_refusal(refusal)
            } else if let Some(error) = cause.downcast_ref::<NodeError>() {
                node_error(error)
            } else {
                cause.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The `load` flag that sets a capacity.
const fn capacity_flag(capacity: Capacity) -> &'static str {
    match capacity {
        Capacity::Pods => "--max-pods",
        Capacity::RemotePods => "--max-remote-pods",
        Capacity::RemoteCidrs => "--max-remote-cidrs",
    }
}

/// A node failure, with the command or flag that mends it where the
/// library's words name none.
fn node_error(error: &NodeError) -> String {
    match error {
        NodeError::MapFull {
            capacity,
            size,
            fitted,
        } => format!(
            "{} is full ({size} entries){}; remove stale entries, or `pod-net unload` and load \
             again with a larger {}",
            capacity.map(),
            error::fitted_clause(*fitted),
            capacity_flag(*capacity)
        ),
        NodeError::AlreadyRegistered { ip, .. } => {
            format!("{error}; run `pod-net pod del --ip {ip}` first")
        }
        _ => error.to_string(),
    }
}

/// An option `load` refused, in the CLI's words: the library names the
/// option, the CLI its flag.
fn load_refusal(refusal: &LoadRefusal) -> String {
    match refusal {
        LoadRefusal::ZeroCapacity(capacity) => {
            format!("{} must be at least 1", capacity_flag(*capacity))
        }
        LoadRefusal::CapacityFixed {
            capacity,
            path,
            current,
            wanted,
        } => format!(
            "{} at {} holds up to {current} entries; it cannot be resized to {} {wanted} in \
             place (`pod-net unload` first, which drops its entries)",
            capacity.map(),
            path.display(),
            capacity_flag(*capacity)
        ),
        LoadRefusal::ZeroVxlanPort => "--vxlan-port must not be 0".to_owned(),
        LoadRefusal::NoSuchUnderlay(name) => {
            format!("no interface named {name:?} for --underlay in this network namespace")
        }
        LoadRefusal::NodeIpNotOnUnderlay {
            node_ip,
            ifname,
            has,
        } => format!("--node-ip {node_ip} is not an address of {ifname} (it has {has})"),
        LoadRefusal::XdpNeedsUnderlay => {
            "--xdp needs an underlay: load with --underlay IFACE --node-ip IPV4".to_owned()
        }
    }
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

fn run_node(pins: &PinDir, command: NodeCommand) -> Result<()> {
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
            let nodes = remotes::list(&Datapath::open(pins)?)?;
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

fn run_pod(pins: &PinDir, command: PodCommand) -> Result<()> {
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
            let pods = endpoints::list(&Datapath::open(pins)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_failures_read_in_the_clis_words_behind_their_context() {
        let full = anyhow::Error::from(NodeError::MapFull {
            capacity: Capacity::RemoteCidrs,
            size: 2,
            fitted: Some((1, 2)),
        })
        .context("adding 2 remote entries");
        assert_eq!(
            error_line(&full),
            "adding 2 remote entries: remote_nodes is full (2 entries): 1 of the 2 new entries \
             fit, so none were added; remove stale entries, or `pod-net unload` and load again \
             with a larger --max-remote-cidrs"
        );
        // The library's own words, as the CNI plugin and the agent print them.
        assert_eq!(
            format!("{full:#}"),
            "adding 2 remote entries: remote_nodes is full (2 entries): 1 of the 2 new entries \
             fit, so none were added; remove stale entries, or unload and load again with a \
             larger remote CIDR capacity"
        );
        let refused = anyhow::Error::from(LoadRefusal::ZeroCapacity(Capacity::Pods));
        assert_eq!(error_line(&refused), "--max-pods must be at least 1");
        let plain = anyhow::anyhow!("no such thing").context("reading it");
        assert_eq!(error_line(&plain), "reading it: no such thing");
    }

    #[test]
    fn every_flag_of_every_command_says_what_it_is_for() {
        fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                undocumented(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "pod-net", &mut missing);
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}
