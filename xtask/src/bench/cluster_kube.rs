//! `cargo xtask bench cluster --kube`: an agent joining through the
//! Kubernetes API (`--kube-subnet-mgr`) a cluster of 5,000 Nodes, side by
//! side with an agent joining through etcd 5,000 leases of the same
//! subnets, in the same run: the join, how long a new peer written to the
//! store takes to be programmed, and the agents' memory.
//!
//! The control plane runs without the node IPAM controller: the bench
//! creates every Node with its `spec.podCIDR(s)` set (a /24 of
//! 10.0.0.0/8), its flannel annotations, and a status the size a kubelet
//! reports (conditions, addresses, resources, node info, images), because
//! the agent reads whole Nodes. Nodes are cluster-scoped; the only
//! namespace is the deploy manifest's `pod-net`, in the bench's own
//! control plane, which goes with its data when the bench ends.
use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use pod_net_tests::{
    Rig, RigSpec,
    cluster::{Agent, Etcd, agent_dir, base64, synthetic_lease, synthetic_peer},
    cmd::{describe, output_with_input, run_command},
    kube::{ControlPlane, Options},
    kube_cluster::{agent_kubeconfig, lease_annotations, node_name, start_agent},
};
use serde_json::{Value, json};

use super::{
    cluster::{NODE_ADDED, log_each_change, percentile, wait_log},
    report::{Goal, Report, Row, Summary},
};

/// Peers in the store when the agent joins.
const PEERS: u32 = 5_000;
/// New peers written one by one to each running agent per round.
const SAMPLES: u32 = 100;
/// Images in each Node's status (a kubelet reports up to 50).
const IMAGES: u32 = 20;
/// Nodes per `kubectl create` of a List, and how many run at once.
const CREATE_CHUNK: usize = 250;
const CREATE_PARALLEL: usize = 4;
/// The label of the Nodes the bench makes: `peer` (the 5,000), `new` (the
/// ones written to running agents), `own` (the kube agent's own Node).
const LABEL: &str = "pod-net-bench";
/// Both stores' network: every synthetic /24 and the agents' own.
const ETCD_CONFIG: &str = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}"#;
const NET_CONF: &str = ETCD_CONFIG;
/// The kube agent's own Node's podCIDR (outside the synthetic ones).
const OWN_POD_CIDR: &str = "10.0.2.0/24";
/// How long a join may take before the bench gives up.
const JOIN_LIMIT: Duration = Duration::from_mins(5);

const JOIN: &str = "join 5,000 peers";
const P99: &str = "new peer programmed, p99";
const HWM_JOIN: &str = "agent VmHWM at 5,000 peers";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Etcd,
    Kube,
}

impl Mode {
    const fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Kube => "kube",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::Etcd => 0,
            Self::Kube => 1,
        }
    }
}

/// One mode's figures, one sample per round unless said otherwise.
#[derive(Default)]
struct Figures {
    /// Seconds from spawning the agent to its log saying it follows every
    /// peer.
    join: Vec<f64>,
    /// Seconds from spawning the agent to its log saying the datapath is
    /// loaded (after the own lease or Node is read).
    datapath: Vec<f64>,
    /// CPU seconds (user + system) the agent used to join.
    join_cpu: Vec<f64>,
    /// Seconds one client takes to list the store's peers alone (curl).
    list_alone: Vec<f64>,
    /// KiB of `VmRSS` when the datapath was loaded, before the list.
    rss_datapath: Vec<f64>,
    /// Per round, p50 and p99 of the new peers (ms).
    new_p50: Vec<f64>,
    new_p99: Vec<f64>,
    /// Per round, p50 of the writer (curl) alone (ms).
    writer_p50: Vec<f64>,
    /// Every new peer of every round (ms), its writer alone (ms), and the
    /// rest (from the writer's exit to programmed, ms).
    all_new: Vec<f64>,
    all_writer: Vec<f64>,
    all_after_writer: Vec<f64>,
    /// KiB, right after the join and after the new peers.
    hwm_join: Vec<f64>,
    rss_join: Vec<f64>,
    hwm_end: Vec<f64>,
    rss_end: Vec<f64>,
}

