//! `pod-net-cni`: a chained CNI plugin (spec 0.3.x to 1.1.0) that runs
//! after `bridge` or `ptp` and registers the pod with the pinned datapath.
//!
//! Everything goes through [`run`], which maps the environment and stdin to
//! what the plugin prints and its exit status, so the binary stays a shell.
mod types;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use pod_net_common::{endpoint::Endpoint, program_names};
pub use types::SUPPORTED_VERSIONS;
use types::{Attachment, CniError, NetConf, PrevResult, codes};

use crate::{
    datapath::{
        Datapath, Locked, attach, endpoint_ip,
        pins::{self, PinDir},
    },
    error::{self, NodeError},
    mac::MacAddr,
    node::endpoints::{self, PodAddError, PodSpec},
    ops::gc,
    sys::{
        netdev::{self, Link, LinkKind},
        netns,
    },
};

/// What the plugin prints on stdout, and its exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

/// A failure as CNI reports it.
#[derive(Debug)]
struct Failure {
    code: u32,
    msg: String,
    details: String,
}

impl Failure {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// A library failure: `code` unless the error is one of the typed
    /// ones, whose code says more (see [`code_of`]); then `msg` names it.
    fn with_details(code: u32, msg: impl Into<String>, error: &anyhow::Error) -> Self {
        let msg = msg.into();
        let (code, msg) = match error::find::<NodeError>(error) {
            Some(typed) => (code_of(typed), format!("{msg}: {typed}")),
            None => (code, msg),
        };
        Self {
            code,
            msg,
            details: format!("{error:#}"),
        }
    }
}

/// The spec's code for a typed failure: "try again later" (11) where
/// waiting can help (the datapath not loaded yet, a map full until pods
/// go), "invalid network configuration" (7) for interfaces that cannot be
/// a pod's and for an address another pod holds (which ADD does not meet:
/// it replaces, as the newest owner of an address IPAM handed out is the
/// right one), and an I/O failure (5) for pins another build made, which
/// waiting does not mend.
const fn code_of(error: &NodeError) -> u32 {
    match error {
        NodeError::NotLoaded { .. } | NodeError::MapFull { .. } => codes::TRY_AGAIN_LATER,
        NodeError::NoSuchInterface { .. }
        | NodeError::NotAVeth { .. }
        | NodeError::AlreadyRegistered { .. } => codes::INVALID_CONFIG,
        NodeError::LayoutMismatch { .. } => codes::IO_FAILURE,
    }
}

type Step<T> = Result<T, Failure>;

/// The `CNI_*` variables, as read from the environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    #[must_use]
    pub fn from_process() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The variables as `var` gives them; an empty one counts as unset.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|value| !value.is_empty());
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }
}

/// Runs one plugin invocation.
#[must_use]
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let version_hint = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|conf| conf["cniVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.1.0".to_owned());
    match dispatch(env, stdin) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(failure) => {
            let error = CniError {
                cni_version: version_hint,
                code: failure.code,
                msg: failure.msg,
                details: failure.details,
            };
            Outcome {
                stdout: serde_json::to_string(&error).unwrap_or_default(),
                exit_code: 1,
            }
        }
    }
}

fn dispatch(env: &Env, stdin: &[u8]) -> Step<String> {
    let Some(command) = env.command.as_deref() else {
        return Err(Failure::new(codes::BAD_ENV, "CNI_COMMAND is not set"));
    };
    if command == "VERSION" {
        return Ok(version());
    }
    let conf = parse_conf(stdin)?;
    let command = parse_command(command)?;
    if command == Command::Check && conf.cni_version.starts_with("0.3.") {
        return Err(Failure::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later; the configuration says {}",
                conf.cni_version
            ),
        ));
    }
    let pins = pin_dir(&conf.pin_dir)?;
    run_command(command, env, &conf, &pins)
}

/// Runs `command` with the configuration read and its pin dir checked.
fn run_command(command: Command, env: &Env, conf: &NetConf, pins: &PinDir) -> Step<String> {
    match command {
        Command::Add => add(env, conf, pins),
        Command::Del => del(env, pins).map(|()| String::new()),
        Command::Check => check(env, conf, pins).map(|()| String::new()),
        Command::Gc => gc(conf, pins).map(|()| String::new()),
        Command::Status => status(pins).map(|()| String::new()),
    }
}

/// The commands that read a configuration (all but VERSION).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

/// `CNI_COMMAND` as one of [`Command`]; anything else is a bad
/// environment (reported once the configuration is read).
fn parse_command(command: &str) -> Step<Command> {
    match command {
        "ADD" => Ok(Command::Add),
        "DEL" => Ok(Command::Del),
        "CHECK" => Ok(Command::Check),
        "GC" => Ok(Command::Gc),
        "STATUS" => Ok(Command::Status),
        other => Err(Failure::new(
            codes::BAD_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        )),
    }
}

