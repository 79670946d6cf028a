//! A real flanneld (the Go-built one of [`crate::peers`]) on a rig node,
//! and flannel's CNI plugin to make pods on it.
//!
//! flanneld runs inside the node's namespace, with `eth0` (the underlay)
//! as its interface, either against a flannel-schema etcd
//! ([`crate::cluster::Etcd`]: `--etcd-endpoints`) or against a control
//! plane ([`crate::kube::ControlPlane`]: `--kube-subnet-mgr`). It leases a
//! subnet, writes `subnet.env`, and makes `flannel.1` (VXLAN, VNI 1, port
//! 8472) with a route, neighbour and FDB entry per peer: the kernel path
//! pod-net accelerates. Its files and log are in the rig's scratch dir;
//! it is stopped (SIGTERM, then SIGKILL) when dropped.
//!
//! Pods: [`Flanneld::conflist`] is kube-flannel's conflist (the `flannel`
//! plugin delegating to `bridge` with `host-local`), cniVersion 0.3.1 as
//! the v0.9.1 plugin speaks at most 0.4.0; [`plugin_path`] holds that
//! plugin and Debian's reference plugins. Run it with [`crate::cni::Runtime`].
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::{
    cluster::{PREFIX, subnet_of},
    cni::REFERENCE_PLUGINS,
    daemon::{self, Daemon},
    peers,
    rig::{Node, Rig},
    wait::wait_for,
};

/// flannel's default network config with the VXLAN backend, for kube mode's
/// `net-conf.json` (iptables, not nftables, as on Debian 12).
pub const NET_CONF: &str =
    r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#;

/// Where flanneld learns its subnet from.
#[derive(Clone, Debug)]
pub enum Store {
    /// etcd in flannel's schema, at these endpoints (comma-separated),
    /// under [`PREFIX`].
    Etcd { endpoints: String },
    /// The Kubernetes API (`--kube-subnet-mgr`): the node's
    /// `spec.podCIDR`, the network config from `net_conf` (JSON).
    Kube {
        kubeconfig: PathBuf,
        node_name: String,
        net_conf: String,
    },
}

/// flanneld on one rig node.
pub struct Flanneld {
    daemon: Daemon,
    /// Its files: `subnet.env`, `net-conf.json`, the log, CNI state.
    pub dir: PathBuf,
    pub subnet_file: PathBuf,
    /// When the running flanneld was started: its `subnet.env` is newer.
    started: SystemTime,
}

impl Flanneld {
    /// flanneld on `node` against the flannel-schema etcd at `endpoints`,
    /// with `extra` flags.
    pub fn start_etcd(rig: &Rig, node: &Node, endpoints: &str, extra: &[&str]) -> Result<Self> {
        Self::start(
            rig,
            node,
            &Store::Etcd {
                endpoints: endpoints.to_owned(),
            },
            extra,
        )
    }

    /// flanneld on `node` in kube mode as Node `node_name` with
    /// `kubeconfig`, the network config [`NET_CONF`].
    pub fn start_kube(
        rig: &Rig,
        node: &Node,
        node_name: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start(
            rig,
            node,
            &Store::Kube {
                kubeconfig: kubeconfig.to_path_buf(),
                node_name: node_name.to_owned(),
                net_conf: NET_CONF.to_owned(),
            },
            extra,
        )
    }

    /// flanneld on `node` following `store`, with `extra` flags; started,
    /// not yet waited for (see [`Self::wait_subnet`]).
    pub fn start(rig: &Rig, node: &Node, store: &Store, extra: &[&str]) -> Result<Self> {
        daemon::clear_stale()?;
        let binary = peers::require("flanneld")?;
        let dir = rig.scratch_dir()?.join(format!("flanneld-n{}", node.index));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let subnet_file = dir.join("subnet.env");
        let _ = fs::remove_file(&subnet_file);
        let mut args: Vec<String> = vec![
            "--iface=eth0".into(),
            format!("--subnet-file={}", subnet_file.display()),
            // The bridge plugin masquerades nothing either (see conflist):
            // pods see each other's own addresses.
            "--ip-masq=false".into(),
            "--healthz-port=0".into(),
        ];
        let mut node_name = None;
        match store {
            Store::Etcd { endpoints } => {
                args.push(format!("--etcd-endpoints={endpoints}"));
                args.push(format!("--etcd-prefix={PREFIX}"));
            }
            Store::Kube {
                kubeconfig,
                node_name: name,
                net_conf,
            } => {
                let net_conf_path = dir.join("net-conf.json");
                fs::write(&net_conf_path, net_conf)?;
                args.push("--kube-subnet-mgr".into());
                args.push(format!("--kubeconfig-file={}", kubeconfig.display()));
                args.push(format!("--net-config-path={}", net_conf_path.display()));
                node_name = Some(name.clone());
            }
        }
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let mut daemon = Daemon::new(
            rig.id(),
            &node.netns,
            &format!("flanneld-n{}", node.index),
            &binary,
            args.iter().map(OsString::from).collect(),
            &dir.join("flanneld.log"),
        )?;
        if let Some(name) = node_name {
            // Outside a pod, kube mode learns its Node's name from NODE_NAME.
            daemon = daemon.env("NODE_NAME", &name);
        }
        let started = SystemTime::now();
        daemon.start()?;
        Ok(Self {
            daemon,
            dir,
            subnet_file,
            started,
        })
    }

