//! `pod-net agent`: the node daemon, and joining a cluster (flanneld's
//! flags).
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    agent::{
        self,
        beside::{BesideOptions, DEFAULT_FLANNEL_SUBNET_FILE},
        cluster::{
            self, ClusterOptions, StoreOptions,
            etcd::{DEFAULT_PREFIX, EtcdOptions, TlsFiles},
            kube::{DEFAULT_NET_CONFIG, KubeOptions},
        },
    },
    datapath::pins::PinDir,
    ops::cluster_status::status_file,
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

/// Joining a cluster through etcd or the Kubernetes API, in flannel's
/// schema (flanneld's flags).
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(
    clap::ArgGroup::new("store")
        .args(["etcd_endpoints", "kube_subnet_mgr", "beside_flannel"])
        .conflicts_with("config")
))]
pub struct ClusterArgs {
    /// etcd to learn the other nodes from (and lease this node's subnet in).
    #[arg(
        long,
        value_name = "URL[,URL]",
        value_delimiter = ',',
        requires = "iface"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Join through the Kubernetes API: this node's subnet is its Node's podCIDR.
    #[arg(long, requires = "iface")]
    pub kube_subnet_mgr: bool,
    /// The kubeconfig to reach the API server with (default: the pod's service account).
    // (A member of a group "requires" another one in vain: the group is
    // what clap finds present. Hence the conflicts.)
    #[arg(
        long,
        value_name = "FILE",
        requires = "kube_subnet_mgr",
        conflicts_with = "etcd_endpoints"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// This node's Node (the `DaemonSet` gives it from `spec.nodeName`).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub kube_node_name: Option<String>,
    /// flannel's net-conf.json: the network (the same JSON as etcd's config).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_NET_CONFIG)]
    pub net_config_path: PathBuf,
    /// The underlay interface, by name or by its address: VXLAN goes through it.
    #[arg(long, value_name = "IFACE", requires = "store")]
    pub iface: Option<String>,
    /// Where the network lives in etcd (`<prefix>/config`, `<prefix>/subnets/`).
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// This node's address for the others (default: the first IPv4 of --iface).
    #[arg(long, value_name = "IP", requires = "store")]
    pub public_ip: Option<Ipv4Addr>,
    /// flannel's subnet.env, written once the subnet is leased.
    #[arg(long, value_name = "PATH", default_value = "/run/pod-net/subnet.env")]
    pub subnet_file: PathBuf,
    /// Write a CNI conflist (bridge + host-local over the subnet, then pod-net-cni) here.
    #[arg(long, value_name = "PATH", requires = "store")]
    pub cni_conflist: Option<PathBuf>,
    /// TTL of this node's lease; renewed at a third of it.
    #[arg(long, value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub subnet_lease_ttl: u64,
    /// The CA (PEM) that etcd's server certificate must chain to; talks TLS to etcd.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_endpoints",
        conflicts_with = "kube_subnet_mgr"
    )]
    pub etcd_cafile: Option<PathBuf>,
    /// This node's client certificate (PEM) for etcd's client authentication.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_endpoints", "etcd_keyfile"], conflicts_with = "kube_subnet_mgr")]
    pub etcd_certfile: Option<PathBuf>,
    /// The private key (PEM) of --etcd-certfile.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_endpoints", "etcd_certfile"], conflicts_with = "kube_subnet_mgr")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Delete this node's lease (etcd) or annotations (Kubernetes) and exit: the node leaves.
    #[arg(long, requires = "store")]
    pub release_lease: bool,
    /// Accelerate the flanneld running on this node: mirror its kernel state, take no lease.
    #[arg(
        long,
        conflicts_with_all = ["iface", "public_ip", "cni_conflist", "release_lease"]
    )]
    pub beside_flannel: bool,
    /// flanneld's VXLAN device, when there is more than one flannel.<VNI>.
    #[arg(
        long,
        value_name = "NAME",
        requires = "beside_flannel",
        conflicts_with_all = ["etcd_endpoints", "kube_subnet_mgr"]
    )]
    pub flannel_device: Option<String>,
    /// Beside flannel, keep pod-net-cni chained into this conflist (flannel's).
    #[arg(
        long,
        value_name = "FILE",
        requires = "beside_flannel",
        conflicts_with_all = ["etcd_endpoints", "kube_subnet_mgr"]
    )]
    pub chain_cni_conflist: Option<PathBuf>,
    /// flanneld's subnet.env (the network and this node's subnet), read beside flannel.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_FLANNEL_SUBNET_FILE)]
    pub flannel_subnet_file: PathBuf,
}

impl ClusterArgs {
    /// The cluster settings, when --etcd-endpoints or --kube-subnet-mgr
    /// was given.
    #[must_use]
    pub fn options(&self) -> Option<ClusterOptions> {
        let store = if self.kube_subnet_mgr {
            StoreOptions::Kube(KubeOptions {
                kubeconfig: self.kubeconfig.clone(),
                node_name: self.kube_node_name.clone().unwrap_or_default(),
                net_config: self.net_config_path.clone(),
            })
        } else if self.etcd_endpoints.is_empty() {
            return None;
        } else {
            StoreOptions::Etcd(EtcdOptions {
                endpoints: self.etcd_endpoints.clone(),
                prefix: self.etcd_prefix.clone(),
                lease_ttl: std::time::Duration::from_secs(self.subnet_lease_ttl),
                tls: TlsFiles {
                    ca_file: self.etcd_cafile.clone(),
                    cert_file: self.etcd_certfile.clone(),
                    key_file: self.etcd_keyfile.clone(),
                },
            })
        };
        Some(ClusterOptions {
            iface: self.iface.clone()?,
            public_ip: self.public_ip,
            subnet_file: self.subnet_file.clone(),
            cni_conflist: self.cni_conflist.clone(),
            store,
        })
    }
}

pub(super) fn run(pins: PinDir, args: AgentArgs) -> Result<()> {
    if args.cluster.release_lease {
        let options = args
            .cluster
            .options()
            .context("--release-lease needs --etcd-endpoints or --kube-subnet-mgr, and --iface")?;
        let released = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cluster::release(&options))?;
        outln!("released {released}");
        return Ok(());
    }
    agent::run(
        pins,
        agent::AgentOptions {
            cluster: args.cluster.options(),
            beside: args.cluster.beside_flannel.then(|| BesideOptions {
                flannel_device: args.cluster.flannel_device.clone(),
                subnet_file: args.cluster.flannel_subnet_file.clone(),
                status_file: status_file(&args.cluster.subnet_file),
                chain: args.cluster.chain_cni_conflist.clone(),
            }),
            config: args.config,
            metrics_addr: args.metrics_addr,
            gc_interval: (args.gc_interval > 0)
                .then(|| std::time::Duration::from_secs(args.gc_interval)),
        },
    )
}