fn version() -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn parse_conf(stdin: &[u8]) -> Step<NetConf> {
    let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|err| {
        Failure::new(
            codes::DECODE_FAILURE,
            format!("the network configuration on stdin is not JSON: {err}"),
        )
    })?;
    let conf: NetConf = serde_json::from_value(value).map_err(|err| {
        Failure::new(
            codes::INVALID_CONFIG,
            format!("invalid network configuration: {err}"),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(Failure::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if conf.plugin_type.is_empty() || conf.name.is_empty() {
        return Err(Failure::new(
            codes::INVALID_CONFIG,
            "invalid network configuration: name and type must not be empty",
        ));
    }
    Ok(conf)
}

/// A `pinDir` that `pod-net load` could never have made is bad config
/// (code 7), not "try again later": it must be absolute, without `.` or
/// `..`, and on bpffs (or under /sys/fs/bpf, where `load` mounts it).
/// The configured pin dir, if it is one pod-net could have loaded into:
/// anything else is a bad configuration, not a reason to try again.
fn pin_dir(pin_dir: &str) -> Step<PinDir> {
    PinDir::checked(pin_dir)
        .and_then(|pins| pins::needs_bpffs_mount(pins.root()).map(|_| pins))
        .map_err(|err| {
            Failure::new(
                codes::INVALID_CONFIG,
                format!("invalid network configuration: {err:#}"),
            )
        })
}

fn required<'a>(value: Option<&'a String>, name: &str) -> Step<&'a str> {
    value
        .map(String::as_str)
        .ok_or_else(|| Failure::new(codes::BAD_ENV, format!("{name} is not set")))
}

/// The pod's side as the previous plugin left it: the sandbox interface's
/// IPs from prevResult, and its MAC and host veth from the kernel.
struct Sandbox {
    /// prevResult's addresses for the interface, each configured on it.
    ips: Vec<IpAddr>,
    mac: MacAddr,
    host_veth: Link,
}

fn inspect_sandbox(env: &Env, conf: &NetConf) -> Step<Sandbox> {
    let netns = required(env.netns.as_ref(), "CNI_NETNS")?;
    let ifname = required(env.ifname.as_ref(), "CNI_IFNAME")?.to_owned();
    let ips = prev_ips(conf, &ifname)?;

    let netns = netns::open(Path::new(netns)).map_err(|err| {
        Failure::with_details(
            codes::BAD_ENV,
            format!("CNI_NETNS {netns:?} is not usable"),
            &err,
        )
    })?;
    let (pod_link, configured) = netns::run_in_file(&netns, move || {
        let link = netdev::link_by_name(&ifname)?
            .with_context(|| format!("no {ifname} in the sandbox"))?;
        let configured: Vec<IpAddr> = netdev::all_addresses()?
            .into_iter()
            .filter(|address| address.index == link.index)
            .map(|address| address.ip)
            .collect();
        Ok((link, configured))
    })
    .map_err(|err| Failure::with_details(codes::IO_FAILURE, "cannot inspect the sandbox", &err))?;
    // An address the previous plugin did not put on the interface (the
    // gateway, say) is not the pod's to claim.
    if let Some(ip) = ips.iter().find(|ip| !configured.contains(ip)) {
        return Err(Failure::new(
            codes::INVALID_CONFIG,
            format!(
                "prevResult gives {ip} to {}, but {} in the sandbox does not have it",
                pod_link.name, pod_link.name
            ),
        ));
    }
    let mac = pod_link
        .mac
        .ok_or_else(|| Failure::new(codes::IO_FAILURE, format!("{} has no MAC", pod_link.name)))?;
    let host_index = pod_link.peer_index.ok_or_else(|| {
        Failure::new(
            codes::INVALID_CONFIG,
            format!("{} in the sandbox is not a veth", pod_link.name),
        )
    })?;
    let host_veth = netdev::link_by_index(host_index)
        .ok()
        .flatten()
        .filter(|link| link.kind == LinkKind::Veth && link.peer_index == Some(pod_link.index))
        .ok_or_else(|| {
            Failure::new(
                codes::INVALID_CONFIG,
                format!(
                    "the host end of {} (ifindex {host_index}) is not a veth in this namespace",
                    pod_link.name
                ),
            )
        })?;
    Ok(Sandbox {
        ips,
        mac,
        host_veth,
    })
}

/// The addresses prevResult gives the sandbox interface `ifname` (each
/// IPv4-mapped one as IPv4), in its order.
fn prev_ips(conf: &NetConf, ifname: &str) -> Step<Vec<IpAddr>> {
    let prev_result = conf.prev_result.as_ref().ok_or_else(|| {
        Failure::new(
            codes::INVALID_CONFIG,
            "no prevResult: pod-net-cni is chained after a plugin that creates the pod's \
             interface (bridge or ptp)",
        )
    })?;
    let prev: PrevResult = serde_json::from_str(prev_result.get())
        .map_err(|err| Failure::new(codes::INVALID_CONFIG, format!("invalid prevResult: {err}")))?;
    // The sandbox interface by name and sandbox, not by position: bridge
    // lists cni0 and the host veth first.
    let index = prev
        .interfaces
        .iter()
        .position(|interface| interface.name == ifname && !interface.sandbox.is_empty())
        .ok_or_else(|| {
            Failure::new(
                codes::INVALID_CONFIG,
                format!("prevResult lists no sandbox interface named {ifname}"),
            )
        })?;
    prev.ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| {
            let address = ip.address.split('/').next().unwrap_or_default();
            address
                .parse::<IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| {
                    Failure::new(
                        codes::INVALID_CONFIG,
                        format!("prevResult has an invalid address {:?}", ip.address),
                    )
                })
        })
        .collect()
}

/// Fails with `code` unless `pod-net load` has run: "try again later" for
/// ADD and CHECK (the node is still starting), "not available" for STATUS.
fn require_loaded(pins: &PinDir, code: u32) -> Step<()> {
    pins.require_loaded()
        .map_err(|err| Failure::new(code, format!("{err:#}")))
}

fn add(env: &Env, conf: &NetConf, pins: &PinDir) -> Step<String> {
    let container_id = required(env.container_id.as_ref(), "CNI_CONTAINERID")?;
    let ifname = required(env.ifname.as_ref(), "CNI_IFNAME")?;
    required(env.path.as_ref(), "CNI_PATH")?;
    let sandbox = inspect_sandbox(env, conf)?;
    if conf.optional && !pins.is_loaded() {
        return Ok(previous_result(conf));
    }
    require_loaded(pins, codes::TRY_AGAIN_LATER)?;
    let specs: Vec<PodSpec> = sandbox
        .ips
        .iter()
        .map(|ip| PodSpec {
            ip: *ip,
            veth: sandbox.host_veth.name.clone(),
            mac: Some(sandbox.mac),
            container_id: container_id.to_owned(),
            pod_ifname: ifname.to_owned(),
            replace: true,
            no_bypass: conf.no_bypass,
            // Checked by inspect_sandbox: the namespace to look in first.
            pod_netns: env.netns.as_ref().map(PathBuf::from),
        })
        .collect();
    let mut datapath = locked(pins)?;
    // A node address is refused before the first registration: nothing
    // half-written.
    endpoints::add_pod(&mut datapath, &specs).map_err(|failure| match failure {
        PodAddError::NodeAddress { ip, error } => Failure::with_details(
            codes::INVALID_CONFIG,
            format!("prevResult gives the pod {ip}, an address of this node"),
            &error,
        ),
        PodAddError::Register { ip, error } => {
            Failure::with_details(codes::IO_FAILURE, format!("registering {ip}"), &error)
        }
    })?;
    Ok(previous_result(conf))
}

