//! Real kubelets on a rig's nodes: each node runs Debian's containerd 1.6
//! (its CRI plugin), and the kubelet and kube-proxy of [`crate::peers`]
//! (v1.37.2), in the node's network namespace and in a mount namespace of
//! its own, so that several nodes share one machine without sharing the
//! fixed paths a node's agents take as theirs.
//!
//! The mount namespace is held by a `sleep` ([`KubeletNode`]'s holder)
//! that set it up:
//!
//! | path | in the node's namespace |
//! |---|---|
//! | `/run`, `/var/lib`, `/var/log`, `/opt` | fresh tmpfs: containerd's state (shim sockets under `/run/containerd/s`, sandbox netns files) and root, the kubelet's root dir, `/var/lib/cni` (host-local's leases), pod logs and `/var/log/containers` |
//! | `/etc/cni/net.d` | `<dir>/cni-net.d`: where the agent writes its conflist |
//! | `/opt/cni/bin` | `<dir>/cni-bin`: the reference plugins linked from `/usr/lib/cni`, and `pod-net-cni` once the `DaemonSet`'s init container copies it in |
//! | `/run/pod-net` | `<dir>/run-pod-net`: the agent's `subnet.env` and `cluster-status.json` |
//! | `/sys/fs/bpf` | `/sys/fs/bpf/<rig id>-n<N>-bpffs`, a shared mount (the `DaemonSet` mounts it `Bidirectional`); the agent's pins are in `pod-net/` there |
//! | six `/proc/sys` files | files holding the values the kubelet insists on (`vm.overcommit_memory` 1, `kernel.panic` 10, `kernel.panic_on_oops` 1, …), which it would otherwise write machine-wide |
//!
//! `<dir>` is `/dev/shm/pod-net-tests/<rig id>/kubelet-n<N>`. Each
//! kubelet's `cgroupRoot` is `/<rig id>-n<N>` in every cgroup hierarchy, so
//! the nodes' pods never meet in one cgroup; the host's cgroups v1
//! (hybrid) need `failCgroupV1: false`. containerd runs with
//! `restrict_oom_score_adj` (root here lacks `CAP_SYS_RESOURCE`, so runc
//! could not lower a container's OOM score below containerd's), and the
//! kubelet and kube-proxy with `oomScoreAdj: 0` for the same reason.
//!
//! Eviction and image garbage collection are off: this machine's disk is
//! shared with builds, and a kubelet that judged it short would evict the
//! test's pods or delete the images it cannot pull back (there is no
//! registry: [`test_images`] are imported with `ctr`).
//!
//! Teardown ([`Drop`], and [`clear_stale`] for a test process that died)
//! stops the kubelet and kube-proxy, kills every process in the node's
//! cgroups (the pods), the containerd shims (found by the node's directory
//! in their command line), containerd and the holder, and removes the
//! cgroups. The node's network namespace and bpffs directory go with the
//! rig.
use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::json;

use crate::{
    cmd::{os_args, output_of, run_command},
    daemon::{self, Daemon},
    kube::{APISERVER_IP, CLUSTER_CIDR, ControlPlane, SERVICE_CIDR},
    kube_cluster::node_name,
    oci, peers,
    rig::{Node, Rig},
    runtimes::{self, processes_mentioning},
    wait::{wait_for, wait_until},
};

/// The sandbox (pause) image the nodes' containerd runs every pod in.
pub const PAUSE_IMAGE: &str = "pod-net.test/pause:1";
/// A busybox image for test pods: `sh`, `sleep`, `ping`, `ip`, `nc`, …
pub const BUSYBOX_IMAGE: &str = "pod-net.test/busybox:1";
/// Where Debian's `containernetworking-plugins` installs the plugins.
const CNI_PLUGINS: &str = "/usr/lib/cni";
/// The reference plugins each node's `/opt/cni/bin` links: the agent's
/// conflist chains `bridge` and `host-local`; containerd brings up each
/// sandbox's `lo` with `loopback`.
const LINKED_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];
/// The kernel tunables the kubelet checks at start, with the values it
/// sets when they differ (`pkg/kubelet/cm`'s `setupKernelTunables`): files
/// holding these are bound over them in the node's mount namespace.
const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];
/// Bound for a node's containerd to answer, and for its holder to set up.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Applets of the busybox images.
const APPLETS: &[&str] = &[
    "cat", "hostname", "ip", "ls", "nc", "ping", "sh", "sleep", "wget",
];

