//! A real etcd in a rig, and `pod-net agent --etcd-endpoints` on its nodes.
//!
//! etcd runs in the switch namespace of a rig of 3+ nodes, on
//! `192.168.100.254:2379` (an address on the switch's bridge, which every
//! node reaches over its underlay), with its data in a directory of its
//! own on tmpfs. It is killed when its guard drops; so are agents.
use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    RigSpec,
    cmd::{output_of, run_command},
    cni::{self, Attachment, Runtime, result_ipv4},
    rig::{Node, Rig, SHARED_MEMORY, pod_net_binary, sibling_binary},
    wait::wait_for,
};

/// etcd's address on the rig's switch.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
/// The prefix the tests use (flannel's default).
pub const PREFIX: &str = "/coreos.com/network";
/// flannel's default network, VXLAN backend.
pub const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Bound for anything the agents should do "within seconds".
pub const SOON: Duration = Duration::from_secs(20);

/// An etcd server in a rig's switch namespace.
pub struct Etcd {
    netns: String,
    data_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    tls: Option<TlsFiles>,
}

/// Certificates for etcd over TLS with client authentication, made with
/// `openssl` for one test: a CA, etcd's server certificate for
/// [`ETCD_IP`], and a client certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes the files in `dir` (P-256 keys, valid for a day).
    pub fn create(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let path = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| {
            run_command(Command::new("openssl").args(args).current_dir(dir)).map(drop)
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &key[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=pod-net test CA",
                ],
            ]
            .concat(),
        )?;
        for (name, extension) in [
            (
                "server",
                format!("subjectAltName=IP:{ETCD_IP}\nextendedKeyUsage=serverAuth"),
            ),
            ("client", "extendedKeyUsage=clientAuth".to_owned()),
        ] {
            let (csr, pem, key_file, ext) = (
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.key"),
                format!("{name}.ext"),
            );
            fs::write(path(&ext), extension)?;
            openssl(
                &[
                    &["req"],
                    &key[..],
                    &[
                        "-keyout",
                        &key_file,
                        "-out",
                        &csr,
                        "-subj",
                        &format!("/CN={name}"),
                    ],
                ]
                .concat(),
            )?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ])?;
        }
        Ok(Self {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
        })
    }
}

impl Etcd {
    /// Starts etcd in `rig`'s switch namespace and waits until it answers.
    pub fn start(rig: &Rig) -> Result<Self> {
        Self::start_with(rig, None)
    }

    /// Starts etcd serving only TLS, requiring client certificates.
    pub fn start_tls(rig: &Rig, tls: TlsFiles) -> Result<Self> {
        Self::start_with(rig, Some(tls))
    }

    fn start_with(rig: &Rig, tls: Option<TlsFiles>) -> Result<Self> {
        let netns = rig
            .switch()
            .context("etcd needs a rig of 3+ nodes (one with a switch)")?
            .to_owned();
        let address = format!("{ETCD_IP}/24");
        let present = run_command(Command::new("ip").args(["-n", &netns, "addr", "show", "br0"]))?;
        if !present.contains(&address) {
            // Local traffic (etcdctl here, etcd's own gateway) goes over lo.
            run_command(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
            run_command(
                Command::new("ip").args(["-n", &netns, "addr", "add", &address, "dev", "br0"]),
            )?;
        }
        let scratch = rig.scratch_dir()?;
        let mut etcd = Self {
            netns,
            // tmpfs: fsync on a disk shared with builds can outlast etcd's
            // proposal deadline.
            data_dir: PathBuf::from(SHARED_MEMORY).join(format!("{}-etcd", rig.id())),
            child: None,
            log: scratch.join("etcd.log"),
            tls,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    /// The client URL of an etcd without TLS.
    #[must_use]
    pub fn endpoint() -> String {
        format!("http://{ETCD_IP}:2379")
    }

    /// This etcd's client URL.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{ETCD_IP}:2379")
    }

    fn spawn(&mut self) -> Result<()> {
        let client = self.url();
        let peer = format!("http://{ETCD_IP}:2380");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "etcd", "--name", "rig", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("rig={peer}")]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.child = Some(child);
        let mut last = String::new();
        wait_for("etcd to answer", Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"])
                .map_err(|err| last = format!("{err:#}"))
                .ok()
        })
        .map(drop)
        .with_context(|| {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            format!("etcdctl: {last}\netcd's log:\n{log}")
        })
    }

