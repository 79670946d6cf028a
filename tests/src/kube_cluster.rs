//! pod-net agents joining through the Kubernetes API (`--kube-subnet-mgr`)
//! of a [`ControlPlane`]: the rig's nodes registered as Nodes, the agents
//! holding the credentials the deploy manifest gives them.
use std::{collections::BTreeMap, fs, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    cluster::{Agent, agent_dir},
    deploy,
    kube::ControlPlane,
    rig::{Node, Rig},
};

/// flannel's default `net-conf.json` (kube-flannel.yml's).
pub const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// The annotation prefix flannel and pod-net publish under.
pub const PREFIX: &str = "flannel.alpha.coreos.com";

/// The Node of a rig node: `node-N`.
#[must_use]
pub fn node_name(node: &Node) -> String {
    format!("node-{}", node.index)
}

/// A kubeconfig with a token of the deploy manifest's `ServiceAccount`,
/// after applying the manifest itself (namespace, RBAC, `ConfigMap`,
/// `DaemonSet`): the agents get exactly the rights it grants.
pub fn agent_kubeconfig(plane: &ControlPlane) -> Result<PathBuf> {
    let manifest = fs::read_to_string(deploy::manifest_path())?;
    plane.service_account_kubeconfig("pod-net", "pod-net", &manifest)
}

/// Registers the Nodes of `nodes` and waits for their podCIDRs (in order).
pub fn register(plane: &ControlPlane, nodes: &[&Node]) -> Result<Vec<String>> {
    for node in nodes {
        plane.register_node(&node_name(node), &[])?;
    }
    nodes
        .iter()
        .map(|node| plane.wait_pod_cidr(&node_name(node)))
        .collect()
}

/// Starts `pod-net agent --kube-subnet-mgr` on `node` as its Node, with
/// `net_conf` as its `net-conf.json`, then `extra` flags.
pub fn start_agent(
    rig: &Rig,
    node: &Node,
    kubeconfig: &std::path::Path,
    net_conf: &str,
    extra: &[&str],
) -> Result<Agent> {
    let dir = agent_dir(rig, node);
    fs::create_dir_all(&dir)?;
    let conf = dir.join("net-conf.json");
    fs::write(&conf, net_conf)?;
    let name = node_name(node);
    Agent::start_with(
        node,
        &dir,
        &[
            "--kube-subnet-mgr",
            "--kubeconfig",
            kubeconfig.to_str().context("kubeconfig path")?,
            "--kube-node-name",
            &name,
            "--net-config-path",
            conf.to_str().context("net-conf path")?,
        ],
        extra,
    )
}

/// The flannel annotations on Node `name` (prefix stripped).
pub fn flannel_annotations(plane: &ControlPlane, name: &str) -> Result<BTreeMap<String, String>> {
    let node = plane.node(name)?;
    let annotations = node["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Ok(annotations
        .into_iter()
        .filter_map(|(key, value)| {
            let short = key.strip_prefix(&format!("{PREFIX}/"))?.to_owned();
            Some((short, value.as_str()?.to_owned()))
        })
        .collect())
}

/// The annotations a flannel-schema VXLAN node publishes, prefixed.
#[must_use]
pub fn lease_annotations(public_ip: &str, vtep_mac: &str) -> Vec<(String, String)> {
    [
        ("backend-type", "vxlan".to_owned()),
        (
            "backend-data",
            format!(r#"{{"VNI":1,"VtepMAC":"{vtep_mac}"}}"#),
        ),
        ("public-ip", public_ip.to_owned()),
        ("kube-subnet-manager", "true".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (format!("{PREFIX}/{key}"), value))
    .collect()
}

/// Registers Node `name`, waits for its podCIDR, then sets
/// `annotations` (as a flannel node publishes them, once it has its
/// podCIDR); its podCIDR.
pub fn register_with(
    plane: &ControlPlane,
    name: &str,
    annotations: &[(String, String)],
) -> Result<String> {
    plane.register_node(name, &[])?;
    let cidr = plane.wait_pod_cidr(name)?;
    if !annotations.is_empty() {
        annotate(plane, name, annotations)?;
    }
    Ok(cidr)
}

/// Sets `annotations` on Node `name` in one merge patch (given on stdin:
/// a value may be bigger than one command-line argument can be).
pub fn annotate(plane: &ControlPlane, name: &str, annotations: &[(String, String)]) -> Result<()> {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(key, value)| (key.clone(), value.clone().into()))
        .collect();
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    plane
        .kubectl_stdin(
            &[
                "patch",
                "node",
                name,
                "--type=merge",
                "--patch-file=/dev/stdin",
            ],
            &patch.to_string(),
        )
        .map(drop)
}