/// Writes the pause and busybox images (OCI archives of Debian's static
/// busybox) into `dir`: (pause, busybox).
pub fn test_images(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let busybox = oci::read_static(Path::new("/bin/busybox"))
        .context("the test images hold Debian's busybox-static: run `cargo xtask setup`")?;
    let architecture = oci::host_architecture()?;
    let image = |reference: &str, cmd: &[&str]| {
        let mut entries = vec![
            oci::Entry::dir("bin/", 0o755),
            oci::Entry::file("bin/busybox", 0o755, busybox.clone()),
            oci::Entry::dir("tmp/", 0o1777),
        ];
        entries.extend(
            APPLETS
                .iter()
                .map(|applet| oci::Entry::symlink(&format!("bin/{applet}"), "busybox")),
        );
        oci::Image {
            reference: reference.to_owned(),
            architecture,
            entries,
            env: vec!["PATH=/bin".to_owned()],
            cmd: cmd.iter().map(|part| (*part).to_owned()).collect(),
            labels: json!({}),
            created_by: "pod-net-tests kubelet::test_images".to_owned(),
        }
    };
    let pause = image(PAUSE_IMAGE, &["/bin/sleep", "2147483647"]);
    let shell = image(BUSYBOX_IMAGE, &["/bin/sh"]);
    let pause_path = dir.join("pause.oci.tar");
    let busybox_path = dir.join("busybox.oci.tar");
    oci::write(&pause, &pause_path)?;
    oci::write(&shell, &busybox_path)?;
    Ok((pause_path, busybox_path))
}

/// One rig node running containerd, the kubelet and kube-proxy.
pub struct KubeletNode {
    /// The Node's name (`node-N`).
    pub name: String,
    /// The rig node's namespace.
    pub netns: String,
    /// 192.168.100.N, the kubelet's `--node-ip`.
    pub node_ip: Ipv4Addr,
    /// The node's files (configs, sockets, the bound directories).
    pub dir: PathBuf,
    /// The host's path of the node's `/sys/fs/bpf`.
    pub bpffs: PathBuf,
    /// The kubelet's `cgroupRoot` (`/<rig id>-n<N>`).
    pub cgroup_root: String,
    /// Where the daemons' logs are.
    pub log_dir: PathBuf,
    index: u8,
    // Stopped in this order by Drop.
    kube_proxy: Daemon,
    kubelet: Daemon,
    containerd: Daemon,
    holder: Daemon,
}

