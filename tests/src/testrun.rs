//! A private, unpinned instance of the pod-net object for
//! `BPF_PROG_TEST_RUN`: exact frames in, exact frames, return codes and
//! counters out. Shared by the datapath tests and the test-run benchmark
//! (the `testrun-bench` example).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
pub use pod_net_common::Endpoint;
use pod_net_common::{
    Config, Counter, EndpointKey, Reason, RemoteAddr, RemoteNode, map_table, program_names,
    remote::{
        IPV4_MAPPED_PREFIX_BITS, PEER_F_VXLAN, PeerNode, REMOTE_F_DIRECT, REMOTE_F_VTEP_MAC,
        derived_vtep_mac,
    },
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// Test run resolves interfaces in the test's own namespace; the loopback
/// device (ifindex 1, MTU 65536) stands in for the underlay.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// Where `struct __sk_buff` has `ifindex`: the only field of the test-run
/// context set here (the kernel zero-fills the rest).
const SKB_IFINDEX_OFFSET: usize = 40;

pub struct Harness {
    ebpf: Ebpf,
}

/// What one run returned.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub output: Vec<u8>,
    pub duration_ns: u128,
}

impl Run {
    /// What the kernel reported, with `output` cut to what the program left.
    fn of(result: &TestRunResult, mut output: Vec<u8>) -> Self {
        output.truncate(result.data_size_out as usize);
        Self {
            action: result.return_value,
            output,
            duration_ns: result.duration.as_nanos(),
        }
    }
}