/// ADD's result: the previous one, byte for byte.
fn previous_result(conf: &NetConf) -> String {
    conf.prev_result
        .as_ref()
        .map(|raw| raw.get().to_owned())
        .unwrap_or_default()
}

fn del(env: &Env, pins: &PinDir) -> Step<()> {
    let container_id = required(env.container_id.as_ref(), "CNI_CONTAINERID")?;
    let ifname = required(env.ifname.as_ref(), "CNI_IFNAME")?;
    // Nothing loaded means nothing to clean up: DEL must succeed.
    if !pins.is_loaded() {
        return Ok(());
    }
    endpoints::remove_matching(&mut locked(pins)?, |endpoint| {
        endpoints::owner(endpoint) == (container_id.to_owned(), ifname.to_owned())
    })
    .map(drop)
    .map_err(|err| Failure::with_details(codes::IO_FAILURE, "removing the pod", &err))
}

fn check(env: &Env, conf: &NetConf, pins: &PinDir) -> Step<()> {
    let container_id = required(env.container_id.as_ref(), "CNI_CONTAINERID")?;
    let ifname = required(env.ifname.as_ref(), "CNI_IFNAME")?;
    let sandbox = inspect_sandbox(env, conf)?;
    if conf.optional && !pins.is_loaded() {
        return Ok(());
    }
    require_loaded(pins, codes::TRY_AGAIN_LATER)?;
    let datapath = Datapath::open(pins)
        .map_err(|err| Failure::with_details(codes::IO_FAILURE, "opening the datapath", &err))?;
    let entries: HashMap<IpAddr, _> = datapath
        .endpoint_entries()
        .map_err(|err| Failure::with_details(codes::IO_FAILURE, "reading the datapath", &err))?
        .into_iter()
        .map(|(key, endpoint)| (endpoint_ip(&key), endpoint))
        .collect();
    check_entries(&entries, &sandbox, container_id, ifname)?;
    let attached = attach::is_attached(pins, program_names::POD_EGRESS, &sandbox.host_veth)
        .map_err(|err| Failure::with_details(codes::IO_FAILURE, "querying the attachment", &err))?;
    if !attached {
        return Err(Failure::new(
            codes::CHECK_FAILED,
            format!("pod_egress is not attached to {}", sandbox.host_veth.name),
        ));
    }
    Ok(())
}

/// CHECK's verdict on the entries (by address) for the sandbox's
/// addresses: each registered, to this container's interface, on its host
/// veth, with its MAC.
fn check_entries(
    entries: &HashMap<IpAddr, Endpoint>,
    sandbox: &Sandbox,
    container_id: &str,
    ifname: &str,
) -> Step<()> {
    let failed = |msg: String| Failure::new(codes::CHECK_FAILED, msg);
    for ip in &sandbox.ips {
        let endpoint = entries
            .get(ip)
            .ok_or_else(|| failed(format!("{ip} is not registered")))?;
        if endpoints::owner(endpoint) != (container_id.to_owned(), ifname.to_owned()) {
            return Err(failed(format!("{ip} is registered to another container")));
        }
        if endpoint.ifindex != sandbox.host_veth.index {
            return Err(failed(format!(
                "{ip} points at ifindex {}, not {}",
                endpoint.ifindex, sandbox.host_veth.name
            )));
        }
        if endpoint.mac != sandbox.mac.0 {
            return Err(failed(format!(
                "{ip} has MAC {} stored, the pod has {}",
                MacAddr(endpoint.mac),
                sandbox.mac
            )));
        }
    }
    Ok(())
}

fn gc(conf: &NetConf, pins: &PinDir) -> Step<()> {
    let keep = gc_keep(conf)?;
    if !pins.is_loaded() {
        return Ok(());
    }
    let mut datapath = locked(pins)?;
    endpoints::remove_matching(&mut datapath, |endpoint| {
        gc_removes(&endpoints::owner(endpoint), &keep)
    })
    .map_err(|err| Failure::with_details(codes::IO_FAILURE, "removing stale pods", &err))?;
    // Then what no runtime knows about: pods whose veth is gone, and
    // attachments an interrupted ADD or DEL left behind.
    gc::repair(&mut datapath, false)
        .map(drop)
        .map_err(|err| Failure::with_details(codes::IO_FAILURE, "repairing the datapath", &err))
}

/// The (container ID, interface) pairs GC keeps: the runtime's valid
/// attachments, under their final name or the older one.
fn gc_keep(conf: &NetConf) -> Step<HashSet<(String, String)>> {
    let Some(valid) = conf
        .valid_attachments
        .as_ref()
        .or(conf.attachments.as_ref())
    else {
        return Err(Failure::new(
            codes::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
        ));
    };
    Ok(valid
        .iter()
        .map(
            |Attachment {
                 container_id,
                 ifname,
             }| (container_id.clone(), ifname.clone()),
        )
        .collect())
}

/// Whether GC removes an entry with this owner (container ID, interface).
fn gc_removes(owner: &(String, String), keep: &HashSet<(String, String)>) -> bool {
    // Entries without an owner were made by hand (`pod-net pod add`).
    !owner.0.is_empty() && !keep.contains(owner)
}

/// The datapath under its pin dir's lock, for one call's changes.
fn locked(pins: &PinDir) -> Step<Locked> {
    Locked::new(pins)
        .map_err(|err| Failure::with_details(codes::IO_FAILURE, "opening the datapath", &err))
}

