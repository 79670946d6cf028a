//! A small container runtime's side of CNI, faithful to libcni's chaining
//! semantics, for driving real plugins in tests:
//!
//! - ADD runs the conflist's plugins in order, each getting the previous
//!   plugin's result as `prevResult`, and caches the final result;
//! - DEL runs them in reverse, each with the cached result as `prevResult`,
//!   then drops the cache;
//! - CHECK runs them in order with the cached result;
//! - every plugin's config is its conflist entry plus `name` and
//!   `cniVersion`.
use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::rig::{Node, Rig, sibling_binary};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A plugin's failure as CNI reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniFailure {
    pub plugin: String,
    pub exit_code: Option<i32>,
    /// The signal that killed the plugin, if one did.
    pub signal: Option<i32>,
    pub code: Option<u64>,
    pub msg: String,
    pub stdout: String,
}

impl std::fmt::Display for CniFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed (exit {:?}, signal {:?}, code {:?}): {}",
            self.plugin, self.exit_code, self.signal, self.code, self.msg
        )
    }
}

impl std::error::Error for CniFailure {}

/// One container's attachment: what ADD was called with.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    /// Path of the pod's network namespace (`/run/netns/...`).
    pub netns: Option<String>,
    pub ifname: String,
}

impl Attachment {
    /// Container `name` of `rig`'s, with a fresh sandbox and `eth0`.
    pub fn in_sandbox(rig: &Rig, name: &str) -> Result<Self> {
        Ok(Self {
            container_id: format!("ctr-{name}-{}", rig.id()),
            netns: Some(rig.sandbox(name)?),
            ifname: "eth0".into(),
        })
    }

    /// Runs `args` inside the sandbox; its stdout, or an error unless it
    /// exits 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let netns = self
            .netns
            .as_deref()
            .context("the attachment has no netns")?;
        let mut full = vec!["netns", "exec", netns.trim_start_matches("/run/netns/")];
        full.extend_from_slice(args);
        crate::cmd::run("ip", full)
    }
}

/// Where a runtime finds the plugins: pod-net-cni beside the test binary
/// (`cargo build --bins`), then Debian's reference plugins.
pub fn plugin_path() -> Result<Vec<PathBuf>> {
    let ours = sibling_binary("pod-net-cni");
    if !ours.is_file() {
        bail!(
            "no {}: build pod-net-cni first (cargo build --bins)",
            ours.display()
        );
    }
    let dir = ours.parent().context("pod-net-cni has no directory")?;
    Ok(vec![dir.to_path_buf(), PathBuf::from(REFERENCE_PLUGINS)])
}

/// A runtime on one node: a conflist, where plugins are, and a result cache.
pub struct Runtime<'a> {
    node: &'a Node,
    conflist: Value,
    plugin_path: Vec<PathBuf>,
    cache: Mutex<BTreeMap<(String, String), Value>>,
    /// Set for every plugin call, beside the `CNI_*` variables.
    extra_env: Mutex<Vec<(&'static str, String)>>,
}

impl<'a> Runtime<'a> {
    /// A runtime on `node` for `conflist`, finding plugins in `plugin_path`.
    #[must_use]
    pub fn new(node: &'a Node, conflist: Value, plugin_path: Vec<PathBuf>) -> Self {
        Self {
            node,
            conflist,
            plugin_path,
            cache: Mutex::new(BTreeMap::new()),
            extra_env: Mutex::new(Vec::new()),
        }
    }