    /// SIGKILLs etcd (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, with its data or (`empty`) without.
    pub fn restart(&mut self, empty: bool) -> Result<()> {
        self.kill();
        if empty {
            let _ = fs::remove_dir_all(&self.data_dir);
        }
        self.spawn()
    }

    /// `etcdctl args..` against this etcd; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "etcdctl", "--dial-timeout=2s", "--command-timeout=5s"])
            .arg(format!("--endpoints={}", self.url()));
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        run_command(command.args(args).env("ETCDCTL_API", "3"))
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.etcdctl(&["put", key, value]).map(drop)
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let text = self.etcdctl(&["get", "--print-value-only", key])?;
        Ok(text.strip_suffix('\n').map(str::to_owned))
    }

    /// Keys under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let text = self.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
        let mut keys: Vec<String> = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Writes many keys fast: transactions of 128 puts (etcd's default
    /// `--max-txn-ops`) through etcd's JSON gateway, where etcdctl would
    /// take a process per key.
    pub fn put_many(&self, records: &[(String, String)]) -> Result<()> {
        if self.tls.is_some() {
            bail!("put_many speaks plain HTTP");
        }
        let body_file = self.data_dir.with_extension("txn.json");
        for chunk in records.chunks(128) {
            let ops: Vec<serde_json::Value> = chunk
                .iter()
                .map(|(key, value)| {
                    serde_json::json!({"requestPut": {"key": base64(key.as_bytes()), "value": base64(value.as_bytes())}})
                })
                .collect();
            fs::write(
                &body_file,
                serde_json::to_vec(&serde_json::json!({ "success": ops }))?,
            )?;
            let reply = run_command(
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", self.netns))
                    .args(["--", "curl", "-sSf", "--data-binary"])
                    .arg(format!("@{}", body_file.display()))
                    .arg(format!("{}/v3/kv/txn", self.url())),
            )?;
            if !reply.contains("\"succeeded\":true") {
                bail!("etcd txn failed: {reply}");
            }
        }
        let _ = fs::remove_file(&body_file);
        Ok(())
    }

    /// Writes each record in a revision of its own, back to back: one
    /// curl of etcd's JSON gateway, a request per record.
    pub fn put_each(&self, records: &[(String, String)]) -> Result<()> {
        if self.tls.is_some() {
            bail!("put_each speaks plain HTTP");
        }
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "curl", "-sSf"]);
        let url = format!("{}/v3/kv/put", self.url());
        for (index, (key, value)) in records.iter().enumerate() {
            if index > 0 {
                command.arg("--next");
            }
            let body = serde_json::json!({"key": base64(key.as_bytes()), "value": base64(value.as_bytes())});
            command.args(["-o", "/dev/null", "--data-binary", &body.to_string(), &url]);
        }
        run_command(&mut command)?;
        Ok(())
    }

    /// Writes flannel's network config.
    pub fn put_config(&self, json: &str) -> Result<()> {
        self.put(&format!("{PREFIX}/config"), json)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.data_dir);
    }
}

/// `pod-net agent ...` on a node, killed (SIGKILL) on drop.
pub struct Agent {
    child: Option<Child>,
    args: Vec<String>,
    netns: String,
    pin_dir: PathBuf,
    pub log: PathBuf,
    /// `RUST_LOG` for the agent: [`AGENT_LOG`] unless changed before a
    /// [`restart`](Self::restart).
    pub log_filter: String,
    pub subnet_file: PathBuf,
    pub conflist: PathBuf,
}

/// The agents' log filter: the agent's default, without netlink's noise.
pub const AGENT_LOG: &str = "info,netlink_packet_route=error";
/// Also each change the agent programs, as it makes it (debug level).
pub const AGENT_LOG_EACH_CHANGE: &str =
    "info,netlink_packet_route=error,pod_net::agent::change_log=debug";

impl Agent {
    /// Starts an agent on `node` (underlay `eth0`) following etcd at
    /// `endpoint`, with `extra` flags; its files and log in `dir`.
    pub fn start(node: &Node, dir: &Path, endpoint: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with(node, dir, &["--etcd-endpoints", endpoint], extra)
    }

    /// Starts an agent on `node` (underlay `eth0`) with `store` flags (the
    /// store it joins through), then `extra` ones; its files and log in
    /// `dir`.
    pub fn start_with(node: &Node, dir: &Path, store: &[&str], extra: &[&str]) -> Result<Self> {
        let subnet_file = dir.join("subnet.env");
        let conflist = dir.join("10-pod-net.conflist");
        let mut args: Vec<String> = store
            .iter()
            .chain(&["--iface", "eth0", "--gc-interval", "0"])
            .map(|arg| (*arg).to_owned())
            .collect();
        args.push("--subnet-file".into());
        args.push(subnet_file.display().to_string());
        args.push("--cni-conflist".into());
        args.push(conflist.display().to_string());
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        Self::spawn_new(node, dir, args, subnet_file, conflist)
    }

