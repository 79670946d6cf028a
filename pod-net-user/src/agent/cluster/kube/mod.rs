//! Joining through the Kubernetes API, in flannel's kube schema
//! (`flanneld --kube-subnet-mgr`): this node's subnet is its Node's
//! podCIDR, assigned by kube-controller-manager; the network config is
//! flannel's `net-conf.json`; the node publishes its VXLAN endpoint in its
//! Node's annotations (`node`), and learns the others from theirs
//! (`store`).
pub mod node;
mod store;

use std::{path::PathBuf, time::Duration};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use log::{info, warn};

use self::node::{NodeObject, NodeRecord, node_key};
pub use self::store::KubeStore;
use super::{
    ClusterError, ClusterOptions, DatapathTarget, Joined,
    backoff::Backoff,
    board::StatusBoard,
    flannel::{LeaseAttrs, NetworkConfig, Subnet},
    layout::Layout,
    lease::OwnLease,
};
use crate::{datapath::pins::PinDir, sys::files};

/// flannel's `--net-config-path` default, where kube-flannel.yml mounts
/// its `ConfigMap`.
pub const DEFAULT_NET_CONFIG: &str = "/etc/kube-flannel/net-conf.json";
/// The largest `net-conf.json` read.
const NET_CONFIG_LIMIT: u64 = 64 * 1024;

/// Where the API server is and which Node is this one.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig; the pod's service account when `None`.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// flannel's `net-conf.json`.
    pub net_config: PathBuf,
}

fn kube_error(reason: String) -> ClusterError {
    ClusterError::Kube(reason)
}

/// A kubeconfig that cannot be used: one line (the YAML parser's message
/// goes on with a snippet of the file).
fn kubeconfig_error(path: &std::path::Path, err: &impl std::fmt::Display) -> ClusterError {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    kube_error(format!("--kubeconfig {}: {first}", path.display()))
}

impl KubeOptions {
    /// Checks the node name, the network config and the kubeconfig.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.node_name.is_empty() {
            return Err(kube_error(
                "--kube-node-name (or NODE_NAME) is needed: the name of this node's Node".into(),
            ));
        }
        self.network_config()?;
        if let Some(path) = &self.kubeconfig {
            Kubeconfig::read_from(path).map_err(|err| kubeconfig_error(path, &err))?;
        }
        Ok(())
    }

    /// The network, from `net-conf.json` (the same JSON as flannel's etcd
    /// config).
    pub fn network_config(&self) -> Result<NetworkConfig, ClusterError> {
        let path = &self.net_config;
        let bad = |reason: String| kube_error(format!("--net-config-path {reason}"));
        // Through symlinks: a ConfigMap volume's files are symlinks.
        let bytes = files::read_config(path, NET_CONFIG_LIMIT)
            .map_err(|err| bad(format!("{}: {err}", path.display())))?
            .ok_or_else(|| bad(format!("{}: no such file", path.display())))?;
        NetworkConfig::parse(&path.display().to_string(), &bytes)
            .map_err(|err| bad(err.to_string()))
    }

    /// A client of the API server: from `--kubeconfig`, else the pod's
    /// service account.
    async fn client(&self) -> Result<Client, ClusterError> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|err| kubeconfig_error(path, &err))?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|err| kubeconfig_error(path, &err))?
            }
            None => Config::incluster().map_err(|err| {
                kube_error(format!(
                    "no --kubeconfig, and not in a pod with a service account: {err}"
                ))
            })?,
        };
        Client::try_from(config).map_err(|err| kube_error(format!("API client: {err}")))
    }
}

/// Says a problem once (until it changes), in the log and the status.
struct Waiting {
    said: Option<String>,
}

impl Waiting {
    fn say(&mut self, board: &StatusBoard, problem: String) {
        if self.said.as_ref() != Some(&problem) {
            warn!("{problem}");
            board.update(|status| status.problems = vec![problem.clone()]);
            self.said = Some(problem);
        }
    }

    fn done(self, board: &StatusBoard) {
        if self.said.is_some() {
            board.update(|status| status.problems.clear());
        }
    }
}

