//! A node of the rig: commands in its namespace, and the pod-net CLI
//! driven there (load, register, peers).
use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result};

use crate::cmd::{output_of, run, run_command};

use super::{BPFFS, Node, Pod, RigSpec, add_netns, pod_ip6, pod_net_binary, sibling_binary};

impl Node {
    pub(super) fn create(rig_id: &str, index: u8, spec: &RigSpec) -> Result<Self> {
        let netns = format!("{rig_id}-n{index}");
        let node = Self {
            index,
            pin_dir: Path::new(BPFFS).join(&netns),
            underlay_ip: Ipv4Addr::new(192, 168, 100, index),
            gateway_ip: Ipv4Addr::new(10, 244, index, 1),
            gateway_ip6: spec.ipv6.then(|| pod_ip6(index, 1)),
            pods: Vec::new(),
            netns,
        };
        add_netns(&node.netns, spec)?;
        node.ip(&["link", "set", "lo", "up"])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // Like the bridge CNI plugin's cni0, minus multicast snooping: its
        // IGMP reports would land in the pods and spoil exact packet counts.
        node.ip(&[
            "link",
            "add",
            "cni0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        // A fixed MAC, as on a real node: otherwise the bridge takes its
        // lowest port's, and it moves as pods come and go.
        let bridge_mac = format!("02:bb:00:00:00:{index:02x}");
        node.ip(&["link", "set", "cni0", "address", &bridge_mac])?;
        let gateway = format!("{}/24", node.gateway_ip);
        node.ip(&["addr", "add", &gateway, "dev", "cni0"])?;
        if let Some(gateway) = node.gateway_ip6 {
            node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            let gateway = format!("{gateway}/64");
            node.ip(&["addr", "add", &gateway, "dev", "cni0", "nodad"])?;
        }
        node.ip(&["link", "set", "cni0", "up"])?;
        let mut node = node;
        for pod_index in 1..=spec.pods_per_node {
            let pod = node.create_pod(pod_index, spec)?;
            node.pods.push(pod);
        }
        Ok(node)
    }

    fn create_pod(&self, index: u8, spec: &RigSpec) -> Result<Pod> {
        let host_octet = index
            .checked_add(1)
            .context("pod index does not fit an address")?;
        let pod = Pod {
            node: self.index,
            index,
            netns: format!("{}-p{index}", self.netns),
            ip: Ipv4Addr::new(10, 244, self.index, host_octet),
            ip6: spec.ipv6.then(|| pod_ip6(self.index, host_octet)),
            mac: format!("02:00:0a:f4:{:02x}:{host_octet:02x}", self.index),
            host_veth: format!("veth-p{index}"),
        };
        add_netns(&pod.netns, spec)?;
        self.plug(&pod, spec.pod_mtu, None)?;
        Ok(pod)
    }

    /// Gives `pod` a new veth pair, deleting the old one, with the host end
    /// at `ifindex` when given: a sandbox whose interface was recreated, on
    /// purpose at an index the kernel has handed out before.
    pub fn replug(&self, pod: &Pod, ifindex: Option<u32>) -> Result<()> {
        if self.ip(&["link", "show", &pod.host_veth]).is_ok() {
            self.ip(&["link", "del", &pod.host_veth])?;
        }
        self.plug(pod, None, ifindex)
    }

    fn plug(&self, pod: &Pod, mtu: Option<u32>, ifindex: Option<u32>) -> Result<()> {
        let index = ifindex.map(|index| index.to_string());
        let mut add = vec!["link", "add", pod.host_veth.as_str()];
        if let Some(index) = &index {
            add.extend(["index", index.as_str()]);
        }
        add.extend(["type", "veth", "peer", "name", "eth0", "netns", &pod.netns]);
        self.ip(&add)?;
        if let Some(mtu) = mtu {
            let mtu = mtu.to_string();
            self.ip(&["link", "set", &pod.host_veth, "mtu", &mtu])?;
            pod.ip(&["link", "set", "eth0", "mtu", &mtu])?;
        }
        self.ip(&["link", "set", &pod.host_veth, "master", "cni0", "up"])?;
        pod.ip(&["link", "set", "lo", "up"])?;
        pod.ip(&["link", "set", "eth0", "address", &pod.mac])?;
        let address = format!("{}/24", pod.ip);
        pod.ip(&["addr", "add", &address, "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        let gateway = self.gateway_ip.to_string();
        pod.ip(&["route", "add", "default", "via", &gateway])?;
        if let (Some(ip6), Some(gateway)) = (pod.ip6, self.gateway_ip6) {
            let address = format!("{ip6}/64");
            pod.ip(&["-6", "addr", "add", &address, "dev", "eth0", "nodad"])?;
            let gateway = gateway.to_string();
            pod.ip(&["-6", "route", "add", "default", "via", &gateway])?;
        }
        Ok(())
    }

    /// `ip -n <node> args..`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run("ip", ["-n", self.netns.as_str()].iter().chain(args))
    }

    /// Sets a sysctl inside the node namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs a command in the node namespace, failing unless it exits 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.command(args))
    }

    /// A command that will run in the node namespace. `nsenter` rather than
    /// `ip netns exec`, which would remount /sys and hide bpffs.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .args(args);
        command
    }

    /// `pod-net --pin-dir <this node's> args..` in the node namespace; fails
    /// unless it exits 0.
    pub fn pod_net(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.pod_net_command(args))
    }