/// What the bench runs against, for the whole run.
struct Bench<'a> {
    rig: &'a Rig,
    plane: &'a ControlPlane,
    switch: String,
    kubeconfig: std::path::PathBuf,
    leases: Vec<(String, String)>,
}

pub fn run(rounds: usize) -> Result<Vec<Report>> {
    let rig = Rig::build(&RigSpec {
        nodes: 3,
        pods_per_node: 0,
        ..RigSpec::default()
    })?;
    let switch = rig.switch().context("no switch in the rig")?.to_owned();
    let mut etcd = Etcd::start(&rig)?;
    // No node IPAM: the bench gives each Node its podCIDR.
    let plane = ControlPlane::start_with(
        &rig,
        &Options {
            controllers: vec!["serviceaccount-controller".into()],
            ..Options::default()
        },
    )?;
    let kubeconfig = agent_kubeconfig(&plane)?;
    let bench = Bench {
        rig: &rig,
        plane: &plane,
        switch,
        kubeconfig,
        leases: (0..PEERS).map(synthetic_lease).collect(),
    };
    let setup = bench.create_nodes()?;
    let mut figures = [Figures::default(), Figures::default()];
    for round in 0..rounds {
        println!("bench cluster --kube: round {}", round + 1);
        bench.round(&mut etcd, round, &mut figures)?;
    }
    Ok(vec![report(&figures, rounds, &setup)])
}

/// What creating the Nodes took, for the notes.
struct Setup {
    create_seconds: f64,
    node_bytes: usize,
}

