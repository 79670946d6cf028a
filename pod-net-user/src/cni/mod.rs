//! `pod-net-cni`: a chained CNI plugin (spec 0.4.0, 1.0.0, 1.1.0) that runs
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
    let pins = pin_dir(&conf.pin_dir)?;
    run_command(parse_command(command)?, env, &conf, &pins)
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
    // The result is the previous one, byte for byte.
    Ok(conf
        .prev_result
        .as_ref()
        .map(|raw| raw.get().to_owned())
        .unwrap_or_default())
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