    /// Sets `name=value` for the plugin calls that follow (an empty value
    /// unsets it).
    pub fn set_env(&self, name: &'static str, value: &str) -> Result<()> {
        let mut extra = self
            .extra_env
            .lock()
            .map_err(|_| anyhow::anyhow!("env poisoned"))?;
        extra.retain(|(existing, _)| *existing != name);
        extra.push((name, value.to_owned()));
        Ok(())
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn plugin_config(&self, plugin: &Value, prev_result: Option<&Value>) -> Value {
        let mut config = plugin.clone();
        config["name"] = self.conflist["name"].clone();
        config["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev_result {
            config["prevResult"] = prev.clone();
        }
        config
    }

    /// ADD through the whole chain; returns (and caches) the final result.
    pub fn add(&self, attachment: &Attachment) -> Result<Value> {
        let mut result: Option<Value> = None;
        for plugin in self.plugins() {
            let config = self.plugin_config(&plugin, result.as_ref());
            let output = self.exec("ADD", &config, attachment)?;
            result = Some(serde_json::from_str(&output).with_context(|| {
                format!(
                    "{} printed a result that is not JSON: {output:?}",
                    plugin["type"]
                )
            })?);
        }
        let result = result.context("empty conflist")?;
        self.cache
            .lock()
            .map_err(|_| anyhow::anyhow!("cache poisoned"))?
            .insert(
                (attachment.container_id.clone(), attachment.ifname.clone()),
                result.clone(),
            );
        Ok(result)
    }

    /// DEL through the chain in reverse, with the cached result.
    pub fn del(&self, attachment: &Attachment) -> Result<()> {
        let key = (attachment.container_id.clone(), attachment.ifname.clone());
        let cached = self
            .cache
            .lock()
            .map_err(|_| anyhow::anyhow!("cache poisoned"))?
            .get(&key)
            .cloned();
        for plugin in self.plugins().iter().rev() {
            let config = self.plugin_config(plugin, cached.as_ref());
            self.exec("DEL", &config, attachment)?;
        }
        self.cache
            .lock()
            .map_err(|_| anyhow::anyhow!("cache poisoned"))?
            .remove(&key);
        Ok(())
    }

    /// CHECK through the chain with the cached result.
    pub fn check(&self, attachment: &Attachment) -> Result<()> {
        let key = (attachment.container_id.clone(), attachment.ifname.clone());
        let cached = self
            .cache
            .lock()
            .map_err(|_| anyhow::anyhow!("cache poisoned"))?
            .get(&key)
            .cloned()
            .context("CHECK without a cached ADD result")?;
        for plugin in self.plugins() {
            let config = self.plugin_config(&plugin, Some(&cached));
            self.exec("CHECK", &config, attachment)?;
        }
        Ok(())
    }

    /// Runs one plugin with `command` and `config`; its stdout on success.
    pub fn exec(&self, command: &str, config: &Value, attachment: &Attachment) -> Result<String> {
        let plugin_type = config["type"].as_str().context("plugin without a type")?;
        let binary = self
            .plugin_path
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|candidate| candidate.is_file())
            .with_context(|| format!("no plugin {plugin_type} in {:?}", self.plugin_path))?;
        let mut env = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", attachment.container_id.clone()),
            ("CNI_NETNS", attachment.netns.clone().unwrap_or_default()),
            ("CNI_IFNAME", attachment.ifname.clone()),
            ("CNI_PATH", self.path_var()),
        ];
        env.extend(
            self.extra_env
                .lock()
                .map_err(|_| anyhow::anyhow!("env poisoned"))?
                .iter()
                .cloned(),
        );
        run_plugin(self.node, &binary, &env, &serde_json::to_vec(config)?)
    }

    fn path_var(&self) -> String {
        self.plugin_path
            .iter()
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Runs a plugin binary in `node`'s namespace with `env` and `stdin`.
/// Returns stdout on exit 0, else a [`CniFailure`] with the CNI error.
pub fn run_plugin(
    node: &Node,
    binary: &Path,
    env: &[(&str, String)],
    stdin: &[u8],
) -> Result<String> {
    let mut command: Command = node.command(&[binary.to_str().context("non-UTF-8 path")?]);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (name, value) in env {
        if !value.is_empty() {
            command.env(name, value);
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(stdin)
        .context("writing the config")?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let error: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    Err(CniFailure {
        plugin: binary.display().to_string(),
        exit_code: output.status.code(),
        signal: output.status.signal(),
        code: error["code"].as_u64(),
        msg: error["msg"].as_str().map_or_else(
            || String::from_utf8_lossy(&output.stderr).into_owned(),
            str::to_owned,
        ),
        stdout,
    }
    .into())
}

/// The CNI failure inside an error from [`Runtime`], if that is what it is.
#[must_use]
pub fn failure(error: &anyhow::Error) -> Option<&CniFailure> {
    error.downcast_ref::<CniFailure>()
}

/// A conflist: `bridge` (cni0, host-local in `subnet`) then pod-net-cni.
#[must_use]
pub fn bridge_conflist(subnet: &str, ipam_dir: &Path, pin_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "podnet-bridge",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "subnet": subnet,
                    "dataDir": ipam_dir,
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "pod-net-cni", "pinDir": pin_dir}
        ]
    })
}

/// A conflist: `ptp` (host-local in `subnet`) then pod-net-cni.
#[must_use]
pub fn ptp_conflist(subnet: &str, ipam_dir: &Path, pin_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "podnet-ptp",
        "plugins": [
            {
                "type": "ptp",
                "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "subnet": subnet,
                    "dataDir": ipam_dir,
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "pod-net-cni", "pinDir": pin_dir}
        ]
    })
}

/// The pod's IPv4 address in a CNI result.
pub fn result_ipv4(result: &Value) -> Result<std::net::Ipv4Addr> {
    let ips = result["ips"].as_array().context("no ips in result")?;
    for ip in ips {
        if let Some(address) = ip["address"].as_str()
            && let Ok(parsed) = address.split('/').next().unwrap_or_default().parse()
        {
            return Ok(parsed);
        }
    }
    bail!("no IPv4 address in {result}")
}
