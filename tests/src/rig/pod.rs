//! A pod of the rig: commands in its namespace, and the traffic tests send
//! from it (pings, iperf3, raw frames).
use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output_of, run, run_command};

use super::{Background, LinkPackets, PingFlood, Pod, node::link_packets, sibling_binary};

impl Pod {
    /// `ip -n <pod> args..`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run("ip", ["-n", self.netns.as_str()].iter().chain(args))
    }

    /// A command that will run in the pod namespace.
    #[must_use]
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).args(args);
        command
    }

    /// Runs a command in the pod, failing unless it exits 0.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run_command(&mut self.command(args))
    }

    /// Sends `count` pings to `target` (0.1 s apart, 1 s deadline each) and
    /// fails unless all are answered.
    pub fn ping(&self, target: impl Into<IpAddr>, count: u32) -> Result<String> {
        let count = count.to_string();
        let target = target.into().to_string();
        self.exec(&[
            "ping", "-n", "-q", "-c", &count, "-i", "0.1", "-W", "1", &target,
        ])
    }

    /// One ping to `target` with don't-fragment and `size` bytes of
    /// payload, its output whether or not it was answered (1 s deadline).
    pub fn df_ping(&self, target: impl Into<IpAddr>, size: u32) -> Result<std::process::Output> {
        let size = size.to_string();
        let target = target.into().to_string();
        output_of(&mut self.command(&[
            "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", &size, &target,
        ]))
    }

    /// Starts `count` pings to `target`, 2 ms apart (1 s deadline each): a
    /// bounded flood to run while something changes under it.
    pub fn ping_flood(&self, target: Ipv4Addr, count: u32) -> Result<PingFlood> {
        let count = count.to_string();
        let target = target.to_string();
        let child = self
            .command(&[
                "ping", "-n", "-q", "-i", "0.002", "-c", &count, "-W", "1", &target,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting ping in {}", self.netns))?;
        Ok(PingFlood { child })
    }

    /// Starts a background process in the pod; it is killed when the guard
    /// drops.
    pub fn spawn(&self, args: &[&str]) -> Result<Background> {
        let child = self
            .command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that drop reaches what it forks
            // (trafgen runs its senders in child processes).
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {args:?} in {}", self.netns))?;
        Ok(Background { child })
    }

    /// Sends `frame` raw out of the pod's `eth0` (`AF_PACKET`), bypassing
    /// the pod's stack: how tests put malformed frames on the wire.
    pub fn inject(&self, frame: &[u8]) -> Result<()> {
        let hex = crate::frames::hex(frame);
        let binary = sibling_binary("pod-net-probe");
        self.exec(&[
            binary.to_str().unwrap_or("pod-net-probe"),
            "inject",
            "eth0",
            &hex,
        ])
        .map(drop)
    }

    /// Pins `other`'s addresses (IPv4, and IPv6 in a dual-stack rig) in
    /// this pod's neighbour table, so no ARP or neighbour discovery runs
    /// during a test that counts packets exactly.
    pub fn pin_neighbour(&self, other: &Pod) -> Result<()> {
        let addresses = std::iter::once(IpAddr::from(other.ip)).chain(other.ip6.map(IpAddr::from));
        for ip in addresses {
            let ip = ip.to_string();
            self.ip(&[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &other.mac,
                "nud",
                "permanent",
                "dev",
                "eth0",
            ])?;
        }
        Ok(())
    }

    /// Waits (up to 5 s) until something in the pod listens on TCP `port`.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        let filter = format!("sport = :{port}");
        for _ in 0..100 {
            if !self.exec(&["ss", "-Hltn", &filter])?.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("nothing listens on port {port} in {}", self.netns)
    }

    /// Starts an iperf3 server in the pod (one test, then it exits) and
    /// waits until it listens.
    pub fn iperf3_server(&self, extra: &[&str]) -> Result<Background> {
        let mut args = vec!["iperf3", "-s", "-1"];
        args.extend_from_slice(extra);
        let server = self.spawn(&args)?;
        self.wait_listening(5201)?;
        Ok(server)
    }

    /// Runs an iperf3 client against `server` with `extra` arguments and
    /// returns its JSON report, failing on any error iperf3 reports.
    pub fn iperf3_client(
        &self,
        server: impl Into<IpAddr>,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        let server = server.into().to_string();
        let mut args = vec!["iperf3", "-c", server.as_str(), "-J"];
        args.extend_from_slice(extra);
        // iperf3 -J can exit 0 with an "error" in the report.
        let text = self.exec(&args)?;
        let report: serde_json::Value =
            serde_json::from_str(&text).context("parsing iperf3 -J output")?;
        if let Some(error) = report.get("error") {
            bail!("iperf3 failed: {error}");
        }
        Ok(report)
    }

    /// Sends `bytes` (iperf3's `-n`, e.g. "8M") over one TCP connection to
    /// `server`, and fails unless both ends report bytes. A clean end of the
    /// transfer is the proof: iperf3's received-bytes summary can lag the
    /// last bytes under load, so it is not compared with what was sent.
    pub fn tcp_transfer(&self, server: &Pod, bytes: &str) -> Result<()> {
        let _server = server.iperf3_server(&[])?;
        let report = self.iperf3_client(server.ip, &["-n", bytes])?;
        let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
        let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            sent > 0 && received > 0,
            "{} -> {}: sent {sent}, received {received}",
            self.ip,
            server.ip
        );
        Ok(())
    }

    /// RX and TX packet counters of the pod's `eth0`.
    pub fn eth0_packets(&self) -> Result<LinkPackets> {
        link_packets(&self.command(&["ip", "-j", "-s", "link", "show", "dev", "eth0"]))
    }
}