fn status(pins: &PinDir) -> Step<()> {
    require_loaded(pins, codes::NOT_AVAILABLE)
}

#[cfg(test)]
mod tests {
    use pod_net_common::endpoint::{CONTAINER_ID_LEN, IFNAME_LEN};
    use serde_json::{Value, json};

    use super::*;
    use crate::error::Capacity;

    /// A pin dir nothing was loaded into; nothing here creates it.
    const UNLOADED: &str = "/nonexistent/pod-net-unit-test/pins";
    const NETNS: &str = "/nonexistent/pod-net-unit-test/netns";

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_vars(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    /// Every variable a runtime sets for ADD but `without`, and no
    /// `CNI_COMMAND` ([`run_command`] is given the command).
    fn env_without(without: &[&str]) -> Env {
        let all = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        let vars: Vec<_> = all
            .into_iter()
            .filter(|(name, _)| !without.contains(name))
            .collect();
        env(&vars)
    }

    fn conf(value: &Value) -> NetConf {
        parse_conf(value.to_string().as_bytes()).unwrap()
    }

    /// A step's outcome as (code, message) on failure.
    type Verdict = Result<(), (u32, String)>;
    type Entries = HashMap<IpAddr, Endpoint>;

    fn failure<T: std::fmt::Debug>(step: Step<T>) -> (u32, String) {
        let failure = step.unwrap_err();
        (failure.code, failure.msg)
    }

    /// What the bridge plugin (spec 1.0.0) returns for a pod: the bridge,
    /// the host veth, then the sandbox interface.
    fn bridge_result() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "02:00:00:00:00:01"},
                {"name": "veth1a2b3c4d", "mac": "02:00:00:00:00:02"},
                {"name": "eth0", "mac": "02:00:00:00:00:0a", "sandbox": "/var/run/netns/pod-a"}
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    fn with_prev(prev: &Value) -> NetConf {
        conf(&json!({
            "cniVersion": "1.0.0",
            "name": "podnet",
            "type": "pod-net-cni",
            "pinDir": UNLOADED,
            "prevResult": prev,
        }))
    }