    /// Waits for the running flanneld to write `subnet.env` and returns
    /// the leased subnet, `10.244.N.0/24` (from `FLANNEL_SUBNET`, the
    /// gateway `10.244.N.1/24`).
    pub fn wait_subnet(&mut self, limit: Duration) -> Result<String> {
        let file = self.subnet_file.clone();
        let started = self.started;
        let result = wait_for("flanneld's subnet.env", limit, || {
            if !self.daemon.running() {
                return Some(None);
            }
            let written = fs::metadata(&file).and_then(|meta| meta.modified()).ok()?;
            if written < started {
                return None;
            }
            let text = fs::read_to_string(&file).ok()?;
            subnet_of(&text).map(Some)
        });
        match result {
            Ok(Some(subnet)) => Ok(subnet),
            Ok(None) => anyhow::bail!("flanneld exited; its log:\n{}", self.daemon.log_tail(40)),
            Err(err) => {
                Err(err).with_context(|| format!("flanneld's log:\n{}", self.daemon.log_tail(40)))
            }
        }
    }

    /// `subnet.env` as flanneld wrote it.
    pub fn subnet_env(&self) -> Result<String> {
        fs::read_to_string(&self.subnet_file)
            .with_context(|| format!("reading {}", self.subnet_file.display()))
    }

    /// SIGKILLs flanneld (its lease, flannel.1 and routes stay).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Stops flanneld with SIGTERM (SIGKILL after 10 s); how long it took.
    pub fn stop(&mut self) -> Option<Duration> {
        self.daemon.stop()
    }

    /// Kills flanneld and starts it again with the same flags. Its
    /// `subnet.env` stays, as on a real node (flanneld reads its previous
    /// subnet there); [`Self::wait_subnet`] waits for the new run's.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.kill();
        self.started = SystemTime::now();
        self.daemon.start()
    }

    /// flanneld's PID while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// Whether flanneld is still running.
    pub fn running(&mut self) -> bool {
        self.daemon.running()
    }

    /// flanneld's log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// The conflist a kube-flannel node has, for this flanneld's
    /// `subnet.env`, with the plugin's state and host-local's in this
    /// flanneld's dir (several simulated nodes share this host's
    /// /var/lib/cni).
    #[must_use]
    pub fn conflist(&self) -> Value {
        conflist(&self.subnet_file, &self.dir.join("cni"))
    }
}

/// kube-flannel's conflist (`cbr0`: the `flannel` plugin delegating to
/// `bridge`), reading `subnet_file`, keeping state under `state_dir`. The
/// delegate does not masquerade (flanneld runs with `--ip-masq=false`, for
/// which the plugin would turn the bridge's masquerading on).
#[must_use]
pub fn conflist(subnet_file: &Path, state_dir: &Path) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "cbr0",
        "plugins": [{
            "type": "flannel",
            "subnetFile": subnet_file,
            "dataDir": state_dir.join("flannel"),
            // The plugin fills in type host-local, ranges and routes.
            "ipam": {"dataDir": state_dir.join("host-local")},
            "delegate": {
                "hairpinMode": true,
                "isDefaultGateway": true,
                "ipMasq": false,
            },
        }],
    })
}

/// Where a runtime finds the plugins of [`conflist`]: flannel's plugin from
/// the peer cache, then Debian's reference plugins (`bridge`,
/// `host-local`, ...), which it delegates to.
pub fn plugin_path() -> Result<Vec<PathBuf>> {
    let flannel = peers::require("cni-flannel")?;
    let dir = flannel
        .parent()
        .context("the flannel plugin has no directory")?;
    Ok(vec![dir.to_path_buf(), PathBuf::from(REFERENCE_PLUGINS)])
}

/// `flannel.1` on `node` as `ip -d -j link show` reports it (its
/// `linkinfo.info_data` holds the VXLAN id, port and local address).
pub fn vxlan_device(node: &Node) -> Result<Value> {
    let text = node.ip(&["-d", "-j", "link", "show", "dev", "flannel.1"])?;
    let links: Value = serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))?;
    Ok(links[0].clone())
}