impl KubeletNode {
    /// Sets up rig node `node` (its mount namespace, cgroups and files),
    /// starts containerd and imports `images` (OCI archives) into its
    /// `k8s.io` namespace, then starts the kubelet (which registers Node
    /// `node-N`) and kube-proxy, with credentials from `plane`.
    pub fn start(rig: &Rig, node: &Node, plane: &ControlPlane, images: &[&Path]) -> Result<Self> {
        let kubelet_bin = peers::require("kubelet")?;
        let kube_proxy_bin = peers::require("kube-proxy")?;
        ensure!(
            Path::new("/etc/cni/net.d").is_dir(),
            "/etc/cni/net.d is missing: each node binds its own directory over it \
             (Debian's podman package, which `cargo xtask setup` installs, makes it)"
        );
        let name = node_name(node);
        let dir = daemon::state_dir(rig.id())?.join(format!("kubelet-n{}", node.index));
        let _ = fs::remove_dir_all(&dir);
        let log_dir = rig.scratch_dir()?.join(format!("kubelet-n{}", node.index));
        fs::create_dir_all(&log_dir)?;
        let bpffs = PathBuf::from("/sys/fs/bpf").join(format!("{}-bpffs", node.netns));
        fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        let cgroup_root = format!("/{}", node.netns);
        for sub in ["cni-net.d", "cni-bin", "run-pod-net", "sysctl"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        for plugin in LINKED_PLUGINS {
            std::os::unix::fs::symlink(
                Path::new(CNI_PLUGINS).join(plugin),
                dir.join("cni-bin").join(plugin),
            )?;
        }
        for (key, value) in KUBELET_SYSCTLS {
            fs::write(
                dir.join("sysctl").join(key.replace('/', ".")),
                format!("{value}\n"),
            )?;
        }
        fs::write(dir.join("resolv.conf"), "")?;
        create_cgroup(&cgroup_root)?;

        // Routes to the service range: a real node's default route covers
        // it. The first lookup of a connection to a ClusterIP happens before
        // kube-proxy's DNAT; only then does it go to the apiserver.
        node.ip(&[
            "route",
            "replace",
            SERVICE_CIDR,
            "via",
            &APISERVER_IP.to_string(),
            "dev",
            "eth0",
        ])?;

        let holder = Daemon::new(
            rig.id(),
            &node.netns,
            &format!("kubelet-n{}-mounts", node.index),
            Path::new("unshare"),
            os_args(&[
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &mount_script(&dir, &bpffs),
            ]),
            &log_dir.join("mounts.log"),
        )?;
        let mut holder = holder;
        holder.start()?;
        let holder_pid = wait_for("the node's mount namespace", START_LIMIT, || {
            if !holder.running() {
                return Some(None);
            }
            let pid = holder.pid()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "sleep").then_some(Some(pid))
        })?
        .with_context(|| format!("the mount setup failed:\n{}", holder.log_tail(20)))?;
        let mount_ns = PathBuf::from(format!("/proc/{holder_pid}/ns/mnt"));

        fs::write(dir.join("containerd.toml"), containerd_config(&dir))?;
        let mut containerd = Daemon::new(
            rig.id(),
            &node.netns,
            &format!("containerd-n{}", node.index),
            Path::new("containerd"),
            os_args(&["--config", &path_str(&dir.join("containerd.toml"))?]),
            &log_dir.join("containerd.log"),
        )?
        .in_mount_namespace(&mount_ns);
        containerd.start()?;
        let node_ip = node.underlay_ip;
        let kubelet_kubeconfig = plane.node_kubeconfig(&name)?;
        let proxy_kubeconfig = plane.cert_kubeconfig("kube-proxy", "system:kube-proxy", &[])?;
        fs::write(
            dir.join("kubelet.yaml"),
            kubelet_config(&dir, &cgroup_root, node_ip, &plane.ca_file()),
        )?;
        fs::write(
            dir.join("kube-proxy.yaml"),
            kube_proxy_config(&name, &proxy_kubeconfig),
        )?;
        let kubelet = Daemon::new(
            rig.id(),
            &node.netns,
            &format!("kubelet-n{}", node.index),
            &kubelet_bin,
            os_args(&[
                &format!("--config={}", path_str(&dir.join("kubelet.yaml"))?),
                &format!("--kubeconfig={}", path_str(&kubelet_kubeconfig)?),
                "--root-dir=/var/lib/kubelet",
                &format!("--hostname-override={name}"),
                &format!("--node-ip={node_ip}"),
            ]),
            &log_dir.join("kubelet.log"),
        )?
        .in_mount_namespace(&mount_ns);
        let kube_proxy = Daemon::new(
            rig.id(),
            &node.netns,
            &format!("kube-proxy-n{}", node.index),
            &kube_proxy_bin,
            os_args(&[&format!(
                "--config={}",
                path_str(&dir.join("kube-proxy.yaml"))?
            )]),
            &log_dir.join("kube-proxy.log"),
        )?
        .in_mount_namespace(&mount_ns);
        let mut kubelet_node = Self {
            name,
            netns: node.netns.clone(),
            node_ip,
            dir,
            bpffs,
            cgroup_root,
            log_dir,
            index: node.index,
            kube_proxy,
            kubelet,
            containerd,
            holder,
        };
        kubelet_node.wait_containerd()?;
        for image in images {
            kubelet_node.import(image)?;
        }
        kubelet_node.kubelet.start()?;
        kubelet_node.kube_proxy.start()?;
        Ok(kubelet_node)
    }

