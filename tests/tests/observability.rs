//! What an operator sees: stats in three formats, monitor events, the
//! agent, declarative apply, status as a health probe, and bpftool.
use std::{collections::BTreeMap, time::Duration};

use pod_net_tests::{
    Node, Rig, RigSpec,
    cmd::output_of,
    frames::{self, IPPROTO_ICMP, Ipv4},
    require_root,
    rig::sibling_binary,
    wait_until,
};
use serde_json::Value;

fn probe(node: &Node, args: &[&str]) -> String {
    let binary = sibling_binary("pod-net-probe");
    let mut full = vec![binary.to_str().unwrap()];
    full.extend_from_slice(args);
    node.exec(&full).unwrap()
}

fn parse_prometheus(text: &str) -> prometheus_parse::Scrape {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("exposition parses");
    // The parser skips what it cannot read: every sample line must count.
    let sample_lines = text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "unparsed lines in:\n{text}"
    );
    scrape
}

/// The value of one sample; pod-net's are all whole and non-negative.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, label: (&str, &str)) -> u64 {
    let found = scrape
        .samples
        .iter()
        .find(|sample| sample.metric == metric && sample.labels.get(label.0) == Some(label.1))
        .unwrap_or_else(|| panic!("no {metric}{{{}={}}}", label.0, label.1));
    let value = match found.value {
        prometheus_parse::Value::Counter(value)
        | prometheus_parse::Value::Gauge(value)
        | prometheus_parse::Value::Untyped(value) => value,
        ref other => panic!("unexpected value {other:?}"),
    };
    assert!(value >= 0.0 && value.fract() == 0.0, "{metric}: {value}");
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked above"
    )]
    let whole = value as u64;
    whole
}

#[test]
fn json_and_prometheus_agree_with_the_traffic() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    a.pin_neighbour(b).unwrap();
    b.pin_neighbour(a).unwrap();
    a.ping(b.ip, 7).unwrap();

    let json: Value = serde_json::from_str(&node.pod_net(&["stats", "--json"]).unwrap()).unwrap();
    assert_eq!(json["counters"]["redirect_local"]["packets"], 14);
    assert_eq!(json["counters"]["redirect_local"]["bytes"], 14 * 98);
    let text = node.pod_net(&["stats", "--prometheus"]).unwrap();
    let scrape = parse_prometheus(&text);
    for reason in pod_net_common::Reason::ALL {
        let packets = sample(&scrape, "pod_net_packets_total", ("reason", reason.name()));
        assert_eq!(
            packets,
            json["counters"][reason.name()]["packets"].as_u64().unwrap()
        );
        let bytes = sample(&scrape, "pod_net_bytes_total", ("reason", reason.name()));
        assert_eq!(
            bytes,
            json["counters"][reason.name()]["bytes"].as_u64().unwrap()
        );
    }
    assert_eq!(
        sample(&scrape, "pod_net_map_entries", ("map", "local_endpoints")),
        2
    );
    assert_eq!(
        sample(&scrape, "pod_net_map_capacity", ("map", "local_endpoints")),
        65536
    );
    assert!(text.contains("# TYPE pod_net_packets_total counter"));
    assert!(text.contains("# HELP pod_net_packets_total "));
    assert!(
        text.contains("\npod_net_events_suppressed_total 0\n"),
        "{text}"
    );

    // --explain: the same counts, and a row per reason ending in what it
    // means, as reason.rs says it.
    let explained = node.pod_net(&["stats", "--explain"]).unwrap();
    let mut lines = explained.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["REASON", "PACKETS", "BYTES", "MEANING"]);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), pod_net_common::Reason::ALL.len());
    for (row, reason) in rows.iter().zip(pod_net_common::Reason::ALL) {
        let counts: Vec<&str> = row.split_whitespace().take(3).collect();
        let packets = json["counters"][reason.name()]["packets"].to_string();
        let bytes = json["counters"][reason.name()]["bytes"].to_string();
        assert_eq!(counts, [reason.name(), &packets, &bytes], "{row}");
        assert!(row.ends_with(reason.help().trim()), "{row}");
    }

    let watch = node
        .pod_net(&["stats", "--watch", "1", "--count", "1"])
        .unwrap();
    assert!(watch.starts_with("REASON"), "{watch}");
    assert!(watch.contains("PKT/S"), "{watch}");
}