    /// The node IPs in `peer_nodes` (the VXLAN this node opens), sorted.
    pub fn peer_nodes(&self) -> Result<Vec<String>> {
        let path = self.pin_dir.join("peer_nodes");
        let path = path.to_str().context("pin dir path")?;
        let text = self.exec(&["bpftool", "-j", "map", "dump", "pinned", path])?;
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))?;
        entries
            .iter()
            .map(|entry| {
                // With BTF, bpftool adds the typed form beside the raw bytes.
                let key = entry
                    .get("formatted")
                    .map_or(&entry["key"], |typed| &typed["key"]);
                let octets = key
                    .as_array()
                    .with_context(|| format!("a key that is not bytes: {entry}"))?
                    .iter()
                    .map(|byte| match byte {
                        serde_json::Value::String(hex) => {
                            u8::from_str_radix(hex.trim_start_matches("0x"), 16)
                                .with_context(|| format!("a byte that is not hex: {hex}"))
                        }
                        number => number
                            .as_u64()
                            .and_then(|byte| u8::try_from(byte).ok())
                            .with_context(|| format!("a byte that is not one: {number}")),
                    })
                    .collect::<Result<Vec<u8>>>()?;
                let quad: [u8; 4] = octets
                    .try_into()
                    .map_err(|octets| anyhow::anyhow!("a key of {octets:?} is no IPv4 address"))?;
                Ok(std::net::Ipv4Addr::from(quad))
            })
            .collect::<Result<std::collections::BTreeSet<_>>>()
            .map(|peers| peers.iter().map(ToString::to_string).collect())
    }

    /// Runs `pod-net args..` here and returns how it ended, whatever its
    /// exit status: for tests of refusals.
    pub fn pod_net_output(&self, args: &[&str]) -> Result<Output> {
        output_of(&mut self.pod_net_command(args))
    }

    /// The `pod-net` command for this node, to inspect its exit status.
    #[must_use]
    pub fn pod_net_command(&self, args: &[&str]) -> Command {
        let binary = pod_net_binary();
        let pin_dir = self.pin_dir.to_string_lossy().into_owned();
        let mut full: Vec<&str> = vec![binary.to_str().unwrap_or("pod-net"), "--pin-dir", &pin_dir];
        full.extend_from_slice(args);
        self.command(&full)
    }

    /// Runs `pod-net args..` with the crash point `point` set
    /// (`POD_NET_CRASH_AT`); fails unless it died there by SIGKILL.
    pub fn run_until_killed(&self, args: &[&str], point: &str) -> Result<()> {
        let output = output_of(self.pod_net_command(args).env("POD_NET_CRASH_AT", point))?;
        anyhow::ensure!(
            output.status.signal() == Some(libc::SIGKILL),
            "pod-net {args:?} was not killed at {point}: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// `pod-net load --underlay eth0 --node-ip <this node's> extra..`: the
    /// datapath with its cross-node path on the rig's underlay.
    pub fn load_on_underlay(&self, extra: &[&str]) -> Result<String> {
        let node_ip = self.underlay_ip.to_string();
        let mut args = vec!["load", "--underlay", "eth0", "--node-ip", &node_ip];
        args.extend_from_slice(extra);
        self.pod_net(&args)
    }

    /// Loads pod-net on this node and registers every pod.
    pub fn load_and_register(&self) -> Result<()> {
        self.pod_net(&["load"])?;
        for pod in &self.pods {
            self.register(pod)?;
        }
        Ok(())
    }

    /// Loads pod-net with this node's underlay (`eth0`, 192.168.100.N) and
    /// registers every pod.
    pub fn load_cross_node(&self) -> Result<()> {
        self.load_on_underlay(&[])?;
        for pod in &self.pods {
            self.register(pod)?;
        }
        Ok(())
    }

    /// This node's pod CIDR, 10.244.N.0/24.
    #[must_use]
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// `fd00:10:244:<index>::/64`, in a dual-stack rig.
    #[must_use]
    pub fn pod_cidr6(&self) -> Option<String> {
        self.gateway_ip6
            .map(|_| format!("{}/64", pod_ip6(self.index, 0)))
    }

    /// The VTEP MAC pod-net derives for this node (`0e:6e:` + its IP).
    #[must_use]
    pub fn derived_vtep_mac(&self) -> String {
        let [a, b, c, d] = self.underlay_ip.octets();
        format!("0e:6e:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
    }

    /// `pod-net node add` for `peer`'s pod CIDR, with `vtep_mac` when the
    /// peer checks inner MACs (a flannel node).
    pub fn add_peer(&self, peer: &Node, vtep_mac: Option<&str>) -> Result<String> {
        let node_ip = peer.underlay_ip.to_string();
        let mut output = String::new();
        for cidr in std::iter::once(peer.pod_cidr()).chain(peer.pod_cidr6()) {
            let mut args = vec!["node", "add", "--cidr", &cidr, "--node-ip", &node_ip];
            if let Some(mac) = vtep_mac {
                args.extend(["--vtep-mac", mac]);
            }
            output.push_str(&self.pod_net(&args)?);
        }
        Ok(output)
    }

    /// `pod-net node add --direct` for `peer`'s pod CIDRs (the IPv6 one too
    /// in a dual-stack rig): sent to it unencapsulated over the underlay.
    pub fn add_direct_peer(&self, peer: &Node) -> Result<String> {
        let node_ip = peer.underlay_ip.to_string();
        let mut output = String::new();
        for cidr in std::iter::once(peer.pod_cidr()).chain(peer.pod_cidr6()) {
            output.push_str(&self.pod_net(&[
                "node",
                "add",
                "--cidr",
                &cidr,
                "--node-ip",
                &node_ip,
                "--direct",
            ])?);
        }
        Ok(output)
    }

    /// `pod-net pod add` of `pod`'s IPv4 address on its host veth, to run
    /// where a test looks at the exit code and stderr itself.
    #[must_use]
    pub fn pod_add_command(&self, pod: &Pod) -> Command {
        let ip = pod.ip.to_string();
        self.pod_net_command(&["pod", "add", "--ip", &ip, "--veth", &pod.host_veth])
    }

    /// `pod-net pod add` for one pod (each of its addresses).
    pub fn register(&self, pod: &Pod) -> Result<String> {
        let mut output = String::new();
        for ip in std::iter::once(IpAddr::from(pod.ip)).chain(pod.ip6.map(IpAddr::from)) {
            let ip = ip.to_string();
            output.push_str(&self.pod_net(&[
                "pod",
                "add",
                "--ip",
                &ip,
                "--veth",
                &pod.host_veth,
            ])?);
        }
        Ok(output)
    }

    /// The TCX links pinned for `program` (`links/<program>/` in the pin
    /// dir), by file name; none when the folder is not there.
    pub fn pinned_links(&self, program: &str) -> Result<Vec<String>> {
        let folder = self.pin_dir.join("links").join(program);
        let entries = match std::fs::read_dir(&folder) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            entries => entries.with_context(|| format!("listing {}", folder.display()))?,
        };
        let mut names = entries
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    /// IDs of the TCX ingress programs on an interface of the node, as the
    /// kernel reports them.
    pub fn tcx_ingress_programs(&self, ifname: &str) -> Result<Vec<u32>> {
        let binary = sibling_binary("pod-net-probe");
        let text = self.exec(&[binary.to_str().unwrap_or("pod-net-probe"), "tcx", ifname])?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))
    }

    /// The BPF filter at priority 1, handle 1 on an interface's tc ingress
    /// (where `load --attach tc` puts pod-net's), as `tc -j filter show`
    /// reports it: (name, program ID).
    pub fn tc_filter(&self, ifname: &str) -> Result<Option<(String, u64)>> {
        let text = self.exec(&["tc", "-j", "filter", "show", "dev", ifname, "ingress"])?;
        let filters: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))?;
        Ok(filters
            .as_array()
            .into_iter()
            .flatten()
            .filter(|filter| filter["pref"] == 1 && filter["kind"] == "bpf")
            .find(|filter| filter["options"]["handle"] == "0x1")
            .and_then(|filter| {
                let options = &filter["options"];
                Some((
                    options["bpf_name"].as_str()?.to_owned(),
                    options["prog"]["id"].as_u64()?,
                ))
            }))
    }

    /// The node itself as one end of a path: its namespace, its underlay
    /// `eth0` and address, for a host-to-host baseline measured as pod
    /// paths are (index 0, no veth).
    pub fn host_end(&self) -> Result<Pod> {
        Ok(Pod {
            node: self.index,
            index: 0,
            netns: self.netns.clone(),
            ip: self.underlay_ip,
            ip6: None,
            mac: self.link_mac("eth0")?,
            host_veth: String::new(),
        })
    }

    /// The MAC of an interface in the node namespace.
    pub fn link_mac(&self, ifname: &str) -> Result<String> {
        let text = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let json: serde_json::Value =
            serde_json::from_str(&text).context("parsing ip -j output")?;
        json[0]["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {ifname} in {text}"))
    }

    /// RX and TX packet counters of an interface in the node namespace.
    pub fn link_packets(&self, ifname: &str) -> Result<LinkPackets> {
        link_packets(&self.command(&["ip", "-j", "-s", "link", "show", "dev", ifname]))
    }
}

/// Packet counters of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkPackets {
    pub rx: u64,
    pub tx: u64,
}

pub(super) fn link_packets(command: &Command) -> Result<LinkPackets> {
    let mut command = clone_command(command);
    let text = run_command(&mut command)?;
    let json: serde_json::Value = serde_json::from_str(&text).context("parsing ip -j output")?;
    let stats = &json[0]["stats64"];
    let number = |direction: &str| {
        stats[direction]["packets"]
            .as_u64()
            .with_context(|| format!("no {direction} packets in {text}"))
    };
    Ok(LinkPackets {
        rx: number("rx")?,
        tx: number("tx")?,
    })
}

fn clone_command(command: &Command) -> Command {
    let mut clone = Command::new(command.get_program());
    clone.args(command.get_args());
    clone
}