    fn wait_containerd(&mut self) -> Result<()> {
        let socket = self.dir.join("containerd.sock");
        let started = Instant::now();
        loop {
            if !self.containerd.running() {
                bail!("containerd exited:\n{}", self.containerd.log_tail(30));
            }
            if socket.exists() && output_of(&mut self.ctr(&["version"]))?.status.success() {
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "containerd did not answer in {START_LIMIT:?}:\n{}",
                    self.containerd.log_tail(30)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr` against this node's containerd, in the kubelet's namespace
    /// (`k8s.io`).
    #[must_use]
    pub fn ctr(&self, args: &[&str]) -> Command {
        runtimes::ctr(&self.dir, args)
    }

    /// `ctr images import` of an OCI archive; ctr's output.
    pub fn import(&self, archive: &Path) -> Result<String> {
        run_command(&mut self.ctr(&["images", "import", &path_str(archive)?]))
            .with_context(|| format!("containerd's log:\n{}", self.containerd.log_tail(20)))
    }

    /// The rig node's datapath as the agent of the `DaemonSet` pinned it:
    /// a [`Node`] of the same namespace whose pin dir is
    /// `<node's /sys/fs/bpf>/pod-net` (the agent's default, seen from the
    /// host), for its counters, entries and status.
    #[must_use]
    pub fn datapath(&self, node: &Node) -> Node {
        Node {
            index: node.index,
            netns: node.netns.clone(),
            pin_dir: self.bpffs.join("pod-net"),
            underlay_ip: node.underlay_ip,
            gateway_ip: node.gateway_ip,
            gateway_ip6: None,
            pods: Vec::new(),
        }
    }

    /// The rig node's index (1-based).
    #[must_use]
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The host's path of the node's `/run/pod-net`.
    #[must_use]
    pub fn run_pod_net(&self) -> PathBuf {
        self.dir.join("run-pod-net")
    }

    /// The host's path of the node's `/opt/cni/bin`.
    #[must_use]
    pub fn cni_bin(&self) -> PathBuf {
        self.dir.join("cni-bin")
    }

    /// The host's path of the node's `/etc/cni/net.d`.
    #[must_use]
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni-net.d")
    }

    /// The last `lines` lines of each daemon's log, for failure messages.
    #[must_use]
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for daemon in [&self.containerd, &self.kubelet, &self.kube_proxy] {
            let _ = write!(
                text,
                "--- {} ({}):\n{}\n",
                daemon.name(),
                daemon.log_path().display(),
                daemon.log_tail(lines)
            );
        }
        text
    }

    /// Whether containerd, the kubelet and kube-proxy all still run.
    pub fn running(&mut self) -> bool {
        self.containerd.running() && self.kubelet.running() && self.kube_proxy.running()
    }

    /// Stops the node: its agents, then its pods, shims, containerd and
    /// mount namespace; then its cgroups go.
    pub fn stop(&mut self) {
        self.kube_proxy.kill();
        self.kubelet.kill();
        kill_cgroup(&self.cgroup_root);
        kill_mentioning(&self.dir);
        self.containerd.kill();
        self.holder.kill();
        kill_mentioning(&self.dir);
        remove_cgroup(&self.cgroup_root);
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The holder's script: the mount namespace of the table above, then
/// `sleep` holding it.
fn mount_script(dir: &Path, bpffs: &Path) -> String {
    let dir = dir.display();
    let mut script = String::from("set -eu\n");
    for tmpfs in ["/run", "/var/lib", "/var/log", "/opt"] {
        let _ = writeln!(script, "mount -t tmpfs -o mode=0755 pod-net-node {tmpfs}");
    }
    let _ = writeln!(script, "mkdir -p /opt/cni/bin /run/pod-net");
    for (source, target) in [
        (format!("{dir}/cni-net.d"), "/etc/cni/net.d"),
        (format!("{dir}/cni-bin"), "/opt/cni/bin"),
        (format!("{dir}/run-pod-net"), "/run/pod-net"),
    ] {
        let _ = writeln!(script, "mount --bind {source} {target}");
    }
    // Shared in this namespace only (its copies of the host's mounts are
    // private): the host's bpffs beneath too, as containerd's check for a
    // Bidirectional volume looks at the first mount on /sys/fs/bpf.
    let _ = writeln!(
        script,
        "mount --make-shared /sys/fs/bpf\n\
         mount --bind {} /sys/fs/bpf\n\
         mount --make-shared /sys/fs/bpf",
        bpffs.display()
    );
    for (key, _) in KUBELET_SYSCTLS {
        let _ = writeln!(
            script,
            "mount --bind {dir}/sysctl/{} /proc/sys/{key}",
            key.replace('/', ".")
        );
    }
    script.push_str("exec sleep 2147483647\n");
    script
}

fn containerd_config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#
    )
}

fn kubelet_config(dir: &Path, cgroup_root: &str, node_ip: Ipv4Addr, ca: &Path) -> String {
    let dir = dir.display();
    let ca = ca.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{dir}/containerd.sock
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
staticPodPath: ""
resolvConf: {dir}/resolv.conf
podLogsDir: /var/log/pods
volumePluginDir: /var/lib/kubelet-plugins
oomScoreAdj: 0
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 20
"#
    )
}

fn kube_proxy_config(name: &str, kubeconfig: &Path) -> String {
    format!(
        r"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
mode: iptables
clusterCIDR: {CLUSTER_CIDR}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
",
        kubeconfig = kubeconfig.display()
    )
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup (every v1
/// controller's, `name=systemd`, and the unified one).
fn hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let kind = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (matches!(kind, "cgroup" | "cgroup2") && point.starts_with("/sys/fs/cgroup"))
                .then(|| PathBuf::from(point))
        })
        .collect()
}

