//! A real Kubernetes control plane in a rig: etcd, kube-apiserver and
//! kube-controller-manager (node IPAM), the Go-built binaries of
//! [`crate::peers`].
//!
//! Everything runs in the switch namespace of a rig of 3+ nodes. The
//! apiserver serves on `https://192.168.100.254:6443` (an address on the
//! switch's bridge, which every node reaches over its underlay `eth0`);
//! its etcd is a separate one on the switch's loopback (`127.0.0.1:2479`),
//! so a flannel-schema [`crate::cluster::Etcd`] on `192.168.100.254:2379`
//! can run beside it. The certificates are made with `openssl` for each
//! control plane (EC P-256): a CA, the apiserver's serving certificate, an
//! admin client (`system:masters`), the controller-manager's client, and
//! per-identity clients on demand. Kubeconfigs embed their certificates,
//! so they work from any namespace. Stopped in reverse start order on drop
//! (controller-manager, apiserver, etcd): an apiserver whose etcd is gone
//! first takes minutes to shut down.
use std::{
    ffi::OsString,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cluster::base64,
    cmd::{describe, os_args, output_of, output_with_input, run_command},
    daemon::{self, Daemon},
    peers,
    rig::{Node, Rig},
    wait::wait_for,
};

/// The apiserver's address, on the rig's switch.
pub const APISERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
/// The apiserver's secure port.
pub const APISERVER_PORT: u16 = 6443;
/// The cluster CIDR the controller-manager carves node pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The size of each node's pod CIDR.
pub const NODE_CIDR_MASK: u8 = 24;
/// The service range (the apiserver needs one; nothing routes it here).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The control plane's etcd, on the switch's loopback.
const ETCD_CLIENT_URL: &str = "http://127.0.0.1:2479";
const ETCD_PEER_URL: &str = "http://127.0.0.1:2480";
/// Bound for the apiserver to get ready (2.5-3 s on an idle machine).
pub const READY_LIMIT: Duration = Duration::from_secs(90);
/// Bound for things the controllers do "within seconds".
pub const SOON: Duration = Duration::from_secs(30);

/// Controllers the controller-manager runs by default: node IPAM (pod
/// CIDRs) and the one that gives each namespace its `default`
/// `ServiceAccount`.
pub const DEFAULT_CONTROLLERS: &[&str] = &["node-ipam-controller", "serviceaccount-controller"];

/// The controllers real kubelets need on top: the `DaemonSet` controller
/// (it makes a `DaemonSet`'s pods), and the one that publishes the
/// `kube-root-ca.crt` `ConfigMap` in every namespace (every pod's
/// service-account volume holds its `ca.crt`, the in-cluster config's CA).
pub const KUBELET_CONTROLLERS: &[&str] = &[
    "daemonset-controller",
    "root-ca-certificate-publisher-controller",
];

/// A control plane's knobs.
#[derive(Clone, Debug)]
pub struct Options {
    /// kube-controller-manager's `--controllers`.
    pub controllers: Vec<String>,
    /// Extra kube-apiserver flags.
    pub apiserver_args: Vec<String>,
    /// Ready for real kubelets: see [`Options::for_kubelets`].
    pub kubelets: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            controllers: DEFAULT_CONTROLLERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            apiserver_args: Vec::new(),
            kubelets: false,
        }
    }
}

impl Options {
    /// A control plane for real kubelets: a kube-scheduler (a `DaemonSet`'s
    /// pods are scheduled like any other), [`KUBELET_CONTROLLERS`] with the
    /// CA they publish (`--root-ca-file`), the apiserver's endpoint in the
    /// `kubernetes` Service (the `lease` reconciler instead of `none`: the
    /// Service's `ClusterIP`, 10.96.0.1, is what pods' in-cluster config
    /// dials, and kube-proxy sends it there), and a client certificate the
    /// apiserver shows the kubelets (`system:masters`).
    #[must_use]
    pub fn for_kubelets() -> Self {
        let mut options = Self::default();
        options
            .controllers
            .extend(KUBELET_CONTROLLERS.iter().map(|name| (*name).to_owned()));
        options.kubelets = true;
        options
    }
}