impl Harness {
    /// Loads the embedded object with fresh maps and loads every program.
    pub fn new() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(pod_net::ebpf_object())
            .context("loading the eBPF object")?;
        for name in [program_names::POD_EGRESS, program_names::UNDERLAY_INGRESS] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("no {name} program"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::UNDERLAY_XDP)
            .context("no underlay_xdp program")?
            .try_into()?;
        xdp.load().context("verifier rejected underlay_xdp")?;
        Ok(Self { ebpf })
    }

    /// Registers a pod address in the private `local_endpoints`.
    pub fn add_endpoint(&mut self, ip: impl Into<IpAddr>, endpoint: Endpoint) -> Result<()> {
        let mut endpoints: HashMap<&mut MapData, EndpointKey, Endpoint> = self
            .ebpf
            .map_mut(map_table::LOCAL_ENDPOINTS.name)
            .context("no local_endpoints map")?
            .try_into()?;
        let key = match ip.into() {
            IpAddr::V4(ip) => EndpointKey::ipv4(ip.octets()),
            IpAddr::V6(ip) => EndpointKey::ipv6(ip.octets()),
        };
        endpoints.insert(key, endpoint, 0)?;
        Ok(())
    }

    /// Makes `ifindex` an XDP redirect target (as `load --xdp` does for a
    /// pod's host veth).
    pub fn add_pod_veth(&mut self, ifindex: u32) -> Result<()> {
        let mut pod_veths: DevMapHash<&mut MapData> = self
            .ebpf
            .map_mut(map_table::POD_VETHS.name)
            .context("no pod_veths map")?
            .try_into()?;
        pod_veths.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// Writes the node settings: this node at `node_ip`, VXLAN `vni` on
    /// `port`, with loopback as the underlay.
    pub fn set_underlay(&mut self, node_ip: Ipv4Addr, vni: u32, port: u16) -> Result<()> {
        self.change_config(|config| Config {
            node_ip: node_ip.octets(),
            underlay_ifindex: LOOPBACK_IFINDEX,
            vni,
            vxlan_port: port,
            pad: 0,
            vtep_mac: derived_vtep_mac(node_ip.octets()),
            ..config
        })
    }

    /// Sets `Config::flags` (anti-spoofing, NAT check, events), keeping
    /// the rest of the config.
    pub fn set_flags(&mut self, flags: u32) -> Result<()> {
        self.change_config(|config| Config { flags, ..config })
    }

    /// Makes `ifindex` the underlay (`bpf_redirect_neigh`'s and the MTU
    /// check's device), keeping the rest of the config.
    pub fn set_underlay_ifindex(&mut self, ifindex: u32) -> Result<()> {
        self.change_config(|config| Config {
            underlay_ifindex: ifindex,
            ..config
        })
    }

    /// Rewrites the one config entry as `change` says.
    fn change_config(&mut self, change: impl FnOnce(Config) -> Config) -> Result<()> {
        let mut config: Array<&mut MapData, Config> = self
            .ebpf
            .map_mut(map_table::CONFIG.name)
            .context("no config map")?
            .try_into()?;
        let current = config.get(&0, 0)?;
        config.set(0, change(current), 0)?;
        Ok(())
    }

    /// Sends `prefix/len` to the node at `node_ip`, with an explicit VTEP MAC
    /// when given: a /32 into `remote_pods`, a shorter prefix into the
    /// `remote_nodes` trie, as `pod-net node add` does.
    pub fn add_remote(
        &mut self,
        prefix: impl Into<IpAddr>,
        len: u32,
        node_ip: Ipv4Addr,
        vtep_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let value = RemoteNode {
            node_ip: node_ip.octets(),
            flags: if vtep_mac.is_some() {
                REMOTE_F_VTEP_MAC
            } else {
                0
            },
            vtep_mac: vtep_mac.unwrap_or_else(|| derived_vtep_mac(node_ip.octets())),
            pad: [0; 2],
        };
        self.insert_remote(prefix.into(), len, value)?;
        // As `pod-net node add` does: the node becomes a VXLAN peer.
        self.add_peer(node_ip)
    }

    /// Routes `prefix/len` directly to the node at `node_ip`, unencapsulated,
    /// as `pod-net node add --direct` does.
    pub fn add_direct_remote(
        &mut self,
        prefix: impl Into<IpAddr>,
        len: u32,
        node_ip: Ipv4Addr,
    ) -> Result<()> {
        let value = RemoteNode {
            node_ip: node_ip.octets(),
            flags: REMOTE_F_DIRECT,
            vtep_mac: derived_vtep_mac(node_ip.octets()),
            pad: [0; 2],
        };
        // A direct node sends no VXLAN: it is no peer.
        self.insert_remote(prefix.into(), len, value)
    }

    /// A /32 (/128) into `remote_pods`, a shorter prefix into the trie.
    fn insert_remote(&mut self, prefix: IpAddr, len: u32, value: RemoteNode) -> Result<()> {
        // IPv4 is IPv4-mapped: 96 bits in front of its own.
        let (addr, trie_len, address_len) = match prefix {
            IpAddr::V4(ip) => (
                RemoteAddr::ipv4_mapped(ip.octets()),
                IPV4_MAPPED_PREFIX_BITS + len,
                32,
            ),
            IpAddr::V6(ip) => (RemoteAddr { addr: ip.octets() }, len, 128),
        };
        if len == address_len {
            let mut pods: HashMap<&mut MapData, RemoteAddr, RemoteNode> = self
                .ebpf
                .map_mut(map_table::REMOTE_PODS.name)
                .context("no remote_pods map")?
                .try_into()?;
            pods.insert(addr, value, 0)?;
        } else {
            let mut remotes: LpmTrie<&mut MapData, RemoteAddr, RemoteNode> = self
                .ebpf
                .map_mut(map_table::REMOTE_NODES.name)
                .context("no remote_nodes map")?
                .try_into()?;
            remotes.insert(&Key::new(trie_len, addr), value, 0)?;
        }
        Ok(())
    }

    /// Makes `node_ip` a node whose VXLAN this node opens (`peer_nodes`).
    pub fn add_peer(&mut self, node_ip: Ipv4Addr) -> Result<()> {
        let mut peers: HashMap<&mut MapData, [u8; 4], PeerNode> = self
            .ebpf
            .map_mut(map_table::PEER_NODES.name)
            .context("no peer_nodes map")?
            .try_into()?;
        peers.insert(
            node_ip.octets(),
            PeerNode {
                flags: PEER_F_VXLAN,
            },
            0,
        )?;
        Ok(())
    }

    /// Runs `pod_egress` once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Result<Run> {
        self.run_program(program_names::POD_EGRESS, frame, 1)
    }

    /// Runs `underlay_ingress` once on `frame`.
    pub fn run_underlay(&self, frame: &[u8]) -> Result<Run> {
        self.run_program(program_names::UNDERLAY_INGRESS, frame, 1)
    }

    /// Runs `underlay_ingress` once on `frame` as if it arrived on
    /// `ifindex`, a device of the calling thread's network namespace.
    pub fn run_underlay_on(&self, ifindex: u32, frame: &[u8]) -> Result<Run> {
        self.run_program_on(program_names::UNDERLAY_INGRESS, frame, 1, Some(ifindex))
    }

    /// Runs `underlay_xdp` once on `frame`.
    pub fn run_xdp(&self, frame: &[u8]) -> Result<Run> {
        let program: &Xdp = self
            .ebpf
            .program(program_names::UNDERLAY_XDP)
            .context("no underlay_xdp program")?
            .try_into()?;
        let mut output = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ..TestRunOptions::default()
        })?;
        Ok(Run::of(&result, output))
    }

    /// Runs `pod_egress` `repeat` times on `frame`.
    pub fn run_repeated(&self, frame: &[u8], repeat: u32) -> Result<Run> {
        self.run_program(program_names::POD_EGRESS, frame, repeat)
    }

    /// Runs program `name` `repeat` times on `frame`; `duration_ns` is the
    /// kernel's average per run.
    pub fn run_program(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Run> {
        self.run_program_on(name, frame, repeat, None)
    }

    /// As `run_program`, with the packet arriving on `ifindex` if given
    /// (else loopback).
    fn run_program_on(
        &self,
        name: &str,
        frame: &[u8],
        repeat: u32,
        ifindex: Option<u32>,
    ) -> Result<Run> {
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .with_context(|| format!("no {name} program"))?
            .try_into()?;
        // Room for growth: encapsulation adds headers.
        let mut output = vec![0u8; frame.len() + 256];
        let mut skb = [0u8; SKB_IFINDEX_OFFSET + 4];
        if let Some(ifindex) = ifindex {
            skb[SKB_IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
        }
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ctx_in: ifindex.map(|_| &skb[..]),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(Run::of(&result, output))
    }

    /// The kernel's id of map `name`, for bpftool.
    pub fn map_id(&self, name: &str) -> Result<u32> {
        let (aya::maps::Map::HashMap(data) | aya::maps::Map::LpmTrie(data)) =
            self.ebpf
                .map(name)
                .with_context(|| format!("no {name} map"))?
        else {
            anyhow::bail!("{name} is neither a hash map nor an LPM trie");
        };
        Ok(data.info()?.id())
    }

    /// Counter totals over all CPUs, per reason.
    pub fn counters(&self) -> Result<Vec<(Reason, Counter)>> {
        let counters: PerCpuArray<&MapData, Counter> = self
            .ebpf
            .map(map_table::COUNTERS.name)
            .context("no counters map")?
            .try_into()?;
        Reason::ALL
            .iter()
            .map(|&reason| {
                let values = counters.get(&(reason as u32), 0)?;
                let total = values.iter().fold(Counter::default(), |sum, cpu| Counter {
                    packets: sum.packets + cpu.packets,
                    bytes: sum.bytes + cpu.bytes,
                });
                Ok((reason, total))
            })
            .collect()
    }

    /// Only the reasons with packets, as (name, packets, bytes).
    pub fn nonzero_counters(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        Ok(self
            .counters()?
            .into_iter()
            .filter(|(_, counter)| counter.packets != 0)
            .map(|(reason, counter)| (reason.name(), counter.packets, counter.bytes))
            .collect())
    }
}

/// An endpoint value as `pod add` would store it.
#[must_use]
pub fn endpoint(ifindex: u32, mac: [u8; 6], gateway_mac: [u8; 6]) -> Endpoint {
    Endpoint {
        ifindex,
        flags: 0,
        mac,
        gateway_mac,
        container_id: [0; 64],
        pod_ifname: [0; 16],
    }
}