#[test]
fn monitor_reports_a_malformed_frame_only_while_enabled() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let bad_frame = |ttl: u8| {
        let ip = Ipv4 {
            ttl,
            ..Ipv4::new(a.ip, b.ip, IPPROTO_ICMP)
        };
        let mut frame = frames::ping_frame(frames::mac(&b.mac), frames::mac(&a.mac), &ip);
        frame[14] = 0x43; // IHL of 3 words: malformed
        frame
    };

    // No monitor: this one must leave no event behind.
    a.inject(&bad_frame(11)).unwrap();
    let monitor = KillOnDrop(Some(
        node.pod_net_command(&["monitor", "--json", "--count", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Wait for the monitor to switch events on.
    wait_until("the monitor to enable events", WAIT, || {
        config_flags(node) != 0
    })
    .unwrap();
    a.inject(&bad_frame(22)).unwrap();
    let output = monitor.wait_with_output();
    assert!(output.status.success());
    let event: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(event["reason"], "pass_malformed");
    assert_eq!(event["interface"], a.host_veth.as_str());
    assert_eq!(event["src"], a.ip.to_string());
    assert_eq!(event["dst"], b.ip.to_string());
    assert_eq!(event["protocol"], "icmp");
    // Exiting turned events off again.
    assert_eq!(config_flags(node), 0);
}

/// A child that is killed if the test fails before it is waited for.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `flags` field of the config map, through bpftool.
fn config_flags(node: &Node) -> u64 {
    let path = node.pin_dir.join("config");
    let text = node
        .exec(&[
            "bpftool",
            "-j",
            "map",
            "dump",
            "pinned",
            path.to_str().unwrap(),
        ])
        .unwrap();
    let dump: Value = serde_json::from_str(&text).unwrap();
    // `-j` puts the BTF-typed view under "formatted".
    dump[0]["formatted"]["value"]["flags"].as_u64().unwrap()
}

#[test]
fn bpftool_sees_the_same_pods_as_pod_list() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let path = node.pin_dir.join("local_endpoints");
    let dump: Value = serde_json::from_str(
        &node
            .exec(&[
                "bpftool",
                "-j",
                "map",
                "dump",
                "pinned",
                path.to_str().unwrap(),
            ])
            .unwrap(),
    )
    .unwrap();
    let from_bpftool: BTreeMap<String, (u64, String)> = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let entry = &entry["formatted"];
            let addr: Vec<u64> = entry["key"]["addr"]
                .as_array()
                .unwrap()
                .iter()
                .map(|byte| byte.as_u64().unwrap())
                .collect();
            let ip = format!("{}.{}.{}.{}", addr[0], addr[1], addr[2], addr[3]);
            let mac: Vec<String> = entry["value"]["mac"]
                .as_array()
                .unwrap()
                .iter()
                .map(|byte| format!("{:02x}", byte.as_u64().unwrap()))
                .collect();
            (
                ip,
                (entry["value"]["ifindex"].as_u64().unwrap(), mac.join(":")),
            )
        })
        .collect();
    let list: Value =
        serde_json::from_str(&node.pod_net(&["pod", "list", "--json"]).unwrap()).unwrap();
    let from_list: BTreeMap<String, (u64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|pod| {
            (
                pod["ip"].as_str().unwrap().to_owned(),
                (
                    pod["ifindex"].as_u64().unwrap(),
                    pod["mac"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(from_bpftool, from_list);
    assert_eq!(from_list.len(), 2);
}

#[test]
fn status_is_clean_until_a_veth_disappears_behind_its_back() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let healthy = output_of(&mut node.pod_net_command(&["status"])).unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    assert!(String::from_utf8_lossy(&healthy.stdout).contains("health:    ok"));

    let gone = rig.pod(1, 2);
    node.ip(&["link", "del", &gone.host_veth]).unwrap();
    let broken = output_of(&mut node.pod_net_command(&["status", "--json"])).unwrap();
    assert_eq!(broken.status.code(), Some(1));
    let status: Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(status["healthy"], false);
    let problems = status["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|problem| problem["what"]
            .as_str()
            .unwrap()
            .contains(&format!("remove pod {}: its veth", gone.ip))
            && problem["hint"].as_str().unwrap().contains("pod-net gc")),
        "{problems:?}"
    );

    // The hint works: gc repairs it, and status is healthy again.
    node.pod_net(&["gc"]).unwrap();
    let repaired = output_of(&mut node.pod_net_command(&["status"])).unwrap();
    assert!(
        repaired.status.success(),
        "{}",
        String::from_utf8_lossy(&repaired.stdout)
    );
}

#[test]
fn apply_adds_removes_dry_runs_and_refuses_a_bad_file() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let dir = rig.scratch_dir().unwrap();
    let file = dir.join("node.toml");
    let write = |text: String| std::fs::write(&file, text).unwrap();
    let pod = |pod: &pod_net_tests::Pod| {
        format!(
            "[[pods]]\nip = \"{}\"\nveth = \"{}\"\n",
            pod.ip, pod.host_veth
        )
    };
    let ips = || -> Vec<String> {
        let list: Value =
            serde_json::from_str(&node.pod_net(&["pod", "list", "--json"]).unwrap()).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|pod| pod["ip"].as_str().unwrap().to_owned())
            .collect()
    };
    let path = file.to_str().unwrap();

    write(pod(a) + &pod(b));
    let dry = node.pod_net(&["apply", "-f", path, "--dry-run"]).unwrap();
    assert!(
        dry.contains(&format!("+ pod {} on {}", a.ip, a.host_veth)),
        "{dry}"
    );
    assert!(
        dry.contains("2 change(s) (dry run: nothing changed)"),
        "{dry}"
    );
    assert!(ips().is_empty());
    node.pod_net(&["apply", "-f", path]).unwrap();
    assert_eq!(ips(), [a.ip.to_string(), b.ip.to_string()]);
    // The same file again changes nothing.
    assert!(
        node.pod_net(&["apply", "-f", path])
            .unwrap()
            .contains("0 change(s) applied")
    );

    write(pod(b));
    let removed = node.pod_net(&["apply", "-f", path]).unwrap();
    assert!(removed.contains(&format!("- pod {}", a.ip)), "{removed}");
    assert_eq!(ips(), [b.ip.to_string()]);

    // A malformed file names its line and field and changes nothing.
    write(
        pod(a) + "[[pods]]\nip = \"10.244.1.9\"\nveth = \"veth-p2\"\nmac = \"02:zz:00:00:00:01\"\n",
    );
    let bad = output_of(&mut node.pod_net_command(&["apply", "-f", path])).unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr.contains("line 7, field pods[1].mac"), "{stderr}");
    assert_eq!(ips(), [b.ip.to_string()]);
    // So does one that parses but names a veth that is not there.
    write(pod(a) + "[[pods]]\nip = \"10.244.1.9\"\nveth = \"nosuch\"\n");
    let missing = output_of(&mut node.pod_net_command(&["apply", "-f", path])).unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no interface named \"nosuch\""));
    assert_eq!(ips(), [b.ip.to_string()]);
}