    #[test]
    fn the_environment_reads_empty_as_unset() {
        let read = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=a"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_OTHER", "x"),
        ]);
        assert_eq!(read.command.as_deref(), Some("ADD"));
        assert_eq!(read.container_id.as_deref(), Some("c1"));
        assert_eq!(read.netns, None);
        assert_eq!(read.ifname.as_deref(), Some("eth0"));
        assert_eq!(read.args.as_deref(), Some("K8S_POD_NAME=a"));
        assert_eq!(read.path.as_deref(), Some("/opt/cni/bin"));
        let none = env(&[]);
        assert!(none.command.is_none() && none.container_id.is_none() && none.path.is_none());
    }

    #[test]
    fn commands() {
        for (name, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("GC", Command::Gc),
            ("STATUS", Command::Status),
        ] {
            assert_eq!(parse_command(name).unwrap(), command);
        }
        for name in ["add", "FROB", "VERSION ", ""] {
            assert_eq!(
                failure(parse_command(name)),
                (
                    codes::BAD_ENV,
                    format!(
                        "CNI_COMMAND {name:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
                    )
                )
            );
        }
    }

    #[test]
    fn dispatch_before_the_pin_dir() {
        // No command at all, whatever the input.
        assert_eq!(
            failure(dispatch(&Env::default(), b"{not json")),
            (codes::BAD_ENV, "CNI_COMMAND is not set".to_owned())
        );
        // VERSION reads no configuration.
        for stdin in [&b""[..], b"{not json", br#"{"cniVersion": "0.1.0"}"#] {
            let version: Value = serde_json::from_str(
                &dispatch(&env(&[("CNI_COMMAND", "VERSION")]), stdin).unwrap(),
            )
            .unwrap();
            assert_eq!(
                version,
                json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
            );
        }
        // The configuration is read before the command is judged: an
        // unknown command with a malformed configuration is a decode error.
        for command in ["ADD", "FROB"] {
            let (code, msg) = failure(dispatch(&env(&[("CNI_COMMAND", command)]), b"{not json"));
            assert_eq!(code, codes::DECODE_FAILURE, "{command}");
            assert!(
                msg.starts_with("the network configuration on stdin is not JSON: "),
                "{msg}"
            );
        }
    }

    #[test]
    fn configurations() {
        let cases: &[(&str, u32, &str)] = &[
            (
                "",
                codes::DECODE_FAILURE,
                "the network configuration on stdin is not JSON: ",
            ),
            (
                "{not json",
                codes::DECODE_FAILURE,
                "the network configuration on stdin is not JSON: ",
            ),
            (
                r#"{"name": "n", "type": "pod-net-cni"}"#,
                codes::INVALID_CONFIG,
                "invalid network configuration: missing field `cniVersion`",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni", "pinDir": 5}"#,
                codes::INVALID_CONFIG,
                "invalid network configuration: invalid type: integer `5`, expected a string",
            ),
            (
                r#""1.0.0""#,
                codes::INVALID_CONFIG,
                "invalid network configuration: invalid type: string \"1.0.0\", expected struct \
                 NetConf",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni", "noBypass": "yes"}"#,
                codes::INVALID_CONFIG,
                "invalid network configuration: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"cniVersion": "0.2.0", "name": "n", "type": "pod-net-cni"}"#,
                codes::INCOMPATIBLE_VERSION,
                "cniVersion 0.2.0 is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)",
            ),
            // The version is judged before the rest.
            (
                r#"{"cniVersion": "2.0.0", "name": "", "type": ""}"#,
                codes::INCOMPATIBLE_VERSION,
                "cniVersion 2.0.0 is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "", "type": "pod-net-cni"}"#,
                codes::INVALID_CONFIG,
                "invalid network configuration: name and type must not be empty",
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "n", "type": ""}"#,
                codes::INVALID_CONFIG,
                "invalid network configuration: name and type must not be empty",
            ),
        ];
        for (stdin, code, msg) in cases {
            let (got_code, got_msg) = failure(parse_conf(stdin.as_bytes()));
            assert_eq!(got_code, *code, "{stdin}: {got_msg}");
            assert!(
                got_msg.starts_with(msg),
                "{stdin}\n got: {got_msg}\nwant: {msg}"
            );
        }

        for version in SUPPORTED_VERSIONS {
            // Other plugins' fields pass; ours take their defaults.
            let read = conf(
                &json!({"cniVersion": version, "name": "n", "type": "pod-net-cni",
                "ipam": {"type": "host-local"}, "runtimeConfig": {}}),
            );
            assert_eq!(read.cni_version, *version);
            assert_eq!(read.pin_dir, crate::datapath::pins::DEFAULT_PIN_DIR);
            assert!(!read.no_bypass);
            assert!(read.prev_result.is_none() && read.valid_attachments.is_none());
        }
        let read = conf(
            &json!({"cniVersion": "1.1.0", "name": "n", "type": "pod-net-cni",
            "pinDir": "/sys/fs/bpf/node-2", "noBypass": true, "prevResult": null}),
        );
        assert_eq!(read.pin_dir, "/sys/fs/bpf/node-2");
        assert!(read.no_bypass);
        assert!(read.prev_result.is_none());
    }

    #[test]
    fn which_command_needs_which_variable() {
        let good = with_prev(&bridge_result());
        let pins = PinDir::new(UNLOADED);
        let not_usable = format!("CNI_NETNS {NETNS:?} is not usable");
        let not_set = |name: &str| Err((codes::BAD_ENV, format!("{name} is not set")));
        let cases: Vec<(Command, Vec<&str>, Verdict)> = vec![
            // ADD needs all four; past them, it opens CNI_NETNS.
            (
                Command::Add,
                vec![],
                Err((codes::BAD_ENV, not_usable.clone())),
            ),
            (
                Command::Add,
                vec!["CNI_CONTAINERID"],
                not_set("CNI_CONTAINERID"),
            ),
            (Command::Add, vec!["CNI_IFNAME"], not_set("CNI_IFNAME")),
            (Command::Add, vec!["CNI_PATH"], not_set("CNI_PATH")),
            (Command::Add, vec!["CNI_NETNS"], not_set("CNI_NETNS")),
            (
                Command::Add,
                vec!["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH", "CNI_NETNS"],
                not_set("CNI_CONTAINERID"),
            ),
            (
                Command::Add,
                vec!["CNI_PATH", "CNI_NETNS"],
                not_set("CNI_PATH"),
            ),
            // CHECK: the same but CNI_PATH.
            (
                Command::Check,
                vec![],
                Err((codes::BAD_ENV, not_usable.clone())),
            ),
            (
                Command::Check,
                vec!["CNI_PATH"],
                Err((codes::BAD_ENV, not_usable.clone())),
            ),
            (
                Command::Check,
                vec!["CNI_CONTAINERID"],
                not_set("CNI_CONTAINERID"),
            ),
            (Command::Check, vec!["CNI_IFNAME"], not_set("CNI_IFNAME")),
            (Command::Check, vec!["CNI_NETNS"], not_set("CNI_NETNS")),
            // DEL: the owner alone; with nothing loaded it succeeds.
            (Command::Del, vec![], Ok(())),
            (Command::Del, vec!["CNI_NETNS", "CNI_PATH"], Ok(())),
            (
                Command::Del,
                vec!["CNI_CONTAINERID"],
                not_set("CNI_CONTAINERID"),
            ),
            (Command::Del, vec!["CNI_IFNAME"], not_set("CNI_IFNAME")),
            // GC and STATUS need none.
            (
                Command::Gc,
                vec!["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
                Err((
                    codes::INVALID_CONFIG,
                    "GC needs cni.dev/valid-attachments".to_owned(),
                )),
            ),
            (
                Command::Status,
                vec!["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
                Err((
                    codes::NOT_AVAILABLE,
                    format!(
                        "pod-net is not loaded at {UNLOADED} (no pinned program); run `pod-net \
                         load` first"
                    ),
                )),
            ),
        ];
        for (command, without, want) in cases {
            let env = env_without(&without);
            let got = run_command(command, &env, &good, &pins)
                .map(|stdout| assert_eq!(stdout, ""))
                .map_err(|failure| (failure.code, failure.msg));
            assert_eq!(got, want, "{command:?} without {without:?}");
        }
        // ADD and CHECK read prevResult before they look at the sandbox.
        let no_prev = conf(&json!({"cniVersion": "1.0.0", "name": "n", "type": "pod-net-cni"}));
        for command in [Command::Add, Command::Check] {
            let (code, msg) = failure(run_command(command, &env_without(&[]), &no_prev, &pins));
            assert_eq!(code, codes::INVALID_CONFIG);
            assert_eq!(
                msg,
                "no prevResult: pod-net-cni is chained after a plugin that creates the pod's \
                 interface (bridge or ptp)"
            );
        }
        // GC with the runtime's list, nothing loaded: nothing to do.
        let gc_conf = conf(
            &json!({"cniVersion": "1.1.0", "name": "n", "type": "pod-net-cni",
            "cni.dev/valid-attachments": []}),
        );
        assert_eq!(
            run_command(Command::Gc, &Env::default(), &gc_conf, &pins).unwrap(),
            ""
        );
    }

    #[test]
    fn typed_failures_get_their_codes() {
        let cases = [
            (
                NodeError::NotLoaded {
                    pin_dir: PathBuf::from("/sys/fs/bpf/pod-net"),
                },
                codes::TRY_AGAIN_LATER,
            ),
            (
                NodeError::MapFull {
                    capacity: Capacity::Pods,
                    size: 2,
                    fitted: None,
                },
                codes::TRY_AGAIN_LATER,
            ),
            (
                NodeError::MapFull {
                    capacity: Capacity::RemotePods,
                    size: 8,
                    fitted: Some((3, 5)),
                },
                codes::TRY_AGAIN_LATER,
            ),
            (
                NodeError::NoSuchInterface {
                    name: "veth-x".to_owned(),
                },
                codes::INVALID_CONFIG,
            ),
            (
                NodeError::NotAVeth {
                    name: "cni0".to_owned(),
                },
                codes::INVALID_CONFIG,
            ),
            (
                NodeError::AlreadyRegistered {
                    ip: "10.244.1.5".parse().unwrap(),
                    ifindex: 7,
                    mac: MacAddr([2, 0, 0, 0, 0, 0xb]),
                    owner: " by container c2".to_owned(),
                },
                codes::INVALID_CONFIG,
            ),
            (
                NodeError::LayoutMismatch {
                    map: "local_endpoints",
                    source: aya::maps::MapError::KeyNotFound,
                },
                codes::IO_FAILURE,
            ),
        ];
        for (typed, code) in cases {
            assert_eq!(code_of(&typed), code, "{typed}");
            // Found anywhere in the chain, under any context; it names
            // itself after the call's message.
            let message = typed.to_string();
            let error = anyhow::Error::new(typed)
                .context("adding 10.244.1.5")
                .context("the pod");
            let failure =
                Failure::with_details(codes::IO_FAILURE, "registering 10.244.1.5", &error);
            assert_eq!(failure.code, code);
            assert_eq!(failure.msg, format!("registering 10.244.1.5: {message}"));
            // (and its own source after it, if it has one)
            let details = format!("the pod: adding 10.244.1.5: {message}");
            assert!(failure.details.starts_with(&details), "{}", failure.details);
        }
        // Untyped: the call's code and message, the chain in the details.
        let error = anyhow::anyhow!("permission denied").context("opening local_endpoints");
        let failure = Failure::with_details(codes::IO_FAILURE, "opening the datapath", &error);
        assert_eq!(failure.code, codes::IO_FAILURE);
        assert_eq!(failure.msg, "opening the datapath");
        assert_eq!(
            failure.details,
            "opening local_endpoints: permission denied"
        );
    }

    #[test]
    fn failures_print_cnis_error_object() {
        let cases: &[(Env, &[u8], &str)] = &[
            (
                Env::default(),
                br#"{"cniVersion": "0.4.0", "name": "n", "type": "pod-net-cni"}"#,
                r#"{"cniVersion":"0.4.0","code":4,"msg":"CNI_COMMAND is not set"}"#,
            ),
            // Without a readable version, the newest.
            (
                Env::default(),
                b"{not json",
                r#"{"cniVersion":"1.1.0","code":4,"msg":"CNI_COMMAND is not set"}"#,
            ),
            (
                Env::default(),
                br#"{"cniVersion": 1}"#,
                r#"{"cniVersion":"1.1.0","code":4,"msg":"CNI_COMMAND is not set"}"#,
            ),
            // A version this plugin does not speak is still the caller's.
            (
                env(&[("CNI_COMMAND", "ADD")]),
                br#"{"cniVersion": "0.2.0", "name": "n", "type": "pod-net-cni"}"#,
                r#"{"cniVersion":"0.2.0","code":1,"msg":"cniVersion 0.2.0 is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)"}"#,
            ),
            // 0.3.x chains ADD and DEL; CHECK came with 0.4.0.
            (
                env(&[("CNI_COMMAND", "CHECK")]),
                br#"{"cniVersion": "0.3.1", "name": "n", "type": "pod-net-cni"}"#,
                r#"{"cniVersion":"0.3.1","code":1,"msg":"CHECK needs cniVersion 0.4.0 or later; the configuration says 0.3.1"}"#,
            ),
        ];
        for (env, stdin, stdout) in cases {
            assert_eq!(
                run(env, stdin),
                Outcome {
                    stdout: (*stdout).to_owned(),
                    exit_code: 1
                }
            );
        }
        let version = run(&env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(version.exit_code, 0);
        assert!(version.stdout.contains("supportedVersions"));
        // Details only when there are some.
        let error = |details: &str| CniError {
            cni_version: "1.0.0".to_owned(),
            code: 5,
            msg: "registering 10.244.1.5".to_owned(),
            details: details.to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&error("")).unwrap(),
            r#"{"cniVersion":"1.0.0","code":5,"msg":"registering 10.244.1.5"}"#
        );
        assert_eq!(
            serde_json::to_string(&error("reading local_endpoints: EPERM")).unwrap(),
            r#"{"cniVersion":"1.0.0","code":5,"msg":"registering 10.244.1.5","details":"reading local_endpoints: EPERM"}"#
        );
    }

    #[test]
    fn prev_result_addresses_of_the_sandbox_interface() {
        let v4 =
            |address: &str, interface: usize| json!({"address": address, "interface": interface});
        let v4_040 = |address: &str, interface: usize| json!({"version": "4", "address": address, "gateway": "10.244.1.1", "interface": interface});
        let v6_040 = |address: &str, interface: usize| json!({"version": "6", "address": address, "interface": interface});
        let with_ips = |ips: Value| {
            let mut prev = bridge_result();
            prev["ips"] = ips;
            prev
        };
        let ptp = json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": "veth9f8e7d6c", "mac": "02:00:00:00:00:02"},
                {"name": "eth0", "mac": "02:00:00:00:00:0a", "sandbox": "/var/run/netns/pod-a"}
            ],
            "ips": [
                {"address": "10.244.1.5/32", "interface": 1},
                {"address": "fd00:10:244:1::5/128", "interface": 1}
            ]
        });
        let two_sandbox_interfaces = json!({
            "interfaces": [
                {"name": "eth0", "sandbox": "/var/run/netns/pod-a"},
                {"name": "net1", "sandbox": "/var/run/netns/pod-a"}
            ],
            "ips": [v4("10.244.1.5/24", 0), v4("10.250.0.5/24", 1)]
        });
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let cases: Vec<(&str, Value, &str, Vec<IpAddr>)> = vec![
            (
                "bridge, 1.0.0",
                bridge_result(),
                "eth0",
                vec![ip("10.244.1.5")],
            ),
            (
                "bridge, 0.4.0 (ips carry a version)",
                with_ips(json!([v4_040("10.244.1.5/24", 2)])),
                "eth0",
                vec![ip("10.244.1.5")],
            ),
            (
                "ptp, 1.1.0, dual-stack, in prevResult's order",
                ptp.clone(),
                "eth0",
                vec![ip("10.244.1.5"), ip("fd00:10:244:1::5")],
            ),
            (
                "0.4.0, IPv6 first",
                with_ips(json!([
                    v6_040("fd00:10:244:1::5/64", 2),
                    v4_040("10.244.1.5/24", 2)
                ])),
                "eth0",
                vec![ip("fd00:10:244:1::5"), ip("10.244.1.5")],
            ),
            (
                "IPv4-mapped IPv6 is IPv4",
                with_ips(json!([v4("::ffff:10.244.1.5/120", 2)])),
                "eth0",
                vec![ip("10.244.1.5")],
            ),
            (
                "no prefix length",
                with_ips(json!([v4("10.244.1.5", 2)])),
                "eth0",
                vec![ip("10.244.1.5")],
            ),
            (
                "addresses of other interfaces (the bridge, the host veth) are not the pod's",
                with_ips(json!([
                    v4("10.244.1.1/24", 0),
                    v4("169.254.1.1/32", 1),
                    v4("10.244.1.5/24", 2)
                ])),
                "eth0",
                vec![ip("10.244.1.5")],
            ),
            (
                "an address with no interface, or one past the list, is nobody's",
                with_ips(json!([{"address": "10.244.1.6/24"}, v4("10.244.1.7/24", 3)])),
                "eth0",
                vec![],
            ),
            ("no ips", with_ips(json!([])), "eth0", vec![]),
            (
                "no ips field",
                json!({"interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/pod-a"}]}),
                "eth0",
                vec![],
            ),
            (
                "a malformed address on another interface is not read",
                with_ips(json!([v4("bogus", 1), v4("10.244.1.5/24", 2)])),
                "eth0",
                vec![ip("10.244.1.5")],
            ),
            (
                "the interface CNI_IFNAME names",
                two_sandbox_interfaces.clone(),
                "net1",
                vec![ip("10.250.0.5")],
            ),
            (
                "the interface CNI_IFNAME names",
                two_sandbox_interfaces,
                "eth0",
                vec![ip("10.244.1.5")],
            ),
        ];
        for (name, prev, ifname, want) in cases {
            assert_eq!(prev_ips(&with_prev(&prev), ifname).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn prev_results_that_name_no_pod() {
        let no_sandbox = |ifname: &str| {
            (
                codes::INVALID_CONFIG,
                format!("prevResult lists no sandbox interface named {ifname}"),
            )
        };
        let cases: Vec<(&str, Value, &str, (u32, String))> = vec![
            (
                "another CNI_IFNAME",
                bridge_result(),
                "net1",
                no_sandbox("net1"),
            ),
            (
                "eth0 only on the host side",
                json!({"interfaces": [{"name": "eth0"}, {"name": "eth0", "sandbox": ""}],
                    "ips": [{"address": "10.244.1.5/24", "interface": 0}]}),
                "eth0",
                no_sandbox("eth0"),
            ),
            (
                "no interfaces",
                json!({"ips": []}),
                "eth0",
                no_sandbox("eth0"),
            ),
            ("an empty object", json!({}), "eth0", no_sandbox("eth0")),
            (
                "a malformed address",
                json!({"interfaces": [{"name": "eth0", "sandbox": "/run/netns/a"}],
                    "ips": [{"address": "10.244.1.300/24", "interface": 0}]}),
                "eth0",
                (
                    codes::INVALID_CONFIG,
                    "prevResult has an invalid address \"10.244.1.300/24\"".to_owned(),
                ),
            ),
        ];
        for (name, prev, ifname, want) in cases {
            assert_eq!(failure(prev_ips(&with_prev(&prev), ifname)), want, "{name}");
        }
        for (name, prev, msg) in [
            (
                "not an object",
                json!("10.244.1.5"),
                "invalid prevResult: invalid type: string",
            ),
            (
                "ips not a list",
                json!({"ips": {"address": "10.244.1.5/24"}}),
                "invalid prevResult: invalid type: map",
            ),
            (
                "a negative interface index",
                json!({"ips": [{"address": "10.244.1.5/24", "interface": -1}]}),
                "invalid prevResult: invalid value: integer `-1`",
            ),
            (
                "an address that is no string",
                json!({"ips": [{"address": 5}]}),
                "invalid prevResult: invalid type: integer `5`",
            ),
            (
                "an interface without a name",
                json!({"interfaces": [{"sandbox": "/run/netns/a"}]}),
                "invalid prevResult: missing field `name`",
            ),
        ] {
            let (code, got) = failure(prev_ips(&with_prev(&prev), "eth0"));
            assert_eq!(code, codes::INVALID_CONFIG, "{name}");
            assert!(got.starts_with(msg), "{name}\n got: {got}\nwant: {msg}");
        }
    }

    fn endpoint(ifindex: u32, mac: [u8; 6], container_id: &str, ifname: &str) -> Endpoint {
        let mut entry = Endpoint {
            ifindex,
            flags: 0,
            mac,
            gateway_mac: [2, 0, 0, 0, 0, 1],
            container_id: [0; CONTAINER_ID_LEN],
            pod_ifname: [0; IFNAME_LEN],
        };
        entry.container_id[..container_id.len()].copy_from_slice(container_id.as_bytes());
        entry.pod_ifname[..ifname.len()].copy_from_slice(ifname.as_bytes());
        entry
    }

    fn sandbox(ips: &[&str]) -> Sandbox {
        Sandbox {
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            mac: MacAddr(POD_MAC),
            host_veth: Link {
                index: 7,
                name: "veth-a".to_owned(),
                mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
                kind: LinkKind::Veth,
                mtu: 1500,
                up: true,
                lower_up: true,
                master: None,
                peer_index: Some(2),
                peer_netnsid: Some(0),
                alias: None,
                vxlan: None,
            },
        }
    }

    const POD_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];

    #[test]
    fn check_verdicts() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let ours = endpoint(7, POD_MAC, "c1", "eth0");
        let entries = |list: &[(&str, Endpoint)]| -> Entries {
            list.iter()
                .map(|(text, entry)| (ip(text), *entry))
                .collect()
        };
        let failed = |msg: &str| Err((codes::CHECK_FAILED, msg.to_owned()));
        let cases: Vec<(&str, Entries, Vec<&str>, Verdict)> = vec![
            (
                "in step",
                entries(&[("10.244.1.5", ours)]),
                vec!["10.244.1.5"],
                Ok(()),
            ),
            (
                "dual-stack, in step; other pods' entries do not matter",
                entries(&[
                    ("10.244.1.5", ours),
                    ("fd00::5", ours),
                    (
                        "10.244.1.6",
                        endpoint(8, [2, 0, 0, 0, 0, 0xb], "c2", "eth0"),
                    ),
                ]),
                vec!["10.244.1.5", "fd00::5"],
                Ok(()),
            ),
            (
                "no addresses: nothing to look up",
                entries(&[]),
                vec![],
                Ok(()),
            ),
            (
                "lost",
                entries(&[]),
                vec!["10.244.1.5"],
                failed("10.244.1.5 is not registered"),
            ),
            (
                "the second address lost",
                entries(&[("10.244.1.5", ours)]),
                vec!["10.244.1.5", "fd00::5"],
                failed("fd00::5 is not registered"),
            ),
            (
                "another container",
                entries(&[("10.244.1.5", endpoint(7, POD_MAC, "c2", "eth0"))]),
                vec!["10.244.1.5"],
                failed("10.244.1.5 is registered to another container"),
            ),
            (
                "another interface of the container",
                entries(&[("10.244.1.5", endpoint(7, POD_MAC, "c1", "net1"))]),
                vec!["10.244.1.5"],
                failed("10.244.1.5 is registered to another container"),
            ),
            (
                "added by hand",
                entries(&[("10.244.1.5", endpoint(7, POD_MAC, "", ""))]),
                vec!["10.244.1.5"],
                failed("10.244.1.5 is registered to another container"),
            ),
            (
                "another veth",
                entries(&[("10.244.1.5", endpoint(9, POD_MAC, "c1", "eth0"))]),
                vec!["10.244.1.5"],
                failed("10.244.1.5 points at ifindex 9, not veth-a"),
            ),
            (
                "another MAC",
                entries(&[(
                    "10.244.1.5",
                    endpoint(7, [2, 0, 0, 0, 0, 0xb], "c1", "eth0"),
                )]),
                vec!["10.244.1.5"],
                failed(
                    "10.244.1.5 has MAC 02:00:00:00:00:0b stored, the pod has 02:00:00:00:00:0a",
                ),
            ),
        ];
        for (name, entries, ips, want) in cases {
            let got = check_entries(&entries, &sandbox(&ips), "c1", "eth0")
                .map_err(|failure| (failure.code, failure.msg));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn gc_keeps_the_runtimes_attachments_and_hand_made_pods() {
        let base = json!({"cniVersion": "1.1.0", "name": "n", "type": "pod-net-cni"});
        let with = |fields: Value| {
            let mut value = base.clone();
            for (key, field) in fields.as_object().unwrap() {
                value[key] = field.clone();
            }
            conf(&value)
        };
        let a = json!({"containerID": "c1", "ifname": "eth0"});
        let b = json!({"containerID": "c2", "ifname": "eth0"});
        let pair = |id: &str, ifname: &str| (id.to_owned(), ifname.to_owned());

        assert_eq!(
            failure(gc_keep(&with(json!({})))),
            (
                codes::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments".to_owned()
            )
        );
        let keep = gc_keep(&with(json!({"cni.dev/valid-attachments": [a, b]}))).unwrap();
        assert_eq!(
            keep,
            HashSet::from([pair("c1", "eth0"), pair("c2", "eth0")])
        );
        // The name before CNI 1.1 final; the final name wins when both are there.
        let old = gc_keep(&with(json!({"cni.dev/attachments": [a]}))).unwrap();
        assert_eq!(old, HashSet::from([pair("c1", "eth0")]));
        let both = gc_keep(&with(
            json!({"cni.dev/valid-attachments": [b], "cni.dev/attachments": [a]}),
        ))
        .unwrap();
        assert_eq!(both, HashSet::from([pair("c2", "eth0")]));
        // An attachment lacking a field is a malformed configuration.
        let (code, msg) = failure(parse_conf(
            json!({"cniVersion": "1.1.0", "name": "n", "type": "pod-net-cni",
                "cni.dev/valid-attachments": [{"containerID": "c1"}]})
            .to_string()
            .as_bytes(),
        ));
        assert_eq!(code, codes::INVALID_CONFIG);
        assert!(
            msg.starts_with("invalid network configuration: missing field `ifname`"),
            "{msg}"
        );

        for (owner, removed) in [
            (pair("c1", "eth0"), false),
            (pair("c2", "eth0"), false),
            (pair("c1", "net1"), true),
            (pair("c3", "eth0"), true),
            (pair("", ""), false),
        ] {
            assert_eq!(gc_removes(&owner, &keep), removed, "{owner:?}");
        }
        // An empty list: every runtime's pod goes, hand-made ones stay.
        let none = HashSet::new();
        assert!(gc_removes(&pair("c1", "eth0"), &none));
        assert!(!gc_removes(&pair("", ""), &none));
    }
}