/// etcd + kube-apiserver + kube-controller-manager in a rig's switch
/// namespace.
pub struct ControlPlane {
    switch: String,
    /// Certificates, kubeconfigs and logs (in the rig's scratch dir).
    dir: PathBuf,
    etcd_data: PathBuf,
    kubectl: PathBuf,
    // Dropped in this order (Drop stops them in this order, explicitly).
    scheduler: Option<Daemon>,
    controller_manager: Daemon,
    apiserver: Daemon,
    etcd: Daemon,
}

impl ControlPlane {
    /// Starts the control plane with [`Options::default`] and waits until
    /// the apiserver is ready.
    pub fn start(rig: &Rig) -> Result<Self> {
        Self::start_with(rig, &Options::default())
    }

    /// Starts the control plane with `options`.
    pub fn start_with(rig: &Rig, options: &Options) -> Result<Self> {
        daemon::clear_stale()?;
        let switch = rig
            .switch()
            .context("a control plane needs a rig of 3+ nodes (one with a switch)")?
            .to_owned();
        let kubectl = peers::require("kubectl")?;
        let apiserver_bin = peers::require("kube-apiserver")?;
        let kcm_bin = peers::require("kube-controller-manager")?;
        let scheduler_bin = if options.kubelets {
            Some(peers::require("kube-scheduler")?)
        } else {
            None
        };
        switch_address(&switch)?;
        let dir = rig.scratch_dir()?.join("kube");
        let pki = dir.join("pki");
        Pki::create(&pki)?;
        if options.kubelets {
            Pki::client(
                &pki,
                KUBELET_CLIENT,
                "/O=system:masters/CN=kube-apiserver-kubelet-client",
            )?;
        }
        let etcd_data = daemon::state_dir(rig.id())?.join("kube-etcd");
        let _ = fs::remove_dir_all(&etcd_data);

        let etcd = Daemon::new(
            rig.id(),
            &switch,
            "kube-etcd",
            Path::new("etcd"),
            etcd_args(&etcd_data),
            &dir.join("etcd.log"),
        )?;
        let apiserver = Daemon::new(
            rig.id(),
            &switch,
            "kube-apiserver",
            &apiserver_bin,
            apiserver_args(&pki, options),
            &dir.join("kube-apiserver.log"),
        )?;
        let controller_manager = Daemon::new(
            rig.id(),
            &switch,
            "kube-controller-manager",
            &kcm_bin,
            controller_manager_args(&dir.join("controller-manager.kubeconfig"), &pki, options),
            &dir.join("kube-controller-manager.log"),
        )?;
        let scheduler = scheduler_bin
            .map(|program| {
                Daemon::new(
                    rig.id(),
                    &switch,
                    "kube-scheduler",
                    &program,
                    scheduler_args(&dir.join("scheduler.kubeconfig")),
                    &dir.join("kube-scheduler.log"),
                )
            })
            .transpose()?;
        let mut plane = Self {
            switch,
            dir,
            etcd_data,
            kubectl,
            scheduler,
            controller_manager,
            apiserver,
            etcd,
        };
        plane.cert_kubeconfig("admin", "admin", &["system:masters"])?;
        plane.cert_kubeconfig("controller-manager", "system:kube-controller-manager", &[])?;
        if plane.scheduler.is_some() {
            plane.cert_kubeconfig("scheduler", "system:kube-scheduler", &[])?;
        }

        plane.etcd.start()?;
        plane.wait_etcd()?;
        plane.start_apiserver()?;
        plane.controller_manager.start()?;
        if let Some(scheduler) = &mut plane.scheduler {
            scheduler.start()?;
        }
        Ok(plane)
    }