impl Bench<'_> {
    /// Creates the kube agent's own Node and the 5,000 peers.
    fn create_nodes(&self) -> Result<Setup> {
        let own = self.rig.node(2);
        let mut own_node = node_object(&node_name(own), "own", OWN_POD_CIDR, own.underlay_ip);
        own_node["metadata"]["annotations"] = json!({
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        });
        self.plane
            .kubectl_stdin(&["create", "-f", "-"], &own_node.to_string())?;
        println!("bench cluster --kube: creating {PEERS} Nodes");
        let started = Instant::now();
        let nodes: Vec<Value> = (0..PEERS).map(|index| peer_node(index, "peer")).collect();
        let lists: Vec<String> = nodes
            .chunks(CREATE_CHUNK)
            .map(|items| json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string())
            .collect();
        for batch in lists.chunks(CREATE_PARALLEL) {
            thread::scope(|scope| {
                let creating: Vec<_> = batch
                    .iter()
                    .map(|list| {
                        scope.spawn(|| self.plane.kubectl_stdin(&["create", "-f", "-"], list))
                    })
                    .collect();
                creating
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .map_err(|_| anyhow!("a kubectl thread panicked"))?
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
        }
        let create_seconds = started.elapsed().as_secs_f64();
        let listed =
            self.plane
                .kubectl(&["get", "nodes", "-l", &format!("{LABEL}=peer"), "-o", "name"])?;
        let count = listed.lines().count();
        if count != PEERS as usize {
            bail!("{count} peer Nodes, not {PEERS}");
        }
        let one =
            self.plane
                .kubectl(&["get", "--raw", &format!("/api/v1/nodes/{}", peer_name(0))])?;
        let served: Value = serde_json::from_str(&one)?;
        let images = served["status"]["images"].as_array().map_or(0, Vec::len);
        if images != IMAGES as usize {
            bail!("the API server kept {images} of a created Node's {IMAGES} images");
        }
        println!(
            "bench cluster --kube: {PEERS} Nodes of {} bytes created in {create_seconds:.1} s",
            one.len()
        );
        Ok(Setup {
            create_seconds,
            node_bytes: one.len(),
        })
    }

    fn round(&self, etcd: &mut Etcd, round: usize, figures: &mut [Figures; 2]) -> Result<()> {
        // etcd starts empty each round; the new Nodes of the last round go.
        etcd.restart(true)?;
        etcd.put_config(ETCD_CONFIG)?;
        etcd.put_many(&self.leases)?;
        self.plane.kubectl(&[
            "delete",
            "nodes",
            "-l",
            &format!("{LABEL}=new"),
            "--wait=true",
        ])?;
        let order = if round.is_multiple_of(2) {
            [Mode::Etcd, Mode::Kube]
        } else {
            [Mode::Kube, Mode::Etcd]
        };
        for mode in order {
            let seconds = self.list_alone(mode)?;
            figures[mode.index()].list_alone.push(seconds);
        }
        let mut agents = Vec::new();
        for mode in order {
            let agent = self.join(mode, &mut figures[mode.index()])?;
            agents.push((mode, agent));
        }
        for (_, agent) in &mut agents {
            log_each_change(agent, &format!("following {PEERS} other node(s)"))?;
        }
        // New peers, one at a time, the two stores in turn.
        let mut new = [Vec::new(), Vec::new()];
        let mut writer = [Vec::new(), Vec::new()];
        for sample in 0..SAMPLES {
            let index = PEERS + u32::try_from(round)? * SAMPLES + sample;
            for (mode, agent) in &agents {
                let (total, alone) = self.new_peer(*mode, agent, index)?;
                new[mode.index()].push(total * 1000.0);
                writer[mode.index()].push(alone * 1000.0);
            }
        }
        for (mode, agent) in &agents {
            let figures = &mut figures[mode.index()];
            let (new, writer) = (&new[mode.index()], &writer[mode.index()]);
            figures.new_p50.push(percentile(new, 50));
            figures.new_p99.push(percentile(new, 99));
            figures.writer_p50.push(percentile(writer, 50));
            figures.all_new.extend(new);
            figures.all_writer.extend(writer);
            figures
                .all_after_writer
                .extend(new.iter().zip(writer).map(|(new, writer)| new - writer));
            figures.hwm_end.push(memory(agent, "VmHWM")?);
            figures.rss_end.push(memory(agent, "VmRSS")?);
        }
        drop(agents);
        Ok(())
    }

    /// Starts `mode`'s agent (etcd on node 1, kube on node 2) and waits
    /// until it follows every peer.
    fn join(&self, mode: Mode, figures: &mut Figures) -> Result<Agent> {
        let node = match mode {
            Mode::Etcd => self.rig.node(1),
            Mode::Kube => self.rig.node(2),
        };
        let _ = node.pod_net(&["unload"]);
        let dir = agent_dir(self.rig, node);
        let _ = fs::remove_dir_all(&dir);
        let extra = ["--metrics-addr", "127.0.0.1:0"];
        let started = Instant::now();
        let agent = match mode {
            Mode::Etcd => Agent::start(node, &dir, &Etcd::endpoint(), &extra)?,
            Mode::Kube => start_agent(self.rig, node, &self.kubeconfig, NET_CONF, &extra)?,
        };
        let following = format!("following {PEERS} other node(s)");
        let mut datapath = None;
        loop {
            let log = agent.log_text();
            if datapath.is_none() && log.contains("datapath loaded at") {
                datapath = Some(started.elapsed());
                figures.rss_datapath.push(memory(&agent, "VmRSS")?);
            }
            if log.contains(&following) {
                break;
            }
            if started.elapsed() > JOIN_LIMIT {
                bail!(
                    "the {} agent did not follow {PEERS} peers in {JOIN_LIMIT:?}; its log:\n{log}",
                    mode.name()
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
        let join = started.elapsed();
        figures.join.push(join.as_secs_f64());
        figures.join_cpu.push(cpu_seconds(&agent)?);
        figures
            .datapath
            .push(datapath.unwrap_or(join).as_secs_f64());
        figures.hwm_join.push(memory(&agent, "VmHWM")?);
        figures.rss_join.push(memory(&agent, "VmRSS")?);
        println!(
            "bench cluster --kube: {} agent joined {PEERS} in {:.2} s",
            mode.name(),
            join.as_secs_f64()
        );
        Ok(agent)
    }

    /// Seconds one curl at a time takes to list every peer in `mode`'s
    /// store: etcd in one range request of the prefix (its JSON gateway),
    /// the API server page by page as the agent lists (500 Nodes a page).
    fn list_alone(&self, mode: Mode) -> Result<f64> {
        let started = Instant::now();
        match mode {
            Mode::Etcd => {
                let body = json!({
                    "key": base64(b"/coreos.com/network/"),
                    "range_end": base64(b"/coreos.com/network0"),
                });
                let mut command = self.curl(&format!("{}/v3/kv/range", Etcd::endpoint()), false);
                command.args(["--data-binary", &body.to_string()]);
                let text = run_command(&mut command)?;
                let reply: Value = serde_json::from_str(&text)?;
                let count = reply["count"].as_str().unwrap_or_default();
                if count != (PEERS + 1).to_string() {
                    bail!("etcd listed {count} records, not {PEERS} leases and the config");
                }
            }
            Mode::Kube => {
                let mut token = String::new();
                loop {
                    let mut url = format!("{}/api/v1/nodes?limit=500", ControlPlane::server_url());
                    if !token.is_empty() {
                        let _ = write!(url, "&continue={}", url_encoded(&token));
                    }
                    let text = run_command(&mut self.curl(&url, true))?;
                    // The list's metadata comes before its items.
                    let head = &text[..text.len().min(1024)];
                    match head.split_once(r#""continue":""#) {
                        Some((_, rest)) => {
                            rest.split('"')
                                .next()
                                .unwrap_or_default()
                                .clone_into(&mut token);
                        }
                        None => break,
                    }
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Writes peer `index` to `mode`'s store and waits until the agent
    /// says it programmed it: (seconds from starting the write to then,
    /// seconds the writer took alone).
    fn new_peer(&self, mode: Mode, agent: &Agent, index: u32) -> Result<(f64, f64)> {
        let (url, body, tls) = match mode {
            Mode::Etcd => {
                let (key, value) = synthetic_lease(index);
                let body =
                    json!({"key": base64(key.as_bytes()), "value": base64(value.as_bytes())});
                (format!("{}/v3/kv/put", Etcd::endpoint()), body, false)
            }
            Mode::Kube => (
                format!("{}/api/v1/nodes", ControlPlane::server_url()),
                peer_node(index, "new"),
                true,
            ),
        };
        let body = body.to_string();
        let mut command = self.curl(&url, tls);
        command.args(["-o", "/dev/null", "-H", "Content-Type: application/json"]);
        command.args(["--data-binary", "@-"]);
        let programmed = agent.log_lines(NODE_ADDED);
        let started = Instant::now();
        let output = output_with_input(&mut command, body.as_bytes())?;
        let alone = started.elapsed().as_secs_f64();
        if !output.status.success() {
            bail!(
                "{} failed: {}",
                describe(&command),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        wait_log(agent, NODE_ADDED, programmed + 1, Duration::from_secs(30))?;
        Ok((started.elapsed().as_secs_f64(), alone))
    }

    /// curl of `url` in the switch namespace (as the admin, over TLS, when
    /// `tls`), failing on an HTTP error.
    fn curl(&self, url: &str, tls: bool) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.switch))
            .args(["--", "curl", "-sS", "-f", "--max-time", "10"]);
        if tls {
            let (cert, key) = self.plane.admin_cert();
            command
                .arg("--cacert")
                .arg(self.plane.ca_file())
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        command.arg(url);
        command
    }
}

/// CPU seconds (user + system) `agent` has used so far.
fn cpu_seconds(agent: &Agent) -> Result<f64> {
    let pid = agent.pid().context("the agent is not running")?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis, from field 3 (state):
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> Result<f64> {
        let value: u32 = fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("no field {} in /proc/{pid}/stat", index + 3))?;
        Ok(f64::from(value))
    };
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second")]
    Ok((ticks(11)? + ticks(12)?) / per_second.max(1) as f64)
}

/// A memory figure of `agent` in KiB, as a float for the report.
fn memory(agent: &Agent, field: &str) -> Result<f64> {
    #[expect(clippy::cast_precision_loss, reason = "KiB of one process")]
    Ok(agent.memory_kib(field)? as f64)
}

/// `text` as a URL query value (a continue token is base64).
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn peer_name(index: u32) -> String {
    format!("peer-{index:05}")
}

/// Node `peer-<index>` (the one `synthetic_lease(index)` leases in etcd),
/// labelled `kind`, with flannel's annotations as a flannel-schema VXLAN
/// node publishes them.
fn peer_node(index: u32, kind: &str) -> Value {
    let (cidr, ip, mac) = synthetic_peer(index);
    let mut node = node_object(&peer_name(index), kind, &cidr, ip);
    let annotations = &mut node["metadata"]["annotations"];
    for (key, value) in lease_annotations(&ip.to_string(), &mac) {
        annotations[key] = json!(value);
    }
    node
}

/// A Node as a kubelet registers and reports it, with `spec.podCIDR(s)`
/// set as kube-controller-manager would.
fn node_object(name: &str, kind: &str, pod_cidr: &str, ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                LABEL: kind,
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "bench.large",
                "topology.kubernetes.io/region": "bench-1",
                "topology.kubernetes.io/zone": "bench-1a",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": kubelet_status(name, ip),
    })
}

/// What a kubelet reports in a Node's status: conditions, addresses,
/// capacity, node info and [`IMAGES`] images.
fn kubelet_status(name: &str, ip: Ipv4Addr) -> Value {
    let time = "2026-12-06T00:00:00Z";
    let conditions: Vec<Value> = [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
    .iter()
    .map(|(kind, status, reason, message)| {
        json!({
            "type": kind,
            "status": status,
            "lastHeartbeatTime": time,
            "lastTransitionTime": time,
            "reason": reason,
            "message": message,
        })
    })
    .collect();
    let images: Vec<Value> = (0..IMAGES)
        .map(|image| {
            let digest = format!(
                "{:016x}{:016x}{:016x}{:016x}",
                u64::from(image).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                u64::from(image) + 1,
                u64::from(image) << 7,
                u64::from(image) ^ 0x5bd1_e995
            );
            json!({
                "names": [
                    format!("registry.example/team-{image}/service-{image}@sha256:{digest}"),
                    format!("registry.example/team-{image}/service-{image}:v1.{image}.0"),
                ],
                "sizeBytes": 20_000_000 + u64::from(image) * 1_234_567,
            })
        })
        .collect();
    let resources = json!({
        "cpu": "8",
        "ephemeral-storage": "101430960Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "32869712Ki",
        "pods": "110",
    });
    json!({
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": ip.to_string()},
            {"type": "Hostname", "address": name},
        ],
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("{:032x}", u128::from(ip.to_bits()) * 7919),
            "systemUUID": format!("ec2{:05x}-0000-4000-8000-000000000000", ip.to_bits() & 0xfffff),
            "bootID": format!("{:08x}-1111-4222-8333-444455556666", ip.to_bits()),
            "kernelVersion": "6.18.0-1-amd64",
            "osImage": "Debian GNU/Linux 13 (trixie)",
            "containerRuntimeVersion": "containerd://1.7.24",
            "kubeletVersion": "v1.37.2",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": images,
    })
}

fn report(figures: &[Figures; 2], rounds: usize, setup: &Setup) -> Report {
    let kib_to_mib = |values: &[f64]| values.iter().map(|kib| kib / 1024.0).collect::<Vec<_>>();
    let row = |figure: &str, unit: &str, pick: &dyn Fn(&Figures) -> Vec<f64>| Row {
        figure: figure.into(),
        unit: unit.into(),
        higher_is_better: false,
        paths: [Mode::Etcd, Mode::Kube]
            .iter()
            .map(|mode| {
                (
                    mode.name().to_owned(),
                    Summary::of(pick(&figures[mode.index()])),
                )
            })
            .collect(),
    };
    let after = PEERS + SAMPLES;
    let rows = vec![
        row(JOIN, "s", &|f| f.join.clone()),
        row("start to datapath loaded", "s", &|f| f.datapath.clone()),
        row("agent CPU to join (user + system)", "s", &|f| {
            f.join_cpu.clone()
        }),
        row("the store's list alone (curl)", "s", &|f| {
            f.list_alone.clone()
        }),
        row("new peer programmed, p50", "ms", &|f| f.new_p50.clone()),
        row(P99, "ms", &|f| f.new_p99.clone()),
        row("writer (curl) alone, p50", "ms", &|f| f.writer_p50.clone()),
        row("agent VmRSS at datapath loaded", "MiB", &|f| {
            kib_to_mib(&f.rss_datapath)
        }),
        row(HWM_JOIN, "MiB", &|f| kib_to_mib(&f.hwm_join)),
        row("agent VmRSS at 5,000 peers", "MiB", &|f| {
            kib_to_mib(&f.rss_join)
        }),
        row(&format!("agent VmHWM at {after} peers"), "MiB", &|f| {
            kib_to_mib(&f.hwm_end)
        }),
        row(&format!("agent VmRSS at {after} peers"), "MiB", &|f| {
            kib_to_mib(&f.rss_end)
        }),
    ];
    let mut notes = vec![format!(
        "Join: from spawning `pod-net agent` (`--etcd-endpoints` on node 1, `--kube-subnet-mgr` \
         on node 2) to its log saying it follows {PEERS} other nodes; \"start to datapath \
         loaded\" is the part before the list (client, own lease or Node, loading the \
         datapath). A new peer: {SAMPLES} per store per round, the two stores in turn, each \
         written by one curl in the switch namespace (etcd: `/v3/kv/put` of a lease; kube: \
         `POST /api/v1/nodes` of a Node with its podCIDR and flannel annotations, as the \
         admin) and timed from starting curl to the agent's debug line saying it programmed \
         the node (each agent is restarted with that line on after its join, and follows \
         again before the first); the p50 and p99 rows are per round. Memory from \
         /proc/PID/status right after the join, and after the new peers (of the restarted \
         agent)."
    )];
    let mut pooled = String::from("Pooled over every round:");
    for mode in [Mode::Etcd, Mode::Kube] {
        let figures = &figures[mode.index()];
        let _ = write!(
            pooled,
            " {} new peer p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} (curl alone p50 \
             {:.1} ms);",
            mode.name(),
            percentile(&figures.all_new, 50),
            percentile(&figures.all_new, 99),
            percentile(&figures.all_new, 100),
            figures.all_new.len(),
            percentile(&figures.all_writer, 50),
        );
    }
    notes.push(pooled.trim_end_matches(';').to_owned() + ".");
    let mut after = String::from(
        "From the writer's exit to programmed (the store's watch and the agent; the writer's \
         own start and TLS left out):",
    );
    for mode in [Mode::Etcd, Mode::Kube] {
        let samples = &figures[mode.index()].all_after_writer;
        let _ = write!(
            after,
            " {} p50 {:.1} ms, p99 {:.1} ms;",
            mode.name(),
            percentile(samples, 50),
            percentile(samples, 99),
        );
    }
    notes.push(after.trim_end_matches(';').to_owned() + ".");
    notes.push(format!(
        "All in one rig: etcd 3.4 (data on tmpfs, emptied and refilled with {PEERS} leases each \
         round) and kube-apiserver + kube-controller-manager (serviceaccount controller only: \
         no node IPAM; the bench sets each Node's podCIDR) with their own etcd, all in the \
         switch namespace. The kube agent holds the deploy manifest's ServiceAccount token. \
         Each Node carries a kubelet-sized status ({IMAGES} images; {} bytes as the API server \
         serves one); creating the {PEERS} took {:.1} s ({} `kubectl create` of {CREATE_CHUNK}-Node \
         Lists at a time). Synthetic peers point at 172.16.x.y (programmed, never sent to).",
        setup.node_bytes,
        setup.create_seconds,
        CREATE_PARALLEL
    ));
    let mut report = Report {
        title: "Cluster: joining through the Kubernetes API, beside etcd".into(),
        rounds,
        subject: Mode::Kube.name().into(),
        baselines: vec![Mode::Etcd.name().into()],
        ratios: Vec::new(),
        rows,
        notes,
    };
    report
        .notes
        .push("Goals of issue 22 (printed, not asserted):".into());
    let kube = &figures[Mode::Kube.index()];
    let pooled_p99 = percentile(&kube.all_new, 99);
    let hwm = Summary::of(kib_to_mib(&kube.hwm_join)).max;
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    report.notes.push(format!(
        "- goal: kube new peer p99 ≤ 100 ms; measured {pooled_p99:.1} ms pooled, {}",
        verdict(pooled_p99 <= 100.0)
    ));
    report.notes.push(format!(
        "- goal: kube agent memory ≤ 64 MiB at {PEERS} Nodes; VmHWM at most {hwm:.1} MiB, {}",
        verdict(hwm <= 64.0)
    ));
    for figure in [JOIN, P99] {
        let line = report.goal_line(&Goal {
            subject: "kube",
            baseline: "etcd",
            figure,
            better_by: 1.0,
            strictly: false,
        });
        report.notes.push(format!("- {line} (no slower than etcd)"));
    }
    report
}