#[test]
fn the_agent_serves_metrics_follows_its_config_and_leaves_traffic_on_sigterm() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let file = rig.scratch_dir().unwrap().join("agent.toml");
    let pod = |pod: &pod_net_tests::Pod| {
        format!(
            "[[pods]]\nip = \"{}\"\nveth = \"{}\"\n",
            pod.ip, pod.host_veth
        )
    };
    std::fs::write(&file, pod(a)).unwrap();
    let mut agent = KillOnDrop(Some(
        node.pod_net_command(&[
            "agent",
            "--config",
            file.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:9565",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    ));
    let registered = |ip: &str| {
        node.pod_net(&["pod", "list", "--json"])
            .unwrap()
            .contains(ip)
    };
    wait_until("the initial config", WAIT, || registered(&a.ip.to_string())).unwrap();
    wait_until("/metrics", WAIT, || {
        let binary = sibling_binary("pod-net-probe");
        output_of(&mut node.command(&[
            binary.to_str().unwrap(),
            "get",
            "127.0.0.1:9565",
            "/metrics",
        ]))
        .is_ok_and(|output| output.status.success())
    })
    .unwrap();
    let scrape = parse_prometheus(&probe(node, &["get", "127.0.0.1:9565", "/metrics"]));
    assert_eq!(
        sample(&scrape, "pod_net_map_entries", ("map", "local_endpoints")),
        1
    );

    // A change to the file is applied within a bounded wait.
    std::fs::write(&file, pod(a) + &pod(b)).unwrap();
    wait_until("the changed config", WAIT, || registered(&b.ip.to_string())).unwrap();

    // SIGTERM: the agent exits cleanly and the datapath keeps forwarding.
    // SAFETY: signalling our own child.
    let child = agent.0.as_mut().unwrap();
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "agent exited with {status}");
    let before = node.counters().unwrap()["redirect_local"];
    a.ping(b.ip, 3).unwrap();
    assert!(node.counters().unwrap()["redirect_local"] >= before + 6);
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("stopping; the datapath keeps forwarding"),
        "{log}"
    );
}

/// Where the agent tests serve /metrics, inside the node's namespace.
const METRICS: &str = "127.0.0.1:9565";
/// How long to wait for an agent or monitor to act on its own.
const WAIT: Duration = Duration::from_secs(30);

/// Runs `work` on a thread inside `node`'s network namespace; sockets it
/// opens stay in that namespace.
fn in_node<T: Send>(node: &Node, work: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd as _;
    let netns = std::fs::File::open(format!("/run/netns/{}", node.netns)).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor we hold, for this thread only.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                work()
            })
            .join()
            .unwrap()
    })
}