    /// `https://192.168.100.254:6443`.
    #[must_use]
    pub fn server_url() -> String {
        format!("https://{APISERVER_IP}:{APISERVER_PORT}")
    }

    /// The admin's kubeconfig (client certificate in `system:masters`).
    #[must_use]
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The CA that signed the apiserver's and every client's certificate.
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The admin's client certificate and key (PEM files), for clients
    /// other than kubectl (curl).
    #[must_use]
    pub fn admin_cert(&self) -> (PathBuf, PathBuf) {
        let pki = self.dir.join("pki");
        (pki.join("admin.crt"), pki.join("admin.key"))
    }

    /// Where certificates, kubeconfigs and logs are.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for a client certificate of user `user` in `groups`,
    /// written as `<dir>/<name>.kubeconfig`.
    pub fn cert_kubeconfig(&self, name: &str, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let pki = self.dir.join("pki");
        let subject: String = groups
            .iter()
            .map(|group| format!("/O={group}"))
            .chain(std::iter::once(format!("/CN={user}")))
            .collect();
        Pki::client(&pki, name, &subject)?;
        let cert = fs::read(pki.join(format!("{name}.crt")))?;
        let key = fs::read(pki.join(format!("{name}.key")))?;
        let user_entry = format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            base64(&cert),
            base64(&key)
        );
        self.write_kubeconfig(name, &user_entry)
    }

    /// The kubeconfig of node `node_name` (user `system:node:<name>` in
    /// `system:nodes`, what a kubelet has): the Node authorizer and the
    /// `NodeRestriction` admission plugin let it change its own Node only.
    pub fn node_kubeconfig(&self, node_name: &str) -> Result<PathBuf> {
        self.cert_kubeconfig(
            &format!("node-{node_name}"),
            &format!("system:node:{node_name}"),
            &["system:nodes"],
        )
    }

    /// A kubeconfig with a bearer `token`, written as `<dir>/<name>.kubeconfig`.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        self.write_kubeconfig(name, &format!("    token: {token}\n"))
    }

    fn write_kubeconfig(&self, name: &str, user_entry: &str) -> Result<PathBuf> {
        let ca = fs::read(self.ca_file())?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: rig\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n{user_entry}contexts:\n\
             - name: rig\n  context:\n    cluster: rig\n    user: {name}\ncurrent-context: rig\n",
            Self::server_url(),
            base64(&ca),
        );
        let path = self.dir.join(format!("{name}.kubeconfig"));
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates namespace `namespace` (if missing) and `ServiceAccount` `name`
    /// in it, applies `rbac_yaml` (the roles and bindings that give it its
    /// rights; any YAML `kubectl apply` takes), and returns a kubeconfig
    /// with a one-hour token of that `ServiceAccount`.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        rbac_yaml: &str,
    ) -> Result<PathBuf> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        ))?;
        if !rbac_yaml.trim().is_empty() {
            self.apply(rbac_yaml)?;
        }
        let token = self.kubectl(&[
            "create",
            "token",
            name,
            "--namespace",
            namespace,
            "--duration=1h",
        ])?;
        self.token_kubeconfig(&format!("sa-{namespace}-{name}"), token.trim())
    }

    /// `kubectl args..` as the admin, in the switch namespace; its stdout,
    /// or an error with its stderr unless it exits 0.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.kubectl_command(&self.admin_kubeconfig(), args))
    }

    /// `kubectl args..` with `kubeconfig`, in the switch namespace, however
    /// it ends: for tests of refusals.
    pub fn kubectl_output(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        output_of(&mut self.kubectl_command(kubeconfig, args))
    }

    /// `kubectl args..` with `kubeconfig` from inside rig node `node` (over
    /// its underlay), however it ends.
    pub fn kubectl_in(&self, node: &Node, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg("--")
            .arg(&self.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(["--request-timeout=10s"])
            .args(args);
        output_of(&mut command)
    }

    /// The kubectl command, with `kubeconfig`, in the switch namespace.
    /// Its discovery cache is this control plane's own (every rig's
    /// apiserver is 192.168.100.254:6443, so a shared one in ~/.kube would
    /// mix them).
    #[must_use]
    pub fn kubectl_command(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.switch))
            .arg("--")
            .arg(&self.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(["--request-timeout=10s"])
            .args(args);
        command
    }

    /// `kubectl apply -f -` of `yaml` as the admin; kubectl's output.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    /// `kubectl args..` as the admin with `input` on its stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let mut command = self.kubectl_command(&self.admin_kubeconfig(), args);
        let output = output_with_input(&mut command, input.as_bytes())?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                describe(&command),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates Node `name` as a kubelet registers it (minus status): its
    /// hostname and OS labels, the annotation every kubelet sets
    /// (`volumes.kubernetes.io/controller-managed-attach-detach: "true"`;
    /// flanneld v0.28.10 panics on a Node without any annotation), plus
    /// `annotations`.
    pub fn register_node(&self, name: &str, annotations: &[(&str, &str)]) -> Result<()> {
        let annotations: serde_json::Map<String, serde_json::Value> = std::iter::once(&(
            "volumes.kubernetes.io/controller-managed-attach-detach",
            "true",
        ))
        .chain(annotations)
        .map(|(key, value)| ((*key).to_owned(), serde_json::json!(value)))
        .collect();
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                "annotations": annotations,
            },
        });
        self.kubectl_stdin(&["create", "-f", "-"], &node.to_string())
            .map(drop)
    }

    /// Node `name`'s `spec.podCIDR`, if it has one yet.
    pub fn pod_cidr(&self, name: &str) -> Result<Option<String>> {
        let text = self.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"])?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }

    /// Waits (up to [`READY_LIMIT`]) until the controller-manager has given
    /// Node `name` a pod CIDR, and returns it. Not [`SOON`]: after the API
    /// server has been away, the controller-manager's node informer comes
    /// back on client-go's reflector backoff (up to 30 s, jittered up to
    /// twice that), and only then sees a new Node.
    pub fn wait_pod_cidr(&self, name: &str) -> Result<String> {
        let mut last = String::new();
        wait_for(
            &format!("a podCIDR on node {name}"),
            READY_LIMIT,
            || match self.pod_cidr(name) {
                Ok(cidr) => cidr,
                Err(err) => {
                    last = format!("{err:#}");
                    None
                }
            },
        )
        .with_context(|| {
            format!(
                "last error: {last}\nkube-controller-manager's log:\n{}",
                self.controller_manager.log_tail(30)
            )
        })
    }

    /// Node `name` as JSON.
    pub fn node(&self, name: &str) -> Result<serde_json::Value> {
        let text = self.kubectl(&["get", "node", name, "-o", "json"])?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))
    }

    /// Whether `/readyz` answers ok.
    #[must_use]
    pub fn apiserver_ready(&self) -> bool {
        self.kubectl(&["get", "--raw", "/readyz"])
            .is_ok_and(|text| text.trim() == "ok")
    }

    /// Starts the apiserver (after [`Self::kill_apiserver`] or
    /// [`Self::stop_apiserver`]) and waits until it is ready; returns how
    /// long that took.
    pub fn start_apiserver(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.apiserver.start()?;
        let result = wait_for("kube-apiserver /readyz", READY_LIMIT, || {
            if !self.apiserver.running() {
                return Some(false);
            }
            self.apiserver_ready().then_some(true)
        });
        match result {
            Ok(true) => Ok(started.elapsed()),
            Ok(false) => bail!(
                "kube-apiserver exited; its log:\n{}",
                self.apiserver.log_tail(40)
            ),
            Err(err) => Err(err)
                .with_context(|| format!("kube-apiserver's log:\n{}", self.apiserver.log_tail(40))),
        }
    }

    /// SIGKILLs the apiserver: the API is away until
    /// [`Self::start_apiserver`].
    pub fn kill_apiserver(&mut self) {
        self.apiserver.kill();
    }

    /// Stops the apiserver gracefully (SIGTERM); how long it took.
    pub fn stop_apiserver(&mut self) -> Option<Duration> {
        self.apiserver.stop()
    }

    /// Kills the apiserver and starts it again; how long until ready.
    pub fn restart_apiserver(&mut self) -> Result<Duration> {
        self.kill_apiserver();
        self.start_apiserver()
    }

    /// The apiserver's PID while it runs.
    #[must_use]
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.pid()
    }

    /// The daemons' logs so far: (name, text).
    #[must_use]
    pub fn logs(&self) -> Vec<(String, String)> {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .chain(self.scheduler.as_ref())
            .map(|daemon| (daemon.name().to_owned(), daemon.log_text()))
            .collect()
    }

    /// The scheduler's log so far (empty without one).
    #[must_use]
    pub fn scheduler_log(&self) -> String {
        self.scheduler
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// The apiserver's log so far.
    #[must_use]
    pub fn apiserver_log(&self) -> String {
        self.apiserver.log_text()
    }

    /// The controller-manager's log so far.
    #[must_use]
    pub fn controller_manager_log(&self) -> String {
        self.controller_manager.log_text()
    }

    /// Stops everything in reverse start order; how long each took to go.
    pub fn stop(&mut self) -> Vec<(String, Duration)> {
        let mut taken = Vec::new();
        for daemon in self.scheduler.iter_mut().chain([
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ]) {
            if let Some(time) = daemon.stop() {
                taken.push((daemon.name().to_owned(), time));
            }
        }
        let _ = fs::remove_dir_all(&self.etcd_data);
        taken
    }

    fn wait_etcd(&mut self) -> Result<()> {
        let switch = self.switch.clone();
        wait_for("the control plane's etcd", Duration::from_secs(30), || {
            if !self.etcd.running() {
                return Some(false);
            }
            run_command(
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{switch}"))
                    .args(["--", "etcdctl", "--dial-timeout=2s", "--command-timeout=3s"])
                    .arg(format!("--endpoints={ETCD_CLIENT_URL}"))
                    .args(["endpoint", "health"])
                    .env("ETCDCTL_API", "3"),
            )
            .is_ok()
            .then_some(true)
        })
        .and_then(|up| if up { Ok(()) } else { bail!("etcd exited") })
        .with_context(|| format!("etcd's log:\n{}", self.etcd.log_tail(30)))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Puts [`APISERVER_IP`] on the switch's bridge (as the flannel-schema
/// etcd helper does; whichever comes first adds it) and brings lo up.
fn switch_address(switch: &str) -> Result<()> {
    let address = format!("{APISERVER_IP}/24");
    run_command(Command::new("ip").args(["-n", switch, "link", "set", "lo", "up"]))?;
    let present = run_command(Command::new("ip").args(["-n", switch, "addr", "show", "br0"]))?;
    if !present.contains(&address) {
        run_command(
            Command::new("ip").args(["-n", switch, "addr", "add", &address, "dev", "br0"]),
        )?;
    }
    Ok(())
}

fn etcd_args(data: &Path) -> Vec<OsString> {
    os_args(&[
        "--name".into(),
        "kube".into(),
        "--data-dir".into(),
        data.display().to_string(),
        format!("--listen-client-urls={ETCD_CLIENT_URL}"),
        format!("--advertise-client-urls={ETCD_CLIENT_URL}"),
        format!("--listen-peer-urls={ETCD_PEER_URL}"),
        format!("--initial-advertise-peer-urls={ETCD_PEER_URL}"),
        format!("--initial-cluster=kube={ETCD_PEER_URL}"),
    ])
}

/// The apiserver's client certificate for the kubelets (`<name>.crt`).
const KUBELET_CLIENT: &str = "kubelet-client";

fn apiserver_args(pki: &Path, options: &Options) -> Vec<OsString> {
    let file = |name: &str| pki.join(name).display().to_string();
    let reconciler = if options.kubelets {
        // The kubernetes Service's endpoint, for kube-proxy.
        "lease"
    } else {
        // No kubernetes Service endpoints to keep: nothing routes services.
        "none"
    };
    let mut args = vec![
        format!("--etcd-servers={ETCD_CLIENT_URL}"),
        format!("--bind-address={APISERVER_IP}"),
        format!("--advertise-address={APISERVER_IP}"),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--endpoint-reconciler-type={reconciler}"),
        format!("--tls-cert-file={}", file("apiserver.crt")),
        format!("--tls-private-key-file={}", file("apiserver.key")),
        format!("--client-ca-file={}", file("ca.crt")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", file("sa.pub")),
        format!("--service-account-signing-key-file={}", file("sa.key")),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        // pod-net's DaemonSet is privileged.
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ];
    if options.kubelets {
        args.extend([
            format!(
                "--kubelet-client-certificate={}",
                file(&format!("{KUBELET_CLIENT}.crt"))
            ),
            format!(
                "--kubelet-client-key={}",
                file(&format!("{KUBELET_CLIENT}.key"))
            ),
            // The node's underlay address, which the kubelet reports.
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]);
    }
    args.extend(options.apiserver_args.iter().cloned());
    os_args(&args)
}

fn scheduler_args(kubeconfig: &Path) -> Vec<OsString> {
    os_args(&[
        format!("--kubeconfig={}", kubeconfig.display()),
        "--secure-port=0".into(),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ])
}

fn controller_manager_args(kubeconfig: &Path, pki: &Path, options: &Options) -> Vec<OsString> {
    let mut args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        // Each controller acts as its own ServiceAccount (the node IPAM
        // controller may patch nodes; the controller-manager's own
        // identity may not).
        "--use-service-account-credentials=true".into(),
        "--secure-port=0".into(),
        "--leader-elect=false".into(),
        format!("--controllers={}", options.controllers.join(",")),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        format!("--node-cidr-mask-size={NODE_CIDR_MASK}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
    ];
    if options.kubelets {
        // What the root CA publisher puts in every namespace's
        // kube-root-ca.crt.
        args.push(format!("--root-ca-file={}", pki.join("ca.crt").display()));
    }
    os_args(&args)
}

/// The control plane's certificates, made with openssl.
struct Pki;

impl Pki {
    const KEY: [&'static str; 5] = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];

    fn create(dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        openssl(
            dir,
            &[
                &["req", "-x509"],
                &Self::KEY[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=pod-net test kube CA",
                ],
            ]
            .concat(),
        )?;
        let san = format!(
            "subjectAltName=IP:{APISERVER_IP},IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,\
             DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost\n\
             extendedKeyUsage=serverAuth"
        );
        Self::sign(dir, "apiserver", "/CN=kube-apiserver", &san)?;
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "sa.key",
            ],
        )?;
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
    }

    /// A client certificate `<name>.crt`/`.key` for `subject`.
    fn client(dir: &Path, name: &str, subject: &str) -> Result<()> {
        Self::sign(dir, name, subject, "extendedKeyUsage=clientAuth")
    }

    fn sign(dir: &Path, name: &str, subject: &str, extensions: &str) -> Result<()> {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        fs::write(dir.join(&ext), extensions)?;
        openssl(
            dir,
            &[
                &["req"],
                &Self::KEY[..],
                &["-keyout", &key, "-out", &csr, "-subj", subject],
            ]
            .concat(),
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
        let _ = fs::remove_file(dir.join(csr));
        let _ = fs::remove_file(dir.join(ext));
        Ok(())
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run_command(Command::new("openssl").args(args).current_dir(dir)).map(drop)
}
