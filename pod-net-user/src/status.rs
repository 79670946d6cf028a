//! `pod-net status`: is the datapath whole, and does it match the node?
//! Each problem comes with a hint; any problem makes the exit code non-zero
//! so the command can serve as a health probe.
use std::{collections::BTreeSet, fmt::Write as _};

use anyhow::Result;
use aya::programs::ProgramInfo;
use pod_net_common::program_names;
use serde::Serialize;

use crate::{
    attach,
    datapath::{Datapath, endpoint_ip},
    mac::MacAddr,
    netdev::{self, LinkKind},
    pins::{PinDir, is_on_bpffs},
};

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub healthy: bool,
    pub loaded: bool,
    pub program_id: Option<u32>,
    pub pods: usize,
    pub attachments: usize,
    pub maps: Vec<MapFill>,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub what: String,
    pub hint: String,
}

impl Status {
    fn problem(&mut self, what: impl Into<String>, hint: impl Into<String>) {
        self.problems.push(Problem {
            what: what.into(),
            hint: hint.into(),
        });
    }
}

/// Checks `pins` against the running system.
pub fn check(pins: &PinDir) -> Result<Status> {
    let mut status = Status {
        pin_dir: pins.root().display().to_string(),
        healthy: false,
        loaded: false,
        program_id: None,
        pods: 0,
        attachments: 0,
        maps: Vec::new(),
        problems: Vec::new(),
    };
    let bpffs = pins
        .root()
        .ancestors()
        .find(|dir| dir.exists())
        .is_some_and(|dir| is_on_bpffs(dir).unwrap_or(false));
    if !bpffs {
        status.problem(
            format!("{} is not on a mounted bpf filesystem", status.pin_dir),
            "run `pod-net load`, which mounts bpffs at /sys/fs/bpf",
        );
        return Ok(finish(status));
    }
    if !pins.is_loaded() {
        status.problem(
            format!("pod-net is not loaded at {}", status.pin_dir),
            "run `pod-net load`",
        );
        return Ok(finish(status));
    }
    status.loaded = true;
    status.program_id = ProgramInfo::from_pin(pins.program(program_names::POD_EGRESS))
        .ok()
        .map(|info| info.id());

    let datapath = Datapath::open(pins)?;
    let entries = datapath.endpoint_entries()?;
    status.pods = entries.len();
    status.maps.push(MapFill {
        name: "local_endpoints",
        entries: entries.len(),
        capacity: datapath.endpoints_capacity,
    });
    if u64::try_from(entries.len()).unwrap_or(u64::MAX) * 10
        >= u64::from(datapath.endpoints_capacity) * 9
    {
        status.problem(
            format!(
                "local_endpoints is {} of {} entries full",
                entries.len(),
                datapath.endpoints_capacity
            ),
            "remove stale pods (`pod-net pod list`) or load with a larger map",
        );
    }

    let mut veths = BTreeSet::new();
    for (key, endpoint) in &entries {
        let ip = endpoint_ip(key);
        let Some(link) = netdev::link_by_index(endpoint.ifindex)? else {
            status.problem(
                format!(
                    "pod {ip}: its veth (ifindex {}) no longer exists",
                    endpoint.ifindex
                ),
                format!("remove the stale entry with `pod-net pod del --ip {ip}`"),
            );
            continue;
        };
        if link.kind != LinkKind::Veth {
            status.problem(
                format!(
                    "pod {ip}: ifindex {} is now {}, not a veth",
                    endpoint.ifindex, link.name
                ),
                format!("re-register the pod: `pod-net pod del --ip {ip}`, then `pod add`"),
            );
            continue;
        }
        if let Ok(Some(peer)) = netdev::veth_peer(&link)
            && let Some(mac) = peer.mac
            && mac.0 != endpoint.mac
        {
            status.problem(
                format!(
                    "pod {ip}: stored MAC {} but the pod's interface has {mac}",
                    MacAddr(endpoint.mac)
                ),
                format!("re-register the pod: `pod-net pod del --ip {ip}`, then `pod add`"),
            );
        }
        if veths.insert(link.index) && !attach::is_attached(pins, &link.name)? {
            status.problem(
                format!("pod {ip}: the program is not attached to {}", link.name),
                format!(
                    "re-attach with `pod-net pod add --ip {ip} --veth {}`",
                    link.name
                ),
            );
        }
    }

    let links = pins.pinned_links()?;
    status.attachments = links.len();
    for link in links {
        if !entries
            .iter()
            .any(|(_, endpoint)| endpoint.ifindex == link.ifindex)
        {
            status.problem(
                format!(
                    "link {} attaches the program to ifindex {} but no pod uses it",
                    link.path.display(),
                    link.ifindex
                ),
                format!("remove it with `rm {}`", link.path.display()),
            );
        }
    }
    Ok(finish(status))
}

fn finish(mut status: Status) -> Status {
    status.healthy = status.problems.is_empty();
    status
}

impl Status {
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "pin dir:  {}", self.pin_dir);
        if self.loaded {
            let id = self
                .program_id
                .map_or_else(|| "?".to_owned(), |id| id.to_string());
            let _ = writeln!(out, "program:  pod_egress (id {id})");
            let _ = writeln!(
                out,
                "pods:     {} on {} attached veths",
                self.pods, self.attachments
            );
            for map in &self.maps {
                let _ = writeln!(
                    out,
                    "map:      {} {}/{}",
                    map.name, map.entries, map.capacity
                );
            }
        }
        if self.healthy {
            out.push_str("health:   ok\n");
        } else {
            let _ = writeln!(out, "health:   {} problem(s)", self.problems.len());
            for problem in &self.problems {
                let _ = writeln!(out, "  - {}\n    hint: {}", problem.what, problem.hint);
            }
        }
        out
    }
}
