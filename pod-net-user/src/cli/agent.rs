//! `pod-net agent`: the node daemon, and joining a cluster (flanneld's
//! flags).
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    agent::{
        self,
        cluster::{self, ClusterOptions, etcd::TlsFiles},
    },
    datapath::pins::PinDir,
};

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

pub(super) fn run(pins: PinDir, args: AgentArgs) -> Result<()> {
    if args.cluster.release_lease {
        let options = args
            .cluster
            .options()
            .context("--release-lease needs --etcd-endpoints and --iface")?;
        let subnet = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cluster::release(&options))?;
        outln!("released the lease on {subnet}");
        return Ok(());
    }
    agent::run(
        pins,
        agent::AgentOptions {
            cluster: args.cluster.options(),
            config: args.config,
            metrics_addr: args.metrics_addr,
            gc_interval: (args.gc_interval > 0)
                .then(|| std::time::Duration::from_secs(args.gc_interval)),
        },
    )
}