    /// Starts `pod-net agent --beside-flannel` on `node`, accelerating the
    /// flanneld that writes `flannel_subnet_file`, keeping pod-net-cni
    /// chained into flannel's conflist at `chain`; its status and log in
    /// `dir`, `extra` flags last.
    pub fn beside_flannel(
        node: &Node,
        dir: &Path,
        flannel_subnet_file: &Path,
        chain: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        // --subnet-file only places the status file: beside flannel the
        // agent writes no subnet.env.
        let subnet_file = dir.join("subnet.env");
        let mut args: Vec<String> = vec![
            "--beside-flannel".into(),
            "--flannel-subnet-file".into(),
            flannel_subnet_file.display().to_string(),
            "--chain-cni-conflist".into(),
            chain.display().to_string(),
            "--subnet-file".into(),
            subnet_file.display().to_string(),
            "--gc-interval".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        Self::spawn_new(node, dir, args, subnet_file, chain.to_path_buf())
    }

    /// Starts `pod-net agent args..` in `node`'s namespace.
    fn spawn_new(
        node: &Node,
        dir: &Path,
        args: Vec<String>,
        subnet_file: PathBuf,
        conflist: PathBuf,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let mut agent = Self {
            child: None,
            args: std::iter::once("agent".to_owned()).chain(args).collect(),
            netns: node.netns.clone(),
            pin_dir: node.pin_dir.clone(),
            log: dir.join("agent.log"),
            log_filter: AGENT_LOG.to_owned(),
            subnet_file,
            conflist,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(pod_net_binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting pod-net agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs the agent: no goodbye to etcd, nothing cleaned up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same agent again.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// The agent's process ID while it runs (`nsenter` execs it in place).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A memory figure of the agent from `/proc/PID/status`, in KiB:
    /// `VmRSS` (now) or `VmHWM` (peak).
    pub fn memory_kib(&self, field: &str) -> Result<u64> {
        let pid = self.pid().context("the agent is not running")?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let prefix = format!("{field}:");
        status
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The agent's log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    #[must_use]
    pub fn log_lines(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits for `subnet.env` and returns the leased subnet, `10.244.N.0/24`
    /// (from `FLANNEL_SUBNET`, the gateway `10.244.N.1/24`).
    pub fn wait_subnet(&self, limit: Duration) -> Result<String> {
        let text = wait_for("subnet.env", limit, || {
            fs::read_to_string(&self.subnet_file).ok()
        })
        .with_context(|| format!("agent log:\n{}", self.log_text()))?;
        subnet_of(&text).with_context(|| format!("no FLANNEL_SUBNET in {text:?}"))
    }

    /// The conflist the agent wrote, with host-local's state moved to
    /// `ipam_dir` (several simulated nodes share this host's /var/lib/cni).
    /// Waits a little for it: the agent writes it just after `subnet.env`.
    pub fn conflist(&self, ipam_dir: &Path) -> Result<serde_json::Value> {
        let text = wait_for("the agent's conflist", Duration::from_secs(10), || {
            fs::read_to_string(&self.conflist).ok()
        })
        .with_context(|| format!("reading {}", self.conflist.display()))?;
        let mut conflist: serde_json::Value = serde_json::from_str(&text)?;
        conflist["plugins"][0]["ipam"]["dataDir"] = serde_json::json!(ipam_dir);
        Ok(conflist)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Standard base64, for etcd's JSON gateway.
#[must_use]
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (i, byte)| {
            bits | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `10.244.7.0/24` from a subnet.env saying `FLANNEL_SUBNET=10.244.7.1/24`.
#[must_use]
pub fn subnet_of(subnet_env: &str) -> Option<String> {
    let value = subnet_env
        .lines()
        .find_map(|line| line.strip_prefix("FLANNEL_SUBNET="))?;
    let (gateway, len) = value.split_once('/')?;
    let gateway: Ipv4Addr = gateway.parse().ok()?;
    Some(format!("{}/{len}", Ipv4Addr::from(u32::from(gateway) - 1)))
}

/// The etcd key of a subnet: `<prefix>/subnets/10.244.7.0-24`.
#[must_use]
pub fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// The remote prefixes a node has programmed (`node list --json`), sorted,
/// as (cidr, node ip, vtep mac).
pub fn remote_nodes(node: &Node) -> Result<Vec<(String, String, String)>> {
    let text = node.pod_net(&["node", "list", "--json"])?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    let mut nodes: Vec<(String, String, String)> = entries
        .iter()
        .map(|entry| {
            (
                entry["cidr"].as_str().unwrap_or_default().to_owned(),
                entry["node_ip"].as_str().unwrap_or_default().to_owned(),
                entry["vtep_mac"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// A lease's value in flannel's schema: VXLAN, VNI 1.
#[must_use]
pub fn lease_value(public_ip: &str, vtep_mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{vtep_mac}"}}}}"#
    )
}

/// Synthetic node `index` under `10.0.0.0/8`: (subnet 10.x.y.0/24, node
/// IP 172.16.x.y, VTEP MAC), from 10.1.0.0/24 up (10.0.N.0/24 is left to
/// the rig's own nodes). The node IP is programmed, never sent to.
#[must_use]
pub fn synthetic_peer(index: u32) -> (String, Ipv4Addr, String) {
    let [_, _, high, low] = (index + 256).to_be_bytes();
    (
        format!("10.{high}.{low}.0/24"),
        Ipv4Addr::new(172, 16, high, low),
        format!("0e:6e:ac:10:{high:02x}:{low:02x}"),
    )
}

/// The etcd lease of [`synthetic_peer`] `index`: (key, value).
#[must_use]
pub fn synthetic_lease(index: u32) -> (String, String) {
    let (subnet, ip, mac) = synthetic_peer(index);
    (lease_key(&subnet), lease_value(&ip.to_string(), &mac))
}

/// A pod made through `agent`'s own conflist by the CNI runtime.
pub struct ClusterPod {
    pub attachment: Attachment,
    pub ip: Ipv4Addr,
}

#[must_use]
pub fn pod_via_conflist(rig: &Rig, node: &Node, agent: &Agent, name: &str) -> ClusterPod {
    let ipam = rig
        .scratch_dir()
        .unwrap()
        .join(format!("ipam-n{}", node.index));
    let runtime = Runtime::new(
        node,
        agent.conflist(&ipam).unwrap(),
        cni::plugin_path().unwrap(),
    );
    let attachment = Attachment::in_sandbox(rig, name).unwrap();
    let result = runtime.add(&attachment).unwrap();
    ClusterPod {
        ip: result_ipv4(&result).unwrap(),
        attachment,
    }
}

/// `count` pings from `from` to `to`, 0.1 s apart.
pub fn ping(from: &ClusterPod, to: Ipv4Addr, count: u32) -> Result<String> {
    let count = count.to_string();
    from.attachment.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        &count,
        "-i",
        "0.1",
        "-W",
        "1",
        &to.to_string(),
    ])
}

/// A bounded ping flood (2 ms apart) from a pod made through CNI.
#[must_use]
pub fn flood(from: &ClusterPod, to: Ipv4Addr, count: u32) -> std::process::Child {
    let netns = from
        .attachment
        .netns
        .as_deref()
        .unwrap()
        .trim_start_matches("/run/netns/")
        .to_owned();
    std::process::Command::new("ip")
        .args([
            "netns", "exec", &netns, "ping", "-n", "-q", "-i", "0.002", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg(to.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// (sent, received) of a finished flood.
#[must_use]
pub fn flood_result(child: std::process::Child) -> (u64, u64) {
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ping_counts(&text).unwrap_or_else(|| panic!("no summary in {text}"))
}

/// (transmitted, received) from the summary line of ping's output.
#[must_use]
pub fn ping_counts(text: &str) -> Option<(u64, u64)> {
    let line = text
        .lines()
        .find(|line| line.contains("packets transmitted"))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// `nodes` nodes with no pods, and cni0 without the rig's address: the
/// bridge plugin gives it the leased subnet's gateway.
#[must_use]
pub fn rig(nodes: u8) -> Rig {
    try_rig(nodes).unwrap()
}

/// [`rig`], for callers that report errors rather than panic.
pub fn try_rig(nodes: u8) -> Result<Rig> {
    let rig = Rig::build(&RigSpec {
        nodes,
        pods_per_node: 0,
        ..RigSpec::default()
    })?;
    for node in rig.nodes() {
        node.ip(&["addr", "flush", "dev", "cni0"])?;
    }
    Ok(rig)
}

/// Where the agent of `node` keeps its files and log.
#[must_use]
pub fn agent_dir(rig: &Rig, node: &Node) -> PathBuf {
    rig.scratch_dir()
        .unwrap()
        .join(format!("agent-n{}", node.index))
}

/// Starts the agent of `node` against the rig's etcd (without TLS).
#[must_use]
pub fn start(rig: &Rig, node: &Node, extra: &[&str]) -> Agent {
    Agent::start(node, &agent_dir(rig, node), &Etcd::endpoint(), extra).unwrap()
}

/// Waits until `node`'s remote entries are exactly `wanted` (cidr to mode,
/// `vxlan` or `direct`).
pub fn wait_modes(node: &Node, wanted: &BTreeMap<String, String>) {
    let mut last = BTreeMap::new();
    let programmed = wait_for("the peers' modes in the maps", SOON, || {
        last = node.remote_modes().unwrap();
        (last == *wanted).then_some(())
    });
    assert!(
        programmed.is_ok(),
        "node {} has {last:?}, wanted {wanted:?}",
        node.index
    );
}

/// Waits until `node` has programmed exactly `wanted` (cidr, node ip, mac).
pub fn wait_programmed(node: &Node, wanted: &[(String, String, String)]) {
    let mut wanted = wanted.to_vec();
    wanted.sort();
    let mut last = Vec::new();
    let result = wait_for("the peers' leases in the maps", SOON, || {
        last = remote_nodes(node).unwrap();
        (last == wanted).then_some(())
    });
    assert!(
        result.is_ok(),
        "node {} has {last:?}, wanted {wanted:?}",
        node.index
    );
}

/// What a node's peers should program for it: (its subnet, its IP, its
/// derived VTEP MAC).
#[must_use]
pub fn entry(node: &Node, subnet: &str) -> (String, String, String) {
    (
        subnet.to_owned(),
        node.underlay_ip.to_string(),
        node.derived_vtep_mac(),
    )
}

/// The prefixes routed through `node`'s tunnel device, each with the node
/// it goes via.
#[must_use]
pub fn tunnel_prefixes(node: &Node) -> BTreeMap<String, String> {
    tunnel_routes(node)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let cidr = words.next()?;
            let via = words.skip_while(|word| *word != "via").nth(1)?;
            Some((cidr.to_owned(), via.to_owned()))
        })
        .collect()
}

/// The routes through the tunnel device in `node`, as `ip route` prints them.
#[must_use]
pub fn tunnel_routes(node: &Node) -> String {
    node.ip(&["route", "show", "dev", "pnvxlan1"])
        .unwrap_or_default()
}

/// `pod_net_cluster_<name>` from the agent's `/metrics` on `node` (the
/// default address, inside the node's namespace).
#[must_use]
pub fn cluster_metric(node: &Node, name: &str) -> Option<String> {
    let probe = sibling_binary("pod-net-probe");
    let body = node
        .exec(&[probe.to_str()?, "get", "127.0.0.1:9565", "/metrics"])
        .ok()?;
    let prefix = format!("pod_net_cluster_{name} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// `pod-net status` on `node`, reading what `agent` published: its output
/// and whether it said healthy (exit 0).
#[must_use]
pub fn store_status_of(node: &Node, agent: &Agent) -> (String, bool) {
    let file = agent.subnet_file.with_file_name("cluster-status.json");
    let output = output_of(&mut node.pod_net_command(&[
        "status",
        "--cluster-status",
        file.to_str().unwrap(),
    ]))
    .unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        output.status.success(),
    )
}

/// `pod-net status` on `node`, reading what `agent` published.
#[must_use]
pub fn store_status(node: &Node, agent: &Agent) -> String {
    store_status_of(node, agent).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn synthetic_leases_are_distinct_and_in_the_network() {
        let (key, value) = synthetic_lease(0);
        assert_eq!(key, "/coreos.com/network/subnets/10.1.0.0-24");
        assert!(value.contains(r#""PublicIP":"172.16.1.0""#));
        let (key, _) = synthetic_lease(10_199);
        assert_eq!(key, "/coreos.com/network/subnets/10.40.215.0-24");
    }

    #[test]
    fn subnets_come_from_the_gateway() {
        assert_eq!(
            subnet_of("FLANNEL_SUBNET=10.244.7.1/24\n").as_deref(),
            Some("10.244.7.0/24")
        );
        assert_eq!(
            lease_key("10.244.7.0/24"),
            "/coreos.com/network/subnets/10.244.7.0-24"
        );
    }
}