/// One request on a new connection to the agent; the whole response, or
/// the error that cut it short (30 s at most).
fn exchange(node: &Node, request: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = in_node(node, || std::net::TcpStream::connect(METRICS))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn get_metrics(node: &Node) -> std::io::Result<String> {
    exchange(
        node,
        "GET /metrics HTTP/1.1\r\nHost: pod-net\r\nConnection: close\r\n\r\n",
    )
}

/// The agent on `node`, its log in a file, under an optional descriptor
/// limit; killed if the test fails before it is stopped.
struct Agent {
    child: KillOnDrop,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(
        rig: &Rig,
        node: &Node,
        config: Option<&std::path::Path>,
        nofile: Option<u32>,
    ) -> Self {
        let log = rig.scratch_dir().unwrap().join("agent.log");
        let binary = pod_net_tests::rig::pod_net_binary();
        let pin_dir = node.pin_dir.to_str().unwrap();
        let limit = nofile.map(|n| format!("--nofile={n}:{n}"));
        let mut args: Vec<&str> = Vec::new();
        if let Some(limit) = &limit {
            args.extend(["prlimit", limit, "--"]);
        }
        args.extend([
            binary.to_str().unwrap(),
            "--pin-dir",
            pin_dir,
            "agent",
            "--metrics-addr",
            METRICS,
        ]);
        if let Some(config) = config {
            args.extend(["--config", config.to_str().unwrap()]);
        }
        let child = node
            .command(&args)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Self {
            child: KillOnDrop(Some(child)),
            log,
        };
        wait_until("/metrics", WAIT, || {
            get_metrics(node).is_ok_and(|response| response.starts_with("HTTP/1.1 200 OK\r\n"))
        })
        .unwrap();
        agent
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// SIGTERM, and the exit status must be a success. Returns the log.
    fn stop(mut self) -> String {
        let child = self.child.0.as_mut().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        self.log()
    }
}

fn pod_entry(pod: &pod_net_tests::Pod) -> String {
    format!(
        "[[pods]]\nip = \"{}\"\nveth = \"{}\"\n",
        pod.ip, pod.host_veth
    )
}

fn is_registered(node: &Node, pod: &pod_net_tests::Pod) -> bool {
    node.pod_net(&["pod", "list", "--json"])
        .unwrap()
        .contains(&format!("\"{}\"", pod.ip))
}

/// More idle connections than the agent has descriptors for (it runs with
/// a limit of 128): /metrics still answers while they are held, a config
/// change made meanwhile is applied, and the log stays small.
#[test]
fn the_agent_outlasts_more_idle_connections_than_it_has_descriptors() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let config = rig.scratch_dir().unwrap().join("agent.toml");
    std::fs::write(&config, pod_entry(a)).unwrap();
    let agent = Agent::start(&rig, node, Some(&config), Some(128));
    wait_until("the initial config", WAIT, || is_registered(node, a)).unwrap();

    let idle: Vec<std::net::TcpStream> = in_node(node, || {
        (0..200)
            .map(|_| std::net::TcpStream::connect(METRICS).unwrap())
            .collect()
    });
    let response = get_metrics(node).expect("/metrics while 200 connections idle");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    let scrape = parse_prometheus(body);
    assert_eq!(
        sample(&scrape, "pod_net_map_entries", ("map", "local_endpoints")),
        1
    );
    std::fs::write(&config, pod_entry(a) + &pod_entry(b)).unwrap();
    wait_until("the config changed under load", WAIT, || {
        is_registered(node, b)
    })
    .unwrap();
    drop(idle);
    assert!(
        get_metrics(node)
            .unwrap()
            .starts_with("HTTP/1.1 200 OK\r\n")
    );

    let log = agent.stop();
    assert!(log.len() < 16 * 1024, "{} bytes of log", log.len());
    assert!(!log.contains("accepting a /metrics connection"), "{log}");
}

/// Descriptors run out under the agent (its limit lowered, after it
/// started, to what it has open plus 32, which idle connections fill up, as
/// many as come): accept errors
/// neither spin nor flood the log, and a config change that failed for
/// want of descriptors is applied once they are back, with /metrics.
#[test]
fn the_agent_recovers_when_descriptors_run_out() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    let config = rig.scratch_dir().unwrap().join("agent.toml");
    std::fs::write(&config, pod_entry(a)).unwrap();
    let agent = Agent::start(&rig, node, Some(&config), None);
    wait_until("the initial config", WAIT, || is_registered(node, a)).unwrap();
    let pid = agent.child.0.as_ref().unwrap().id();
    let in_use = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Room for a reconcile (maps, netlink, the file), once connections
    // leave it.
    let limit = format!("--nofile={0}:{0}", in_use + 32);
    pod_net_tests::cmd::run("prlimit", ["--pid", &pid.to_string(), &limit]).unwrap();

    // Connections keep coming until both the change and an accept have
    // failed (3,000 at most): which fails first is the scheduler's choice.
    std::fs::write(&config, pod_entry(a) + &pod_entry(b)).unwrap();
    let idle: Vec<std::net::TcpStream> = in_node(node, || {
        let mut idle = Vec::new();
        let both_failed = || {
            let log = agent.log();
            log.contains("not applied")
                && log.contains("accepting a /metrics connection: Too many open files")
        };
        while idle.len() < 3000 && !both_failed() {
            idle.push(std::net::TcpStream::connect(METRICS).unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
        idle
    });
    let log = agent.log();
    assert!(log.contains("not applied"), "{log}");
    drop(idle);
    wait_until("the config that failed", WAIT, || is_registered(node, b)).unwrap();
    assert!(
        get_metrics(node)
            .unwrap()
            .starts_with("HTTP/1.1 200 OK\r\n")
    );
    let log = agent.stop();
    assert!(
        log.contains("accepting a /metrics connection: Too many open files"),
        "{log}"
    );
    assert!(log.len() < 16 * 1024, "{} bytes of log:\n{log}", log.len());
}

/// GET and HEAD /metrics are answered, other methods get 405 and other
/// paths 404; a client that never finishes its headers is dropped.
#[test]
fn the_agent_answers_get_and_head_only_and_drops_a_slow_client() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let agent = Agent::start(&rig, node, None, None);
    let request = |method: &str, path: &str| {
        exchange(
            node,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: pod-net\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
        .unwrap()
    };
    let head_and_body = |response: &str| {
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_ascii_lowercase(), body.to_owned())
    };

    let (head, body) = head_and_body(&request("GET", "/metrics"));
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("# TYPE pod_net_packets_total counter"));
    let (head, body) = head_and_body(&request("HEAD", "/metrics"));
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: "), "{head}");
    assert_eq!(body, "");
    for method in ["POST", "PUT", "DELETE"] {
        let (head, body) = head_and_body(&request(method, "/metrics"));
        assert!(
            head.starts_with("http/1.1 405 method not allowed\r\n"),
            "{method}: {head}"
        );
        assert!(head.contains("\r\nallow: get, head"), "{head}");
        assert_eq!(body, "only GET and HEAD\n");
    }
    let (head, body) = head_and_body(&request("GET", "/nope"));
    assert!(head.starts_with("http/1.1 404 not found\r\n"), "{head}");
    assert_eq!(body, "try /metrics\n");

    // Half a request, never finished: the agent hangs up on it (within
    // the read timeout of 30 s), without an answer.
    let slow = in_node(node, || {
        use std::io::Write as _;
        let mut stream = std::net::TcpStream::connect(METRICS).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: pod-net\r\n")
            .unwrap();
        stream
    });
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    match std::io::Read::read_to_end(&mut &slow, &mut answer) {
        Ok(_) => assert!(answer.is_empty(), "{answer:?}"),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
    let log = agent.stop();
    assert!(
        log.contains("/metrics client dropped: read header from client timeout"),
        "{log}"
    );
}

/// A config the agent could not apply (a veth missing for now) is tried
/// again until it applies, and its error is logged once, not per retry.
#[test]
fn the_agent_retries_a_config_it_could_not_apply() {
    require_root!();
    let rig = Rig::build(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    node.pod_net(&["load"]).unwrap();
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    node.ip(&["link", "set", &b.host_veth, "down"]).unwrap();
    node.ip(&["link", "set", &b.host_veth, "name", "pn-late"])
        .unwrap();
    let config = rig.scratch_dir().unwrap().join("agent.toml");
    std::fs::write(&config, pod_entry(a) + &pod_entry(b)).unwrap();
    let agent = Agent::start(&rig, node, Some(&config), None);
    wait_until("the failure", WAIT, || agent.log().contains("not applied")).unwrap();
    let log = agent.log();
    let failed = log
        .lines()
        .find(|line| line.contains("not applied"))
        .unwrap();
    assert!(
        failed.contains(&format!("config {} not applied: ", config.display()))
            && failed.ends_with(&format!(
                "no interface named {:?} in this network namespace",
                b.host_veth
            )),
        "{log}"
    );
    assert!(!is_registered(node, a));

    node.ip(&["link", "set", "pn-late", "name", &b.host_veth])
        .unwrap();
    node.ip(&["link", "set", &b.host_veth, "up"]).unwrap();
    wait_until("the retry", WAIT, || {
        is_registered(node, a) && is_registered(node, b)
    })
    .unwrap();
    let log = agent.stop();
    assert!(log.contains(": 2 change(s) applied"), "{log}");
    let failures = log.matches("not applied").count();
    assert!(
        (1..=2).contains(&failures),
        "{failures} failures logged:\n{log}"
    );
}

/// `status` checks the underlay: up, with carrier, and holding the node IP.
#[test]
fn status_reports_an_underlay_that_is_down_or_lost_the_node_ip() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap();
    let (node, peer) = (rig.node(1), rig.node(2));
    node.load_cross_node().unwrap();
    let problems = || -> (Option<i32>, Vec<(String, String)>) {
        let output = output_of(&mut node.pod_net_command(&["status", "--json"])).unwrap();
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        let problems = status["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|problem| {
                (
                    problem["what"].as_str().unwrap().to_owned(),
                    problem["hint"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        (output.status.code(), problems)
    };
    assert_eq!(problems(), (Some(0), vec![]));

    node.ip(&["addr", "del", "192.168.100.1/24", "dev", "eth0"])
        .unwrap();
    assert_eq!(
        problems(),
        (
            Some(1),
            vec![(
                "the node IP 192.168.100.1 is not on the underlay eth0".to_owned(),
                "put it back (`ip addr add 192.168.100.1/PREFIX dev eth0`), or load with the \
                 node's address: `pod-net load --underlay eth0 --node-ip IP`"
                    .to_owned()
            )]
        )
    );
    node.ip(&["addr", "add", "192.168.100.1/24", "dev", "eth0"])
        .unwrap();
    assert_eq!(problems(), (Some(0), vec![]));

    node.ip(&["link", "set", "eth0", "down"]).unwrap();
    assert_eq!(
        problems(),
        (
            Some(1),
            vec![(
                "the underlay eth0 is down".to_owned(),
                "bring it up: `ip link set eth0 up`".to_owned()
            )]
        )
    );
    node.ip(&["link", "set", "eth0", "up"]).unwrap();
    peer.ip(&["link", "set", "eth0", "down"]).unwrap();
    assert_eq!(
        problems(),
        (
            Some(1),
            vec![(
                "the underlay eth0 is up but has no carrier".to_owned(),
                "check what eth0 is plugged into".to_owned()
            )]
        )
    );
    peer.ip(&["link", "set", "eth0", "up"]).unwrap();
    assert_eq!(problems(), (Some(0), vec![]));
}

/// `unload` says it deleted the tunnel device only when it did.
#[test]
fn unload_names_the_tunnel_device_only_when_it_deleted_one() {
    require_root!();
    let rig = Rig::build(&RigSpec {
        nodes: 2,
        pods_per_node: 0,
        ..RigSpec::default()
    })
    .unwrap();
    let node = rig.node(1);
    let pin_dir = node.pin_dir.display();
    node.load_cross_node().unwrap();
    assert_eq!(
        node.pod_net(&["unload"]).unwrap(),
        format!("unloaded {pin_dir} (1 attachment(s) removed, pnvxlan1 deleted)\n")
    );
    assert!(node.ip(&["link", "show", "pnvxlan1"]).is_err());

    node.load_cross_node().unwrap();
    node.ip(&["link", "del", "pnvxlan1"]).unwrap();
    assert_eq!(
        node.pod_net(&["unload"]).unwrap(),
        format!("unloaded {pin_dir} (1 attachment(s) removed)\n")
    );
}

/// Runs `pod-net args` on `node` with its stdout a pipe whose reader is
/// already gone, as `pod-net ... | head -c 1` leaves it.
fn with_reader_gone(node: &Node, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    node.pod_net_command(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_goes_away_ends_a_command_quietly_as_coreutils_do() {
    use std::os::unix::process::ExitStatusExt as _;
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    for args in [
        &["pod", "list", "--json"][..],
        &["pod", "list"],
        &["node", "list", "--json"],
        &["stats", "--explain"],
        &["stats", "--prometheus"],
        &["status"],
        &["gc", "--dry-run"],
    ] {
        let output = with_reader_gone(node, args);
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {output:?}"
        );
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{args:?}");
    }
    // The monitor meets the closed pipe with its first event, and turns
    // events off on its way out.
    let _flood = a.ping_flood(b.ip, 3000).unwrap();
    let output = with_reader_gone(node, &["monitor", "--all"]);
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(config_flags(node), 0);
}

#[test]
fn a_monitor_whose_reader_stalls_still_stops_on_sigint_and_turns_events_off() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let (a, b) = (rig.pod(1, 1), rig.pod(1, 2));
    // A reader that never reads: the pipe fills, and the monitor's writes
    // would block.
    let (_reader, writer) = std::io::pipe().unwrap();
    let mut monitor = KillOnDrop(Some(
        node.pod_net_command(&["monitor", "--all"])
            .stdout(writer)
            .spawn()
            .unwrap(),
    ));
    wait_until("the monitor to enable events", WAIT, || {
        config_flags(node) != 0
    })
    .unwrap();
    // 500 pings a second: well over a pipe's 64 KiB of event lines.
    let flood = a.ping_flood(b.ip, 1500).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let pid = monitor.0.as_ref().unwrap().id().to_string();
    pod_net_tests::cmd::run("kill", ["-INT", pid.as_str()]).unwrap();
    let child = monitor.0.as_mut().unwrap();
    wait_until("the monitor to stop on SIGINT", WAIT, || {
        child.try_wait().unwrap().is_some()
    })
    .unwrap();
    assert_eq!(config_flags(node), 0);
    drop(flood);
}

#[test]
fn events_a_killed_monitor_left_on_are_reported_and_turned_off_and_one_monitor_runs_at_once() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let mut monitor = KillOnDrop(Some(
        node.pod_net_command(&["monitor"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_until("the monitor to enable events", WAIT, || {
        config_flags(node) != 0
    })
    .unwrap();
    // A second one is refused while the first runs.
    let second = node.pod_net_output(&["monitor", "--count", "1"]).unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another `pod-net monitor` runs on"),
        "{stderr}"
    );
    // Nothing to repair while it runs.
    assert!(node.pod_net_output(&["status"]).unwrap().status.success());

    // SIGKILL: no chance to turn events off.
    let child = monitor.0.as_mut().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(config_flags(node), 0);
    let status = node.pod_net_output(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success(), "{text}");
    assert!(
        text.contains(
            "needs repair: turn events off: they are on, but no `pod-net monitor` runs to read \
             them"
        ),
        "{text}"
    );
    let gc = node.pod_net(&["gc"]).unwrap();
    assert!(gc.contains("turn events off"), "{gc}");
    assert_eq!(config_flags(node), 0);
    assert!(node.pod_net_output(&["status"]).unwrap().status.success());
}

/// Holds `node`'s pin dir lock (as a change under way does) for `seconds`
/// with `flock`, in the background; returns once it holds it. The file
/// `released` appears when it lets go.
fn hold_pin_dir(node: &Node, seconds: u32, released: &std::path::Path) -> std::process::Child {
    let holding = released.with_extension("holding");
    let script = format!(
        "touch {}; sleep {seconds}; touch {}",
        holding.display(),
        released.display()
    );
    let holder = node
        .command(&["flock", node.pin_dir.to_str().unwrap(), "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_until("flock to hold the pin dir", Duration::from_secs(5), || {
        holding.exists()
    })
    .unwrap();
    holder
}

/// `node list`, `pod list` and `status` read between two changes: a change
/// under way is waited for (it could otherwise be read half made, and a map
/// walked while it is written can miss entries); one that goes on past
/// 5 s is read as it is, and they say so.
#[test]
fn lists_and_status_wait_for_a_change_under_way_and_say_when_they_did_not() {
    require_root!();
    let rig = Rig::loaded(&RigSpec::default()).unwrap();
    let node = rig.node(1);
    let scratch = rig.scratch_dir().unwrap();
    let reads: [&[&str]; 3] = [&["node", "list"], &["pod", "list"], &["status"]];

    // A short change: each read comes after it, with no warning.
    for read in reads {
        let released = scratch.join(format!("released-{}", read[0]));
        let mut holder = hold_pin_dir(node, 1, &released);
        let output = node.pod_net_output(read).unwrap();
        assert!(output.status.success(), "{output:?}");
        assert!(released.exists(), "{read:?} read before the change ended");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("converging"));
        holder.wait().unwrap();
    }

    // A change held past the wait: all three read anyway, and say so.
    let released = scratch.join("released-long");
    let mut holder = hold_pin_dir(node, 10, &released);
    let readers: Vec<std::process::Child> = reads
        .iter()
        .map(|read| {
            node.pod_net_command(read)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<std::process::Output> = readers
        .into_iter()
        .map(|reader| reader.wait_with_output().unwrap())
        .collect();
    let warning = format!(
        "pod-net: warning: a change held {} for 5 s; listing the maps as they are (run again \
         for a list between changes)\n",
        node.pin_dir.display()
    );
    for output in &outputs[..2] {
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), warning);
    }
    let status = String::from_utf8_lossy(&outputs[2].stdout);
    assert!(status.contains("state:     converging"), "{status}");
    holder.wait().unwrap();
}