/// Waits for this node's Node and its podCIDR: the subnet, and the Node as
/// it was then. A podCIDR outside the network is an error (it never
/// changes by itself).
async fn own_subnet(
    store: &KubeStore,
    kube: &KubeOptions,
    config: &NetworkConfig,
    board: &StatusBoard,
) -> Result<(NodeObject, Subnet), ClusterError> {
    let name = &kube.node_name;
    let key = node_key(name);
    let mut backoff = Backoff::new();
    let mut waiting = Waiting { said: None };
    loop {
        let problem = match store.node(name).await {
            Err(err) => format!("kubernetes: {err}"),
            Ok(None) => format!("node {name} is not registered yet; waiting for it"),
            Ok(Some(node)) if node.pod_cidrs().is_empty() => format!(
                "node {name} has no podCIDR yet; waiting for kube-controller-manager to \
                 assign one (--allocate-node-cidrs)"
            ),
            Ok(Some(node)) => {
                let subnet = node
                    .record()
                    .subnets(&key)
                    .map_err(|err| kube_error(format!("node {err}")))?
                    .subnet;
                if !config.network.contains(subnet.ip) || subnet.len < config.network.len {
                    return Err(kube_error(format!(
                        "node {name}'s podCIDR {subnet} is not inside Network {} of {}: give \
                         kube-controller-manager a --cluster-cidr inside it",
                        config.network,
                        kube.net_config.display()
                    )));
                }
                waiting.done(board);
                return Ok((node, subnet));
            }
        };
        waiting.say(board, problem);
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Joins through the API server: waits for this node's podCIDR, loads the
/// datapath, publishes this node's annotations, and writes its files.
pub async fn join(
    pins: &PinDir,
    options: &ClusterOptions,
    kube: &KubeOptions,
    board: StatusBoard,
) -> Result<(Joined<KubeStore>, DatapathTarget), ClusterError> {
    let underlay = super::underlay(options)?;
    let mut config = kube.network_config()?;
    let store = KubeStore::new(kube.client().await?);
    let (node, subnet) = own_subnet(&store, kube, &config, &board).await?;
    // Every node's podCIDR has kube-controller-manager's
    // --node-cidr-mask-size: this one's says which.
    config.subnet_len = subnet.len;
    // The operator's overwrite is what the others must use (NAT).
    let public_ip = match node.public_ip_overwrite() {
        Some(Ok(ip)) => ip,
        Some(Err(reason)) => return Err(kube_error(format!("node {}: {reason}", kube.node_name))),
        None => underlay.public_ip,
    };
    let vtep_mac = super::load_datapath(pins, &underlay, underlay.public_ip, &config)?;
    let attrs = LeaseAttrs::vxlan(public_ip, config.vni, vtep_mac);
    let published = NodeRecord::published(node.pod_cidrs(), &attrs);
    let mut backoff = Backoff::new();
    let mut waiting = Waiting { said: None };
    loop {
        match store.publish(&kube.node_name, &published).await {
            Ok(()) => break,
            Err(err) => waiting.say(&board, format!("kubernetes: publishing: {err}")),
        }
        tokio::time::sleep(backoff.next()).await;
    }
    waiting.done(&board);
    info!(
        "node {} on {subnet}: published {public_ip}, VTEP {vtep_mac}",
        kube.node_name
    );
    let lease = OwnLease {
        subnet,
        key: node_key(&kube.node_name),
        id: 0,
        ttl: Duration::ZERO,
        value: published.to_bytes(),
    };
    let target = super::settle(pins, options, &underlay, &config, &lease, &board)?;
    let joined = Joined {
        layout: Layout::Kube,
        store,
        config,
        public_ip,
        lease,
        board,
    };
    Ok((joined, target))
}

/// Removes this node's lease annotations, as a node leaving does; says
/// which node.
pub async fn release(kube: &KubeOptions) -> Result<String, ClusterError> {
    let store = KubeStore::new(kube.client().await?);
    let name = &kube.node_name;
    let node = store
        .node(name)
        .await?
        .ok_or_else(|| kube_error(format!("node {name} is not registered")))?;
    let record = node.record();
    if record.annotations.is_empty() {
        return Err(ClusterError::NothingToRelease(format!("node {name}")));
    }
    store
        .publish(
            name,
            &NodeRecord {
                pod_cidrs: record.pod_cidrs,
                annotations: std::collections::BTreeMap::new(),
            },
        )
        .await?;
    Ok(format!("the annotations of node {name}"))
}