/// Creates `path` (`/name`) in every hierarchy; in cpuset's, with the
/// parent's CPUs and memory nodes (a new cpuset has none, and its children
/// copy them).
fn create_cgroup(path: &str) -> Result<()> {
    let relative = path.trim_start_matches('/');
    for hierarchy in hierarchies() {
        let dir = hierarchy.join(relative);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(file);
            if parent.exists() && hierarchy.join("cgroup.clone_children").exists() {
                let value = fs::read_to_string(&parent)?;
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Every directory under `dir`, deepest first.
fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                found.extend(subtree(&entry.path()));
            }
        }
    }
    found.push(dir.to_path_buf());
    found
}

/// SIGKILLs every process in cgroup `path` and below, in every hierarchy,
/// until none is left (bounded).
fn kill_cgroup(path: &str) {
    let relative = path.trim_start_matches('/');
    let _ = wait_until("the node's cgroups to empty", START_LIMIT, || {
        let mut any = false;
        for hierarchy in hierarchies() {
            for dir in subtree(&hierarchy.join(relative)) {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok())
                {
                    any = true;
                    // SAFETY: kill(2) of a process in the node's own cgroup,
                    // which only its kubelet's pods join.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        !any
    });
}

/// Removes cgroup `path` and its children from every hierarchy.
fn remove_cgroup(path: &str) {
    let relative = path.trim_start_matches('/');
    for hierarchy in hierarchies() {
        let top = hierarchy.join(relative);
        if !top.exists() {
            continue;
        }
        let _ = wait_until("the node's cgroups to go", Duration::from_secs(10), || {
            for dir in subtree(&top) {
                let _ = fs::remove_dir(&dir);
            }
            !top.exists()
        });
    }
}

/// SIGKILLs the processes whose command line names `dir`: the containerd
/// shims (`-address <dir>/containerd.sock`) and anything else started with
/// the node's files.
fn kill_mentioning(dir: &Path) {
    let _ = wait_until("the processes of the node's directory", START_LIMIT, || {
        let pids = processes_mentioning(dir);
        for pid in &pids {
            if let Ok(pid) = i32::try_from(*pid) {
                // SAFETY: kill(2) of a process started with this node's
                // own directory in its command line.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        pids.is_empty()
    });
}

/// Clears what kubelet nodes of rigs whose test process is gone left: the
/// pods in their cgroups, the shims and daemons started with their
/// directories, and the cgroups. Then the daemons' own records
/// ([`daemon::clear_stale`]).
pub fn clear_stale() -> Result<()> {
    let mut cgroups = std::collections::BTreeSet::new();
    for hierarchy in hierarchies() {
        for entry in fs::read_dir(&hierarchy).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if rig_gone(&name) && entry.path().is_dir() {
                cgroups.insert(format!("/{name}"));
            }
        }
    }
    for cgroup in &cgroups {
        eprintln!("clearing a stale kubelet node's cgroup {cgroup}");
        kill_cgroup(cgroup);
    }
    kill_stale_mentions();
    for cgroup in &cgroups {
        remove_cgroup(cgroup);
    }
    daemon::clear_stale()
}

/// Whether `name` (`pnr-<pid>-…`) is of a rig whose process is gone.
fn rig_gone(name: &str) -> bool {
    name.strip_prefix("pnr-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// SIGKILLs the processes whose command line names a directory of a gone
/// rig under [`daemon::state_root`]: its nodes' containerd shims (which
/// outlive containerd), containerd, kubelets and kube-proxies. Found by
/// command line, not by listing the state root: another test binary's
/// clearer may have removed the rig's directory already.
fn kill_stale_mentions() {
    let root = daemon::state_root();
    let prefix = format!("{}/", root.display());
    let stale = || -> Vec<i32> {
        processes_mentioning(&root)
            .into_iter()
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    String::from_utf8_lossy(&cmdline)
                        .split(prefix.as_str())
                        .skip(1)
                        .any(|rest| rest.split(['/', '\0']).next().is_some_and(rig_gone))
                })
            })
            .filter_map(|pid| i32::try_from(pid).ok())
            .collect()
    };
    let _ = wait_until("the processes of gone rigs' nodes", START_LIMIT, || {
        let pids = stale();
        for pid in &pids {
            eprintln!("killing a stale kubelet node's process {pid}");
            // SAFETY: kill(2) of a process started with the directory of a
            // rig whose test process is gone.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        pids.is_empty()
    });
}
